"""Test helpers: an injectable clock and an in-process CLI runner."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from notifyctl.cli import app


class FrozenClock:
    """An injectable clock: aware UTC, moves only when told (or when ``sleep`` is called)."""

    def __init__(self, now: datetime | None = None) -> None:
        self._now = now or datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0, **kwargs: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds, **kwargs)
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


class Cli:
    """Runs the real Typer app in-process against one database."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        # runs send what is due and exit: tests of waiting for what falls due opt in
        self.env: dict[str, str | None] = {
            "NOTIFYCTL_DATABASE_URL": database_url,
            "NOTIFYCTL_NO_WAIT": "1",
        }

    def __call__(self, *args: str, input: str | None = None, **env: str | None) -> CliResult:
        runner = CliRunner()
        result = runner.invoke(app, list(args), input=input, env={**self.env, **env})
        return CliResult(result.exit_code, result.stdout, result.stderr)

    def ok(self, *args: str, **kwargs: str | None) -> CliResult:
        result = self(*args, **kwargs)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result


REPO = Path(__file__).resolve().parent.parent


def clean_env(database_url: str, **extra: str) -> dict[str, str]:
    """This process's environment without notifyctl's own settings, pointed at one store."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFYCTL_", "TELEGRAM_")) and k != "DATABASE_URL"
    }
    return env | {"NOTIFYCTL_DATABASE_URL": database_url, "PYTHONPATH": str(REPO), **extra}


@contextmanager
def dispatchers(
    count: int, env: dict[str, str], *args: str
) -> Iterator[list[subprocess.Popen[str]]]:
    """``count`` ``notifyctl dispatch --json`` processes started at once; killed and reaped
    whatever happens."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "notifyctl", "dispatch", "--json", *args],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def due_now(store: Any, clock: FrozenClock, recipients: list[str]) -> None:
    """One booking per recipient (``b0``, ``b1``, ...) whose hour_before reminder is due
    now by the real clock, which processes started by a test read."""
    from notifyctl.service import booking_input, create_bookings

    now = datetime.now(UTC)
    clock.set(now)
    create_bookings(
        store,
        [
            booking_input(
                f"b{i}",
                starts_at=now + timedelta(minutes=30),
                ends_at=now + timedelta(minutes=90),
                to=[to],
                remind=["hour_before"],
                now=now,
            )
            for i, to in enumerate(recipients)
        ],
    )


def finish(procs: list[subprocess.Popen[str]], timeout: float = 50) -> list[dict[str, Any]]:
    """Wait for every process; each must exit 0, quietly, with a JSON summary on stdout."""
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        assert err == ""
        reports.append(json.loads(out))
    return reports


def on_terminal(
    database_url: str, *args: str, columns: int = 80, term: str = "dumb"
) -> tuple[int, str]:
    """``notifyctl ARGS`` in a real process whose stdout is a pseudo-terminal."""
    env = clean_env(database_url, COLUMNS=str(columns), NO_COLOR="1", TERM=term)
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "notifyctl", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.STDOUT,
        env=env,
    ) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=60)
    os.close(leader)
    return code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def stat_hours_drift(engine: Any) -> dict[str, Any]:
    """Where the counts the triggers kept differ from counting the store afresh (empty: none).

    Reads the kept sums, recounts (``queries.rebuild_stat_hours``) and reads again,
    in one transaction that is rolled back: the store is left as it was.
    """
    from sqlalchemy import func, select

    from notifyctl.models import LatenessHour, StatHour
    from notifyctl.queries import rebuild_stat_hours

    def sums(conn: Any) -> dict[str, dict[tuple[Any, ...], int]]:
        found: dict[str, dict[tuple[Any, ...], int]] = {}
        for table, key in ((StatHour, StatHour.event), (LatenessHour, LatenessHour.lateness_ms)):
            columns = (table.hour, table.channel, table.kind, key)
            rows = conn.execute(select(*columns, func.sum(table.count)).group_by(*columns))
            found[table.__tablename__] = {tuple(r[:4]): int(r[4]) for r in rows if r[4]}
        return found

    with engine.connect() as conn:
        kept = sums(conn)
        rebuild_stat_hours(conn)
        recounted = sums(conn)
        conn.rollback()
    drift: dict[str, Any] = {}
    for table, counts in kept.items():
        for key in counts.keys() | recounted[table].keys():
            if counts.get(key, 0) != recounted[table].get(key, 0):
                drift[f"{table} {key}"] = (counts.get(key, 0), recounted[table].get(key, 0))
    return drift
