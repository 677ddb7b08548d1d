"""An idle dispatch (cron, every minute) stays cheap: it loads nothing it does not need."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from notifyctl import queries
from notifyctl.db import Store
from notifyctl.models import DispatchRun, Notification, Status
from notifyctl.rawstore import plain_target
from notifyctl.runs import DispatchOptions, idle_run, quick_idle_run
from notifyctl.service import create_booking
from tests import dbstate
from tests.support import Cli, FrozenClock

HEAVY = [
    "sqlalchemy",  # the plain idle check runs before it would load
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


def reminder_in(store: Store, seconds: float, *, folded: bool = True, **values: Any) -> None:
    """A console reminder (at_start) due ``seconds`` from now, then forced to ``values``."""
    start = store.clock() + timedelta(seconds=seconds)
    create_booking(
        store,
        "b1",
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=["console:desk"],
        remind=["at_start"],
    )
    if values:
        with store.transaction() as conn:
            conn.execute(update(Notification).values(**values))
            if folded:  # as the run that finished it did on its way out
                queries.fold_stat_hours(conn)


@pytest.mark.parametrize(
    ("state", "wait", "idle"),
    [
        pytest.param({}, True, True, id="empty"),
        pytest.param({"seconds": 0}, False, False, id="due-now"),
        pytest.param({"seconds": 30}, True, False, id="due-within-the-budget"),
        pytest.param({"seconds": 30}, False, True, id="due-soon-no-wait"),
        pytest.param({"seconds": 3600, "not_after": -1}, False, False, id="past-its-use"),
        pytest.param({"seconds": 3600, "lease": -1}, False, False, id="lease-ran-out"),
        pytest.param({"seconds": 3600, "lease": 60}, False, True, id="lease-held"),
        pytest.param({"seconds": 0, "status": Status.SENT}, False, True, id="finished"),
        pytest.param(
            {"seconds": 0, "status": Status.SENT, "folded": False}, False, False, id="to-fold"
        ),
    ],
)
def test_the_plain_idle_check_decides_as_the_regular_one(
    database_url: str,
    store: Store,
    clock: FrozenClock,
    state: dict[str, Any],
    wait: bool,
    idle: bool,
) -> None:
    now = clock()
    if "seconds" in state:
        values: dict[str, Any] = {}
        if "status" in state:
            values["status"] = state["status"]
        if "not_after" in state:
            values["not_after"] = now + timedelta(seconds=state["not_after"])
        if "lease" in state:
            values.update(
                status=Status.SENDING,
                lease_token="t",
                lease_expires_at=now + timedelta(seconds=state["lease"]),
            )
        reminder_in(store, state["seconds"], folded=state.get("folded", True), **values)
    options = DispatchOptions(wait=wait)

    plain = quick_idle_run(database_url, options, clock)
    regular = idle_run(store, options)

    assert (plain is not None, regular is not None) == (idle, idle)
    with store.reader() as conn:
        runs = conn.execute(select(DispatchRun.started_at, DispatchRun.exit_code)).all()
    assert [tuple(r) for r in runs] == ([(now, 0)] * 2 if idle else [])


def test_a_store_at_another_revision_is_left_to_the_regular_check(
    cli: Cli, database_url: str, clock: FrozenClock
) -> None:
    dbstate.execute(database_url, text("UPDATE alembic_version SET version_num = '0000'"))

    assert quick_idle_run(database_url, DispatchOptions(), clock) is None
    result = cli("dispatch")
    assert result.exit_code == 4
    assert "0000" in result.stderr
    assert "notifyctl migrate" in result.stderr


@pytest.mark.parametrize(
    ("url", "plain"),
    [
        ("postgresql://u@h/db", ("postgresql", "postgresql://u@h/db")),
        (
            "postgresql+psycopg://u@h/db?sslmode=require",
            ("postgresql", "postgresql://u@h/db?sslmode=require"),
        ),
        ("sqlite:///relative/missing.db", None),  # SQLAlchemy words the missing file
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("sqlite:///file:x.db?mode=ro&uri=true", None),
        ("mysql://u@h/db", None),
    ],
)
def test_only_plain_urls_take_the_plain_idle_check(url: str, plain: tuple[str, str] | None) -> None:
    assert plain_target(url) == plain
