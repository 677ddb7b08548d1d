"""Fill a migrated store fast with set-based SQL (no Python loop over rows).

SQLite uses a recursive CTE, PostgreSQL ``generate_series``. Both write the
same rows, into the tables and indexes that ``notifyctl migrate`` created:

- ``sent``: finished history. Each booking (in the past) has the four default
  kinds to one chat, all ``sent`` (attempts 1, a provider message id).
- ``recent``: like ``sent`` but every reminder finished within the last 24 h
  (bookings started 1-24 h ago; 1 in 50 ``failed``, the rest ``sent`` 0-59 s late).
- ``future``: pending reminders of bookings 3+ days ahead: nothing is due.
- ``due``: pending ``hour_before`` reminders due 10-15 minutes ago, still
  useful for 45+ minutes; each booking has ``per_booking`` reminders, each to
  its own chat, so neither per-chat spacing nor superseding applies.

Every reminder goes to a distinct Telegram chat id. SQLite stores times as
SQLAlchemy does (naive UTC ``YYYY-MM-DD HH:MM:SS.ffffff``); ``data`` is the
JSON ``null`` that notifyctl writes for a booking without data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from harness import Store

Mode = Literal["sent", "recent", "future", "due"]
KINDS = ("day_before", "hour_before", "at_start", "before_end")
CHAT_BASE = 1_000_000_000
BOOKING_LENGTH = 3600  # seconds
#: the tables whose triggers keep stats' hourly counts (migration 0005)
COUNTED_TABLES = ("notifications", "delivery_attempts")


@dataclass(frozen=True)
class Fill:
    mode: Mode
    reminders: int  # total notification rows
    per_booking: int = 4
    first_booking: int = 1  # booking ids first_booking .. first_booking + bookings - 1

    @property
    def bookings(self) -> int:
        return -(-self.reminders // self.per_booking)

    @property
    def last_booking(self) -> int:
        return self.first_booking + self.bookings - 1


def _start(mode: Mode) -> str:
    """Booking start, in seconds from now, for booking number ``i``."""
    if mode == "sent":  # one every 5 s, all ended more than a day ago (10M rows: 145 days)
        return "(i * 5 - 200 * 86400)"
    if mode == "recent":  # started 1-24 h ago: every reminder finished inside 24 h
        return "(-3600 - i % 82800)"
    if mode == "future":
        return "(i * 60 + 3 * 86400)"
    return "(3000 - i % 300)"  # due: started within the hour, so hour_before is due


def _slots(fill: Fill) -> list[tuple[int, str, int]]:
    """(slot, kind, recipient offset) for the reminders of one booking."""
    if fill.mode == "due":
        return [(j, "hour_before", j) for j in range(fill.per_booking)]
    if fill.per_booking > len(KINDS):
        raise ValueError("sent/future fills have at most one reminder per kind")
    return [(j, KINDS[j], 0) for j in range(fill.per_booking)]


def _columns(fill: Fill, t: str, mod: str = "%") -> tuple[str, str]:
    """(booking SELECT list, notification SELECT list); ``t`` formats seconds-from-now.

    ``mod`` is the modulo operator as the driver needs it written (psycopg: ``%%``).
    """
    start = "s.start_s"
    end = f"(s.start_s + {BOOKING_LENGTH})"
    scheduled = (
        f"CASE k.kind WHEN 'day_before' THEN {start} - 86400 "
        f"WHEN 'hour_before' THEN {start} - 3600 WHEN 'at_start' THEN {start} "
        f"ELSE {end} - 300 END"
    )
    not_after = f"CASE WHEN k.kind IN ('day_before', 'hour_before') THEN {start} ELSE {end} END"
    created = f"{start} - 7 * 86400" if fill.mode in ("sent", "recent") else "-3600"
    booking = (
        "s.i, 'bench-' || s.i, 'Bench booking ' || s.i, "
        f"{t.format(start)}, {t.format(end)}, 'Europe/Berlin', NULL, 'null', 'active', "
        f"{t.format(created)}, {t.format(created)}"
    )
    chat = f"CAST({CHAT_BASE} + s.i * 10 + k.r AS TEXT)"
    if fill.mode == "recent":  # sent within the last 24 h, 0-59 s late; 1 in 50 failed
        sent = f"(-60 - (s.i * 7 + k.j) {mod} 82800)"
        late = f"({sent} - (s.i + k.j) {mod} 60)"
        failed = f"(s.i + k.j) {mod} 50 = 0"
        status = (
            f"CASE WHEN {failed} THEN 'failed' ELSE 'sent' END, 1, NULL, NULL, "
            f"NULL, CASE WHEN {failed} THEN NULL ELSE {t.format(sent)} END, "
            f"CAST(s.i * 10 + k.j AS TEXT), {t.format(created)}, {t.format(sent)}"
        )
        return booking, (
            f"s.i, k.kind, 'telegram', {chat}, {t.format(late)}, {t.format(not_after)}, "
            f"{t.format(late)}, {status}, 'telegram:' || {chat}"
        )
    if fill.mode == "sent":
        status = (
            f"'sent', 1, NULL, NULL, NULL, {t.format(scheduled)}, "
            f"CAST(s.i * 10 + k.j AS TEXT), {t.format(created)}, {t.format(scheduled)}"
        )
    else:
        status = f"'pending', 0, NULL, NULL, NULL, NULL, NULL, {t.format(created)}, " + t.format(
            created
        )
    notification = (
        f"s.i, k.kind, 'telegram', {chat}, {t.format(scheduled)}, {t.format(not_after)}, "
        f"{t.format(scheduled)}, {status}, 'telegram:' || {chat}"
    )
    return booking, notification


BOOKING_COLUMNS = (
    "id, external_id, title, starts_at, ends_at, timezone, locale, data, status, "
    "created_at, updated_at"
)
NOTIFICATION_COLUMNS = (
    "booking_id, kind, channel, recipient, scheduled_at, not_after, due_at, status, "
    "attempts, last_error, lease_token, lease_expires_at, sent_at, provider_message_id, "
    "created_at, updated_at, route"
)


ATTEMPT_COLUMNS = "notification_id, started_at, finished_at, outcome, http_status, uncertain"


def attempts_sql(fill: Fill, mod: str = "%", seconds: str = "{} - 30") -> list[str]:
    """``recent`` history: each reminder's final attempt, and for 1 in 19 an earlier retry.

    ``seconds`` shifts a time by a number of seconds on the dialect (``{}`` is the time).
    """
    if fill.mode != "recent":
        return []
    ids = (
        f"FROM notifications WHERE booking_id BETWEEN {fill.first_booking} AND {fill.last_booking}"
    )
    final = (
        f"INSERT INTO delivery_attempts ({ATTEMPT_COLUMNS}) SELECT id, updated_at, updated_at, "
        "status, CASE status WHEN 'sent' THEN 200 ELSE 400 END, false " + ids
    )
    earlier = seconds.format("updated_at")
    retry = (
        f"INSERT INTO delivery_attempts ({ATTEMPT_COLUMNS}) SELECT id, {earlier}, {earlier}, "
        f"'retried', 502, false {ids} AND id {mod} 19 = 0"
    )
    return [retry, final]


def _slot_values(fill: Fill) -> str:
    return ", ".join(f"({j}, '{kind}', {r})" for j, kind, r in _slots(fill))


def fill_sqlite(store: Store, fills: list[Fill], now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    conn = store.connect_sqlite()
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("BEGIN IMMEDIATE")
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        counting = triggers.fetchall()  # off while filling: counted in one go afterwards
        for name, _ in counting:
            conn.execute(f"DROP TRIGGER {name}")
        t = "(strftime('%Y-%m-%d %H:%M:%S', :now, ({}) || ' seconds') || '.000000')"
        for fill in fills:
            booking, notification = _columns(fill, t)
            seq = (
                "WITH RECURSIVE seq(i) AS (SELECT :first UNION ALL "
                "SELECT i + 1 FROM seq WHERE i < :last), "
                f"s(i, start_s) AS (SELECT i, {_start(fill.mode)} FROM seq)"
            )
            params = {
                "now": now.strftime("%Y-%m-%d %H:%M:%S"),
                "first": fill.first_booking,
                "last": fill.last_booking,
            }
            conn.execute(
                f"INSERT INTO bookings ({BOOKING_COLUMNS}) {seq} SELECT {booking} FROM s", params
            )
            conn.execute(
                f"INSERT INTO notifications ({NOTIFICATION_COLUMNS}) {seq}, "
                f"k(j, kind, r) AS (VALUES {_slot_values(fill)}) "
                f"SELECT {notification} FROM s CROSS JOIN k ORDER BY s.i, k.j",
                params,
            )
            shift = "strftime('%Y-%m-%d %H:%M:%S', {}, '-30 seconds') || '.000000'"
            for sql in attempts_sql(fill, "%", shift):
                conn.execute(sql)
        for _, sql in counting:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def fill_postgresql(store: Store, fills: list[Fill], now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    t = "(%(now)s::timestamptz + ({}) * interval '1 second')"
    with store.connect_pg() as conn:
        for table in COUNTED_TABLES:  # off while filling: counted in one go afterwards
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for fill in fills:
            booking, notification = _columns(fill, t, "%%")
            seq = (
                f"WITH s(i, start_s) AS (SELECT i, {_start(fill.mode).replace('%', '%%')} "
                "FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i)"
            )
            params = {"now": now, "first": fill.first_booking, "last": fill.last_booking}
            conn.execute(
                f"INSERT INTO bookings ({BOOKING_COLUMNS}) {seq} SELECT {booking} FROM s", params
            )
            conn.execute(
                f"INSERT INTO notifications ({NOTIFICATION_COLUMNS}) {seq}, "
                f"k(j, kind, r) AS (VALUES {_slot_values(fill)}) "
                f"SELECT {notification} FROM s CROSS JOIN k ORDER BY s.i, k.j",
                params,
            )
            for sql in attempts_sql(fill, "%", "{} - interval '30 seconds'"):
                conn.execute(sql)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('bookings', 'id'), "
            "(SELECT coalesce(max(id), 1) FROM bookings))"
        )
        for table in COUNTED_TABLES:
            conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        conn.commit()
    with store.connect_pg(autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does to a store this size
        conn.execute("CHECKPOINT")  # write the fill out now, not during a measurement


def fill(store: Store, fills: list[Fill], now: datetime | None = None) -> None:
    """Fill, then count the rows into stats' hourly tables as migration 0005 does for a
    store that already has a history (the triggers that count row by row are off
    during the fill: 10M rows one trigger call each would take longer than the fill)."""
    if store.dialect == "sqlite":
        fill_sqlite(store, fills, now)
    else:
        fill_postgresql(store, fills, now)
    _recount(store)


def _recount(store: Store) -> None:
    from notifyctl.db import make_engine
    from notifyctl.queries import rebuild_stat_hours

    engine = make_engine(store.url)
    try:
        with engine.begin() as conn:
            rebuild_stat_hours(conn)
    finally:
        engine.dispose()
    if store.dialect == "postgresql":
        with store.connect_pg(autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE stat_hours")
            conn.execute("VACUUM ANALYZE lateness_hours")
