"""The Python API: what a booking system does in-process instead of shelling out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from notifyctl.db import make_engine
from notifyctl.errors import DatabaseError, ExitCode, InvalidInput, NotFound
from notifyctl.migrate import downgrade, upgrade
from notifyctl.queries import ListFilter
from notifyctl.service import cancel, create_booking, list_notifications, open_store
from tests import dbstate as db
from tests.support import FrozenClock

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

START = datetime(2030, 1, 10, 17, 0, tzinfo=UTC)


def test_readme_example_migrate_create_list_cancel(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    upgrade(engine)
    engine.dispose()

    store = open_store(empty_database_url)
    try:
        created = create_booking(
            store, "yoga-42", starts_at="+2h", ends_at="+3h", to=["console:ann"], title="Yoga"
        )
        with list_notifications(store, ListFilter()) as rows:
            listed = list(rows)
        cancelled = cancel(store, ["yoga-42"])
    finally:
        store.close()

    assert (created.action, created.added, created.skipped) == ("created", 4, [])
    assert [(r["booking_id"], r["recipient"], r["status"]) for r in listed] == [
        ("yoga-42", "ann", "pending")
    ] * 4
    assert (cancelled.bookings, cancelled.reminders, cancelled.missing) == (1, 4, ())
    assert {r["status"] for r in db.reminders(empty_database_url)} == {"cancelled"}
    assert db.booking(empty_database_url, "yoga-42")["status"] == "cancelled"


def test_api_accepts_aware_datetimes_and_an_injected_clock(database_url: str) -> None:
    clock = FrozenClock(START - timedelta(minutes=30))
    store = open_store(database_url, clock=clock)
    try:
        result = create_booking(
            store,
            "b1",
            starts_at=START,
            ends_at=START + timedelta(hours=1),
            to=["console:a", "telegram:42"],
            remind=["hour_before", "at_start"],
            data={"room": 3, "tags": ["a", "b"]},
            locale="de",
        )
    finally:
        store.close()

    assert result.added == 4
    assert result.skipped == []  # hour_before is late but still useful until the start
    stored = db.booking(database_url, "b1")
    assert stored["data"] == {"room": 3, "tags": ["a", "b"]}
    assert stored["locale"] == "de"
    rows = db.reminders(database_url, "b1")
    assert {r["created_at"] for r in rows} == {clock()}
    assert {(r["kind"], r["scheduled_at"]) for r in rows} == {
        ("hour_before", START - timedelta(hours=1)),
        ("at_start", START),
    }


def test_api_upsert_reports_unchanged_and_rescheduled(database_url: str) -> None:
    store = open_store(database_url, clock=FrozenClock(START - timedelta(days=3)))
    fields = {"starts_at": START, "ends_at": START + timedelta(hours=1), "to": ["console:a"]}
    try:
        first = create_booking(store, "b1", **fields)
        again = create_booking(store, "b1", **fields)
        moved = create_booking(
            store, "b1", **{**fields, "starts_at": START + timedelta(minutes=15)}
        )
    finally:
        store.close()

    assert [first.action, again.action, moved.action] == ["created", "unchanged", "rescheduled"]
    assert moved.rescheduled == 3  # before_end is tied to the unchanged end
    assert db.counts(database_url) == (1, 4)


@sqlite_only
def test_api_errors_are_exceptions_with_exit_codes(database_url: str) -> None:
    store = open_store(database_url, clock=FrozenClock(START - timedelta(days=3)))
    try:
        with pytest.raises(InvalidInput, match="timezone-aware") as naive:
            create_booking(
                store,
                "b1",
                starts_at=START.replace(tzinfo=None),
                ends_at=START.replace(tzinfo=None) + timedelta(hours=1),
                to=["console:a"],
            )
        with pytest.raises(NotFound, match="not found: nope") as missing:
            cancel(store, ["nope"])
        ignored = cancel(store, ["nope"], missing_ok=True)
    finally:
        store.close()

    assert naive.value.exit_code == ExitCode.USAGE
    assert missing.value.exit_code == ExitCode.USAGE
    assert ignored.missing == ("nope",)
    assert db.counts(database_url) == (0, 0)


def test_open_store_on_a_missing_database_raises_a_database_error(
    empty_database_url: str,
) -> None:
    with pytest.raises(DatabaseError, match="notifyctl migrate") as excinfo:
        open_store(empty_database_url)

    assert excinfo.value.exit_code == ExitCode.DATABASE


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_open_store_on_an_unmigrated_database_leaves_no_connection_open(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    downgrade(engine, "base")
    engine.dispose()

    with (
        db.collecting_leaked_connections() as caught,
        pytest.raises(DatabaseError, match="notifyctl migrate"),
    ):
        open_store(database_url)

    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
