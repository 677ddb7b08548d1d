"""Test helpers: an injectable clock and an in-process CLI runner."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
