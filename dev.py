#!/usr/bin/env python3
"""Set-up and everyday tasks, with nothing but python3 on the machine.

python3 dev.py demo     # venv + install, then create → dispatch → message
python3 dev.py test     # venv + install with dev tools, then the test suite
python3 dev.py check    # ruff check, ruff format --check, mypy
python3 dev.py bench    # the benchmarks of benchmarks/ (SQLite and PostgreSQL)
python3 dev.py chaos    # the fault campaign of chaos/ (root; --quick for the CI variant)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("NOTIFYCTL_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def run(*args: str | Path, **kwargs: object) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, **kwargs)  # type: ignore[call-overload]


def ensure_venv(extras: str = "") -> None:
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
        run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    run(PY, "-m", "pip", "install", "--quiet", "--editable", target)


def ensure_postgres() -> None:
    """Start the local PostgreSQL if it is installed but down (tests need it)."""
    if shutil.which("pg_isready") is None:
        return
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0:
        return
    clusters = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") and clusters.is_dir():
        for version in sorted(p.name for p in clusters.iterdir()):
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                check=False,
            )
    for _ in range(30):
        if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q", "-t", "1"]).returncode == 0:
            return


#: the demo's own store, started afresh each time: never the user's real default store
DEMO_STORE = ROOT / ".demo" / "notifyctl.db"


def demo() -> None:
    ensure_venv()
    notifyctl = BIN / "notifyctl"
    for leftover in DEMO_STORE.parent.glob(DEMO_STORE.name + "*"):
        leftover.unlink()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFYCTL_", "TELEGRAM_")) and k != "DATABASE_URL"
    }
    env["NOTIFYCTL_DATABASE_URL"] = f"sqlite:///{DEMO_STORE}"
    print(f"demo store: {DEMO_STORE} (your own store is not touched)", flush=True)
    run(notifyctl, "migrate", env=env)
    run(
        notifyctl,
        "create",
        "demo-yoga",
        "--title",
        "Yoga",
        "--starts-at",
        "+45m",
        "--ends-at",
        "+105m",
        "--timezone",
        "Europe/Berlin",
        "--to",
        "console:you",
        env=env,
    )
    run(notifyctl, "dispatch", env=env)
    run(notifyctl, "list", "--status", "all", "--booking", "demo-yoga", env=env)


def test(*pytest_args: str) -> None:
    ensure_venv("dev,apprise")
    ensure_postgres()
    run(PY, "-m", "pytest", *pytest_args, cwd=ROOT)


def check() -> None:
    ensure_venv("dev,apprise")
    run(PY, "-m", "ruff", "check", ".", cwd=ROOT)
    run(PY, "-m", "ruff", "format", "--check", ".", cwd=ROOT)
    run(PY, "-m", "mypy", cwd=ROOT)


def bench(*args: str) -> None:
    ensure_venv("dev")
    ensure_postgres()
    run(PY, ROOT / "benchmarks" / "run.py", *args, cwd=ROOT)


def chaos(*args: str) -> None:
    ensure_venv("dev")
    ensure_postgres()
    run(PY, "-m", "chaos.run", *args, cwd=ROOT)


TASKS = {"demo": demo, "test": test, "check": check, "bench": bench, "chaos": chaos}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(__doc__)
    try:
        TASKS[sys.argv[1]](*sys.argv[2:])
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode)
