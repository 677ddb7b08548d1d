"""dispatch end to end on SQLite and PostgreSQL against the fake Telegram Bot API.

The Dispatcher runs in-process with the frozen clock: pacing "sleeps" advance
the clock instead of waiting, so rate limits and backoffs cost no real time.
CLI tests go through the in-process runner (real clock); the few that need a
fresh process (logging to stderr) run ``python -m notifyctl``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from notifyctl import queries
from notifyctl.channels.netguard import JsonClient
from notifyctl.config import Settings
from notifyctl.dispatch import Dispatcher, DispatchOptions, RunReport
from notifyctl.models import (
    Booking,
    DeliveryAttempt,
    DispatchRun,
    Notification,
    Pacing,
    Status,
)
from notifyctl.service import Store, cancel, create_booking
from tests.fakes.telegram import (
    FakeTelegram,
    Reply,
    blocked_by_user,
    chat_not_found,
    close_connection,
    error,
    hang,
    http_status_only,
    migrated,
    too_many_requests,
)
from tests.support import Cli, FrozenClock

TOKEN = "123456789:AAH-dispatch_Test_SECRET_x9"
REPO = Path(__file__).resolve().parent.parent
N = Notification


# --- helpers --------------------------------------------------------------------------


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram(token=TOKEN) as fake:
        yield fake


def fake_monotonic(clock: FrozenClock) -> Callable[[], float]:
    epoch = clock()
    return lambda: (clock() - epoch).total_seconds()


def dispatcher(
    store: Store,
    clock: FrozenClock,
    api_url: str,
    *,
    token: str | None = TOKEN,
    http_client: JsonClient | None = None,
    **options: Any,
) -> Dispatcher:
    settings = Settings(
        database_url=str(store.engine.url), telegram_token=token, telegram_api_url=api_url
    )
    return Dispatcher(
        store,
        settings,
        DispatchOptions(**{"wait": False, **options}),  # waiting has its own tests
        stdout=io.StringIO(),
        rng=random.Random(1),
        sleep=clock.sleep,
        monotonic=fake_monotonic(clock),
        http_client=http_client,
    )


def run(store: Store, clock: FrozenClock, tg: FakeTelegram, **kwargs: Any) -> RunReport:
    return dispatcher(store, clock, tg.api_url, **kwargs).run()


def remind(
    store: Store,
    booking_id: str,
    chat: str = "12345",
    *,
    starts_in: timedelta = timedelta(minutes=30),
    kinds: tuple[str, ...] = ("hour_before",),
    title: str | None = None,
) -> None:
    """A booking whose reminders of ``kinds`` are computed from now + ``starts_in``."""
    start = store.clock() + starts_in
    create_booking(
        store,
        booking_id,
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=[chat],
        remind=list(kinds),
        title=title,
        timezone="Europe/Berlin",
    )


def reminders(store: Store) -> list[dict[str, Any]]:
    with store.reader() as conn:
        return [r._asdict() for r in conn.execute(select(N).order_by(N.id))]


def reminder(store: Store, kind: str = "hour_before", booking: str = "b1") -> dict[str, Any]:
    with store.reader() as conn:
        row = conn.execute(
            select(N)
            .join(Booking, Booking.id == N.booking_id)
            .where(Booking.external_id == booking, N.kind == kind)
        ).one()
        return row._asdict()


def attempts(store: Store, notification_id: int | None = None) -> list[dict[str, Any]]:
    stmt = select(DeliveryAttempt).order_by(DeliveryAttempt.id)
    if notification_id is not None:
        stmt = stmt.where(DeliveryAttempt.notification_id == notification_id)
    with store.reader() as conn:
        return [r._asdict() for r in conn.execute(stmt)]


def dispatch_runs(store: Store) -> list[dict[str, Any]]:
    with store.reader() as conn:
        return [r._asdict() for r in conn.execute(select(DispatchRun).order_by(DispatchRun.id))]


def claim(store: Store, token: str, lease: float = 300.0) -> list[Any]:
    """What a run does first: take every due reminder under ``token`` (then crash, say)."""
    with store.transaction() as conn:
        return list(queries.claim_due(conn, store.clock(), 100, token, timedelta(seconds=lease)))


class HookClient(JsonClient):
    """The Bot API client, running ``before`` just before each request leaves."""

    def __init__(self, before: Callable[[], object]) -> None:
        super().__init__()
        self.before = before

    def post_json(self, url: str, body: dict[str, Any], **timeouts: float) -> tuple[int, bytes]:
        self.before()
        return super().post_json(url, body, **timeouts)


class ShortReadTimeout(JsonClient):
    """Every request with a 0.25 s read timeout (the channel's default is 15 s)."""

    def post_json(self, url: str, body: dict[str, Any], **timeouts: float) -> tuple[int, bytes]:
        return super().post_json(url, body, connect_timeout=5.0, read_timeout=0.25)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_no_token(*texts: object) -> None:
    secret = TOKEN.split(":", 1)[1]
    for text in texts:
        assert secret not in str(text)


# --- sent --------------------------------------------------------------------------------


def test_sent_stores_message_id_attempt_and_run_counts(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    t0 = clock()

    report = run(store, clock, tg)

    assert (report.claimed, report.sent, report.exit_code) == (1, 1, 0)
    [message] = tg.sent()
    assert message.chat_id == "12345"
    assert message.parse_mode == "HTML"
    row = reminder(store)
    assert row["status"] == Status.SENT
    assert row["provider_message_id"] == str(message.message_id)
    assert row["sent_at"] == t0
    assert row["attempts"] == 1
    assert row["lease_token"] is None
    assert row["last_error"] is None
    [attempt] = attempts(store)
    assert attempt["notification_id"] == row["id"]
    assert attempt["run_id"] == report.run_id
    assert (attempt["outcome"], attempt["http_status"], attempt["uncertain"]) == (
        "sent",
        200,
        False,
    )
    [dispatch_run] = dispatch_runs(store)
    assert dispatch_run["id"] == report.run_id
    assert dispatch_run["pid"] == os.getpid()
    assert (dispatch_run["claimed"], dispatch_run["sent"], dispatch_run["failed"]) == (1, 1, 0)
    assert dispatch_run["exit_code"] == 0
    assert dispatch_run["finished_at"] is not None


def test_text_arrives_html_escaped_with_unicode_intact(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", title="<b>&</b> Café 瑜伽 😀")

    run(store, clock, tg)

    [message] = tg.sent()
    assert message.parse_mode == "HTML"
    assert message.text == (
        'Reminder: "&lt;b&gt;&amp;&lt;/b&gt; Café 瑜伽 😀" starts in 30 minutes, '
        "at 14:30 (Europe/Berlin)."
    )


def test_relative_words_are_computed_when_sent_not_when_scheduled(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    # booking tomorrow 18:00 Berlin; the day_before reminder is due today 18:00 ...
    start = datetime(2026, 6, 2, 16, 0, tzinfo=UTC)
    create_booking(
        store,
        "b1",
        starts_at="2026-06-02 18:00",
        ends_at="2026-06-02 19:00",
        to=["12345"],
        remind=["day_before"],
        timezone="Europe/Berlin",
        title="Yoga",
    )
    # ... but dispatch was down until 09:00 on the day itself
    clock.set(start - timedelta(hours=9))

    run(store, clock, tg)

    [message] = tg.sent()
    assert message.text == 'Reminder: "Yoga" starts today at 18:00 (Europe/Berlin).'


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        ("2026-03-28 18:00", datetime(2026, 3, 28, 17, 0, tzinfo=UTC)),
        ("2026-03-29 18:00", datetime(2026, 3, 29, 16, 0, tzinfo=UTC)),
        ("2026-10-24 18:00", datetime(2026, 10, 24, 16, 0, tzinfo=UTC)),
        ("2026-10-25 18:00", datetime(2026, 10, 25, 17, 0, tzinfo=UTC)),
    ],
    ids=["before-spring", "after-spring", "before-autumn", "after-autumn"],
)
def test_local_wall_clock_survives_the_store_across_dst(
    store: Store, clock: FrozenClock, tg: FakeTelegram, local: str, utc: datetime
) -> None:
    clock.set(utc - timedelta(hours=25))
    create_booking(
        store,
        "b1",
        starts_at=local,
        ends_at="2026-12-31 00:00",
        to=["12345"],
        remind=["day_before"],
        timezone="Europe/Berlin",
        title="Yoga",
    )
    clock.set(utc - timedelta(hours=24))

    run(store, clock, tg)

    row = reminder(store, "day_before")
    assert row["scheduled_at"] == utc - timedelta(hours=24)
    assert row["not_after"] == utc
    [message] = tg.sent()
    assert message.text == 'Reminder: "Yoga" starts tomorrow at 18:00 (Europe/Berlin).'


# --- 429 -------------------------------------------------------------------------------


def test_429_requeues_at_retry_after_without_counting_an_attempt(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    tg.script("12345", too_many_requests(7))
    t0 = clock()

    report = run(store, clock, tg)

    assert (report.rate_limited, report.sent, report.retried) == (1, 0, 0)
    row = reminder(store)
    assert row["status"] == Status.PENDING
    assert row["due_at"] == t0 + timedelta(seconds=7)
    assert row["attempts"] == 0
    assert "429" in (row["last_error"] or "")
    [attempt] = attempts(store)
    assert (attempt["outcome"], attempt["http_status"]) == ("rate_limited", 429)
    with store.reader() as conn:
        [paused_until] = conn.scalars(select(Pacing.next_slot_at)).all()
    assert paused_until >= t0 + timedelta(seconds=7)

    clock.set(t0 + timedelta(seconds=7))
    again = run(store, clock, tg)

    assert again.sent == 1
    assert reminder(store)["attempts"] == 1


def test_429_pauses_the_bot_for_every_chat(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "111")
    remind(store, "b2", "222")
    tg.script("111", too_many_requests(5))
    t0 = clock()

    report = run(store, clock, tg, batch_size=1, concurrency=1)

    # the other chat waited for the pause; then the 429'd one went at its retry time
    assert (report.rate_limited, report.sent) == (1, 2)
    assert reminder(store, booking="b2")["sent_at"] >= t0 + timedelta(seconds=5)
    assert reminder(store, booking="b1")["sent_at"] >= t0 + timedelta(seconds=5)
    assert [m.chat_id for m in tg.messages] == ["111", "222", "111"]
    assert tg.count_429 == 1


def test_never_sent_after_not_after_even_when_a_pause_delays_it(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "111", kinds=("day_before",))  # due first
    remind(store, "b2", "222", starts_in=timedelta(seconds=3))  # useless 3 s from now
    tg.script("111", too_many_requests(10))

    report = run(store, clock, tg, batch_size=1, concurrency=1)

    assert "222" not in [m.chat_id for m in tg.messages]
    assert tg.messages[0].chat_id == "111"
    late = reminder(store, booking="b2")
    assert late["status"] == Status.EXPIRED
    assert report.expired >= 1


def test_a_pause_longer_than_the_lease_gives_claims_back_once(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "111", kinds=("day_before",))  # claimed first
    remind(store, "b2", "222")
    tg.script("111", too_many_requests(600))  # longer than the 300 s lease
    t0 = clock()

    report = run(store, clock, tg, concurrency=1)

    assert (report.rate_limited, report.sent) == (1, 0)
    waiting = reminder(store, booking="b2")
    assert (waiting["status"], waiting["attempts"]) == (Status.PENDING, 0)
    assert [m.chat_id for m in tg.messages] == ["111"]
    assert report.claimed == 2
    assert report.released <= 1
    with store.reader() as conn:
        [next_slot] = conn.scalars(select(Pacing.next_slot_at)).all()
    assert next_slot <= t0 + timedelta(seconds=601)


# --- chat migration -----------------------------------------------------------------


def test_chat_migration_moves_the_chat_and_retries_in_the_same_run(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "-4001")
    remind(store, "b2", "-4001", starts_in=timedelta(hours=3))  # due in 2 h
    tg.script("-4001", migrated(-1004001))

    report = run(store, clock, tg)

    assert report.moved == 1
    assert report.exit_code == 0
    moved = reminder(store, booking="b1")
    assert moved["status"] == Status.SENT
    assert moved["recipient"] == "-1004001"
    assert moved["attempts"] == 1  # the migration answer was not counted
    assert [m.chat_id for m in tg.messages[:2]] == ["-4001", "-1004001"]
    assert tg.messages[1].status == 200
    assert [a["outcome"] for a in attempts(store, moved["id"])] == ["moved", "sent"]
    assert reminder(store, booking="b2")["recipient"] == "-1004001"


def test_chat_migration_keeps_the_other_reminders_on_schedule(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "-4001")
    remind(store, "b2", "-4001", starts_in=timedelta(days=7), kinds=("day_before", "before_end"))
    tg.script("-4001", migrated(-1004001))

    run(store, clock, tg)

    assert len(tg.sent()) == 1
    for kind in ("day_before", "before_end"):
        later = reminder(store, kind, booking="b2")
        assert later["recipient"] == "-1004001"
        assert later["status"] == Status.PENDING
        assert later["due_at"] == later["scheduled_at"]


def test_a_replayed_create_after_the_chat_moved_arms_nothing_sent_again(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    start = clock() + timedelta(minutes=30)
    booking: dict[str, Any] = {
        "starts_at": start,
        "ends_at": start + timedelta(hours=1),
        "to": ["-4001"],
        "remind": ["hour_before", "before_end"],
        "timezone": "Europe/Berlin",
    }
    create_booking(store, "b1", **booking)
    run(store, clock, tg)  # b1's hour_before went to the old chat
    remind(store, "b2", "-4001")
    tg.script("-4001", migrated(-1004001))
    run(store, clock, tg)  # b2's answer says the chat moved
    sent = len(tg.sent())

    replayed = create_booking(store, "b1", **booking)  # the booking system re-syncs b1
    run(store, clock, tg)

    assert replayed.action == "unchanged"
    assert len(tg.sent()) == sent
    went = reminder(store, booking="b1")
    assert (went["status"], went["recipient"]) == (Status.SENT, "-1004001")
    assert went["route"] == "telegram:-1004001"
    assert reminder(store, "before_end", booking="b1")["recipient"] == "-1004001"
    assert len(reminders(store)) == 3


# --- passing failures: backoff ---------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (error(500, "Internal Server Error"), 500),
        (http_status_only(502, "<html>502 Bad Gateway</html>"), 502),
        (close_connection(), None),
    ],
    ids=["500-json", "502-html", "connection-closed"],
)
def test_server_and_connection_errors_back_off_within_jitter(
    store: Store, clock: FrozenClock, tg: FakeTelegram, reply: Reply, status: int | None
) -> None:
    remind(store, "b1", "12345")
    tg.script("12345", reply)
    t0 = clock()

    report = run(store, clock, tg)

    assert (report.retried, report.sent) == (1, 0)
    row = reminder(store)
    assert row["status"] == Status.PENDING
    assert row["attempts"] == 1
    assert t0 + timedelta(seconds=24) <= row["due_at"] <= t0 + timedelta(seconds=36)
    assert row["last_error"]
    [attempt] = attempts(store)
    assert (attempt["outcome"], attempt["http_status"]) == ("retried", status)

    clock.set(row["due_at"])
    assert run(store, clock, tg).sent == 1


def test_connection_refused_backs_off(store: Store, clock: FrozenClock) -> None:
    remind(store, "b1", "12345")
    t0 = clock()

    report = dispatcher(store, clock, closed_port_url()).run()

    assert report.retried == 1
    row = reminder(store)
    assert row["status"] == Status.PENDING
    assert t0 + timedelta(seconds=24) <= row["due_at"] <= t0 + timedelta(seconds=36)
    assert "ConnectionError" in (row["last_error"] or "")


def test_gives_up_after_max_attempts(store: Store, clock: FrozenClock, tg: FakeTelegram) -> None:
    remind(store, "b1", "12345")
    tg.fail_all(http_status_only(502))

    for expected_attempts in (1, 2):
        assert run(store, clock, tg, max_attempts=3).retried == 1
        row = reminder(store)
        assert (row["status"], row["attempts"]) == (Status.PENDING, expected_attempts)
        clock.set(row["due_at"])
    report = run(store, clock, tg, max_attempts=3)

    assert (report.failed, report.retried) == (1, 0)
    row = reminder(store)
    assert row["status"] == Status.FAILED
    assert row["attempts"] == 3
    assert "gave up after 3 attempts" in (row["last_error"] or "")
    assert len(tg.messages) == 3
    clock.advance(3600)
    assert run(store, clock, tg, max_attempts=3).claimed == 0


def test_retry_that_would_land_after_not_after_expires(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345", starts_in=timedelta(seconds=20))  # backoff is >= 24 s
    tg.script("12345", http_status_only(502))

    report = run(store, clock, tg)

    assert report.expired == 1
    row = reminder(store)
    assert row["status"] == Status.EXPIRED
    assert "too late" in (row["last_error"] or "")


# --- permanent failures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status"),
    [(chat_not_found(), 400), (blocked_by_user(), 403)],
    ids=["400-chat-not-found", "403-blocked"],
)
def test_400_and_403_fail_at_once(
    store: Store, clock: FrozenClock, tg: FakeTelegram, reply: Reply, status: int
) -> None:
    remind(store, "b1", "12345")
    tg.script("12345", reply)

    report = run(store, clock, tg)

    assert (report.failed, report.retried) == (1, 0)
    row = reminder(store)
    assert row["status"] == Status.FAILED
    assert row["attempts"] == 1
    assert (row["last_error"] or "").startswith(f"{status}: ")
    clock.advance(3600)
    assert run(store, clock, tg).claimed == 0
    assert len(tg.messages) == 1


# --- bad credentials -------------------------------------------------------------------


@pytest.mark.parametrize(("revoked", "status"), [(True, 401), (False, 404)], ids=["401", "404"])
def test_bad_credentials_stop_the_run_and_put_claims_back(
    store: Store, clock: FrozenClock, tg: FakeTelegram, revoked: bool, status: int
) -> None:
    for n in range(3):
        remind(store, f"b{n}", f"10{n}")
    if revoked:
        tg.revoke()
    token = TOKEN if revoked else "123456789:WRONG-token"

    report = run(store, clock, tg, token=token, concurrency=1)

    assert report.exit_code == 3
    assert report.error is not None
    assert "credentials rejected" in report.error
    assert report.sent == 0
    assert len(tg.messages) == 1  # the others were not attempted
    assert tg.messages[0].status == status
    for row in reminders(store):
        assert (row["status"], row["attempts"], row["lease_token"]) == (Status.PENDING, 0, None)
    [dispatch_run] = dispatch_runs(store)
    assert dispatch_run["exit_code"] == 3
    assert [a["outcome"] for a in attempts(store)] == ["bad_credentials"]


def test_bad_credentials_through_the_cli_exit_3(
    cli: Cli, store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    clock.set(datetime.now(UTC))
    remind(store, "b1", "12345")
    tg.revoke()

    result = cli("dispatch", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=tg.api_url)

    assert result.exit_code == 3
    assert result.stderr.startswith("error: ")
    assert "401" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert_no_token(result.stdout, result.stderr)
    assert reminder(store)["status"] == Status.PENDING
    assert reminder(store)["attempts"] == 0


def test_missing_token_exits_3_and_claims_nothing(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")

    report = run(store, clock, tg, token=None)

    assert report.exit_code == 3
    assert "TELEGRAM_BOT_TOKEN" in (report.error or "")
    assert report.claimed == 0
    assert tg.messages == []
    row = reminder(store)
    assert (row["status"], row["attempts"]) == (Status.PENDING, 0)


def test_missing_token_through_the_cli_exit_3(cli: Cli, store: Store, clock: FrozenClock) -> None:
    clock.set(datetime.now(UTC))
    remind(store, "b1", "12345")

    result = cli("dispatch")

    assert result.exit_code == 3
    assert result.stderr.startswith("error: TELEGRAM_BOT_TOKEN")
    assert reminder(store)["status"] == Status.PENDING


# --- uncertain delivery ------------------------------------------------------------


def test_read_timeout_retries_and_marks_the_attempt_uncertain(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    tg.script("12345", hang(30))  # the fake got it (it may have been delivered)

    with ShortReadTimeout() as client:
        report = run(store, clock, tg, http_client=client)

    assert report.retried == 1
    row = reminder(store)
    assert row["status"] == Status.PENDING
    assert row["attempts"] == 1
    assert "timed out" in (row["last_error"] or "").lower()
    [attempt] = attempts(store)
    assert attempt["outcome"] == "retried"
    assert attempt["uncertain"] is True
    assert attempt["http_status"] is None


# --- superseding, not_after ------------------------------------------------------------


def test_only_the_latest_due_reminder_is_sent_the_others_expire(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345", kinds=("day_before", "hour_before"))

    report = run(store, clock, tg)

    assert (report.sent, report.expired) == (1, 1)
    assert reminder(store, "hour_before")["status"] == Status.SENT
    superseded = reminder(store, "day_before")
    assert superseded["status"] == Status.EXPIRED
    assert "superseded" in (superseded["last_error"] or "")
    [message] = tg.sent()
    assert "in 30 minutes" in message.text


def test_reminder_past_not_after_is_expired_and_never_sent(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    clock.advance(31 * 60)  # the booking started a minute ago

    report = run(store, clock, tg)

    assert (report.expired, report.claimed) == (1, 0)
    row = reminder(store)
    assert row["status"] == Status.EXPIRED
    assert row["attempts"] == 0
    assert row["last_error"]
    assert tg.messages == []


# --- cancel, lost leases ----------------------------------------------------------------


def test_cancel_before_a_run_sends_nothing(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    cancel(store, ["b1"])

    report = run(store, clock, tg)

    assert report.idle
    assert tg.messages == []
    assert reminder(store)["status"] == Status.CANCELLED


def test_cancel_while_sending_is_not_overwritten_nor_retried(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    with HookClient(lambda: cancel(store, ["b1"])) as client:
        report = run(store, clock, tg, http_client=client)

    assert report.lease_lost == 1
    assert report.sent == 0
    row = reminder(store)
    assert row["status"] == Status.CANCELLED
    assert row["sent_at"] is None

    clock.advance(600)
    assert run(store, clock, tg).claimed == 0
    assert len(tg.messages) == 1


def test_cancel_between_claim_and_record_wins_over_the_fenced_write(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    [claimed] = claim(store, "run-a")
    assert reminder(store)["status"] == Status.SENDING

    assert cancel(store, ["b1"]).reminders == 1
    with store.transaction() as conn:
        won = queries.record_outcome(
            conn,
            claimed.id,
            "run-a",
            {"status": Status.PENDING, "due_at": clock() + timedelta(seconds=30)},
        )

    assert won is False
    assert reminder(store)["status"] == Status.CANCELLED
    clock.advance(600)
    assert run(store, clock, tg).claimed == 0
    assert tg.messages == []


def test_lost_lease_records_nothing_over_a_newer_owner(store: Store, clock: FrozenClock) -> None:
    remind(store, "b1", "12345")
    [first] = claim(store, "run-a", lease=60)
    clock.advance(61)
    with store.transaction() as conn:
        rescued = queries.rescue_expired_leases(conn, clock(), 10)
    [second] = claim(store, "run-b", lease=60)
    assert rescued.requeued == [first.id] == [second.id]

    with store.transaction() as conn:
        stale = queries.record_outcome(conn, first.id, "run-a", {"status": Status.FAILED})
    row = reminder(store)
    assert stale is False
    assert (row["status"], row["lease_token"]) == (Status.SENDING, "run-b")

    with store.transaction() as conn:
        assert queries.record_outcome(conn, second.id, "run-b", {"status": Status.SENT})
    assert reminder(store)["status"] == Status.SENT


def test_dispatch_that_lost_its_lease_mid_send_records_nothing(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")

    def newer_owner_takes_over() -> None:
        with store.transaction() as conn:
            conn.execute(update(N).values(lease_token="newer-owner"))

    with HookClient(newer_owner_takes_over) as client:
        report = run(store, clock, tg, http_client=client)

    assert (report.lease_lost, report.sent) == (1, 0)
    row = reminder(store)
    assert (row["status"], row["lease_token"]) == (Status.SENDING, "newer-owner")


def test_reschedule_after_a_send_rearms_the_reminder(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    run(store, clock, tg)
    assert reminder(store)["status"] == Status.SENT

    remind(store, "b1", "12345", starts_in=timedelta(days=1))
    rearmed = reminder(store)
    assert (rearmed["status"], rearmed["attempts"], rearmed["sent_at"]) == (
        Status.PENDING,
        0,
        None,
    )
    assert rearmed["due_at"] == clock() + timedelta(hours=23)

    clock.set(rearmed["due_at"])
    report = run(store, clock, tg)

    assert report.sent == 2  # the re-armed reminder, and the change notice (SPEC §10)
    assert [m.chat_id for m in tg.sent()] == ["12345", "12345", "12345"]
    # both are due in one batch: which of the two takes the chat's first slot is open
    later = [m.text for m in tg.sent()[1:]]
    assert sum(" moved: now " in text for text in later) == 1
    assert sum("in 60 minutes" in text for text in later) == 1


# --- rescue ----------------------------------------------------------------------------


def test_rescue_requeues_an_expired_lease_and_delivers_it(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    claim(store, "crashed-run", lease=300)
    clock.advance(301)

    report = run(store, clock, tg)

    assert (report.rescued, report.sent) == (1, 1)
    row = reminder(store)
    assert row["status"] == Status.SENT
    assert row["attempts"] == 2  # the crashed run's attempt counts
    history = attempts(store, row["id"])
    assert [a["outcome"] for a in history] == ["rescued", "sent"]
    assert history[0]["uncertain"] is True


def test_rescue_fails_a_reminder_out_of_attempts(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    claim(store, "crashed-run", lease=300)
    clock.advance(301)

    report = run(store, clock, tg, max_attempts=1)

    assert (report.failed, report.sent) == (1, 0)
    row = reminder(store)
    assert row["status"] == Status.FAILED
    assert row["lease_token"] is None
    assert [a["outcome"] for a in attempts(store)] == ["rescued"]
    assert tg.messages == []


@pytest.mark.parametrize(
    ("to", "fate"),
    [("555", (Status.CANCELLED, "555", "suppressed")), ("555|666", (Status.SENT, "666", None))],
    ids=["alone", "chain"],
)
def test_rescue_never_sends_to_a_recipient_suppressed_while_the_run_was_out(
    store: Store, clock: FrozenClock, tg: FakeTelegram, to: str, fate: tuple[Any, ...]
) -> None:
    remind(store, "b1", to)
    claim(store, "crashed-run", lease=300)
    remind(store, "b2", "555")
    tg.script("555", blocked_by_user())
    run(store, clock, tg)  # b2 is refused: 555 is suppressed while b1 is out
    clock.advance(301)

    run(store, clock, tg)

    rescued = reminder(store)
    assert (rescued["status"], rescued["recipient"], rescued["reason"]) == fate
    assert [m.chat_id for m in tg.sent()] == (["666"] if fate[1] == "666" else [])


def test_a_reminder_out_when_its_recipient_is_suppressed_does_not_wait_for_it(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "555")
    remind(store, "b2", "555")
    tg.script("555", blocked_by_user(), too_many_requests(1))  # whichever goes first is gone

    run(store, clock, tg)

    assert sorted(r["status"] for r in reminders(store)) == [Status.CANCELLED, Status.FAILED]
    [cancelled] = [r for r in reminders(store) if r["status"] == Status.CANCELLED]
    assert cancelled["reason"] == "suppressed"
    clock.advance(60)
    run(store, clock, tg)
    assert len(tg.messages) == 2


def test_no_change_notice_waits_for_a_recipient_suppressed_and_no_longer_booked(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    start = clock() + timedelta(minutes=30)
    booking: dict[str, Any] = {"remind": ["hour_before"], "timezone": "Europe/Berlin"}
    create_booking(
        store, "b1", starts_at=start, ends_at=start + timedelta(hours=1), to=["555"], **booking
    )
    run(store, clock, tg)  # 555 got b1's reminder
    create_booking(
        store, "b1", starts_at=start, ends_at=start + timedelta(hours=1), to=["777"], **booking
    )
    remind(store, "b2", "555")
    tg.script("555", blocked_by_user())
    run(store, clock, tg)  # 555 is gone

    later = start + timedelta(hours=1)
    create_booking(
        store, "b1", starts_at=later, ends_at=later + timedelta(hours=1), to=["777"], **booking
    )

    waiting = [r for r in reminders(store) if r["status"] == Status.PENDING]
    assert [r["recipient"] for r in waiting if r["recipient"] == "555"] == []


def test_a_live_lease_is_left_alone(store: Store, clock: FrozenClock, tg: FakeTelegram) -> None:
    remind(store, "b1", "12345")
    claim(store, "busy-run", lease=300)
    clock.advance(299)

    report = run(store, clock, tg)

    assert report.idle
    assert reminder(store)["lease_token"] == "busy-run"
    assert tg.messages == []


# --- output for cron ---------------------------------------------------------------------


@pytest.fixture
def tg_env(tg: FakeTelegram) -> dict[str, str | None]:
    return {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": tg.api_url}


def test_cli_is_silent_when_nothing_is_due(cli: Cli, tg_env: dict[str, str | None]) -> None:
    cli.ok("create", "b1", "--starts-at", "+3d", "--ends-at", "+3d1h", "--to", "12345")

    result = cli("dispatch", **tg_env)

    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


def test_cli_prints_one_summary_line(
    cli: Cli, tg: FakeTelegram, tg_env: dict[str, str | None]
) -> None:
    cli.ok("create", "b1", "--starts-at", "+30m", "--ends-at", "+1h", "--to", "12345")

    result = cli("dispatch", **tg_env)

    assert result.exit_code == 0
    assert re.fullmatch(r"dispatch: 1 sent, 1 expired in \d+\.\ds\n", result.stdout)
    assert result.stderr == ""
    assert len(tg.sent()) == 1


def test_cli_json_summary_parses(cli: Cli, tg: FakeTelegram, tg_env: dict[str, str | None]) -> None:
    cli.ok("create", "b1", "--starts-at", "+30m", "--ends-at", "+1h", "--to", "12345")

    result = cli("dispatch", "--json", **tg_env)

    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["claimed"], summary["exit_code"]) == (1, 1, 0)
    assert summary["by_channel"] == {"telegram": {"sent": 1}}


def _snapshot(store: Store) -> tuple[list[dict[str, Any]], int, int]:
    with store.reader() as conn:
        tried = conn.scalar(select(func.count()).select_from(DeliveryAttempt))
        runs = conn.scalar(select(func.count()).select_from(DispatchRun))
    return reminders(store), tried or 0, runs or 0


def test_cli_dry_run_shows_what_would_be_sent_and_changes_nothing(
    cli: Cli, store: Store, tg: FakeTelegram, tg_env: dict[str, str | None]
) -> None:
    cli.ok("create", "b1", "--starts-at", "+30m", "--ends-at", "+1h", "--to", "12345")
    cli.ok("create", "b2", "--starts-at", "+3d", "--ends-at", "+3d1h", "--to", "67890")
    before = _snapshot(store)

    result = cli("dispatch", "--dry-run", **tg_env)

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert any("hour_before to telegram:12345" in line for line in lines)
    assert not any("67890" in line for line in lines)
    assert _snapshot(store) == before
    assert tg.messages == []


def test_cli_dry_run_lists_only_what_a_run_would_send(
    cli: Cli, tg_env: dict[str, str | None]
) -> None:
    cli.ok("create", "b1", "--starts-at", "+30m", "--ends-at", "+1h", "--to", "12345")

    result = cli("dispatch", "--dry-run", "--json", **tg_env)

    assert [item["kind"] for item in json.loads(result.stdout)] == ["hour_before"]


def subprocess_env(database_url: str, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFYCTL_", "TELEGRAM_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        NOTIFYCTL_DATABASE_URL=database_url,
        NOTIFYCTL_NO_WAIT="1",
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL=api_url,
        PYTHONPATH=str(REPO),
    )
    return env


def run_cli_process(
    database_url: str, api_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifyctl", "dispatch", *args],
        env=subprocess_env(database_url, api_url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_verbose_details_go_to_stderr(
    database_url: str, store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    clock.set(datetime.now(UTC))
    remind(store, "b1", "12345")

    done = run_cli_process(database_url, tg.api_url, "-v")

    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"dispatch: 1 sent in \d+\.\ds\n", done.stdout)
    assert re.search(r"reminder \d+ telegram:12345 sent", done.stderr)


def test_cli_verbose_works_on_every_in_process_run(cli: Cli, tg_env: dict[str, str | None]) -> None:
    cli.ok("create", "b0", "--starts-at", "+30m", "--ends-at", "+1h", "--to", "555")
    cli.ok("dispatch", **tg_env)  # an earlier run in this process, with its own stderr
    cli.ok("create", "b1", "--starts-at", "+30m", "--ends-at", "+1h", "--to", "12345")

    result = cli("dispatch", "-v", **tg_env)

    assert result.exit_code == 0
    assert "Logging error" not in result.stderr
    assert re.search(r"reminder \d+ telegram:12345 sent", result.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--concurrency", "0"], "--concurrency"),
        (["--rate-limit", "-1"], "--rate-limit"),
        (["--rate-limit", "0"], "--rate-limit"),
        (["--max-seconds", "50", "--lease-seconds", "50"], "--lease-seconds"),
        (["--max-seconds", "60", "--lease-seconds", "30"], "--lease-seconds"),
        (["--max-attempts", "0"], "--max-attempts"),
        (["--batch-size", "ten"], "--batch-size"),
    ],
)
def test_cli_invalid_options_exit_2(
    cli: Cli, store: Store, tg_env: dict[str, str | None], args: list[str], message: str
) -> None:
    cli.ok("create", "b1", "--starts-at", "+30m", "--ends-at", "+1h", "--to", "12345")

    result = cli("dispatch", *args, **tg_env)

    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert result.stdout == ""
    assert all(r["status"] == Status.PENDING for r in reminders(store))
    assert dispatch_runs(store) == []


def test_every_concurrent_send_keeps_its_connection(
    store: Store, clock: FrozenClock, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    # more sends in flight than urllib3's default 10 connections per host: each one
    # dropped on return was a warning on stderr (cron mails it) and a new TCP handshake
    caplog.set_level(logging.WARNING, logger="urllib3")
    chats = [str(7000 + i) for i in range(12)]
    for i, chat in enumerate(chats):
        remind(store, f"b{i}", chat)
        tg.script(chat, hang(1.0))  # all twelve are out at once

    report = run(store, clock, tg, concurrency=12, rate_limit=10_000)

    assert report.sent == 12
    assert [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")] == []


# --- secrets -------------------------------------------------------------------------------


def test_token_stays_out_of_logs_and_store_when_the_api_is_unreachable(
    store: Store, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="urllib3")
    caplog.set_level(logging.DEBUG, logger="notifyctl")
    remind(store, "b1", "12345")

    report = dispatcher(store, clock, closed_port_url()).run()

    assert report.retried == 1
    row = reminder(store)
    [attempt] = attempts(store)
    assert "ConnectionError: HTTPConnection(host='127.0.0.1'" in (row["last_error"] or "")
    assert any(r.name == "notifyctl.dispatch" for r in caplog.records)
    assert_no_token(
        row["last_error"],
        attempt["error"],
        caplog.text,
        *(r.getMessage() for r in caplog.records),
        *(r.args for r in caplog.records),
    )


def test_token_stays_out_of_urllib3_debug_log(
    store: Store, clock: FrozenClock, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="urllib3")
    caplog.set_level(logging.DEBUG, logger="notifyctl")
    remind(store, "b1", "111")
    remind(store, "b2", "222")
    tg.script("222", http_status_only(502))

    report = run(store, clock, tg, concurrency=1)

    assert (report.sent, report.retried) == (1, 1)
    urllib3_lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("/bot<redacted>/sendMessage" in line for line in urllib3_lines)
    assert_no_token(
        caplog.text,
        *(r.getMessage() for r in caplog.records),
        *(r.args for r in caplog.records),
        *(a["error"] for a in attempts(store)),
        *(r["last_error"] for r in reminders(store)),
    )


def test_token_stays_out_of_cli_output_when_the_api_is_unreachable(
    database_url: str, store: Store, clock: FrozenClock
) -> None:
    clock.set(datetime.now(UTC))
    remind(store, "b1", "12345")

    done = run_cli_process(database_url, closed_port_url(), "-v")

    assert done.returncode == 0, done.stderr
    assert "1 retried" in done.stdout
    assert "ConnectionError" in done.stderr  # the detail is shown ...
    assert_no_token(done.stdout, done.stderr)  # ... without the token
    assert_no_token(reminder(store)["last_error"])


def test_batches_out_together_each_keep_their_own_lease(
    store: Store, clock: FrozenClock, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    chats = [str(1000 + i) for i in range(12)]
    for i, chat in enumerate(chats):
        remind(store, f"b{i}", chat)
    tokens: list[str] = []
    claim_due = queries.claim_due

    def spy(conn: Any, now: datetime, limit: int, token: str, *args: Any) -> Any:
        rows = claim_due(conn, now, limit, token, *args)
        if rows:
            tokens.append(token)
        return rows

    monkeypatch.setattr(queries, "claim_due", spy)
    # the next batch is claimed while the last sends of the one before are out
    report = run(store, clock, tg, batch_size=4, concurrency=2)

    assert (report.claimed, report.sent, report.lease_lost) == (12, 12, 0)
    assert sorted(m.chat_id for m in tg.messages) == chats  # each exactly once
    assert len(set(tokens)) == len(tokens) == 3
    with store.reader() as conn:
        assert conn.scalar(select(func.count()).select_from(DeliveryAttempt)) == 12
        assert set(conn.scalars(select(N.status))) == {Status.SENT}
        assert conn.scalar(select(func.count()).where(N.lease_token.is_not(None))) == 0
