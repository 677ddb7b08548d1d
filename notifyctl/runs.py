"""What a dispatch run is told and what it reports, and the idle check.

Cron runs dispatch every minute and most runs find nothing to do. This module
answers "is there anything due, useless or stuck?" with one indexed query and
records such an idle run, without loading the ORM models, the dispatch engine
or any channel: an idle run costs little more than starting Python (SPEC §9).
Its two statements are plain SQL for that reason; every other statement lives
in ``queries``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any

from .errors import DatabaseError, InvalidInput

if TYPE_CHECKING:
    from sqlalchemy import Connection, TextClause

    from .db import Store

BACKOFF_CAP = 3600.0
#: a run waits only for what falls due at least this long before its budget ends
WAIT_MARGIN = 1.0


@dataclass(frozen=True)
class DispatchOptions:
    batch_size: int = 50
    max_seconds: float = 58.0  # cron starts the next run at 60 s
    concurrency: int = 8
    lease_seconds: float = 300.0
    max_attempts: int = 10
    backoff_base: float = 30.0
    rate_limit: float = 25.0
    dry_run: bool = False
    wait: bool = True  # wait within the budget for what falls due (SPEC §13)
    workers: int = 1  # processes claiming and sending side by side (notifyctl.workers)

    @property
    def wait_horizon(self) -> timedelta:
        """How far ahead a run waits for what falls due (SPEC §13): its budget, less a margin."""
        if not self.wait:
            return timedelta(0)
        return timedelta(seconds=max(0.0, self.max_seconds - WAIT_MARGIN))

    def validate(self) -> DispatchOptions:
        checks = [
            (1 <= self.batch_size <= 10_000, "--batch-size must be 1-10000"),
            (0 < self.max_seconds <= 86_400, "--max-seconds must be > 0"),
            (1 <= self.concurrency <= 256, "--concurrency must be 1-256"),
            (10 <= self.lease_seconds <= 86_400, "--lease-seconds must be 10-86400"),
            (1 <= self.max_attempts <= 1000, "--max-attempts must be 1-1000"),
            (0 < self.backoff_base <= BACKOFF_CAP, "--backoff-base must be 0-3600 seconds"),
            (0 < self.rate_limit <= 10_000, "--rate-limit must be > 0"),
            (1 <= self.workers <= 64, "--workers must be 1-64"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInput(message)
        if self.lease_seconds <= self.max_seconds:
            raise InvalidInput("--lease-seconds must be longer than --max-seconds")
        return self


class Action(StrEnum):
    """What became of one claim: the one vocabulary of a run.

    The same names are the ``delivery_attempts.outcome`` of a history row, a
    ``dispatch_runs`` column and a ``RunReport`` counter, a metrics label and a
    log record's ``action`` (tests/test_migrate_config.py keeps them in step).
    """

    SENT = "sent"
    RETRIED = "retried"  # a passing failure: tried again after a backoff
    RATE_LIMITED = "rate_limited"  # the provider asked to wait: no attempt used
    MOVED = "moved"  # the chat moved: retried at its new address at once
    FAILED = "failed"
    EXPIRED = "expired"  # too late to be of use (never sent)
    RELEASED = "released"  # given back untouched: not sent (no slot in time, channel stopped)
    BAD_CREDENTIALS = "bad_credentials"  # the provider refused the token: given back
    RESCUED = "rescued"  # its run stopped holding it (crash): pending again, marked uncertain
    LEASE_LOST = "lease_lost"  # its outcome was not recorded: a newer owner holds it
    EDITED = "edited"  # a sent Telegram reminder corrected in place after a change notice
    EDIT_FAILED = "edit_failed"  # that correction was refused (the notice itself went out)
    FALLBACK = "fallback"  # left this alternative of its chain: the next one is tried at once


#: per-run counters besides one per Action
RUN_COUNTERS = ("claimed", *Action)


@dataclass
class RunReport:
    run_id: int | None = None
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    rate_limited: int = 0
    moved: int = 0
    failed: int = 0
    expired: int = 0
    released: int = 0
    bad_credentials: int = 0
    rescued: int = 0
    lease_lost: int = 0
    edited: int = 0
    edit_failed: int = 0
    fallback: int = 0
    exit_code: int = 0
    error: str | None = None
    duration_seconds: float = 0.0
    by_channel: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        return not any(self.counts().values())

    def counts(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in RUN_COUNTERS}

    def count(self, action: Action, channel: str | None = None, n: int = 1) -> None:
        setattr(self, action, getattr(self, action) + n)
        if channel is not None:
            per = self.by_channel.setdefault(channel, {})
            per[action] = per.get(action, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_line(self) -> str:
        parts = [f"{self.sent} sent"]
        for action in Action:
            if action is not Action.SENT and getattr(self, action):
                parts.append(f"{getattr(self, action)} {action.replace('_', ' ')}")
        return f"dispatch: {', '.join(parts)} in {self.duration_seconds:.1f}s"


ANY_WORK_SQL = (
    "SELECT 1 FROM notifications WHERE status = 'pending' AND due_at <= :horizon "
    "UNION ALL "
    "SELECT 1 FROM notifications WHERE status = 'pending' AND not_after <= :now "
    "UNION ALL "
    "SELECT 1 FROM notifications WHERE status = 'sending' AND lease_expires_at <= :now "
    "UNION ALL "  # counts for stats to fold (queries.fold_stat_hours)
    "SELECT 1 FROM stat_hours WHERE NOT folded "
    "UNION ALL "
    "SELECT 1 FROM lateness_hours WHERE NOT folded "
    "LIMIT 1"
)
RECORD_IDLE_RUN_SQL = (
    "INSERT INTO dispatch_runs (host, pid, started_at, finished_at, claimed, sent, retried, "
    "rate_limited, failed, expired, rescued, exit_code) "  # the other counters default to 0
    "VALUES (:host, :pid, :started, :finished, 0, 0, 0, 0, 0, 0, 0, 0)"
)


@cache
def _statements() -> tuple[TextClause, TextClause]:
    """The two statements for SQLAlchemy (built on first use: see ``quick_idle_run``)."""
    from sqlalchemy import bindparam, text

    from .db import UTCDateTime

    any_work = text(ANY_WORK_SQL).bindparams(
        bindparam("now", type_=UTCDateTime), bindparam("horizon", type_=UTCDateTime)
    )
    record = text(RECORD_IDLE_RUN_SQL).bindparams(
        bindparam("started", type_=UTCDateTime), bindparam("finished", type_=UTCDateTime)
    )
    return any_work, record


def has_work(conn: Connection, now: datetime, wait: timedelta = timedelta(0)) -> bool:
    """Anything due (or due within ``wait``), past its useful time, held by a lease that ran
    out, or counts for ``stats`` to fold?

    Each branch is served by a partial index (ix_notifications_due, _not_after, _lease,
    ix_stat_hours_unfolded, ix_lateness_hours_unfolded).
    """
    params = {"now": now, "horizon": now + wait}
    return conn.execute(_statements()[0], params).first() is not None


def record_idle_run(
    conn: Connection, host: str, pid: int, started: datetime, finished: datetime
) -> None:
    """An idle run is still a run: monitoring counts the time since the last success."""
    conn.execute(
        _statements()[1], {"host": host, "pid": pid, "started": started, "finished": finished}
    )


def idle_run(store: Store, options: DispatchOptions | None = None) -> RunReport | None:
    """Record and report a run with nothing to do; None when there is work.

    Work includes a reminder falling due while the run could still wait for it.
    """
    import os
    import socket

    started = store.clock()
    with store.transaction() as conn:
        if has_work(conn, started, (options or DispatchOptions()).wait_horizon):
            return None
        record_idle_run(conn, socket.gethostname(), os.getpid(), started, store.clock())
    return RunReport()


def quick_idle_run(
    database_url: str, options: DispatchOptions, clock: Callable[[], datetime]
) -> RunReport | None:
    """``idle_run`` through the plain driver, before SQLAlchemy is loaded; None: not decided.

    The same two statements in one write transaction (``BEGIN IMMEDIATE`` on
    SQLite), on a store whose ``alembic_version`` is ``SCHEMA_REVISION``. When
    there is work, the store is not at that revision, the URL is unusual or
    anything else goes wrong, it answers None and the regular path decides
    (and words any error) as it always did. Only an unreachable database is
    reported here, worded as the regular path words it, so that its wait is
    not paid twice.
    """
    from . import rawstore
    from .config import redact_url

    target = rawstore.plain_target(database_url)
    if target is None:
        return None
    dialect, where = target
    try:
        if dialect == "sqlite":
            conn = rawstore.connect_sqlite(where)
        else:
            conn = rawstore.connect_postgresql(where)
    except Exception as e:
        if type(e).__name__ != "OperationalError":  # sqlite3's and psycopg's
            return None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(f"database {redact_url(database_url)} is unavailable: {reason}") from e
    try:
        return _plain_idle_run(conn, dialect, options, clock)
    except Exception:  # the regular path decides, and words the error
        return None
    finally:
        conn.close()


def _plain_idle_run(
    conn: Any, dialect: str, options: DispatchOptions, clock: Callable[[], datetime]
) -> RunReport | None:
    import os
    import socket

    from .rawstore import SCHEMA_REVISION, SQLITE_TIME, pg_params

    def at(moment: datetime) -> Any:  # SQLite: the text SQLAlchemy stores; PostgreSQL: as is
        return moment.astimezone(UTC).strftime(SQLITE_TIME) if dialect == "sqlite" else moment

    def sql(statement: str) -> str:
        return statement if dialect == "sqlite" else pg_params(statement)

    if dialect == "sqlite":
        conn.execute("BEGIN IMMEDIATE")
    revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    if revision is None or revision[0] != SCHEMA_REVISION:
        conn.rollback()
        return None
    started = clock()
    params = {"now": at(started), "horizon": at(started + options.wait_horizon)}
    if conn.execute(sql(ANY_WORK_SQL), params).fetchone() is not None:
        conn.rollback()
        return None
    host, pid = socket.gethostname(), os.getpid()
    values = {"host": host, "pid": pid, "started": at(started), "finished": at(clock())}
    conn.execute(sql(RECORD_IDLE_RUN_SQL), values)
    conn.commit()
    return RunReport()
