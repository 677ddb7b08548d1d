"""What the campaign starts and must always take down: processes, stores, network.

Everything registers its undo with a ``Cleanup`` (an ExitStack that also runs
on SIGTERM/SIGINT), so namespaces, veth pairs, relays, databases and child
processes never outlive a run, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CHAOS_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BOT_TOKEN = "424242:CHAOS-token_not-a-secret"


class ChaosError(Exception):
    """The campaign itself could not do something (not a finding about notifyctl)."""


# --- cleanup ------------------------------------------------------------------------------


class Cleanup(contextlib.ExitStack):
    """An ExitStack entered for the whole run; SIGTERM becomes KeyboardInterrupt."""

    def __enter__(self) -> Cleanup:
        super().__enter__()
        signal.signal(signal.SIGTERM, _interrupt)
        return self


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_until(
    predicate: Callable[[], bool], deadline_s: float, what: str, poll: float = 0.2
) -> None:
    """Poll ``predicate`` until true; ChaosError after ``deadline_s`` seconds."""
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise ChaosError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(poll)


# --- child processes ----------------------------------------------------------------------


@dataclass
class Proc:
    """A child in its own process group, output to files; killed as a group."""

    label: str
    args: Sequence[str]
    env: Mapping[str, str]
    logdir: Path
    host: str = "local"
    started: float = 0.0
    ended: float | None = None
    killed_at: float | None = None
    returncode: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    _files: list[IO[bytes]] = field(default_factory=list)

    def start(self) -> Proc:
        out = (self.logdir / f"{self.label}.out").open("wb")
        err = (self.logdir / f"{self.label}.err").open("wb")
        self._files = [out, err]
        self.started = time.time()
        self.popen = subprocess.Popen(
            list(self.args),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(self.env),
            cwd=self.logdir,
            start_new_session=True,
        )
        return self

    def poll(self) -> int | None:
        if self.popen is None:
            return None
        if self.returncode is None:
            rc = self.popen.poll()
            if rc is not None:
                self.returncode = rc
                self.ended = time.time()
                self._close()
        return self.returncode

    @property
    def running(self) -> bool:
        return self.popen is not None and self.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole group (the fault, or the cleanup)."""
        if self.popen is None or self.poll() is not None:
            return
        self.killed_at = time.time()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self.poll()

    def wait(self, timeout: float) -> int | None:
        if self.popen is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        return self.poll()

    def stderr_tail(self, n: int = 400) -> str:
        path = self.logdir / f"{self.label}.err"
        with contextlib.suppress(OSError):
            return path.read_text(errors="replace")[-n:].strip()
        return ""

    def _close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


SOURCE: list[Path] = []  # set by --source: a committed notifyctl/ tree to run instead


def export_source(rev: str, into: Path) -> str:
    """``git archive REV notifyctl`` into ``into``; children import it first (PYTHONPATH).

    Several engineers edit this checkout at once: a committed tree is a stable
    thing to judge, the working tree may be half-way through an edit.
    """
    into.mkdir(parents=True, exist_ok=True)
    commit = sh("git", "-C", str(ROOT), "rev-parse", "--short", rev).stdout.strip()
    for tree in (
        [rev, "notifyctl"],  # the package
        ["--prefix=notifyctl/migrations/", f"{rev}:migrations"],  # its package data
    ):
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", *tree], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    SOURCE[:] = [into]
    return commit


def clean_env(**extra: str) -> dict[str, str]:
    """A cron-like environment: nothing but PATH, HOME, locale, and what is given."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    if SOURCE:
        env["PYTHONPATH"] = str(SOURCE[0])
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def notifyctl(*args: str) -> list[str]:
    """The real CLI, as installed in this interpreter's venv."""
    return [sys.executable, "-m", "notifyctl", *args]


def run_cli(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(
        list(args),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise ChaosError(
            f"{' '.join(args[2:4])} exited {done.returncode}: {done.stderr.strip()[-800:]}"
        )
    return done.stdout


class FakeTelegramProcess:
    """``chaos/fake_telegram.py`` as its own process."""

    def __init__(self, record: Path, latency: tuple[float, float], seed: int, host: str) -> None:
        self.record = record
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chaos.fake_telegram",
                "--record",
                str(record),
                "--latency",
                f"{latency[0]}:{latency[1]}",
                "--seed",
                str(seed),
                "--host",
                host,
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        first = self.proc.stdout.readline().strip() if ready else ""
        if not first.startswith("PORT="):
            self.stop()
            raise ChaosError(f"fake Telegram did not start: {first!r}")
        self.port = int(first.removeprefix("PORT="))

    def url(self, port: int, label: str) -> str:
        return f"http://127.0.0.1:{port}/r/{label}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- stores -------------------------------------------------------------------------------


@dataclass
class Store:
    dialect: str  # "sqlite" | "postgresql"
    url: str
    name: str
    path: Path | None = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Plain read-only SQL with ``?`` placeholders on both dialects."""
        if self.dialect == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                return conn.execute(sql, tuple(params)).fetchall()
            finally:
                conn.close()
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as pg:
            return pg.execute(sql.replace("?", "%s"), tuple(params)).fetchall()


def pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10)


def make_store(dialect: str, name: str, workdir: Path, cleanup: Cleanup) -> Store:
    """An empty store migrated by ``notifyctl migrate`` itself; dropped on cleanup."""
    if dialect == "sqlite":
        path = workdir / f"{name}.db"
        store = Store("sqlite", f"sqlite:///{path}", name, path)
    else:
        with pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        store = Store("postgresql", f"{base}/{name}", name)
        cleanup.callback(drop_pg_database, name)
    run_cli(notifyctl("migrate"), clean_env(NOTIFYCTL_DATABASE_URL=store.url), workdir)
    return store


def drop_pg_database(name: str) -> None:
    with contextlib.suppress(Exception):
        pg_ready(60)
        with pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_ready(deadline_s: float = 60) -> None:
    def up() -> bool:
        return (
            subprocess.run(
                ["pg_isready", "-h", "127.0.0.1", "-q", "-t", "1"], check=False
            ).returncode
            == 0
        )

    wait_until(up, deadline_s, "PostgreSQL to accept connections", poll=0.3)


def restart_postgres() -> None:
    """``pg_ctlcluster … restart`` (fast mode: sessions are cut) of every local cluster."""
    clusters = Path("/etc/postgresql")
    if not shutil.which("pg_ctlcluster") or not clusters.is_dir():
        raise ChaosError("pg_ctlcluster not found: cannot restart PostgreSQL")
    for version in sorted(p.name for p in clusters.iterdir()):
        subprocess.run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                "-m",
                "fast",
                version,
                "main",
                "restart",
            ],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
    pg_ready(60)


def ensure_postgres_running() -> None:
    """After an interrupted restart: start every local cluster that is down."""
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0:
        return
    for version in sorted(p.name for p in Path("/etc/postgresql").iterdir()):
        sh("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start", check=False)
    with contextlib.suppress(ChaosError):
        pg_ready(60)


class SqliteLockHolder:
    """Another process holding SQLite's write lock (BEGIN IMMEDIATE + a write) for a while."""

    SCRIPT = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "c.execute('UPDATE bookings SET updated_at = updated_at')\n"
        "print('LOCKED', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('COMMIT')\n"
        "print('RELEASED', flush=True)\n"
    )

    def __init__(self, path: Path, hold_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(path), str(hold_s)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 90)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != "LOCKED":
            self.stop()
            raise ChaosError(f"could not take the SQLite write lock: {line!r}")
        self.locked_at = time.time()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --- network: namespaces, veth, a TCP relay -----------------------------------------------


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), check=check, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


class Relay:
    """A TCP relay ``listen → target`` (PostgreSQL for the namespaces).

    PostgreSQL here listens on 127.0.0.1 only and changing ``listen_addresses``
    needs a restart of the shared server, so the namespaces reach it through
    this relay on their veth's host address. ``blackhole()`` stops moving
    bytes without closing anything (a cut cable, as seen by both ends) - used
    only when network namespaces are unavailable.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(listen)
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            if not self._flowing.is_set():
                continue  # a cut host: the SYN was answered by the kernel, nothing more
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                if self._stop.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.close()


@dataclass
class Host:
    """One simulated host: a namespace (or, in the fallback, loopback) and its addresses."""

    name: str
    netns: str | None  # None: loopback fallback
    host_if: str | None
    host_ip: str  # the address this host uses to reach PostgreSQL and the fake
    relay: Relay | None = None
    tg_port: int = 0  # the fake Telegram, at 127.0.0.1:tg_port as this host sees it
    forwarder: subprocess.Popen[str] | None = None

    def reach_telegram(self, fake_port: int, cleanup: Cleanup) -> None:
        """Give this host a loopback endpoint for the fake (notifyctl: http only to loopback)."""
        if self.netns is None:
            self.tg_port = fake_port
            return
        self.forwarder = subprocess.Popen(
            self.wrap(
                [sys.executable, "-m", "chaos.forward", "--target", f"{self.host_ip}:{fake_port}"]
            ),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            text=True,
            start_new_session=True,
        )
        cleanup.callback(_stop_popen, self.forwarder)
        assert self.forwarder.stdout is not None
        ready, _, _ = select.select([self.forwarder.stdout], [], [], 30)
        first = self.forwarder.stdout.readline().strip() if ready else ""
        if not first.startswith("PORT="):
            raise ChaosError(f"forwarder in {self.netns} did not start: {first!r}")
        self.tg_port = int(first.removeprefix("PORT="))

    def wrap(self, args: Sequence[str]) -> list[str]:
        if self.netns is None:
            return list(args)
        return ["ip", "netns", "exec", self.netns, *args]

    def cut(self) -> None:
        if self.host_if is not None:
            sh("ip", "link", "set", self.host_if, "down")
        elif self.relay is not None:
            self.relay.blackhole()

    def heal(self) -> None:
        if self.host_if is not None:
            sh("ip", "link", "set", self.host_if, "up")
        elif self.relay is not None:
            self.relay.heal()


def _stop_popen(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make_hosts(count: int, cleanup: Cleanup) -> tuple[list[Host], str]:
    """``count`` hosts as network namespaces joined to this one by veth pairs.

    Returns the hosts and a sentence on how they were built (namespaces, or the
    loopback fallback and why).
    """
    tag = os.getpid() % 10000
    subnet = 100 + os.getpid() % 50
    hosts: list[Host] = []
    try:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise ChaosError("not root or no `ip` command")
        for i in range(1, count + 1):
            ns, hif, nif = f"chaos{tag}h{i}", f"cx{tag}h{i}", f"cx{tag}n{i}"
            host_ip, ns_ip = f"10.{subnet}.{i}.1", f"10.{subnet}.{i}.2"
            sh("ip", "netns", "add", ns)
            cleanup.callback(sh, "ip", "netns", "del", ns, check=False)
            sh("ip", "link", "add", hif, "type", "veth", "peer", "name", nif)
            cleanup.callback(sh, "ip", "link", "del", hif, check=False)
            sh("ip", "link", "set", nif, "netns", ns)
            sh("ip", "addr", "add", f"{host_ip}/24", "dev", hif)
            sh("ip", "link", "set", hif, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/24", "dev", nif)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", nif, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", host_ip)
            relay = Relay((host_ip, 5432), ("127.0.0.1", 5432))
            cleanup.callback(relay.close)
            hosts.append(Host(f"h{i}", ns, hif, host_ip, relay))
        how = (
            f"{count} network namespaces joined by veth pairs; PostgreSQL listens on "
            "127.0.0.1 only (listen_addresses needs a restart of the shared server), so "
            "each namespace reaches it through a TCP relay on its veth's host address, and "
            "the fake Telegram through a forwarder on the namespace's loopback (notifyctl "
            "allows plain http only to loopback); the cut is `ip link set <veth> down` "
            "(DB and Telegram traffic both)"
        )
        return hosts, how
    except (ChaosError, subprocess.CalledProcessError, OSError) as e:
        reason = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        hosts = []
        for i in range(1, count + 1):
            relay = Relay(("127.0.0.1", 0), ("127.0.0.1", 5432))
            cleanup.callback(relay.close)
            hosts.append(Host(f"h{i}", None, None, "127.0.0.1", relay))
        how = (
            f"FALLBACK: network namespaces unavailable ({reason}); {count} 'hosts' on "
            "loopback, each through its own PostgreSQL relay, cut by blackholing that "
            "relay (Telegram traffic is not cut)"
        )
        return hosts, how
