"""Customers' choices per category: read, changed (each change a consent-ledger row), and
applied when a notification is sent.

A required category is on while notifications are; another is on only once the customer
turned it on, unless its ``default`` is True. The current choice is one row per (user,
category) in ``webpush_preference``; the ledger keeps every change with the consent text's
version and how it was given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .categories import Category
from .clock import utcnow
from .exceptions import InvalidPreferences
from .models import Models
from .transport.text import clean_text

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

#: how a choice was given, as the ledger records it
SOURCES = ("widget", "devices_page", "api", "host")
#: the reason of a delivery skipped at send time because its user turned the category off
TURNED_OFF = "category turned off"
_CHUNK = 1000


def scope_of(category: str) -> str:
    """The consent ledger's scope of a category's entries."""
    return f"category:{category}"


def stored_choices(db: SQLAlchemy, m: Models, user_id: str) -> dict[str, bool]:
    """Every choice stored for the user, configured categories or not."""
    P = m.Preference
    return {row.category: row.enabled for row in db.session.execute(
        sa.select(P.category, P.enabled).where(P.user_id == user_id))}


def preferences(db: SQLAlchemy, m: Models, categories: Mapping[str, Category] | None,
                user_id: str) -> dict[str, bool]:
    """Each configured category and whether the user gets it ({} when categories are off)."""
    if not categories:
        return {}
    stored = stored_choices(db, m, user_id)
    return {name: True if c.required else stored.get(name, c.default)
            for name, c in categories.items()}


def check_choices(categories: Mapping[str, Category] | None,
                  choices: object) -> dict[str, bool]:
    """Validate ``{category: bool}``; InvalidPreferences saying what is wrong."""
    if not categories:
        raise InvalidPreferences("Categories are off (WEBPUSH_CATEGORIES is None): there is "
                                 "nothing to choose.")
    if not isinstance(choices, Mapping):
        raise InvalidPreferences("Preferences must be an object of category -> true/false.")
    checked: dict[str, bool] = {}
    for name, value in choices.items():
        category = categories.get(name) if isinstance(name, str) else None
        if category is None:
            known = ", ".join(categories)
            raise InvalidPreferences(
                f"{clean_text(str(name), 64)!r} is not a category (known: {known}).")
        if not isinstance(value, bool):
            raise InvalidPreferences(f"The choice for {name!r} must be true or false.")
        if category.required and not value:
            raise InvalidPreferences(
                f"{name!r} ({category.label}) is required while notifications are on; to "
                "stop it, withdraw the consent to notifications.")
        checked[name] = value
    return checked


def set_preferences(db: SQLAlchemy, m: Models, categories: Mapping[str, Category] | None,
                    user_id: str, choices: object, *, source: str, text_version: str,
                    user_agent: str | None = None) -> dict[str, bool]:
    """Apply the user's choices, one ledger row per change, in one transaction; return the
    preferences after it."""
    if source not in SOURCES:
        raise InvalidPreferences(f"source must be one of {', '.join(SOURCES)}.")
    checked = check_choices(categories, choices)
    assert categories is not None  # check_choices refused None
    P = m.Preference
    now = utcnow()
    rows = {p.category: p for p in db.session.scalars(
        sa.select(P).where(P.user_id == user_id).with_for_update())}
    # What holds now, read under the lock: a concurrent change committed before it counts,
    # so the ledger's last entry always says what is stored.
    current = {name: True if c.required else (rows[name].enabled if name in rows else c.default)
               for name, c in categories.items()}
    for name, value in checked.items():
        row = rows.get(name)
        if row is None:
            db.session.add(P(user_id=user_id, category=name, enabled=value, updated_at=now))
        elif row.enabled != value:
            row.enabled, row.updated_at = value, now
        if current[name] == value:
            continue  # no change (the default made explicit is kept, not a ledger entry)
        db.session.add(m.Consent(
            user_id=user_id, subscription_id=None,
            action="granted" if value else "withdrawn", reason=None if value else "user",
            notifications=value, link_to_account=False, text_version=text_version,
            user_agent=clean_text(user_agent, 512), scope=scope_of(name), source=source,
            created_at=now))
    try:
        db.session.commit()
    except sa.exc.IntegrityError:  # a concurrent first choice inserted the row: apply again
        db.session.rollback()
        return set_preferences(db, m, categories, user_id, checked, source=source,
                               text_version=text_version, user_agent=user_agent)
    return preferences(db, m, categories, user_id)


def opted_out(db: SQLAlchemy, m: Models, category: Category | None,
              user_ids: Iterable[str]) -> set[str]:
    """The users among ``user_ids`` who do not get ``category`` (none for a required one)."""
    if category is None or category.required:
        return set()
    P = m.Preference
    ids = list(dict.fromkeys(user_ids))
    out: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        chosen = {row.user_id: row.enabled for row in db.session.execute(
            sa.select(P.user_id, P.enabled).where(
                P.category == category.name, P.user_id.in_(chunk)))}
        out.update(u for u in chunk if not chosen.get(u, category.default))
    return out
