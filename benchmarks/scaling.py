"""Dispatch throughput with 1, 2, 4 and 8 processes at once (a first scaling figure).

    .venv/bin/python benchmarks/scaling.py [--dialect postgresql] [--reminders 10000]

Each run starts N ``dispatch --rate-limit 10000`` processes together on a
clone of one store of due reminders, provider answering at once; the figure
is reminders / wall time from the first start to the last exit. The runs
share the store's pacing row, as runs always do (the rate limit itself is
far above what is reached). Not judged: printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
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

ARGS = ["-m", "notifyctl", "dispatch", "--rate-limit", "10000", "--max-seconds", "600",
        "--lease-seconds", "900", "--json"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", default="postgresql", choices=["sqlite", "postgresql"])
    parser.add_argument("--reminders", type=int, default=10_000)
    parser.add_argument("--processes", type=int, action="append")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    pg_url = os.environ.get("NOTIFYCTL_BENCH_PG_URL", DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args()
    python = python_for_children()
    stores = Stores(args.dialect, python, args.workdir.resolve(), pg_url)  # type: ignore[arg-type]
    rows = ["| processes | msg/s | wall s |", "|---:|---:|---:|"]
    try:
        template = stores.empty("scaling")
        fill(template, [Fill("due", args.reminders, per_booking=1)])
        for procs in args.processes or [1, 2, 4, 8]:
            with stores.temporary_clone(template, f"p{procs}") as store, Provider(python) as p:
                env = base_env(
                    NOTIFYCTL_DATABASE_URL=store.url,
                    TELEGRAM_BOT_TOKEN=BOT_TOKEN,
                    TELEGRAM_API_URL=p.api_url,
                )
                began = time.perf_counter()
                runs = run_together(
                    [[python, *ARGS]] * procs, env=env, cwd=args.workdir, timeout=900
                )
                wall = time.perf_counter() - began
                for timed in runs:
                    timed.check("dispatch")
                sent = p.stats()["sent"]
            if sent != args.reminders:
                raise SystemExit(f"{procs} processes: provider got {sent} of {args.reminders}")
            rows.append(f"| {procs} | {args.reminders / wall:.0f} | {wall:.1f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        stores.close()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
