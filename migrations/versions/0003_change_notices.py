"""change notices (SPEC §10): the "was" times and the messages to correct on each notice,
the text as delivered on reminders, the cancel reason on bookings, edit counters on runs

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import notifyctl.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_COUNTERS = ("edited", "edit_failed")


def upgrade() -> None:
    # plain ADD COLUMNs on both dialects (no table rebuild on SQLite)
    when = notifyctl.models.UTCDateTime(timezone=True)
    op.add_column("notifications", sa.Column("previous_starts_at", when, nullable=True))
    op.add_column("notifications", sa.Column("previous_ends_at", when, nullable=True))
    op.add_column("notifications", sa.Column("corrects", sa.JSON(), nullable=True))
    op.add_column("notifications", sa.Column("sent_text", sa.Text(), nullable=True))
    op.add_column("bookings", sa.Column("cancel_reason", sa.String(length=500), nullable=True))
    for counter in NEW_COUNTERS:
        op.add_column(
            "dispatch_runs",
            sa.Column(counter, sa.Integer(), nullable=False, server_default=sa.text("0")),
        )


def downgrade() -> None:
    with op.batch_alter_table("dispatch_runs", schema=None) as batch_op:
        for counter in reversed(NEW_COUNTERS):
            batch_op.drop_column(counter)
    with op.batch_alter_table("bookings", schema=None) as batch_op:
        batch_op.drop_column("cancel_reason")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        for column in ("sent_text", "corrects", "previous_ends_at", "previous_starts_at"):
            batch_op.drop_column(column)
