"""An idle dispatch (cron, every minute) stays cheap: it loads nothing it does not need."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import func, select

from notifyctl.db import Store
from notifyctl.models import DispatchRun

HEAVY = [
    "alembic",
    "rich",
    "jinja2",
    "apprise",
    "requests",
    "notifyctl.models",
    "notifyctl.dispatch",
    "notifyctl.decisions",
    "notifyctl.message",
]

PROBE = f"""
import json, sys
from notifyctl.cli import main
code = main(["dispatch"])
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_idle_dispatch_loads_no_heavy_module_and_records_its_run(
    database_url: str, store: Store
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFYCTL_", "TELEGRAM_"))}
    env["NOTIFYCTL_DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.splitlines()
    assert printed == []  # silent for cron
    assert json.loads(last) == {"code": 0, "loaded": []}
    assert done.stderr == ""
    with store.reader() as conn:
        runs = conn.execute(select(func.count(), func.max(DispatchRun.exit_code))).one()
    assert tuple(runs) == (1, 0)
