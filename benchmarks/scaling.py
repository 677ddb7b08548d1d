"""Dispatch scaling: 1, 2, 4 and 8 processes at once, and the queue statements as it grows.

    .venv/bin/python benchmarks/scaling.py [--dialect postgresql] [--reminders 10000]
        [--processes N ...] [--pacing on|off ...] [--pending N ...] [--skip-processes]

Processes: each run starts N ``dispatch --rate-limit 10000`` processes together
on a clone of one store of due reminders, provider answering at once; the
figure is reminders / wall time from the first start to the last exit.
``pacing on``: the runs share the store's pacing row, as runs always do (the
rate limit itself is far above what is reached). ``pacing off``: the same
command in a child whose ``Pacer.allowance`` is patched to "unlimited" (a
benchmark instrument, not an option of notifyctl): no pacing row, no chat
spacing; the difference is what sharing the rate limit costs.

Statements (``--pending``, default 10k, 100k and 1M): on a store with that
many due reminders, ``queries.claim_due`` (50 rows, its own transaction,
committed) and ``queries.record_outcomes`` (the fenced write of those 50 as
sent, its own transaction) are timed 30 times each in a row, as one
dispatcher meets them; the median and max per statement are printed with
the claim's ``EXPLAIN (ANALYZE, BUFFERS)`` after the runs. Not judged:
printed as Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BOT_TOKEN,
    DEFAULT_PG_ADMIN_URL,
    Provider,
    Stores,
    base_env,
    python_for_children,
    run_together,
)
from stores import Fill, fill

ARGS = ["dispatch", "--rate-limit", "10000", "--max-seconds", "600",
        "--lease-seconds", "900", "--json"]  # fmt: skip
UNPACED = (
    "import notifyctl.pacing as p; "
    "p.Pacer.allowance = lambda self, key, count: p.Allowance(None, None, count); "
    "from notifyctl.cli import main; raise SystemExit(main())"
)


def command(python: str, pacing: str) -> list[str]:
    if pacing == "on":
        return [python, "-m", "notifyctl", *ARGS]
    return [python, "-c", UNPACED, *ARGS]


def processes_table(args: argparse.Namespace, stores: Stores, python: str) -> str:
    rows = ["| processes | pacing | msg/s | wall s |", "|---:|---|---:|---:|"]
    template = stores.empty("scaling")
    fill(template, [Fill("due", args.reminders, per_booking=1)])
    for procs in args.processes or [1, 2, 4, 8]:
        for pacing in args.pacing or ["on", "off"]:
            with (
                stores.temporary_clone(template, f"p{procs}{pacing}") as store,
                Provider(python) as p,
            ):
                env = base_env(
                    NOTIFYCTL_DATABASE_URL=store.url,
                    TELEGRAM_BOT_TOKEN=BOT_TOKEN,
                    TELEGRAM_API_URL=p.api_url,
                )
                began = time.perf_counter()
                runs = run_together(
                    [command(python, pacing)] * procs, env=env, cwd=args.workdir, timeout=900
                )
                wall = time.perf_counter() - began
                for timed in runs:
                    timed.check("dispatch")
                sent = p.stats()["sent"]
            if sent != args.reminders:
                raise SystemExit(f"{procs} processes: provider got {sent} of {args.reminders}")
            rows.append(f"| {procs} | {pacing} | {args.reminders / wall:.0f} | {wall:.1f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    stores.drop(template)
    return "\n".join(rows)


def statements_table(args: argparse.Namespace, stores: Stores) -> str:
    from notifyctl import queries
    from notifyctl.db import open_store
    from notifyctl.models import Status

    rows = [
        "| pending | claim 50: median ms | max ms | fenced write of 50: median ms | max ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    plans: list[str] = []
    for pending in args.pending or [10_000, 100_000, 1_000_000]:
        store = stores.empty(f"pending{pending}")
        fill(store, [Fill("due", pending, per_booking=1)])
        notifyctl_store = open_store(store.url)
        claims: list[float] = []
        writes: list[float] = []
        try:
            for _ in range(30):
                now = datetime.now(UTC)
                token = str(uuid.uuid4())
                began = time.perf_counter()
                with notifyctl_store.transaction() as conn:
                    claimed = queries.claim_due(conn, now, 50, token, timedelta(seconds=900))
                claims.append(time.perf_counter() - began)
                done = [
                    queries.FencedWrite(
                        r.id, token, {"status": Status.SENT, "sent_at": now, "updated_at": now}
                    )
                    for r in claimed
                ]
                began = time.perf_counter()
                with notifyctl_store.transaction() as conn:
                    queries.record_outcomes(conn, done)
                writes.append(time.perf_counter() - began)
            plans.append(f"-- {pending} pending, after 30 claims:\n" + explain_claim(store.url))
        finally:
            notifyctl_store.close()
            stores.drop(store)
        ms = [1000 * x for x in (*claims, *writes)]
        c, w = ms[: len(claims)], ms[len(claims) :]
        rows.append(
            f"| {pending:,} | {statistics.median(c):.2f} | {max(c):.2f} | "
            f"{statistics.median(w):.2f} | {max(w):.2f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows) + "\n\n" + "\n\n".join(plans)


def explain_claim(url: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the claim statement exactly as notifyctl sends it."""
    from sqlalchemy import event

    from notifyctl import queries
    from notifyctl.db import open_store

    store = open_store(url)
    seen: list[tuple[str, object]] = []
    try:
        with store.transaction() as conn:

            def keep(_c: object, _cur: object, statement: str, params: object, *_: object) -> None:
                seen.append((statement, params))

            event.listen(conn, "before_cursor_execute", keep)
            queries.claim_due(conn, datetime.now(UTC), 50, "explain", timedelta(seconds=900))
            event.remove(conn, "before_cursor_execute", keep)
            statement, params = seen[0]
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cursor = raw.cursor()
            prefix = (
                "EXPLAIN (ANALYZE, BUFFERS) "
                if conn.dialect.name == "postgresql"
                else ("EXPLAIN QUERY PLAN ")
            )
            cursor.execute(prefix + statement, params)
            lines = [str(r[0]) if len(r) == 1 else " ".join(map(str, r)) for r in cursor]
            conn.rollback()
    finally:
        store.close()
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", default="postgresql", choices=["sqlite", "postgresql"])
    parser.add_argument("--reminders", type=int, default=10_000)
    parser.add_argument("--processes", type=int, action="append")
    parser.add_argument("--pacing", action="append", choices=["on", "off"])
    parser.add_argument("--pending", type=int, action="append")
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--skip-statements", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    pg_url = os.environ.get("NOTIFYCTL_BENCH_PG_URL", DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args()
    python = python_for_children()
    stores = Stores(args.dialect, python, args.workdir.resolve(), pg_url)  # type: ignore[arg-type]
    out: list[str] = []
    try:
        if not args.skip_processes:
            out.append(processes_table(args, stores, python))
        if not args.skip_statements:
            out.append(statements_table(args, stores))
    finally:
        stores.close()
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
