"""A notification written in several languages: its texts split at call time, and the text
of each device's language chosen at send time.

``title``, ``body`` and each action's ``title`` may be a dict language -> text. The stored
payload keeps the default language's texts where a single text goes (so every page and
export that shows a title shows that one) and the others under ``"texts"``:
``{"pl": {"title": ..., "body": ..., "actions": [title, ...]}}``, and the default
language they were written against under ``"default_language"`` (WEBPUSH_DEFAULT_LANGUAGE
may change while a notification waits). A field given as a plain string is the same in
every language.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .exceptions import InvalidNotification
from .languages import best_match, is_language, normalized

#: the payload key holding the texts of the languages other than the default one
TEXTS = "texts"
#: the payload key naming the language of its default texts (with TEXTS only)
DEFAULT = "default_language"
#: most languages in one notification (the payload limit binds long before)
MAX_LANGUAGES = 50


def _texts_of(name: str, value: Any, default: str) -> dict[str, Any] | None:
    """A field's texts by normalized language, or None when it is not a dict."""
    if not isinstance(value, Mapping):
        return None
    if not value or len(value) > MAX_LANGUAGES:
        raise InvalidNotification(
            f"{name} must be a text, or a dict of 1 to {MAX_LANGUAGES} languages -> texts.")
    texts: dict[str, Any] = {}
    for key, text in value.items():
        if not is_language(key):
            raise InvalidNotification(
                f"{name}: {str(key)[:40]!r} is not a language tag such as 'en' or 'pl-PL'.")
        tag = normalized(key)
        if tag in texts:
            raise InvalidNotification(f"{name}: the language {tag!r} is given twice.")
        texts[tag] = text
    if default not in texts:
        raise InvalidNotification(
            f"{name} must have a text in the default language {default!r} "
            "(WEBPUSH_DEFAULT_LANGUAGE): devices in other languages get it.")
    return texts


def split(title: Any, body: Any, actions: Any, default: str
          ) -> tuple[Any, Any, Any, dict[str, dict[str, Any]] | None]:
    """The default language's title, body and actions, and the other languages' texts
    (None when every field is a plain text). The texts themselves are checked by the
    caller, as any title or body is; the caller stores ``normalized(default)`` beside
    them (``DEFAULT``)."""
    default = normalized(default)
    others: dict[str, dict[str, Any]] = {}
    fields: dict[str, Any] = {}
    for name, value in (("title", title), ("body", body)):
        texts = _texts_of(name, value, default)
        if texts is None:
            fields[name] = value
            continue
        fields[name] = texts.pop(default)
        for tag, text in texts.items():
            others.setdefault(tag, {})[name] = text
    if isinstance(actions, list):
        plain = []
        for index, action in enumerate(actions):
            texts = (_texts_of(f"actions[{index}].title", action.get("title"), default)
                     if isinstance(action, Mapping) else None)
            if texts is None:
                plain.append(action)
                continue
            plain.append({**action, "title": texts.pop(default)})
            for tag, text in texts.items():
                titles = others.setdefault(tag, {}).setdefault("actions", [None] * len(actions))
                titles[index] = text
        actions = plain
    if len(others) + 1 > MAX_LANGUAGES:
        raise InvalidNotification(f"A notification has texts in at most {MAX_LANGUAGES} "
                                  "languages.")
    return fields["title"], fields["body"], actions, others or None


def languages_of(payload: Mapping[str, Any]) -> list[str]:
    """The languages a stored payload has texts in besides the default one."""
    return list(payload.get(TEXTS) or ())


def default_of(payload: Mapping[str, Any]) -> str:
    """The language of a payload's default texts (a payload in several languages)."""
    return str(payload.get(DEFAULT) or "en")


def claimed(payload: Mapping[str, Any], key: str | None) -> str | None:
    """The language a message made with the texts of ``key`` says it is in: the language
    of its title or body (a language given only in an action's title is not claimed for
    the whole message); None for a payload with one text for everyone."""
    if not payload.get(TEXTS):
        return None
    own = payload[TEXTS].get(key) if key is not None else None
    if own and ("title" in own or "body" in own):
        return key
    return default_of(payload)


def localize(payload: Mapping[str, Any], language: str | None) -> dict[str, Any]:
    """The payload as a device given the texts of ``language`` gets it: those texts over
    the default ones, the language claimed as ``lang`` (a payload in several languages),
    without the stored keys (``language`` None: the default texts)."""
    out = {key: value for key, value in payload.items() if key not in (TEXTS, DEFAULT)}
    if payload.get(TEXTS):
        out["lang"] = claimed(payload, language)
    own = (payload.get(TEXTS) or {}).get(language) if language is not None else None
    if not own:
        return out
    for name in ("title", "body"):
        if own.get(name) is not None:
            out[name] = own[name]
    titles = own.get("actions")
    if titles and out.get("actions"):
        out["actions"] = [{**action, "title": titles[i]}
                          if i < len(titles) and titles[i] is not None else action
                          for i, action in enumerate(out["actions"])]
    return out


def language_for(payload: Mapping[str, Any], device_language: str | None) -> str | None:
    """The language whose texts a device gets (None: the notification has one text), by
    the payload's own default language, not today's setting."""
    others = payload.get(TEXTS)
    if not others:
        return None
    default = default_of(payload)
    return best_match(device_language, [default, *others], default)
