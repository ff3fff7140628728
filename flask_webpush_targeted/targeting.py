"""Who and which devices a notification reaches, read chunk by chunk at fan-out time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .audiences import members_with_vars
from .models import Models
from .sql import dialect_of

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy

#: users read per query: a large audience is never loaded at once
_CHUNK = 1000

#: a chosen device: (subscription id, user id, user agent, time zone)
Target = tuple[int, str, str | None, str | None]


def targets(db: SQLAlchemy, m: Models, targeting: dict[str, Any], *,
            member_vars: bool = False) -> Any:
    """Yield (chunk of requested user ids, [(subscription id, user id, user agent, time zone)],
    the chunk's vars) per chunk; the vars ({user id: vars} of the members that have any) only
    for an audience and with ``member_vars``, read with the members, else None."""
    Sub = m.Subscription
    mode = targeting["devices"]
    if "audience_id" in targeting:  # the audience's members, streamed a chunk at a time
        for pairs in members_with_vars(db, m, targeting["audience_id"], with_vars=member_vars):
            chunk = [user_id for user_id, _ in pairs]
            own = {user_id: v for user_id, v in pairs if v} if member_vars else None
            yield chunk, _devices(db, m, chunk, mode), own
        return
    user_ids: list[str] = targeting["user_ids"]
    if mode == "ids":
        ids = targeting["subscription_ids"]
        found: list[Any] = []
        for start in range(0, len(ids), _CHUNK):
            found.extend(db.session.execute(
                sa.select(Sub.id, Sub.user_id, Sub.user_agent, Sub.timezone).where(
                    Sub.id.in_(ids[start:start + _CHUNK]), Sub.revoked_at.is_(None))).all())
        wanted = set(user_ids)
        yield user_ids, [tuple(r) for r in found if r[1] in wanted], None
        return
    for start in range(0, len(user_ids), _CHUNK):
        chunk = user_ids[start:start + _CHUNK]
        yield chunk, _devices(db, m, chunk, mode), None


def _devices(db: SQLAlchemy, m: Models, chunk: list[str], mode: str) -> list[Target]:
    """The chosen active devices of a chunk of users ("all" or "latest")."""
    Sub = m.Subscription
    # PostgreSQL: one array parameter, not a thousand (the same statement every chunk).
    of_chunk = (Sub.user_id == sa.any_(sa.bindparam("uids", chunk,
                                                    type_=postgresql.ARRAY(sa.String)))
                if dialect_of(db) == "postgresql" else Sub.user_id.in_(chunk))
    rows = db.session.execute(
        sa.select(Sub.id, Sub.user_id, Sub.user_agent, Sub.timezone)
        .where(of_chunk, Sub.revoked_at.is_(None))
        .order_by(Sub.user_id, Sub.created_at.desc(), Sub.id.desc())).all()
    if mode == "latest":
        seen: set[str] = set()
        rows = [r for r in rows if not (r[1] in seen or seen.add(r[1]))]  # type: ignore[func-returns-value]
    return [tuple(r) for r in rows]  # type: ignore[misc]


def users_without(db: SQLAlchemy, m: Models, targeting: dict[str, Any]) -> list[str] | None:
    """The targeted users, in order, whom no chosen active device covers, as the fan-out
    will find them (the push API answers with them at once); None for an audience, which
    may be millions of users: the fan-out finds them."""
    if "audience_id" in targeting:
        return None
    without: list[str] = []
    for chunk, found, _vars in targets(db, m, targeting):
        covered = {row[1] for row in found}
        without.extend(u for u in chunk if u not in covered)
    return without
