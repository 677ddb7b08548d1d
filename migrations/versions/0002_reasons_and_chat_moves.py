"""reason values on reminders; remembered chat moves; one vocabulary of run actions

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import notifyctl.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_COUNTERS = ("moved", "released", "bad_credentials", "lease_lost")
RENAMED_OUTCOMES = (("retry", "retried"), ("lease_expired", "rescued"))


def upgrade() -> None:
    op.create_table(
        "chat_moves",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("old_recipient", sa.String(length=2048), nullable=False),
        sa.Column("new_recipient", sa.String(length=2048), nullable=False),
        sa.Column("moved_at", notifyctl.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", "old_recipient", name=op.f("pk_chat_moves")),
    )
    # plain ADD COLUMNs on both dialects (no table rebuild on SQLite)
    op.add_column("notifications", sa.Column("reason", sa.String(length=32), nullable=True))
    for counter in NEW_COUNTERS:
        op.add_column(
            "dispatch_runs",
            sa.Column(counter, sa.Integer(), nullable=False, server_default=sa.text("0")),
        )
    # history speaks the same words as the counters (runs.Action)
    for old, new in RENAMED_OUTCOMES:
        op.execute(
            sa.text("UPDATE delivery_attempts SET outcome = :new WHERE outcome = :old").bindparams(
                old=old, new=new
            )
        )


def downgrade() -> None:
    for old, new in RENAMED_OUTCOMES:
        op.execute(
            sa.text("UPDATE delivery_attempts SET outcome = :old WHERE outcome = :new").bindparams(
                old=old, new=new
            )
        )
    with op.batch_alter_table("dispatch_runs", schema=None) as batch_op:
        for counter in reversed(NEW_COUNTERS):
            batch_op.drop_column(counter)
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("reason")
    op.drop_table("chat_moves")
