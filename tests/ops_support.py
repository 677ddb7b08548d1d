"""Helpers for the ops tests: a CLI on the frozen clock, an in-process dispatch, a ping server."""

from __future__ import annotations

import functools
import io
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest
from sqlalchemy import func, select

from notifyctl import db, service
from notifyctl.config import Settings
from notifyctl.db import Store
from notifyctl.dispatch import Dispatcher
from notifyctl.models import DeliveryAttempt
from notifyctl.runs import DispatchOptions, RunReport
from tests.support import Cli, FrozenClock

TOKEN = "123:ABC"


def freeze_cli_clock(monkeypatch: pytest.MonkeyPatch, clock: FrozenClock) -> None:
    """Commands run through ``Cli`` read ``clock`` instead of the real time."""
    frozen = functools.partial(db.open_store, clock=clock)
    monkeypatch.setattr(db, "open_store", frozen)
    monkeypatch.setattr(service, "open_store", frozen)


def frozen_cli(monkeypatch: pytest.MonkeyPatch, database_url: str, clock: FrozenClock) -> Cli:
    freeze_cli_clock(monkeypatch, clock)
    return Cli(database_url)


def dispatch(
    store: Store,
    clock: FrozenClock,
    database_url: str,
    api_url: str = "http://127.0.0.1:9",
    **options: Any,
) -> RunReport:
    """One in-process dispatch run on the frozen clock (sends one at a time: deterministic)."""
    settings = Settings(database_url=database_url, telegram_token=TOKEN, telegram_api_url=api_url)
    opts = DispatchOptions(**{"concurrency": 1, "wait": False, **options})
    return Dispatcher(
        store,
        settings,
        opts,
        stdout=io.StringIO(),
        rng=random.Random(1),
        sleep=clock.sleep,
        monotonic=lambda: clock().timestamp(),
    ).run()


def attempt_outcomes(store: Store, since: datetime | None = None) -> dict[str, int]:
    """How many delivery attempts ended in each outcome (the history stats must agree with)."""
    stmt = select(DeliveryAttempt.outcome, func.count()).group_by(DeliveryAttempt.outcome)
    if since is not None:
        stmt = stmt.where(DeliveryAttempt.started_at >= since)
    with store.reader() as conn:
        return {outcome: count for outcome, count in conn.execute(stmt)}


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


# --- a healthchecks.io stand-in ---------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    method: str
    path: str
    body: str


class _PingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _PingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        with self.server.lock:
            self.server.pings.append(Ping(self.command, self.path, body))
        self.send_response(self.server.status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    do_GET = _record
    do_POST = _record
    do_HEAD = _record


class _PingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pings: list[Ping] = []
        self.status = 200
        super().__init__(("127.0.0.1", 0), _PingHandler)


class PingServer:
    """Records every ping on 127.0.0.1; ``url(path)`` is a ping URL on it."""

    def __init__(self) -> None:
        self._server = _PingHTTPServer()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def answer(self, status: int) -> None:
        self._server.status = status

    @property
    def pings(self) -> list[Ping]:
        with self._server.lock:
            return list(self._server.pings)

    def paths(self) -> list[str]:
        return [p.path for p in self.pings]

    def __enter__(self) -> PingServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
