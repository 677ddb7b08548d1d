"""Where one dispatch run spends its time, per reminder and per phase.

    .venv/bin/python benchmarks/profile_dispatch.py [--dialect D] [--reminders 3000]
        [--cprofile PATH]

Builds a store of due reminders (as the throughput figure does), starts the
fake Bot API, and runs ``notifyctl dispatch`` (the same options as the
throughput figure) in a child process whose phases are wrapped in timers:
each phase's wall time and CPU time (``time.thread_time``, the calling
thread's own) are summed and divided by the number of reminders. The main
thread claims, reads bookings and records; the send threads pace, render
and send, so main-thread and send-thread phases overlap in wall time.
``--cprofile`` also writes a ``cProfile`` of every thread (one ``pstats``
file, merged).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BOT_TOKEN,
    DEFAULT_PG_ADMIN_URL,
    Provider,
    Stores,
    base_env,
    python_for_children,
    run_timed,
)
from stores import Fill, fill

# phase name → (module, attribute path); all run in-process inside notifyctl
PHASES: dict[str, tuple[str, str]] = {
    "claim (UPDATE … RETURNING)": ("notifyctl.queries", "claim_due"),
    "booking fetch (at claim)": ("notifyctl.queries", "bookings_by_id"),
    "superseded check (at claim)": ("notifyctl.queries", "superseded_among"),
    "booking re-read (before send)": ("notifyctl.queries", "held_bookings"),
    "transaction begin/commit": ("notifyctl.db", "Store.transaction"),
    "render": ("notifyctl.dispatch", "build_message"),
    "pacing (slots, waits)": ("notifyctl.pacing", "Pacer.wait_turn"),
    "send (HTTP POST + answer)": ("notifyctl.channels.telegram", "TelegramChannel.send"),
    "record (fenced UPDATEs)": ("notifyctl.queries", "record_outcomes"),
    "history insert": ("notifyctl.queries", "insert_attempts"),
    "decide + outcome values": ("notifyctl.dispatch", "decide"),
}

_totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # type: ignore[arg-type]
_lock = threading.Lock()
_depth = threading.local()


def _timed(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    import contextlib

    if name == "transaction begin/commit":  # a context manager: time enter and exit only

        @contextlib.contextmanager
        def managed(*args: Any, **kwargs: Any) -> Any:
            cm = func(*args, **kwargs)
            w, c = time.perf_counter(), time.thread_time()
            value = cm.__enter__()
            _add(name, time.perf_counter() - w, time.thread_time() - c)
            try:
                yield value
            except BaseException:
                if not cm.__exit__(*sys.exc_info()):
                    raise
            else:
                w, c = time.perf_counter(), time.thread_time()
                cm.__exit__(None, None, None)
                _add(name, time.perf_counter() - w, time.thread_time() - c)

        return managed

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        w, c = time.perf_counter(), time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - w, time.thread_time() - c)

    return wrapper


def _add(name: str, wall: float, cpu: float) -> None:
    with _lock:
        t = _totals[name]
        t[0] += wall
        t[1] += cpu
        t[2] += 1


def _install() -> None:
    import importlib

    for name, (module_name, path) in PHASES.items():
        module = importlib.import_module(module_name)
        owner: Any = module
        *parents, attr = path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        setattr(owner, attr, _timed(name, getattr(owner, attr)))


def child(argv: list[str], out: str, prof_path: str | None) -> int:
    """Run ``notifyctl`` with the timers (and cProfile) in this process."""
    _install()
    profiles: list[cProfile.Profile] = []
    if prof_path:
        original_run = threading.Thread.run

        def profiled_run(self: threading.Thread) -> None:
            prof = cProfile.Profile()
            profiles.append(prof)
            prof.runcall(original_run, self)

        threading.Thread.run = profiled_run  # type: ignore[method-assign]
    from notifyctl.cli import main

    sys.argv = ["notifyctl", *argv]
    wall, cpu = time.perf_counter(), time.process_time()
    main_prof = cProfile.Profile() if prof_path else None
    try:
        code = main_prof.runcall(main) if main_prof else main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    Path(out).write_text(
        json.dumps({"totals": dict(_totals), "wall": wall, "cpu": cpu, "code": code})
    )
    if prof_path and main_prof:
        stats = pstats.Stats(main_prof)
        for p in profiles:
            stats.add(p)
        stats.dump_stats(prof_path)
    return 0


def profile(dialect: str, reminders: int, workdir: Path, pg_url: str, prof: str | None) -> str:
    python = python_for_children()
    stores = Stores(dialect, python, workdir, pg_url)  # type: ignore[arg-type]
    try:
        store = stores.empty("profile")
        fill(store, [Fill("due", reminders, per_booking=1)])
        with Provider(python) as provider:
            out = workdir / f"profile-{dialect}.json"
            env = base_env(
                NOTIFYCTL_DATABASE_URL=store.url,
                TELEGRAM_BOT_TOKEN=BOT_TOKEN,
                TELEGRAM_API_URL=provider.api_url,
            )
            args = [
                python, __file__, "--child", str(out), *(["--cprofile", prof] if prof else []),
                "--", "dispatch", "--rate-limit", "10000", "--max-seconds", "600",
                "--lease-seconds", "900", "--batch-size", "50", "--json",
            ]  # fmt: skip
            run_timed(args, env=env, cwd=workdir, timeout=600).check("profiled dispatch")
        data = json.loads(out.read_text())
    finally:
        stores.close()
    return format_profile(dialect, reminders, data)


def format_profile(dialect: str, n: int, data: dict[str, Any]) -> str:
    rows = [
        f"{dialect}: {n} reminders, {data['wall']:.2f} s wall, {data['cpu']:.2f} s CPU "
        f"({1000 * data['wall'] / n:.3f} ms wall, {1000 * data['cpu'] / n:.3f} ms CPU "
        "per reminder, whole process)",
        "",
        "| phase | calls | wall ms / reminder | CPU ms / reminder |",
        "|---|---:|---:|---:|",
    ]
    totals = data["totals"]
    for name in PHASES:
        wall, cpu, calls = totals.get(name, [0.0, 0.0, 0])
        rows.append(f"| {name} | {calls} | {1000 * wall / n:.3f} | {1000 * cpu / n:.3f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        rest = argv[argv.index("--") + 1 :]
        prof = argv[argv.index("--cprofile") + 1] if "--cprofile" in argv[:4] else None
        return child(rest, argv[1], prof)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--reminders", type=int, default=3000)
    parser.add_argument(
        "--pg-url", default=os.environ.get("NOTIFYCTL_BENCH_PG_URL", DEFAULT_PG_ADMIN_URL)
    )
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    parser.add_argument("--cprofile", help="also write a merged pstats file (per dialect suffix)")
    args = parser.parse_args(argv)
    for dialect in args.dialect or ["sqlite", "postgresql"]:
        prof = f"{args.cprofile}.{dialect}" if args.cprofile else None
        print(profile(dialect, args.reminders, args.workdir.resolve(), args.pg_url, prof))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
