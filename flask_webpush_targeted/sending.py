"""notify_user / notify_users: validate at call time, store, then enqueue.

Everything that can be checked before a worker runs is checked here, before a
row is written: a bad call raises a specific exception and stores nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import current_app, has_request_context, request

from .config import web_origin
from .crm_requests import LATEST
from .exceptions import InvalidNotification, PayloadTooLarge
from .models import Models
from .tracking import MAX_TOKEN_LENGTH

URGENCIES = ("very-low", "low", "normal", "high")
MAX_TTL = 28 * 86400
#: RFC 8291: 4096-byte record, minus 86 bytes of header, 16 of tag, 1 of padding delimiter
MAX_PLAINTEXT = 3993
#: the largest id an Integer primary key holds (PostgreSQL's int4)
MAX_ROW_ID = 2**31 - 1
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_CHUNK = 1000


#: no URL in a notification holds these anywhere: C0 controls, space, DEL, backslash.
#: Browsers drop tabs and newlines from a URL and read "\" as "/" (WHATWG URL), so
#: "/\evil.example/p.png" and "/\t/evil.example" both open //evil.example, off-site.
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: deepest nesting of lists and objects in ``data`` (as the push API accepts): a worker
#: encodes data from deeper in its stack than notify_users ran, and JSON near Python's
#: recursion limit that passed here would fail there, on every retry
MAX_DATA_DEPTH = 32
#: send_at before this (or from crm_requests.LATEST on) is a mistake, and near the ends
#: of datetime's range adding a validity period or converting to UTC overflows
EARLIEST_SEND_AT = datetime(2000, 1, 1, tzinfo=UTC)


def storable(text: str) -> bool:
    """True when ``text`` can be stored and sent: no NUL (PostgreSQL refuses it in text)
    and no lone surrogate (not encodable as UTF-8)."""
    return "\x00" not in text and _SURROGATE.search(text) is None


def _text(name: str, value: Any) -> None:
    if isinstance(value, str) and not storable(value):
        raise InvalidNotification(f"{name} must not contain NUL characters or lone "
                                  "surrogates (text that is not valid Unicode).")


def _check_url(name: str, url: Any, *, allow_none: bool = True) -> str | None:
    """``url`` if it is a path on this site or a URL on its origin; InvalidNotification else."""
    if url is None and allow_none:
        return None
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise InvalidNotification(f"{name} must be a URL string of at most 2048 characters.")
    if _URL_FORBIDDEN.search(url) or not storable(url):
        raise InvalidNotification(
            f"{name} must not contain spaces, control characters, backslashes or lone "
            f"surrogates (percent-encode them): {url!r}.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port or host
    except ValueError as exc:
        raise InvalidNotification(f"{name} is not a valid URL: {url!r}.") from exc
    if not parts.scheme and not parts.netloc:
        if not url.startswith("/") or url.startswith("//"):
            raise InvalidNotification(f"{name} must start with '/' when relative: {url!r}.")
        return url
    site = current_app.config["WEBPUSH_SITE_URL"] or (
        request.host_url if has_request_context() else None)
    # A user name before the host ("https://shop.example@evil.example") is refused: it
    # only ever serves to make an address look like another.
    if (site and parts.username is None and "@" not in parts.netloc
            and web_origin(parts) == web_origin(urlsplit(site))):
        return url
    raise InvalidNotification(
        f"{name} must be relative or on this site's origin (WEBPUSH_SITE_URL): {url!r}.")


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


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DATA_DEPTH:
        raise InvalidNotification(f"data is nested deeper than {MAX_DATA_DEPTH} levels.")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_depth(item, depth + 1)


def _check_actions(actions: Any) -> list[dict[str, str]]:
    if not isinstance(actions, list) or len(actions) > 2 or not all(
        isinstance(a, dict) and isinstance(a.get("action"), str)
        and isinstance(a.get("title"), str) for a in actions
    ):
        raise InvalidNotification(
            "actions must be a list of at most 2 {'action': str, 'title': str} objects.")
    checked = []
    for index, action in enumerate(actions):
        _text(f"actions[{index}].action", action["action"])
        _text(f"actions[{index}].title", action["title"])
        item = {"action": action["action"], "title": action["title"]}
        if action.get("icon") is not None:
            # Shown by the browser like the notification's own icon: on the site too.
            item["icon"] = _check_url(f"actions[{index}].icon", action["icon"], allow_none=False)
        checked.append(item)
    return checked


def build_payload(*, title: Any, body: Any, url: Any, icon: Any = None, image: Any = None,
                  badge: Any = None, tag: Any = None, actions: Any = None, data: Any = None,
                  require_interaction: bool = False, silent: bool = False) -> dict[str, Any]:
    """The JSON object the service worker receives, without its token; validated."""
    if not isinstance(title, str) or not title.strip():
        raise InvalidNotification("title must be a non-empty string.")
    if body is not None and not isinstance(body, str):
        raise InvalidNotification("body must be a string.")
    _text("title", title)
    _text("body", body)
    payload: dict[str, Any] = {"title": title, "body": body or "",
                               "url": _check_url("url", url, allow_none=False) if url else "/"}
    for name, value in (("icon", icon), ("image", image), ("badge", badge)):
        if value is not None:
            payload[name] = _check_url(name, value)
    if tag is not None:
        if not isinstance(tag, str) or not tag or len(tag) > 64:
            raise InvalidNotification("tag must be a string of 1 to 64 characters.")
        _text("tag", tag)
        payload["tag"] = tag
    if actions is not None:
        payload["actions"] = _check_actions(actions)
    if data is not None:
        _check_depth(data)
        try:
            # As the worker encodes it: strict JSON (no NaN or Infinity, which PostgreSQL's
            # json type and browsers' JSON.parse refuse) in UTF-8 (no lone surrogates).
            json.dumps(data, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidNotification(
                "data must be JSON: finite numbers, valid Unicode text, string keys.") from exc
        payload["data"] = data
    for name, flag in (("require_interaction", require_interaction), ("silent", silent)):
        if not isinstance(flag, bool):
            raise InvalidNotification(f"{name} must be True or False.")
        if flag:
            payload[name] = True
    return payload


def encode_payload(payload: dict[str, Any], token: str) -> bytes:
    """The plaintext a browser decrypts: the payload with this delivery's token."""
    return json.dumps({**payload, "token": token}, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def payload_encoder(payload: dict[str, Any]) -> Callable[[str], bytes]:
    """``encode_payload`` for many tokens of one payload: the JSON is built once per batch.

    Tokens are base64url and ".", which JSON writes as they are, so the bytes are the same.
    """
    if "token" in payload:  # would be replaced in place, not appended
        return lambda token: encode_payload(payload, token)
    head = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)[:-1]
    head += ',"token":"' if payload else '"token":"'
    return lambda token: f'{head}{token}"}}'.encode()


def default_tag(notification_id: int) -> str:
    """The tag of a notification that has none: a rare duplicate then replaces, not stacks."""
    return f"webpush-{notification_id}"


def check_payload_size(payload: dict[str, Any]) -> None:
    """Raise PayloadTooLarge unless the payload fits with the longest possible token."""
    # The default tag (added once the id is known) counts too, at its longest.
    worst = payload if "tag" in payload else {**payload, "tag": default_tag(10**19)}
    size = len(encode_payload(worst, "x" * MAX_TOKEN_LENGTH))
    if size > MAX_PLAINTEXT:
        raise PayloadTooLarge(
            f"The payload is {size} bytes with its tracking token; Web Push allows "
            f"{MAX_PLAINTEXT}. Shorten the body or data.")


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
    _text("category", category)
    if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                        or not 0 < len(idempotency_key) <= 255):
        raise InvalidNotification("idempotency_key must be a string of 1 to 255 characters.")
    _text("idempotency_key", idempotency_key)


def resolve_devices(db: Any, m: Models, user_ids: list[str], devices: Any) -> dict[str, Any]:
    """Validate ``devices`` and return the targeting to store.

    "all" and "latest" are resolved by the worker at send time (consent may
    change meanwhile). A list of ids must name subscriptions of the targeted
    users; a callable is applied now, to each active subscription, and stored
    as the ids it chose (a function cannot travel to another process).
    """
    if devices in ("all", "latest"):
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


def store_and_enqueue(db: Any, m: Models, user_ids: list[str], *, payload: dict[str, Any],
                      targeting: dict[str, Any], ttl: int, urgency: str, topic: str | None,
                      send_at: datetime | None, idempotency_key: str | None,
                      category: str | None) -> Any:
    """Commit the Notification first, then enqueue it; a Redis outage loses nothing."""
    from .models import utcnow

    N = m.Notification
    if idempotency_key is not None:
        existing = db.session.scalar(sa.select(N).where(N.idempotency_key == idempotency_key))
        if existing is not None:
            return _enqueue_if_never_queued(db, existing)
    now = utcnow()
    scheduled = send_at is not None and send_at > now
    n = N(idempotency_key=idempotency_key, status="scheduled" if scheduled else "queued",
          category=category, payload=payload, targeting=targeting,
          target_count=len(targeting["user_ids"]), ttl=ttl, urgency=urgency,
          topic=topic, send_at=send_at, created_at=now)
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
    if n.topic is None:
        n.topic = f"n{n.id}"
    db.session.commit()
    return _enqueue(db, n)


def _enqueue_if_never_queued(db: Any, n: Any) -> Any:
    # A repeat of a call that met a Redis outage tries the queue again (and says so if
    # it is still down) rather than answering as if the first call had succeeded.
    if n.job_id is None and n.status in ("queued", "scheduled"):
        return _enqueue(db, n)
    return n


def _enqueue(db: Any, n: Any) -> Any:
    from . import signals
    from .exceptions import QueueUnavailable
    from .jobs import fan_out
    from .models import utcnow
    from .queue import REDIS_ERRORS, enqueue_at, fanout_job_id, get_queue

    job_id = fanout_job_id(n.id)
    try:
        queue = get_queue()
        if n.send_at is not None and n.send_at > utcnow():
            enqueue_at(queue, n.send_at, fan_out, n.id, job_id=job_id)
        else:
            queue.enqueue(fan_out, n.id, job_id=job_id)
    except REDIS_ERRORS as exc:
        raise QueueUnavailable(
            f"Notification {n.id} is stored but Redis did not answer ({exc}); it will be "
            "enqueued by `flask webpush recover`, which every worker also runs.", n.id) from exc
    n.job_id, n.queued_at = job_id, utcnow()
    db.session.commit()
    signals.notification_queued.send(current_app._get_current_object(),  # type: ignore[attr-defined]
                                     notification=n)
    return n
