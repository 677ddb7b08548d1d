"""The dispatch floor: the simplest correct dispatcher, written plainly.

    python benchmarks/floor_dispatch.py DATABASE_URL API_URL TOKEN [--batch-size 50] [--threads 4]

On the notifyctl schema (created by ``notifyctl migrate``), with plain
``sqlite3`` or ``psycopg``: 4 threads share one ``requests.Session``, each
with its own database connection (SPEC §9, "Raised targets")::

    each thread, loop:
        one transaction (BEGIN IMMEDIATE on SQLite): claim up to 50 due
            reminders with UPDATE ... WHERE id IN (SELECT ... ORDER BY due_at,
            id LIMIT 50 [FOR UPDATE SKIP LOCKED]) RETURNING ..., under a fresh
            lease token; read their bookings (the text needs the title and
            start); commit
        for each claimed reminder:
            POST sendMessage (HTML text with the escaped title)
            one autocommit UPDATE: the reminder to sent (or failed), fenced by
                status and lease token
    until nothing is due

It prints ``{"sent": N, "failed": N, "seconds": S}``. No retries, rate limits,
templates, delivery history or run bookkeeping: the provider of the
throughput figure answers every message at once with 200. notifyctl does
all of those too, so this floor is a strict one.
"""

from __future__ import annotations

import argparse
import html
import json
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

LEASE = timedelta(seconds=300)
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores DateTime on SQLite

SQLITE_CLAIM = """
UPDATE notifications SET status = 'sending', lease_token = ?, lease_expires_at = ?,
       attempts = attempts + 1, updated_at = ?
WHERE id IN (SELECT id FROM notifications
             WHERE status = 'pending' AND due_at <= ? AND not_after > ?
             ORDER BY due_at, id LIMIT ?)
RETURNING id, booking_id, kind, recipient, due_at
"""
PG_CLAIM = """
UPDATE notifications SET status = 'sending', lease_token = %s, lease_expires_at = %s,
       attempts = attempts + 1, updated_at = %s
WHERE id IN (SELECT id FROM notifications
             WHERE status = 'pending' AND due_at <= %s AND not_after > %s
             ORDER BY due_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id, booking_id, kind, recipient, due_at
"""
RECORD = """
UPDATE notifications SET status = {p}, sent_at = {p}, provider_message_id = {p},
       last_error = {p}, updated_at = {p}, lease_token = NULL, lease_expires_at = NULL
WHERE id = {p} AND status = 'sending' AND lease_token = {p}
"""


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        # The same connection settings as notifyctl's engine (notifyctl/db.py).
        for pragma in (
            "busy_timeout = 10000",
            "journal_mode = WAL",
            "synchronous = NORMAL",
            "foreign_keys = ON",
        ):
            self.conn.execute(f"PRAGMA {pragma}")

    @staticmethod
    def _t(value: datetime) -> str:
        return value.astimezone(UTC).strftime(SQLITE_TIME)

    def claim(self, now: datetime, limit: int, token: str) -> tuple[list[Any], dict[int, Any]]:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        t = self._t(now)
        rows = c.execute(SQLITE_CLAIM, (token, self._t(now + LEASE), t, t, t, limit)).fetchall()
        bookings: dict[int, Any] = {}
        if rows:
            ids = sorted({r[1] for r in rows})
            marks = ",".join("?" * len(ids))
            for b in c.execute(
                f"SELECT id, title, starts_at, timezone FROM bookings WHERE id IN ({marks})", ids
            ):
                bookings[b[0]] = b
        c.execute("COMMIT")
        rows.sort(key=lambda r: (r[4], r[0]))
        return rows, bookings

    def record(
        self, nid: int, token: str, finished: datetime, message_id: str | None, error: str | None
    ) -> None:
        f = self._t(finished)
        status = "sent" if error is None else "failed"
        sent_at = f if error is None else None
        self.conn.execute(RECORD.format(p="?"), (status, sent_at, message_id, error, f, nid, token))


class PostgresStore:
    def __init__(self, url: str) -> None:
        import psycopg  # only when needed, as notifyctl does

        self.conn: Any = psycopg.connect(url, autocommit=True)

    def claim(self, now: datetime, limit: int, token: str) -> tuple[list[Any], dict[int, Any]]:
        with self.conn.transaction():
            rows = self.conn.execute(
                PG_CLAIM, (token, now + LEASE, now, now, now, limit)
            ).fetchall()
            bookings: dict[int, Any] = {}
            if rows:
                ids = sorted({r[1] for r in rows})
                for b in self.conn.execute(
                    "SELECT id, title, starts_at, timezone FROM bookings WHERE id = ANY(%s)", [ids]
                ):
                    bookings[b[0]] = b
        rows.sort(key=lambda r: (r[4], r[0]))
        return rows, bookings

    def record(
        self, nid: int, token: str, finished: datetime, message_id: str | None, error: str | None
    ) -> None:
        status = "sent" if error is None else "failed"
        sent_at = finished if error is None else None
        self.conn.execute(
            RECORD.format(p="%s"), (status, sent_at, message_id, error, finished, nid, token)
        )


def open_store(url: str) -> SqliteStore | PostgresStore:
    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise SystemExit(f"unsupported database URL: {url}")


def text_of(title: str, starts_at: Any) -> str:
    start = starts_at if isinstance(starts_at, datetime) else datetime.fromisoformat(starts_at)
    return f"Reminder: <b>{html.escape(title, quote=False)}</b> starts at {start:%H:%M} (UTC)."


def drain(
    store: SqliteStore | PostgresStore,
    session: requests.Session,
    url: str,
    batch_size: int,
    clock: Callable[[], datetime],
) -> tuple[int, int]:
    """One thread's loop: claim, then send and record each claimed reminder."""
    sent = failed = 0
    while True:
        lease_token = str(uuid.uuid4())
        rows, bookings = store.claim(clock(), batch_size, lease_token)
        if not rows:
            return sent, failed
        for nid, booking_id, _kind, chat, _due in rows:
            _, title, starts_at, _zone = bookings[booking_id]
            body = {
                "chat_id": chat,
                "text": text_of(title, starts_at),
                "parse_mode": "HTML",
                "link_preview_options": {"is_disabled": True},
            }
            response = session.post(url, json=body, timeout=(5, 30))
            answer = response.json()
            ok = response.status_code == 200 and answer.get("ok") is True
            message_id = str(answer["result"]["message_id"]) if ok else None
            error = None if ok else f"{response.status_code}: {answer.get('description')}"
            store.record(nid, lease_token, clock(), message_id, error)
            sent += ok
            failed += not ok


def run(
    database_url: str,
    api_url: str,
    token: str,
    batch_size: int,
    threads: int,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, float]:
    session = requests.Session()
    url = f"{api_url.rstrip('/')}/bot{token}/sendMessage"
    totals: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    began = time.perf_counter()

    def worker() -> None:
        try:
            totals.append(drain(open_store(database_url), session, url, batch_size, clock))
        except BaseException as e:  # reported below: a crashed floor must not look fast
            errors.append(e)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - began
    session.close()
    if errors:
        raise errors[0]
    return {
        "sent": sum(s for s, _ in totals),
        "failed": sum(f for _, f in totals),
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="raw claim/send/record loop (the floor)")
    parser.add_argument("database_url")
    parser.add_argument("api_url")
    parser.add_argument("token")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    result = run(args.database_url, args.api_url, args.token, args.batch_size, args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
