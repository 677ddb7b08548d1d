"""Several real ``notifyctl dispatch`` processes on one store, against the fake Bot API.

Each test starts the CLI as separate processes (``python -m notifyctl``) with
the environment cron would give it, on SQLite and on PostgreSQL. Cross-process
synchronisation uses the fake's ``wait_for``, never sleeps.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from notifyctl.models import DeliveryAttempt, Notification, Status
from notifyctl.service import Store
from tests.fakes.telegram import FakeTelegram, hang
from tests.support import FrozenClock, clean_env, dispatchers, due_now, finish

pytestmark = pytest.mark.slow

TOKEN = "123456789:AAH-concurrency_Test_SECRET"
N = Notification
FIRST_CHAT = 7_000_000


def due_chats(store: Store, clock: FrozenClock, count: int) -> list[str]:
    """``count`` hour_before reminders due now (real time), each to its own chat."""
    chats = [str(FIRST_CHAT + i) for i in range(count)]
    due_now(store, clock, chats)
    return chats


def statuses(store: Store) -> Counter[str]:
    with store.reader() as conn:
        return Counter(str(s) for s in conn.scalars(select(N.status)))


def env_for(database_url: str, api_url: str) -> dict[str, str]:
    return clean_env(
        database_url, NOTIFYCTL_NO_WAIT="1", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=api_url
    )


def throughput(tg: FakeTelegram) -> float:
    times = sorted(m.at for m in tg.sent())
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def test_four_processes_send_every_reminder_exactly_once(
    database_url: str, store: Store, clock: FrozenClock
) -> None:
    chats = due_chats(store, clock, 1200)

    with FakeTelegram(token=TOKEN) as tg:
        with dispatchers(4, env_for(database_url, tg.api_url), "--rate-limit", "10000") as procs:
            reports = finish(procs)
        received = Counter(m.chat_id for m in tg.messages)
        rate = throughput(tg)

    duplicates = sum(n - 1 for n in received.values() if n > 1)
    lost = [c for c in chats if c not in received]
    shares = [r["sent"] for r in reports]
    print(f"\n4 dispatchers, 1200 reminders: {rate:.0f} msg/s, {duplicates} duplicates, {shares}")
    assert duplicates == 0
    assert lost == []
    assert set(received) == set(chats)
    assert sum(r["sent"] for r in reports) == 1200
    assert sum(r["claimed"] for r in reports) == 1200
    assert sum(1 for r in reports if r["sent"]) >= 2  # the work really was shared
    assert statuses(store) == Counter({Status.SENT.value: 1200})


def test_four_processes_share_the_rate_limit_without_429(
    database_url: str, store: Store, clock: FrozenClock
) -> None:
    chats = due_chats(store, clock, 160)

    with FakeTelegram(token=TOKEN, rate_limit=30) as tg:
        with dispatchers(4, env_for(database_url, tg.api_url)) as procs:  # default --rate-limit 25
            reports = finish(procs)
        received = Counter(m.chat_id for m in tg.sent())
        rate = throughput(tg)
        peak = tg.max_per_second()
        count_429 = tg.count_429

    print(
        f"\n4 dispatchers vs 30 msg/s provider: {rate:.1f} msg/s sustained, "
        f"peak {peak} in 1 s, {count_429} x 429"
    )
    assert count_429 == 0
    assert peak <= 30
    assert sorted(received) == sorted(chats)
    assert set(received.values()) == {1}
    assert sum(r["sent"] for r in reports) == 160
    assert statuses(store) == Counter({Status.SENT.value: 160})


def test_killed_dispatch_loses_nothing_once_its_lease_runs_out(
    database_url: str, store: Store, clock: FrozenClock
) -> None:
    chats = due_chats(store, clock, 20)
    lease = ("--lease-seconds", "11", "--max-seconds", "10", "--concurrency", "4")

    with FakeTelegram(token=TOKEN) as tg:
        tg.fail_all(hang(120))  # every send stays in flight until the fake stops
        with dispatchers(1, env_for(database_url, tg.api_url), *lease) as [victim]:
            tg.wait_for(4, timeout=30)  # mid-run: four sends in flight
            victim.kill()
            victim.wait()
        assert victim.returncode == -9
        tg.clear()
        tg.reset()

        # the claims stay with the dead run until its lease runs out ...
        assert statuses(store) == Counter({Status.SENDING.value: 20})
        with dispatchers(1, env_for(database_url, tg.api_url)) as procs:
            [early] = finish(procs)
        assert (early["claimed"], early["rescued"], early["sent"]) == (0, 0, 0)
        assert tg.messages == []

        # ... which we let run out instead of waiting 11 s
        with store.transaction() as conn:
            conn.execute(
                update(N)
                .where(N.status == Status.SENDING)
                .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        with dispatchers(1, env_for(database_url, tg.api_url)) as procs:
            [later] = finish(procs)
        received = Counter(m.chat_id for m in tg.sent())

    assert (later["rescued"], later["sent"]) == (20, 20)
    assert sorted(received) == sorted(chats)
    assert set(received.values()) == {1}
    assert statuses(store) == Counter({Status.SENT.value: 20})
    with store.reader() as conn:
        attempts = conn.scalars(select(N.attempts)).all()
        rescues = conn.scalars(
            select(DeliveryAttempt.outcome).where(DeliveryAttempt.outcome == "rescued")
        ).all()
    assert set(attempts) == {2}  # the killed run's attempt is counted
    assert len(rescues) == 20
