"""GDPR: export and erase what the extension holds about one user.

Erasing leaves nothing that names the person: their deliveries, conversions (with their
order ids), events of the log, consents, category choices, audience memberships (with
their vars) and devices go, and their id leaves every notification's lists (the
targeting's ``user_ids`` and ``subscription_ids``, ``users_without_devices`` and
``users_opted_out``).
What stays is anonymous: the running counters, and the sizes ``target_count`` and
``without_count`` of a notification already fanned out, which say how many were targeted
and reached then. A notification not fanned out yet loses the person from its audience, and its
``target_count`` with them: they will not be targeted.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import conversions, event_log
from .audiences import forget_member, memberships
from .clock import iso
from .context import app_state
from .counters import add, bump, new_increments
from .models import Models
from .placeholders import title_for
from .preferences import preferences, stored_choices
from .sql import dialect_of, rowcount
from .statuses import UNFINISHED, DeliveryStatus

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

#: the reason an erased delivery that was not sent yet is counted under (as skipped)
ERASED = "user data erased before sending"


def export_user(db: SQLAlchemy, m: Models, user_id: str) -> dict[str, Any]:
    """Everything about a user, readable, without raw endpoints or keys."""
    subs = db.session.scalars(
        sa.select(m.Subscription).where(m.Subscription.user_id == user_id)
        .order_by(m.Subscription.id)
    )
    consents = db.session.scalars(
        sa.select(m.Consent).where(m.Consent.user_id == user_id).order_by(m.Consent.id)
    )
    deliveries = db.session.execute(
        sa.select(m.Delivery, m.Notification.payload, m.Notification.vars)
        .join(m.Notification, m.Notification.id == m.Delivery.notification_id)
        .where(m.Delivery.user_id == user_id).order_by(m.Delivery.id)
    )
    return {
        "user_id": user_id,
        "devices": [
            {"id": s.id, "label": s.label, "push_service": s.push_service,
             "user_agent": s.user_agent, "consent_version": s.consent_version,
             "created_at": iso(s.created_at), "last_seen_at": iso(s.last_seen_at),
             "revoked_at": iso(s.revoked_at), "revoked_reason": s.revoked_reason,
             "timezone": s.timezone, "language": s.language}
            for s in subs
        ],
        "consents": [
            {"action": c.action, "reason": c.reason, "device_id": c.subscription_id,
             "notifications": c.notifications, "link_to_account": c.link_to_account,
             "text_version": c.text_version, "language": c.language,
             "user_agent": c.user_agent,
             "scope": c.scope, "source": c.source, "at": iso(c.created_at)}
            for c in consents
        ],
        # every stored choice (a category since removed too), then what holds now
        "preferences": {**stored_choices(db, m, user_id),
                        **preferences(db, m, app_state().categories, user_id)},
        # the audiences the user is in, and the vars kept for each (a seat, a gate...)
        "audiences": memberships(db, m, user_id),
        "notifications_received": [
            {"notification_id": d.notification_id, "device_id": d.subscription_id,
             "title": title_for(payload, wide, d.vars, d.language), "status": d.status,
             "sent_at": iso(d.sent_at),
             "displayed_at": iso(d.displayed_at), "clicked_at": iso(d.clicked_at),
             "closed_at": iso(d.closed_at)}
            for d, payload, wide in deliveries
        ],
        "conversions": conversions.export(db, m, user_id),
    }


def forget_user(db: SQLAlchemy, m: Models, user_id: str) -> dict[str, int]:
    """Delete the user's deliveries, consents and subscriptions; return what went."""
    D = m.Delivery
    # Children first, in one transaction: no foreign key is left dangling on any database.
    # Conversions go whole (their order ids name purchases); the counters keep the counts.
    C, R = m.Conversion, m.ApiRequest
    own = sa.select(C.id).where(C.user_id == user_id)
    # The API requests that recorded them, by hand: SQLite would keep them (no ON DELETE
    # CASCADE) and a reused id would replay another customer's conversion.
    db.session.execute(sa.delete(R).where(R.conversion_id.in_(own)))
    erased_conversions = rowcount(db.session.execute(sa.delete(C).where(C.user_id == user_id)))
    erased_events = event_log.forget(db, m, user_id)
    gone = db.session.execute(sa.delete(D).where(D.user_id == user_id)
                              .returning(D.notification_id, D.status)).all()
    # A delivery erased before its result is counted as skipped: the counters, which
    # tell a worker when a notification is done, then still add up.
    unsent: dict[int, int] = {}
    for notification_id, status in gone:
        if status in UNFINISHED:
            unsent[notification_id] = unsent.get(notification_id, 0) + 1
    for notification_id, count in sorted(unsent.items()):
        inc = new_increments()
        add(inc, DeliveryStatus.SKIPPED, count, reason=(None, ERASED))
        bump(db, m, notification_id, inc)
    counts = {"deliveries": len(gone), "conversions": erased_conversions,
              "events": erased_events}
    result = db.session.execute(sa.delete(m.Consent).where(m.Consent.user_id == user_id))
    counts["consents"] = rowcount(result)
    result = db.session.execute(sa.delete(m.Preference).where(m.Preference.user_id == user_id))
    counts["preferences"] = rowcount(result)
    counts["audiences"] = forget_member(db, m, user_id)
    own_devices = sa.select(m.Subscription.id).where(m.Subscription.user_id == user_id)
    erase_from_notifications(db, m, user_id, list(db.session.scalars(own_devices)))
    # Rows of other users may still point at this user's devices (a device that moved
    # accounts keeps its earlier owner's history): cut those links here, as ON DELETE
    # SET NULL would, because SQLite does not enforce it and reuses deleted ids.
    for model in (m.Delivery, m.Consent):
        db.session.execute(sa.update(model).where(model.subscription_id.in_(own_devices))
                           .values(subscription_id=None))
    result = db.session.execute(sa.delete(m.Subscription)
                                .where(m.Subscription.user_id == user_id))
    counts["subscriptions"] = rowcount(result)
    db.session.commit()
    return counts


# A user id made only of these characters is written as itself inside the quotes by any
# JSON serializer (nothing to escape, nothing non-ASCII, none of the "/ < > & '" that some
# escape): a plain substring search then finds every list that can hold it, at the speed
# of reading the text, and only those lists are parsed.
_PLAIN_ID = re.compile(r"[A-Za-z0-9 _.,:;@+=~!*()#$%?|^{}\[\]-]+")

# PostgreSQL: json columns parsed as jsonb in the database, never loaded into Python.
# ``-`` removes every array element equal to the text; a jsonpath filter removes ids.
# jsonb refuses the escape \u0000, which json columns stored before user ids with NUL were
# refused: in such a list it becomes U+FFFD (that id could never be sent to on PostgreSQL).
_PG_JSONB = r"""CAST(CASE WHEN strpos(CAST({column} AS text), '\u0000') = 0
    THEN CAST({column} AS text)
    ELSE regexp_replace(CAST({column} AS text), '(?<!\\)((?:\\\\)*)\\u0000', '\1\\ufffd', 'g')
    END AS jsonb)"""
_PG_ERASE = """
WITH hit AS MATERIALIZED (
    SELECT id, {targeting_jsonb} AS t, {without_jsonb} AS w, {opted_jsonb} AS o
    FROM {table} WHERE {candidates}
), cleaned AS MATERIALIZED (
    SELECT id, t, w, o, w - CAST(:uid AS text) AS new_w, o - CAST(:uid AS text) AS new_o,
        CASE WHEN t -> 'user_ids' IS NULL THEN t  -- an audience's: its members are rows
             ELSE jsonb_set(t, '{{user_ids}}', (t -> 'user_ids') - CAST(:uid AS text)) END
        || CASE WHEN jsonb_typeof(t -> 'subscription_ids') = 'array' THEN jsonb_build_object(
            'subscription_ids', jsonb_path_query_array(t -> 'subscription_ids',
                                                       '$[*] ? (!(@ == $ids[*]))',
                                                       CAST(:ids AS jsonb)))
           ELSE '{{}}' END AS new_t
    FROM hit
)
UPDATE {table} AS n SET
    targeting = CAST(c.new_t AS json),
    users_without_devices = CAST(c.new_w AS json),
    users_opted_out = CAST(c.new_o AS json),
    target_count = CASE WHEN n.fanned_out_at IS NULL AND c.new_t -> 'user_ids' IS NOT NULL
                        THEN jsonb_array_length(c.new_t -> 'user_ids') ELSE n.target_count END
FROM cleaned AS c
WHERE n.id = c.id AND (c.new_t <> c.t OR c.new_w IS DISTINCT FROM c.w
                       OR c.new_o IS DISTINCT FROM c.o)
RETURNING n.id
"""

# SQLite: json_remove of one matching element per list and statement, repeated until
# none is left (once for a user id: the lists hold each id once). json_remove keeps every
# other element as it was written; rebuilding the array (json_group_array) would not,
# cutting a string at an escaped NUL.
_SQLITE_FOUND = """(SELECT fullkey FROM json_each({column}{path}) WHERE {match} LIMIT 1)"""
_SQLITE_ERASE = """
UPDATE {table} SET {column} = json_remove({column}, {found}){also}
WHERE ({candidates}) AND {found} IS NOT NULL
"""
_SQLITE_LISTS = (  # column, path, what matches, what else the statement sets
    ("targeting", ", '$.user_ids'", "value = :uid",
     ", target_count = CASE WHEN fanned_out_at IS NULL "
     "THEN json_array_length(targeting, '$.user_ids') - 1 ELSE target_count END"),
    ("users_without_devices", "", "value = :uid", ""),
    ("users_opted_out", "", "value = :uid", ""),
    ("targeting", ", '$.subscription_ids'",
     "value IN (SELECT value FROM json_each(:ids, '$.ids'))", ""),
)


def erase_from_notifications(db: SQLAlchemy, m: Models, user_id: str, device_ids: list[int]) -> int:
    """Remove the user's id, and their devices' ids, from every notification's targeting,
    users without devices and users opted out (in the caller's transaction); return how
    many changed.

    Only notifications whose text holds the id are parsed and rewritten, by the database:
    no list is loaded into Python, however large. Measured (benchmarks/forget_user_scale.py,
    PostgreSQL 15, 2 cores): a user in five notifications of a million users each and in
    500 of 5,000 small ones is erased in 4.2-5.9 s, about 1 s per million-user list
    (parsing and writing 19 MB of JSON), with 0.6 MB of Python memory at the peak; loading
    one such list into Python would take 72 MB. SQLite: about 0.8 s per such list.
    """
    table = m.Notification.__table__.name
    dialect = dialect_of(db)
    cast = "CAST({} AS text)" if dialect == "postgresql" else "{}"
    find = "strpos" if dialect == "postgresql" else "instr"
    needles: list[str] = []
    if _PLAIN_ID.fullmatch(user_id):
        needles.append(f"{find}({cast.format('targeting')}, :needle) > 0")
        for column in ("users_without_devices", "users_opted_out"):
            needles.append(f"{find}(COALESCE({cast.format(column)}, ''), :needle) > 0")
    else:
        needles.append("1 = 1")  # no text every serializer writes: let JSON decide
    if device_ids:
        needles.append(f"{find}({cast.format('targeting')}, '\"subscription_ids\"') > 0")
    params = {"uid": user_id, "needle": json.dumps(user_id),
              "ids": json.dumps({"ids": sorted(device_ids)})}
    candidates = " OR ".join(needles)
    if dialect == "postgresql":
        sql = _PG_ERASE.format(table=table, candidates=candidates,
                               targeting_jsonb=_PG_JSONB.format(column="targeting"),
                               without_jsonb=_PG_JSONB.format(column="users_without_devices"),
                               opted_jsonb=_PG_JSONB.format(column="users_opted_out"))
        return len(db.session.execute(sa.text(sql), params).all())
    changed: set[int] = set()
    for column, path, match, also in _SQLITE_LISTS:
        found = _SQLITE_FOUND.format(column=column, path=path, match=match)
        stmt = sa.text(_SQLITE_ERASE.format(table=table, column=column, found=found,
                                            also=also, candidates=candidates) + " RETURNING id")
        while rows := db.session.execute(stmt, params).scalars().all():
            changed.update(rows)
    return len(changed)
