"""``create`` and ``prune`` surprises (issue 13 item 7), through the real CLI on both databases.

Each test is one surprise a user of ``at``, cron or sqlite-utils would not expect:
a past booking taken silently, an offset that can never fire, "rescheduled" after a
recipients-only change, a huge id echoed whole, ``--to`` refusing commas that
``--remind`` takes, a repeated ``--data`` key keeping the last, an ambiguous DST time
taken without a word, and ``prune --older-than 1m`` meaning one minute.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from tests import dbstate as db
from tests.dbstate import assert_usage_error, iso
from tests.support import Cli, CliResult

START = "2030-01-10T18:00:00+01:00"
END = "2030-01-10T19:30:00+01:00"


def create(cli: Cli, booking_id: str = "b1", *extra: str, **times: str) -> CliResult:
    return cli(
        "create",
        booking_id,
        "--starts-at",
        times.get("starts", START),
        "--ends-at",
        times.get("ends", END),
        *extra,
    )


def nothing_written(database_url: str) -> None:
    assert db.bookings(database_url) == []
    assert db.reminders(database_url) == []


# --- a. the past -------------------------------------------------------------------------


def test_a_booking_that_already_ended_is_refused(cli: Cli, database_url: str) -> None:
    now = db.now()
    result = create(
        cli,
        "b1",
        "--to",
        "console:a",
        starts=iso(now - timedelta(hours=3)),
        ends=iso(now - timedelta(hours=2)),
    )

    assert_usage_error(result, contains="already ended")
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    nothing_written(database_url)


def test_replaying_a_booking_that_has_since_ended_stays_unchanged(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    """A nightly re-sync of a file that still holds yesterday's booking is not refused."""
    from notifyctl.service import create_booking, open_store

    now = db.now()
    store = open_store(cli.database_url)
    start, end = now - timedelta(hours=3), now - timedelta(hours=2)
    create_booking(store, "b1", starts_at=start, ends_at=end, to=["console:a"])
    store.close()
    line = {"booking_id": "b1", "starts_at": iso(start), "ends_at": iso(end), "to": "console:a"}
    path = tmp_path / "sync.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")

    result = cli.ok("create", "--from-file", str(path), "--json")

    assert json.loads(result.stdout)["bookings"][0]["action"] == "unchanged"


def test_only_reminders_past_their_use_is_refused_too(cli: Cli, database_url: str) -> None:
    now = db.now()
    result = create(
        cli,
        "b1",
        "--to",
        "console:a",
        "--remind",
        "day_before,hour_before",
        starts=iso(now - timedelta(minutes=10)),
        ends=iso(now + timedelta(minutes=50)),
    )

    assert_usage_error(result, contains="too late")
    nothing_written(database_url)


def test_a_reminder_merely_late_but_useful_keeps_the_booking(cli: Cli, database_url: str) -> None:
    now = db.now()
    result = create(
        cli,
        "b1",
        "--to",
        "console:a",
        "--json",
        starts=iso(now - timedelta(minutes=10)),
        ends=iso(now + timedelta(minutes=50)),
    )

    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert (body["action"], body["added"]) == ("created", 2)
    assert {r["kind"]: r["status"] for r in db.reminders(database_url)} == {
        "at_start": "pending",
        "before_end": "pending",
    }


def test_an_ended_booking_in_a_file_rejects_the_file_by_line(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    now = db.now()
    lines = [
        {"booking_id": "ok", "starts_at": START, "ends_at": END, "to": "console:a"},
        {
            "booking_id": "past",
            "starts_at": iso(now - timedelta(days=2)),
            "ends_at": iso(now - timedelta(days=2) + timedelta(hours=1)),
            "to": "console:a",
        },
    ]
    path = tmp_path / "b.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")

    result = cli("create", "--from-file", str(path))

    assert_usage_error(result, contains="1 invalid line(s), nothing written")
    assert result.stderr.splitlines()[1].startswith("  line 2: booking 'past' already ended")
    nothing_written(database_url)


# --- b. an offset after the end ----------------------------------------------------------


def test_an_offset_after_the_end_is_rejected(cli: Cli, database_url: str) -> None:
    result = create(cli, "b1", "--to", "console:a", "--remind", "end+5m")

    assert_usage_error(result, contains="'end+5m': a reminder after the booking ends")
    nothing_written(database_url)


# --- c. recipients only ------------------------------------------------------------------


def test_a_recipients_only_change_says_updated_not_rescheduled(cli: Cli, database_url: str) -> None:
    cli.ok("create", "b1", "--starts-at", START, "--ends-at", END, "--to", "console:a")

    result = cli.ok("create", "b1", "--starts-at", START, "--ends-at", END, "--to", "console:b")

    first = result.stdout.splitlines()[0]
    assert first == "updated b1: 4 added, 4 cancelled"
    assert "rescheduled" not in result.stdout
    moved = cli.ok(
        "create",
        "b1",
        "--starts-at",
        START,
        "--ends-at",
        "2030-01-10T20:00:00+01:00",
        "--to",
        "console:b",
    )
    assert (
        moved.stdout.splitlines()[0] == "rescheduled b1: 2 rescheduled"
    )  # at_start (until the end) and before_end


# --- d. a huge id ------------------------------------------------------------------------


def test_a_huge_booking_id_is_cut_in_the_error(cli: Cli, database_url: str) -> None:
    result = create(cli, "x" * 10_000, "--to", "console:a")

    assert_usage_error(result, contains="invalid booking id")
    assert len(result.stderr) < 200
    assert "(10000 characters)" in result.stderr
    nothing_written(database_url)


# --- e. commas in --to -------------------------------------------------------------------


def test_to_takes_commas_like_remind(cli: Cli, database_url: str) -> None:
    cli.ok(
        "create",
        "b1",
        "--starts-at",
        START,
        "--ends-at",
        END,
        "--remind",
        "at_start",
        "--to",
        "123,456",
        "--to",
        "@news, telegram:-100789",
        "--to",
        "console:a",
    )

    recipients = {(r["channel"], r["recipient"]) for r in db.reminders(database_url)}
    assert recipients == {
        ("telegram", "123"),
        ("telegram", "456"),
        ("telegram", "@news"),
        ("telegram", "-100789"),
        ("console", "a"),
    }


def test_a_url_keeps_its_commas_and_help_says_so(cli: Cli, database_url: str) -> None:
    url = "webhook:https://hooks.example.com/a,b?x=1,2"
    cli.ok(
        "create",
        "b1",
        "--starts-at",
        START,
        "--ends-at",
        END,
        "--remind",
        "at_start",
        "--to",
        url,
    )

    [row] = db.reminders(database_url)
    assert (row["channel"], row["recipient"]) == ("webhook", url.removeprefix("webhook:"))
    help_text = " ".join(cli.ok("create", "--help").stdout.split())
    assert "Commas separate several" in help_text
    assert "a URL keeps its commas" in help_text


# --- f. a repeated --data key ------------------------------------------------------------


def test_a_repeated_data_key_is_an_error(cli: Cli, database_url: str) -> None:
    result = create(cli, "b1", "--to", "console:a", "--data", "a=1", "--data", "a=2")

    assert_usage_error(result, contains="data key 'a' given twice")
    nothing_written(database_url)


def test_a_repeated_data_key_in_a_csv_line_is_an_error_of_that_line(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "b.csv"
    path.write_text(
        f"booking_id,starts_at,ends_at,to,data\nb1,{START},{END},console:a,a=1 a=2\n",
        encoding="utf-8",
    )

    result = cli("create", "--from-file", str(path))

    assert_usage_error(result, contains="line 2: data key 'a' given twice")
    nothing_written(database_url)


# --- g. an ambiguous local time ----------------------------------------------------------

AMBIGUOUS_NOTE = (
    "note: 2030-10-27 02:30 is ambiguous in Europe/Berlin; took the first (UTC+02:00), "
    "write 2030-10-27T02:30+01:00 for the second"
)


def test_an_ambiguous_time_takes_the_first_and_says_so(cli: Cli, database_url: str) -> None:
    result = cli.ok(
        "create",
        "b1",
        "--starts-at",
        "2030-10-27 02:30",
        "--ends-at",
        "2030-10-27 04:00",
        "--timezone",
        "Europe/Berlin",
        "--to",
        "console:a",
    )

    assert result.stderr.splitlines() == [AMBIGUOUS_NOTE]
    assert result.stdout.startswith("created b1: ")
    stored = db.booking(database_url, "b1")
    assert iso(stored["starts_at"]).startswith("2030-10-27T00:30")


def test_an_unambiguous_time_has_no_note(cli: Cli, database_url: str) -> None:
    result = cli.ok(
        "create",
        "b1",
        "--starts-at",
        "2030-10-27 04:30",
        "--ends-at",
        "2030-10-27 05:00",
        "--timezone",
        "Europe/Berlin",
        "--to",
        "console:a",
    )

    assert result.stderr == ""


def test_an_ambiguous_time_in_a_file_is_noted_with_its_line(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "b.csv"
    path.write_text(
        "booking_id,starts_at,ends_at,to\n"
        f"b1,{START},{END},console:a\n"
        "b2,2030-10-27 02:30,2030-10-27 04:00,console:a\n",
        encoding="utf-8",
    )

    result = cli.ok("create", "--from-file", str(path), "--timezone", "Europe/Berlin")

    assert result.stderr.splitlines() == [AMBIGUOUS_NOTE.replace("note: ", "note: line 3: ")]


# --- h. prune's age ----------------------------------------------------------------------


def test_prune_refuses_minutes_for_an_age(cli: Cli, database_url: str) -> None:
    cli.ok("create", "b1", "--starts-at", START, "--ends-at", END, "--to", "console:a")

    for age in ("1m", "90m", "1h30m", "3600s"):
        result = cli("prune", "--older-than", age)
        assert_usage_error(result, contains="e.g. 30d or 720h")
    assert cli.ok("prune", "--older-than", "720h", "--dry-run").exit_code == 0
    assert len(db.reminders(database_url)) == 4
