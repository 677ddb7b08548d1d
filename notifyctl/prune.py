"""Retention: delete finished bookings and old dispatch runs in short keyset batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput, shown
from .times import iso_utc, parse_duration

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from .db import Store

#: a write batch aims at this long: on SQLite every other writer waits for it
BATCH_SECONDS = 0.07
#: bookings in the first batch, and the bounds the size adapts within
FIRST_BATCH, MIN_BATCH, MAX_BATCH = 100, 10, 5000
#: SQLite: the pause after a write batch, so that writers polling in SQLite's busy
#: handler (every 1-100 ms) find the lock free before the next batch takes it
SQLITE_PAUSE = 0.05


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
    batches: int = 0  # write transactions (a dry run: 0)
    longest_batch_seconds: float = 0.0  # the longest a write transaction held its locks

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
            "batches": self.batches,
            "longest_batch_seconds": round(self.longest_batch_seconds, 3),
        }


class Batches:
    """The write transactions of one prune: sized to last about ``BATCH_SECONDS``, timed,
    and on SQLite spaced by ``SQLITE_PAUSE``.

    A fixed size is wrong at one end or the other: what a batch costs depends on
    the machine, the database and how many reminders and attempts each booking
    has. The size follows the last batch's speed, at most halving or doubling
    at a time; a ``fixed`` size (tests) never changes.
    """

    def __init__(
        self,
        store: Store,
        fixed: int | None,
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError("batch_size must be at least 1")
        self._store = store
        self._fixed = fixed is not None
        self.size = fixed if fixed is not None else FIRST_BATCH
        self._monotonic = monotonic
        self._sleep = sleep
        self._pause = SQLITE_PAUSE if store.engine.dialect.name == "sqlite" else 0.0
        self.count = 0
        self.longest = 0.0

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        if self.count and self._pause:
            self._sleep(self._pause)
        with self._store.transaction() as conn:
            began = self._monotonic()  # the locks are held from here (SQLite: BEGIN IMMEDIATE)
            yield conn
        took = self._monotonic() - began  # to the end of the commit
        self.count += 1
        self.longest = max(self.longest, took)
        if not self._fixed:
            wanted = self.size * BATCH_SECONDS / max(took, 1e-6)
            bounded = min(max(wanted, self.size / 2), self.size * 2)
            self.size = round(min(max(bounded, MIN_BATCH), MAX_BATCH))


def prune(
    store: Store,
    older_than: timedelta,
    dry_run: bool,
    *,
    batch_size: int | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PruneResult:
    """Delete finished bookings that ended before now - ``older_than``, and old runs.

    A booking goes only when every reminder of it is final (sent, failed,
    cancelled, expired), together with its reminders and their attempts. The
    bookings are walked by end time in batches, each in one short transaction
    (``Batches``), so a dispatch waits at most one batch for the SQLite write
    lock; ``dry_run`` only counts.
    """
    from . import queries

    batches = Batches(store, batch_size, monotonic, sleep)
    cutoff = store.clock() - older_than
    totals = {"bookings": 0, "notifications": 0, "attempts": 0, "runs": 0}
    after: tuple[datetime, int] | None = None
    while True:
        # a dry run only reads: no lock to keep short, so large pages unless told
        size = MAX_BATCH if dry_run and batch_size is None else batches.size
        if dry_run:
            with store.reader() as conn:
                rows = queries.bookings_ended_before(conn, cutoff, after, size)
                ids = _finished(conn, rows)
                reminders, attempts = queries.count_booking_children(conn, ids)
            bookings = len(ids)
        else:
            with batches.transaction() as conn:
                rows = queries.bookings_ended_before(conn, cutoff, after, size, lock=True)
                bookings, reminders, attempts = queries.delete_bookings(conn, _finished(conn, rows))
                queries.fold_stat_hours(conn)  # the -1s just counted: stats stays small
        totals["bookings"] += bookings
        totals["notifications"] += reminders
        totals["attempts"] += attempts
        if len(rows) < size:
            break
        after = rows[-1]
    if dry_run:
        with store.reader() as conn:
            totals["runs"] = queries.count_runs_before(conn, cutoff)
    else:
        while True:
            size = batches.size
            with batches.transaction() as conn:
                deleted = queries.delete_runs_before(conn, cutoff, size)
            totals["runs"] += deleted
            if deleted < size:
                break
    return PruneResult(
        cutoff, dry_run, **totals, batches=batches.count, longest_batch_seconds=batches.longest
    )


def _finished(conn: Connection, rows: list[tuple[datetime, int]]) -> list[int]:
    """The ids of ``rows`` whose reminders are all final."""
    from . import queries

    ids = [booking_id for _, booking_id in rows]
    busy = queries.bookings_with_unfinished(conn, ids)
    return [i for i in ids if i not in busy]
