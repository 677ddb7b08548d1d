"""reason values on reminders; remembered chat moves

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


def upgrade() -> None:
    op.create_table(
        "chat_moves",
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("old_recipient", sa.String(length=2048), nullable=False),
        sa.Column("new_recipient", sa.String(length=2048), nullable=False),
        sa.Column("moved_at", notifyctl.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", "old_recipient", name=op.f("pk_chat_moves")),
    )
    # a plain ADD COLUMN on both dialects (no table rebuild on SQLite)
    op.add_column("notifications", sa.Column("reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_column("reason")
    op.drop_table("chat_moves")
