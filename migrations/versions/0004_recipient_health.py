"""recipient health and fallback (SPEC §11): suppressed recipients, chains of alternatives
on reminders (unique per booking, kind and chain instead of channel and recipient), the
fallback counter on runs

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import notifyctl.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_UNIQUE = "uq_notifications_booking_id_kind_channel_recipient"
NEW_UNIQUE = "uq_notifications_booking_id_kind_route"
ROUTE_LENGTH = 2100


def _notifications(extra: Sequence[sa.Column[Any]], unique: Sequence[str]) -> sa.Table:
    """``notifications`` as SQLite's copy finds it: revision 0003's, with ``extra`` columns
    and the ``unique`` key (booking_id, kind, …) of the moment.

    Given explicitly, so that the copy keeps the partial indexes exactly.
    """
    when = notifyctl.models.UTCDateTime(timezone=True)
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    pending = sa.text("status = 'pending'")
    sending = sa.text("status = 'sending'")
    return sa.Table(
        "notifications",
        sa.MetaData(),
        sa.Column("id", id_type, nullable=False),
        sa.Column("booking_id", id_type, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.String(length=2048), nullable=False),
        sa.Column("scheduled_at", when, nullable=False),
        sa.Column("not_after", when, nullable=False),
        sa.Column("due_at", when, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_token", sa.String(length=36), nullable=True),
        sa.Column("lease_expires_at", when, nullable=True),
        sa.Column("sent_at", when, nullable=True),
        sa.Column("provider_message_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("previous_starts_at", when, nullable=True),
        sa.Column("previous_ends_at", when, nullable=True),
        sa.Column("corrects", sa.JSON(), nullable=True),
        sa.Column("sent_text", sa.Text(), nullable=True),
        *extra,
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed', 'cancelled', 'expired')",
            name="ck_notifications_status",
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_notifications_attempts_not_negative"),
        sa.ForeignKeyConstraint(
            ["booking_id"],
            ["bookings.id"],
            name="fk_notifications_booking_id_bookings",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.UniqueConstraint(
            "booking_id", "kind", *unique, name=OLD_UNIQUE if len(unique) == 2 else NEW_UNIQUE
        ),
        sa.Index("ix_notifications_due", "due_at", "id", sqlite_where=pending),
        sa.Index("ix_notifications_lease", "lease_expires_at", sqlite_where=sending),
        sa.Index("ix_notifications_not_after", "not_after", sqlite_where=pending),
        sa.Index("ix_notifications_pending_recipient", "recipient", sqlite_where=pending),
        sa.Index("ix_notifications_updated_at", "updated_at"),
    )


def _copy_from(unique: Sequence[str], *, route_nullable: bool) -> dict[str, Any]:
    """SQLite changes a constraint by copying the table: from this definition."""
    if op.get_bind().dialect.name != "sqlite":
        return {}
    return {"copy_from": _notifications(_route_columns(route_nullable), unique)}


def _route_columns(route_nullable: bool = True) -> list[sa.Column[Any]]:
    return [
        sa.Column("route", sa.String(length=ROUTE_LENGTH), nullable=route_nullable),
        sa.Column("alternative", sa.Integer(), nullable=False, server_default=sa.text("0")),
    ]


def upgrade() -> None:
    op.create_table(
        "recipients",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=2048), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("since", notifyctl.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('active', 'suppressed')", name=op.f("ck_recipients_state")),
        sa.PrimaryKeyConstraint("channel", "address", name=op.f("pk_recipients")),
    )
    for column in _route_columns():
        op.add_column("notifications", column)
    # every stored reminder is a chain of one; "|" now separates alternatives, so a
    # literal one inside an old address is written as URLs write it
    op.execute("UPDATE notifications SET route = channel || ':' || REPLACE(recipient, '|', '%7C')")
    old = ("channel", "recipient")
    with op.batch_alter_table("notifications", **_copy_from(old, route_nullable=True)) as batch_op:
        batch_op.alter_column("route", existing_type=sa.String(length=ROUTE_LENGTH), nullable=False)
        batch_op.drop_constraint(OLD_UNIQUE, type_="unique")
        batch_op.create_unique_constraint(NEW_UNIQUE, ["booking_id", "kind", "route"])
    op.add_column(
        "dispatch_runs",
        sa.Column("fallback", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("delivery_attempts", sa.Column("channel", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_attempts", schema=None) as batch_op:
        batch_op.drop_column("channel")
    with op.batch_alter_table("dispatch_runs", schema=None) as batch_op:
        batch_op.drop_column("fallback")
    # a reminder that fell back to another alternative keeps the one it is on
    with op.batch_alter_table(
        "notifications", **_copy_from(("route",), route_nullable=False)
    ) as batch_op:
        batch_op.drop_constraint(NEW_UNIQUE, type_="unique")
        batch_op.create_unique_constraint(
            OLD_UNIQUE, ["booking_id", "kind", "channel", "recipient"]
        )
        batch_op.drop_column("alternative")
        batch_op.drop_column("route")
    op.drop_table("recipients")
