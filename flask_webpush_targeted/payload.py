"""The JSON a service worker receives: built and checked at call time, encoded per delivery."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, has_request_context, request

from .exceptions import InvalidNotification, PayloadTooLarge
from .languages import MAX_LANGUAGE, normalized
from .localized import DEFAULT, TEXTS, localize, split
from .tracking import MAX_TOKEN_LENGTH
from .transport.origins import web_origin
from .transport.text import storable

#: RFC 8291: 4096-byte record, minus 86 bytes of header, 16 of tag, 1 of padding delimiter
MAX_PLAINTEXT = 3993


#: the longest URL a notification carries
MAX_URL = 2048

#: no URL in a notification holds these anywhere: C0 controls, space, DEL, backslash.
#: Browsers drop tabs and newlines from a URL and read "\" as "/" (WHATWG URL), so
#: "/\evil.example/p.png" and "/\t/evil.example" both open //evil.example, off-site.
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")


#: deepest nesting of lists and objects in ``data`` (as the push API accepts): a worker
#: encodes data from deeper in its stack than notify_users ran, and JSON near Python's
#: recursion limit that passed here would fail there, on every retry
MAX_DATA_DEPTH = 32


def check_text(name: str, value: Any) -> None:
    if isinstance(value, str) and not storable(value):
        raise InvalidNotification(f"{name} must not contain NUL characters or lone "
                                  "surrogates (text that is not valid Unicode).")


def _check_url(name: str, url: Any, *, allow_none: bool = True) -> str | None:
    """``url`` if it is a path on this site or a URL on its origin; InvalidNotification else."""
    if url is None and allow_none:
        return None
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise InvalidNotification(f"{name} must be a URL string of at most {MAX_URL} "
                                  "characters.")
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


def check_url(name: str, url: str) -> str | None:
    """``url`` if it is a path on this site or a URL on its origin; InvalidNotification else."""
    return _check_url(name, url, allow_none=False)


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
        check_text(f"actions[{index}].action", action["action"])
        check_text(f"actions[{index}].title", action["title"])
        item = {"action": action["action"], "title": action["title"]}
        if action.get("icon") is not None:
            # Shown by the browser like the notification's own icon: on the site too.
            item["icon"] = _check_url(f"actions[{index}].icon", action["icon"], allow_none=False)
        checked.append(item)
    return checked


def build_payload(*, title: Any, body: Any, url: Any, icon: Any = None, image: Any = None,
                  badge: Any = None, tag: Any = None, actions: Any = None, data: Any = None,
                  require_interaction: bool = False, silent: bool = False) -> dict[str, Any]:
    """The JSON object the service worker receives, without its token; validated.

    ``title``, ``body`` and action titles may be dicts language -> text (localized.py)."""
    default = current_app.config["WEBPUSH_DEFAULT_LANGUAGE"]
    title, body, actions, others = split(title, body, actions, default)
    _check_title("title", title)
    _check_body("body", body)
    payload: dict[str, Any] = {"title": title, "body": body or "",
                               "url": _check_url("url", url, allow_none=False) if url else "/"}
    for name, value in (("icon", icon), ("image", image), ("badge", badge)):
        if value is not None:
            payload[name] = _check_url(name, value)
    if tag is not None:
        if not isinstance(tag, str) or not tag or len(tag) > 64:
            raise InvalidNotification("tag must be a string of 1 to 64 characters.")
        check_text("tag", tag)
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
    if others:
        for language, texts in others.items():
            if "title" in texts:
                _check_title(f"title[{language!r}]", texts["title"])
            if "body" in texts:
                _check_body(f"body[{language!r}]", texts["body"])
            for index, text in enumerate(texts.get("actions") or ()):
                if text is not None:
                    _check_title(f"actions[{index}].title[{language!r}]", text)
        payload[TEXTS] = others
        payload[DEFAULT] = normalized(default)
    return payload


def _check_title(name: str, title: Any) -> None:
    if not isinstance(title, str) or not title.strip():
        raise InvalidNotification(f"{name} must be a non-empty string.")
    check_text(name, title)


def _check_body(name: str, body: Any) -> None:
    if body is not None and not isinstance(body, str):
        raise InvalidNotification(f"{name} must be a string.")
    check_text(name, body)


def encode_payload(payload: dict[str, Any], token: str) -> bytes:
    """The plaintext a browser decrypts, in the legacy format: the (localized) payload with
    this delivery's token."""
    return json.dumps({**payload, "token": token}, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def payload_encoder(payload: dict[str, Any]) -> Callable[[str], bytes]:
    """``encode_payload`` for the many tokens of one payload (a batch's messages)."""
    # json.dumps per message, not JSON spliced once per batch: 4.9-9.4 µs a message against
    # ~300 µs (the send path's CPU; encryption 160-180 µs), 2-core VM, 2026-12-01 (timeit,
    # best of 5, a 283-byte payload); no difference benchmarks/send_throughput.py or the
    # send path alone could see.
    return functools.partial(encode_payload, payload)


@dataclass(frozen=True)
class MessageFormat:
    """How a batch's messages are written: WEBPUSH_PAYLOAD_FORMAT and, for "declarative",
    the site and the click route its absolute URLs are made of."""

    declarative: bool
    site: str = ""  # the site's origin, "https://shop.example"
    click_base: str = ""  # "https://shop.example/webpush/c/": a token completes it

    def encoder(self, payload: dict[str, Any]) -> Callable[[str], bytes]:
        """The plaintext of one localized payload (``localized.localize``), for each token
        of a batch."""
        if not self.declarative:
            return payload_encoder(payload)
        return functools.partial(encode_declarative, payload, self)


def message_format() -> MessageFormat:
    """The current app's MessageFormat (read once per batch)."""
    config = current_app.config
    if config["WEBPUSH_PAYLOAD_FORMAT"] != "declarative":
        return MessageFormat(False)
    site = web_origin(urlsplit(config["WEBPUSH_SITE_URL"]))
    return MessageFormat(True, site, f"{site}{config['WEBPUSH_URL_PREFIX']}/c/")


#: the fields of the package's payload that go inside a declarative notification's own
#: fields (the rest go in its ``data``, which the service worker reads)
_DECLARED = ("title", "body", "tag", "icon", "silent", "lang")


def declarative(payload: dict[str, Any], token: str, form: MessageFormat) -> dict[str, Any]:
    """The Declarative Web Push message of a payload (WebKit's format, ``web_push: 8030``):
    ``navigate`` opens the click route, which counts the click and redirects to ``url``."""
    note: dict[str, Any] = {"title": payload["title"], "body": payload.get("body", ""),
                            "navigate": form.click_base + token}
    if payload.get("lang") is not None:  # a notification in several languages
        note["lang"] = payload["lang"]
    if payload.get("tag") is not None:
        note["tag"] = payload["tag"]
    if payload.get("icon") is not None:
        note["icon"] = _absolute(payload["icon"], form.site)
    if payload.get("silent"):
        note["silent"] = True
    # A service worker's push event may still rewrite it: it adds the actions, the image
    # and the displayed beacon, which the declarative format has no place for.
    note["mutable"] = True
    own = {key: value for key, value in payload.items() if key not in _DECLARED}
    own["token"] = token
    note["data"] = own
    return {"web_push": 8030, "notification": note}


def encode_declarative(payload: dict[str, Any], form: MessageFormat, token: str) -> bytes:
    """The plaintext a browser decrypts, in the declarative format."""
    # Built and dumped per message like the legacy one: 15.5 µs against 10.9 µs for a
    # 385-byte legacy payload (546 bytes declared), 2-core VM, 2026-12-01 (timeit, best of
    # 5), beside the ~350 µs of CPU a message costs the worker: not worth a template.
    return json.dumps(declarative(payload, token, form), separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def _absolute(url: str, site: str) -> str:
    """``url`` (checked by ``_check_url``: a path on the site or a URL on its origin) as an
    absolute URL: WebKit's parser has no base URL to resolve a path against."""
    return site + url if url.startswith("/") else url


def default_tag(notification_id: int) -> str:
    """The tag of a notification that has none: a rare duplicate then replaces, not stacks."""
    return f"webpush-{notification_id}"


def check_payload_size(payload: dict[str, Any]) -> None:
    """Raise PayloadTooLarge unless the payload fits, in every language it has and in the
    format that will be sent, with the longest possible token."""
    # The default tag (added once the id is known) counts too, at its longest.
    worst = payload if "tag" in payload else {**payload, "tag": default_tag(10**19)}
    form = message_format()
    token = "x" * MAX_TOKEN_LENGTH
    others = list(payload.get(TEXTS) or ())
    for language in (None, *others):
        localized = localize(worst, language)
        if "lang" in localized:  # the language it says it is in, at its longest
            localized["lang"] = "x" * MAX_LANGUAGE
        text = form.encoder(localized)(token)
        if len(text) > MAX_PLAINTEXT:
            where = f" in {language!r}" if language is not None else ""
            raise PayloadTooLarge(
                f"The payload{where} is {len(text)} bytes with its tracking token; Web Push "
                f"allows {MAX_PLAINTEXT}. Shorten the body or data.")
