"""The scenarios: real ``notifyctl dispatch`` processes, a recording fake Telegram, faults.

Each scenario:

1. makes an empty store (``notifyctl migrate``) and bookings whose one
   Telegram reminder each falls due during the run (``create --from-file``);
2. starts dispatchers cron-like (a new one every ``tick`` seconds, each with a
   short ``--max-seconds`` so several overlap) while its fault is injected;
3. drains: keeps starting dispatchers, without faults, until no reminder is
   being sent or overdue (polling the store, bounded by a deadline);
4. judges the deliveries the fake recorded against what the driver knows:
   the booking's times at every moment (each ``create`` and ``cancel`` is
   timed from start to return), which processes were killed or cut off and
   when, and the store's final rows and uncertain attempts.

Every message text carries the booking id, the start and end it announces and
the moment it was rendered (an operator template, NOTIFYCTL_TEMPLATES), so a
delivery can be checked against the truth at the time the fake received it.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.fake_telegram import read_deliveries
from chaos.infra import (
    BOT_TOKEN,
    ChaosError,
    Cleanup,
    FakeTelegramProcess,
    Host,
    Proc,
    SqliteLockHolder,
    Store,
    clean_env,
    ensure_postgres_running,
    log,
    make_hosts,
    make_store,
    notifyctl,
    restart_postgres,
)

TEMPLATE = (
    "[default]\n"
    "text = 'chaos b={{ booking_id }} k={{ kind }} start={{ start.isoformat() }} "
    "end={{ end.isoformat() }} rendered={{ now.isoformat() }} | "
    'Reminder: "{{ title }}" starts {{ starts_relative }} ({{ timezone }}).\'\n'
    # change notices (SPEC §10) have their own kinds: a [default] text never applies to them
    + "".join(
        f"[kinds.{kind}]\n"
        "text = 'chaos-notice b={{ booking_id }} k={{ kind }} start={{ start.isoformat() }} "
        "was={{ previous_start.isoformat() }} rendered={{ now.isoformat() }}'\n"
        for kind in ("rescheduled", "cancelled")
    )
)
TEXT = re.compile(r"chaos b=(\S+) k=(\S+) start=(\S+) end=(\S+) rendered=(\S+) ")
NOTICE = re.compile(r"chaos-notice b=(\S+) k=(\S+) start=(\S+) was=(\S+) rendered=(\S+)")
# kind → (name given to create, seconds before start); every one is useful until the start
KINDS = {"hour_before": 3600.0, "start-2m": 120.0, "start-30s": 30.0}
KIND_WEIGHTS = (0.5, 0.25, 0.25)
BOOKING_LENGTH = 1800.0
STALE_TEXT_S = 60.0  # relative words rendered this long before delivery are false
EARLY_TOLERANCE_S = 1.0
# a request that reached the fake this soon after not_after left before it (loopback + parse)
NOT_AFTER_TOLERANCE_S = 0.5
# a request that left before the fault may reach the provider (through the namespace's
# relay) a moment after it: the provider's clock stamps its arrival, not its departure;
# a cut host's later sends cannot arrive before it is healed (a lease and more later)
IN_FLIGHT_TOLERANCE_S = 1.0
# SPEC §5: a change that commits while a reminder is being sent wins, but that send may
# still arrive with the old text. dispatch checks the booking at most 50 ms (FRESH)
# before the request leaves; the fake stamps arrival. A text may be true this long
# before it arrived (a create's commit comes before it returns: more margin still)
TEXT_IN_FLIGHT_S = 0.3


@dataclass(frozen=True)
class Size:
    reminders: int
    main_s: float  # fault phase
    lease_s: float
    max_seconds: float
    tick_s: float
    lock_s: float
    concurrency: int = 4
    batch_size: int = 10
    latency: tuple[float, float] = (0.3, 1.2)


QUICK = Size(reminders=40, main_s=10, lease_s=10, max_seconds=4, tick_s=1.5, lock_s=15)
FULL = Size(reminders=300, main_s=45, lease_s=20, max_seconds=12, tick_s=3, lock_s=60)


@dataclass(frozen=True)
class Scenario:
    name: str
    dialect: str
    fault: str  # kill9 | pg_restart | sqlite_lock | netns_cut | reschedule
    what: str


SCENARIOS = [
    Scenario("kill9-sqlite", "sqlite", "kill9", "kill -9 of overlapping dispatchers"),
    Scenario("kill9-pg", "postgresql", "kill9", "kill -9 of overlapping dispatchers"),
    Scenario("pg-restart", "postgresql", "pg_restart", "PostgreSQL restarted mid-run"),
    Scenario("sqlite-lock", "sqlite", "sqlite_lock", "a writer holds the SQLite lock"),
    Scenario("hosts-cut-pg", "postgresql", "netns_cut", "3 hosts, one cut off mid-batch"),
    Scenario("resched-sqlite", "sqlite", "reschedule", "reschedules and cancels in flight"),
    Scenario("resched-pg", "postgresql", "reschedule", "reschedules and cancels in flight"),
]


@dataclass
class Version:
    """The booking's times from the moment a ``create`` began (``begin``) or returned."""

    begin: float
    end: float  # when the create returned; inf when it failed (unknown whether applied)
    start: float
    stop: float


@dataclass
class BookingTruth:
    booking_id: str
    chat_id: str
    kind: str
    offset: float
    versions: list[Version] = field(default_factory=list)
    cancel: tuple[float, float] | None = None  # (began, returned)
    uncertain: bool = False  # a create or cancel failed: its effect is unknown

    def candidates(self, t: float, in_flight: float = TEXT_IN_FLIGHT_S) -> list[Version]:
        """Versions a text arriving at ``t`` may tell: current at some moment of the
        ``in_flight`` seconds before it, committed by then or in progress.

        Two creates of one booking that ran at the same time commit in an order
        nobody outside sees: either may be the last. A version is surely replaced
        only by one whose create began after it had returned.
        """
        done = [v for v in self.versions if v.end <= t - in_flight]
        in_progress = [v for v in self.versions if v.begin <= t and v.end > t - in_flight]
        return last_of(done) + in_progress

    def finals(self) -> list[Version]:
        """The versions that may be the booking's times now."""
        return last_of(self.versions)


def last_of(versions: list[Version]) -> list[Version]:
    """Those of ``versions`` that no other one surely replaced."""
    return [v for v in versions if not any(w.begin > v.end for w in versions)]


@dataclass
class Result:
    scenario: Scenario
    seed: int
    reminders: int = 0
    delivered: int = 0
    duplicates: int = 0
    dup_in_flight: int = 0
    lost: int = 0
    after_cancel: int = 0  # reminders sent after their booking's cancel returned
    notices: int = 0  # change notices delivered (legitimate sends after a move or a cancel)
    false_notices: int = 0  # a cancel notice for a booking never cancelled, a move to no version
    after_not_after: int = 0
    false_texts: int = 0
    early: int = 0
    internal_errors: int = 0
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not any(
            (
                self.lost,
                self.after_cancel,
                self.false_notices,
                self.after_not_after,
                self.false_texts,
                self.early,
                self.internal_errors,
                self.duplicates - self.dup_in_flight,
            )
        )


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def ts(value: Any) -> float:
    """A store or text time as a UNIX timestamp (SQLite gives naive UTC strings)."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def timeline(booking: BookingTruth, t: float, rendered: float) -> str:
    """When each version's create ran, and the text was rendered, relative to delivery."""
    spans = ", ".join(
        f"{iso(v.start)} create {v.begin - t:+.3f}..{v.end - t:+.3f} s" for v in booking.versions
    )
    return f"rendered {rendered - t:+.3f} s; versions: {spans}"


class Run:
    """One scenario, from empty store to verdict."""

    def __init__(
        self, scenario: Scenario, size: Size, seed: int, workdir: Path, cleanup: Cleanup
    ) -> None:
        self.sc = scenario
        self.size = size
        self.seed = seed
        self.rng = random.Random(seed)
        self.dir = workdir / scenario.name
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cleanup = cleanup
        self.result = Result(scenario, seed)
        self.procs: list[Proc] = []
        self.faulted: dict[str, float] = {}  # label → moment it was killed or cut off
        self.truth: dict[str, BookingTruth] = {}
        self.lock = threading.Lock()
        self.stop_ops = threading.Event()
        self.counter = 0
        self.hosts: list[Host] = []
        self.local = Host("local", None, None, "127.0.0.1")
        self.main_end = math.inf
        self.fault_error = ""
        # the SQLite lock runs with a 25 s lease: the quick 15 s lock ends inside it (the run
        # must then record what it sent), the full 60 s lock outlasts it
        self.lease_s = 25.0 if scenario.fault == "sqlite_lock" else size.lease_s
        self.lock_window: tuple[float, float] | None = None
        self.cut_host: Host | None = None
        self.store: Store
        self.fake: FakeTelegramProcess

    # --- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        name = f"notifyctl_chaos_{self.seed % 100000}_{self.sc.name.replace('-', '_')}"
        self.store = make_store(self.sc.dialect, name, self.dir, self.cleanup)
        self.templates = self.dir / "templates.toml"
        self.templates.write_text(TEMPLATE)
        bind = "127.0.0.1"
        if self.sc.fault == "netns_cut":
            self.hosts, how = make_hosts(3, self.cleanup)
            self.result.notes.append(how)
            if self.hosts[0].netns is not None:
                bind = "0.0.0.0"  # reachable from the namespaces through their veth
        else:
            self.hosts = [self.local]
        self.fake = FakeTelegramProcess(
            self.dir / "deliveries.jsonl", self.size.latency, self.seed, bind
        )
        self.cleanup.callback(self.fake.stop)
        for host in self.hosts:
            host.reach_telegram(self.fake.port, self.cleanup)
        self.cleanup.callback(self.kill_all)

    def env(self, host: Host, label: str) -> dict[str, str]:
        url = self.store.url
        if host.relay is not None and self.store.dialect == "postgresql":
            url = f"postgresql://postgres@{host.host_ip}:{host.relay.port}/{self.store.name}"
        return clean_env(
            NOTIFYCTL_DATABASE_URL=url,
            TELEGRAM_BOT_TOKEN=BOT_TOKEN,
            TELEGRAM_API_URL=self.fake.url(host.tg_port or self.fake.port, label),
            NOTIFYCTL_TEMPLATES=str(self.templates),
        )

    def create_bookings(self) -> None:
        n = self.size.reminders
        t0 = time.time() + 3.0
        spread = self.size.main_s * 0.6
        lines = []
        for i in range(n):
            kind = self.rng.choices(list(KINDS), KIND_WEIGHTS)[0]
            offset = KINDS[kind]
            scheduled = math.floor(t0 + self.rng.uniform(0, spread))
            start = scheduled + offset
            booking = BookingTruth(f"c{i:04d}", str(700_000_000 + i), kind, offset)
            booking.versions.append(Version(-math.inf, 0.0, start, start + BOOKING_LENGTH))
            self.truth[booking.booking_id] = booking
            lines.append(
                json.dumps(
                    {
                        "booking_id": booking.booking_id,
                        "starts_at": iso(start),
                        "ends_at": iso(start + BOOKING_LENGTH),
                        "timezone": "UTC",
                        "to": booking.chat_id,
                        "remind": kind,
                        "title": f"Chaos {i}",
                    }
                )
            )
        path = self.dir / "bookings.jsonl"
        path.write_text("\n".join(lines) + "\n")
        if self.cli("create", "--from-file", str(path), "--json", timeout=180) != 0:
            raise ChaosError("create --from-file failed (see the details)")
        returned = time.time()
        for booking in self.truth.values():
            booking.versions[0].end = returned
        self.result.reminders = n

    def cli(self, *args: str, timeout: float = 60) -> int:
        """One notifyctl command (not a dispatcher), its output kept in the logs."""
        with self.lock:
            self.counter += 1
            label = f"cli{self.counter:04d}-{args[0]}"
        proc = Proc(label, notifyctl(*args), self.env(self.local, label), self.logs).start()
        rc = proc.wait(timeout)
        if rc is None:
            proc.kill9()
            rc = -9
        if rc != 0:
            self.result.details.append(f"{label}: exit {rc}: {proc.stderr_tail(200)}")
        return rc

    # --- dispatchers ----------------------------------------------------------------------

    def start_dispatcher(self, host: Host) -> Proc:
        with self.lock:
            self.counter += 1
            label = f"d{self.counter:04d}{host.name}"
        s = self.size
        args = notifyctl(
            "dispatch",
            "--lease-seconds",
            str(self.lease_s),
            "--max-seconds",
            str(s.max_seconds),
            "--batch-size",
            str(s.batch_size),
            "--concurrency",
            str(s.concurrency),
            "--backoff-base",
            "2",
            "--rate-limit",
            "500",
            "--json",
        )
        proc = Proc(label, host.wrap(args), self.env(host, label), self.logs, host.name).start()
        with self.lock:
            self.procs.append(proc)
        return proc

    def running(self) -> list[Proc]:
        with self.lock:
            return [p for p in self.procs if p.running]

    def kill_all(self) -> None:
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            p.kill9()

    def cron_hosts(self) -> list[Host]:
        return [h for h in self.hosts if h is not self.cut_host]

    # --- the run --------------------------------------------------------------------------

    def main_phase(self) -> None:
        s = self.size
        begin = time.time()
        main_s = s.main_s
        if self.sc.fault == "sqlite_lock":
            main_s = max(main_s, 4 + s.lock_s + 3)
        if self.sc.fault == "netns_cut":
            main_s = max(main_s, 4 + s.lease_s + 8)
        self.main_end = begin + main_s
        fault = threading.Thread(target=self.fault_thread, args=(begin,), daemon=True)
        fault.start()
        ops: list[threading.Thread] = []
        if self.sc.fault == "reschedule":
            for k in range(3):
                ops.append(threading.Thread(target=self.ops_thread, args=(k,), daemon=True))
                ops[-1].start()
        n = 0
        while time.time() < self.main_end:
            hosts = self.cron_hosts()
            self.start_dispatcher(hosts[n % len(hosts)])
            n += 1
            time.sleep(s.tick_s)  # cron's clock, not a wait for an event
        self.stop_ops.set()
        for t in [fault, *ops]:
            t.join(timeout=s.lock_s + 120)
        if fault.is_alive():
            raise ChaosError("the fault thread did not finish")

    def fault_thread(self, begin: float) -> None:
        try:
            self._fault(begin)
        except Exception as e:  # reported as the scenario's error
            self.fault_error = f"fault injection failed: {e}"
        else:
            self.fault_error = ""

    def _fault(self, begin: float) -> None:
        s = self.size
        f = self.sc.fault
        if f == "kill9":
            t = begin + self.rng.uniform(1.5, 3.0)
            while t < self.main_end - 1:
                time.sleep(max(0.0, t - time.time()))
                victims = [p for p in self.running() if time.time() - p.started > 0.8]
                if victims:
                    victim = self.rng.choice(victims)
                    victim.kill9()
                    if victim.killed_at is not None:
                        self.faulted[victim.label] = victim.killed_at
                        log(f"{self.sc.name}: kill -9 {victim.label}")
                t += self.rng.uniform(1.0, 2.5)
        elif f == "pg_restart":
            restarts = 1 if s.main_s < 30 else 2
            for k in range(restarts):
                at = begin + (k + 1) * s.main_s / (restarts + 1) + self.rng.uniform(-1.5, 1.5)
                time.sleep(max(0.0, at - time.time()))
                self.cleanup.callback(ensure_postgres_running)
                log(f"{self.sc.name}: restarting PostgreSQL")
                t0 = time.time()
                restart_postgres()
                self.result.notes.append(f"PostgreSQL restarted in {time.time() - t0:.1f} s")
        elif f == "sqlite_lock":
            time.sleep(max(0.0, begin + self.rng.uniform(2.5, 4.0) - time.time()))
            assert self.store.path is not None
            holder = SqliteLockHolder(self.store.path, s.lock_s)
            self.cleanup.callback(holder.stop)
            log(f"{self.sc.name}: write lock held for {s.lock_s:.0f} s")
            holder.proc.wait(s.lock_s + 60)
            self.lock_window = (holder.locked_at, time.time())
            self.result.notes.append(
                f"write lock held {time.time() - holder.locked_at:.1f} s (busy timeout 10 s)"
            )
        elif f == "netns_cut":
            cut = self.hosts[0]
            # cut mid-batch: right after one of its dispatchers had a message accepted
            time.sleep(max(0.0, begin + self.rng.uniform(3.0, 5.0) - time.time()))
            deadline = time.time() + 15
            while time.time() < deadline and not self.host_sending(cut):
                time.sleep(0.05)
            cut_at = time.time()
            cut.cut()
            self.cut_host = cut
            for p in self.running():
                if p.host == cut.name:
                    self.faulted[p.label] = cut_at
            log(f"{self.sc.name}: host {cut.name} cut off ({len(self.faulted)} dispatchers)")
            time.sleep(max(0.0, cut_at + s.lease_s + 5 - time.time()))
            cut.heal()
            self.cut_host = None
            self.result.notes.append(
                f"host {cut.name} cut off for {time.time() - cut_at:.1f} s (lease "
                f"{s.lease_s:.0f} s) with {len(self.faulted)} dispatcher(s) on it, then healed"
            )

    def host_sending(self, host: Host) -> bool:
        recent = time.time() - 0.5
        tail = read_deliveries(self.fake.record)[-50:]
        return any(d["label"].endswith(host.name) and d["t"] > recent for d in tail)

    def ops_thread(self, k: int) -> None:
        rng = random.Random(self.seed * 31 + k)
        while not self.stop_ops.is_set() and time.time() < self.main_end - 3:
            now = time.time()
            with self.lock:
                active = [b for b in self.truth.values() if b.cancel is None and not b.uncertain]
            # prefer reminders due now: those are the ones being sent
            due = [b for b in active if b.versions[-1].start - b.offset <= now]
            pool = due if due and rng.random() < 0.7 else active
            if not pool:
                break
            booking = rng.choice(pool)
            if rng.random() < 0.25:
                self.cancel(booking)
            else:
                far = rng.random() < 0.1
                scheduled = math.floor(
                    now + (86400 if far else rng.uniform(4, max(5.0, self.main_end - now - 3)))
                )
                self.reschedule(booking, scheduled + booking.offset)
            time.sleep(rng.uniform(0.05, 0.3))

    def reschedule(self, booking: BookingTruth, start: float) -> None:
        if any(v.start == start for v in booking.versions):
            start += 1  # a new arming is told apart by its start time
        began = time.time()
        version = Version(began, math.inf, start, start + BOOKING_LENGTH)
        with self.lock:
            booking.versions.append(version)
        rc = self.cli(
            "create",
            booking.booking_id,
            "--starts-at",
            iso(start),
            "--ends-at",
            iso(start + BOOKING_LENGTH),
            "--timezone",
            "UTC",
            "--to",
            booking.chat_id,
            "--remind",
            booking.kind,
            "--title",
            f"Chaos {int(booking.booking_id[1:])}",
        )
        with self.lock:
            if rc == 0:
                version.end = time.time()
            else:
                booking.uncertain = True
                self.result.details.append(f"create {booking.booking_id} exited {rc}")

    def cancel(self, booking: BookingTruth) -> None:
        began = time.time()
        rc = self.cli("cancel", booking.booking_id)
        with self.lock:
            if rc == 0:
                booking.cancel = (began, time.time())
            else:
                booking.uncertain = True
                self.result.details.append(f"cancel {booking.booking_id} exited {rc}")

    def drain(self) -> None:
        """Cron goes on, without faults, until nothing is in flight or overdue."""
        began = time.time()
        deadline = began + self.lease_s * 2 + 60
        n = 0
        slow_noted = False
        while True:
            busy = self.store_busy()
            if busy == 0 and not self.running():
                self.result.notes.append(f"drained in {time.time() - began:.0f} s")
                return
            if not slow_noted and time.time() > began + self.lease_s + 20:
                slow_noted = True
                self.result.details.append(f"slow drain: {self.busy_rows()}")
            if time.time() > deadline:
                self.result.details.append(
                    f"drain deadline passed with {busy} reminder(s) sending or overdue"
                )
                return
            if len(self.running()) < 2:
                self.start_dispatcher(self.hosts[n % len(self.hosts)])
                n += 1
            time.sleep(0.5)

    def busy_rows(self) -> str:
        try:
            rows = self.store.query(
                "SELECT b.external_id, n.status, n.due_at, n.lease_expires_at, n.attempts "
                "FROM notifications n JOIN bookings b ON b.id = n.booking_id "
                "WHERE n.status IN ('sending', 'pending') ORDER BY n.due_at"
            )
        except Exception as e:
            return f"store unreadable: {e}"
        now = time.time()
        busy = [r for r in rows if r[1] == "sending" or ts(r[2]) <= now]
        return "; ".join(
            f"{r[0]} {r[1]} due {ts(r[2]) - now:+.0f}s lease "
            f"{'-' if r[3] is None else f'{ts(r[3]) - now:+.0f}s'} attempts {r[4]}"
            for r in busy[:5]
        )

    def store_busy(self) -> int:
        now = time.time()
        try:
            rows = self.store.query(
                "SELECT status, due_at FROM notifications WHERE status IN ('sending', 'pending')"
            )
        except Exception:
            return -1
        return sum(1 for st, due in rows if st == "sending" or ts(due) <= now)

    def stop(self) -> None:
        """Let dispatchers end by themselves (bounded), then kill what hangs."""
        deadline = time.time() + self.size.max_seconds + 20
        while self.running() and time.time() < deadline:
            time.sleep(0.2)
        for p in self.running():
            log(f"{self.sc.name}: {p.label} still running at the end: killed")
            self.result.details.append(f"{p.label} hung until the end (killed)")
            p.kill9()

    # --- the verdict ----------------------------------------------------------------------

    def judge_notice(self, d: dict[str, Any]) -> None:
        """A change notice: for a booking that was moved (to a start it had) or cancelled."""
        r = self.result
        m = NOTICE.match(d["text"])
        assert m is not None
        r.notices += 1
        booking = self.truth.get(m.group(1))
        if booking is None or booking.uncertain:
            return
        kind, start = m.group(2), ts(m.group(3))
        if kind == "cancelled" and booking.cancel is None:
            r.false_notices += 1
            r.details.append(f"{booking.booking_id}: cancel notice, never cancelled")
        elif kind == "rescheduled" and (
            len(booking.versions) < 2 or not any(v.start == start for v in booking.versions)
        ):
            r.false_notices += 1
            r.details.append(f"{booking.booking_id}: move notice to {iso(start)}: no such move")

    def judge(self) -> None:
        r = self.result
        deliveries = read_deliveries(self.fake.record)
        r.delivered = len(deliveries)
        uncertain_rows = self.store.query(
            "SELECT b.external_id FROM delivery_attempts a "
            "JOIN notifications n ON n.id = a.notification_id "
            "JOIN bookings b ON b.id = n.booking_id "
            # a rescue's own marker is no evidence: whose run it was decides (faulted)
            "WHERE a.uncertain AND a.outcome <> 'rescued'"
        )
        uncertain = {row[0] for row in uncertain_rows}
        rows = {
            row[0]: row
            for row in self.store.query(
                "SELECT b.external_id, n.status, n.last_error, n.due_at, n.updated_at, "
                "b.starts_at "
                "FROM notifications n JOIN bookings b ON b.id = n.booking_id "
                "WHERE n.kind NOT IN ('rescheduled', 'cancelled')"  # the reminder of each
            )
        }
        by_arming: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
        for d in deliveries:
            if NOTICE.match(d["text"]):
                self.judge_notice(d)
                continue
            m = TEXT.match(d["text"])
            booking = self.truth.get(m.group(1)) if m else None
            if m is None or booking is None:
                r.false_texts += 1
                r.details.append(f"unrecognised message {d['text'][:80]!r}")
                continue
            t = d["t"]
            start, stop, rendered = ts(m.group(3)), ts(m.group(4)), ts(m.group(5))
            d["start"] = start
            by_arming[(booking.booking_id, start)].append(d)
            if booking.uncertain:
                continue
            if booking.cancel is not None and t > booking.cancel[1]:
                r.after_cancel += 1
                r.details.append(
                    f"{booking.booking_id}: sent {t - booking.cancel[1]:.1f} s after "
                    f"its cancel returned (by {d['label']})"
                )
            versions = booking.candidates(t)
            if not any(v.start == start and v.stop == stop for v in versions):
                r.false_texts += 1
                said = iso(start)
                truth = " or ".join(iso(v.start) for v in versions)
                r.details.append(
                    f"{booking.booking_id}: false text by {d['label']}: says start {said}, "
                    f"booking starts {truth} when delivered; {timeline(booking, t, rendered)}"
                )
            elif t - rendered > STALE_TEXT_S:
                r.false_texts += 1
                r.details.append(
                    f"{booking.booking_id}: text rendered {t - rendered:.0f} s before delivery "
                    "(stale relative words)"
                )
            if versions and t > max(v.start for v in versions) + NOT_AFTER_TOLERANCE_S:
                r.after_not_after += 1
                r.details.append(
                    f"{booking.booking_id}: sent {t - max(v.start for v in versions):.1f} s "
                    f"after not_after (by {d['label']})"
                )
            if versions and t < min(v.start - booking.offset for v in versions) - EARLY_TOLERANCE_S:
                r.early += 1
                due = min(v.start - booking.offset for v in versions)
                r.details.append(
                    f"{booking.booking_id}: sent {due - t:.1f} s before it was due "
                    f"(by {d['label']})"
                )
        # duplicates: one arming (booking + the start it announces) delivered more than once
        for (booking_id, _start), group in by_arming.items():
            if len(group) < 2:
                continue
            group.sort(key=lambda d: d["t"])
            extra = len(group) - 1
            r.duplicates += extra
            in_flight = booking_id in uncertain or any(
                d["label"] in self.faulted
                and d["t"] <= self.faulted[d["label"]] + IN_FLIGHT_TOLERANCE_S
                for d in group[:-1]
            )
            first = group[0]["t"]
            if self.lock_window is not None:
                locked, released = self.lock_window
                # sent before the lock ended, and the lock outlasted the claim's lease (a
                # claim is sent within seconds, so its lease ends ~a lease after the send):
                # the record could not land in time; a shorter lock must not cost a resend
                in_flight = in_flight or (
                    locked - self.lease_s <= first < released
                    and released > first + self.lease_s * 0.9
                )
            if in_flight:
                r.dup_in_flight += extra
            else:
                labels = ", ".join(f"{d['label']}@{d['t'] - group[0]['t']:+.1f}s" for d in group)
                r.details.append(f"{booking_id}: delivered {len(group)}x, not at a fault: {labels}")
        # lost: due during the run, still useful, booking active, never delivered, no reason
        for booking in self.truth.values():
            if booking.cancel is not None or booking.uncertain:
                continue
            row = rows.get(booking.booking_id)
            stored = ts(row[5]) if row else None
            final = next((v for v in booking.finals() if v.start == stored), None)
            if final is None:  # SPEC §5: no reschedule is reported and then not applied
                r.lost += 1
                r.details.append(
                    f"{booking.booking_id}: stored start "
                    f"{'missing' if stored is None else iso(stored)}, not one a last create "
                    f"gave ({', '.join(iso(v.start) for v in booking.finals())})"
                )
                continue
            if final.start - booking.offset > self.main_end:
                continue  # not due during the run
            if by_arming.get((booking.booking_id, final.start)):
                continue
            delivered_before = any(key[0] == booking.booking_id for key in by_arming)
            if delivered_before and final.start - booking.offset <= final.end:
                # moved to a time not in the future when the create committed: a sent
                # reminder is re-armed only for a future time (SPEC §5 create)
                r.details.append(
                    f"{booking.booking_id}: moved to a time already due at commit after a "
                    "delivery: not re-armed (allowed)"
                )
                continue
            assert row is not None
            status, last_error = row[1], row[2]
            if status == "failed" and last_error:
                continue
            if row and status == "expired" and last_error and ts(row[4]) >= final.start - 1:
                continue
            r.lost += 1
            r.details.append(
                f"{booking.booking_id}: lost: due {iso(final.start - booking.offset)}, "
                f"row {status} ({last_error or 'no reason'}), never delivered for "
                f"start {iso(final.start)}"
            )
        r.delivered -= r.notices  # the table counts reminders; notices have their note
        r.notes.append(f"{r.notices} change notice(s) delivered")
        statuses = Counter(row[1] for row in rows.values())
        r.notes.append(
            "final rows: " + ", ".join(f"{st} {n}" for st, n in sorted(statuses.items()))
        )
        if self.sc.fault == "reschedule":
            moves = sum(len(b.versions) - 1 for b in self.truth.values())
            cancels = sum(1 for b in self.truth.values() if b.cancel is not None)
            r.notes.append(f"{moves} reschedules and {cancels} cancels during the sends")
        codes = Counter(p.returncode for p in self.procs if p.label not in self.faulted)
        r.internal_errors = codes.get(1, 0)
        if codes.get(2):
            usage = next(p for p in self.procs if p.returncode == 2)
            r.error = f"dispatch rejected its options (exit 2): {usage.stderr_tail(200)}"
        r.notes.append(
            "dispatch exit codes: "
            + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items(), key=str))
            + f"; {len(self.faulted)} faulted"
        )
        for p in self.procs:
            if p.returncode == 1 and p.label not in self.faulted:
                r.details.append(f"{p.label} exit 1: {p.stderr_tail(200)}")


def run_scenario(
    scenario: Scenario, size: Size, seed: int, workdir: Path, cleanup_parent: Cleanup
) -> Result:
    run = Run(scenario, size, seed, workdir, cleanup_parent)
    with Cleanup() as cleanup:
        run.cleanup = cleanup
        try:
            log(f"{scenario.name}: seed {seed}, {size.reminders} reminders, {scenario.what}")
            run.setup()
            run.create_bookings()
            run.main_phase()
            if run.fault_error:
                raise ChaosError(run.fault_error)
            run.drain()
            run.stop()
            run.judge()
        except ChaosError as e:
            run.result.error = str(e)
            log(f"{scenario.name}: campaign error: {e}")
    return run.result
