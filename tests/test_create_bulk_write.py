"""``create --from-file`` writes in bulk (PostgreSQL: COPY, SQLite: executemany).

What must not change with the way of writing: the whole file is one transaction
(a database error on any reminder leaves nothing behind), and a database error
surfaces exactly as from an INSERT (a lost connection is exit 4). The errors are
real ones: a trigger in the test database refuses the Nth reminder.
"""

from __future__ import annotations

import gc
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from notifyctl import bookfile, queries
from notifyctl.bookfile import read_bookings
from notifyctl.models import RecipientState
from notifyctl.service import BookingFields, BookingInput, Store, create_booking, create_bookings
from tests import dbstate as db
from tests.support import Cli, FrozenClock

pg_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _file(tmp_path: Path, n: int) -> str:
    path = tmp_path / "bookings.jsonl"
    lines = [
        json.dumps(
            {
                "booking_id": f"bulk-{i}",
                "title": f"Bulk {i}",
                "starts_at": "2030-01-10T18:00:00+01:00",
                "ends_at": "2030-01-10T19:30:00+01:00",
                "to": str(100_000 + i),
            }
        )
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _refuse_reminder(url: str, nth: int, sqlstate: str) -> None:
    """A trigger that fails the insert of the ``nth`` reminder (``sqlstate`` on PostgreSQL)."""
    if url.startswith("sqlite"):
        statements = [
            "CREATE TRIGGER refuse BEFORE INSERT ON notifications "
            f"WHEN (SELECT count(*) FROM notifications) >= {nth - 1} "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ]
    else:
        statements = [
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF (SELECT count(*) FROM notifications) >= {nth - 1} THEN "
            f"RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{sqlstate}'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON notifications "
            "FOR EACH ROW EXECUTE FUNCTION refuse()",
        ]
    for statement in statements:
        db.execute(url, text(statement))


def test_a_refused_reminder_leaves_nothing_of_the_file(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = _file(tmp_path, 50)
    _refuse_reminder(database_url, 150, "23514")  # a check violation, midway through

    result = cli("create", "--from-file", path)

    assert result.exit_code == 1, (result.stdout, result.stderr)  # as any integrity error
    assert "refused by the test" in result.stderr
    assert "1000" not in result.stderr  # no recipient of the refused row is quoted
    assert db.counts(database_url) == (0, 0)


def test_without_the_trigger_the_same_file_is_written(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    cli.ok("create", "--from-file", _file(tmp_path, 50))

    assert db.counts(database_url) == (50, 200)
    assert {r["recipient"] for r in db.reminders(database_url)} == {
        str(100_000 + i) for i in range(50)
    }


@pg_only
def test_a_connection_error_during_copy_is_exit_4(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = _file(tmp_path, 20)
    _refuse_reminder(database_url, 30, "08006")  # connection_failure, as a dropped link

    result = cli("create", "--from-file", path)

    assert result.exit_code == 4, (result.stdout, result.stderr)
    assert "unavailable" in result.stderr
    assert "1000" not in result.stderr
    assert db.counts(database_url) == (0, 0)


def test_booking_data_is_stored_as_by_an_insert(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "data.jsonl"
    with_data = {
        "booking_id": "with-data",
        "starts_at": "2030-01-10T18:00:00+01:00",
        "ends_at": "2030-01-10T19:30:00+01:00",
        "to": "100001",
        "data": {"room": "A", "seats": 3},
    }
    without = {**with_data, "booking_id": "without-data", "to": "100002"}
    del without["data"]
    path.write_text(json.dumps(with_data) + "\n" + json.dumps(without) + "\n")

    cli.ok("create", "--from-file", str(path))

    assert db.booking(database_url, "with-data")["data"] == {"room": "A", "seats": 3}
    assert db.booking(database_url, "without-data")["data"] is None
    with db.connect(database_url) as conn:  # no data is JSON null, never SQL NULL
        assert conn.scalar(text("SELECT count(*) FROM bookings WHERE data IS NULL")) == 0


# --- the bulk path writes what the row-by-row path writes ------------------------------

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MANY = 600  # more recipients than one lookup takes (queries.CHUNK): the whole-table reads


def _line(prefix: str, i: int) -> dict[str, Any]:
    """A varied booking: chains, two recipients, own kinds, data, locale, implied zones,
    one already started (its reminders before the start are skipped)."""
    start = NOW - timedelta(minutes=10) if i % 9 == 0 else NOW + timedelta(days=3, minutes=i)
    line: dict[str, Any] = {
        "booking_id": f"{prefix}-{i}",
        "title": f"Class {i}",
        "starts_at": start.astimezone(timezone(timedelta(hours=2))).isoformat(),
        "ends_at": (start + timedelta(hours=1)).isoformat(),
        "to": [f"{200_000 + i}"],
    }
    if i % 7 == 0:
        line["to"] = [f"{200_000 + i}|email:user{i}@example.com"]
    if i % 11 == 0:
        line["to"].append("console:desk")
    if i % 13 == 0:
        line["remind"] = "start-30m end-10m"
    if i % 5 == 0:
        line["data"] = {"room": f"R{i}", "seats": i}
    if i % 17 == 0:
        line["locale"] = "de"
    if i % 2 == 0:
        line["timezone"] = "Europe/Berlin"
    return line


def _inputs(prefix: str) -> tuple[list[BookingInput], list[int]]:
    text = "".join(json.dumps(_line(prefix, i)) + "\n" for i in range(MANY))
    return read_bookings(io.StringIO(text), name="b.jsonl", defaults=BookingFields(), now=NOW)


def _stored(url: str, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bookings and reminders of one prefix, keyed without it, ids left out."""
    bookings = {
        b["external_id"].removeprefix(prefix): {
            k: v for k, v in b.items() if k not in ("id", "external_id", "title")
        }
        for b in db.bookings(url)
        if b["external_id"].startswith(prefix)
    }
    reminders = {
        (r["external_id"].removeprefix(prefix), r["kind"], r["route"]): {
            k: v for k, v in r.items() if k not in ("id", "booking_id", "external_id")
        }
        for r in db.reminders(url)
        if r["external_id"].startswith(prefix)
    }
    return bookings, reminders


def test_a_file_writes_what_one_create_per_booking_writes(store: Store, database_url: str) -> None:
    clock = store.clock
    assert isinstance(clock, FrozenClock)
    clock.set(NOW - timedelta(hours=1))
    for prefix in ("bulk", "one"):  # one booking exists already: the file moves it
        create_booking(
            store, f"{prefix}-3", starts_at="+1d", ends_at="+1d1h", to=["200003", "200777"]
        )
    clock.set(NOW)
    with store.transaction() as conn:
        queries.set_recipient_state(conn, "telegram", "200006", RecipientState.SUPPRESSED, NOW)
        queries.remember_chat_move(conn, "telegram", "200008", "-100200008", NOW)

    inputs, lines = _inputs("bulk")
    bulk = create_bookings(store, inputs, lines=lines, refuse_ended=True)
    single = [create_bookings(store, [inp], refuse_ended=True)[0] for inp in _inputs("one")[0]]

    assert [r.as_dict() | {"booking_id": ""} for r in bulk] == [
        r.as_dict() | {"booking_id": ""} for r in single
    ]
    assert {r.action for r in bulk} == {"created", "rescheduled"}
    assert any(r.suppressed for r in bulk)
    assert any(r.skipped for r in bulk)
    bulk_rows, single_rows = _stored(database_url, "bulk"), _stored(database_url, "one")
    assert bulk_rows == single_rows
    assert len(bulk_rows[1]) > 3 * MANY
    assert any(key[2] == "telegram:-100200008" for key in bulk_rows[1])  # the chat moved


@pytest.mark.parametrize("suppressed", [10, MANY + 50])
def test_suppressed_among_many_keys_reads_the_table_or_looks_up(
    database_url: str, store: Store, suppressed: int
) -> None:
    """Fewer suppressed rows than keys asked: one read of them; more: the lookups."""
    keys = [("telegram", str(300_000 + i)) for i in range(MANY)]
    written = {("telegram", str(300_000 + 3 * i)) for i in range(suppressed)}
    with store.transaction() as conn:
        for channel, address in written:  # every 3rd of those asked about, and others
            queries.set_recipient_state(conn, channel, address, RecipientState.SUPPRESSED, NOW)
        queries.set_recipient_state(conn, "telegram", "300001", RecipientState.ACTIVE, NOW)
        found = queries.suppressed_among(conn, keys)

    assert found == written & set(keys)


@pytest.mark.parametrize("moves", [10, MANY + 50])
def test_chat_moves_among_many_recipients_reads_the_table_or_looks_up(
    database_url: str, store: Store, moves: int
) -> None:
    recipients = [("telegram", str(400_000 + i)) for i in range(MANY)]
    moved = [str(400_000 + 2 * i) for i in range(moves)]
    with store.transaction() as conn:
        for old in moved:
            queries.remember_chat_move(conn, "telegram", old, f"-100{old}", NOW)
        found = queries.chat_moves(conn, recipients)

    assert found == {("telegram", a): ("telegram", f"-100{a}") for _, a in recipients if a in moved}


# --- reading a file -----------------------------------------------------------------


def test_every_bad_line_is_reported_by_number_and_nothing_is_written(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    lines = [json.dumps(_line("f", i)) for i in range(MANY)]
    lines[5] = lines[5].replace('"to"', '"too"')
    lines[300] = "{not json"
    lines[598] = json.dumps(_line("f", 1))  # the id of line 2 again
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")

    result = cli("create", "--from-file", str(tmp_path / "b.jsonl"))

    assert result.exit_code == 2, (result.stdout, result.stderr)
    errors = result.stderr.splitlines()
    assert errors[0] == "error: b.jsonl: 2 invalid line(s), nothing written"
    assert errors[1].startswith("  line 6: unknown key(s): too")
    assert errors[2].startswith("  line 301: invalid JSON")
    assert db.counts(database_url) == (0, 0)

    del lines[300], lines[5]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    result = cli("create", "--from-file", str(tmp_path / "b.jsonl"))

    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "line 597: booking 'f-1' appears twice (first at line 2)" in result.stderr
    assert db.counts(database_url) == (0, 0)


def _too_deep_before(value: Any, depth: int = 1) -> bool:
    """The depth rule as first written: every value, container or not, is one level deeper."""
    if depth > bookfile.MAX_JSON_DEPTH:
        return True
    if isinstance(value, dict):
        return any(_too_deep_before(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_too_deep_before(v, depth + 1) for v in value)
    return False


def _nested(levels: int, leaf: Any) -> Any:
    value = leaf
    for level in range(levels):
        value = [value] if level % 2 else {"k": value, "s": 1}
    return value


@pytest.mark.parametrize("levels", range(12, 19))
@pytest.mark.parametrize("leaf", [1, "x", None, [], {}, [1], {"a": 1}])
def test_the_depth_limit_counts_levels_as_before(levels: int, leaf: Any) -> None:
    record = {"booking_id": "b", "data": _nested(levels, leaf)}

    assert bookfile._too_deep(record) == _too_deep_before(record)


@sqlite_only
@pytest.mark.parametrize("enabled", [True, False])
def test_a_file_create_leaves_garbage_collection_as_it_was(
    cli: Cli, tmp_path: Path, enabled: bool
) -> None:
    (gc.enable if enabled else gc.disable)()
    try:
        cli.ok("create", "--from-file", _file(tmp_path, 3))
        assert gc.isenabled() is enabled
        (tmp_path / "bookings.jsonl").write_text("{broken\n")
        assert cli("create", "--from-file", str(tmp_path / "bookings.jsonl")).exit_code == 2
        assert gc.isenabled() is enabled
    finally:
        gc.enable()
