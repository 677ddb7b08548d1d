"""``create --from-file`` writes its reminders in bulk (PostgreSQL: COPY, SQLite: executemany).

What must not change with the way of writing: the whole file is one transaction
(a database error on any reminder leaves nothing behind), and a database error
surfaces exactly as from an INSERT (a lost connection is exit 4). The errors are
real ones: a trigger in the test database refuses the Nth reminder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from tests import dbstate as db
from tests.support import Cli

pg_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


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
