"""The hourly counts ``stats`` and ``list --summary`` read (stat_hours, lateness_hours).

Triggers keep them; they must always equal counting the store afresh, and the
stats read from them must equal the stats read row by row.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select, update

from notifyctl import queries, stats
from notifyctl.db import Store, make_engine
from notifyctl.models import Booking, LatenessHour, Notification, StatHour, Status
from notifyctl.prune import prune
from notifyctl.runs import has_work
from notifyctl.service import cancel, create_booking
from notifyctl.service import summary as list_summary
from tests.conftest import _admin, _pg_url
from tests.fakes.telegram import FakeTelegram, chat_not_found, error
from tests.ops_support import TOKEN, dispatch, minutes
from tests.support import FrozenClock, stat_hours_drift
from tests.test_ops_stats import percentile_cont


def quantized(ms: int) -> int:
    """The rule of lateness_hours, in plain Python: exact below 1 s, else 3 significant digits."""
    size = abs(ms)
    step = 1
    while size >= 1000 * step:
        step *= 10
    rounded = (size + step // 2) // step * step
    return rounded if ms >= 0 else -rounded


def unfolded(store: Store) -> int:
    with store.reader() as conn:
        return sum(
            conn.scalar(select(func.count()).select_from(t).where(t.folded.is_(False))) or 0
            for t in (StatHour, LatenessHour)
        )


def insert_sent(store: Store, at: Sequence[tuple[datetime, int]], kind: str = "at_start") -> None:
    """Sent reminders finished at the given times, each ``ms`` milliseconds late."""
    with store.transaction() as conn:
        (booking_id,) = queries.insert_bookings(
            conn,
            [
                {
                    "external_id": f"sent-{kind}-{len(at)}",
                    "title": "Sent",
                    "starts_at": at[0][0],
                    "ends_at": at[0][0] + timedelta(hours=1),
                    "timezone": "UTC",
                    "status": "active",
                    "created_at": at[0][0],
                    "updated_at": at[0][0],
                }
            ],
        )
        rows = []
        for index, (finished, ms) in enumerate(at):
            scheduled = finished - timedelta(milliseconds=ms)
            rows.append(
                {
                    "booking_id": booking_id,
                    "kind": kind,
                    "channel": "telegram",
                    "recipient": f"r{index}",
                    "route": f"telegram:r{index}",
                    "alternative": 0,
                    "scheduled_at": scheduled,
                    "not_after": finished,
                    "due_at": scheduled,
                    "status": Status.SENT.value,
                    "attempts": 1,
                    "sent_at": finished,
                    "created_at": finished,
                    "updated_at": finished,
                }
            )
        conn.execute(insert(Notification), rows)


def test_kept_counts_equal_a_recount_through_create_dispatch_cancel_and_prune(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    t0 = clock()

    def book(booking_id: str, to: str, *kinds: str) -> None:
        create_booking(
            store,
            booking_id,
            starts_at=t0 + minutes(10),
            ends_at=t0 + minutes(70),
            to=[to],
            remind=list(kinds or ["at_start"]),
        )

    book("ok", "1001", "at_start", "before_end")
    book("bad", "1002")
    book("flaky", "1003|email:flaky@example.com")
    book("gone", "1005")
    cancel(store, ["gone"])
    assert stat_hours_drift(store.engine) == {}
    with FakeTelegram(token=TOKEN) as tg:
        tg.script("1002", chat_not_found())
        tg.script("1003", error(500, "Internal Server Error"))
        clock.set(t0 + minutes(10) + timedelta(seconds=30))
        dispatch(store, clock, database_url, tg.api_url, max_attempts=2)
        assert stat_hours_drift(store.engine) == {}
        clock.advance(3600)  # the next hour: the retry gives up and falls back to email
        dispatch(store, clock, database_url, tg.api_url, max_attempts=2)
    assert stat_hours_drift(store.engine) == {}
    assert unfolded(store) == 0  # every run folds what it appended

    with store.transaction() as conn:  # a finished row rewritten (a chat migration does this)
        conn.execute(
            update(Notification)
            .where(Notification.status == Status.SENT)
            .values(updated_at=clock() + timedelta(hours=2))
        )
    assert stat_hours_drift(store.engine) == {}

    clock.advance(timedelta(days=40).total_seconds())
    result = prune(store, timedelta(days=30), dry_run=False)
    assert result.as_dict()["notifications"] >= 4
    assert stat_hours_drift(store.engine) == {}
    assert list_summary(store).counts == {s.value: 0 for s in Status} | {
        "pending": 0,
    }


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([-1500, -999, -1, 0, 999, 1000, 1004, 1005, 9994, 9995, 99_950]),
            st.integers(-(10**9), 10**9),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_lateness_is_bucketed_alike_by_triggers_by_reads_and_by_the_rule(
    store: Store, clock: FrozenClock, lateness_ms: list[int]
) -> None:
    with store.transaction() as conn:
        conn.execute(delete(Notification))  # examples share the store
        conn.execute(delete(Booking))
        queries.fold_stat_hours(conn)
    now = clock()
    half_hour_ago = now.replace(minute=0, second=0, microsecond=0) - minutes(30)
    insert_sent(store, [(half_hour_ago + minutes(1), ms) for ms in lateness_ms])
    with store.reader() as conn:
        kept = conn.execute(
            select(LatenessHour.lateness_ms, func.sum(LatenessHour.count))
            .group_by(LatenessHour.lateness_ms)
            .having(func.sum(LatenessHour.count) != 0)
        ).all()
        # a window starting mid-hour reads this hour's rows themselves, bucketed in SQL
        read = queries.lateness_counts(conn, half_hour_ago)
    expected: dict[int, int] = {}
    for ms in lateness_ms:
        expected[quantized(ms)] = expected.get(quantized(ms), 0) + 1
    assert dict((int(ms), int(n)) for ms, n in kept) == expected
    assert {r.lateness_ms: r.number for r in read} == expected


def test_beyond_the_exact_limit_lateness_comes_from_the_hourly_counts(
    store: Store, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = clock()
    start = now - timedelta(hours=3, minutes=20)  # a window starting mid-hour
    early = [start + minutes(5), start + minutes(10)]  # the first, partial hour: row by row
    later = [start + timedelta(hours=1, minutes=m) for m in (0, 15, 61, 130)]
    before = [start - minutes(1)]  # outside the window
    delays = [250, 999, 1234, 5678, 61_234, 7, 90_500]
    placed = [(when, delays[i % len(delays)]) for i, when in enumerate((early + later) * 3)]
    insert_sent(store, placed)
    insert_sent(store, [(when, 100_000) for when in before], kind="hour_before")

    exact = stats.stats(store, now - start)
    monkeypatch.setattr(stats, "EXACT_LATENESS_LIMIT", 0)
    counted = stats.stats(store, now - start)

    assert exact.total.sent == counted.total.sent == len(placed)
    assert [(g.channel, g.kind) for g in counted.groups] == [("telegram", "at_start")]
    values = [quantized(ms) / 1000 for _, ms in placed]
    assert counted.total.lateness_p50 == pytest.approx(percentile_cont(values, 0.5), abs=1e-3)
    assert counted.total.lateness_p95 == pytest.approx(percentile_cont(values, 0.95), abs=1e-3)
    assert counted.total.lateness_max == pytest.approx(max(values), abs=1e-3)
    assert (exact.lateness_exact, counted.lateness_exact) == (True, False)
    for field in ("lateness_p50", "lateness_p95", "lateness_max"):
        assert getattr(counted.total, field) == pytest.approx(getattr(exact.total, field), rel=5e-3)


def test_a_window_counts_its_first_partial_hour_only_from_its_start(
    store: Store, clock: FrozenClock
) -> None:
    now = clock()
    start = now - timedelta(hours=2, minutes=30)
    insert_sent(store, [(start - timedelta(seconds=1), 10)], kind="day_before")
    insert_sent(store, [(start, 10), (start + minutes(29), 10)], kind="hour_before")
    insert_sent(store, [(start + timedelta(hours=2), 10)], kind="at_start")

    result = stats.stats(store, now - start)

    assert {(g.kind, g.sent) for g in result.groups} == {("hour_before", 2), ("at_start", 1)}


def test_a_cancel_leaves_counts_to_fold_and_the_next_dispatch_folds_them(
    store: Store, clock: FrozenClock, database_url: str
) -> None:
    t0 = clock()
    create_booking(
        store, "b", starts_at=t0 + timedelta(days=2), ends_at=t0 + timedelta(days=2, hours=1),
        to=["console:x"], remind=["at_start"],
    )  # fmt: skip
    with store.reader() as conn:
        assert not has_work(conn, t0)
    cancel(store, ["b"])
    assert unfolded(store) == 1
    with store.reader() as conn:
        assert has_work(conn, t0)  # the idle fast path would leave them unfolded

    dispatch(store, clock, database_url)

    assert unfolded(store) == 0
    with store.reader() as conn:
        assert not has_work(conn, t0)
        (row,) = conn.execute(select(StatHour.event, StatHour.count, StatHour.folded)).all()
    assert tuple(row) == ("cancelled", 1, True)


def readme_move_script() -> str:
    """The Python of the README's "Moving from SQLite to PostgreSQL", as a user pastes it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Moving from SQLite to PostgreSQL", 1)[1]
    script = section.split("<<'EOF'\n", 1)[1].split("\n   EOF", 1)[0]
    return textwrap.dedent(script)


def test_the_readme_move_to_postgresql_keeps_stats_exact(
    tmp_path: Path, sqlite_template: Path, pg_template: str, clock: FrozenClock
) -> None:
    source_url = f"sqlite:///{tmp_path / 'old.db'}"
    shutil.copy(sqlite_template, tmp_path / "old.db")
    source = Store(make_engine(source_url, create_file=False), clock)
    t0 = clock()
    for n, to in enumerate(["console:a", "console:b", "console:c"]):
        create_booking(
            source, f"b{n}", starts_at=t0 + minutes(10), ends_at=t0 + minutes(70), to=[to],
            remind=["at_start", "before_end"],
        )  # fmt: skip
    cancel(source, ["b2"])
    clock.set(t0 + minutes(11))
    dispatch(source, clock, source_url)
    before = stats.stats(source, timedelta(hours=24))
    source.close()

    name = f"notifyctl_t_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    target_url = _pg_url(name)
    try:
        moved = subprocess.run(
            [sys.executable, "-", source_url, target_url],
            input=readme_move_script(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert moved.returncode == 0, moved.stderr
        target = Store(make_engine(target_url, create_file=False), clock)
        try:
            assert stat_hours_drift(target.engine) == {}
            after = stats.stats(target, timedelta(hours=24))
        finally:
            target.close()
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert (after.groups, after.total) == (before.groups, before.total)
    assert (before.total.sent, before.total.cancelled) == (2, 2)
