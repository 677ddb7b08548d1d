"""The fault campaign of issue 11: ``python3 dev.py chaos [--quick]``.

    python -m chaos.run [--quick] [--seed N] [--only NAME …] [--workdir DIR] [--keep]

Real ``notifyctl dispatch`` processes on SQLite and PostgreSQL against a fake
Telegram that records every delivery durably, with faults injected: kill -9
of overlapping dispatchers, PostgreSQL restarted mid-run, a writer holding
the SQLite lock past the busy timeout, hosts in network namespaces sharing
one PostgreSQL with one cut off mid-batch, and reschedules and cancels
racing the sends. See chaos/scenarios.py for what each figure means.

Prints one row per scenario (and the same table as Markdown), then what went
wrong; exits 1 when a target is missed (0 lost, 0 sent after cancel, 0 after
not_after, 0 false texts, 0 early, no internal errors, duplicates only where a
send was in flight at a fault), 2 when the campaign itself could not run.
Must run as root for namespaces and the PostgreSQL restart.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

from chaos.infra import ChaosError, Cleanup, export_source, log, pg_ready
from chaos.scenarios import FULL, QUICK, SCENARIOS, Result, run_scenario

COLUMNS = (
    "scenario",
    "db",
    "reminders",
    "delivered",
    "duplicates (in flight at fault)",
    "lost",
    "after cancel",
    "after not_after",
    "false texts",
    "early",
    "exit 1",
    "verdict",
)


def cells(r: Result) -> list[str]:
    if r.error:
        return [r.scenario.name, r.scenario.dialect, *["-"] * 9, "ERROR"]
    return [
        r.scenario.name,
        r.scenario.dialect,
        str(r.reminders),
        str(r.delivered),
        f"{r.duplicates} ({r.dup_in_flight})",
        str(r.lost),
        str(r.after_cancel),
        str(r.after_not_after),
        str(r.false_texts),
        str(r.early),
        str(r.internal_errors),
        "pass" if r.passed else "FAIL",
    ]


def table(results: list[Result]) -> str:
    rows = [list(COLUMNS), *(cells(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def markdown(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="notifyctl fault campaign (issue 11)")
    parser.add_argument("--quick", action="store_true", help="small sizes, under ~3 minutes")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock")
    parser.add_argument("--only", action="append", default=[], help="scenario name (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument(
        "--source",
        default=None,
        help="run notifyctl as committed at this git revision (default: the working tree)",
    )
    parser.add_argument("--keep", action="store_true", help="keep stores and logs afterwards")
    args = parser.parse_args(argv)

    size = QUICK if args.quick else FULL
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    unknown = set(args.only) - {s.name for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}: {[s.name for s in SCENARIOS]}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="notifyctl-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    code = "the working tree"
    if args.source:
        code = f"commit {export_source(args.source, workdir / 'src')}"
    print(
        f"chaos campaign: {'quick' if args.quick else 'full'}, seed {seed} "
        f"(re-run: --seed {seed}), notifyctl from {code}, workdir {workdir}",
        flush=True,
    )
    results: list[Result] = []
    started = time.time()
    try:
        with Cleanup():
            pg_ready(60)
            for scenario in chosen:
                scenario_seed = seed * 1000 + zlib.crc32(scenario.name.encode()) % 1000
                results.append(run_scenario(scenario, size, scenario_seed, workdir, Cleanup()))
                r = results[-1]
                log(f"{scenario.name}: {'pass' if r.passed else 'FAIL'} - {' | '.join(cells(r))}")
    except KeyboardInterrupt:
        print("interrupted: everything started was taken down", file=sys.stderr)
        return 130
    except ChaosError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    mode = "quick" if args.quick else "full"
    print(f"\nseed {seed}, {time.time() - started:.0f} s, {mode}, notifyctl from {code}\n")
    print(table(results))
    print("\nMarkdown:\n")
    print(markdown(results))
    print()
    for r in results:
        print(f"{r.scenario.name} ({r.scenario.what}, seed {r.seed}):")
        if r.error:
            print(f"  campaign error: {r.error}")
        for note in r.notes:
            print(f"  - {note}")
        shown = r.details[:25]
        for d in shown:
            print(f"  {'·' if d.endswith('(allowed)') else '!'} {d}")
        if len(r.details) > len(shown):
            print(f"  ! … and {len(r.details) - len(shown)} more")
    if any(r.error for r in results):
        return 2
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
