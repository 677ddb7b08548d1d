"""``dispatch --workers N``: one command, N processes claiming and sending side by side.

Real processes (the command as cron runs it) against the fake Bot API; the
merge of the workers' reports is also checked as the pure function it is.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from notifyctl.config import Settings
from notifyctl.models import DispatchRun, Notification, Status
from notifyctl.runs import DispatchOptions, RunReport
from notifyctl.service import Store, create_booking
from notifyctl.stopping import StopRequest
from notifyctl.workers import merged, run_with_helpers
from tests.fakes.telegram import FakeTelegram, hang
from tests.support import REPO, Cli, FrozenClock, clean_env, due_now

TOKEN = "135792468:AAF-workers_SECRET_token_w1"


def due_reminders(store: Store, clock: FrozenClock, count: int) -> None:
    """``count`` reminders due now, one chat each (7000, 7001, ...)."""
    due_now(store, clock, [f"telegram:{7000 + i}" for i in range(count)])


def dispatch(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "notifyctl", "dispatch", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def runs(store: Store) -> list[Any]:
    with store.reader() as conn:
        return list(conn.execute(select(DispatchRun).order_by(DispatchRun.id)))


def statuses(store: Store) -> set[str]:
    with store.reader() as conn:
        return set(conn.scalars(select(Notification.status)))


def test_workers_send_every_reminder_once_under_the_shared_rate_limit(
    database_url: str, store: Store, clock: FrozenClock
) -> None:
    due_reminders(store, clock, 90)
    with FakeTelegram(token=TOKEN, rate_limit=30) as tg:
        env = clean_env(
            database_url,
            NOTIFYCTL_NO_WAIT="1",
            TELEGRAM_BOT_TOKEN=TOKEN,
            TELEGRAM_API_URL=tg.api_url,
        )
        proc = dispatch(env, "--workers", "3", "--batch-size", "5", "--rate-limit", "25", "--json")
        out, err = proc.communicate(timeout=60)
        sent = tg.sent()
        count_429 = tg.count_429

    assert proc.returncode == 0, err
    assert err == ""
    report = json.loads(out)
    assert (report["claimed"], report["sent"], report["exit_code"]) == (90, 90, 0)
    assert sorted(int(m.chat_id) for m in sent) == list(range(7000, 7090))  # each once
    assert count_429 == 0  # three processes, one bot's budget
    rows = runs(store)
    assert len(rows) == 3  # the command and its two helpers, each a run of its own
    assert len({r.pid for r in rows}) == 3
    assert sum(r.sent for r in rows) == 90
    assert all(r.exit_code == 0 and r.finished_at is not None for r in rows)
    assert statuses(store) == {Status.SENT}


def interrupted(
    database_url: str, *signals: signal.Signals, send_deadline: int = 2, exit_within: int = 0
) -> tuple[subprocess.Popen[str], str, str]:
    """``dispatch --workers 2`` (2 claims each, one send at a time) stopped by ``signals``
    once the command and its helper each have a send out that hangs; it must exit within
    ``exit_within`` seconds of them (default: its send deadline and 10 s more)."""
    with FakeTelegram(token=TOKEN) as tg:
        tg.fail_all(hang(send_deadline + 30))  # every send is in flight until its deadline
        env = clean_env(
            database_url,
            NOTIFYCTL_NO_WAIT="1",
            NOTIFYCTL_SEND_DEADLINE=str(send_deadline),
            TELEGRAM_BOT_TOKEN=TOKEN,
            TELEGRAM_API_URL=tg.api_url,
        )
        proc = dispatch(env, "--workers", "2", "--batch-size", "2", "--concurrency", "1")
        try:
            tg.wait_for(2, timeout=30)
            for signum in signals:  # Ctrl-C or `kill`: the command alone, not its group
                os.kill(proc.pid, signum)
            out, err = proc.communicate(timeout=exit_within or send_deadline + 10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return proc, out, err


def in_status(store: Store, status: Status) -> int:
    with store.reader() as conn:
        return conn.scalar(select(func.count()).where(Notification.status == status)) or 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_stops_the_command_and_its_workers_giving_back_what_is_unsent(
    database_url: str, store: Store, clock: FrozenClock, signum: signal.Signals
) -> None:
    due_reminders(store, clock, 20)

    proc, out, err = interrupted(database_url, signum)

    assert (proc.returncode, err) == (130, "")  # as one process: no traceback
    # each run: its send out answered by the deadline (a retry: it may have gone out),
    # the claim not yet begun given back at once instead of after its lease
    assert out.startswith("dispatch: 0 sent, 2 retried, 2 released in ")
    rows = runs(store)
    assert len(rows) == 2
    assert all(r.finished_at is not None and r.exit_code == 130 for r in rows)
    assert in_status(store, Status.SENDING) == 0
    assert in_status(store, Status.PENDING) == 20


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_second_signal_stops_at_once_without_waiting_for_answers(
    database_url: str, store: Store, clock: FrozenClock
) -> None:
    due_reminders(store, clock, 20)

    proc, out, err = interrupted(
        database_url, signal.SIGTERM, signal.SIGINT, send_deadline=120, exit_within=8
    )

    assert (proc.returncode, out) == (130, "")
    assert "Traceback" not in err
    # the sends still out (120 s to their deadline) were cut, not waited for: rescued later
    assert in_status(store, Status.SENDING) >= 1


def test_workers_must_be_1_to_64(cli: Cli, store: Store, clock: FrozenClock) -> None:
    due_reminders(store, clock, 1)
    for bad in ("0", "65"):
        result = cli("dispatch", "--workers", bad)

        assert result.exit_code == 2
        assert result.stderr.strip() == "error: --workers must be 1-64"
    assert runs(store) == []
    assert statuses(store) == {Status.PENDING}


def test_reports_merge_into_one_with_the_first_failure_and_each_error_once() -> None:
    here = RunReport(run_id=7, claimed=5, sent=4, retried=1, duration_seconds=2.0)
    here.by_channel = {"telegram": {"sent": 4, "retried": 1}}
    missing = "TELEGRAM_BOT_TOKEN_STUDIO is not set"
    helper = RunReport(claimed=3, sent=3, exit_code=3, error=missing, duration_seconds=3.5)
    helper.by_channel = {"telegram": {"sent": 2}, "email": {"sent": 1}}
    other = RunReport(exit_code=4, error=missing)

    report = merged(here, [helper, other, RunReport(error="database is locked", exit_code=4)])

    assert (report.run_id, report.claimed, report.sent, report.retried) == (7, 8, 7, 1)
    assert report.by_channel == {"telegram": {"sent": 6, "retried": 1}, "email": {"sent": 1}}
    assert report.exit_code == 3
    assert report.error == f"{missing}; database is locked"
    assert report.duration_seconds == 3.5


def test_no_helper_starts_once_the_command_was_asked_to_stop(tmp_path: Path) -> None:
    stop = StopRequest()
    stop.request()  # e.g. a SIGTERM while the command was still finding work
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'absent.db'}")
    mine = RunReport(exit_code=130, error="interrupted")

    report = run_with_helpers(settings, DispatchOptions(workers=3), lambda: mine, stop)

    assert multiprocessing.active_children() == []
    assert (report.exit_code, report.error) == (130, "interrupted")  # no helper's report


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_waiting_for_the_next_due_second_stops_at_once(
    database_url: str, store: Store, clock: FrozenClock
) -> None:
    due_reminders(store, clock, 1)
    starts = clock() + timedelta(hours=1, seconds=40)  # its reminder falls due in 40 s
    create_booking(
        store, "later", starts_at=starts, ends_at=starts + timedelta(hours=1),
        to=["telegram:7100"], remind=["hour_before"],
    )  # fmt: skip
    with FakeTelegram(token=TOKEN) as tg:
        env = clean_env(database_url, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=tg.api_url)
        proc = dispatch(env, "--max-seconds", "55", "-v")  # waits for it (SPEC §13)
        try:
            assert proc.stderr is not None
            seen = ""
            while "waiting until" not in seen and proc.poll() is None:
                seen = proc.stderr.readline()  # -v: the run says when it starts waiting
            os.kill(proc.pid, signal.SIGTERM)
            out, err = proc.communicate(timeout=20)  # not the 40 s the wait had left
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert "waiting until" in seen
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert out.startswith("dispatch: 1 sent in ")
    assert [r.exit_code for r in runs(store)] == [130]
    assert in_status(store, Status.PENDING) == 1  # the later one, for the next run
