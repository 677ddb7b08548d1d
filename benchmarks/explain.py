"""Prove that dispatch's maintenance and due queries use indexes, whatever the store size.

The statements are not copied here: the real ``notifyctl.queries`` functions
(and the idle run's probe, ``notifyctl.runs.has_work``) run against the store
inside a transaction that is rolled back, a ``before_cursor_execute`` hook
records each statement with its parameters, and each one is then explained
with those parameters (``EXPLAIN QUERY PLAN`` on SQLite, ``EXPLAIN`` on
PostgreSQL; neither executes it).

A plan fails when it reads the notifications table (or an alias of it)
without an index condition: SQLite ``SCAN notifications`` (allowed only
through one of the partial indexes, whose size is the pending/sending rows,
not the history), PostgreSQL ``Seq Scan on notifications`` or an index scan
without ``Index Cond`` on a non-partial index.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, event

from notifyctl import queries
from notifyctl.db import make_engine
from notifyctl.models import Notification

TABLE = Notification.__tablename__

# name -> a call of the real function, as dispatch makes it
QUERIES: dict[str, Callable[[Connection, datetime], object]] = {
    "expire": lambda conn, now: queries.expire_useless(conn, now),
    "supersede": lambda conn, now: queries.expire_superseded(conn, now),
    "rescue": lambda conn, now: queries.rescue_expired_leases(conn, now, 10),
    "due": lambda conn, now: queries.claim_due(
        conn, now, 50, "00000000-0000-0000-0000-000000000000", timedelta(seconds=300)
    ),
    "due_senders": lambda conn, now: queries.due_senders(conn, now),
}
try:  # the probe an idle run makes instead of the above, where notifyctl has one
    from notifyctl.runs import has_work

    QUERIES = {"idle_probe": lambda conn, now: has_work(conn, now), **QUERIES}
except ImportError:  # pragma: no cover - older layout
    pass


def _since(now: datetime) -> datetime:
    return now - timedelta(hours=24)


# ``stats --since 24h`` and ``list --summary``: whole hours come from stats' hourly tables
# (stat_hours, lateness_hours); the window's partial first hour and the exact lateness read
# the window's range of an index, never the whole history. count_by_status counts the live
# queue through its partial indexes and the history from stat_hours.
STATS_QUERIES: dict[str, Callable[[Connection, datetime], object]] = {
    "stat_events": lambda conn, now: queries.stat_events(conn, _since(now)),
    "lateness_seconds": lambda conn, now: queries.lateness_seconds(conn, _since(now)),
    "lateness_counts": lambda conn, now: queries.lateness_counts(conn, _since(now)),
    "oldest_due": lambda conn, now: queries.oldest_due(conn, now),
    "count_due": lambda conn, now: queries.count_due(conn, now),
    "count_by_status": lambda conn, now: queries.count_by_status(conn),
}
ATTEMPTS = "delivery_attempts"


def partial_indexes() -> set[str]:
    """Indexes of notifications with a WHERE clause (their size is the live queue)."""
    names: set[str] = set()
    for index in Notification.metadata.tables[TABLE].indexes:
        options = index.dialect_options
        if options["sqlite"].get("where") is not None or (
            options["postgresql"].get("where") is not None
        ):
            names.add(str(index.name))
    return names


@dataclass
class Plan:
    query: str
    statement: str
    lines: list[str]
    bad: list[str] = field(default_factory=list)


def _aliases(statement: str, table: str = TABLE) -> set[str]:
    return {table, *re.findall(rf"\b{table} AS (\w+)", statement)}


def judge_sqlite(
    statement: str, lines: list[str], partial: set[str], table: str = TABLE
) -> list[str]:
    names = _aliases(statement, table)
    bad = []
    for line in lines:
        m = re.match(r"\s*SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", line)
        if m and m.group(1) in names and m.group(2) not in partial:
            bad.append(line.strip())
    return bad


def judge_postgresql(
    statement: str, lines: list[str], partial: set[str], table: str = TABLE
) -> list[str]:
    nodes: list[list[str]] = []
    for line in lines:
        if not nodes or "->" in line:
            nodes.append([line])
        else:
            nodes[-1].append(line)
    bad = []
    for node in nodes:
        head = node[0]
        if re.search(rf"Seq Scan on {table}\b", head):
            bad.append(head.strip())
            continue
        m = re.search(rf"Index (?:Only )?Scan(?: Backward)? using (\w+) on {table}\b", head)
        has_cond = any("Index Cond:" in detail for detail in node[1:])
        if m and m.group(1) not in partial and not has_cond:
            bad.append(head.strip())
    return bad


def explain_store(
    url: str,
    now: datetime | None = None,
    calls: dict[str, Callable[[Connection, datetime], object]] | None = None,
) -> list[Plan]:
    """Run each query for real (rolled back), then explain what it sent.

    ``calls``: the queries to explain (default: dispatch's, ``QUERIES``); statements
    reading ``delivery_attempts`` are judged on it too.
    """
    now = now or datetime.now(UTC)
    engine = make_engine(url, create_file=False)
    partial = partial_indexes()
    plans: list[Plan] = []
    try:
        with engine.connect() as conn:
            dialect = conn.dialect.name
            for name, call in (QUERIES if calls is None else calls).items():
                captured: list[tuple[str, Any]] = []

                def capture(
                    _conn: Any,
                    _cursor: Any,
                    statement: str,
                    parameters: Any,
                    _context: Any,
                    _many: bool,
                    sink: list[tuple[str, Any]] = captured,
                ) -> None:
                    sink.append((statement, parameters))

                trans = conn.begin()
                event.listen(conn, "before_cursor_execute", capture)
                try:
                    call(conn, now)
                finally:
                    event.remove(conn, "before_cursor_execute", capture)
                try:
                    for statement, parameters in captured:
                        tables = [t for t in (TABLE, ATTEMPTS) if t in statement]
                        if not tables:
                            continue
                        prefix = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "
                        rows = conn.exec_driver_sql(prefix + statement, parameters).all()
                        if dialect == "sqlite":
                            lines = [str(r[-1]) for r in rows]
                            judge = judge_sqlite
                        else:
                            lines = [str(r[0]) for r in rows]
                            judge = judge_postgresql
                        bad = [b for t in tables for b in judge(statement, lines, partial, t)]
                        plans.append(Plan(name, " ".join(statement.split()), lines, bad))
                finally:
                    trans.rollback()
    finally:
        engine.dispose()
    return plans


def format_plans(title: str, plans: list[Plan]) -> str:
    out = [title]
    for plan in plans:
        verdict = "SCAN!" if plan.bad else "index"
        statement = plan.statement if len(plan.statement) <= 140 else plan.statement[:137] + "..."
        out.append(f"  [{verdict}] {plan.query}: {statement}")
        out.extend(f"      {line}" for line in plan.lines)
    return "\n".join(out)
