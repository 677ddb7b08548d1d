"""Operations: stats, retention (prune), the metrics file and healthcheck pings.

Everything here takes a ``Store`` (engine + injected clock) and plain values,
and returns dataclasses; the statements are named functions in ``queries``.
Importing this module loads neither the models nor ``queries``,
``prometheus_client`` or ``requests``: the functions that need them import
them, so an idle ``dispatch`` with ``--ping-url`` stays cheap.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from .config import REDACTED, redact, redact_url
from .errors import NotifyctlError
from .times import iso_utc

if TYPE_CHECKING:
    import requests
    from sqlalchemy import Connection

    from .db import Store
    from .runs import RunReport

log = logging.getLogger("notifyctl.ops")

RECENT_RUNS = 10
PRUNE_BATCH = 500
PING_TIMEOUT = 3.0


def _seconds(delta: timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds(), 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


# --- stats ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupStats:
    """Finished reminders of one channel and kind (or of all: ``*``) over the window."""

    channel: str
    kind: str
    sent: int = 0
    failed: int = 0
    expired: int = 0
    cancelled: int = 0
    retries: int = 0
    lateness_p50: float | None = None
    lateness_p95: float | None = None
    lateness_max: float | None = None

    @property
    def delivery_rate(self) -> float | None:
        """sent / (sent + failed + expired); cancelled reminders were never meant to go."""
        finished = self.sent + self.failed + self.expired
        return round(self.sent / finished, 4) if finished else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "kind": self.kind,
            "sent": self.sent,
            "failed": self.failed,
            "expired": self.expired,
            "cancelled": self.cancelled,
            "retries": self.retries,
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
    """One row of ``dispatch_runs``."""

    id: int
    host: str
    pid: int
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    claimed: int
    sent: int
    retried: int
    rate_limited: int
    failed: int
    expired: int
    rescued: int
    exit_code: int | None

    @classmethod
    def from_row(cls, row: Any) -> RunInfo:
        finished = row.finished_at
        return cls(
            id=row.id,
            host=row.host,
            pid=row.pid,
            started_at=row.started_at,
            finished_at=finished,
            duration_seconds=_seconds(finished - row.started_at if finished else None),
            claimed=row.claimed,
            sent=row.sent,
            retried=row.retried,
            rate_limited=row.rate_limited,
            failed=row.failed,
            expired=row.expired,
            rescued=row.rescued,
            exit_code=row.exit_code,
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
            group(row.channel, row.kind)[_STATUS_FIELD[row.status]] = row.count
        for row in queries.retry_counts(conn, start):
            group(row.channel, row.kind)["retries"] = row.count
        for row in queries.lateness(conn, start):
            group(row.channel, row.kind).update(_lateness(row))
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
        cancelled=sum(g.cancelled for g in groups),
        retries=sum(g.retries for g in groups),
        lateness_p50=late["lateness_p50"],
        lateness_p95=late["lateness_p95"],
        lateness_max=late["lateness_max"],
    )
    return Stats(now, start, groups, total, queue, runs)


def _lateness(row: Any) -> dict[str, float | None]:
    return {
        "lateness_p50": _round(row.p50),
        "lateness_p95": _round(row.p95),
        "lateness_max": _round(row.max),
    }


# --- prune ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    dry_run: bool
    bookings: int = 0
    notifications: int = 0
    attempts: int = 0
    runs: int = 0

    @property
    def nothing(self) -> bool:
        return not (self.bookings or self.notifications or self.attempts or self.runs)

    def summary_line(self) -> str:
        """One line for people: what went (or would go)."""
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"prune: {verb} {self.bookings} booking(s), {self.notifications} reminder(s), "
            f"{self.attempts} attempt(s) and {self.runs} dispatch run(s) "
            f"from before {iso_utc(self.cutoff)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "dry_run": self.dry_run,
            "bookings": self.bookings,
            "notifications": self.notifications,
            "attempts": self.attempts,
            "runs": self.runs,
        }


def prune(
    store: Store, older_than: timedelta, dry_run: bool, *, batch_size: int = PRUNE_BATCH
) -> PruneResult:
    """Delete finished bookings that ended before now - ``older_than``, and old runs.

    A booking goes only when every reminder of it is final (sent, failed,
    cancelled, expired), together with its reminders and their attempts. The
    bookings are walked by end time, ``batch_size`` at a time, each batch in
    one short transaction, so a dispatch waits at most one batch for the
    SQLite write lock; ``dry_run`` only counts.
    """
    from . import queries

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = store.clock() - older_than
    totals = {"bookings": 0, "notifications": 0, "attempts": 0, "runs": 0}
    after: tuple[datetime, int] | None = None
    while True:
        if dry_run:
            with store.reader() as conn:
                rows = queries.bookings_ended_before(conn, cutoff, after, batch_size)
                ids = _finished(conn, rows)
                reminders, attempts = queries.count_booking_children(conn, ids)
            bookings = len(ids)
        else:
            with store.transaction() as conn:
                rows = queries.bookings_ended_before(conn, cutoff, after, batch_size, lock=True)
                bookings, reminders, attempts = queries.delete_bookings(conn, _finished(conn, rows))
        totals["bookings"] += bookings
        totals["notifications"] += reminders
        totals["attempts"] += attempts
        if len(rows) < batch_size:
            break
        after = (rows[-1].ends_at, rows[-1].id)
    if dry_run:
        with store.reader() as conn:
            totals["runs"] = queries.count_runs_before(conn, cutoff)
    else:
        while True:
            with store.transaction() as conn:
                deleted = queries.delete_runs_before(conn, cutoff, batch_size)
            totals["runs"] += deleted
            if deleted < batch_size:
                break
    return PruneResult(cutoff, dry_run, **totals)


def _finished(conn: Connection, rows: list[Any]) -> list[int]:
    """The ids of ``rows`` whose reminders are all final."""
    from . import queries

    busy = queries.bookings_with_unfinished(conn, [r.id for r in rows])
    return [r.id for r in rows if r.id not in busy]


# --- metrics file -----------------------------------------------------------------------

OUTCOMES_TOTAL = "notifyctl_dispatch_outcomes"


def _previous_outcomes(path: Path) -> dict[tuple[str, str], float]:
    """The outcome counters of the file being replaced (a missing or bad file: none)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict[tuple[str, str], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name != OUTCOMES_TOTAL:
                continue
            for sample in family.samples:
                if sample.name == f"{OUTCOMES_TOTAL}_total":
                    key = (sample.labels.get("channel", ""), sample.labels.get("outcome", ""))
                    found[key] = float(sample.value)
    except (ValueError, TypeError, KeyError):
        return {}
    return found


def write_metrics_file(path: Path, report: RunReport, queue: QueueState, now: datetime) -> None:
    """Prometheus text format for node_exporter's textfile collector, replaced atomically.

    ``notifyctl_dispatch_outcomes_total`` counts outcomes per channel across
    runs (this run's counts are added to the previous file's, so ``increase()``
    works; a lost file is a counter reset); ``notifyctl_dispatch_last_run_outcomes``
    holds this run's counts alone. The rest are gauges.
    """
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    totals = _previous_outcomes(path)
    for channel, outcomes in report.by_channel.items():
        for outcome, count in outcomes.items():
            totals[(channel, outcome)] = totals.get((channel, outcome), 0.0) + count
    if report.exit_code == 0:
        last_success: datetime | None = now
    else:
        last_success = queue.last_success_at

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    outcomes_total = CounterMetricFamily(
        OUTCOMES_TOTAL,
        "Delivery outcomes per channel, summed over the dispatch runs writing this file.",
        labels=["channel", "outcome"],
    )
    for (channel, outcome), value in sorted(totals.items()):
        outcomes_total.add_metric([channel, outcome], value)
    last_run = GaugeMetricFamily(
        "notifyctl_dispatch_last_run_outcomes",
        "Delivery outcomes per channel in the last dispatch run.",
        labels=["channel", "outcome"],
    )
    for channel, outcomes in sorted(report.by_channel.items()):
        for outcome, count in sorted(outcomes.items()):
            last_run.add_metric([channel, outcome], count)
    families: list[Metric] = [
        outcomes_total,
        last_run,
        gauge("notifyctl_queue_pending", "Reminders waiting to be sent.", queue.pending),
        gauge("notifyctl_queue_due", "Pending reminders already due.", queue.due),
        gauge(
            "notifyctl_queue_oldest_due_age_seconds",
            "How long the oldest due reminder has waited (0: nothing due).",
            queue.oldest_due_age_seconds or 0.0,
        ),
        gauge(
            "notifyctl_dispatch_duration_seconds",
            "Duration of the last dispatch run.",
            report.duration_seconds,
        ),
        gauge(
            "notifyctl_dispatch_last_run_timestamp_seconds",
            "When the last dispatch run finished (unix time).",
            now.timestamp(),
        ),
        gauge(
            "notifyctl_dispatch_last_success_timestamp_seconds",
            "When a dispatch run last succeeded (unix time; 0: never).",
            last_success.timestamp() if last_success else 0.0,
        ),
        gauge(
            "notifyctl_dispatch_exit_code",
            "Exit code of the last dispatch run.",
            report.exit_code,
        ),
    ]

    class _Families:
        def collect(self) -> list[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    write_to_textfile(str(path), registry)


def export_metrics(store: Store, path: Path, report: RunReport) -> bool:
    """Read the queue and write the metrics file; a failure is a warning, never the run's."""
    try:
        write_metrics_file(path, report, queue_state(store), store.clock())
    except Exception as e:  # metrics must never fail the run
        log.warning(
            "metrics file %s not written: %s",
            path,
            redact(f"{type(e).__name__}: {e}"),
            extra={"action": "metrics_failed"},
        )
        return False
    return True


# --- healthcheck pings ------------------------------------------------------------------

PingEvent = Literal["start", "success", "fail"] | int
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{16,}")


def _hidden_segments(url: str) -> list[str]:
    """Path segments to keep secret: the last one, and any that looks like a key."""
    try:
        segments = [s for s in urlsplit(url).path.split("/") if s]
    except ValueError:
        return []
    return [s for i, s in enumerate(segments) if i == len(segments) - 1 or _TOKEN_LIKE.fullmatch(s)]


def redact_ping_url(url: str) -> str:
    """A ping URL fit for logs: no password, no query, and its secret path segments hidden."""
    try:
        parts = urlsplit(redact_url(url))
    except ValueError:
        return REDACTED
    hidden = set(_hidden_segments(url))
    path = "/".join(REDACTED if s in hidden else s for s in parts.path.split("/"))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _scrub(text: str, url: str) -> str:
    """``text`` (an error about ``url``) without the URL's secret parts.

    Segments are hidden only where they stand as path segments (after a ``/``,
    up to the next delimiter) and the query only after its ``?``: a short path
    such as ``/x`` must not turn every letter x of the message into ``***``.
    """
    _, _, query = url.partition("?")
    segments = sorted(set(_hidden_segments(url)), key=len, reverse=True)
    if segments:
        alternatives = "|".join(re.escape(s) for s in segments)
        text = re.sub(rf"(?<=/)(?:{alternatives})(?=[/?#\s'\"),;]|$)", REDACTED, text)
    if query:
        text = text.replace(f"?{query}", f"?{REDACTED}")
    return redact(text)


def ping_target(url: str, event: PingEvent) -> str:
    """healthchecks.io: ``URL/start``, ``URL`` on success, ``URL/fail`` or ``URL/<code>``."""
    if event == "success" or event == 0:
        suffix = ""
    elif event == "start" or (isinstance(event, int) and 0 < event <= 255):
        suffix = f"/{event}"
    else:
        suffix = "/fail"
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def ping(
    url: str,
    event: PingEvent,
    session: requests.Session | None = None,
    timeout: float = PING_TIMEOUT,
    *,
    body: str | None = None,
) -> bool:
    """Tell a healthchecks.io-style monitor about a run; True when it answered 2xx.

    Never raises, and never takes longer than ``timeout`` (name resolution
    included: the request runs in a daemon thread that is left behind when it
    is late). Warnings name the URL with its secrets hidden.
    """
    redact.add(s for s in _hidden_segments(url) if _TOKEN_LIKE.fullmatch(s))
    outcome: list[str | None] = []

    def send() -> None:
        try:
            import requests

            target = ping_target(url, event)
            own = session is None
            http = session or requests.Session()
            try:
                response = http.post(
                    target,
                    data=(body or "").encode(),
                    timeout=(timeout, timeout),
                    allow_redirects=True,
                )
                response.close()
            finally:
                if own:
                    http.close()
            ok = 200 <= response.status_code < 300
            outcome.append(None if ok else f"HTTP {response.status_code}")
        except Exception as e:  # a ping must never fail the run
            outcome.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=send, name="notifyctl-ping", daemon=True)
    thread.start()
    thread.join(timeout)
    problem = outcome[0] if outcome else f"no answer within {timeout:g}s"
    if problem is not None:
        log.warning(
            "ping %s (%s) failed: %s",
            redact_ping_url(url),
            event,
            _scrub(problem, url)[:300],
            extra={"action": "ping_failed"},
        )
        return False
    return True


@dataclass
class Healthcheck:
    """Pings ``URL/start`` on enter, then ``URL`` or ``URL/<exit code>`` on exit.

    No URL: does nothing. An exception leaving the block pings its exit code
    (``NotifyctlError``) or ``/fail`` and is not swallowed.
    """

    url: str | None
    session: requests.Session | None = None
    timeout: float = PING_TIMEOUT
    exit_code: int = 0
    summary: str | None = None

    def __enter__(self) -> Healthcheck:
        self._ping("start")
        return self

    def finish(self, report: RunReport) -> None:
        """The run's result, pinged when the block ends."""
        self.exit_code = report.exit_code
        self.summary = report.summary_line() + (f"\nerror: {report.error}" if report.error else "")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self._ping("success" if self.exit_code == 0 else self.exit_code, self.summary)
        elif isinstance(exc, NotifyctlError):
            self._ping(int(exc.exit_code), f"error: {exc.message}")
        else:
            self._ping("fail", f"error: {type(exc).__name__}")

    def _ping(self, event: PingEvent, body: str | None = None) -> None:
        if self.url:
            ping(self.url, event, self.session, self.timeout, body=redact(body) if body else None)
