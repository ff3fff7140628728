"""The tables, built on the host's Flask-SQLAlchemy ``db``.

Each table's columns and methods are a typed mixin declared here (``SubscriptionRow``...);
the model classes combine each mixin with the host's ``db.Model``, so they share the host's
metadata: the host's ``db.create_all()`` and Flask-Migrate/Alembic see them like its own
tables. Annotate with the mixins: ``sub: SubscriptionRow``, ``type[SubscriptionRow]``.
User ids are the strings Flask-Login's ``get_id()`` returns; there is no foreign
key into the host's user table, whatever it is called.
"""

from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, declared_attr, mapped_column
from sqlalchemy.types import TypeDecorator

from . import clock
from .statuses import DeliveryStatus, NotificationStatus

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

USER_ID = sa.String(255)
#: ids of the tables that grow with every notification sent
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (``clock.utcnow``: a test may set it)."""
    return clock.utcnow()


def endpoint_hash(endpoint: str) -> str:
    """SHA-256 of an endpoint: a short unique key that fits any database's index."""
    return hashlib.sha256(endpoint.encode("utf-8")).hexdigest()


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC and returns them aware, on SQLite too."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Refuse a naive datetime; store an aware one converted to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Return the stored time aware, in UTC (SQLite keeps it naive)."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class _Row:
    """What every model has besides its columns, as mypy sees it.

    The host's ``db.Model`` provides the real constructor and ``__table__``: they are
    declared here for type checking only, so the mixins never shadow the declarative base.
    """

    if TYPE_CHECKING:
        __table__: ClassVar[sa.Table]

        def __init__(self, **kwargs: Any) -> None: ...


# Constraints and indexes are made per model class (``declared_attr``): an Index or a
# constraint belongs to one Table, and each host ``db`` gets tables of its own.
_TableArgs = tuple[sa.schema.SchemaItem | dict[str, Any], ...]


class SubscriptionRow(_Row):
    """A browser's push subscription, linked to one user with their consent."""

    __tablename__ = "webpush_subscription"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """The table's index on (user, revoked): a user's active devices."""
        return (sa.Index("ix_webpush_subscription_user_active", "user_id", "revoked_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(USER_ID, nullable=False)
    endpoint: Mapped[str] = mapped_column(sa.Text, nullable=False)
    #: unique key of the endpoint: one browser, one row, one account
    endpoint_sha256: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    p256dh: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    auth: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    label: Mapped[str | None] = mapped_column(sa.String(200))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    consent_version: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(sa.String(32))
    consecutive_failures: Mapped[int] = mapped_column(nullable=False, default=0)
    #: the browser's IANA time zone (quiet hours, local-time sends); None: the default one
    timezone: Mapped[str | None] = mapped_column(sa.String(64))
    #: the browser's language (BCP 47, ``navigator.language``): which text of a notification
    #: in several languages it gets; None: WEBPUSH_DEFAULT_LANGUAGE
    language: Mapped[str | None] = mapped_column(sa.String(35))

    @property
    def active(self) -> bool:
        """Whether the subscription is not revoked."""
        return self.revoked_at is None

    @property
    def push_service(self) -> str:
        """The push service's host: enough to tell browsers apart, no secret."""
        return urlsplit(self.endpoint).hostname or ""

    def set_endpoint(self, endpoint: str) -> None:
        """Set the endpoint and its unique hash together."""
        self.endpoint = endpoint
        self.endpoint_sha256 = endpoint_hash(endpoint)


class ConsentRow(_Row):
    """One entry of the append-only consent ledger (granted or withdrawn)."""

    __tablename__ = "webpush_consent"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """The table's index on (user, time): a user's consent history."""
        return (sa.Index("ix_webpush_consent_user_time", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(USER_ID, nullable=False)
    subscription_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("webpush_subscription.id", ondelete="SET NULL"), index=True
    )
    #: "granted" or "withdrawn"
    action: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    #: why a withdrawal happened: user, device_revoked, moved, logout, forgotten
    reason: Mapped[str | None] = mapped_column(sa.String(32))
    notifications: Mapped[bool] = mapped_column(nullable=False)
    link_to_account: Mapped[bool] = mapped_column(nullable=False)
    text_version: Mapped[str | None] = mapped_column(sa.String(64))
    #: the language of the consent text the customer was shown (a WEBPUSH_CONSENT_TEXT key)
    language: Mapped[str | None] = mapped_column(sa.String(35))
    user_agent: Mapped[str | None] = mapped_column(sa.String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    #: what the entry is about: None for notifications and the link to the account (the
    #: two-part consent), ``category:<name>`` for one category (``notifications`` then
    #: holds the choice)
    scope: Mapped[str | None] = mapped_column(sa.String(80))
    #: how it was given: widget, devices_page, api, host (None: the subscription flow)
    source: Mapped[str | None] = mapped_column(sa.String(16))


class PreferenceRow(_Row):
    """A customer's current choice for one category (the consent ledger keeps the history)."""

    __tablename__ = "webpush_preference"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """One row per (user, category)."""
        return (sa.UniqueConstraint("user_id", "category",
                                    name="uq_webpush_preference_user_category"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(USER_ID, nullable=False)
    category: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    enabled: Mapped[bool] = mapped_column(nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class NotificationRow(_Row):
    """A message to chosen users and devices; one Notification, many deliveries."""

    __tablename__ = "webpush_notification"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """The table's indexes: the lists by status and by category, newest first."""
        return (
            sa.Index("ix_webpush_notification_status_created", "status", "created_at"),
            sa.Index("ix_webpush_notification_category_created", "category", "created_at"),
        )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    #: scheduled, queued, sending, done, cancelled
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False,
                                        default=NotificationStatus.QUEUED.value)
    category: Mapped[str | None] = mapped_column(sa.String(64))
    #: what the browser shows: title, body, url, icon, image, badge, tag, actions...
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    #: who and which devices: {"user_ids": [...], "devices": "all" | "latest" | [...]}
    targeting: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    #: requested users with no consented, active device when fanned out
    users_without_devices: Mapped[list[str] | None] = mapped_column(sa.JSON)
    #: the sizes of the two lists above, kept so lists and figures never load them
    #: (the targeting of a large audience is megabytes of JSON)
    target_count: Mapped[int] = mapped_column(nullable=False, default=0)
    without_count: Mapped[int | None] = mapped_column()
    ttl: Mapped[int] = mapped_column(nullable=False)
    urgency: Mapped[str] = mapped_column(sa.String(10), nullable=False, default="normal")
    topic: Mapped[str | None] = mapped_column(sa.String(32))
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: when the worker finished writing the deliveries (None: fan-out still to do)
    fanned_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    job_id: Mapped[str | None] = mapped_column(sa.String(64))
    #: totals kept when old deliveries are pruned
    #: ({"failure_reasons": [...]}, see stats.prune)
    totals: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    #: notify_*'s quiet_hours: None (the category's or the global setting), True, False
    quiet_hours: Mapped[bool | None] = mapped_column()
    #: "HH:MM": each device gets it at that time in its own time zone
    send_at_local: Mapped[str | None] = mapped_column(sa.String(5))
    #: at most this many deliveries go out in any minute, across all workers
    rate_per_minute: Mapped[int | None] = mapped_column()
    #: requested users who turned the category off, when fanned out (and their number)
    users_opted_out: Mapped[list[str] | None] = mapped_column(sa.JSON)
    opted_out_count: Mapped[int | None] = mapped_column()
    #: users skipped by the category's frequency cap, when fanned out
    capped_count: Mapped[int | None] = mapped_column()
    #: deliveries held by quiet hours: {release time (ISO, UTC): count}
    holds: Mapped[dict[str, int] | None] = mapped_column(sa.JSON)
    #: the notification-wide vars of a payload with placeholders (None: no placeholders,
    #: the texts are sent as written)
    vars: Mapped[dict[str, str] | None] = mapped_column(sa.JSON)
    #: the audience sent to, or the one holding the recipients' vars (``recipients=``);
    #: no foreign key: an audience may be deleted once the fan-out has read it
    audience_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    #: A/B variants: {"variants": [{"payload", "weight"}...], "test_share", "winner_after"
    #: (seconds), "winner_by"}; None: one payload for everyone
    variants: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    #: the variant the users outside the test get, once chosen
    winner: Mapped[int | None] = mapped_column(sa.SmallInteger)


class DeliveryRow(_Row):
    """One notification to one subscription: what happened to it."""

    __tablename__ = "webpush_delivery"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """One delivery per (notification, subscription); lookups by user and device."""
        return (
            sa.UniqueConstraint("notification_id", "subscription_id",
                                name="uq_webpush_delivery_notification_subscription"),
            sa.Index("ix_webpush_delivery_user", "user_id"),
            sa.Index("ix_webpush_delivery_subscription", "subscription_id"),
            # A notification's deliveries by id, a batch's worth at a time (fan-out, batches,
            # recover): without it PostgreSQL, estimating a new notification small, read all
            # its rows for every batch, and a million-delivery fan-out took 0.7 s a chunk.
            # Neither column ever changes, so updates stay HOT.
            sa.Index("ix_webpush_delivery_notification_id", "notification_id", "id"),
            # A delivery is written three times (inserted, claimed, its result): with no
            # index on a column those updates change and two thirds of each page left free,
            # they are HOT updates on PostgreSQL, which write no index entry (a third of the
            # database's work per delivery; benchmarks/README.md). Hence no index on status.
            {"postgresql_with": {"fillfactor": 33}},
        )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        sa.ForeignKey("webpush_notification.id", ondelete="CASCADE"), nullable=False
    )
    subscription_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("webpush_subscription.id", ondelete="SET NULL")
    )
    #: kept here so a device that moves accounts keeps its past deliveries' owner
    user_id: Mapped[str] = mapped_column(USER_ID, nullable=False)
    #: pending (waiting), sending (claimed by a batch), then one of sent, failed,
    #: gone, expired, skipped
    status: Mapped[str] = mapped_column(sa.String(10), nullable=False,
                                        default=DeliveryStatus.PENDING.value)
    status_code: Mapped[int | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(sa.String(255))
    attempts: Mapped[int] = mapped_column(nullable=False, default=0)
    claimed_by: Mapped[str | None] = mapped_column(sa.String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    displayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the action button clicked, if any
    action: Mapped[str | None] = mapped_column(sa.String(64))
    #: when this delivery is due, when later than its notification (quiet hours, local
    #: time): its validity counts from here
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: the recipient's own vars, filled into the notification's placeholders when sent
    vars: Mapped[dict[str, str] | None] = mapped_column(sa.JSON)
    #: the language whose text this delivery carries, for a notification written in several
    #: (None: one text for everyone)
    language: Mapped[str | None] = mapped_column(sa.String(35))
    #: the A/B variant sent (None: the notification has none)
    variant: Mapped[int | None] = mapped_column(sa.SmallInteger)


class StatRow(_Row):
    """Running counters of a notification, bumped as results and events arrive.

    One row per (notification, dimension, key): dimension ``total`` (key ""), the
    funnel; ``minute`` / ``hour`` (key = UTC bucket start), the time series;
    ``platform`` (key = browser family and form factor from the User-Agent, one of
    ``platforms.PLATFORMS``: never the label a customer typed); ``reason`` (key =
    ``status code|reason``); ``language`` (key = language sent); ``revenue`` (key =
    currency of the conversions counted in it); ``variant`` (key = the A/B variant's
    index); ``vrevenue`` (key = ``index|currency``). Figures for a million deliveries are
    then a few rows away, and survive pruning the deliveries and erasing a user.
    """

    __tablename__ = "webpush_stat"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """One row per (notification, dimension, key)."""
        return (sa.UniqueConstraint("notification_id", "dimension", "key",
                                    name="uq_webpush_stat_notification_key"),)

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        sa.ForeignKey("webpush_notification.id", ondelete="CASCADE"), nullable=False)
    dimension: Mapped[str] = mapped_column(sa.String(8), nullable=False)
    key: Mapped[str] = mapped_column(sa.String(200), nullable=False, default="")
    deliveries: Mapped[int] = mapped_column(nullable=False, default=0)
    sent: Mapped[int] = mapped_column(nullable=False, default=0)
    failed: Mapped[int] = mapped_column(nullable=False, default=0)
    gone: Mapped[int] = mapped_column(nullable=False, default=0)
    expired: Mapped[int] = mapped_column(nullable=False, default=0)
    skipped: Mapped[int] = mapped_column(nullable=False, default=0)
    displayed: Mapped[int] = mapped_column(nullable=False, default=0)
    clicked: Mapped[int] = mapped_column(nullable=False, default=0)
    closed: Mapped[int] = mapped_column(nullable=False, default=0)
    #: conversions attributed to a click on the notification, and to its display alone
    conversions: Mapped[int] = mapped_column(nullable=False, default=0)
    influenced_conversions: Mapped[int] = mapped_column(nullable=False, default=0)
    #: dimension ``revenue`` (key = ISO 4217 currency): the sum of the direct conversions'
    #: values, in ten-thousandths of the currency (``conversions.SCALE``)
    amount: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)


class AudienceRow(_Row):
    """A list of user ids kept for sending to (a CRM's segment), with optional vars each."""

    __tablename__ = "webpush_audience"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """Ids never reused on SQLite either: a notification names its audience by id."""
        return ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    #: members now (forget_user lowers it)
    size: Mapped[int] = mapped_column(nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    #: the var names every member has, and each var's longest value as JSON text (bytes):
    #: what notify_users checks placeholders and the payload's size against without
    #: reading every member
    var_names: Mapped[list[str] | None] = mapped_column(sa.JSON)
    var_lengths: Mapped[dict[str, int] | None] = mapped_column(sa.JSON)
    #: made for one notification's ``recipients`` (not listed; pruned with it)
    internal: Mapped[bool] = mapped_column(nullable=False, default=False)


class AudienceMemberRow(_Row):
    """One user of an audience, and that user's vars."""

    __tablename__ = "webpush_audience_member"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """A user is in an audience once; forget_user finds a user's memberships."""
        return (sa.UniqueConstraint("audience_id", "user_id",
                                    name="uq_webpush_audience_member_user"),
                sa.Index("ix_webpush_audience_member_user", "user_id"))

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    audience_id: Mapped[int] = mapped_column(
        sa.ForeignKey("webpush_audience.id", ondelete="CASCADE"), nullable=False)
    user_id: Mapped[str] = mapped_column(USER_ID, nullable=False)
    vars: Mapped[dict[str, str] | None] = mapped_column(sa.JSON)


class ApiKeyRow(_Row):
    """A key of the push API for external systems (CRMs): name, scopes, never the secret."""

    __tablename__ = "webpush_api_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    #: SHA-256 (hex) of the random secret; the secret is shown once, at creation
    secret_sha256: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    #: what the key may do: a subset of "send", "stats", "devices"
    scopes: Mapped[list[str]] = mapped_column(sa.JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    #: updated at most once a minute, so a busy key does not write on every request
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConversionRow(_Row):
    """An order (or any goal) a customer reached, and the push it is attributed to.

    ``kind`` is ``direct`` (the customer clicked that push within
    WEBPUSH_ATTRIBUTION_WINDOW before), ``influenced`` (it was displayed within
    WEBPUSH_INFLUENCE_WINDOW before, not clicked) or ``none`` (unattributed). A value is
    kept as a whole number of ten-thousandths of its currency: exact on every database
    (SQLite has no decimal type; SQLAlchemy's Numeric goes through a float there).
    """

    __tablename__ = "webpush_conversion"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """An order counts once; forget_user finds a user's conversions."""
        return (sa.UniqueConstraint("order_id", name="uq_webpush_conversion_order"),
                sa.Index("ix_webpush_conversion_user", "user_id"),
                sa.Index("ix_webpush_conversion_notification", "notification_id"))

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(USER_ID, nullable=False)
    #: the shop's order id (NULLs are distinct: conversions without one never collide)
    order_id: Mapped[str | None] = mapped_column(sa.String(200))
    kind: Mapped[str] = mapped_column(sa.String(10), nullable=False)
    notification_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("webpush_notification.id", ondelete="SET NULL"))
    #: the delivery clicked or displayed; None once pruned or erased
    delivery_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("webpush_delivery.id", ondelete="SET NULL"))
    amount: Mapped[int | None] = mapped_column(sa.BigInteger)
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    #: when the customer converted (the attribution windows end here)
    converted_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class EventRow(_Row):
    """One thing that happened, for the CRM: a delivery's outcome or event, a conversion, a
    notification done. Append-only; its id orders the log and is the export's cursor."""

    __tablename__ = "webpush_event"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """Ids never reused (a cursor must not see a new event under an old id); erase
        finds a user's events."""
        return (sa.Index("ix_webpush_event_user", "user_id"),
                sa.Index("ix_webpush_event_created", "created_at"),
                {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    #: delivery.sent, delivery.failed, delivery.gone, delivery.expired, delivery.displayed,
    #: delivery.clicked, delivery.closed, conversion, notification.done
    type: Mapped[str] = mapped_column(sa.String(24), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    notification_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: whom it is about (None: a notification's own event); erase deletes by it
    user_id: Mapped[str | None] = mapped_column(USER_ID)
    #: the rest of what the event says (delivery id, status code, action, value...)
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)


class ApiRequestRow(_Row):
    """A notification created through the push API: by which key, with which body."""

    __tablename__ = "webpush_api_request"

    @declared_attr.directive
    def __table_args__(cls) -> _TableArgs:
        """Idempotency keys per API key; the requests of a notification."""
        return (
            # Idempotency keys are per API key: two CRMs never collide. NULLs are distinct.
            sa.UniqueConstraint("api_key_id", "idempotency_key",
                                name="uq_webpush_api_request_key_idempotency"),
            sa.Index("ix_webpush_api_request_notification", "notification_id"),
        )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(sa.ForeignKey("webpush_api_key.id"),
                                            nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(200))
    #: SHA-256 of the canonical request: the same key with another body is refused
    request_sha256: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    #: None while the request that claimed the idempotency key is still running
    notification_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("webpush_notification.id", ondelete="CASCADE"))
    #: the conversion a ``POST /conversions`` recorded (stored with its key, at once)
    conversion_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("webpush_conversion.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


@dataclass(frozen=True)
class Models:
    """The model classes built for one ``db``."""

    Subscription: type[SubscriptionRow]
    Consent: type[ConsentRow]
    Notification: type[NotificationRow]
    Delivery: type[DeliveryRow]
    #: keys of the push API for external systems, and the notifications each key created
    ApiKey: type[ApiKeyRow]
    ApiRequest: type[ApiRequestRow]
    #: running counters of each notification (funnel, time buckets, platforms)
    Stat: type[StatRow]
    #: customers' current choices per category
    Preference: type[PreferenceRow]
    #: lists of user ids kept for sending (a CRM's segments), and their members
    Audience: type[AudienceRow]
    AudienceMember: type[AudienceMemberRow]
    #: orders attributed to the pushes that led to them
    Conversion: type[ConversionRow]
    #: the log of what happened, for webhooks and the event export
    Event: type[EventRow]


_built: WeakKeyDictionary[SQLAlchemy, Models] = WeakKeyDictionary()


def get_models(db: SQLAlchemy) -> Models:
    """Return the models for ``db``, building them on its metadata the first time."""
    if db not in _built:
        _built[db] = _build(db)
    return _built[db]


_R = TypeVar("_R", bound=_Row)


def _model(row: type[_R], base: type[Any]) -> type[_R]:
    """The model of ``row`` on the host's ``base``: ``SubscriptionRow`` -> ``Subscription``."""
    name = row.__name__.removesuffix("Row")

    def namespace(ns: dict[str, Any]) -> None:
        ns.update(__module__=__name__, __qualname__=name, __doc__=row.__doc__)

    # What a class statement does (the base's metaclass and its __prepare__ included), with
    # the name given at run time; a class statement on an untyped base is no type to mypy.
    return cast("type[_R]", types.new_class(name, (row, base), exec_body=namespace))


def _build(db: SQLAlchemy) -> Models:
    """Make the model classes on ``db.Model`` (its metadata, its registry)."""
    base = db.Model
    return Models(
        Subscription=_model(SubscriptionRow, base),
        Consent=_model(ConsentRow, base),
        Notification=_model(NotificationRow, base),
        Delivery=_model(DeliveryRow, base),
        # the order the tables were first declared in: the metadata keeps it
        Stat=_model(StatRow, base),
        ApiKey=_model(ApiKeyRow, base),
        ApiRequest=_model(ApiRequestRow, base),
        Preference=_model(PreferenceRow, base),
        Audience=_model(AudienceRow, base),
        AudienceMember=_model(AudienceMemberRow, base),
        Conversion=_model(ConversionRow, base),
        Event=_model(EventRow, base),
    )
