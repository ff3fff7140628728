"""The ``WebPush`` extension object."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app, render_template, session, url_for
from flask_login import current_user, user_logged_out
from markupsafe import Markup

from . import audiences, conversions, notifications, preferences, privacy
from .audience_files import iterable_rows
from .categories import Category, parse_categories, parse_quiet_hours
from .cli import webpush_cli
from .config import (
    DEFAULTS,
    PendingState,
    consent_texts,
    extra_push_origins,
    keys_pending,
    refuse_without_keys,
)
from .context import AppState, app_state
from .csrf import csrf_token
from .exceptions import (
    ConfigurationError,
    InvalidArgument,
    InvalidAudience,
    InvalidNotification,
)
from .i18n import LocaleSelector, pick_language, template_globals
from .languages import normalized
from .ledger import cancel_notification
from .models import Models, get_models
from .notifications import NotificationOptions
from .recovery import recover
from .signals import user_forgotten
from .stats import get_notification, notification_stats, prune
from .subscriptions import SubscriptionStore
from .users import SESSION_SUBSCRIPTIONS, notification_id_of, user_id_of
from .views import create_blueprint
from .views.widget import widget_strings

#: the longest retention ``prune`` takes
MAX_PRUNE = timedelta(days=36_500)


class WebPush:
    """Targeted Web Push for a Flask app: ``WebPush(app, db=db)`` or ``init_app``."""

    def __init__(self, app: Flask | None = None, *, db: Any = None) -> None:
        self.db = db
        self._models: Models | None = None
        self._stats_access: Callable[[Any], bool] | None = None
        self._user_display: Callable[[str], str | None] | None = None
        self._locale_selector: LocaleSelector | None = None
        if app is not None:
            self.init_app(app, db=db)

    def init_app(self, app: Flask, *, db: Any = None) -> None:
        """Register the extension on ``app``: config, models, blueprint, CLI, template global."""
        if "webpush" in app.extensions:
            raise RuntimeError(
                "WebPush is already registered on this app; call init_app once per app."
            )
        db = db if db is not None else self.db
        if db is None:
            raise ConfigurationError(
                "WebPush needs the app's Flask-SQLAlchemy object: WebPush(app, db=db) "
                "or webpush.init_app(app, db=db)."
            )
        if self.db is not None and db is not self.db:
            raise ConfigurationError("This WebPush object is already bound to another db.")
        self.db = db
        self._models = get_models(db)
        for key, value in DEFAULTS.items():
            # a copy of a list or dict default: a host's change to it stays in its app
            app.config.setdefault(key, type(value)(value) if isinstance(value, (list, dict))
                                  else value)
        # Both VAPID keys unset (a new app): everything is registered, so that the CLI and
        # url_for work, but every other use raises the ConfigurationError (docs/config.md).
        pending = keys_pending(app.config)
        if app.config["WEBPUSH_SW_SCOPE"] is None:
            app.config["WEBPUSH_SW_SCOPE"] = app.config["WEBPUSH_URL_PREFIX"] + "/"
        app.extensions["webpush"] = self
        # Read once: the request path then never re-parses the list.
        app.config["WEBPUSH_EXTRA_PUSH_SERVICES"] = list(app.config["WEBPUSH_EXTRA_PUSH_SERVICES"])
        app.extensions["webpush.state"] = PendingState() if pending else AppState(
            db, self._models, extra_push_origins(app.config),
            categories=parse_categories(app.config["WEBPUSH_CATEGORIES"]),
            quiet_hours=parse_quiet_hours(app.config["WEBPUSH_QUIET_HOURS"]),
            default_zone=app.config["WEBPUSH_DEFAULT_TIMEZONE"])

        if app.config["WEBPUSH_REGISTER_BLUEPRINT"]:
            blueprint = create_blueprint()
            if pending:
                blueprint.before_request(refuse_without_keys)
            app.register_blueprint(blueprint, url_prefix=app.config["WEBPUSH_URL_PREFIX"])
        app.cli.add_command(webpush_cli)
        app.add_template_global(self.optin_widget, "webpush_optin")
        app.add_template_global(csrf_token, "webpush_csrf_token")
        for name, func in template_globals().items():
            app.add_template_global(func, name)
        user_logged_out.connect(_unbind_on_logout, app)

    # -- state reached through the current app -------------------------------------------

    @property
    def models(self) -> Models:
        """The model classes (Subscription, Consent, Notification, Delivery)."""
        if self._models is None:
            raise RuntimeError("WebPush.init_app(app, db=db) has not been called yet.")
        return self._models

    @property
    def store(self) -> SubscriptionStore:
        """Subscriptions and the consent ledger, on this extension's db."""
        return SubscriptionStore(self.db, self.models)

    # -- callbacks -------------------------------------------------------------------------

    def stats_access(self, func: Callable[[Any], bool]) -> Callable[[Any], bool]:
        """Register who may see the statistics views; without one, nobody may."""
        self._stats_access = func
        return func

    def user_display(self, func: Callable[[str], str | None]) -> Callable[[str], str | None]:
        """Register how the admin pages name a customer: user id -> name (None: the id)."""
        self._user_display = func
        return func

    def locale_selector(self, func: LocaleSelector) -> LocaleSelector:
        """Register the language of the package's pages and widget for a request: a
        function returning a language tag ("pl", "en-GB") or None to let Flask-Babel or the
        request's Accept-Language decide."""
        self._locale_selector = func
        return func

    # -- the opt-in widget -----------------------------------------------------------------

    def optin_widget(self, template: str = "webpush/optin.html") -> Markup:
        """Render the opt-in widget (the ``webpush_optin()`` Jinja global)."""
        config = current_app.config
        categories = app_state().categories or {}
        # Each box ticked as the customer has it now (the defaults until they chose): a
        # second browser's opt-in must not offer the defaults again and undo their choice.
        signed_in = bool(current_user and current_user.is_authenticated)
        chosen = self.preferences(current_user) if categories and signed_in else {}
        # Withdrawal is offered only to a customer who has consent to withdraw (a device on).
        has_consent = signed_in and bool(
            self.store.user_subscriptions(user_id_of(current_user), active_only=True))
        # The consent text in the customer's language (else the default one's); the opt-in
        # says which one they were shown, and the ledger keeps it.
        texts = consent_texts(config)
        consent_language = pick_language(list(texts),
                                         normalized(config["WEBPUSH_DEFAULT_LANGUAGE"]))
        # render_template autoescapes; the result is HTML already.
        return Markup(render_template(  # noqa: S704
            template,
            consent_text=texts[consent_language], consent_language=consent_language,
            strings=widget_strings(),
            consent_version=config["WEBPUSH_CONSENT_VERSION"],
            csrf_token=csrf_token(),
            vapid_public_key=config["WEBPUSH_VAPID_PUBLIC_KEY"],
            sw_url=url_for("webpush.service_worker"),
            sw_scope=config["WEBPUSH_SW_SCOPE"],
            subscriptions_url=url_for("webpush.subscriptions"),
            withdraw_url=url_for("webpush.withdraw_consent"), has_consent=has_consent,
            devices_url=url_for("webpush.devices"),
            preferences_url=url_for("webpush.save_preferences"),
            script_url=url_for("webpush.static", filename="webpush/webpush.js"),
            style_url=url_for("webpush.static", filename="webpush/webpush.css"),
            categories=[{"name": c.name, "label": c.label, "description": c.description,
                         "required": c.required, "checked": chosen.get(c.name, c.default_on)}
                        for c in categories.values()],
        ))

    # -- sending ---------------------------------------------------------------------------

    def notify_user(self, user: Any, *, title: str | Mapping[str, str],
                    body: str | Mapping[str, str] = "", url: str | None = None,
                    devices: Any = "all", **options: Any) -> Any:
        """Send to one user's chosen devices; returns the stored Notification at once."""
        return self.notify_users([user], title=title, body=body, url=url, devices=devices,
                                 **options)

    def notify_users(
        self, users: Iterable[Any] | None = None, *, audience: int | None = None,
        recipients: Iterable[Mapping[str, Any]] | None = None,
        title: str | Mapping[str, str], body: str | Mapping[str, str] = "",
        url: str | None = None,
        devices: Any = "all", ttl: int | timedelta | None = None, urgency: str = "normal",
        topic: str | None = None, send_at: datetime | None = None,
        idempotency_key: str | None = None, category: str | None = None,
        icon: str | None = None, image: str | None = None, badge: str | None = None,
        tag: str | None = None, actions: list[dict[str, str]] | None = None,
        data: Any = None, require_interaction: bool = False, silent: bool = False,
        quiet_hours: bool | None = None, send_at_local: str | None = None,
        rate_per_minute: int | None = None, vars: dict[str, Any] | None = None,  # noqa: A002
        variants: list[dict[str, Any]] | None = None, test_share: float | None = None,
        winner_after: int | timedelta | None = None, winner_by: str = "clicks",
    ) -> Any:
        """Send one Notification to many users (objects or ids), to an audience's members,
        or to ``recipients`` each with their own ``vars``; fan-out runs in a worker.

        The keywords after ``recipients`` are ``notifications.NotificationOptions``' fields,
        with its defaults.

        Everything is validated before anything is stored; a bad argument raises
        InvalidNotification (PayloadTooLarge for the size). If Redis is down the
        notification is stored anyway and QueueUnavailable is raised; ``recover``
        enqueues it later.
        """
        given = [users is not None, audience is not None, recipients is not None]
        if sum(given) != 1:
            raise InvalidNotification("Give one of users, audience or recipients.")
        chosen = notifications.recipients_of(recipients) if recipients is not None else None
        if chosen is not None:
            user_ids = [user_id for user_id, _ in chosen]
        elif users is not None:
            user_ids = notifications.user_ids_of(users)
        else:
            user_ids = []
        return notifications.submit(self.db, self.models, user_ids, NotificationOptions(
            title=title, body=body, url=url, devices=devices, ttl=ttl, urgency=urgency,
            topic=topic, send_at=send_at, idempotency_key=idempotency_key, category=category,
            icon=icon, image=image, badge=badge, tag=tag, actions=actions, data=data,
            require_interaction=require_interaction, silent=silent, quiet_hours=quiet_hours,
            send_at_local=send_at_local, rate_per_minute=rate_per_minute, vars=vars,
            variants=variants, test_share=test_share, winner_after=winner_after,
            winner_by=winner_by),
            audience=audience, recipients=chosen)

    # -- audiences -------------------------------------------------------------------------

    def create_audience(self, user_ids: Iterable[Any], *, name: str) -> Any:
        """Store an audience of users (objects, ids, or {"user": ..., "vars": {...}}), read in
        chunks; InvalidAudience for an item that is none of them (nothing is stored)."""
        if isinstance(user_ids, (str, bytes, Mapping)) or not isinstance(user_ids, Iterable):
            raise InvalidAudience("user_ids must be an iterable of users or user ids.")
        audience, _ = audiences.store_audience(self.db, self.models,
                                               iterable_rows(user_ids), name=name)
        return audience

    def get_audience(self, audience_id: int) -> Any:
        """The stored Audience, or AudienceNotFound."""
        return audiences.get_audience(self.db, self.models, audience_id)

    def delete_audience(self, audience_id: int) -> None:
        """Delete an audience; AudienceInUse while a notification still has to read it."""
        audiences.delete_audience(self.db, self.models, audience_id)

    def cancel(self, notification_id: int) -> bool:
        """Stop a scheduled, queued or still-sending notification; False if already over."""
        return cancel_notification(notification_id_of(notification_id))

    def get_notification(self, notification_id: int) -> Any:
        """The stored Notification, or NotificationNotFound."""
        return get_notification(self.db, self.models, notification_id_of(notification_id))

    def stats(self, notification_id: int) -> dict[str, Any]:
        """The funnel counts of one notification (see docs/design.md)."""
        return notification_stats(self.db, self.models, notification_id_of(notification_id))

    def record_conversion(self, user: Any, *, value: Any = None, currency: str | None = None,
                          order_id: str | None = None,
                          at: datetime | None = None) -> dict[str, Any] | None:
        """Record an order and attribute it to the push the user clicked (or saw) before it."""
        conversion = conversions.check(user_id_of(user), value=value, currency=currency,
                                       order_id=order_id, at=at)
        return self._record(conversion).attribution

    def _record(self, conversion: conversions.Conversion, *,
                commit: bool = True) -> conversions.Recorded:
        config = current_app.config
        return conversions.record(
            self.db, self.models, conversion,
            attribution=conversions.window(config, "WEBPUSH_ATTRIBUTION_WINDOW"),
            influence=conversions.window(config, "WEBPUSH_INFLUENCE_WINDOW"), commit=commit)

    def prune(self, older_than: timedelta) -> dict[str, int]:
        """Delete deliveries of notifications finished before ``older_than`` ago, keeping totals."""
        # A negative period would prune everything finished; beyond a century the date
        # arithmetic overflows.
        if not isinstance(older_than, timedelta) or not timedelta(0) <= older_than <= MAX_PRUNE:
            raise InvalidArgument("older_than must be a timedelta from 0 to 36,500 days.")
        return prune(self.db, self.models, older_than)

    def recover(self) -> dict[str, int]:
        """Enqueue what a Redis outage or a dead worker left behind (workers run it too)."""
        return recover()

    # -- preferences -------------------------------------------------------------------------

    @property
    def categories(self) -> dict[str, Category] | None:
        """WEBPUSH_CATEGORIES of the current app, parsed (None: categories are off)."""
        return app_state().categories

    def preferences(self, user: Any) -> dict[str, bool]:
        """Each configured category and whether the user gets it ({} when categories are off)."""
        return preferences.preferences(self.db, self.models, self.categories, user_id_of(user))

    def set_preferences(self, user: Any, choices: Mapping[str, bool], *,
                        source: str = "host") -> dict[str, bool]:
        """Change the user's choices (each change a consent-ledger row); return them all."""
        return preferences.set_preferences(
            self.db, self.models, self.categories, user_id_of(user), choices, source=source,
            text_version=current_app.config["WEBPUSH_CONSENT_VERSION"])

    # -- GDPR ------------------------------------------------------------------------------

    def export_user(self, user: Any) -> dict[str, Any]:
        """A user's consents, devices and received notifications (no endpoints or keys)."""
        return privacy.export_user(self.db, self.models, user_id_of(user))

    def forget_user(self, user: Any) -> dict[str, int]:
        """Erase the user's subscriptions, consents and deliveries; return the counts."""
        user_id = user_id_of(user)
        counts = privacy.forget_user(self.db, self.models, user_id)
        user_forgotten.send(current_app._get_current_object(),  # type: ignore[attr-defined]
                            user_id=user_id, counts=counts)
        return counts


def _unbind_on_logout(app: Flask, user: Any = None, **_: Any) -> None:
    """Revoke the subscriptions made in this session when WEBPUSH_UNBIND_ON_LOGOUT is on."""
    ids = session.pop(SESSION_SUBSCRIPTIONS, None)
    if not app.config["WEBPUSH_UNBIND_ON_LOGOUT"] or not ids or user is None:
        return
    ext: WebPush = app.extensions["webpush"]
    user_id = user_id_of(user)
    for sub_id in ids:
        sub = ext.db.session.get(ext.models.Subscription, sub_id)
        if sub is not None and sub.user_id == user_id:
            ext.store.revoke(user_id, sub_id, reason="logout")
