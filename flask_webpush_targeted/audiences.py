"""Audiences: a CRM's lists of user ids, with each user's vars, stored as they are read.

Rows are inserted a chunk at a time inside one transaction, so an audience of millions
never sits in memory and a failure half-way (a body over the limit, a lost connection)
stores nothing. A user is in an audience once: later rows of the same id count as
duplicates. What ``notify_users`` needs to check placeholders without reading every
member is kept on the audience: the var names every member has, and each var's longest
value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .clock import iso, utcnow
from .exceptions import AudienceInUse, AudienceNotFound, InvalidAudience
from .models import AudienceRow, Models
from .placeholders import json_width
from .sql import dialect_of, insert_for
from .statuses import WAITING, NotificationStatus
from .transport.text import clean_text, storable

if TYPE_CHECKING:  # the host's object, only annotated here
    from flask_sqlalchemy import SQLAlchemy

#: members written per statement, and read per query by the fan-out
CHUNK = 1000
MAX_NAME = 200
#: no name holds these: a name is one line in lists and logs
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: rejected rows an answer shows (all are counted)
SHOWN_REJECTIONS = 10

#: one row read from a file or an iterable: (line or index, user id, vars, why refused)
Row = tuple[int, str | None, dict[str, str] | None, str | None]


@dataclass
class Rejections:
    """The rows an audience did not take: how many, why, and the first few."""

    count: int = 0
    duplicates: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line: int, reason: str, text: str | None) -> None:
        """Count a refused row, keeping the first SHOWN_REJECTIONS for the answer."""
        self.count += 1
        if len(self.first) < SHOWN_REJECTIONS:
            self.first.append({"line": line, "reason": reason, "text": clean_text(text, 80)})

    def as_dict(self) -> dict[str, Any]:
        """What the push API and the CLI show."""
        return {"count": self.count, "duplicates": self.duplicates, "first": self.first}


def check_name(name: Any) -> str:
    """An audience's name: 1 to 200 characters of storable text."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise InvalidAudience(f"An audience's name is 1 to {MAX_NAME} characters.")
    if not storable(name) or _CONTROL.search(name):
        raise InvalidAudience("An audience's name must not contain control characters (line "
                              "breaks, tabs, NUL) or lone surrogates.")
    return name


def store_audience(db: SQLAlchemy, m: Models, rows: Iterable[Row], *, name: str,
                   internal: bool = False, commit: bool = True) -> tuple[AudienceRow, Rejections]:
    """Store an audience from ``rows`` as they come; nothing is kept if reading fails."""
    audience = m.Audience(name=check_name(name), size=0, created_at=utcnow(), internal=internal)
    db.session.add(audience)
    rejected = Rejections()
    everyone: set[str] | None = None  # the var names every member has
    lengths: dict[str, int] = {}
    chunk: dict[str, dict[str, str] | None] = {}
    size = 0
    try:
        db.session.flush()
        for line, user_id, vars_, reason in rows:
            if reason is not None or user_id is None:
                rejected.add(line, reason or "no user id", user_id)
                continue
            if user_id in chunk:
                rejected.duplicates += 1
                continue
            chunk[user_id] = vars_ or None
            own = set(vars_ or ())
            everyone = own if everyone is None else everyone & own
            for key, value in (vars_ or {}).items():
                # what the value adds to an encoded payload
                lengths[key] = max(lengths.get(key, 0), json_width(value))
            if len(chunk) >= CHUNK:
                size += _insert(db, m, audience.id, chunk, rejected)
                chunk = {}
        size += _insert(db, m, audience.id, chunk, rejected)
        audience.size = size
        audience.var_names = sorted(everyone or ()) if lengths else None
        audience.var_lengths = dict(sorted(lengths.items())) or None
        if commit:
            db.session.commit()
        else:
            db.session.flush()
    except BaseException:
        db.session.rollback()
        raise
    return audience, rejected


def _insert(db: SQLAlchemy, m: Models, audience_id: int,
            chunk: dict[str, dict[str, str] | None], rejected: Rejections) -> int:
    """Insert a chunk of members, skipping users already in; return how many went in."""
    if not chunk:
        return 0
    table = m.AudienceMember.__table__
    if dialect_of(db) == "postgresql":
        # Two array parameters and unnest: one short statement per chunk (as the fan-out).
        pairs = sa.func.unnest(
            sa.bindparam("uids", list(chunk), type_=postgresql.ARRAY(sa.String)),
            sa.bindparam("vars", [None if v is None else json.dumps(v) for v in chunk.values()],
                         type_=postgresql.ARRAY(sa.Text)),
        ).table_valued("uid", "v").render_derived(name="members")
        stmt = insert_for(db, table).from_select(
            ["audience_id", "user_id", "vars"],
            sa.select(sa.literal(audience_id, table.c.audience_id.type), pairs.c.uid,
                      sa.cast(pairs.c.v, postgresql.JSON)))
        # Counted from RETURNING: psycopg's rowcount of INSERT ... SELECT is not always set.
        inserted = len(db.session.execute(stmt.on_conflict_do_nothing(
            index_elements=["audience_id", "user_id"]).returning(table.c.id)).all())
    else:
        inserted = len(db.session.execute(
            insert_for(db, table).on_conflict_do_nothing(
                index_elements=["audience_id", "user_id"]).returning(table.c.id),
            [{"audience_id": audience_id, "user_id": uid, "vars": v}
             for uid, v in chunk.items()]).all())
    rejected.duplicates += len(chunk) - inserted
    return inserted


def get_audience(db: SQLAlchemy, m: Models, audience_id: Any) -> AudienceRow:
    """The audience with this id (not a notification's own recipients); AudienceNotFound."""
    if isinstance(audience_id, bool) or not isinstance(audience_id, int) or not (
            0 < audience_id < 2**31):
        raise AudienceNotFound(f"No audience has id {str(audience_id)[:40]}.")
    audience = db.session.get(m.Audience, audience_id)
    if audience is None or audience.internal:
        raise AudienceNotFound(f"No audience has id {audience_id}.")
    return audience


def list_audiences(db: SQLAlchemy, m: Models) -> list[AudienceRow]:
    """Every audience, newest first."""
    A = m.Audience
    return list(db.session.scalars(sa.select(A).where(A.internal.is_(False))
                                   .order_by(A.id.desc())))


def delete_audience(db: SQLAlchemy, m: Models, audience_id: Any) -> None:
    """Delete an audience and its members; AudienceInUse while a notification waits for it."""
    audience = get_audience(db, m, audience_id)
    N = m.Notification
    waiting = db.session.scalar(sa.select(N.id).where(
        N.audience_id == audience.id, N.fanned_out_at.is_(None),
        N.status.in_(sorted({*WAITING, NotificationStatus.SENDING}))).limit(1))
    if waiting is not None:
        raise AudienceInUse(f"Notification {waiting} is to be sent to audience "
                            f"{audience.id} and has not read it yet: cancel it, or delete the "
                            "audience once it is sending.")
    _delete(db, m, [audience.id])
    db.session.commit()


def _delete(db: SQLAlchemy, m: Models, ids: list[int]) -> None:
    # Members first: SQLite does not enforce ON DELETE CASCADE.
    AM, A = m.AudienceMember, m.Audience
    db.session.execute(sa.delete(AM).where(AM.audience_id.in_(ids)))
    db.session.execute(sa.delete(A).where(A.id.in_(ids)))


def delete_internal(db: SQLAlchemy, m: Models, audience_ids: list[int]) -> None:
    """Delete notifications' own audiences of recipients, once fanned out or pruned (in the
    caller's transaction); real audiences among the ids stay."""
    A = m.Audience
    for start in range(0, len(audience_ids), CHUNK):
        ids = list(db.session.scalars(sa.select(A.id).where(
            A.id.in_(audience_ids[start:start + CHUNK]), A.internal.is_(True))))
        if ids:
            _delete(db, m, ids)


def audience_fields(audience: AudienceRow) -> dict[str, Any]:
    """What the push API and the CLI show of an audience."""
    return {"id": audience.id, "name": audience.name, "size": audience.size,
            "created_at": iso(audience.created_at),
            "vars": sorted(audience.var_lengths or ())}


def members_with_vars(db: SQLAlchemy, m: Models, audience_id: int, *, with_vars: bool = True,
                      ) -> Iterator[list[tuple[str, dict[str, str] | None]]]:
    """The audience's members and their vars, a chunk at a time."""
    AM = m.AudienceMember
    # Keyset on (audience_id, user_id), the unique index: each chunk is a short index range.
    # By row id instead, PostgreSQL read the whole audience through that index and sorted
    # it for every chunk (0.3 s a chunk at a million members).
    columns = (AM.user_id, AM.vars) if with_vars else (AM.user_id,)
    last: str | None = None
    while True:
        query = sa.select(*columns).where(AM.audience_id == audience_id)
        if last is not None:
            query = query.where(AM.user_id > last)
        rows = db.session.execute(query.order_by(AM.user_id).limit(CHUNK)).all()
        if not rows:
            return
        last = rows[-1][0]
        yield [(r[0], r[1] if with_vars else None) for r in rows]


def vars_of(db: SQLAlchemy, m: Models, audience_id: int,
            user_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """The vars of those users in the audience (users without vars are left out)."""
    AM = m.AudienceMember
    wanted = sorted(set(user_ids))
    found: dict[str, dict[str, str]] = {}
    for start in range(0, len(wanted), CHUNK):
        for uid, values in db.session.execute(sa.select(AM.user_id, AM.vars).where(
                AM.audience_id == audience_id, AM.user_id.in_(wanted[start:start + CHUNK]))):
            if values:
                found[uid] = values
    return found


def still_members(db: SQLAlchemy, m: Models, audience_id: int,
                  user_ids: list[str]) -> set[str]:
    """Which of these users are still in the audience (forget_user takes users out)."""
    AM = m.AudienceMember
    kept: set[str] = set()
    for start in range(0, len(user_ids), CHUNK):
        kept.update(db.session.scalars(sa.select(AM.user_id).where(
            AM.audience_id == audience_id, AM.user_id.in_(user_ids[start:start + CHUNK]))))
    return kept


def forget_member(db: SQLAlchemy, m: Models, user_id: str) -> int:
    """Take the user out of every audience (in the caller's transaction); return how many.

    An audience's size drops, and so does the ``target_count`` of a notification to it
    that has not been fanned out: the user will not be targeted.
    """
    AM, A, N = m.AudienceMember, m.Audience, m.Notification
    ids = sorted(set(db.session.scalars(sa.select(AM.audience_id).where(AM.user_id == user_id))))
    if not ids:
        return 0
    db.session.execute(sa.delete(AM).where(AM.user_id == user_id))
    db.session.execute(sa.update(A).where(A.id.in_(ids)).values(size=A.size - 1)
                       .execution_options(synchronize_session=False))
    # A notification's recipients (an internal audience) count through its user_ids list,
    # which privacy.erase_from_notifications shortens: only real audiences are counted here.
    real = sa.select(A.id).where(A.id.in_(ids), A.internal.is_(False))
    db.session.execute(sa.update(N).where(N.audience_id.in_(real), N.fanned_out_at.is_(None))
                       .values(target_count=N.target_count - 1)
                       .execution_options(synchronize_session=False))
    return len(ids)


def memberships(db: SQLAlchemy, m: Models, user_id: str) -> list[dict[str, Any]]:
    """The audiences the user is in, with the vars kept for them (for export_user)."""
    AM, A = m.AudienceMember, m.Audience
    rows = db.session.execute(sa.select(A.id, A.name, A.internal, AM.vars)
                              .join(A, A.id == AM.audience_id)
                              .where(AM.user_id == user_id).order_by(A.id))
    return [{"audience_id": aid, "name": None if internal else name, "vars": values or {}}
            for aid, name, internal, values in rows]
