"""Retention: delete finished bookings and old dispatch runs in short keyset batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput, shown
from .times import iso_utc, parse_duration

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from .db import Store

PRUNE_BATCH = 500


def parse_age(text: str) -> timedelta:
    """``--older-than``: a duration in hours, days or weeks (``30d``, ``720h``, ``2w``).

    Minutes and seconds are refused: ``1m`` would delete everything that ended a
    minute ago when a month was meant.
    """
    age = parse_duration(text)
    if any(unit in text.strip().lower() for unit in "ms"):
        raise InvalidInput(
            f"--older-than {shown(text, 40)}: give hours, days or weeks, e.g. 30d or 720h "
            "(m is minutes, not months; minutes and seconds are refused here)"
        )
    return age


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
        after = rows[-1]
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


def _finished(conn: Connection, rows: list[tuple[datetime, int]]) -> list[int]:
    """The ids of ``rows`` whose reminders are all final."""
    from . import queries

    ids = [booking_id for _, booking_id in rows]
    busy = queries.bookings_with_unfinished(conn, ids)
    return [i for i in ids if i not in busy]
