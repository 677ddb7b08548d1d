"""Reading and poking stored state from tests, through SQLAlchemy (never by parsing output)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Executable, func, select, update

from notifyctl.db import make_engine
from notifyctl.models import Booking, Notification
from tests.support import CliResult


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """One committed transaction on the store, engine disposed afterwards."""
    engine = make_engine(url, create_file=False)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def bookings(url: str) -> list[dict[str, Any]]:
    """Every booking row as a dict, by id."""
    with connect(url) as conn:
        return [r._asdict() for r in conn.execute(select(Booking).order_by(Booking.id))]


def booking(url: str, external_id: str) -> dict[str, Any]:
    found = [b for b in bookings(url) if b["external_id"] == external_id]
    assert len(found) == 1, f"booking {external_id!r}: {len(found)} rows"
    return found[0]


def reminders(url: str, external_id: str | None = None) -> list[dict[str, Any]]:
    """Every reminder row as a dict (optionally of one booking), plus its ``external_id``."""
    stmt = (
        select(Notification, Booking.external_id)
        .join(Booking, Booking.id == Notification.booking_id)
        .order_by(Notification.id)
    )
    if external_id is not None:
        stmt = stmt.where(Booking.external_id == external_id)
    with connect(url) as conn:
        return [r._asdict() for r in conn.execute(stmt)]


def by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Reminder rows keyed by (kind, channel, recipient)."""
    return {(r["kind"], r["channel"], r["recipient"]): r for r in rows}


def counts(url: str) -> tuple[int, int]:
    """(bookings, reminders) stored."""
    with connect(url) as conn:
        return (
            conn.scalar(select(func.count()).select_from(Booking)) or 0,
            conn.scalar(select(func.count()).select_from(Notification)) or 0,
        )


def execute(url: str, statement: Executable) -> None:
    with connect(url) as conn:
        conn.execute(statement)


def set_reminder(url: str, external_id: str, kind: str, **values: Any) -> None:
    """Force columns of one booking's reminders of ``kind`` (simulates dispatch outcomes)."""
    with connect(url) as conn:
        booking_id = conn.scalar(select(Booking.id).where(Booking.external_id == external_id))
        assert booking_id is not None
        conn.execute(
            update(Notification)
            .where(Notification.booking_id == booking_id, Notification.kind == kind)
            .values(**values)
        )


def now() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    """An ISO 8601 time with offset, as a user would type it."""
    return value.isoformat()


def assert_usage_error(result: CliResult, *, contains: str = "") -> None:
    """Exit 2, one ``error: …`` first line on stderr, no traceback anywhere."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    first = result.stderr.splitlines()[0] if result.stderr else ""
    assert first.startswith("error: "), result.stderr
    assert contains.lower() in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@contextmanager
def collecting_leaked_connections() -> Iterator[list[warnings.WarningMessage]]:
    """Collect garbage here and record the ResourceWarnings of connections left open.

    Works around a product bug (``open_store`` does not dispose its engine when the
    schema check fails): on PostgreSQL the leaked connection would otherwise warn in
    whichever later test the garbage collector happens to run.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield caught
        gc.collect()
