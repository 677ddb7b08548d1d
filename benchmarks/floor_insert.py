"""The create floor: the rows of ``create --from-file``, written by executemany / COPY.

    python benchmarks/floor_insert.py DATABASE_URL FILE.jsonl

Reads the JSON Lines file the runner generated (one booking per line, a
numeric Telegram chat id in ``to``, no ``remind``: the four default kinds,
all in the future), and writes the same rows as notifyctl, with the same
columns and values, in one transaction with plain ``sqlite3`` / ``psycopg``
(SPEC §9: executemany on SQLite, COPY on PostgreSQL):

    executemany INSERT INTO bookings (...)        -- one row per line (PG: COPY)
    SELECT external_id, id FROM bookings          -- the new ids (the store was empty)
    executemany INSERT INTO notifications (...)   -- four rows per booking (PG: COPY)

No validation, no upsert lookups, no per-booking report. It prints
``{"bookings": N, "notifications": N, "seconds": S}``.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

# kind: (anchor, offset, valid until) - notifyctl/kinds.py, written out
KINDS = (
    ("day_before", "start", timedelta(hours=-24), "start"),
    ("hour_before", "start", timedelta(hours=-1), "start"),
    ("at_start", "start", timedelta(0), "end"),
    ("before_end", "end", timedelta(minutes=-5), "end"),
)
BOOKING_SQL = (
    "INSERT INTO bookings (external_id, title, starts_at, ends_at, timezone, locale, data, "
    "status, created_at, updated_at) VALUES ({})"
)
NOTIFICATION_SQL = (
    "INSERT INTO notifications (booking_id, kind, channel, recipient, route, alternative, "
    "scheduled_at, not_after, due_at, status, attempts, created_at, updated_at) VALUES ({})"
)


def read(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rows(
    records: list[dict[str, Any]], now: datetime, naive: bool
) -> tuple[list[tuple[Any, ...]], list[tuple[str, tuple[Any, ...]]]]:
    """Booking rows, and (external_id, notification row without booking id) pairs.

    ``naive``: times as SQLite holds them (naive UTC text), else aware datetimes.
    """

    def t(value: datetime) -> Any:
        return value.isoformat(" ", "microseconds") if naive else value

    if naive:
        now = now.replace(tzinfo=None)
    stamp = t(now)
    bookings: list[tuple[Any, ...]] = []
    reminders: list[tuple[str, tuple[Any, ...]]] = []
    for r in records:
        start = datetime.fromisoformat(r["starts_at"]).astimezone(UTC)
        end = datetime.fromisoformat(r["ends_at"]).astimezone(UTC)
        if naive:
            start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        bid = r["booking_id"]
        data = json.dumps(r.get("data"))  # notifyctl's JSON column writes null as 'null'
        start_t, end_t = t(start), t(end)
        bookings.append(
            (bid, r.get("title", bid), start_t, end_t, r.get("timezone", "UTC"), None, data,
             "active", stamp, stamp)
        )  # fmt: skip
        for kind, anchor, offset, until in KINDS:
            scheduled = t((start if anchor == "start" else end) + offset)
            not_after = start_t if until == "start" else end_t
            reminders.append(
                (bid, (kind, "telegram", r["to"], f"telegram:{r['to']}", 0, scheduled, not_after,
                       scheduled, "pending", 0, stamp, stamp))
            )  # fmt: skip
    return bookings, reminders


def write_sqlite(path: str, records: list[dict[str, Any]]) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    # The same connection settings as notifyctl's engine (notifyctl/db.py).
    for pragma in ("busy_timeout = 10000", "journal_mode = WAL", "synchronous = NORMAL",
                   "foreign_keys = ON"):  # fmt: skip
        conn.execute(f"PRAGMA {pragma}")
    bookings, reminders = rows(records, datetime.now(UTC), naive=True)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(BOOKING_SQL.format(",".join("?" * 10)), bookings)
    ids = dict(conn.execute("SELECT external_id, id FROM bookings"))
    conn.executemany(
        NOTIFICATION_SQL.format(",".join("?" * 13)), [(ids[b], *n) for b, n in reminders]
    )
    conn.execute("COMMIT")
    conn.close()
    return len(reminders)


def write_postgresql(url: str, records: list[dict[str, Any]]) -> int:
    import psycopg

    bookings, reminders = rows(records, datetime.now(UTC), naive=False)
    with psycopg.connect(url) as conn, conn.cursor() as cur:  # one transaction
        with cur.copy(_copy_sql(BOOKING_SQL)) as copy:
            for row in bookings:
                copy.write_row(row)
        ids: dict[str, int] = dict(cur.execute("SELECT external_id, id FROM bookings").fetchall())
        with cur.copy(_copy_sql(NOTIFICATION_SQL)) as copy:
            for b, n in reminders:
                copy.write_row((ids[b], *n))
    return len(reminders)


def _copy_sql(insert: str) -> str:
    """``INSERT INTO t (cols) VALUES ({})`` -> ``COPY t (cols) FROM STDIN``."""
    return insert.replace("INSERT INTO", "COPY").replace(" VALUES ({})", " FROM STDIN")


def main(argv: Sequence[str] | None = None) -> int:
    url, path = argv or sys.argv[1:]
    began = time.perf_counter()
    records = read(path)
    if url.startswith("sqlite:///"):
        count = write_sqlite(url.removeprefix("sqlite:///"), records)
    else:
        count = write_postgresql(url, records)
    seconds = time.perf_counter() - began
    print(json.dumps({"bookings": len(records), "notifications": count, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
