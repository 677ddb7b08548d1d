"""``notifyctl cancel`` and ``notifyctl list``: stored effects, filters and output shapes."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import dbstate as db
from tests.dbstate import assert_usage_error, iso
from tests.support import Cli

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

LIST_FIELDS = [
    "id",
    "booking_id",
    "kind",
    "channel",
    "recipient",
    "status",
    "scheduled_at",
    "not_after",
    "due_at",
    "attempts",
    "last_error",
    "sent_at",
    "route",
    "alternative",
]
TIME_FIELDS = ("scheduled_at", "not_after", "due_at", "sent_at")

# b1 starts after b2, so all of b2's reminders are due before b1's.
B1_START = datetime(2030, 1, 10, 17, 0, tzinfo=UTC)
B2_START = datetime(2030, 1, 5, 9, 0, tzinfo=UTC)


def make_booking(
    cli: Cli, booking_id: str, starts: datetime, *extra: str, to: str = "console:a"
) -> None:
    cli.ok(
        "create",
        booking_id,
        "--starts-at",
        iso(starts),
        "--ends-at",
        iso(starts + timedelta(hours=1)),
        "--to",
        to,
        *extra,
    )


def two_bookings(cli: Cli) -> None:
    make_booking(cli, "b1", B1_START)
    make_booking(cli, "b2", B2_START)


def list_json(cli: Cli, *args: str) -> list[dict[str, Any]]:
    body = json.loads(cli.ok("list", "--format", "json", *args).stdout)
    assert isinstance(body, list)
    return body


def ids_of(url: str, booking_id: str, kind: str) -> int:
    [row] = [r for r in db.reminders(url, booking_id) if r["kind"] == kind]
    return int(row["id"])


# --- cancel -----------------------------------------------------------------------------


def test_cancel_cancels_the_booking_and_its_unsent_reminders(cli: Cli, database_url: str) -> None:
    two_bookings(cli)
    sent_at = db.now()
    db.set_reminder(database_url, "b1", "day_before", status="sent", sent_at=sent_at)
    db.set_reminder(
        database_url,
        "b1",
        "hour_before",
        status="sending",
        lease_token="t-1",
        lease_expires_at=sent_at + timedelta(minutes=5),
    )
    b2_before = db.reminders(database_url, "b2")

    result = cli.ok("cancel", "b1")

    assert result.stdout.strip() == (
        "cancelled 1 booking(s), 3 reminder(s), 1 change notice(s) queued"  # §10: who got one
    )
    assert db.booking(database_url, "b1")["status"] == "cancelled"
    rows = {r["kind"]: r for r in db.reminders(database_url, "b1")}
    assert rows["day_before"]["status"] == "sent"  # history is kept
    assert rows.pop("cancelled")["status"] == "pending"
    for kind in ("hour_before", "at_start", "before_end"):
        assert rows[kind]["status"] == "cancelled"
        assert rows[kind]["last_error"] == "booking cancelled"
        assert (rows[kind]["lease_token"], rows[kind]["lease_expires_at"]) == (None, None)
    assert db.booking(database_url, "b2")["status"] == "active"
    assert db.reminders(database_url, "b2") == b2_before


def test_cancel_is_idempotent(cli: Cli, database_url: str) -> None:
    two_bookings(cli)
    cli.ok("cancel", "b1")
    before = (db.bookings(database_url), db.reminders(database_url))

    result = cli.ok("cancel", "b1", "--json")

    assert json.loads(result.stdout) == {"bookings": 1, "reminders": 0, "notices": 0, "missing": []}
    assert (db.bookings(database_url), db.reminders(database_url)) == before


@sqlite_only
def test_cancel_json_output_counts_bookings_and_reminders(cli: Cli, database_url: str) -> None:
    two_bookings(cli)

    result = cli.ok("cancel", "b1", "b2", "--json")

    assert json.loads(result.stdout) == {"bookings": 2, "reminders": 8, "notices": 0, "missing": []}
    assert {b["status"] for b in db.bookings(database_url)} == {"cancelled"}


def test_cancel_unknown_id_fails_and_changes_nothing(cli: Cli, database_url: str) -> None:
    two_bookings(cli)
    before = (db.bookings(database_url), db.reminders(database_url))

    result = cli("cancel", "b1", "nope")

    assert_usage_error(result, contains="not found: nope")
    assert "--missing-ok" in result.stderr
    assert (db.bookings(database_url), db.reminders(database_url)) == before


def test_cancel_missing_ok_cancels_the_known_and_reports_the_missing(
    cli: Cli, database_url: str
) -> None:
    two_bookings(cli)

    result = cli.ok("cancel", "b1", "nope", "--missing-ok", "--json")

    assert json.loads(result.stdout) == {
        "bookings": 1,
        "reminders": 4,
        "notices": 0,
        "missing": ["nope"],
    }
    assert db.booking(database_url, "b1")["status"] == "cancelled"
    assert db.booking(database_url, "b2")["status"] == "active"


def test_cancel_one_notification_by_id(cli: Cli, database_url: str) -> None:
    two_bookings(cli)
    target = ids_of(database_url, "b1", "hour_before")

    result = cli.ok("cancel", "--notification", str(target), "--json")

    assert json.loads(result.stdout) == {"bookings": 0, "reminders": 1, "notices": 0, "missing": []}
    assert db.booking(database_url, "b1")["status"] == "active"
    status = {r["id"]: r["status"] for r in db.reminders(database_url)}
    assert status.pop(target) == "cancelled"
    assert set(status.values()) == {"pending"}


@sqlite_only
def test_cancel_notification_already_sent_is_left_alone(cli: Cli, database_url: str) -> None:
    two_bookings(cli)
    db.set_reminder(database_url, "b1", "day_before", status="sent", sent_at=db.now())
    target = ids_of(database_url, "b1", "day_before")

    result = cli.ok("cancel", "--notification", str(target), "--json")

    assert json.loads(result.stdout)["reminders"] == 0
    [row] = [r for r in db.reminders(database_url) if r["id"] == target]
    assert row["status"] == "sent"


def test_cancel_unknown_notification_fails_and_changes_nothing(cli: Cli, database_url: str) -> None:
    two_bookings(cli)
    before = db.reminders(database_url)

    result = cli("cancel", "b1", "--notification", "999999")

    assert_usage_error(result, contains="not found: 999999")
    assert db.reminders(database_url) == before
    assert db.booking(database_url, "b1")["status"] == "active"


@sqlite_only
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "at least one BOOKING_ID", id="nothing"),
        pytest.param(["--notification", "abc"], "abc", id="non-numeric-notification"),
    ],
)
def test_cancel_usage_errors(cli: Cli, database_url: str, args: list[str], message: str) -> None:
    two_bookings(cli)

    result = cli("cancel", *args)

    assert_usage_error(result, contains=message)
    assert {b["status"] for b in db.bookings(database_url)} == {"active"}


# --- list ---------------------------------------------------------------------------------


def test_list_json_is_one_array_with_exactly_the_documented_fields(
    cli: Cli, database_url: str
) -> None:
    make_booking(cli, "b1", B1_START)
    db.set_reminder(
        database_url,
        "b1",
        "day_before",
        status="failed",
        attempts=3,
        last_error="chat not found",
        sent_at=datetime(2030, 1, 9, 17, 0, 1, tzinfo=UTC),
    )

    rows = list_json(cli)

    assert len(rows) == 4
    for row in rows:
        assert list(row) == LIST_FIELDS
        for field in TIME_FIELDS:
            if row[field] is not None:
                assert row[field].endswith("Z"), row[field]
    first = rows[0]
    stored = db.by_key(db.reminders(database_url))[("day_before", "console", "a")]
    assert first == {
        "id": stored["id"],
        "booking_id": "b1",
        "kind": "day_before",
        "channel": "console",
        "recipient": "a",
        "status": "failed",
        "scheduled_at": "2030-01-09T17:00:00Z",
        "not_after": "2030-01-10T17:00:00Z",
        "due_at": "2030-01-09T17:00:00Z",
        "attempts": 3,
        "last_error": "chat not found",
        "sent_at": "2030-01-09T17:00:01Z",
        "route": "console:a",
        "alternative": 1,
    }


def test_list_by_default_shows_pending_and_failed_soonest_first(
    cli: Cli, database_url: str
) -> None:
    two_bookings(cli)
    db.set_reminder(database_url, "b1", "day_before", status="failed")
    db.set_reminder(database_url, "b1", "hour_before", status="sent", sent_at=db.now())
    db.set_reminder(database_url, "b2", "at_start", status="cancelled")

    rows = list_json(cli)

    assert [(r["booking_id"], r["kind"], r["status"]) for r in rows] == [
        ("b2", "day_before", "pending"),
        ("b2", "hour_before", "pending"),
        ("b2", "before_end", "pending"),
        ("b1", "day_before", "failed"),
        ("b1", "at_start", "pending"),
        ("b1", "before_end", "pending"),
    ]
    due = [r["due_at"] for r in rows]
    assert due == sorted(due)


@sqlite_only
def test_list_empty_queue_is_an_empty_array(cli: Cli, database_url: str) -> None:
    assert list_json(cli) == []


def test_list_status_filter_is_repeatable_and_accepts_all(cli: Cli, database_url: str) -> None:
    two_bookings(cli)
    db.set_reminder(database_url, "b1", "day_before", status="failed")
    db.set_reminder(database_url, "b1", "hour_before", status="sent", sent_at=db.now())
    db.set_reminder(database_url, "b2", "at_start", status="cancelled")

    def statuses(*args: str) -> list[str]:
        return sorted(r["status"] for r in list_json(cli, *args))

    assert statuses("--status", "sent") == ["sent"]
    assert statuses("--status", "sent", "--status", "cancelled") == ["cancelled", "sent"]
    assert statuses("--status", "sent,failed") == ["failed", "sent"]
    assert statuses("--status", "all") == sorted(["cancelled", "failed", "sent"] + ["pending"] * 5)
    assert statuses("--status", "expired") == []


def test_list_filters_by_booking_and_kind(cli: Cli, database_url: str) -> None:
    make_booking(cli, "b1", B1_START, "--remind", "at_start", "--remind", "start-30m")
    make_booking(cli, "b2", B2_START, "--remind", "at_start")

    assert {r["booking_id"] for r in list_json(cli, "--booking", "b2")} == {"b2"}
    assert len(list_json(cli, "--booking", "b1")) == 2
    assert {(r["booking_id"], r["kind"]) for r in list_json(cli, "--kind", "at_start")} == {
        ("b1", "at_start"),
        ("b2", "at_start"),
    }
    assert [r["kind"] for r in list_json(cli, "--kind", "START-30m")] == ["start-30m"]
    assert list_json(cli, "--booking", "nope") == []


def test_list_filters_by_due_time_and_limits(cli: Cli, database_url: str) -> None:
    two_bookings(cli)  # b2 due 2030-01-04 09:00 … 2030-01-05 09:55, b1 2030-01-09 17:00 …

    before = list_json(cli, "--due-before", "2030-01-05T09:00:00+00:00")
    after = list_json(cli, "--due-after", "2030-01-05T09:00:00+00:00")
    window = list_json(cli, "--due-after", "2030-01-05 10:00", "--due-before", "2030-01-10 17:00")
    limited = list_json(cli, "--limit", "3")

    assert [r["kind"] for r in before] == ["day_before", "hour_before"]  # before is exclusive
    assert [(r["booking_id"], r["kind"]) for r in after][:2] == [
        ("b2", "at_start"),
        ("b2", "before_end"),
    ]
    assert len(before) + len(after) == 8
    assert [(r["booking_id"], r["kind"]) for r in window] == [
        ("b1", "day_before"),
        ("b1", "hour_before"),
    ]
    assert limited == list_json(cli)[:3]


@sqlite_only
def test_list_due_times_accept_relative_and_zoned_forms(cli: Cli, database_url: str) -> None:
    now = db.now()
    make_booking(cli, "soon", now + timedelta(minutes=30), "--remind", "at_start")
    make_booking(cli, "later", now + timedelta(hours=5), "--remind", "at_start")
    # a wall-clock time one hour from now in a zone without DST (+05:30)
    local = (now + timedelta(hours=1)).astimezone(ZoneInfo("Asia/Kolkata"))

    relative = list_json(cli, "--due-before", "+1h")
    zoned = list_json(
        cli, "--due-after", local.strftime("%Y-%m-%d %H:%M"), "--timezone", "Asia/Kolkata"
    )

    assert [r["booking_id"] for r in relative] == ["soon"]
    assert [r["booking_id"] for r in zoned] == ["later"]


@sqlite_only
def test_list_csv_has_the_same_fields(cli: Cli, database_url: str) -> None:
    two_bookings(cli)
    db.set_reminder(database_url, "b2", "day_before", status="failed", last_error="boom, again")

    result = cli.ok("list", "--format", "csv")

    reader = csv.DictReader(io.StringIO(result.stdout))
    assert reader.fieldnames == LIST_FIELDS
    rows = list(reader)
    assert len(rows) == 8
    assert rows[0]["last_error"] == "boom, again"
    assert rows[0]["scheduled_at"] == "2030-01-04T09:00:00Z"
    assert rows[0]["sent_at"] == ""
    assert [r["id"] for r in rows] == [str(r["id"]) for r in list_json(cli)]


@sqlite_only
def test_list_table_off_a_terminal_is_tab_separated(cli: Cli, database_url: str) -> None:
    make_booking(cli, "b1", B1_START, "--remind", "at_start")

    lines = cli.ok("list").stdout.splitlines()

    assert lines[0].split("\t") == LIST_FIELDS
    assert len(lines) == 2
    assert lines[1].split("\t")[1:7] == [
        "b1",
        "at_start",
        "console",
        "a",
        "pending",
        "2030-01-10 17:00:00Z",
    ]


def summary_fixture(cli: Cli, url: str) -> datetime:
    """One reminder ten minutes overdue, two failures (one recent), the rest in the future."""
    now = db.now()
    make_booking(cli, "late", now - timedelta(minutes=10))  # at_start due, before_end future
    make_booking(cli, "b1", B1_START)
    db.set_reminder(url, "b1", "day_before", status="failed", updated_at=now)
    db.set_reminder(url, "b1", "before_end", status="failed", updated_at=now - timedelta(days=2))
    db.set_reminder(url, "b1", "hour_before", status="sent", sent_at=now)
    return now


def test_list_summary_json_counts_the_queue(cli: Cli, database_url: str) -> None:
    now = summary_fixture(cli, database_url)

    result = cli.ok("list", "--summary", "--format", "json")
    elapsed = (db.now() - now).total_seconds()

    body = json.loads(result.stdout)
    assert set(body) == {"counts", "due", "oldest_due_age_seconds", "failed_last_24h"}
    assert body["counts"] == {
        "pending": 3,
        "sending": 0,
        "sent": 1,
        "failed": 2,
        "cancelled": 0,
        "expired": 0,
    }
    assert body["due"] == 1
    assert 600 <= body["oldest_due_age_seconds"] <= 600 + elapsed + 1
    assert body["failed_last_24h"] == 1


@sqlite_only
def test_list_summary_of_an_empty_queue(cli: Cli, database_url: str) -> None:
    body = json.loads(cli.ok("list", "--summary", "--format", "json").stdout)

    assert set(body["counts"].values()) == {0}
    assert (body["due"], body["oldest_due_age_seconds"], body["failed_last_24h"]) == (
        0,
        None,
        0,
    )


@sqlite_only
def test_list_summary_table_prints_lag_and_failures(cli: Cli, database_url: str) -> None:
    summary_fixture(cli, database_url)

    lines = cli.ok("list", "--summary").stdout.splitlines()

    assert lines[0].split("\t") == ["status", "count"]
    assert "pending\t3" in lines
    assert "due now: 1" in lines
    assert "failed in the last 24 h: 1" in lines
    assert "oldest due: 10 min overdue" in lines


@sqlite_only
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--format", "xml"], "xml", id="format"),
        pytest.param(["--status", "done"], "unknown status 'done'", id="status"),
        pytest.param(["--kind", "week_before"], "unknown reminder kind", id="kind"),
        pytest.param(["--due-before", "soon"], "invalid time", id="due-before"),
        pytest.param(["--due-after", "+1x"], "invalid duration", id="due-after"),
        pytest.param(["--limit", "0"], "limit", id="limit"),
        pytest.param(["--timezone", "Nowhere/City"], "unknown time zone", id="timezone"),
    ],
)
def test_list_usage_errors(cli: Cli, database_url: str, args: list[str], message: str) -> None:
    make_booking(cli, "b1", B1_START)

    result = cli("list", *args)

    assert_usage_error(result, contains=message)
    assert result.stdout == ""
