"""``prune``: only finished bookings older than the cutoff go, in short batches."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, event, func, select

from notifyctl import prune as prune_module
from notifyctl import queries
from notifyctl.db import Store
from notifyctl.models import Booking, DeliveryAttempt, DispatchRun, Notification
from notifyctl.prune import prune
from notifyctl.service import cancel, create_booking
from tests.ops_support import dispatch, frozen_cli, minutes
from tests.support import FrozenClock, stat_hours_drift

THIRTY_DAYS = timedelta(days=30)


def table_counts(store: Store) -> dict[str, int]:
    with store.reader() as conn:
        return {
            model.__tablename__: conn.scalar(select(func.count()).select_from(model)) or 0
            for model in (Booking, Notification, DeliveryAttempt, DispatchRun)
        }


def booking_ids(store: Store) -> set[str]:
    with store.reader() as conn:
        return set(conn.scalars(select(Booking.external_id)))


def book(store: Store, booking_id: str, start: datetime, end: datetime, *kinds: str) -> None:
    create_booking(
        store,
        booking_id,
        starts_at=start,
        ends_at=end,
        to=[f"console:{booking_id}"],
        remind=list(kinds or ["at_start"]),
    )


@pytest.fixture
def history(store: Store, clock: FrozenClock, database_url: str) -> datetime:
    """Four bookings and three runs; returns t0. The clock ends 40 days and 1 h later.

    - done: both reminders sent (two attempts)           → ended 40 d ago: pruned
    - waiting: one sent, one still pending (never run)  → ended 40 d ago: kept
    - called-off: cancelled before anything was sent    → ended 40 d ago: pruned
    - recent: cancelled, ends 10 days ago               → kept
    """
    t0 = clock()
    book(store, "done", t0 + minutes(10), t0 + minutes(70), "at_start", "before_end")
    book(store, "waiting", t0 + minutes(10), t0 + minutes(200), "at_start", "before_end")
    book(store, "called-off", t0 + minutes(10), t0 + minutes(70))
    book(store, "recent", t0 + timedelta(days=30), t0 + timedelta(days=30, hours=1))
    cancel(store, ["called-off", "recent"])
    clock.set(t0 + minutes(10))
    assert dispatch(store, clock, database_url).sent == 2
    clock.set(t0 + minutes(65))
    assert dispatch(store, clock, database_url).sent == 1
    with store.transaction() as conn:  # a run after the cutoff (a dispatch would expire "waiting")
        run_id = queries.start_run(conn, "host", 1, t0 + timedelta(days=35))
        queries.finish_run(conn, run_id, {}, 0, t0 + timedelta(days=35, seconds=1))
    clock.set(t0 + timedelta(days=40, hours=1))
    return t0


def test_prune_deletes_only_finished_bookings_older_than_the_cutoff(
    store: Store, history: datetime
) -> None:
    before = table_counts(store)
    assert before == {
        "bookings": 4,
        "notifications": 6,
        "delivery_attempts": 3,
        "dispatch_runs": 3,
    }

    preview = prune(store, THIRTY_DAYS, dry_run=True)
    assert table_counts(store) == before  # a dry run deletes nothing

    result = prune(store, THIRTY_DAYS, dry_run=False)

    expected = {"bookings": 2, "notifications": 3, "attempts": 2, "runs": 2}
    assert {k: result.as_dict()[k] for k in expected} == expected
    assert {k: preview.as_dict()[k] for k in expected} == expected
    assert (preview.dry_run, result.dry_run) == (True, False)
    assert result.cutoff == history + timedelta(days=10, hours=1)
    assert booking_ids(store) == {"waiting", "recent"}
    assert table_counts(store) == {
        "bookings": 2,
        "notifications": 3,
        "delivery_attempts": 1,
        "dispatch_runs": 1,
    }
    with store.reader() as conn:
        kept = conn.execute(
            select(Notification.kind, Notification.status)
            .join(Booking, Booking.id == Notification.booking_id)
            .where(Booking.external_id == "waiting")
            .order_by(Notification.kind)
        ).all()
        (attempt_run,) = conn.scalars(select(DeliveryAttempt.run_id))
    assert [tuple(r) for r in kept] == [("at_start", "sent"), ("before_end", "pending")]
    assert attempt_run is None  # its run was pruned; the attempt of a kept booking stays
    assert stat_hours_drift(store.engine) == {}  # stats' counts lost what prune deleted

    again = prune(store, THIRTY_DAYS, dry_run=False)
    assert again.nothing


def test_prune_keeps_everything_younger_than_the_cutoff(store: Store, history: datetime) -> None:
    before = table_counts(store)

    result = prune(store, timedelta(days=41), dry_run=False)

    assert result.nothing
    assert table_counts(store) == before


@dataclass
class CountingStore(Store):
    """A store that can act between (and, on PostgreSQL, inside) prune's transactions."""

    during: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    transactions: int = 0
    deleted_per_transaction: list[int] = field(default_factory=list)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        deleted: list[int] = []

        def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if statement.startswith("DELETE FROM bookings"):
                deleted.append(cursor.rowcount)

        event.listen(self.engine, "after_cursor_execute", count)
        try:
            with super().transaction() as conn:
                yield conn
                if self.during is not None:
                    self.during()
        finally:
            event.remove(self.engine, "after_cursor_execute", count)
        self.transactions += 1
        if deleted:
            self.deleted_per_transaction.append(sum(deleted))
        if self.after is not None:
            self.after()


def make_batches(store: Store, clock: FrozenClock, count: int = 9) -> set[str]:
    """``count`` bookings with the same end time; every third keeps a pending reminder."""
    t0 = clock()
    kept = set()
    for n in range(count):
        book(store, f"b{n}", t0 + minutes(10), t0 + minutes(70))
        if n % 3 == 0:
            kept.add(f"b{n}")
        else:
            cancel(store, [f"b{n}"])
    clock.advance(days=40)
    return kept


def test_prune_walks_in_keyset_batches_through_equal_end_times(
    store: Store, clock: FrozenClock
) -> None:
    kept = make_batches(store, clock)
    counting = CountingStore(store.engine, clock)

    preview = prune(counting, THIRTY_DAYS, dry_run=True, batch_size=2)
    assert (preview.bookings, preview.notifications) == (6, 6)
    assert counting.transactions == 0  # a dry run only reads

    result = prune(counting, THIRTY_DAYS, dry_run=False, batch_size=2)

    assert (result.bookings, result.notifications, result.attempts) == (6, 6, 0)
    # two bookings looked at per transaction:
    # [b0 kept, b1] [b2, b3 kept] [b4, b5] [b6 kept, b7] [b8]
    assert counting.deleted_per_transaction == [1, 1, 2, 1, 1]
    assert booking_ids(store) == kept


def _other_writer(database_url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A second connection doing dispatch-like writes that refuse to wait for any lock."""
    if database_url.startswith("sqlite"):
        lite = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=0)
        lite.isolation_level = None

        def write_sqlite() -> None:
            lite.execute("BEGIN IMMEDIATE")  # 'database is locked' at once if prune held it
            lite.execute("UPDATE notifications SET attempts = attempts WHERE status = 'pending'")
            lite.execute("COMMIT")

        return write_sqlite, lite.close
    pg = psycopg.connect(database_url, autocommit=True)
    pg.execute("SET lock_timeout = '100ms'")

    def write_pg() -> None:
        pg.execute("UPDATE notifications SET attempts = attempts WHERE status = 'pending'")

    return write_pg, pg.close


def test_prune_never_holds_a_lock_a_dispatch_would_wait_for(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    kept = make_batches(store, clock)
    write, close = _other_writer(database_url)
    writes: list[str] = []
    try:
        if database_url.startswith("sqlite"):
            # SQLite has one writer at a time: the other connection gets in between batches
            counting = CountingStore(
                store.engine, clock, after=lambda: (write(), writes.append("between"))
            )
        else:
            # PostgreSQL locks rows: the other writer gets in even while a batch is open
            counting = CountingStore(
                store.engine, clock, during=lambda: (write(), writes.append("during"))
            )
        result = prune(counting, THIRTY_DAYS, dry_run=False, batch_size=2)
    finally:
        close()

    assert result.bookings == 6
    assert len(writes) == counting.transactions >= 4
    assert booking_ids(store) == kept


class Ticking:
    """A monotonic clock that a write batch moves by ``per_booking`` s for each booking."""

    def __init__(self, per_booking: float) -> None:
        self.now = 0.0
        self.per_booking = per_booking

    def __call__(self) -> float:
        return self.now


def test_prune_sizes_its_batches_to_hold_the_lock_as_long_as_it_aims_at(
    store: Store, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = clock()
    for n in range(400):
        book(store, f"b{n}", t0 + minutes(10), t0 + minutes(70))
    cancel(store, [f"b{n}" for n in range(400)])
    clock.advance(days=40)
    ticking = Ticking(per_booking=0.004)  # a slow machine: 100 bookings take 0.4 s
    sizes: list[int] = []
    delete_bookings = queries.delete_bookings

    def timed_delete(conn: Connection, ids: Any) -> tuple[int, int, int]:
        sizes.append(len(ids))
        ticking.now += len(ids) * ticking.per_booking
        return delete_bookings(conn, ids)

    monkeypatch.setattr(queries, "delete_bookings", timed_delete)
    monkeypatch.setattr(prune_module, "BATCH_SECONDS", 0.1)
    pauses: list[float] = []

    result = prune(store, THIRTY_DAYS, dry_run=False, monotonic=ticking, sleep=pauses.append)

    assert result.bookings == 400
    # 100 first (0.4 s), then halving until a batch takes 0.1 s: 25 bookings
    assert sizes[:4] == [100, 50, 25, 25]
    assert set(sizes[3:-1]) == {25}
    assert result.longest_batch_seconds == pytest.approx(0.4)
    assert result.batches == len(sizes) + 1  # and one for the runs
    sqlite = store.engine.dialect.name == "sqlite"
    assert pauses == ([prune_module.SQLITE_PAUSE] * (result.batches - 1) if sqlite else [])


def test_prune_and_dispatch_run_at_the_same_time(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    t0 = clock()
    for n in range(20):  # old and finished: pruned
        book(store, f"old{n}", t0 + minutes(10), t0 + minutes(70))
    cancel(store, [f"old{n}" for n in range(20)])
    now = clock.advance(days=40)
    for n in range(15):  # due right now
        book(store, f"live{n}", now, now + minutes(60))
    errors: list[BaseException] = []
    reports = []

    def run_dispatch() -> None:
        try:
            reports.append(dispatch(store, clock, database_url, batch_size=1))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=run_dispatch)
    thread.start()
    result = prune(store, THIRTY_DAYS, dry_run=False, batch_size=1)
    thread.join()

    assert errors == []
    assert result.bookings == 20
    (report,) = reports
    assert (report.sent, report.exit_code) == (15, 0)
    assert booking_ids(store) == {f"live{n}" for n in range(15)}


def test_prune_command_reports_what_it_deleted_and_is_quiet_when_nothing_is_left(
    database_url: str,
    history: datetime,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
    store: Store,
) -> None:
    cli = frozen_cli(monkeypatch, database_url, clock)

    dry = json.loads(cli.ok("prune", "--older-than", "30d", "--dry-run", "--json").stdout)
    assert dry == {
        "cutoff": "2026-06-11T13:00:00Z",
        "dry_run": True,
        "bookings": 2,
        "notifications": 3,
        "attempts": 2,
        "runs": 2,
        "batches": 0,  # a dry run writes nothing
        "longest_batch_seconds": 0.0,
    }
    assert table_counts(store)["bookings"] == 4

    done = cli.ok("prune", "--older-than", "30d")
    assert done.stdout == (
        "prune: deleted 2 booking(s), 3 reminder(s), 2 attempt(s) and 2 dispatch run(s) "
        "from before 2026-06-11T13:00:00Z\n"
    )
    assert booking_ids(store) == {"waiting", "recent"}

    quiet = cli.ok("prune", "--older-than", "30d")
    assert quiet.stdout == ""


def test_prune_command_rejects_a_bad_or_missing_age(cli: Any) -> None:
    bad = cli("prune", "--older-than", "30x")
    assert bad.exit_code == 2
    assert bad.stderr == "error: invalid duration '30x': use e.g. 30m, 2h, 1d, 1h30m\n"

    missing = cli("prune")
    assert missing.exit_code == 2
    assert "--older-than" in missing.stderr
