"""Plumbing shared by the benchmarks: timed child processes, the fake provider, stores.

Nothing here is measured: it starts and stops what the figures measure.

- ``run_timed`` runs one command as a child and reports its wall time, CPU
  time and peak RSS (``os.wait4`` rusage of exactly that child).
- ``Provider`` runs ``benchmarks/fake_telegram_server.py`` as its own process,
  so the fake's CPU is never charged to the code under test.
- ``Stores`` creates, clones and drops benchmark databases: SQLite files in a
  scratch directory, or PostgreSQL databases named ``notifyctl_bench_*``
  (always dropped ``WITH (FORCE)`` at the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
FAKE_SERVER = BENCH_DIR / "fake_telegram_server.py"
BOT_TOKEN = "123456:BENCHMARK-token_not-a-secret"
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

Dialect = Literal["sqlite", "postgresql"]
DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgresql")


class BenchmarkError(Exception):
    """Something the benchmark needed did not work (a crash, not a slow result)."""


# --- child processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    """One finished child process."""

    args: tuple[str, ...]
    returncode: int
    wall: float  # seconds from spawn to reaped
    cpu: float  # user + system seconds of the child
    maxrss_kb: int  # peak resident set of the command (kB); 0 unless run with rss=True
    stdout: str
    stderr: str

    def check(self, what: str) -> Timed:
        if self.returncode != 0:
            tail = (self.stderr.strip() or self.stdout.strip())[-2000:]
            raise BenchmarkError(f"{what} exited {self.returncode}: {tail}")
        return self


# Linux keeps a process's peak RSS across execve, and a child spawned straight
# from this (large) process starts with this process's peak. So when a peak RSS
# is wanted, a tiny interpreter forks the command and reports its child's own
# rusage on the last stderr line.
TRAMPOLINE = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\nBENCH_MAXRSS_KB=%d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""
RSS_MARK = "BENCH_MAXRSS_KB="


class Child:
    """A started child (in its own process group) whose rusage comes from ``os.wait4``."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        timeout: float,
        rss: bool = False,
    ) -> None:
        self.args = tuple(str(a) for a in args)
        self._rss = rss
        spawned = [sys.executable, "-I", "-S", "-c", TRAMPOLINE, *self.args] if rss else self.args
        self._out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in wait/kill
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            spawned,
            stdout=self._out,
            stderr=self._err,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        self._timer = threading.Timer(timeout, self._kill_on_timeout)
        self._timer.daemon = True
        self._timed_out = False
        self._timer.start()

    def _killpg(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _kill_on_timeout(self) -> None:
        self._timed_out = True
        self._killpg()

    def wait(self) -> Timed:
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        finally:
            self._timer.cancel()
        wall = time.perf_counter() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self._killpg()  # anything the command left behind in its group
        out, err = self._read(self._out), self._read(self._err)
        if self._timed_out:
            raise BenchmarkError(f"timed out: {' '.join(self.args)}")
        maxrss = 0  # unknown unless measured through the trampoline
        if self._rss:
            head, _, mark = err.rstrip("\n").rpartition("\n")
            if not mark.startswith(RSS_MARK):
                raise BenchmarkError(f"no peak RSS reported for {' '.join(self.args)}")
            maxrss, err = int(mark.removeprefix(RSS_MARK)), head
        return Timed(
            self.args,
            self.proc.returncode,
            wall,
            usage.ru_utime + usage.ru_stime,
            maxrss,
            out,
            err,
        )

    def kill(self) -> None:
        """Stop a child that will not be waited for (on errors and interrupts)."""
        self._timer.cancel()
        if self.proc.returncode is None:
            self._killpg()
            self.proc.wait()
        self._out.close()
        self._err.close()

    @staticmethod
    def _read(stream: IO[bytes]) -> str:
        stream.seek(0)
        text = stream.read().decode(errors="replace")
        stream.close()
        return text


def run_timed(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = 900.0,
    rss: bool = False,
) -> Timed:
    child = Child(args, env=env, cwd=cwd, timeout=timeout, rss=rss)
    try:
        return child.wait()
    except BaseException:
        child.kill()
        raise


def run_together(
    commands: Sequence[Sequence[str]], *, env: Mapping[str, str], cwd: Path, timeout: float
) -> list[Timed]:
    """Start every command at once; wait for all of them."""
    children: list[Child] = []
    try:
        for args in commands:
            children.append(Child(args, env=env, cwd=cwd, timeout=timeout))
        return [c.wait() for c in children]
    except BaseException:
        for c in children:
            c.kill()
        raise


def base_env(**extra: str) -> dict[str, str]:
    """A clean, cron-like environment: no colours, no .env surprises, no stray settings."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


# --- the fake provider --------------------------------------------------------------------


class Provider:
    """``fake_telegram_server.py`` in its own process, for one measurement."""

    def __init__(
        self, python: str, *, latency: float = 0.0, rate: float = 0.0, token: str = BOT_TOKEN
    ) -> None:
        self._args = [
            python,
            str(FAKE_SERVER),
            "--port",
            "0",
            "--latency",
            str(latency),
            "--rate",
            str(rate),
            "--token",
            token,
        ]
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.final: dict[str, Any] = {}

    def __enter__(self) -> Provider:
        self._proc = subprocess.Popen(
            self._args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline().strip()
        if not first.startswith("PORT="):
            self._stop()
            raise BenchmarkError(f"fake provider did not start: {first!r}")
        self.port = int(first.removeprefix("PORT="))
        return self

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.api_url}/stats", timeout=10) as response:
            data: dict[str, Any] = json.load(response)
        return data

    def _stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if lines:
            self.final = json.loads(lines[-1])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()


# --- stores -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """One benchmark database."""

    dialect: Dialect
    name: str
    url: str  # what notifyctl and the floors are given
    path: Path | None = None  # SQLite file

    def connect_sqlite(self) -> sqlite3.Connection:
        assert self.path is not None
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    def connect_pg(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=autocommit)

    def scalar(self, sql: str) -> Any:
        """One value from a read-only query (plain SQL, same on both dialects)."""
        if self.dialect == "sqlite":
            conn = self.connect_sqlite()
            try:
                return conn.execute(sql).fetchone()[0]
            finally:
                conn.close()
        with self.connect_pg(autocommit=True) as pg:
            row = pg.execute(sql).fetchone()
            return row[0] if row else None


@dataclass
class Stores:
    """Creates migrated stores and clones them; drops everything it made on close."""

    dialect: Dialect
    python: str
    workdir: Path
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL
    _made: list[Store] = field(default_factory=list)
    _counter: int = 0
    _migrated: Store | None = None

    def _name(self, label: str) -> str:
        self._counter += 1
        return f"notifyctl_bench_{os.getpid()}_{self._counter}_{label}"

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg_admin_url, autocommit=True)

    def _pg_url(self, name: str) -> str:
        base = self.pg_admin_url.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def check(self) -> None:
        """Fail early, with one clear line, when PostgreSQL is not there."""
        if self.dialect != "postgresql":
            return
        try:
            with self._admin() as admin:
                admin.execute("SELECT 1")
        except psycopg.OperationalError as e:
            raise BenchmarkError(
                f"PostgreSQL at {self.pg_admin_url} is unreachable ({str(e).strip()}); "
                "start it, pass --pg-url, or use --dialect sqlite"
            ) from e

    def empty(self, label: str = "empty") -> Store:
        """A new database at head: a copy of one migrated by ``notifyctl migrate`` itself."""
        if self._migrated is None:
            store = self._create("migrated")
            env = base_env(NOTIFYCTL_DATABASE_URL=store.url)
            run_timed(
                [self.python, "-m", "notifyctl", "migrate"], env=env, cwd=self.workdir, timeout=120
            ).check("notifyctl migrate")
            self._migrated = store
        return self.clone(self._migrated, label)

    def _create(self, label: str) -> Store:
        name = self._name(label)
        if self.dialect == "sqlite":
            path = self.workdir / f"{name}.db"
            store = Store("sqlite", name, f"sqlite:///{path}", path)
        else:
            with self._admin() as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            store = Store("postgresql", name, self._pg_url(name))
        self._made.append(store)
        return store

    def clone(self, source: Store, label: str) -> Store:
        """An identical copy of ``source`` (which must have no open connections)."""
        name = self._name(label)
        if self.dialect == "sqlite":
            assert source.path is not None
            checkpoint_sqlite(source.path)
            path = self.workdir / f"{name}.db"
            shutil.copyfile(source.path, path)
            store = Store("sqlite", name, f"sqlite:///{path}", path)
        else:
            with self._admin() as admin:
                admin.execute(
                    f'CREATE DATABASE "{name}" TEMPLATE "{source.name}" STRATEGY FILE_COPY'
                )
            store = Store("postgresql", name, self._pg_url(name))
        self._made.append(store)
        return store

    def drop(self, store: Store) -> None:
        if store in self._made:
            self._made.remove(store)
        if store.dialect == "sqlite":
            assert store.path is not None
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{store.path}{suffix}").unlink(missing_ok=True)
            return
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{store.name}" WITH (FORCE)')

    def close(self) -> None:
        for store in list(reversed(self._made)):
            with contextlib.suppress(Exception):
                self.drop(store)
        self._migrated = None

    @contextlib.contextmanager
    def temporary_clone(self, source: Store, label: str) -> Iterator[Store]:
        store = self.clone(source, label)
        try:
            yield store
        finally:
            self.drop(store)


def checkpoint_sqlite(path: Path) -> None:
    """Fold the WAL into the main file so that a plain file copy is complete."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def python_for_children() -> str:
    """The interpreter the benchmarks run notifyctl with (this one: the project venv)."""
    return sys.executable
