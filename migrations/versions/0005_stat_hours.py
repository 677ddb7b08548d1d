"""hourly counts for stats (SPEC §9, raised targets): stat_hours and lateness_hours, kept by
triggers on notifications and delivery_attempts, filled from the history once here

Revision ID: 0005
Revises: 0004

``stats`` and ``list --summary`` read these instead of every finished reminder.
The triggers append a row of +1 or -1 per change of a finished reminder (and
of a retried or fallen-back attempt); ``queries.fold_stat_hours`` sums them.
SQLite keeps triggers only as long as their table: a later migration that
copies ``notifications`` or ``delivery_attempts`` (Alembic's batch mode) must
create these triggers again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import notifyctl.models
from notifyctl.queries import event_sql, hour_sql, lateness_ms_sql, rebuild_stat_hours

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = "('sent', 'failed', 'cancelled', 'expired')"
ATTEMPT_EVENTS = "('retried', 'fallback')"
# what decides a finished reminder's counts: when it changes, its old row leaves and its new enters
KEY = ("status", "reason", "channel", "kind", "updated_at", "sent_at", "scheduled_at")
TRIGGERS = (
    ("notifications", "notifications_stats_insert"),
    ("notifications", "notifications_stats_update"),
    ("notifications", "notifications_stats_delete"),
    ("delivery_attempts", "delivery_attempts_stats_insert"),
    ("delivery_attempts", "delivery_attempts_stats_delete"),
)


def _tables() -> None:
    when = notifyctl.models.UTCDateTime(timezone=True)
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    for name, key in (("stat_hours", "event"), ("lateness_hours", "lateness_ms")):
        key_type: sa.types.TypeEngine[object] = (
            sa.String(length=16) if key == "event" else sa.BigInteger()
        )
        op.create_table(
            name,
            sa.Column("id", id_type, nullable=False),
            sa.Column("hour", when, nullable=False),
            sa.Column("channel", sa.String(length=16), nullable=False),
            sa.Column("kind", sa.String(length=32), nullable=False),
            sa.Column(key, key_type, nullable=False),
            sa.Column("count", sa.BigInteger(), nullable=False),
            sa.Column("folded", sa.Boolean(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=f"pk_{name}"),
        )
        op.create_index(f"ix_{name}_hour", name, ["hour"])
        op.create_index(
            f"ix_{name}_unfolded",
            name,
            ["hour"],
            sqlite_where=sa.text("NOT folded"),
            postgresql_where=sa.text("NOT folded"),
        )


def _counted(row: str, sign: int, dialect: str, *, where: str = "") -> list[str]:
    """The inserts that count (sign 1) or uncount (-1) one finished reminder ``row``."""
    hour = hour_sql(f"{row}.updated_at", dialect)
    late = lateness_ms_sql(f"{row}.sent_at", f"{row}.scheduled_at", dialect)
    false = "false" if dialect == "postgresql" else "0"
    also = f" AND {where}" if where else ""
    return [
        "INSERT INTO stat_hours (hour, channel, kind, event, count, folded) "
        f"SELECT {hour}, {row}.channel, {row}.kind, {event_sql(row)}, {sign}, {false} "
        f"WHERE {row}.status IN {FINAL}{also}",
        "INSERT INTO lateness_hours (hour, channel, kind, lateness_ms, count, folded) "
        f"SELECT {hour}, {row}.channel, {row}.kind, {late}, {sign}, {false} "
        f"WHERE {row}.status = 'sent' AND {row}.sent_at IS NOT NULL{also}",
    ]


def _attempt_counted(row: str, sign: int, dialect: str) -> str:
    false = "false" if dialect == "postgresql" else "0"
    return (
        "INSERT INTO stat_hours (hour, channel, kind, event, count, folded) "
        f"SELECT {hour_sql(f'{row}.started_at', dialect)}, coalesce({row}.channel, n.channel), "
        f"n.kind, {row}.outcome, {sign}, {false} FROM notifications n "
        f"WHERE n.id = {row}.notification_id"
    )


def _key_changed(old: str = "OLD", new: str = "NEW") -> str:
    pairs = " OR ".join(f"{old}.{c} IS DISTINCT FROM {new}.{c}" for c in KEY)
    return f"({old}.status IN {FINAL} OR {new}.status IN {FINAL}) AND ({pairs})"


def _sqlite_triggers() -> None:
    def trigger(name: str, event: str, table: str, when: str, body: list[str]) -> None:
        statements = "".join(f"{s};\n" for s in body)
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON {table} WHEN {when}\nBEGIN\n{statements}END"
        )

    key_changed = _key_changed().replace("IS DISTINCT FROM", "IS NOT")
    trigger(
        "notifications_stats_insert",
        "INSERT",
        "notifications",
        f"NEW.status IN {FINAL}",
        _counted("NEW", 1, "sqlite"),
    )
    trigger(
        "notifications_stats_update",
        "UPDATE",
        "notifications",
        key_changed,
        [*_counted("OLD", -1, "sqlite"), *_counted("NEW", 1, "sqlite")],
    )
    trigger(
        "notifications_stats_delete",
        "DELETE",
        "notifications",
        f"OLD.status IN {FINAL}",
        _counted("OLD", -1, "sqlite"),
    )
    # prune deletes a reminder's attempts before the reminder: the join still finds it
    for name, event, row, sign in (("insert", "INSERT", "NEW", 1), ("delete", "DELETE", "OLD", -1)):
        trigger(
            f"delivery_attempts_stats_{name}",
            event,
            "delivery_attempts",
            f"{row}.outcome IN {ATTEMPT_EVENTS}",
            [_attempt_counted(row, sign, "sqlite")],
        )


def _plpgsql(name: str, body: list[str]) -> None:
    statements = "".join(f"  {s};\n" for s in body)
    op.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
        f"{statements}  RETURN NULL;\nEND $$"
    )


def _postgresql_triggers() -> None:
    # a row's own change: row triggers, called only for the rows their WHEN selects
    _plpgsql(
        "notifyctl_count_reminder",
        [
            *_counted("OLD", -1, "postgresql", where="TG_OP = 'UPDATE'"),
            *_counted("NEW", 1, "postgresql"),
        ],
    )
    op.execute(
        "CREATE TRIGGER notifications_stats_insert AFTER INSERT ON notifications FOR EACH ROW "
        f"WHEN (NEW.status IN {FINAL}) EXECUTE FUNCTION notifyctl_count_reminder()"
    )
    op.execute(
        "CREATE TRIGGER notifications_stats_update AFTER UPDATE ON notifications FOR EACH ROW "
        f"WHEN ({_key_changed()}) EXECUTE FUNCTION notifyctl_count_reminder()"
    )
    _plpgsql("notifyctl_count_attempt", [_attempt_counted("NEW", 1, "postgresql")])
    op.execute(
        "CREATE TRIGGER delivery_attempts_stats_insert AFTER INSERT ON delivery_attempts "
        f"FOR EACH ROW WHEN (NEW.outcome IN {ATTEMPT_EVENTS}) "
        "EXECUTE FUNCTION notifyctl_count_attempt()"
    )
    # a prune deletes thousands of rows per statement: one grouped insert each
    hour = hour_sql("o.updated_at", "postgresql")
    late = lateness_ms_sql("o.sent_at", "o.scheduled_at", "postgresql")
    _plpgsql(
        "notifyctl_uncount_reminders",
        [
            "INSERT INTO stat_hours (hour, channel, kind, event, count, folded) "
            f"SELECT {hour}, o.channel, o.kind, {event_sql('o')}, -count(*), false "
            f"FROM gone o WHERE o.status IN {FINAL} GROUP BY 1, 2, 3, 4",
            "INSERT INTO lateness_hours (hour, channel, kind, lateness_ms, count, folded) "
            f"SELECT {hour}, o.channel, o.kind, {late}, -count(*), false "
            "FROM gone o WHERE o.status = 'sent' AND o.sent_at IS NOT NULL GROUP BY 1, 2, 3, 4",
        ],
    )
    op.execute(
        "CREATE TRIGGER notifications_stats_delete AFTER DELETE ON notifications "
        "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT "
        "EXECUTE FUNCTION notifyctl_uncount_reminders()"
    )
    # prune deletes a reminder's attempts before the reminder: the join still finds it
    _plpgsql(
        "notifyctl_uncount_attempts",
        [
            "INSERT INTO stat_hours (hour, channel, kind, event, count, folded) "
            f"SELECT {hour_sql('o.started_at', 'postgresql')}, coalesce(o.channel, n.channel), "
            "n.kind, o.outcome, -count(*), false FROM gone o "
            f"JOIN notifications n ON n.id = o.notification_id WHERE o.outcome IN {ATTEMPT_EVENTS} "
            "GROUP BY 1, 2, 3, 4",
        ],
    )
    op.execute(
        "CREATE TRIGGER delivery_attempts_stats_delete AFTER DELETE ON delivery_attempts "
        "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT "
        "EXECUTE FUNCTION notifyctl_uncount_attempts()"
    )


def upgrade() -> None:
    _tables()
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_triggers()
    else:
        _sqlite_triggers()
    rebuild_stat_hours(op.get_bind())


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgresql else ""))
    if postgresql:
        for function in (
            "notifyctl_count_reminder",
            "notifyctl_count_attempt",
            "notifyctl_uncount_reminders",
            "notifyctl_uncount_attempts",
        ):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_table("lateness_hours")
    op.drop_table("stat_hours")
