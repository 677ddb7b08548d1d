"""``dispatch --metrics-file`` (Prometheus textfile) and ``--ping-url`` (healthchecks.io)."""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifyctl import metrics as metrics_file
from notifyctl import pings, stats
from notifyctl.db import Store
from notifyctl.runs import RunReport
from notifyctl.service import create_booking
from tests.fakes.telegram import FakeTelegram, error
from tests.ops_support import TOKEN, PingServer, dispatch, frozen_cli, minutes
from tests.support import Cli, CliResult, FrozenClock

SECRET = "5b0c64ee-7c48-4a8b-8d6f-3c1e2f9a0b7d"  # a healthchecks check's ping UUID
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def read_metrics(path: Path) -> Metrics:
    values: Metrics = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def outcome(channel: str, name: str) -> tuple[tuple[str, str], ...]:
    return (("channel", channel), ("outcome", name))


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_metrics_file_holds_the_run_and_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "notifyctl.prom"
    report = RunReport(
        exit_code=0,
        duration_seconds=1.25,
        by_channel={"telegram": {"sent": 3, "retried": 1}, "console": {"sent": 2}},
    )
    queue = stats.QueueState(
        pending=7, sending=1, due=2, oldest_due_age_seconds=95.5, last_success_at=None
    )

    metrics_file.write_metrics_file(path, report, queue, NOW)

    assert read_metrics(path) == {
        ("notifyctl_dispatch_outcomes_total", outcome("console", "sent")): 2.0,
        ("notifyctl_dispatch_outcomes_total", outcome("telegram", "retried")): 1.0,
        ("notifyctl_dispatch_outcomes_total", outcome("telegram", "sent")): 3.0,
        ("notifyctl_dispatch_last_run_outcomes", outcome("console", "sent")): 2.0,
        ("notifyctl_dispatch_last_run_outcomes", outcome("telegram", "retried")): 1.0,
        ("notifyctl_dispatch_last_run_outcomes", outcome("telegram", "sent")): 3.0,
        ("notifyctl_queue_pending", ()): 7.0,
        ("notifyctl_queue_due", ()): 2.0,
        ("notifyctl_queue_oldest_due_age_seconds", ()): 95.5,
        ("notifyctl_dispatch_duration_seconds", ()): 1.25,
        ("notifyctl_dispatch_last_run_timestamp_seconds", ()): NOW.timestamp(),
        ("notifyctl_dispatch_last_success_timestamp_seconds", ()): NOW.timestamp(),
        ("notifyctl_dispatch_exit_code", ()): 0.0,
    }
    text = path.read_text()
    assert "# TYPE notifyctl_dispatch_outcomes_total counter" in text
    assert "# TYPE notifyctl_queue_pending gauge" in text


def test_outcome_counters_add_up_across_runs_and_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "notifyctl.prom"
    queue = stats.QueueState(0, 0, 0, None, None)
    metrics_file.write_metrics_file(
        path, RunReport(by_channel={"telegram": {"sent": 3}}), queue, NOW
    )
    first_inode = path.stat().st_ino

    later = NOW + timedelta(minutes=1)
    second = RunReport(by_channel={"telegram": {"sent": 1, "failed": 1}})
    metrics_file.write_metrics_file(path, second, queue, later)

    metrics = read_metrics(path)
    assert metrics["notifyctl_dispatch_outcomes_total", outcome("telegram", "sent")] == 4.0
    assert metrics["notifyctl_dispatch_outcomes_total", outcome("telegram", "failed")] == 1.0
    assert metrics["notifyctl_dispatch_last_run_outcomes", outcome("telegram", "sent")] == 1.0
    assert metrics["notifyctl_dispatch_last_run_timestamp_seconds", ()] == later.timestamp()
    assert path.stat().st_ino != first_inode  # a new file renamed over the old one
    assert [p.name for p in tmp_path.iterdir()] == ["notifyctl.prom"]  # no temp file left


def test_a_failed_run_reports_the_last_success_from_the_store(tmp_path: Path) -> None:
    path = tmp_path / "notifyctl.prom"
    earlier = NOW - timedelta(minutes=7)
    queue = stats.QueueState(3, 0, 3, 420.0, last_success_at=earlier)

    metrics_file.write_metrics_file(path, RunReport(exit_code=3, error="no token"), queue, NOW)

    metrics = read_metrics(path)
    assert metrics["notifyctl_dispatch_exit_code", ()] == 3.0
    assert metrics["notifyctl_dispatch_last_success_timestamp_seconds", ()] == earlier.timestamp()
    assert metrics["notifyctl_queue_oldest_due_age_seconds", ()] == 420.0


def test_an_unreadable_previous_file_restarts_the_counters(tmp_path: Path) -> None:
    path = tmp_path / "notifyctl.prom"
    path.write_text("this is { not prometheus\n")

    metrics_file.write_metrics_file(
        path,
        RunReport(by_channel={"console": {"sent": 1}}),
        stats.QueueState(0, 0, 0, None, None),
        NOW,
    )

    assert read_metrics(path)["notifyctl_dispatch_outcomes_total", outcome("console", "sent")] == 1


def test_export_metrics_reads_the_queue_of_the_store(
    store: Store, clock: FrozenClock, database_url: str, tmp_path: Path
) -> None:
    t0 = clock()
    for n, start in enumerate((10, 10, 12, 90)):
        create_booking(
            store,
            f"b{n}",
            starts_at=t0 + minutes(start),
            ends_at=t0 + minutes(start + 60),
            to=[f"{4000 + n}"],
            remind=["at_start"],
        )
    with FakeTelegram(token=TOKEN) as tg:
        tg.script("4001", error(500, "down"))
        clock.set(t0 + minutes(10))
        report = dispatch(store, clock, database_url, tg.api_url)
    clock.set(t0 + minutes(13))  # b2 due for a minute, the retry of b1 due (~30 s backoff)
    path = tmp_path / "notifyctl.prom"

    assert metrics_file.export_metrics(store, path, report) is True

    metrics = read_metrics(path)
    queue = stats.queue_state(store)
    assert (queue.pending, queue.due) == (3, 2)
    assert metrics["notifyctl_queue_pending", ()] == 3
    assert metrics["notifyctl_queue_due", ()] == 2
    assert metrics["notifyctl_queue_oldest_due_age_seconds", ()] == queue.oldest_due_age_seconds
    assert 144 <= metrics["notifyctl_queue_oldest_due_age_seconds", ()] <= 156
    assert metrics["notifyctl_dispatch_outcomes_total", outcome("telegram", "sent")] == 1
    assert metrics["notifyctl_dispatch_outcomes_total", outcome("telegram", "retried")] == 1
    assert metrics["notifyctl_dispatch_last_success_timestamp_seconds", ()] == clock().timestamp()


def test_export_metrics_to_a_missing_directory_warns_and_never_raises(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing" / "notifyctl.prom"
    with caplog.at_level(logging.WARNING, logger="notifyctl.metrics"):
        assert metrics_file.export_metrics(store, path, RunReport()) is False
    assert "metrics file" in caplog.text
    assert "FileNotFoundError" in caplog.text
    assert not path.parent.exists()


# --- through the CLI --------------------------------------------------------------------


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch, database_url: str, clock: FrozenClock) -> Cli:
    return frozen_cli(monkeypatch, database_url, clock)


def due_reminder(store: Store, clock: FrozenClock, to: str) -> None:
    """One reminder for ``to``, due for a minute now."""
    now = clock()
    create_booking(
        store,
        f"booking-{to}",
        starts_at=now + minutes(1),
        ends_at=now + minutes(60),
        to=[to],
        remind=["at_start"],
    )
    clock.advance(minutes=2)


def assert_secret_kept(result: CliResult, caplog: pytest.LogCaptureFixture) -> None:
    for text in (result.stdout, result.stderr, caplog.text):
        assert SECRET not in text


def test_dispatch_writes_the_metrics_file_named_in_the_environment(
    frozen: Cli, store: Store, clock: FrozenClock, tmp_path: Path
) -> None:
    due_reminder(store, clock, "console:ops")
    path = tmp_path / "notifyctl.prom"

    result = frozen("dispatch", NOTIFYCTL_METRICS_FILE=str(path))

    assert result.exit_code == 0, result.stderr
    metrics = read_metrics(path)
    assert metrics["notifyctl_dispatch_outcomes_total", outcome("console", "sent")] == 1
    assert metrics["notifyctl_dispatch_exit_code", ()] == 0
    assert metrics["notifyctl_queue_pending", ()] == 0
    assert metrics["notifyctl_dispatch_last_success_timestamp_seconds", ()] == clock().timestamp()


def test_a_run_that_fails_for_its_configuration_still_writes_metrics(
    frozen: Cli, store: Store, clock: FrozenClock, tmp_path: Path
) -> None:
    due_reminder(store, clock, "console:ops")
    assert frozen("dispatch").exit_code == 0
    succeeded_at = clock()
    clock.advance(minutes=5)
    due_reminder(store, clock, "12345")  # Telegram, and no token set
    path = tmp_path / "notifyctl.prom"

    result = frozen("dispatch", "--metrics-file", str(path))

    assert result.exit_code == 3
    assert result.stderr.startswith("error: TELEGRAM_BOT_TOKEN is not set")
    metrics = read_metrics(path)
    assert metrics["notifyctl_dispatch_exit_code", ()] == 3
    assert metrics["notifyctl_dispatch_last_success_timestamp_seconds", ()] == (
        succeeded_at.timestamp()
    )
    assert metrics["notifyctl_queue_due", ()] == 1
    assert metrics["notifyctl_queue_oldest_due_age_seconds", ()] == 60


def test_a_good_run_pings_start_then_success(
    frozen: Cli, store: Store, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    due_reminder(store, clock, "console:ops")
    with PingServer() as hc:
        result = frozen("dispatch", NOTIFYCTL_PING_URL=hc.url(f"/ping/{SECRET}"))
        pings = hc.pings

    assert result.exit_code == 0, result.stderr
    assert [(p.method, p.path) for p in pings] == [
        ("POST", f"/ping/{SECRET}/start"),
        ("POST", f"/ping/{SECRET}"),
    ]
    assert pings[1].body.startswith("dispatch: 1 sent in")
    assert result.stderr == ""  # from the environment: no warning about ps
    assert_secret_kept(result, caplog)


def test_a_run_without_its_token_pings_its_exit_code(
    frozen: Cli, store: Store, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    due_reminder(store, clock, "12345")
    with PingServer() as hc:
        result = frozen("dispatch", NOTIFYCTL_PING_URL=hc.url(f"/{SECRET}"))
        pings = hc.pings

    assert result.exit_code == 3
    assert [p.path for p in pings] == [f"/{SECRET}/start", f"/{SECRET}/3"]
    assert "TELEGRAM_BOT_TOKEN is not set" in pings[1].body
    assert_secret_kept(result, caplog)


def test_a_store_that_is_not_migrated_pings_exit_code_4(
    empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with PingServer() as hc:
        result = Cli(empty_database_url)("dispatch", "--ping-url", hc.url(f"/{SECRET}"))
        paths = hc.paths()

    assert result.exit_code == 4
    assert paths == [f"/{SECRET}/start", f"/{SECRET}/4"]
    assert_secret_kept(result, caplog)


def test_a_dry_run_pings_nothing(frozen: Cli, store: Store, clock: FrozenClock) -> None:
    due_reminder(store, clock, "console:ops")
    with PingServer() as hc:
        result = frozen("dispatch", "--dry-run", "--ping-url", hc.url(f"/{SECRET}"))
        paths = hc.paths()

    assert result.exit_code == 0
    assert paths == []


def closed_port() -> int:
    """A local port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_an_unreachable_ping_url_never_fails_the_run_nor_shows_its_secret(
    frozen: Cli, store: Store, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    due_reminder(store, clock, "console:ops")
    url = f"http://user:hunter2@127.0.0.1:{closed_port()}/ping/{SECRET}?rid=42"

    result = frozen("dispatch", "-v", "--ping-url", url)

    assert result.exit_code == 0
    assert "dispatch: 1 sent" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("ping ")]
    assert len(warnings) == 2
    assert warnings[0].startswith("ping http://user:***@127.0.0.1:")
    assert "/ping/*** (start) failed: ConnectionError" in warnings[0]
    assert "/ping/*** (success) failed" in warnings[1]
    assert_secret_kept(result, caplog)
    assert "hunter2" not in result.stderr
    assert "rid=42" not in result.stderr


# --- ping itself ------------------------------------------------------------------------


def test_ping_reports_a_refusal_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    with PingServer() as hc, caplog.at_level(logging.WARNING, logger="notifyctl.pings"):
        hc.answer(404)
        assert pings.ping(hc.url(f"/{SECRET}"), "success") is False
        assert pings.ping("not a url", "start") is False
        assert [p.path for p in hc.pings] == [f"/{SECRET}"]
    assert "HTTP 404" in caplog.text
    assert SECRET not in caplog.text


def test_ping_gives_up_after_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/{SECRET}"
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="notifyctl.pings"):
            assert pings.ping(url, "start", timeout=0.3) is False
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert "(start) failed" in caplog.text
    assert SECRET not in caplog.text


def test_ping_uses_the_given_session() -> None:
    import requests

    with PingServer() as hc, requests.Session() as session:
        assert pings.ping(hc.url("/x"), 0, session) is True
        assert pings.ping(hc.url("/x/"), "fail", session) is True
        assert pings.ping(hc.url("/x"), 130, session) is True
        assert hc.paths() == ["/x", "/x/fail", "/x/130"]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("start", "https://hc-ping.com/u/start"),
        ("success", "https://hc-ping.com/u"),
        (0, "https://hc-ping.com/u"),
        ("fail", "https://hc-ping.com/u/fail"),
        (3, "https://hc-ping.com/u/3"),
        (256, "https://hc-ping.com/u/fail"),
        (-1, "https://hc-ping.com/u/fail"),
    ],
)
def test_ping_target_follows_the_healthchecks_convention(event: Any, expected: str) -> None:
    assert pings.ping_target("https://hc-ping.com/u", event) == expected


def test_ping_target_keeps_the_query_string() -> None:
    assert pings.ping_target("https://hc.example.com/ping/u/?rid=1", 4) == (
        "https://hc.example.com/ping/u/4?rid=1"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://hc-ping.com/{SECRET}", "https://hc-ping.com/***"),
        (
            f"https://me:pw@hc.example.com/ping/{SECRET}?rid=1",
            "https://me:***@hc.example.com/ping/***",
        ),
        ("https://hc-ping.com/fqOOd6-F4MMNuCEnzTU01w/db-backup", "https://hc-ping.com/***/***"),
        ("https://hc-ping.com/", "https://hc-ping.com/"),
    ],
)
def test_redact_ping_url_hides_the_secret_parts(url: str, shown: str) -> None:
    assert pings.redact_ping_url(url) == shown
