"""The store: bookings, their reminders, the attempts history, runs and pacing.

Every datetime column is ``db.UTCDateTime``: aware UTC in, aware UTC out, on
both dialects.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .db import SCHEMA_REVISION as SCHEMA_REVISION
from .db import UTCDateTime as UTCDateTime

#: longest chain of alternatives (``notifications.route``)
ROUTE_LENGTH = 2100

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Status(enum.StrEnum):
    """Reminder states, and who moves rows out of each."""

    PENDING = "pending"  # queries.claim_due, expire_useless, expire_superseded, cancel
    SENDING = "sending"  # queries.record_outcomes, rescue_expired_leases
    SENT = "sent"  # final; service.create re-arms it when rescheduled into the future
    FAILED = "failed"  # final; service.create re-arms it when rescheduled
    CANCELLED = "cancelled"  # final; service.create --reactivate or a re-added recipient
    EXPIRED = "expired"  # final; service.create re-arms it when rescheduled


FINAL_STATUSES = (Status.SENT, Status.FAILED, Status.CANCELLED, Status.EXPIRED)
UNSENT_STATUSES = (Status.PENDING, Status.FAILED, Status.EXPIRED, Status.CANCELLED)


class Reason(enum.StrEnum):
    """Why a reminder ended without being sent (or was given back): values, not prose.

    ``last_error`` keeps the human-readable detail; code decides on these.
    """

    REMOVED = "removed"  # its recipient or kind was dropped from the booking by create
    BOOKING_CANCELLED = "booking_cancelled"
    CANCELLED = "cancelled"  # this one reminder, by id
    USELESS = "useless"  # rescheduled to a time when it is no longer useful
    SUPERSEDED = "superseded"  # a later reminder for the same booking and recipient
    TOO_LATE = "too_late"  # not sent before not_after
    GAVE_UP = "gave_up"  # out of attempts
    PERMANENT = "permanent"  # the provider refused it for good
    TEMPLATE = "template"  # its text could not be rendered
    UNKNOWN_CHANNEL = "unknown_channel"
    DUPLICATE = "duplicate"  # its chat moved onto a chat that already had this reminder
    MOVED_BACK = "moved_back"  # a change notice: the booking went back to the times it had
    REPLACED = "replaced"  # a change notice: the booking was cancelled, a cancel notice follows
    REBOOKED = "rebooked"  # a cancel notice: the booking was booked again before it went out
    RECIPIENT_GONE = "recipient_gone"  # the provider says the recipient takes no more messages
    SUPPRESSED = "suppressed"  # its recipient (every alternative of its chain) is suppressed


class RecipientState(enum.StrEnum):
    ACTIVE = "active"
    SUPPRESSED = "suppressed"


class BookingStatus(enum.StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


def _check_in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Booking(Base):
    __tablename__ = "bookings"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    title: Mapped[str] = mapped_column(String(512))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    timezone: Mapped[str] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(35))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=BookingStatus.ACTIVE.value)
    cancel_reason: Mapped[str | None] = mapped_column(String(500))  # cancel --reason
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint(_check_in("status", BookingStatus), name="status"),
        CheckConstraint("ends_at > starts_at", name="ends_after_start"),
        # prune walks finished bookings by end time
        Index("ix_bookings_ends_at", "ends_at"),
    )


def _single_route(context: Any) -> str:
    """An insert that names no route: the reminder goes to its one recipient."""
    given = context.get_current_parameters()
    return f"{given['channel']}:{given['recipient']}"


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    booking_id: Mapped[int] = mapped_column(Id, ForeignKey("bookings.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(2048))  # the alternative in use
    # the chain of alternatives ("telegram:1|email:a@b.org"; one for a plain recipient) and
    # the position of the one in use (0: the first)
    route: Mapped[str] = mapped_column(String(ROUTE_LENGTH), default=_single_route)
    alternative: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(String(32))
    # change notices (kinds.NOTICE_KINDS): the times the recipient was told before the change
    previous_starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    previous_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # a notice's messages to correct in place: [{"id", "message_id", "text", "sent_at"}]
    corrects: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # the text as the recipient saw it (channels that can edit: Telegram)
    sent_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("booking_id", "kind", "route"),
        CheckConstraint(_check_in("status", Status), name="status"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        # "what is due now": only pending rows, whatever the history holds
        Index(
            "ix_notifications_due",
            "due_at",
            "id",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        # "whose lease ran out": only rows being sent
        Index(
            "ix_notifications_lease",
            "lease_expires_at",
            sqlite_where=text("status = 'sending'"),
            postgresql_where=text("status = 'sending'"),
        ),
        # expiry of useless reminders
        Index(
            "ix_notifications_not_after",
            "not_after",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        # chat migration moves every pending reminder of one chat (partial and led by the
        # recipient, so no planner mistakes it for a cheap way to list channels)
        Index(
            "ix_notifications_pending_recipient",
            "recipient",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        # stats over a window of finished reminders
        Index("ix_notifications_updated_at", "updated_at"),
    )


class ChatMove(Base):
    """A chat that moved (Telegram group → supergroup): later creates map old to new."""

    __tablename__ = "chat_moves"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    old_recipient: Mapped[str] = mapped_column(String(2048), primary_key=True)
    new_recipient: Mapped[str] = mapped_column(String(2048))
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Recipient(Base):
    """A recipient's health: suppressed after a provider said it takes no more messages.

    Only recipients that were ever suppressed have a row; ``unsuppress`` makes
    it active again (and ``since`` says when).
    """

    __tablename__ = "recipients"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    # the channel's suppression key: the address without a Telegram topic
    address: Mapped[str] = mapped_column(String(2048), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)  # the provider's answer, redacted
    since: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint(_check_in("state", RecipientState), name="state"),)


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        Id, ForeignKey("notifications.id", ondelete="CASCADE"), index=True
    )
    run_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("dispatch_runs.id", ondelete="SET NULL"), index=True
    )
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(32))
    # the channel the attempt was made on (a reminder of a chain may move to another)
    channel: Mapped[str | None] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    uncertain: Mapped[bool] = mapped_column(Boolean, default=False)


class DispatchRun(Base):
    __tablename__ = "dispatch_runs"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed: Mapped[int] = mapped_column(Integer, default=0)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    retried: Mapped[int] = mapped_column(Integer, default=0)
    rate_limited: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    expired: Mapped[int] = mapped_column(Integer, default=0)
    rescued: Mapped[int] = mapped_column(Integer, default=0)
    # one column per runs.Action (the counters added after the first schema default to 0)
    moved: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    released: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    bad_credentials: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    lease_lost: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    edited: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    edit_failed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    fallback: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    exit_code: Mapped[int | None] = mapped_column(Integer)


class Pacing(Base):
    """One row per rate-limited sender (a bot token's hash): its next free send slot."""

    __tablename__ = "pacing"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_slot_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StatHour(Base):
    """How many reminders reached each end (and attempts each outcome) per hour: ``stats``.

    Kept by triggers (migration 0005), so that ``stats`` and ``list --summary``
    read a few rows per hour instead of the whole history. Every change to a
    finished reminder appends a row of +1 or -1 (a prune appends -1s) and
    ``queries.fold_stat_hours`` sums an hour's rows into one (``folded``); any
    key's sum is always what a ``GROUP BY`` over the table would count.
    ``event`` is the reminder's final status (an expiry by a later reminder is
    ``superseded``, not ``expired``), or ``retried`` / ``fallback`` for an
    attempt (its hour is the attempt's start).
    """

    __tablename__ = "stat_hours"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    channel: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(16))
    count: Mapped[int] = mapped_column(BigInteger)
    folded: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index(
            "ix_stat_hours_unfolded",
            "hour",
            sqlite_where=text("NOT folded"),
            postgresql_where=text("NOT folded"),
        ),
    )


class LatenessHour(Base):
    """Sent reminders per hour (of ``updated_at``) and lateness, to 3 significant digits.

    ``lateness_ms`` is ``sent_at - scheduled_at`` in whole milliseconds, exact
    below 1 s and rounded to 3 significant digits above (1234 → 1230): the
    percentiles of a window with more sent reminders than ``stats`` ranks one
    by one come from here. Kept like ``StatHour``.
    """

    __tablename__ = "lateness_hours"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    channel: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    lateness_ms: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(BigInteger)
    folded: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index(
            "ix_lateness_hours_unfolded",
            "hour",
            sqlite_where=text("NOT folded"),
            postgresql_where=text("NOT folded"),
        ),
    )
