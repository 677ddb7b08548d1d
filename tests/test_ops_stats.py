"""``stats``: outcomes per channel and kind, lateness percentiles, queue, recent runs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, text

from notifyctl import queries
from notifyctl.db import Store
from notifyctl.models import Notification, Status
from notifyctl.service import cancel, create_booking
from notifyctl.service import summary as list_summary
from notifyctl.stats import stats as compute_stats
from tests.fakes.telegram import FakeTelegram, chat_not_found, error
from tests.ops_support import TOKEN, attempt_outcomes, dispatch, frozen_cli, minutes
from tests.support import FrozenClock, stat_hours_drift


def percentile_cont(values: Sequence[float], p: float) -> float:
    """The reference: PostgreSQL's percentile_cont (linear between the two nearest ranks)."""
    ordered = sorted(values)
    position = p * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def by_key(groups: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(g["channel"], g["kind"]): g for g in groups}


def test_stats_and_list_summary_agree_with_the_attempts_history(
    store: Store,
    clock: FrozenClock,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = clock()

    def book(booking_id: str, to: str, start: float = 10, end: float = 70, *kinds: str) -> None:
        create_booking(
            store,
            booking_id,
            starts_at=t0 + minutes(start),
            ends_at=t0 + minutes(end),
            to=[to],
            remind=list(kinds or ["at_start"]),
        )

    book("ok", "1001")
    book("bad", "1002")
    book("flaky", "1003")
    book("late", "1004", 5, 8)  # useless after t0+8m: expires at the first run
    book("gone", "1005")
    book("demo", "console:ops", 10, 70, "at_start", "before_end")
    cancel(store, ["gone"])

    with FakeTelegram(token=TOKEN) as tg:
        tg.script("1002", chat_not_found())
        tg.script("1003", error(500, "Internal Server Error"))
        clock.set(t0 + minutes(10) + timedelta(seconds=30))
        first = dispatch(store, clock, database_url, tg.api_url)
        clock.advance(60)  # past the 500's backoff (30 s ± 20 %)
        second = dispatch(store, clock, database_url, tg.api_url)
        assert [m.status for m in tg.messages] == [200, 400, 500, 200]

    assert first.counts() == {
        "claimed": 4,
        "sent": 2,
        "retried": 1,
        "rate_limited": 0,
        "moved": 0,
        "failed": 1,
        "expired": 1,
        "released": 0,
        "bad_credentials": 0,
        "rescued": 0,
        "lease_lost": 0,
        "edited": 0,
        "edit_failed": 0,
        "fallback": 0,
    }
    assert (second.claimed, second.sent, second.exit_code) == (1, 1, 0)

    # the console's before_end reminder (t0+65m) has now waited 90 s
    clock.set(t0 + minutes(66) + timedelta(seconds=30))
    cli = frozen_cli(monkeypatch, database_url, clock)
    stats = json.loads(cli.ok("stats", "--format", "json").stdout)
    summary = json.loads(cli.ok("list", "--summary", "--format", "json").stdout)
    sent_rows = json.loads(cli.ok("list", "--status", "sent", "--format", "json").stdout)
    history = attempt_outcomes(store)
    runs = stats["runs"]
    total = stats["total"]
    groups = by_key(stats["by_channel_kind"])

    # per channel and kind
    assert set(groups) == {("console", "at_start"), ("telegram", "at_start")}
    telegram, console = groups["telegram", "at_start"], groups["console", "at_start"]
    assert (telegram["sent"], telegram["failed"], telegram["expired"]) == (2, 1, 1)
    assert (telegram["cancelled"], telegram["retries"]) == (1, 1)
    assert telegram["delivery_rate"] == 0.5
    assert (console["sent"], console["failed"], console["expired"]) == (1, 0, 0)
    assert (console["cancelled"], console["retries"], console["delivery_rate"]) == (0, 0, 1.0)
    assert total["delivery_rate"] == 0.6

    # stats == list --summary == delivery_attempts == dispatch_runs
    assert stat_hours_drift(store.engine) == {}
    counts = summary["counts"]
    assert total["sent"] == counts["sent"] == history["sent"] == sum(r["sent"] for r in runs) == 3
    assert total["failed"] == counts["failed"] == history["failed"] == 1
    assert total["failed"] == summary["failed_last_24h"] == sum(r["failed"] for r in runs)
    assert total["retries"] == history["retried"] == sum(r["retried"] for r in runs) == 1
    assert total["expired"] == counts["expired"] == sum(r["expired"] for r in runs) == 1
    assert "expired" not in history  # expired before any attempt
    assert total["cancelled"] == counts["cancelled"] == 1
    assert sum(history.values()) == sum(r["claimed"] for r in runs) == 5
    for field in ("sent", "failed", "expired", "cancelled", "retries"):
        assert total[field] == sum(g[field] for g in groups.values())

    # the queue now
    assert stats["queue"]["pending"] == counts["pending"] == 1
    assert stats["queue"]["sending"] == counts["sending"] == 0
    # one figure, one name: the same keys in both
    assert stats["queue"]["due"] == summary["due"] == 1
    assert stats["queue"]["oldest_due_age_seconds"] == summary["oldest_due_age_seconds"] == 90.0

    # lateness, checked against sent_at - scheduled_at of the listed reminders
    lateness: dict[str, list[float]] = {"telegram": [], "console": []}
    for row in sent_rows:
        delay = parse_time(row["sent_at"]) - parse_time(row["scheduled_at"])
        lateness[row["channel"]].append(delay.total_seconds())
    assert 30 <= min(lateness["telegram"]) < 31  # sent in the first run
    assert 90 <= max(lateness["telegram"]) < 91  # the retry, one minute later
    everything = lateness["telegram"] + lateness["console"]
    for group, values in ((telegram, lateness["telegram"]), (console, lateness["console"])):
        assert group["lateness_p50_seconds"] == pytest.approx(
            percentile_cont(values, 0.5), abs=2e-3
        )
        assert group["lateness_p95_seconds"] == pytest.approx(
            percentile_cont(values, 0.95), abs=2e-3
        )
        assert group["lateness_max_seconds"] == pytest.approx(max(values), abs=2e-3)
    assert total["lateness_p50_seconds"] == pytest.approx(
        percentile_cont(everything, 0.5), abs=2e-3
    )
    assert total["lateness_p95_seconds"] == pytest.approx(
        percentile_cont(everything, 0.95), abs=2e-3
    )
    assert total["lateness_max_seconds"] == pytest.approx(max(everything), abs=2e-3)

    # the runs, newest first, as the dispatcher reported them
    assert [r["id"] for r in runs] == [second.run_id, first.run_id]
    for row, report in zip(runs, (second, first), strict=True):
        assert {k: row[k] for k in report.counts()} == report.counts()
        assert row["exit_code"] == 0
        duration = parse_time(row["finished_at"]) - parse_time(row["started_at"])
        assert row["duration_seconds"] == pytest.approx(duration.total_seconds(), abs=1e-3)
    assert stats["last_success_at"] == runs[0]["finished_at"]
    since_success = clock() - parse_time(runs[0]["finished_at"])
    assert stats["seconds_since_last_success"] == pytest.approx(since_success.total_seconds())

    # the same numbers through the Python API
    api = compute_stats(store, timedelta(hours=24))
    assert api.as_dict()["total"]["sent"] == list_summary(store).counts["sent"] == 3
    assert api.total.delivery_rate == 0.6


def test_stats_counts_only_what_finished_inside_the_window(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    t0 = clock()
    for booking_id, start, chat in (("early", 10, "2001"), ("later", 100, "2002")):
        create_booking(
            store,
            booking_id,
            starts_at=t0 + minutes(start),
            ends_at=t0 + minutes(start + 60),
            to=[chat],
            remind=["at_start"],
        )
    with FakeTelegram(token=TOKEN) as tg:
        tg.script("2001", error(502, "Bad Gateway"))
        clock.set(t0 + minutes(10))
        dispatch(store, clock, database_url, tg.api_url, max_attempts=1)  # 502 → failed at once
        clock.set(t0 + minutes(100))
        dispatch(store, clock, database_url, tg.api_url)
    clock.set(t0 + minutes(101))

    recent = compute_stats(store, timedelta(minutes=30))
    assert [(g.channel, g.kind, g.sent, g.failed) for g in recent.groups] == [
        ("telegram", "at_start", 1, 0)
    ]
    assert recent.since == clock() - timedelta(minutes=30)

    longer = compute_stats(store, timedelta(hours=2))
    assert [(g.channel, g.kind, g.sent, g.failed) for g in longer.groups] == [
        ("telegram", "at_start", 1, 1)
    ]
    assert longer.total.delivery_rate == 0.5


def test_stats_counts_retries_by_when_the_attempt_started(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    t0 = clock()
    create_booking(
        store,
        "b",
        starts_at=t0 + minutes(10),
        ends_at=t0 + minutes(300),
        to=["3001"],
        remind=["at_start"],
    )
    with FakeTelegram(token=TOKEN) as tg:
        tg.script("3001", error(500, "oops"), error(500, "oops"))
        clock.set(t0 + minutes(10))
        dispatch(store, clock, database_url, tg.api_url)
        clock.set(t0 + minutes(12))
        dispatch(store, clock, database_url, tg.api_url)
    clock.set(t0 + minutes(13))
    assert attempt_outcomes(store) == {"retried": 2}

    assert compute_stats(store, timedelta(minutes=2)).total.retries == 1
    assert compute_stats(store, timedelta(minutes=5)).total.retries == 2
    # still pending: counted as retries, not as finished
    (group,) = compute_stats(store, timedelta(minutes=5)).groups
    assert (group.sent, group.failed, group.delivery_rate) == (0, 0, None)


def _insert_sent(store: Store, now: datetime, groups: dict[tuple[str, str], list[float]]) -> None:
    """Sent reminders with given lateness (seconds), straight into the tables."""
    with store.transaction() as conn:
        (booking_id,) = queries.insert_bookings(
            conn,
            [
                {
                    "external_id": "many",
                    "title": "Many",
                    "starts_at": now - timedelta(hours=2),
                    "ends_at": now - timedelta(hours=1),
                    "timezone": "UTC",
                    "status": "active",
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        rows = []
        for (channel, kind), delays in groups.items():
            for index, delay in enumerate(delays):
                scheduled = now - timedelta(hours=3)
                rows.append(
                    {
                        "booking_id": booking_id,
                        "kind": kind,
                        "channel": channel,
                        "recipient": f"r{index}",
                        "scheduled_at": scheduled,
                        "not_after": now,
                        "due_at": scheduled,
                        "status": Status.SENT.value,
                        "attempts": 1,
                        "sent_at": scheduled + timedelta(seconds=delay),
                        "created_at": now,
                        "updated_at": now,
                    }
                )
        conn.execute(insert(Notification), rows)


def test_lateness_percentiles_interpolate_like_percentile_cont(
    store: Store, clock: FrozenClock
) -> None:
    groups = {
        ("telegram", "at_start"): [float(s) for s in (7, 0, 100, 30, 10, 90, 20, 60, 40, 80, 50)],
        ("telegram", "hour_before"): [1.5, 11.5],
        ("console", "day_before"): [42.25],
        ("webhook", "before_end"): [5.0, 5.0, 5.0, 9.0],
    }
    _insert_sent(store, clock(), groups)

    result = compute_stats(store, timedelta(hours=1))

    found = {(g.channel, g.kind): g for g in result.groups}
    assert set(found) == set(groups)
    for key, values in groups.items():
        got = found[key]
        assert got.lateness_p50 == pytest.approx(percentile_cont(values, 0.5), abs=1e-3), key
        assert got.lateness_p95 == pytest.approx(percentile_cont(values, 0.95), abs=1e-3), key
        assert got.lateness_max == pytest.approx(max(values), abs=1e-3), key
        assert got.sent == len(values)
    assert found["telegram", "hour_before"].lateness_p95 == pytest.approx(11.0)
    everything = [v for values in groups.values() for v in values]
    assert result.total.lateness_p50 == pytest.approx(percentile_cont(everything, 0.5), abs=1e-3)
    assert result.total.lateness_p95 == pytest.approx(percentile_cont(everything, 0.95), abs=1e-3)
    assert result.total.sent == len(everything)


def test_stats_of_an_empty_store_has_no_groups_and_no_runs(store: Store) -> None:
    result = compute_stats(store, timedelta(hours=24))

    assert result.groups == ()
    assert result.total.sent == 0
    assert result.total.lateness_p50 is None
    assert result.total.delivery_rate is None
    assert result.runs == ()
    assert result.last_success_at is None
    assert result.seconds_since_last_success is None
    assert result.queue.as_dict() == {
        "pending": 0,
        "sending": 0,
        "due": 0,
        "oldest_due_age_seconds": None,
    }


def test_stats_lists_the_last_ten_runs_and_the_last_success(
    store: Store, clock: FrozenClock
) -> None:
    with store.transaction() as conn:
        for minute in range(12):
            started = clock() + minutes(minute)
            run_id = queries.start_run(conn, "host", 100 + minute, started)
            exit_code = 0 if minute < 9 else 3  # the last three runs failed
            queries.finish_run(
                conn, run_id, {"sent": minute}, exit_code, started + timedelta(seconds=2.5)
            )
    clock.set(clock() + minutes(12))

    result = compute_stats(store, timedelta(hours=1))

    assert [r.pid for r in result.runs] == list(range(111, 101, -1))
    assert [r.exit_code for r in result.runs[:4]] == [3, 3, 3, 0]
    assert {r.duration_seconds for r in result.runs} == {2.5}
    assert result.last_success_at == clock() - minutes(4) + timedelta(seconds=2.5)
    assert result.seconds_since_last_success == 237.5


@pytest.fixture
def executed(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """Every statement the store runs, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    yield seen
    event.remove(store.engine, "before_cursor_execute", record)


# SCANs that read only what they need: partial indexes (pending / sending rows only) and
# the newest-first walk of the runs (always under a LIMIT)
BOUNDED_SCANS = {
    "ix_notifications_due",
    "ix_notifications_lease",
    "ix_notifications_not_after",
    "ix_dispatch_runs_started_at",
}


def _sqlite_full_scans(plan: list[str]) -> list[str]:
    """Plan lines that read a whole table or a whole index of one."""
    found = []
    for line in plan:
        if not line.startswith("SCAN ") or line.split()[1] not in TABLES:
            continue
        index = line.split("INDEX ", 1)[1].split()[0] if "INDEX " in line else None
        if index not in BOUNDED_SCANS:
            found.append(line)
    return found


TABLES = (
    "notifications",
    "delivery_attempts",
    "dispatch_runs",
    "bookings",
    "stat_hours",
    "lateness_hours",
)


def test_stats_reads_through_indexes_never_a_full_scan(
    store: Store, executed: list[tuple[str, Any]]
) -> None:
    """A million finished rows must not make stats slow: every table is reached by an index."""
    compute_stats(store, timedelta(hours=24, minutes=30))  # half an hour read row by row
    statements = list(executed)
    assert len(statements) >= 8
    with store.engine.connect() as conn:
        for statement, parameters in statements:
            if store.engine.dialect.name == "sqlite":
                plan = [
                    row[-1]
                    for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                ]
                assert not _sqlite_full_scans(plan), (statement, plan)
            else:
                conn.execute(text("SET enable_seqscan = off"))
                plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)]
                assert not [line for line in plan if "Seq Scan" in line], (statement, plan)
        conn.rollback()


def test_the_full_scan_check_catches_an_index_walk() -> None:
    assert (
        _sqlite_full_scans(
            [
                "SEARCH notifications USING INDEX ix_notifications_updated_at (updated_at>?)",
                "SCAN notifications USING INDEX ix_notifications_lease",
                "SCAN anon_1",
            ]
        )
        == []
    )
    assert _sqlite_full_scans(
        ["SCAN notifications USING INDEX ix_notifications_recipient", "SCAN bookings"]
    ) == ["SCAN notifications USING INDEX ix_notifications_recipient", "SCAN bookings"]


def test_stats_command_renders_a_table_and_rejects_a_bad_window(
    database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    t0 = clock()
    create_booking(
        store,
        "b",
        starts_at=t0 + minutes(1),
        ends_at=t0 + minutes(60),
        to=["console:x"],
        remind=["at_start", "before_end"],
    )
    clock.set(t0 + minutes(1))
    dispatch(store, clock, database_url)
    cli = frozen_cli(monkeypatch, database_url, clock)

    table = cli.ok("stats", "--since", "1h").stdout
    lines = table.splitlines()
    assert lines[0].split("\t") == [
        "channel",
        "kind",
        "sent",
        "failed",
        "expired",
        "superseded",
        "cancelled",
        "retries",
    ]
    assert lines[1].split("\t")[:3] == ["console", "at_start", "1"]
    assert "queue: 1 pending, 0 sending, 0 due" in lines
    assert "last successful run: 06-01 12:01 UTC (now)" in lines

    bad = cli("stats", "--since", "yesterday")
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: invalid duration 'yesterday'")
    assert cli("stats", "--format", "csv").exit_code == 2
