"""A minimal host app for the tests, importable without pytest (workers run it too)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from flask import Flask
from flask_login import LoginManager, UserMixin, login_user
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

from flask_webpush_targeted import WebPush
from flask_webpush_targeted.csrf import csrf_token
from flask_webpush_targeted.transport.vapid import generate_vapid_keys

REDIS_URL = os.environ.get("WEBPUSH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
VAPID_PRIVATE, VAPID_PUBLIC = generate_vapid_keys()


class User(UserMixin):
    """A host's user: only get_id() matters to the extension."""

    def __init__(self, user_id: str, is_admin: bool = False) -> None:
        self.id = user_id
        self.is_admin = is_admin


USERS = {uid: User(uid) for uid in ("1", "2", "3")} | {"9": User("9", is_admin=True)}


def make_host_app(db_url: str, **config: Any) -> tuple[Flask, SQLAlchemy, WebPush]:
    """A minimal host: Flask-Login users kept in memory, the extension on its own db."""

    class Base(DeclarativeBase):
        pass

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test-secret", TESTING=True, SQLALCHEMY_DATABASE_URI=db_url,
        WEBPUSH_VAPID_PRIVATE_KEY=VAPID_PRIVATE, WEBPUSH_VAPID_PUBLIC_KEY=VAPID_PUBLIC,
        WEBPUSH_VAPID_SUBJECT="mailto:ops@shop.example", WEBPUSH_REDIS_URL=REDIS_URL,
        # The default, declarative, format makes absolute URLs of the site's origin.
        WEBPUSH_SITE_URL="https://shop.example",
    )
    app.config.update(config)
    db = SQLAlchemy(model_class=Base)
    db.init_app(app)
    manager = LoginManager(app)
    manager.login_view = "login_page"
    manager.user_loader(USERS.get)
    webpush = WebPush(app, db=db)

    @app.route("/login/<user_id>")
    def login(user_id: str) -> str:
        login_user(USERS[user_id])
        return csrf_token()

    @app.route("/login")
    def login_page() -> str:
        return "the host's login page"

    @app.route("/widget")
    def widget() -> str:
        from flask import render_template_string

        return render_template_string("<html><body>{{ webpush_optin() }}</body></html>")

    return app, db, webpush


def json_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with what JSON cannot carry spelled as JSON: a category's cap period in
    seconds (``from_json_config`` reads it back)."""
    categories = config.get("WEBPUSH_CATEGORIES")
    if not categories:
        return config
    spelled = {name: {**spec, "cap": [spec["cap"][0], spec["cap"][1].total_seconds()]}
               if spec.get("cap") else spec for name, spec in categories.items()}
    return {**config, "WEBPUSH_CATEGORIES": spelled}


def from_json_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings ``json_config`` spelled, as the extension takes them."""
    categories = config.get("WEBPUSH_CATEGORIES")
    if not categories:
        return config
    read = {name: {**spec, "cap": (spec["cap"][0], timedelta(seconds=spec["cap"][1]))}
            if spec.get("cap") else spec for name, spec in categories.items()}
    return {**config, "WEBPUSH_CATEGORIES": read}


def create_app() -> Flask:
    """The host app a worker process runs: its config comes as JSON in WEBPUSH_TEST_APP."""
    config = from_json_config(json.loads(os.environ["WEBPUSH_TEST_APP"]))
    app, _db, _webpush = make_host_app(config.pop("SQLALCHEMY_DATABASE_URI"), **config)
    return app
