"""Stats: outcomes per channel and kind over a window, the queue now, the recent runs.

Takes a ``Store`` (engine + injected clock) and returns dataclasses; the
statements are named functions in ``queries`` (imported when called).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from .db import Store
    from .queries import Lateness, RunRow

RECENT_RUNS = 10


def _seconds(delta: timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds(), 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


@dataclass(frozen=True)
class GroupStats:
    """Finished reminders of one channel and kind (or of all: ``*``) over the window."""

    channel: str
    kind: str
    sent: int = 0
    failed: int = 0
    expired: int = 0  # too late or out of time to retry: not counting superseded ones
    superseded: int = 0  # expired because a later reminder of the booking went instead
    cancelled: int = 0
    retries: int = 0
    fallbacks: int = 0  # reminders that left this channel for the next alternative of a chain
    lateness_p50: float | None = None
    lateness_p95: float | None = None
    lateness_max: float | None = None

    @property
    def delivery_rate(self) -> float | None:
        """sent / (sent + failed + expired); cancelled and superseded ones never were to go."""
        finished = self.sent + self.failed + self.expired
        return round(self.sent / finished, 4) if finished else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "kind": self.kind,
            "sent": self.sent,
            "failed": self.failed,
            "expired": self.expired,
            "superseded": self.superseded,
            "cancelled": self.cancelled,
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "delivery_rate": self.delivery_rate,
            "lateness_p50_seconds": self.lateness_p50,
            "lateness_p95_seconds": self.lateness_p95,
            "lateness_max_seconds": self.lateness_max,
        }


@dataclass(frozen=True)
class QueueState:
    """The queue right now, and when a dispatch run last succeeded."""

    pending: int
    sending: int
    due: int
    oldest_due_age_seconds: float | None
    last_success_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "sending": self.sending,
            "due": self.due,
            "oldest_due_age_seconds": self.oldest_due_age_seconds,
        }


@dataclass(frozen=True)
class RunInfo:
    """One row of ``dispatch_runs``: its counters are ``runs.RUN_COUNTERS``."""

    id: int
    host: str
    pid: int
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    counts: dict[str, int]
    exit_code: int | None

    @classmethod
    def from_row(cls, row: RunRow) -> RunInfo:
        finished = row.finished_at
        return cls(
            id=row.id,
            host=row.host,
            pid=row.pid,
            started_at=row.started_at,
            finished_at=finished,
            duration_seconds=_seconds(finished - row.started_at if finished else None),
            counts=dict(row.counts),
            exit_code=row.exit_code,
        )

    @property
    def idle(self) -> bool:
        """A run that found nothing to do (and exited 0)."""
        return self.exit_code == 0 and not any(self.counts.values())

    def __getattr__(self, name: str) -> int:
        counts = self.__dict__.get("counts", {})
        if name in counts:
            return int(counts[name])
        raise AttributeError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": self.duration_seconds,
            **self.counts,
            "exit_code": self.exit_code,
            "idle": self.idle,
        }


@dataclass(frozen=True)
class Stats:
    now: datetime
    since: datetime
    groups: tuple[GroupStats, ...]
    total: GroupStats
    queue: QueueState
    runs: tuple[RunInfo, ...]

    @property
    def last_success_at(self) -> datetime | None:
        return self.queue.last_success_at

    @property
    def seconds_since_last_success(self) -> float | None:
        last = self.queue.last_success_at
        return _seconds(self.now - last if last else None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": {
                "since": self.since,
                "until": self.now,
                "seconds": (self.now - self.since).total_seconds(),
            },
            "by_channel_kind": [g.as_dict() for g in self.groups],
            "total": self.total.as_dict(),
            "queue": self.queue.as_dict(),
            "runs": [r.as_dict() for r in self.runs],
            "last_success_at": self.last_success_at,
            "seconds_since_last_success": self.seconds_since_last_success,
        }


# final status → GroupStats field
_STATUS_FIELD = {"sent": "sent", "failed": "failed", "expired": "expired", "cancelled": "cancelled"}


def _queue_state(conn: Connection, now: datetime) -> QueueState:
    from . import queries
    from .models import Status

    oldest = queries.oldest_due(conn, now)
    last = queries.last_successful_run(conn)
    return QueueState(
        pending=queries.count_with_status(conn, Status.PENDING),
        sending=queries.count_with_status(conn, Status.SENDING),
        due=queries.count_due(conn, now),
        oldest_due_age_seconds=_seconds(now - oldest if oldest else None),
        last_success_at=last.finished_at if last else None,
    )


def queue_state(store: Store) -> QueueState:
    """Pending, sending, due now, the oldest due reminder's age, the last successful run."""
    now = store.clock()
    with store.reader() as conn:
        return _queue_state(conn, now)


def stats(store: Store, since: timedelta) -> Stats:
    """Outcomes per channel and kind over the last ``since``, the queue, the recent runs.

    A reminder counts in the window when it reached its final status inside it
    (``updated_at``); a retry counts when its attempt started inside it.
    """
    from . import queries

    now = store.clock()
    start = now - since
    counts: dict[tuple[str, str], dict[str, Any]] = {}

    def group(channel: str, kind: str) -> dict[str, Any]:
        return counts.setdefault((channel, kind), {"channel": channel, "kind": kind})

    with store.reader() as conn:
        for row in queries.finished_counts(conn, start):
            group(row.channel, row.kind)[_STATUS_FIELD[str(row.status)]] = row.count
        for row in queries.superseded_counts(conn, start):
            entry = group(row.channel, row.kind)
            entry["superseded"] = row.count
            entry["expired"] = entry.get("expired", 0) - row.count
        for row in queries.retry_counts(conn, start):
            group(row.channel, row.kind)["retries"] = row.count
        for row in queries.fallback_counts(conn, start):
            group(row.channel, row.kind)["fallbacks"] = row.count
        for by_group in queries.lateness(conn, start):
            group(str(by_group.channel), str(by_group.kind)).update(_lateness(by_group))
        (overall,) = queries.lateness(conn, start, by_group=False)
        queue = _queue_state(conn, now)
        runs = tuple(RunInfo.from_row(r) for r in queries.recent_runs(conn, RECENT_RUNS))
    groups = tuple(GroupStats(**counts[key]) for key in sorted(counts))
    late = _lateness(overall)
    total = GroupStats(
        channel="*",
        kind="*",
        sent=sum(g.sent for g in groups),
        failed=sum(g.failed for g in groups),
        expired=sum(g.expired for g in groups),
        superseded=sum(g.superseded for g in groups),
        cancelled=sum(g.cancelled for g in groups),
        retries=sum(g.retries for g in groups),
        fallbacks=sum(g.fallbacks for g in groups),
        lateness_p50=late["lateness_p50"],
        lateness_p95=late["lateness_p95"],
        lateness_max=late["lateness_max"],
    )
    return Stats(now, start, groups, total, queue, runs)


def _lateness(row: Lateness) -> dict[str, float | None]:
    return {
        "lateness_p50": _round(row.p50),
        "lateness_p95": _round(row.p95),
        "lateness_max": _round(row.max),
    }


# --- list --summary ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueueSummary:
    """``list --summary``: counts per status, what is due, queue lag, recent failures.

    The figures carry the names ``stats`` gives them (``due``, ``oldest_due_age_seconds``).
    """

    counts: dict[str, int]
    due: int
    oldest_due_age_seconds: float | None
    failed_last_24h: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "due": self.due,
            "oldest_due_age_seconds": self.oldest_due_age_seconds,
            "failed_last_24h": self.failed_last_24h,
        }

    def flat(self) -> dict[str, Any]:
        """One row for CSV: a column per status, then the queue figures."""
        return self.counts | {k: v for k, v in self.as_dict().items() if k != "counts"}


def queue_summary(store: Store, statuses: tuple[str, ...] = ()) -> QueueSummary:
    """Counts per status (only ``statuses`` when given), due now, the lag, failures in 24 h."""
    from . import queries
    from .models import Status

    now = store.clock()
    with store.reader() as conn:
        counts = {s.value: 0 for s in Status} | queries.count_by_status(conn)
        oldest = queries.oldest_due(conn, now)
        return QueueSummary(
            counts={k: v for k, v in counts.items() if not statuses or k in statuses},
            due=queries.count_due(conn, now),
            oldest_due_age_seconds=_seconds(now - oldest if oldest else None),
            failed_last_24h=queries.count_failed_since(conn, now - timedelta(hours=24)),
        )
