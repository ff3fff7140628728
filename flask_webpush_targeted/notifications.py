"""A notification from ``notify_user(s)``: its options validated, stored, then enqueued.

Everything that can be checked before a worker runs is checked here, before a
row is written: a bad call raises a specific exception and stores nothing.
``NotificationOptions`` is the one list of a notification's options, and
``notification_fields`` what every JSON answer shows of a stored one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from flask import current_app

from . import signals
from .audiences import get_audience, members_with_vars, store_audience
from .categories import quiet_window
from .clock import iso, utcnow
from .context import app_state
from .exceptions import (
    AudienceNotFound,
    InvalidNotification,
    InvalidUserId,
    PayloadTooLarge,
    QueueUnavailable,
)
from .limits import EARLIEST_SEND_AT, LATEST, MAX_ROW_ID
from .local_time import parse_clock
from .localized import languages_of, localize
from .models import Models
from .payload import (
    MAX_URL,
    build_payload,
    check_payload_size,
    check_text,
    check_url,
    default_tag,
)
from .placeholders import (
    check_vars,
    fill,
    fill_payload,
    json_width,
    literal,
    names,
    payload_names,
)
from .redis_queue import (
    FAN_OUT,
    REDIS_ERRORS,
    enqueue_at,
    fanout_job_id,
    fanout_options,
    get_queue,
)
from .statuses import WAITING, NotificationStatus
from .transport.text import clean_text
from .users import user_id_of
from .variants import MAX_VARIANTS, MAX_WEIGHT, MIN_VARIANTS, WINNER_BY

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy

URGENCIES = ("very-low", "low", "normal", "high")
#: the words ``devices`` takes besides a list of subscription ids (or, in Python, a callable)
DEVICE_WORDS = ("all", "latest")
MAX_TTL = 28 * 86400
#: the highest rate_per_minute: beyond it throttling means nothing on one host
MAX_RATE_PER_MINUTE = 1_000_000
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_CHUNK = 1000

#: the JSON type of an option in the push API's body: ``json`` in the option's field metadata
#: (None there for an option the body does not take)
JsonKind = Literal["string", "text", "boolean", "integer", "date-time", "devices", "actions",
                   "any", "vars", "variants", "number"]


def _option(default: Any, json: JsonKind | None) -> Any:
    return field(default=default, metadata={"json": json})


@dataclass(frozen=True, kw_only=True)
class NotificationOptions:
    """A notification's options: ``notify_users``' keyword arguments, with their defaults.

    The one definition the others follow: ``WebPush.notify_users`` takes exactly these
    keywords (a test compares the signatures), the push API's body these fields but
    ``idempotency_key`` (a header there), with the JSON type of ``json`` in each field's
    metadata, and its OpenAPI document describes those fields.
    """

    #: a text, or a dict language -> text (localized.py): "text" in the push API's body
    title: str | Mapping[str, str] = field(metadata={"json": "text"})
    body: str | Mapping[str, str] = _option("", "text")
    url: str | None = _option(None, "string")
    devices: Any = _option("all", "devices")
    ttl: int | timedelta | None = _option(None, "integer")
    urgency: str = _option("normal", "string")
    topic: str | None = _option(None, "string")
    send_at: datetime | None = _option(None, "date-time")
    #: the push API takes it as the Idempotency-Key header, scoped to the API key
    idempotency_key: str | None = _option(None, None)
    category: str | None = _option(None, "string")
    icon: str | None = _option(None, "string")
    image: str | None = _option(None, "string")
    badge: str | None = _option(None, "string")
    tag: str | None = _option(None, "string")
    actions: list[dict[str, str]] | None = _option(None, "actions")
    data: Any = _option(None, "any")
    require_interaction: bool = _option(False, "boolean")
    silent: bool = _option(False, "boolean")
    #: None: the category's or the global quiet hours; True: keep them; False: ignore them
    quiet_hours: bool | None = _option(None, "boolean")
    #: "HH:MM": each device gets it at the next such time in its own time zone
    send_at_local: str | None = _option(None, "string")
    #: at most this many deliveries in any minute, across all workers
    rate_per_minute: int | None = _option(None, "integer")
    #: values for ``{name}`` placeholders in title, body, url and action titles, for every
    #: recipient (a recipient's own vars win); given, the texts are templates
    vars: dict[str, Any] | None = _option(None, "vars")
    #: A/B variants: 2 to 5 dicts, each overriding payload fields (title, body, url, icon,
    #: image, badge, tag, actions, data, require_interaction, silent), with a "weight"
    variants: list[dict[str, Any]] | None = _option(None, "variants")
    #: the share of the users in the test (the others get the winner after winner_after)
    test_share: float | None = _option(None, "number")
    #: how long the test runs before the winner goes to the others (seconds or timedelta)
    winner_after: int | timedelta | None = _option(None, "integer")
    #: what picks the winner: the rate of "clicks" or of "conversions", per delivery sent
    winner_by: str = _option("clicks", "string")

    def payload(self, **overrides: Any) -> dict[str, Any]:
        """The service worker's payload these options make (validated, without its token),
        with ``overrides`` of its fields (a variant's)."""
        if overrides:
            return replace(self, **overrides).payload()
        return build_payload(
            title=self.title, body=self.body, url=self.url, icon=self.icon, image=self.image,
            badge=self.badge, tag=self.tag, actions=self.actions, data=self.data,
            require_interaction=self.require_interaction, silent=self.silent)


def notification_fields(n: Any) -> dict[str, Any]:
    """What both JSON views of a stored notification show of it: the admin's JSON and the
    push API's answers add their own fields to these."""
    return {"id": n.id, "status": n.status, "category": n.category, "urgency": n.urgency,
            "ttl": n.ttl, "topic": n.topic, "created_at": iso(n.created_at),
            "send_at": iso(n.send_at), "finished_at": iso(n.finished_at),
            "quiet_hours": n.quiet_hours, "send_at_local": n.send_at_local,
            "rate_per_minute": n.rate_per_minute}


#: a recipient of ``recipients=``: (user id, its own vars)
Recipient = tuple[str, dict[str, str]]


def submit(db: SQLAlchemy, m: Models, user_ids: list[str], options: NotificationOptions, *,
           audience: Any = None, recipients: list[Recipient] | None = None) -> Any:
    """Validate every option, then store the notification and enqueue its fan-out.

    The users are ``user_ids``, or an audience's members, or ``recipients`` (whose vars
    are kept in an audience of the notification's own).
    """
    payload = options.payload()
    seconds = ttl_seconds(options.ttl)
    check_options(urgency=options.urgency, topic=options.topic, send_at=options.send_at,
                  category=options.category, idempotency_key=options.idempotency_key)
    category = resolve_category(options.category)
    rules = check_rules(category, quiet_hours=options.quiet_hours,
                        send_at_local=options.send_at_local, send_at=options.send_at,
                        rate_per_minute=options.rate_per_minute)
    wide = check_vars(options.vars, "vars") if options.vars is not None else None
    target = None
    if audience is not None:
        try:
            target = get_audience(db, m, audience)
        except AudienceNotFound as exc:
            raise InvalidNotification(str(exc)) from exc
        if target.size == 0:
            raise InvalidNotification(f"Audience {target.id} has no members.")
        if options.devices not in DEVICE_WORDS:
            raise InvalidNotification("devices must be 'all' or 'latest' with an audience.")
    templated = (wide is not None or recipients is not None
                 or (target is not None and bool(target.var_lengths)))
    split = check_variants(options)
    # Every variant's payload is checked as the notification's own is: its limit, and with
    # placeholders each recipient's filled text.
    for index, one in enumerate([payload] + [v["payload"] for v in (split or {}).get(
            "variants", [])]):
        try:
            if not templated:
                check_payload_size(one)
            elif recipients is not None:
                _check_recipients(one, wide or {}, recipients)
            elif target is not None:
                _check_audience(db, m, target, one, wide or {})
            else:
                _check_filled(one, wide or {}, "vars")
        except InvalidNotification as exc:
            if index == 0:
                raise
            raise _named(f"variants[{index - 1}]", exc) from exc
    existing = _existing(db, m, options.idempotency_key)
    if existing is not None:
        return existing
    audience_id = target.id if target is not None else None
    if target is not None:
        targeting: dict[str, Any] = {"audience_id": target.id, "devices": options.devices}
    else:
        targeting = resolve_devices(db, m, user_ids, options.devices)
    if recipients is not None:
        own, _ = store_audience(db, m, ((i, uid, values or None, None)
                                        for i, (uid, values) in enumerate(recipients)),
                                name="recipients", internal=True, commit=False)
        audience_id = own.id
    if seconds == 0:
        # Accepted (a "now or never" message is legitimate), but rarely meant: say so.
        logging.getLogger("flask_webpush_targeted").warning(
            "A notification with a validity (ttl) of 0 seconds: a device that is offline "
            "when it is sent will never get it (the push service drops it at once).")
    return store_and_enqueue(
        db, m, user_ids, payload=payload, targeting=targeting, ttl=seconds,
        urgency=options.urgency, topic=options.topic, send_at=options.send_at,
        idempotency_key=options.idempotency_key, category=category,
        rules={**rules, "vars": (wide or {}) if templated else None,
               "audience_id": audience_id, "variants": split},
        target_count=target.size if target is not None else None)


def user_ids_of(users: Any) -> list[str]:
    """notify_users' users as distinct ids, in order; InvalidNotification for a bad one."""
    if isinstance(users, (str, bytes)) or not isinstance(users, Iterable):
        raise InvalidNotification("users must be a list of users or user ids.")
    try:
        user_ids = list(dict.fromkeys(user_id_of(u) for u in users))
    except InvalidUserId as exc:
        raise InvalidNotification(f"Invalid user: {exc}.") from exc
    if not user_ids:
        raise InvalidNotification("No user to notify.")
    return user_ids


def recipients_of(items: Any) -> list[Recipient]:
    """notify_users' recipients, [{"user": ..., "vars": {...}}], as (user id, vars) pairs."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidNotification("recipients must be a list of {'user': ..., 'vars': {...}}.")
    chosen: list[Recipient] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"recipients[{index}]"
        if not isinstance(item, Mapping) or "user" not in item or set(item) - {"user", "vars"}:
            raise InvalidNotification(f"{where} must be {{'user': ..., 'vars': {{...}}}}.")
        try:
            user_id = user_id_of(item["user"])
        except InvalidUserId as exc:
            raise InvalidNotification(f"{where}: invalid user: {exc}.") from exc
        if user_id in seen:
            raise InvalidNotification(f"{where}: user {clean_text(user_id, 64)!r} is already "
                                      f"recipients[{seen[user_id]}].")
        seen[user_id] = index
        values = item.get("vars")
        chosen.append((user_id, check_vars(values if values is not None else {}, where)))
    if not chosen:
        raise InvalidNotification("No user to notify.")
    return chosen


def _named(where: str, exc: InvalidNotification) -> InvalidNotification:
    """The same error, saying which recipient it is about."""
    return type(exc)(f"{where}: {exc.description}")


def _check_filled(payload: dict[str, Any], values: dict[str, str], where: str) -> None:
    """Fill the payload for one recipient and check it as notify_users checks any payload."""
    missing = sorted(payload_names(payload) - set(values))
    if missing:
        raise InvalidNotification(f"{where}: no value for the placeholder {{{missing[0]}}}"
                                  " (in the recipient's vars or the notification's vars).")
    filled = fill_payload(payload, values)
    try:
        for language in (None, *languages_of(filled)):
            if not localize(filled, language)["title"].strip():
                where_language = f" in {language!r}" if language is not None else ""
                raise InvalidNotification(f"the title{where_language} is empty once filled.")
        if names(payload["url"]):
            check_url("url", filled["url"])
        check_payload_size(filled)
    except InvalidNotification as exc:
        raise _named(where, exc) from exc


def _check_recipients(payload: dict[str, Any], wide: dict[str, str],
                      recipients: list[Recipient]) -> None:
    payload_names(payload)  # a bad placeholder is refused once, before any recipient
    for index, (user_id, own) in enumerate(recipients):
        _check_filled(payload, {**wide, **own},
                      f"recipients[{index}] (user {clean_text(user_id, 64)!r})")


def _check_audience(db: SQLAlchemy, m: Models, audience: Any, payload: dict[str, Any],
                    wide: dict[str, str]) -> None:
    """Check an audience's members against the placeholders, reading the members only when
    the audience's summary (var names every member has, longest values) cannot tell."""
    needed = payload_names(payload)
    lengths: dict[str, int] = audience.var_lengths or {}
    if needed - set(wide) - set(audience.var_names or ()) or not _fits_at_worst(
            payload, needed, wide, lengths):
        for chunk in members_with_vars(db, m, audience.id):
            for user_id, own in chunk:
                _check_filled(payload, {**wide, **(own or {})},
                              f"audience {audience.id}, user {clean_text(user_id, 64)!r}")


def _fits_at_worst(payload: dict[str, Any], needed: set[str], wide: dict[str, str],
                   lengths: dict[str, int]) -> bool:
    """True when every member's payload passes without reading them: it fits with every
    placeholder at its longest value, its URL is short enough then, and its title has
    text of its own (a title of placeholders alone is blank for a blank value)."""
    if any(not literal(localize(payload, language)["title"]).strip()
           for language in (None, *languages_of(payload))):
        return False
    longest = {name: max(lengths.get(name, 0), json_width(wide.get(name, "")))
               for name in needed}
    worst = fill_payload(payload, {name: "x" * n for name, n in longest.items()})
    if names(payload["url"]):  # percent-encoding makes a byte three characters
        worst["url"] = fill(payload["url"], {name: "x" * (3 * n) for name, n in longest.items()})
        if len(worst["url"]) > MAX_URL:
            return False
    try:
        check_payload_size(worst)
    except PayloadTooLarge:
        return False
    return True


def resolve_category(category: str | None) -> str | None:
    """The category to store: with WEBPUSH_CATEGORIES set, a configured one (none given:
    the first required one); without, the free label as given."""
    configured = app_state().categories
    if configured is None:
        return category
    if category is None:
        required = next((name for name, c in configured.items() if c.required), None)
        if required is None:
            raise InvalidNotification(
                "category is required: WEBPUSH_CATEGORIES has no required category to "
                f"default to (configured: {', '.join(configured)}).")
        return required
    if category not in configured:
        raise InvalidNotification(f"category {clean_text(category, 64)!r} is not one of "
                                  f"WEBPUSH_CATEGORIES: {', '.join(configured)}.")
    return category


def check_rules(category: str | None, *, quiet_hours: Any, send_at_local: Any, send_at: Any,
                rate_per_minute: Any) -> dict[str, Any]:
    """Validate quiet_hours, send_at_local and rate_per_minute; return the columns to store."""
    state = app_state()
    if quiet_hours is not None and not isinstance(quiet_hours, bool):
        raise InvalidNotification("quiet_hours must be None, True or False.")
    if quiet_hours is True:
        own = state.categories[category] if state.categories and category else None
        if quiet_window(own, state.quiet_hours, True) is None:
            raise InvalidNotification("quiet_hours=True needs quiet hours to keep: set "
                                      "WEBPUSH_QUIET_HOURS or the category's quiet_hours.")
    if send_at_local is not None:
        try:
            parse_clock(send_at_local)
        except ValueError as exc:
            raise InvalidNotification(
                "send_at_local must be a time of day as HH:MM, 00:00 to 23:59.") from exc
        if send_at is not None:
            raise InvalidNotification("send_at and send_at_local exclude each other: give one.")
    if rate_per_minute is not None and (
            isinstance(rate_per_minute, bool) or not isinstance(rate_per_minute, int)
            or not 1 <= rate_per_minute <= MAX_RATE_PER_MINUTE):
        raise InvalidNotification(
            f"rate_per_minute must be a whole number from 1 to {MAX_RATE_PER_MINUTE:,}.")
    return {"quiet_hours": quiet_hours, "send_at_local": send_at_local,
            "rate_per_minute": rate_per_minute}


#: what a variant may change of the payload, besides its weight
VARIANT_FIELDS = ("title", "body", "url", "icon", "image", "badge", "tag", "actions", "data",
                  "require_interaction", "silent")


def check_variants(options: NotificationOptions) -> dict[str, Any] | None:
    """The ``variants`` column for these options (each variant's payload built and checked),
    or None without variants; InvalidNotification says what is wrong."""
    given = options.variants
    test_options = (options.test_share, options.winner_after)
    if given is None:
        if any(o is not None for o in test_options) or options.winner_by != "clicks":
            raise InvalidNotification("test_share, winner_after and winner_by need variants.")
        return None
    if isinstance(given, (str, bytes, Mapping)) or not isinstance(given, (list, tuple)):
        raise InvalidNotification("variants must be a list of 2 to 5 dicts of payload fields.")
    if not MIN_VARIANTS <= len(given) <= MAX_VARIANTS:
        raise InvalidNotification(f"variants must be {MIN_VARIANTS} to {MAX_VARIANTS}, not "
                                  f"{len(given)}.")
    stored = []
    for index, variant in enumerate(given):
        where = f"variants[{index}]"
        if not isinstance(variant, Mapping):
            raise InvalidNotification(f"{where} must be a dict of payload fields and a weight.")
        unknown = sorted(str(k)[:40] for k in variant if k not in (*VARIANT_FIELDS, "weight"))
        if unknown:
            raise InvalidNotification(f"{where}: unknown field(s) {', '.join(unknown)} (a "
                                      f"variant may set {', '.join(VARIANT_FIELDS)} and weight).")
        weight = variant.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            raise InvalidNotification(f"{where}: weight must be a whole number from 1 to "
                                      f"{MAX_WEIGHT}.")
        try:
            one = options.payload(**{k: v for k, v in variant.items() if k != "weight"})
        except InvalidNotification as exc:
            raise _named(where, exc) from exc
        stored.append({"payload": one, "weight": weight})
    share = options.test_share
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                              or not 0 < share < 1):
        raise InvalidNotification("test_share must be a number between 0 and 1 (0.2: a "
                                  "fifth of the users get the test).")
    after: Any = options.winner_after
    if (share is None) != (after is None):
        raise InvalidNotification("test_share and winner_after go together: the test's share, "
                                  "and how long it runs before the winner goes to the rest.")
    seconds = None
    if after is not None:
        if isinstance(after, timedelta):
            after = after.total_seconds()
        # compared as given: math.isfinite() of a huge int raises OverflowError
        if (isinstance(after, bool) or not isinstance(after, (int, float))
                or not 60 <= after <= MAX_TTL):
            raise InvalidNotification("winner_after must be a timedelta or seconds, from a "
                                      "minute to 28 days.")
        seconds = int(after)
    if options.winner_by not in WINNER_BY:
        raise InvalidNotification(f"winner_by must be one of {', '.join(WINNER_BY)}.")
    return {"variants": stored, "test_share": None if share is None else float(share),
            "winner_after": seconds, "winner_by": options.winner_by}


def ttl_seconds(ttl: Any) -> int:
    """Validate a ttl (seconds or timedelta) and return whole seconds."""
    if ttl is None:
        return int(current_app.config["WEBPUSH_DEFAULT_TTL"])
    if isinstance(ttl, timedelta):
        ttl = ttl.total_seconds()
    if (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
            or (isinstance(ttl, float) and not math.isfinite(ttl)) or ttl != int(ttl)):
        raise InvalidNotification("ttl must be whole seconds (int) or a timedelta.")
    if not 0 <= ttl <= MAX_TTL:
        raise InvalidNotification(f"ttl must be between 0 and {MAX_TTL} seconds (28 days).")
    return int(ttl)


def check_options(*, urgency: Any, topic: Any, send_at: Any, category: Any,
                  idempotency_key: Any) -> None:
    """Validate urgency, topic, send_at, category and idempotency key."""
    if urgency not in URGENCIES:
        raise InvalidNotification(f"urgency must be one of {', '.join(URGENCIES)}.")
    if topic is not None and (not isinstance(topic, str) or not _TOPIC.fullmatch(topic)):
        raise InvalidNotification("topic must be 1 to 32 URL-safe base64 characters "
                                  "(A-Z, a-z, 0-9, '-', '_').")
    if send_at is not None and (not isinstance(send_at, datetime) or send_at.tzinfo is None
                                or send_at.utcoffset() is None):
        raise InvalidNotification("send_at must be a timezone-aware datetime.")
    if send_at is not None:
        try:
            in_utc = send_at.astimezone(UTC)
        except (OverflowError, ValueError) as exc:  # year 1 at +05:00 is before datetime.min
            raise InvalidNotification("send_at must be between the years 2000 and 9000.") from exc
        if not EARLIEST_SEND_AT <= in_utc < LATEST:
            raise InvalidNotification("send_at must be between the years 2000 and 9000.")
    if category is not None and (not isinstance(category, str) or not 0 < len(category) <= 64):
        raise InvalidNotification("category must be a string of 1 to 64 characters.")
    check_text("category", category)
    if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                        or not 0 < len(idempotency_key) <= 255):
        raise InvalidNotification("idempotency_key must be a string of 1 to 255 characters.")
    check_text("idempotency_key", idempotency_key)


def resolve_devices(db: SQLAlchemy, m: Models, user_ids: list[str], devices: Any) -> dict[str, Any]:
    """Validate ``devices`` and return the targeting to store.

    "all" and "latest" are resolved by the worker at send time (consent may
    change meanwhile). A list of ids must name subscriptions of the targeted
    users; a callable is applied now, to each active subscription, and stored
    as the ids it chose (a function cannot travel to another process).
    """
    if devices in DEVICE_WORDS:
        return {"user_ids": user_ids, "devices": devices}
    Sub = m.Subscription
    if callable(devices):
        chosen: list[int] = []
        for start in range(0, len(user_ids), _CHUNK):
            subs = db.session.scalars(sa.select(Sub).where(
                Sub.user_id.in_(user_ids[start:start + _CHUNK]), Sub.revoked_at.is_(None)))
            chosen.extend(s.id for s in subs if devices(s))
        return {"user_ids": user_ids, "devices": "ids", "subscription_ids": sorted(chosen)}
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Iterable):
        raise InvalidNotification(
            "devices must be 'all', 'latest', a list of subscription ids or a callable.")
    ids = list(devices)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidNotification("devices must be a non-empty list of subscription ids (int).")
    wanted = set(user_ids)
    # Ids outside the column's range name no subscription (and PostgreSQL refuses them).
    possible = sorted({i for i in ids if 0 < i <= MAX_ROW_ID})
    owners = dict(db.session.execute(sa.select(Sub.id, Sub.user_id)
                                     .where(Sub.id.in_(possible))).all())
    strangers = sorted(i for i in set(ids) if owners.get(i) not in wanted)
    if strangers:
        raise InvalidNotification(
            f"Subscription id(s) {strangers} do not belong to the targeted user(s).")
    return {"user_ids": user_ids, "devices": "ids", "subscription_ids": sorted(set(ids))}


def _existing(db: SQLAlchemy, m: Models, idempotency_key: str | None) -> Any:
    """The notification already stored under this idempotency key (enqueued if it never
    was), or None."""
    if idempotency_key is None:
        return None
    N = m.Notification
    existing = db.session.scalar(sa.select(N).where(N.idempotency_key == idempotency_key))
    return None if existing is None else _enqueue_if_never_queued(db, existing)


def store_and_enqueue(db: SQLAlchemy, m: Models, user_ids: list[str], *, payload: dict[str, Any],
                      targeting: dict[str, Any], ttl: int, urgency: str, topic: str | None,
                      send_at: datetime | None, idempotency_key: str | None,
                      category: str | None, rules: dict[str, Any] | None = None,
                      target_count: int | None = None) -> Any:
    """Commit the Notification first, then enqueue it; a Redis outage loses nothing."""
    N = m.Notification
    existing = _existing(db, m, idempotency_key)
    if existing is not None:
        return existing
    now = utcnow()
    scheduled = send_at is not None and send_at > now
    # .value: the object is the host's too (expire_on_commit=False keeps it as set)
    status = (NotificationStatus.SCHEDULED if scheduled else NotificationStatus.QUEUED).value
    n = N(idempotency_key=idempotency_key, status=status,
          category=category, payload=payload, targeting=targeting,
          target_count=len(targeting["user_ids"]) if target_count is None else target_count,
          ttl=ttl, urgency=urgency,
          topic=topic, send_at=send_at, created_at=now, **(rules or {}))
    db.session.add(n)
    try:
        db.session.flush()
    except sa.exc.IntegrityError:
        # The same key was stored by a concurrent call: that one is the notification.
        db.session.rollback()
        existing = db.session.scalar(sa.select(N).where(N.idempotency_key == idempotency_key))
        return _enqueue_if_never_queued(db, existing)
    if "tag" not in n.payload:
        n.payload = {**payload, "tag": default_tag(n.id)}
    if n.variants is not None:  # each variant without a tag of its own has the default one
        n.variants = {**n.variants, "variants": [
            {**v, "payload": {"tag": default_tag(n.id), **v["payload"]}}
            for v in n.variants["variants"]]}
    if n.topic is None:
        n.topic = f"n{n.id}"
    db.session.commit()
    return _enqueue(db, n)


def _enqueue_if_never_queued(db: SQLAlchemy, n: Any) -> Any:
    # A repeat of a call that met a Redis outage tries the queue again (and says so if
    # it is still down) rather than answering as if the first call had succeeded.
    if n.job_id is None and n.status in WAITING:
        return _enqueue(db, n)
    return n


def _enqueue(db: SQLAlchemy, n: Any) -> Any:
    job_id = fanout_job_id(n.id)
    try:
        queue = get_queue()
        if n.send_at is not None and n.send_at > utcnow():
            enqueue_at(queue, n.send_at, FAN_OUT, n.id, **fanout_options(n.id))
        else:
            queue.enqueue(FAN_OUT, n.id, **fanout_options(n.id))
    except REDIS_ERRORS as exc:
        raise QueueUnavailable(
            f"Notification {n.id} is stored but Redis did not answer ({exc}); it will be "
            "enqueued by `flask webpush recover`, which every worker also runs.", n.id) from exc
    n.job_id, n.queued_at = job_id, utcnow()
    db.session.commit()
    signals.notification_queued.send(current_app._get_current_object(),  # type: ignore[attr-defined]
                                     notification=n)
    return n
