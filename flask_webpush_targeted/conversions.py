"""Conversions: an order attributed to the push that led to it, counted on its notification.

A conversion is ``direct`` when the customer clicked one of their pushes within
WEBPUSH_ATTRIBUTION_WINDOW before it (the most recent click wins), ``influenced`` when
none was clicked but one was displayed within WEBPUSH_INFLUENCE_WINDOW before it (the most
recent display wins), and unattributed otherwise (stored, counted nowhere). The same
``order_id`` counts once, whoever records it and however often. A direct conversion's
value adds to its notification's revenue in its currency, kept exactly: values are whole
numbers of ten-thousandths (``SCALE``), never floats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Context, Decimal, InvalidOperation, localcontext
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from babel.numbers import list_currencies

from .clock import iso, utcnow
from .config import window as window
from .counters import bump, new_increments
from .event_log import event
from .event_log import write as write_events
from .exceptions import InvalidConversion
from .limits import MAX_ID
from .models import Models
from .sql import insert_for
from .transport.text import storable

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

#: values are kept in ten-thousandths: ISO 4217's finest minor unit is 4 decimals (CLF)
SCALE = 10_000
_FINEST = Decimal(1).scaleb(-4)
#: the largest value of one conversion (a bigint of ten-thousandths holds 9.2e14)
MAX_VALUE = Decimal(10) ** 12
#: the longest order id kept (the column's size)
ORDER_ID_SIZE = 200
#: how far ahead of the clock a conversion's time may be (a host's clock running fast)
FUTURE_SLACK = timedelta(hours=1)
#: the earliest time a conversion may carry (windows before it would leave the calendar)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
#: what ``kind`` holds for a conversion attributed to no push
UNATTRIBUTED = "none"

_CURRENCIES = frozenset(list_currencies())
_DECIMAL_TEXT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,4})?", re.ASCII)
#: the most a notification's revenue row holds in one currency (a signed 64-bit sum)
MAX_TOTAL = 2**63 - 1


@dataclass(frozen=True)
class Conversion:
    """A conversion's checked fields: amount in ten-thousandths, or None without a value."""

    user_id: str
    amount: int | None
    currency: str | None
    order_id: str | None
    at: datetime


def parse_value(value: Any) -> int | None:
    """``value`` (a Decimal, an int, a decimal string or a float as written) in
    ten-thousandths; InvalidConversion for anything else, negative, or not exact."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str, float)):
        raise InvalidConversion("value must be a decimal amount (a Decimal, an int or a "
                                "string such as '19.99').")
    if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(value):
        # Decimal() would take " 19.99", "1_999" and "1e3": a text is what the API documents.
        raise InvalidConversion("value must be a decimal amount such as '19.99': up to 12 "
                                "digits, then a point and up to 4 decimals (no sign, no "
                                "exponent, no spaces).")
    try:
        # A float's shortest repr is what the developer wrote (19.99, not 19.98999...).
        amount = Decimal(repr(value) if isinstance(value, float) else value)
    except (InvalidOperation, ValueError, TypeError) as exc:
        raise InvalidConversion("value must be a decimal amount such as '19.99'.") from exc
    if not amount.is_finite():
        raise InvalidConversion("value must be a finite amount.")
    if amount < 0:
        raise InvalidConversion("value must not be negative (record a refund in your shop, "
                                "not as a conversion).")
    if amount >= MAX_VALUE:
        raise InvalidConversion(f"value must be below {MAX_VALUE:,}.")
    # Comparisons are exact whatever the context's precision; arithmetic is not, so it
    # runs in a context of its own (a host's narrower one would raise InvalidOperation).
    with localcontext(Context(prec=40)):
        kept = amount.quantize(_FINEST, rounding=ROUND_DOWN)
        if kept != amount:
            raise InvalidConversion("value has more than 4 decimal places.")
        return int(kept.scaleb(4))


def format_amount(amount: int) -> str:
    """Ten-thousandths as a decimal string with at least 2 decimals: 199900 -> "19.99"."""
    text = format(Decimal(amount) / SCALE, "f")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def check(user_id: str, *, value: Any = None, currency: Any = None, order_id: Any = None,
          at: Any = None) -> Conversion:
    """The conversion's fields checked; InvalidConversion says what is wrong."""
    amount = parse_value(value)
    if currency is not None and (not isinstance(currency, str) or currency not in _CURRENCIES):
        raise InvalidConversion("currency must be an ISO 4217 code such as 'EUR' or 'PLN' "
                                "(three capital letters).")
    if amount is not None and currency is None:
        raise InvalidConversion("a value needs its currency (an ISO 4217 code such as 'EUR').")
    if currency is not None and amount is None:
        raise InvalidConversion("a currency needs a value.")
    if order_id is not None:
        if isinstance(order_id, int) and not isinstance(order_id, bool):
            # bounded before str(): a huge int would raise ValueError there
            order_id = str(int(order_id)) if -MAX_ID - 1 <= order_id <= MAX_ID else None
            if order_id is None:
                raise InvalidConversion("an integer order_id must fit in 64 bits.")
        if (not isinstance(order_id, str) or not order_id.strip()
                or len(order_id) > ORDER_ID_SIZE or not storable(order_id)):
            raise InvalidConversion(f"order_id must be a non-empty text of at most "
                                    f"{ORDER_ID_SIZE} characters (valid Unicode, no NUL).")
    now = utcnow()
    if at is None:
        return Conversion(user_id, amount, currency, order_id, now)
    try:
        aware = (isinstance(at, datetime) and at.tzinfo is not None
                 and at.utcoffset() is not None)
        when = at.astimezone(UTC) if aware else None
    except (ValueError, TypeError, OverflowError):  # a tzinfo of the caller's that misbehaves
        when = None
    if when is None:
        raise InvalidConversion("at must be a timezone-aware datetime.")
    if not EARLIEST <= when <= now + FUTURE_SLACK:
        raise InvalidConversion("at must be after 2000 and not in the future.")
    return Conversion(user_id, amount, currency, order_id, when)


@dataclass(frozen=True)
class Recorded:
    """What ``record`` did: the conversion's row id, its attribution, and whether this call
    stored it (False: the order was recorded before)."""

    row_id: int
    attribution: dict[str, Any] | None
    inserted: bool


def record(db: SQLAlchemy, m: Models, conversion: Conversion, *, attribution: timedelta,
           influence: timedelta, commit: bool = True) -> Recorded:
    """Store the conversion attributed to a push and count it, in one transaction (committed
    unless ``commit`` is False). An order already recorded answers the first one's."""
    C = m.Conversion
    if conversion.order_id is not None:
        earlier = db.session.scalar(sa.select(C).where(C.order_id == conversion.order_id))
        if earlier is not None:
            return Recorded(earlier.id, attribution_of(earlier), False)
    kind, notification_id, delivery_id, variant = _attribute(db, m, conversion, attribution,
                                                              influence)
    if kind == "direct" and notification_id is not None and conversion.amount:
        _check_total(db, m, notification_id, conversion)
    values = {"user_id": conversion.user_id, "order_id": conversion.order_id, "kind": kind,
              "notification_id": notification_id, "delivery_id": delivery_id,
              "amount": conversion.amount, "currency": conversion.currency,
              "converted_at": conversion.at, "created_at": utcnow()}
    # ON CONFLICT DO NOTHING: two requests with one order id at once store one row, and the
    # host's other changes in this session are never rolled back by an IntegrityError.
    stmt = insert_for(db, C.__table__).values(**values)
    if conversion.order_id is not None:
        stmt = stmt.on_conflict_do_nothing(index_elements=["order_id"])
    new_id = db.session.execute(stmt.returning(C.__table__.c.id)).scalar()
    if new_id is None:  # the same order, recorded meanwhile (committed: the conflict waited)
        earlier = db.session.scalar(sa.select(C).where(C.order_id == conversion.order_id))
        assert earlier is not None  # the conflict was with it, and rows are never updated
        return Recorded(earlier.id, attribution_of(earlier), False)
    if notification_id is not None:
        inc = new_increments()
        counter = "conversions" if kind == "direct" else "influenced_conversions"
        inc[("total", "")][counter] += 1
        if variant is not None:
            inc[("variant", str(variant))][counter] += 1
        if kind == "direct" and conversion.amount is not None and conversion.currency:
            inc[("revenue", conversion.currency)]["conversions"] += 1
            inc[("revenue", conversion.currency)]["amount"] += conversion.amount
            if variant is not None:
                inc[("vrevenue", f"{variant}|{conversion.currency}")]["amount"] += (
                    conversion.amount)
        bump(db, m, notification_id, inc)
    write_events(db, m, [event(
        "conversion", notification_id=notification_id, user_id=conversion.user_id,
        converted_at=iso(conversion.at), conversion_id=new_id, kind=kind, delivery_id=delivery_id,
        order_id=conversion.order_id, currency=conversion.currency, variant=variant,
        value=None if conversion.amount is None else format_amount(conversion.amount))])
    if commit:
        db.session.commit()
    return Recorded(new_id, attribution_of(db.session.get(C, new_id)), True)


def _check_total(db: SQLAlchemy, m: Models, notification_id: int,
                 conversion: Conversion) -> None:
    """Refuse a value that would carry the notification's revenue past its 64-bit sum
    (PostgreSQL would raise, SQLite turn it into an inexact float)."""
    S = m.Stat
    total = db.session.scalar(sa.select(S.amount).where(
        S.notification_id == notification_id, S.dimension == "revenue",
        S.key == conversion.currency)) or 0
    if total + (conversion.amount or 0) > MAX_TOTAL:
        raise InvalidConversion(f"notification {notification_id}'s revenue in "
                                f"{conversion.currency} would exceed what is counted exactly.")


def attribution_of(row: Any) -> dict[str, Any] | None:
    """What ``record_conversion`` returns for a stored conversion."""
    if row is None or row.kind == UNATTRIBUTED or row.notification_id is None:
        return None
    return {"notification_id": row.notification_id, "delivery_id": row.delivery_id,
            "kind": row.kind}


def _attribute(db: SQLAlchemy, m: Models, conversion: Conversion, attribution: timedelta,
               influence: timedelta) -> tuple[str, int | None, int | None, int | None]:
    """(kind, notification id, delivery id, its A/B variant): the latest click in the
    attribution window, else the latest display in the influence window, else
    unattributed."""
    D, at = m.Delivery, conversion.at
    for kind, column, span in (("direct", D.clicked_at, attribution),
                               ("influenced", D.displayed_at, influence)):
        found = db.session.execute(
            sa.select(D.id, D.notification_id, D.variant)
            .where(D.user_id == conversion.user_id, column.is_not(None),
                   column >= at - span, column <= at)
            .order_by(column.desc(), D.id.desc()).limit(1)).first()
        if found is not None:
            return kind, found.notification_id, found.id, found.variant
    return UNATTRIBUTED, None, None, None


def revenue(db: SQLAlchemy, m: Models, notification_id: int) -> dict[str, str]:
    """The direct conversions' revenue of a notification: currency -> decimal string."""
    S = m.Stat
    return {row.key: format_amount(row.amount) for row in db.session.scalars(
        sa.select(S).where(S.notification_id == notification_id, S.dimension == "revenue")
        .order_by(S.key))}


def variant_revenue(db: SQLAlchemy, m: Models, notification_id: int) -> dict[int, dict[str, str]]:
    """Each A/B variant's revenue: variant -> currency -> decimal string."""
    S = m.Stat
    found: dict[int, dict[str, str]] = {}
    for row in db.session.scalars(sa.select(S).where(S.notification_id == notification_id,
                                                     S.dimension == "vrevenue").order_by(S.key)):
        variant, _, currency = row.key.partition("|")
        found.setdefault(int(variant), {})[currency] = format_amount(row.amount)
    return found


def export(db: SQLAlchemy, m: Models, user_id: str) -> list[dict[str, Any]]:
    """A user's conversions for the GDPR export."""
    C = m.Conversion
    return [{"order_id": c.order_id, "kind": c.kind, "notification_id": c.notification_id,
             "value": None if c.amount is None else format_amount(c.amount),
             "currency": c.currency, "at": iso(c.converted_at)}
            for c in db.session.scalars(sa.select(C).where(C.user_id == user_id)
                                        .order_by(C.id))]
