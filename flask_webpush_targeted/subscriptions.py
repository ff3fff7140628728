"""Subscriptions as browsers send them, validated and stored; the append-only consent ledger.

A stored endpoint is a URL the worker will POST to, so it is untrusted input:
it must be ``https`` on port 443 at a known browser push service, matched on
the *parsed* host, unless its exact origin is listed in
WEBPUSH_EXTRA_PUSH_SERVICES.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from flask import current_app

from . import signals
from .exceptions import BadRequestError, ConsentRequired, SubscriptionNotFound
from .i18n import gettext
from .languages import MAX_LANGUAGE, is_language, normalized
from .limits import MAX_ROW_ID
from .local_time import ZONE_NAME, is_zone
from .models import Models, SubscriptionRow, endpoint_hash, utcnow
from .transport.endpoints import lookup_endpoint, validate_endpoint, validate_keys
from .transport.text import clean_text

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy


@dataclass(frozen=True)
class SubscriptionInfo:
    """A browser's PushSubscription, validated."""

    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True)
class SubscribeRequest:
    """The validated body of ``POST /webpush/subscriptions``."""

    subscription: SubscriptionInfo
    text_version: str
    device_label: str | None
    #: the browser's IANA time zone, None when it sent none or one this server does not know
    timezone: str | None = None
    #: the categories chosen in the widget ({} when none were offered)
    categories: Mapping[str, object] | None = None
    #: the browser's language (``navigator.language``), normalized; None when it sent none
    language: str | None = None
    #: the language of the consent text the customer was shown (a WEBPUSH_CONSENT_TEXT
    #: key); None when the client did not say
    consent_language: str | None = None


def parse_subscription(data: object, extra_origins: Iterable[str]) -> SubscriptionInfo:
    """Validate a PushSubscription JSON object (endpoint, keys)."""
    if not isinstance(data, Mapping):
        raise BadRequestError("subscription must be an object with endpoint and keys.")
    keys = data.get("keys")
    if "endpoint" not in data or not isinstance(keys, Mapping):
        raise BadRequestError("subscription needs 'endpoint' and 'keys' {p256dh, auth}.")
    if "p256dh" not in keys or "auth" not in keys:
        raise BadRequestError("subscription.keys needs 'p256dh' and 'auth'.")
    expiration = data.get("expirationTime")
    if expiration is not None and (isinstance(expiration, bool)
                                   or not isinstance(expiration, (int, float))):
        raise BadRequestError("subscription.expirationTime must be a number or null.")
    endpoint = validate_endpoint(data["endpoint"], extra_origins)
    p256dh, auth = validate_keys(keys["p256dh"], keys["auth"])
    return SubscriptionInfo(endpoint, p256dh, auth)


def parse_subscribe_request(
    body: object, consent_version: str, extra_origins: Iterable[str],
    consent_languages: Iterable[str] | None = None,
) -> SubscribeRequest:
    """Validate the whole subscribe body: shape (400), consent (403), then endpoint (422).

    ``consent_languages`` are the languages of WEBPUSH_CONSENT_TEXT: ``consent.language``
    must name one of them (None: any language tag)."""
    if not isinstance(body, Mapping):
        raise BadRequestError("The body must be a JSON object.")
    unknown = set(body) - {"subscription", "consent", "device_label", "user_id", "timezone",
                           "categories", "language"}
    if unknown:
        raise BadRequestError(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    consent = body.get("consent")
    if not isinstance(body.get("subscription"), Mapping):
        raise BadRequestError("'subscription' (the browser's PushSubscription) is required.")
    label = body.get("device_label")
    if label is not None and not isinstance(label, str):
        raise BadRequestError("'device_label' must be a string.")
    if consent is None:
        raise ConsentRequired("Consent is required: 'consent' with notifications and "
                              "link_to_account both true.")
    if not isinstance(consent, Mapping):
        raise BadRequestError("'consent' must be an object.")
    for key in ("notifications", "link_to_account"):
        if key in consent and not isinstance(consent[key], bool):
            raise BadRequestError(f"consent.{key} must be true or false.")
    if "text_version" in consent and not isinstance(consent["text_version"], str):
        raise BadRequestError("consent.text_version must be a string.")
    shown = parse_consent_language(consent.get("language"), consent_languages)
    if consent.get("notifications") is not True or consent.get("link_to_account") is not True:
        raise ConsentRequired("Both consents are required: to notifications and to linking "
                              "this browser to your account.")
    if consent.get("text_version") != consent_version:
        raise ConsentRequired("The consent was given for another version of the consent text; "
                              "reload the page, read the current text and agree again.")
    categories = body.get("categories")
    if categories is not None and not isinstance(categories, Mapping):
        raise BadRequestError("'categories' must be an object of category -> true/false.")
    zone_name = parse_timezone(body.get("timezone"))
    language = parse_language(body.get("language"))
    info = parse_subscription(body["subscription"], extra_origins)
    return SubscribeRequest(info, consent_version, clean_text(label, 200), zone_name,
                            categories, language, shown)


def parse_language(value: object) -> str | None:
    """The ``language`` a browser sent (``navigator.language``, BCP 47), normalized
    ("pl-pl" -> "pl-PL"); None when absent; anything else shaped otherwise: 400."""
    if value is None:
        return None
    if not is_language(value):
        raise BadRequestError("'language' must be a BCP 47 language tag such as 'pl' or "
                              "'en-GB' (navigator.language), at most "
                              f"{MAX_LANGUAGE} characters.")
    return normalized(str(value))


def parse_consent_language(value: object, available: Iterable[str] | None) -> str | None:
    """``consent.language``: the WEBPUSH_CONSENT_TEXT language the customer was shown, as
    that setting spells it; None when absent; a tag of no text there: 400."""
    if value is None:
        return None
    if not is_language(value):
        raise BadRequestError("consent.language must be a language tag such as 'pl'.")
    tag = normalized(str(value))
    if available is None:
        return tag
    keys = list(available)
    for key in keys:
        if key.lower() == tag.lower():
            return key
    raise BadRequestError(f"consent.language must be the language of a consent text shown: "
                          f"one of {', '.join(keys)}.")


def parse_timezone(value: object) -> str | None:
    """The ``timezone`` a browser sent: an IANA name such as ``Europe/Warsaw``.

    Not a string, or not shaped like an IANA name: 400. A well-formed name this server's
    zone database does not know (a zone newer than its tzdata) is no reason to refuse the
    opt-in: it is stored as None and the device counts in WEBPUSH_DEFAULT_TIMEZONE.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not ZONE_NAME.fullmatch(value):
        raise BadRequestError("'timezone' must be an IANA time zone name such as "
                              "'Europe/Warsaw' (Intl.DateTimeFormat().resolvedOptions()"
                              ".timeZone).")
    return value if is_zone(value) else None


class SubscriptionStore:
    """Writes subscriptions and the consent ledger, one transaction per call."""

    def __init__(self, db: SQLAlchemy, models: Models) -> None:
        self.db = db
        self.m = models

    def _ledger(self, user_id: str, action: str, *, subscription_id: int | None = None,
                reason: str | None = None, text_version: str | None = None,
                user_agent: str | None = None, language: str | None = None) -> None:
        granted = action == "granted"
        self.db.session.add(self.m.Consent(
            user_id=user_id, subscription_id=subscription_id, action=action, reason=reason,
            notifications=granted, link_to_account=granted, text_version=text_version,
            user_agent=clean_text(user_agent, 512), language=language,
        ))

    def subscribe(self, user_id: str, req: SubscribeRequest,
                  user_agent: str | None) -> tuple[SubscriptionRow, bool]:
        """Store or refresh a subscription; return (subscription, newly this user's)."""
        try:
            return self._subscribe(user_id, req, user_agent)
        except sa.exc.IntegrityError:
            # Two requests raced to insert the same endpoint: the row exists now.
            self.db.session.rollback()
            return self._subscribe(user_id, req, user_agent)

    def _subscribe(self, user_id: str, req: SubscribeRequest,
                   user_agent: str | None) -> tuple[SubscriptionRow, bool]:
        Sub = self.m.Subscription
        info = req.subscription
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        now = utcnow()
        sub = self.db.session.execute(
            sa.select(Sub).where(Sub.endpoint_sha256 == endpoint_hash(info.endpoint))
            .with_for_update()
        ).scalar_one_or_none()
        moved_from = None
        if sub is None:
            sub = Sub(user_id=user_id)
            sub.set_endpoint(info.endpoint)
            self.db.session.add(sub)
            is_new = True
        elif sub.user_id != user_id:
            # One browser, one account: the device follows whoever subscribed last.
            moved_from = sub.user_id
            if sub.revoked_at is None:
                self._ledger(moved_from, "withdrawn", subscription_id=sub.id, reason="moved")
            sub.user_id = user_id
            is_new = True
        else:
            is_new = sub.revoked_at is not None
        if is_new:
            sub.created_at = now
        sub.p256dh, sub.auth = info.p256dh, info.auth
        sub.label = clean_text(req.device_label, 200) or sub.label
        sub.user_agent = clean_text(user_agent, 512)
        sub.consent_version = req.text_version
        sub.last_seen_at = now
        sub.revoked_at = sub.revoked_reason = None
        sub.consecutive_failures = 0
        if req.timezone is not None:
            sub.timezone = req.timezone
        if req.language is not None:
            sub.language = req.language
        self.db.session.flush()
        self._ledger(user_id, "granted", subscription_id=sub.id, text_version=req.text_version,
                     user_agent=user_agent, language=req.consent_language)
        self.db.session.commit()
        if moved_from is not None:
            signals.subscription_moved.send(app, subscription=sub, from_user_id=moved_from,
                                            to_user_id=user_id)
        if is_new:
            signals.subscription_created.send(app, subscription=sub)
        return sub, is_new

    def user_subscriptions(self, user_id: str, *,
                           active_only: bool = False) -> list[SubscriptionRow]:
        """A user's subscriptions, newest first."""
        Sub = self.m.Subscription
        query = sa.select(Sub).where(Sub.user_id == user_id)
        if active_only:
            query = query.where(Sub.revoked_at.is_(None))
        return list(self.db.session.scalars(query.order_by(Sub.created_at.desc(), Sub.id.desc())))

    def get_own(self, user_id: str, subscription_id: int) -> SubscriptionRow:
        """One of the user's own subscriptions, or SubscriptionNotFound (never another's)."""
        # An id the column cannot hold (a URL's <int:...> takes any size) names none.
        if (isinstance(subscription_id, bool) or not isinstance(subscription_id, int)
                or not 0 < subscription_id <= MAX_ROW_ID):
            raise SubscriptionNotFound("You have no device with this id.")
        sub = self.db.session.get(self.m.Subscription, subscription_id)
        if sub is None or sub.user_id != user_id:
            raise SubscriptionNotFound("You have no device with this id.")
        return sub

    def revoke(self, user_id: str, subscription_id: int, *, reason: str = "device_revoked",
               user_agent: str | None = None) -> SubscriptionRow:
        """Revoke one of the user's devices and record the withdrawal for it."""
        sub = self.get_own(user_id, subscription_id)
        if sub.revoked_at is None:
            sub.revoked_at, sub.revoked_reason = utcnow(), reason
            self._ledger(user_id, "withdrawn", subscription_id=sub.id, reason=reason,
                         user_agent=user_agent)
            self.db.session.commit()
            signals.subscription_revoked.send(
                current_app._get_current_object(),  # type: ignore[attr-defined]
                subscription=sub, reason=reason)
        return sub

    def withdraw_consent(self, user_id: str, *, user_agent: str | None = None,
                         reason: str = "user") -> int | None:
        """Withdraw the user's consent and revoke all their devices in one transaction;
        return how many devices were revoked.

        Nothing to withdraw (no active device and the ledger's last word on the consent is
        not "granted"): no ledger row, no signal, None. Two withdrawals at the same time (a
        double click) write one row: the second waits for the first (PostgreSQL: on the
        user's subscription rows; SQLite: on the write lock its update takes) and decides
        only after its update, when it sees what the first committed.
        """
        Sub, C = self.m.Subscription, self.m.Consent
        self.db.session.execute(
            sa.select(Sub.id).where(Sub.user_id == user_id).with_for_update()
        ).all()
        active = self.user_subscriptions(user_id, active_only=True)
        now = utcnow()
        revoked_ids = set(self.db.session.scalars(
            sa.update(Sub).where(Sub.user_id == user_id, Sub.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason="consent_withdrawn")
            .returning(Sub.id)
        ))
        last = self.db.session.scalar(
            sa.select(C.action).where(C.user_id == user_id, C.scope.is_(None))
            .order_by(C.id.desc()).limit(1))
        if not revoked_ids and last != "granted":
            self.db.session.commit()  # ends the transaction (and its locks) at once
            return None
        self._ledger(user_id, "withdrawn", reason=reason, user_agent=user_agent)
        self.db.session.commit()
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        revoked = [sub for sub in active if sub.id in revoked_ids]
        for sub in revoked:
            signals.subscription_revoked.send(app, subscription=sub, reason="consent_withdrawn")
        signals.consent_withdrawn.send(app, user_id=user_id)
        return len(revoked)

    def rotate(self, old_endpoint: object, old_auth: object,
               new: SubscriptionInfo) -> SubscriptionRow:
        """Replace a subscription the browser rotated, proven by the old one's auth secret."""
        Sub = self.m.Subscription
        if not isinstance(old_endpoint, str) or not isinstance(old_auth, str):
            raise BadRequestError("'old' needs the previous endpoint and keys.auth as strings.")
        old_hash = endpoint_hash(lookup_endpoint(old_endpoint))
        sub = self.db.session.execute(
            sa.select(Sub).where(Sub.endpoint_sha256 == old_hash).with_for_update()
        ).scalar_one_or_none()
        # Same answer for "unknown" and "wrong secret": nothing to learn by probing.
        if sub is None or sub.revoked_at is not None or not hmac.compare_digest(
            sub.auth.encode(), old_auth.rstrip("=").encode()
        ):
            raise SubscriptionNotFound("No active subscription matches the old one.")
        clash = self.db.session.execute(
            sa.select(Sub).where(Sub.endpoint_sha256 == endpoint_hash(new.endpoint))
        ).scalar_one_or_none()
        if clash is not None and clash.id != sub.id:
            # The browser already posted the new one (e.g. the page re-subscribed first).
            sub.revoked_at, sub.revoked_reason = utcnow(), "rotated"
            self.db.session.commit()
            return clash
        sub.set_endpoint(new.endpoint)
        sub.p256dh, sub.auth = new.p256dh, new.auth
        sub.last_seen_at = utcnow()
        self.db.session.commit()
        return sub


def label_from_user_agent(user_agent: str | None) -> str | None:
    """A readable device label such as 'Firefox on Linux' from a User-Agent header."""
    if not user_agent:
        return None
    ua = user_agent
    browser = next((name for token, name in (
        ("Edg/", "Edge"), ("OPR/", "Opera"), ("SamsungBrowser", "Samsung Internet"),
        ("Firefox/", "Firefox"), ("Chrome/", "Chrome"), ("Chromium/", "Chromium"),
        ("Safari/", "Safari"),
    ) if token in ua), None)
    system = next((name for token, name in (
        ("Android", "Android"), ("iPhone", "iPhone"), ("iPad", "iPad"), ("Windows", "Windows"),
        ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"),
    ) if token in ua), None)
    # Stored as the label: in the language of the page the customer opted in on.
    if browser is None:
        return gettext("Browser on %(system)s", system=system) if system else gettext("Browser")
    return gettext("%(browser)s on %(system)s", browser=browser, system=system) if system \
        else browser
