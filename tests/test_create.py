"""``notifyctl create``: time and recipient forms, kinds, upsert semantics, files, bad input.

Every test runs the real CLI against a fresh SQLite and a fresh PostgreSQL store
and checks the stored rows through SQLAlchemy. The CLI reads the real clock, so
times are either far in the future or computed from ``datetime.now``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from notifyctl.channels import CHANNELS
from tests import dbstate as db
from tests.dbstate import assert_usage_error, iso
from tests.support import Cli, CliResult

# Far enough ahead that every default kind is useful, whatever today's date.
START = "2030-01-10T18:00:00+01:00"
END = "2030-01-10T19:30:00+01:00"
START_UTC = datetime(2030, 1, 10, 17, 0, tzinfo=UTC)
END_UTC = datetime(2030, 1, 10, 18, 30, tzinfo=UTC)
DEFAULT_KINDS = {"day_before", "hour_before", "at_start", "before_end"}

# Input validation happens before any write and does not depend on the dialect: the big
# matrices of forms run on SQLite only; the tests that touch stored rows run on both.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def create(
    cli: Cli,
    booking_id: str = "b1",
    *extra: str,
    starts: str = START,
    ends: str = END,
    to: tuple[str, ...] = ("console:a",),
    **env: str | None,
) -> CliResult:
    args = ["create", booking_id, "--starts-at", starts, "--ends-at", ends]
    for recipient in to:
        args += ["--to", recipient]
    return cli(*args, *extra, **env)


def create_ok(cli: Cli, booking_id: str = "b1", *extra: str, **kwargs: object) -> CliResult:
    result = create(cli, booking_id, *extra, **kwargs)  # type: ignore[arg-type]
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def create_json(cli: Cli, booking_id: str = "b1", *extra: str, **kwargs: object) -> dict[str, Any]:
    result = create_ok(cli, booking_id, "--json", *extra, **kwargs)
    body = json.loads(result.stdout)
    assert isinstance(body, dict)
    return body


# --- time forms -------------------------------------------------------------------------


def test_iso_time_with_offset_is_stored_as_aware_utc(cli: Cli, database_url: str) -> None:
    create_ok(cli)

    stored = db.booking(database_url, "b1")
    assert stored["starts_at"] == START_UTC
    assert stored["ends_at"] == END_UTC
    assert stored["starts_at"].utcoffset() == timedelta(0)
    assert stored["status"] == "active"


def test_naive_time_is_read_in_the_given_timezone(cli: Cli, database_url: str) -> None:
    create_ok(
        cli,
        "b1",
        "--timezone",
        "Europe/Berlin",
        starts="2030-07-10 18:00",
        ends="2030-07-10T19:00",
    )

    stored = db.booking(database_url, "b1")
    assert stored["starts_at"] == datetime(2030, 7, 10, 16, 0, tzinfo=UTC)  # CEST, +02:00
    assert stored["ends_at"] == datetime(2030, 7, 10, 17, 0, tzinfo=UTC)
    assert stored["timezone"] == "Europe/Berlin"


@sqlite_only
def test_naive_time_is_read_in_the_timezone_from_the_environment(
    cli: Cli, database_url: str
) -> None:
    create_ok(
        cli,
        "b1",
        starts="2030-01-10 18:00",
        ends="2030-01-10 19:00",
        NOTIFYCTL_TIMEZONE="America/New_York",
    )

    stored = db.booking(database_url, "b1")
    assert stored["starts_at"] == datetime(2030, 1, 10, 23, 0, tzinfo=UTC)  # EST, -05:00
    assert stored["timezone"] == "America/New_York"


@sqlite_only
def test_naive_time_defaults_to_utc(cli: Cli, database_url: str) -> None:
    create_ok(cli, starts="2030-01-10 18:00", ends="2030-01-10 19:00")

    stored = db.booking(database_url, "b1")
    assert stored["starts_at"] == datetime(2030, 1, 10, 18, 0, tzinfo=UTC)
    assert stored["timezone"] == "UTC"


@sqlite_only
@pytest.mark.parametrize(
    ("relative", "delta"),
    [("+2h", timedelta(hours=2)), ("+90m", timedelta(minutes=90)), ("+1d", timedelta(days=1))],
)
def test_relative_start_is_counted_from_now(
    cli: Cli, database_url: str, relative: str, delta: timedelta
) -> None:
    before = db.now()
    create_ok(cli, starts=relative, ends="+2d")
    after = db.now()

    stored = db.booking(database_url, "b1")
    assert before + delta <= stored["starts_at"] <= after + delta
    assert before + timedelta(days=2) <= stored["ends_at"] <= after + timedelta(days=2)


def test_default_kinds_follow_the_spec_table(cli: Cli, database_url: str) -> None:
    create_ok(cli)

    rows = db.by_key(db.reminders(database_url, "b1"))
    expected = {
        "day_before": (START_UTC - timedelta(hours=24), START_UTC),
        "hour_before": (START_UTC - timedelta(hours=1), START_UTC),
        "at_start": (START_UTC, END_UTC),
        "before_end": (END_UTC - timedelta(minutes=5), END_UTC),
    }
    assert set(rows) == {(kind, "console", "a") for kind in expected}
    for kind, (scheduled, not_after) in expected.items():
        row = rows[(kind, "console", "a")]
        assert (row["scheduled_at"], row["not_after"], row["due_at"]) == (
            scheduled,
            not_after,
            scheduled,
        )
        assert (row["status"], row["attempts"], row["sent_at"]) == ("pending", 0, None)


# --- recipients -------------------------------------------------------------------------

RECIPIENTS = [
    ("123456789", "telegram", "123456789"),
    ("-1001234567890", "telegram", "-1001234567890"),
    ("@my_channel", "telegram", "@my_channel"),
    ("telegram:42", "telegram", "42"),
    ("telegram:@my_channel", "telegram", "@my_channel"),
    ("console:alice", "console", "alice"),
]
if "webhook" in CHANNELS:
    RECIPIENTS += [
        ("webhook:https://example.com/hook?x=1", "webhook", "https://example.com/hook?x=1"),
        (
            "webhook:http://reminders.internal:8080/in",
            "webhook",
            "http://reminders.internal:8080/in",
        ),
    ]
if "email" in CHANNELS:
    RECIPIENTS += [("email:Ann@Example.COM", "email", "Ann@example.com")]


@sqlite_only
@pytest.mark.parametrize(("given", "channel", "address"), RECIPIENTS)
def test_recipient_form_is_stored_as_channel_and_address(
    cli: Cli, database_url: str, given: str, channel: str, address: str
) -> None:
    create_ok(cli, to=(given,))

    rows = db.reminders(database_url, "b1")
    assert {(r["channel"], r["recipient"]) for r in rows} == {(channel, address)}
    assert len(rows) == 4


@sqlite_only
def test_negative_chat_id_works_as_a_separate_argument(cli: Cli, database_url: str) -> None:
    cli.ok("create", "b1", "--starts-at", START, "--ends-at", END, "--to", "-1001234567890")

    assert {r["recipient"] for r in db.reminders(database_url)} == {"-1001234567890"}


@sqlite_only
def test_apprise_recipient_needs_the_optional_extra(cli: Cli, database_url: str) -> None:
    # slack: one of the default NOTIFYCTL_APPRISE_SCHEMES (json:// is opt-in)
    result = create(cli, to=("apprise:slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",))

    if "apprise" in CHANNELS and importlib.util.find_spec("apprise") is not None:
        assert result.exit_code == 0, result.stderr
        assert {r["channel"] for r in db.reminders(database_url)} == {"apprise"}
    else:
        assert_usage_error(result, contains="notifyctl[apprise]")
        assert db.counts(database_url) == (0, 0)


def test_each_recipient_gets_each_kind_once(cli: Cli, database_url: str) -> None:
    create_ok(cli, to=("console:a", "console:b", "console:a", "telegram:7"))

    rows = db.reminders(database_url, "b1")
    assert len(rows) == 12
    assert {(r["channel"], r["recipient"]) for r in rows} == {
        ("console", "a"),
        ("console", "b"),
        ("telegram", "7"),
    }


# --- kinds, locale, data, output ---------------------------------------------------------


@sqlite_only
def test_remind_offsets_are_scheduled_from_start_or_end(cli: Cli, database_url: str) -> None:
    create_ok(
        cli,
        "b1",
        "--remind",
        "start-30m",
        "--remind",
        "start-2d",
        "--remind",
        "end-10m",
        "--remind",
        "start+15m",
    )

    rows = {r["kind"]: r for r in db.reminders(database_url, "b1")}
    assert set(rows) == {"start-30m", "start-2d", "end-10m", "start+15m"}
    assert (rows["start-30m"]["scheduled_at"], rows["start-30m"]["not_after"]) == (
        START_UTC - timedelta(minutes=30),
        START_UTC,
    )
    assert (rows["start-2d"]["scheduled_at"], rows["start-2d"]["not_after"]) == (
        START_UTC - timedelta(days=2),
        START_UTC,
    )
    assert (rows["end-10m"]["scheduled_at"], rows["end-10m"]["not_after"]) == (
        END_UTC - timedelta(minutes=10),
        END_UTC,
    )
    assert (rows["start+15m"]["scheduled_at"], rows["start+15m"]["not_after"]) == (
        START_UTC + timedelta(minutes=15),
        END_UTC,
    )


@sqlite_only
def test_remind_accepts_several_kinds_in_one_value(cli: Cli, database_url: str) -> None:
    create_ok(cli, "b1", "--remind", "hour_before,at_start")

    assert {r["kind"] for r in db.reminders(database_url)} == {"hour_before", "at_start"}


def test_locale_title_and_data_are_stored_on_the_booking(cli: Cli, database_url: str) -> None:
    create_ok(
        cli,
        "b1",
        "--title",
        "Yoga with Ann",
        "--locale",
        "pt_BR",
        "--data",
        "location=Room 1",
        "--data",
        "link=https://example.com/?a=b",
    )

    stored = db.booking(database_url, "b1")
    assert stored["title"] == "Yoga with Ann"
    assert stored["locale"] == "pt-BR"
    assert stored["data"] == {"location": "Room 1", "link": "https://example.com/?a=b"}


@sqlite_only
def test_title_defaults_to_the_booking_id_and_data_to_none(cli: Cli, database_url: str) -> None:
    create_ok(cli, "court-7")

    stored = db.booking(database_url, "court-7")
    assert (stored["title"], stored["locale"], stored["data"]) == ("court-7", None, None)


def test_booking_id_of_128_characters_is_accepted(cli: Cli, database_url: str) -> None:
    long_id = "x" * 128
    create_ok(cli, long_id)

    assert db.booking(database_url, long_id)["external_id"] == long_id


@sqlite_only
def test_json_output_reports_action_and_counts(cli: Cli, database_url: str) -> None:
    body = create_json(cli, to=("console:a", "console:b"))

    assert body == {
        "booking_id": "b1",
        "action": "created",
        "added": 8,
        "rescheduled": 0,
        "cancelled": 0,
        "notices": 0,
        "notices_withdrawn": 0,
        "skipped": [],
        "suppressed": [],
        "timezone": "UTC+01:00",  # none given: the times' offset, said so
    }
    assert db.counts(database_url) == (1, 8)


@sqlite_only
def test_text_output_is_one_line_per_booking(cli: Cli, database_url: str) -> None:
    result = create_ok(cli)

    assert result.stdout.splitlines() == [
        "created b1: 4 added",
        "  time zone UTC+01:00 (none given: --timezone sets it)",
    ]
    assert result.stderr == ""
    assert db.counts(database_url) == (1, 4)


# --- upsert -----------------------------------------------------------------------------


def test_identical_create_is_unchanged_and_writes_nothing(cli: Cli, database_url: str) -> None:
    extra = ("--title", "Yoga", "--locale", "de", "--data", "room=1", "--timezone", "Europe/Berlin")
    create_ok(cli, "b1", *extra)
    bookings_before = db.bookings(database_url)
    reminders_before = db.reminders(database_url)

    body = create_json(cli, "b1", *extra)

    assert body["action"] == "unchanged"
    assert (body["added"], body["rescheduled"], body["cancelled"]) == (0, 0, 0)
    assert db.bookings(database_url) == bookings_before
    assert db.reminders(database_url) == reminders_before


def test_new_times_retime_unsent_reminders(cli: Cli, database_url: str) -> None:
    create_ok(cli)
    ids_before = {r["kind"]: r["id"] for r in db.reminders(database_url)}
    shift = timedelta(days=1, hours=2)

    body = create_json(cli, starts=iso(START_UTC + shift), ends=iso(END_UTC + shift))

    assert body["action"] == "rescheduled"
    assert (body["rescheduled"], body["added"], body["cancelled"]) == (4, 0, 0)
    stored = db.booking(database_url, "b1")
    assert (stored["starts_at"], stored["ends_at"]) == (START_UTC + shift, END_UTC + shift)
    rows = {r["kind"]: r for r in db.reminders(database_url)}
    assert {k: r["id"] for k, r in rows.items()} == ids_before  # re-timed in place
    assert rows["day_before"]["scheduled_at"] == START_UTC + shift - timedelta(hours=24)
    assert rows["day_before"]["due_at"] == START_UTC + shift - timedelta(hours=24)
    assert rows["before_end"]["not_after"] == END_UTC + shift
    assert all(r["status"] == "pending" for r in rows.values())


def test_sent_reminder_rescheduled_into_the_future_is_armed_again(
    cli: Cli, database_url: str
) -> None:
    create_ok(cli)
    sent_at = db.now()
    db.set_reminder(
        database_url,
        "b1",
        "day_before",
        status="sent",
        attempts=1,
        sent_at=sent_at,
        provider_message_id="m-1",
    )
    shift = timedelta(days=7)

    body = create_json(cli, starts=iso(START_UTC + shift), ends=iso(END_UTC + shift))

    assert body["rescheduled"] == 4
    row = db.by_key(db.reminders(database_url))[("day_before", "console", "a")]
    assert row["status"] == "pending"
    assert (row["attempts"], row["sent_at"], row["provider_message_id"]) == (0, None, None)
    assert row["due_at"] == START_UTC + shift - timedelta(hours=24)


def test_sent_reminder_whose_new_time_has_passed_stays_sent(cli: Cli, database_url: str) -> None:
    now = db.now()
    create_ok(
        cli,
        "b1",
        "--remind",
        "at_start",
        starts=iso(now + timedelta(minutes=5)),
        ends=iso(now + timedelta(minutes=65)),
    )
    sent_at = now + timedelta(seconds=1)
    db.set_reminder(database_url, "b1", "at_start", status="sent", attempts=1, sent_at=sent_at)

    # moved to have started ten minutes ago: the new at_start time is past, still useful
    create_ok(
        cli,
        "b1",
        "--remind",
        "at_start",
        starts=iso(now - timedelta(minutes=10)),
        ends=iso(now + timedelta(minutes=70)),
    )

    row, notice = db.reminders(database_url)
    assert (row["status"], row["sent_at"], row["attempts"]) == ("sent", sent_at, 1)
    assert (notice["kind"], notice["status"]) == ("rescheduled", "pending")  # §10: told


def test_recipients_added_and_removed(cli: Cli, database_url: str) -> None:
    create_ok(cli, to=("console:a", "console:b"))
    db.set_reminder(database_url, "b1", "day_before", status="sent", sent_at=db.now())

    body = create_json(cli, to=("console:a", "console:c"))

    assert body["action"] == "updated"
    assert (body["added"], body["cancelled"], body["rescheduled"]) == (4, 3, 0)
    rows = db.reminders(database_url)
    status = {(r["kind"], r["recipient"]): r["status"] for r in rows}
    assert {k: s for k, s in status.items() if k[1] == "a"} == {
        ("day_before", "a"): "sent",
        ("hour_before", "a"): "pending",
        ("at_start", "a"): "pending",
        ("before_end", "a"): "pending",
    }
    assert {k: s for k, s in status.items() if k[1] == "b"} == {
        ("day_before", "b"): "sent",  # already delivered: history stays
        ("hour_before", "b"): "cancelled",
        ("at_start", "b"): "cancelled",
        ("before_end", "b"): "cancelled",
    }
    assert {s for k, s in status.items() if k[1] == "c"} == {"pending"}
    assert len([k for k in status if k[1] == "c"]) == 4


def test_readded_recipient_gets_its_cancelled_reminders_back(cli: Cli, database_url: str) -> None:
    create_ok(cli, to=("console:a", "console:b"))
    create_ok(cli, to=("console:a",))

    body = create_json(cli, to=("console:a", "console:b"))

    assert body["added"] == 4
    rows = db.reminders(database_url)
    assert len(rows) == 8
    assert {r["status"] for r in rows} == {"pending"}


def test_changed_details_update_the_booking_but_not_its_reminders(
    cli: Cli, database_url: str
) -> None:
    create_ok(cli, "b1", "--title", "Yoga")
    before = db.booking(database_url, "b1")
    reminders_before = db.reminders(database_url)

    body = create_json(cli, "b1", "--title", "Pilates", "--data", "room=2")

    assert body["action"] == "updated"
    assert (body["added"], body["rescheduled"], body["cancelled"]) == (0, 0, 0)
    after = db.booking(database_url, "b1")
    assert (after["title"], after["data"]) == ("Pilates", {"room": "2"})
    assert after["updated_at"] > before["updated_at"]
    assert after["created_at"] == before["created_at"]
    assert db.reminders(database_url) == reminders_before


def test_create_on_cancelled_booking_fails_without_reactivate(cli: Cli, database_url: str) -> None:
    create_ok(cli)
    cli.ok("cancel", "b1")
    before = db.reminders(database_url)

    result = create(cli)

    assert_usage_error(result, contains="--reactivate")
    assert db.booking(database_url, "b1")["status"] == "cancelled"
    assert db.reminders(database_url) == before


def test_reactivate_books_a_cancelled_booking_again(cli: Cli, database_url: str) -> None:
    create_ok(cli)
    cli.ok("cancel", "b1")

    body = create_json(cli, "b1", "--reactivate")

    assert body["action"] == "reactivated"
    assert db.booking(database_url, "b1")["status"] == "active"
    rows = db.reminders(database_url)
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"pending"}
    assert {r["last_error"] for r in rows} == {None}


# --- useless reminders -------------------------------------------------------------------


def test_reminders_already_useless_are_skipped_and_reported(cli: Cli, database_url: str) -> None:
    now = db.now()
    starts, ends = now - timedelta(minutes=10), now + timedelta(minutes=50)

    body = create_json(cli, starts=iso(starts), ends=iso(ends))

    assert body["action"] == "created"
    assert body["added"] == 2
    skipped = body["skipped"]
    assert {s["kind"] for s in skipped} == {"day_before", "hour_before"}
    assert all(s["channel"] == "console" and s["recipient"] == "a" for s in skipped)
    assert all("too late" in s["reason"] for s in skipped)
    rows = db.reminders(database_url, "b1")
    assert {r["kind"] for r in rows} == {"at_start", "before_end"}
    at_start = next(r for r in rows if r["kind"] == "at_start")
    assert at_start["due_at"] == starts  # late but still useful until the end


@sqlite_only
def test_skipped_reminders_are_listed_in_text_output(cli: Cli, database_url: str) -> None:
    now = db.now()

    result = create_ok(
        cli, starts=iso(now - timedelta(minutes=10)), ends=iso(now + timedelta(minutes=50))
    )

    lines = result.stdout.splitlines()
    assert lines[0] == "created b1: 2 added, 2 skipped"
    assert lines[2].startswith("  skipped day_before for console:a: too late")
    assert lines[3].startswith("  skipped hour_before for console:a: too late")
    assert db.counts(database_url) == (1, 2)


@sqlite_only
def test_booking_starting_soon_keeps_overdue_reminders(cli: Cli, database_url: str) -> None:
    body = create_json(cli, starts="+30m", ends="+90m")

    assert (body["added"], body["skipped"]) == (4, [])
    assert {r["kind"] for r in db.reminders(database_url)} == DEFAULT_KINDS


@sqlite_only
def test_offset_after_the_end_is_skipped(cli: Cli, database_url: str) -> None:
    body = create_json(cli, "b1", "--remind", "start+2h", "--remind", "at_start")

    assert body["added"] == 1
    skipped = body["skipped"]
    assert [s["kind"] for s in skipped] == ["start+2h"]
    assert "after the booking" in skipped[0]["reason"]
    assert {r["kind"] for r in db.reminders(database_url)} == {"at_start"}


def test_rescheduling_into_the_past_expires_reminders_that_became_useless(
    cli: Cli, database_url: str
) -> None:
    create_ok(cli)
    now = db.now()

    body = create_json(
        cli, starts=iso(now - timedelta(minutes=10)), ends=iso(now + timedelta(minutes=50))
    )

    assert body["action"] == "rescheduled"
    assert {s["kind"] for s in body["skipped"]} == {"day_before", "hour_before"}
    status = {r["kind"]: r["status"] for r in db.reminders(database_url)}
    assert status == {
        "day_before": "expired",
        "hour_before": "expired",
        "at_start": "pending",
        "before_end": "pending",
    }


# --- --from-file --------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def errors_by_line(stderr: str) -> dict[int, str]:
    """``  line N: message`` detail lines of an error, by N."""
    found: dict[int, str] = {}
    for text in stderr.splitlines()[1:]:
        match = re.fullmatch(r"  line (\d+): (.*)", text)
        assert match, f"unexpected stderr line {text!r}"
        found[int(match[1])] = match[2]
    return found


def jsonl(*records: Mapping[str, object]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


JSONL_BOOKINGS = jsonl(
    {
        "booking_id": "j1",
        "starts_at": START,
        "ends_at": END,
        "to": "console:a",
        "title": "Yoga",
        "locale": "de",
        "data": {"room": "3", "seats": 12},
    },
    {
        "booking_id": "j2",
        "starts_at": "2030-02-01 09:00",
        "ends_at": "2030-02-01 10:00",
        "timezone": "Europe/Berlin",
        "to": ["console:a", "telegram:42"],
        "remind": ["hour_before", "start-30m"],
    },
)

CSV_BOOKINGS = (
    "booking_id,starts_at,ends_at,to,remind,data,title\n"
    f"c1,{START},{END},console:a console:b,hour_before at_start,"
    "\"room=3 'name=Ann Lee'\",Yoga\n"
    f"c2,{START},{END},telegram:42,,,\n"
)


def assert_jsonl_bookings_stored(url: str) -> None:
    j1, j2 = db.booking(url, "j1"), db.booking(url, "j2")
    assert (j1["title"], j1["locale"], j1["data"]) == ("Yoga", "de", {"room": "3", "seats": 12})
    assert j1["starts_at"] == START_UTC
    assert j2["starts_at"] == datetime(2030, 2, 1, 8, 0, tzinfo=UTC)
    assert j2["timezone"] == "Europe/Berlin"
    assert {r["kind"] for r in db.reminders(url, "j1")} == DEFAULT_KINDS
    assert {(r["kind"], r["channel"], r["recipient"]) for r in db.reminders(url, "j2")} == {
        (kind, channel, recipient)
        for kind in ("hour_before", "start-30m")
        for channel, recipient in (("console", "a"), ("telegram", "42"))
    }


def assert_csv_bookings_stored(url: str) -> None:
    c1, c2 = db.booking(url, "c1"), db.booking(url, "c2")
    assert (c1["title"], c1["data"]) == ("Yoga", {"room": "3", "name": "Ann Lee"})
    assert (c2["title"], c2["data"]) == ("c2", None)
    assert {(r["kind"], r["recipient"]) for r in db.reminders(url, "c1")} == {
        ("hour_before", "a"),
        ("hour_before", "b"),
        ("at_start", "a"),
        ("at_start", "b"),
    }
    assert {(r["kind"], r["channel"]) for r in db.reminders(url, "c2")} == {
        (kind, "telegram") for kind in DEFAULT_KINDS
    }


def test_from_file_jsonl_creates_every_booking(cli: Cli, database_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, "bookings.jsonl", JSONL_BOOKINGS)

    result = cli.ok("create", "--from-file", path)

    assert result.stdout.splitlines()[0] == "created j1: 4 added"
    assert_jsonl_bookings_stored(database_url)


def test_from_file_csv_splits_lists_on_spaces_and_reads_data_pairs(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "bookings.csv", CSV_BOOKINGS)

    cli.ok("create", "--from-file", path)

    assert_csv_bookings_stored(database_url)


@sqlite_only
def test_from_file_csv_with_a_byte_order_mark_is_read(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + CSV_BOOKINGS.encode())

    cli.ok("create", "--from-file", str(path))

    assert_csv_bookings_stored(database_url)


@sqlite_only
@pytest.mark.parametrize("form", ["jsonl", "csv"])
def test_from_file_reads_stdin(cli: Cli, database_url: str, form: str) -> None:
    cli.ok("create", "--from-file", "-", input=JSONL_BOOKINGS if form == "jsonl" else CSV_BOOKINGS)

    if form == "jsonl":
        assert_jsonl_bookings_stored(database_url)
    else:
        assert_csv_bookings_stored(database_url)


def test_from_file_options_are_defaults_for_every_line(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "bookings.jsonl",
        jsonl(
            {"booking_id": "d1"},
            {"booking_id": "d2", "to": "console:own", "title": "Own", "remind": "at_start"},
        ),
    )

    cli.ok(
        "create",
        "--from-file",
        path,
        "--starts-at",
        "2030-03-01 18:00",
        "--ends-at",
        "2030-03-01 19:00",
        "--timezone",
        "Europe/Berlin",
        "--to",
        "console:shared",
        "--title",
        "Shared",
        "--remind",
        "hour_before",
        "--locale",
        "fr",
        "--data",
        "room=9",
    )

    d1, d2 = db.booking(database_url, "d1"), db.booking(database_url, "d2")
    for stored in (d1, d2):
        assert stored["starts_at"] == datetime(2030, 3, 1, 17, 0, tzinfo=UTC)
        assert (stored["timezone"], stored["locale"], stored["data"]) == (
            "Europe/Berlin",
            "fr",
            {"room": "9"},
        )
    assert (d1["title"], d2["title"]) == ("Shared", "Own")
    assert [(r["kind"], r["recipient"]) for r in db.reminders(database_url, "d1")] == [
        ("hour_before", "shared")
    ]
    assert [(r["kind"], r["recipient"]) for r in db.reminders(database_url, "d2")] == [
        ("at_start", "own")
    ]


@sqlite_only
def test_from_file_invalid_lines_are_listed_by_number_and_nothing_is_written(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    good = {"booking_id": "ok", "starts_at": START, "ends_at": END, "to": "console:a"}
    path = write(
        tmp_path,
        "bookings.jsonl",
        jsonl(good, {**good, "booking_id": "bad1", "to": "nobody"})
        + "{not json\n"
        + jsonl({**good, "booking_id": "ok2"}, {**good, "booking_id": "bad3", "remind": "soon"}),
    )

    result = cli("create", "--from-file", path)

    assert_usage_error(result, contains="3 invalid line(s), nothing written")
    errors = errors_by_line(result.stderr)
    assert sorted(errors) == [2, 3, 5]
    assert "invalid recipient 'nobody'" in errors[2]
    assert errors[3].startswith("invalid JSON")
    assert "unknown reminder kind 'soon'" in errors[5]
    assert db.counts(database_url) == (0, 0)


@sqlite_only
def test_from_file_invalid_csv_row_is_reported_by_line(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "bookings.csv",
        "booking_id,starts_at,ends_at,to\n"
        f"c1,{START},{END},console:a\n"
        f"c2,{END},{START},console:a\n",
    )

    result = cli("create", "--from-file", path)

    assert_usage_error(result)
    assert "line 3: ends_at must be after starts_at" in result.stderr
    assert db.counts(database_url) == (0, 0)


def test_from_file_error_for_an_existing_booking_writes_nothing(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    create_ok(cli, "old")
    cli.ok("cancel", "old")
    before = (db.bookings(database_url), db.reminders(database_url))
    path = write(
        tmp_path,
        "bookings.jsonl",
        jsonl(
            {"booking_id": "new", "starts_at": START, "ends_at": END, "to": "console:a"},
            {"booking_id": "old", "starts_at": START, "ends_at": END, "to": "console:a"},
        ),
    )

    result = cli("create", "--from-file", path)

    assert_usage_error(result)
    errors = errors_by_line(result.stderr)
    assert list(errors) == [2]
    assert "--reactivate" in errors[2]
    assert (db.bookings(database_url), db.reminders(database_url)) == before


@sqlite_only
def test_from_file_duplicate_booking_ids_write_nothing(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    record = {"booking_id": "dup", "starts_at": START, "ends_at": END, "to": "console:a"}
    path = write(tmp_path, "bookings.jsonl", jsonl(record, {**record, "booking_id": "x"}, record))

    result = cli("create", "--from-file", path)

    assert_usage_error(result)
    assert "line 3: booking 'dup' appears twice (first at line 1)" in result.stderr
    assert db.counts(database_url) == (0, 0)


@sqlite_only
def test_from_file_json_output_lists_every_booking(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "bookings.jsonl", JSONL_BOOKINGS)

    body = json.loads(cli.ok("create", "--from-file", path, "--json").stdout)

    assert [(b["booking_id"], b["action"], b["added"]) for b in body["bookings"]] == [
        ("j1", "created", 4),
        ("j2", "created", 4),
    ]
    assert db.counts(database_url) == (2, 8)


@sqlite_only
def test_from_file_with_many_lines_prints_one_summary_line(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    records = [
        {"booking_id": f"m{i}", "starts_at": START, "ends_at": END, "to": "console:a"}
        for i in range(25)
    ]
    path = write(tmp_path, "bookings.jsonl", jsonl(*records))

    result = cli.ok("create", "--from-file", path)

    assert result.stdout.splitlines() == ["25 bookings: 25 created; 100 reminders added, 0 skipped"]
    assert db.counts(database_url) == (25, 100)


@sqlite_only
def test_from_file_and_booking_id_together_are_rejected(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "bookings.jsonl", JSONL_BOOKINGS)

    result = cli("create", "b1", "--from-file", path)

    assert_usage_error(result, contains="not both")
    assert db.counts(database_url) == (0, 0)


# --- bad input ------------------------------------------------------------------------------

BASE_OPTIONS = {"--starts-at": START, "--ends-at": END, "--to": "console:a"}

BAD_CREATE: list[tuple[str, dict[str, str | None], str]] = [
    ("unparseable-time", {"--starts-at": "next tuesday"}, "invalid time"),
    ("bad-relative-unit", {"--starts-at": "+2x"}, "invalid duration"),
    ("zero-relative", {"--starts-at": "+0m"}, "invalid duration"),
    (
        "dst-gap",
        {
            "--starts-at": "2026-03-29 02:30",
            "--ends-at": "2026-03-29 04:00",
            "--timezone": "Europe/Berlin",
        },
        "does not exist in Europe/Berlin",
    ),
    ("unknown-zone", {"--timezone": "Mars/Olympus_Mons"}, "unknown time zone"),
    ("path-as-zone", {"--timezone": "../../etc/passwd"}, "unknown time zone"),
    ("ends-before-starts", {"--starts-at": END, "--ends-at": START}, "ends_at must be after"),
    ("ends-equal-starts", {"--ends-at": START}, "ends_at must be after"),
    ("plain-word-recipient", {"--to": "bob"}, "invalid recipient"),
    ("unknown-channel", {"--to": "sms:+4912345"}, "unknown channel"),
    ("bad-telegram-chat", {"--to": "telegram:abc"}, "invalid recipient"),
    ("short-telegram-username", {"--to": "@ab"}, "invalid recipient"),
    ("empty-console-name", {"--to": "console:"}, "invalid recipient"),
    ("webhook-not-http", {"--to": "webhook:ftp://example.com/x"}, "invalid recipient"),
    ("email-without-domain", {"--to": "email:not-an-address"}, "invalid recipient"),
    ("missing-recipient", {"--to": None}, "missing --to"),
    ("missing-start", {"--starts-at": None}, "missing --starts-at"),
    ("unknown-kind", {"--remind": "week_before"}, "unknown reminder kind"),
    ("offset-bad-unit", {"--remind": "start-30x"}, "invalid reminder offset"),
    ("offset-zero", {"--remind": "start-0m"}, "invalid reminder offset"),
    ("offset-too-large", {"--remind": "start-5000d"}, "invalid reminder offset"),
    ("offset-without-anchor", {"--remind": "middle-30m"}, "unknown reminder kind"),
    ("bad-locale", {"--locale": "english!"}, "invalid locale"),
    ("data-without-equals", {"--data": "novalue"}, "KEY=VALUE"),
    ("data-empty-key", {"--data": "=value"}, "KEY=VALUE"),
    ("data-bad-key", {"--data": "bad key=1"}, "invalid data key"),
    ("blank-title", {"--title": "   "}, "title"),
]


def create_args(booking_id: str, overrides: dict[str, str | None]) -> list[str]:
    options = {**BASE_OPTIONS, **overrides}
    args = ["create", booking_id]
    for name, value in options.items():
        if value is not None:
            args += [name, value]
    return args


@sqlite_only
@pytest.mark.parametrize(
    ("overrides", "message"),
    [pytest.param(o, m, id=case) for case, o, m in BAD_CREATE],
)
def test_bad_input_is_rejected_and_nothing_is_written(
    cli: Cli, database_url: str, overrides: dict[str, str | None], message: str
) -> None:
    result = cli(*create_args("b1", overrides))

    assert_usage_error(result, contains=message)
    assert len(result.stderr.splitlines()) == 1
    assert db.counts(database_url) == (0, 0)


@sqlite_only
@pytest.mark.parametrize("booking_id", ["x" * 129, " padded", "tab\there"])
def test_invalid_booking_id_is_rejected(cli: Cli, database_url: str, booking_id: str) -> None:
    result = cli(*create_args(booking_id, {}))

    assert_usage_error(result, contains="invalid booking id")
    assert db.counts(database_url) == (0, 0)


def test_invalid_update_leaves_the_existing_booking_untouched(cli: Cli, database_url: str) -> None:
    create_ok(cli, "b1", "--title", "Yoga")
    before = (db.bookings(database_url), db.reminders(database_url))

    result = cli(*create_args("b1", {"--title": "Pilates", "--remind": "nonsense"}))

    assert_usage_error(result, contains="unknown reminder kind")
    assert (db.bookings(database_url), db.reminders(database_url)) == before


BAD_FILES: list[tuple[str, bytes | None, str]] = [
    ("missing", None, "cannot read"),
    ("latin1.csv", "booking_id,title\nb1,Caf\xe9\n".encode("latin-1"), "not UTF-8"),
    (
        "extra.csv",
        f"booking_id,starts_at,ends_at,to,room\nb1,{START},{END},console:a,3\n".encode(),
        "unknown CSV column(s): room",
    ),
    ("empty.csv", b"", "no bookings found"),
    ("key.jsonl", b'{"booking_id": "b1", "room": 3}\n', "unknown key(s): room"),
    ("array.jsonl", b'["b1"]\n', "expected a JSON object"),
    (
        "ragged.csv",
        f"booking_id,starts_at,ends_at,to\nb1,{START},{END},console:a,extra\n".encode(),
        "more values than columns",
    ),
    (
        "badpairs.csv",
        f'booking_id,starts_at,ends_at,to,data\nb1,{START},{END},console:a,"x=\'open"\n'.encode(),
        "line 2",
    ),
    (
        "typed.jsonl",
        f'{{"booking_id": "b1", "starts_at": "{START}", "ends_at": "{END}", "to": 42}}\n'.encode(),
        "expected a string or a list",
    ),
]


@sqlite_only
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [pytest.param(n, c, m, id=n) for n, c, m in BAD_FILES],
)
def test_bad_file_is_rejected_and_nothing_is_written(
    cli: Cli,
    database_url: str,
    tmp_path: Path,
    name: str,
    content: bytes | None,
    message: str,
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    result = cli("create", "--from-file", str(path))

    assert_usage_error(result, contains=message)
    assert db.counts(database_url) == (0, 0)


# --- product bugs (xfail until fixed) ------------------------------------------------------


@sqlite_only
def test_time_outside_the_representable_range_is_a_usage_error(cli: Cli, database_url: str) -> None:
    result = cli(*create_args("b1", {"--starts-at": "0001-01-01T00:00+01:00"}))

    assert_usage_error(result, contains="invalid time")
    assert db.counts(database_url) == (0, 0)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"--locale": "en-aaaaaaaa-bbbbbbbb-cccccccc-dddddddd"}, id="locale-39"),
        pytest.param({"--to": "webhook:https://example.com/" + "a" * 2100}, id="webhook-2120"),
    ],
)
def test_values_longer_than_their_columns_are_usage_errors(
    cli: Cli, database_url: str, overrides: dict[str, str | None]
) -> None:
    result = cli(*create_args("b1", overrides))

    assert_usage_error(result)
    assert db.counts(database_url) == (0, 0)


def test_title_with_control_characters_is_a_usage_error(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    record = {"booking_id": "b1", "starts_at": START, "ends_at": END, "to": "console:a"}
    path = write(tmp_path, "nul.jsonl", jsonl({**record, "title": "Yoga\u0000 at noon"}))

    result = cli("create", "--from-file", path)

    assert_usage_error(result, contains="title")
    assert db.counts(database_url) == (0, 0)
