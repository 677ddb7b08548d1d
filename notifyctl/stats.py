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
    from .queries import RunRow

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
    # lateness ranked one by one; False: from the hourly buckets (3 significant digits)
    lateness_exact: bool = True

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
                "lateness_exact": self.lateness_exact,
            },
            "by_channel_kind": [g.as_dict() for g in self.groups],
            "total": self.total.as_dict(),
            "queue": self.queue.as_dict(),
            "runs": [r.as_dict() for r in self.runs],
            "last_success_at": self.last_success_at,
            "seconds_since_last_success": self.seconds_since_last_success,
        }


# stat_hours event → GroupStats field
_EVENT_FIELD = {
    "sent": "sent",
    "failed": "failed",
    "expired": "expired",
    "superseded": "superseded",
    "cancelled": "cancelled",
    "retried": "retries",
    "fallback": "fallbacks",
}
#: up to this many sent reminders in a window, lateness is ranked exactly, one by one;
#: beyond, from lateness_hours (exact below 1 s, 3 significant digits above)
EXACT_LATENESS_LIMIT = 20_000


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
    (``updated_at``); a retry or a fallback when its attempt started inside it.
    """
    from . import queries

    now = store.clock()
    start = now - since
    counts: dict[tuple[str, str], dict[str, Any]] = {}

    def group(channel: str, kind: str) -> dict[str, Any]:
        return counts.setdefault((channel, kind), {"channel": channel, "kind": kind})

    with store.reader() as conn:
        for row in queries.stat_events(conn, start):
            entry = group(row.channel, row.kind)
            field = _EVENT_FIELD[row.event]
            entry[field] = entry.get(field, 0) + int(row.number)
        exact = sum(c.get("sent", 0) for c in counts.values()) <= EXACT_LATENESS_LIMIT
        late = _lateness(conn, start, exact=exact)
        queue = _queue_state(conn, now)
        runs = tuple(RunInfo.from_row(r) for r in queries.recent_runs(conn, RECENT_RUNS))
    for key, figures in late.items():
        if key is not None:
            group(*key).update(figures)
    groups = tuple(GroupStats(**counts[key]) for key in sorted(counts))
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
        **late.get(None, {}),
    )
    return Stats(now, start, groups, total, queue, runs, lateness_exact=exact)


Weighted = dict[float, int]  # value → how many reminders had it


def _lateness(
    conn: Connection, since: datetime, *, exact: bool
) -> dict[tuple[str, str] | None, dict[str, float | None]]:
    """p50, p95 and max of lateness per (channel, kind) and over everything (key None)."""
    from . import queries

    values: dict[tuple[str, str] | None, Weighted] = {None: {}}

    def add(channel: str, kind: str, seconds: float, count: int) -> None:
        for key in ((channel, kind), None):
            into = values.setdefault(key, {})
            into[seconds] = into.get(seconds, 0) + count

    if exact:
        for channel, kind, seconds in queries.lateness_seconds(conn, since):
            add(channel, kind, seconds, 1)
    else:
        for row in queries.lateness_counts(conn, since):
            add(row.channel, row.kind, row.lateness_ms / 1000, int(row.number))
    return {key: _percentiles(weighted) for key, weighted in values.items()}


def _percentiles(weighted: Weighted) -> dict[str, float | None]:
    """Like PostgreSQL's ``percentile_cont``: between the two ranks around the position."""
    ordered = sorted((v, n) for v, n in weighted.items() if n > 0)
    total = sum(n for _, n in ordered)
    if not total:
        return {"lateness_p50": None, "lateness_p95": None, "lateness_max": None}

    def at_rank(rank: int) -> float:  # 0-based
        seen = 0
        for value, n in ordered:
            seen += n
            if rank < seen:
                return value
        return ordered[-1][0]

    def percentile(p: float) -> float:
        position = p * (total - 1)
        low = int(position)
        weight = position - low
        below = at_rank(low)
        return below if weight == 0 else below + weight * (at_rank(low + 1) - below)

    return {
        "lateness_p50": _round(percentile(0.5)),
        "lateness_p95": _round(percentile(0.95)),
        "lateness_max": _round(ordered[-1][0]),
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
            failed_last_24h=sum(
                int(row.number)
                for row in queries.stat_events(conn, now - timedelta(hours=24))
                if row.event == Status.FAILED
            ),
        )
