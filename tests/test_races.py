"""Races and faults of SPEC §5 ("Races and faults"): one regression test per defect of review.

Each test drives the real dispatch engine against the fake Telegram Bot API
(a real HTTP server on 127.0.0.1) with the frozen clock, and interferes at
the moment that broke the promise: while a request is in flight, while the
database is locked, while a run waits for its pacing slot.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from sqlalchemy import select, update

from notifyctl import queries, rawstore
from notifyctl.channels.base import SendResult
from notifyctl.channels.netguard import JsonClient
from notifyctl.config import Settings
from notifyctl.db import make_engine
from notifyctl.dispatch import RENDER_LEAD, Dispatcher, DispatchOptions
from notifyctl.errors import DatabaseError
from notifyctl.message import render_for
from notifyctl.models import (
    Booking,
    DeliveryAttempt,
    DispatchRun,
    Notification,
    Reason,
    RecipientState,
    Status,
)
from notifyctl.pacing import Pacer, SharedSlots
from notifyctl.runs import Action
from notifyctl.service import Store, cancel, create_booking, reconcile
from notifyctl.stopping import StopRequest
from tests.fakes.telegram import FakeTelegram, error, migrated
from tests.support import Cli, FrozenClock
from tests.test_dispatch import (
    TOKEN,
    attempts,
    claim,
    dispatcher,
    remind,
    reminder,
    tg,
)

__all__ = ["tg"]  # the fixture, shared with test_dispatch

N = Notification
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


class AfterClient(JsonClient):
    """The Bot API client, running ``after`` once the answer is in, before the run records it.

    Whatever ``after`` commits, commits while the send is in flight. Every one
    made is closed when its test ends (the run does not own a client it is given).
    """

    made: ClassVar[list[AfterClient]] = []

    def __init__(self, after: Callable[[], object]) -> None:
        super().__init__()
        self.after = after
        AfterClient.made.append(self)

    def post_json(self, url: str, body: dict[str, Any], **timeouts: float) -> tuple[int, bytes]:
        answer = super().post_json(url, body, **timeouts)
        self.after()
        return answer


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while AfterClient.made:
        AfterClient.made.pop().close()


def move_booking(store: Store, start: datetime, chat: str = "12345", **kw: Any) -> Any:
    return create_booking(
        store,
        "b1",
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=[chat],
        remind=kw.pop("remind", ["day_before"]),
        timezone="Europe/Berlin",
        **kw,
    )


# --- 1. a reschedule that commits during a send wins ---------------------------------------


@pytest.mark.parametrize("answer", ["sent", "500"])
def test_reschedule_during_a_send_rearms_the_reminder_for_its_new_time(
    store: Store, clock: FrozenClock, tg: FakeTelegram, answer: str
) -> None:
    start = clock() + timedelta(hours=23)  # day_before is due now
    move_booking(store, start)
    if answer == "500":
        tg.script("12345", error(500, "Internal Server Error"))
    later = start + timedelta(days=7)
    results: list[Any] = []
    client = AfterClient(lambda: results.append(move_booking(store, later)))

    report = dispatcher(store, clock, tg.api_url, http_client=client).run()

    assert [r.action for r in results] == ["rescheduled"]
    assert report.lease_lost == 1  # the in-flight outcome lost to the newer schedule
    row = reminder(store, "day_before")
    assert row["status"] == Status.PENDING
    assert row["scheduled_at"] == later - timedelta(hours=24)
    assert row["due_at"] == later - timedelta(hours=24)  # never an old backoff time
    assert row["attempts"] == 0
    history = [a["outcome"] for a in attempts(store, row["id"])]
    assert history == ["sent" if answer == "sent" else "retried"]  # the attempt is history
    assert move_booking(store, later).action == "unchanged"
    clock.set(later - timedelta(hours=24))
    dispatcher(store, clock, tg.api_url).run()
    assert reminder(store, "day_before")["status"] == Status.SENT


def test_cancel_during_a_send_stays_cancelled_and_is_never_retried(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    tg.script("12345", error(500, "Internal Server Error"))
    client = AfterClient(lambda: cancel(store, ["b1"]))

    dispatcher(store, clock, tg.api_url, http_client=client).run()
    clock.advance(3600)
    dispatcher(store, clock, tg.api_url).run()

    row = reminder(store)
    assert row["status"] == Status.CANCELLED
    assert row["reason"] == Reason.BOOKING_CANCELLED
    assert len(tg.messages) == 1


# --- 2. what create read is what it writes (PostgreSQL: no claim in between) -------------


@postgresql_only
def test_rows_create_has_read_cannot_be_claimed_before_it_commits(
    store: Store, clock: FrozenClock
) -> None:
    remind(store, "b1", "12345")
    with store.transaction() as creating:
        [booking] = queries.load_bookings(creating, ["b1"], lock=True).values()
        queries.load_notifications(creating, [booking.id], lock=True)
        with store.transaction() as claiming:
            claimed = queries.claim_due(claiming, clock(), 10, "run-a", timedelta(seconds=300))
    assert claimed == []


# --- 3. the text is rendered after every wait ----------------------------------------------


def test_text_is_rendered_after_the_pacing_wait(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345", starts_in=timedelta(minutes=46))  # hour_before is due
    sent_at: list[datetime] = []
    client = AfterClient(lambda: sent_at.append(clock()))
    run = dispatcher(store, clock, tg.api_url, http_client=client, max_seconds=120)
    key = run._channel("telegram").pacing_key
    with store.transaction() as conn:  # another host's 429 paused the bot for 90 s
        queries.ensure_pacing_row(conn, key, clock())
        queries.pause_sender(conn, key, clock() + timedelta(seconds=90), clock())

    run.run()

    [message] = tg.messages
    assert sent_at[0] >= clock() - timedelta(seconds=1)
    assert "in 44 minutes" in message.text  # 46 minutes minus the 90 s wait
    with store.reader() as conn:
        booking = conn.execute(select(Booking)).one()
    expected, _ = render_for(booking, "hour_before", "telegram", "12345", sent_at[0], None)
    assert message.text == expected.text


def test_a_reminder_sent_after_midnight_never_says_tomorrow_about_today(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    clock.set(datetime(2026, 6, 1, 21, 59, 50, tzinfo=UTC))  # 23:59:50 in Berlin
    start = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)  # 10:00 in Berlin, the next day
    for n in range(22):  # one group: 20 a minute, so the last two go after midnight
        create_booking(
            store,
            f"b{n}",
            starts_at=start,
            ends_at=start + timedelta(hours=1),
            to=["-4001"],
            remind=["start-11h"],  # due 21:00 UTC, already due
            timezone="Europe/Berlin",
        )

    sent_at: list[datetime] = []
    client = AfterClient(lambda: sent_at.append(clock()))
    # one sender thread: the frozen clock moves only by this run's own pacing waits
    run = dispatcher(store, clock, tg.api_url, http_client=client, concurrency=1, max_seconds=120)
    run.run()

    texts = [m.text for m in tg.sent()]
    assert len(texts) == 22
    midnight = datetime(2026, 6, 1, 22, 0, tzinfo=UTC)
    before = sum(when < midnight for when in sent_at)
    assert 0 < before < 22
    assert ["tomorrow at 10:00" in t for t in texts] == [True] * before + [False] * (22 - before)
    assert all("today at 10:00" in t for t in texts[before:])


# --- 4. a chat that moved is remembered ----------------------------------------------------


def test_replayed_create_after_a_chat_migration_stays_unchanged(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    start = clock() + timedelta(minutes=30)
    kinds = ["hour_before", "before_end"]
    move_booking(store, start, chat="-4001", remind=kinds)
    tg.script("-4001", migrated(-1004001))
    dispatcher(store, clock, tg.api_url).run()

    replay = move_booking(store, start, chat="-4001", remind=kinds)

    assert replay.action == "unchanged"
    assert (replay.added, replay.cancelled) == (0, 0)
    rows = {r["kind"]: r for r in (reminder(store, k) for k in kinds)}
    assert {r["recipient"] for r in rows.values()} == {"-1004001"}
    assert rows["hour_before"]["status"] == Status.SENT
    clock.set(start + timedelta(minutes=55))
    dispatcher(store, clock, tg.api_url).run()
    assert reminder(store, "before_end")["status"] == Status.SENT
    assert [m.chat_id for m in tg.sent()] == ["-1004001", "-1004001"]


# --- 5. a busy database never turns a delivered message into a resend ---------------------


@sqlite_only
def test_record_waits_out_a_writer_that_holds_sqlite_past_its_busy_timeout(
    database_url: str, clock: FrozenClock, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rawstore, "SQLITE_BUSY_TIMEOUT_MS", 20)
    store = Store(make_engine(database_url, create_file=False), clock)
    remind(store, "b1", "12345")
    path = database_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the run's backoff: the writer lets go on the 5th
        waits.append(seconds)
        clock.advance(seconds)
        if len(waits) == 5:
            blocker.execute("COMMIT")

    client = AfterClient(lambda: blocker.execute("BEGIN IMMEDIATE"))
    run = dispatcher(store, clock, tg.api_url, http_client=client)
    run.sleep = sleep

    report = run.run()

    assert report.exit_code == 0
    assert report.sent == 1
    assert len(waits) == 5
    assert reminder(store)["status"] == Status.SENT
    clock.advance(3600)
    dispatcher(store, clock, tg.api_url).run()
    assert len(tg.messages) == 1  # never sent again
    blocker.close()
    store.close()


@sqlite_only
def test_pacing_reservation_is_patient_then_translated(
    database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rawstore, "SQLITE_BUSY_TIMEOUT_MS", 20)
    engine = make_engine(database_url, create_file=False)
    blocker = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    tries: list[datetime] = []

    def patiently(work: Callable[[], Any], deadline: datetime) -> Any:
        while True:
            tries.append(clock())
            try:
                return work()
            except DatabaseError:
                if clock() >= deadline:
                    raise
                clock.advance(1)
                if len(tries) == 3:
                    blocker.execute("COMMIT")

    slots = SharedSlots(Store(engine, clock), "bot", 25.0, patiently)
    assert slots.take(clock() + timedelta(seconds=10)) == clock()
    assert len(tries) == 4

    blocker.execute("BEGIN IMMEDIATE")
    late = SharedSlots(Store(engine, clock), "bot2", 25.0, patiently)
    with pytest.raises(DatabaseError, match="database is locked"):
        late.take(clock() + timedelta(seconds=2))
    blocker.execute("COMMIT")
    blocker.close()
    engine.dispose()


# --- the one fenced writer: each outcome applies only where its lease still holds --------


def test_fenced_writes_of_many_shapes_apply_where_the_lease_holds(
    store: Store, clock: FrozenClock
) -> None:
    for booking in ("b1", "b2", "b3"):
        remind(store, booking)
    sent, retried, lost = claim(store, "token-1")
    now = clock()
    later = now + timedelta(minutes=2)
    writes = [
        queries.FencedWrite(
            sent.id,
            "token-1",
            {"status": Status.SENT, "sent_at": now, "updated_at": now, "sent_text": "It's <on>"},
        ),
        queries.FencedWrite(
            retried.id,
            "token-1",
            {"status": Status.PENDING, "due_at": later, "last_error": None, "updated_at": now},
            give_back_attempt=True,
        ),
        queries.FencedWrite(lost.id, "token-0", {"status": Status.SENT, "updated_at": now}),
    ]
    history = {
        "notification_id": sent.id,
        "run_id": None,
        "started_at": now,
        "finished_at": later,
        "outcome": Action.SENT,
        "http_status": 200,
        "error": None,
        "uncertain": True,
    }

    with store.transaction() as conn:
        won = queries.record_outcomes(conn, writes)
        queries.insert_attempts(conn, [history, {**history, "channel": "telegram"}])

    assert won == {sent.id, retried.id}
    by_id = {r["id"]: r for r in (reminder(store, booking=b) for b in ("b1", "b2", "b3"))}
    assert by_id[sent.id] | {"sent_at": now, "sent_text": "It's <on>"} == by_id[sent.id]
    assert (by_id[sent.id]["status"], by_id[sent.id]["lease_token"]) == (Status.SENT, None)
    assert by_id[retried.id]["due_at"] == later
    assert (by_id[retried.id]["status"], by_id[retried.id]["attempts"]) == (Status.PENDING, 0)
    assert (by_id[lost.id]["status"], by_id[lost.id]["lease_token"]) == (Status.SENDING, "token-1")
    rows = attempts(store, sent.id)
    assert [(r["started_at"], r["finished_at"], r["uncertain"]) for r in rows] == [
        (now, later, True)
    ] * 2
    assert [(r["outcome"], r["channel"]) for r in rows] == [
        (Action.SENT, None),
        (Action.SENT, "telegram"),
    ]


# --- 6. a missing channel configuration stops only that channel ---------------------------


def telegram_and_console_due(store: Store) -> None:
    """One booking whose hour_before reminders (Telegram and console) are due now."""
    start = store.clock() + timedelta(minutes=30)
    create_booking(
        store,
        "b1",
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=["12345", "console:desk"],
        remind=["hour_before"],
    )


def test_missing_token_gives_back_telegram_and_delivers_the_console(
    cli: Cli, store: Store, clock: FrozenClock
) -> None:
    clock.set(datetime.now(UTC))
    telegram_and_console_due(store)

    preview = cli("dispatch", "--dry-run")
    result = cli("dispatch")

    assert preview.exit_code == 3
    assert "TELEGRAM_BOT_TOKEN" in preview.stderr
    assert result.exit_code == 3
    assert "[console:desk]" in result.stdout
    assert result.stderr.startswith("error: TELEGRAM_BOT_TOKEN is not set")
    assert "given back" in result.stderr
    with store.reader() as conn:
        rows = {r.channel: r for r in conn.execute(select(N))}
    assert rows["console"].status == Status.SENT
    assert rows["telegram"].status == Status.PENDING
    assert rows["telegram"].attempts == 0
    assert rows["telegram"].due_at == rows["telegram"].scheduled_at


def test_rejected_token_stops_telegram_only(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    telegram_and_console_due(store)
    tg.revoke(TOKEN)

    report = dispatcher(store, clock, tg.api_url).run()

    assert report.exit_code == 3
    assert "telegram: credentials rejected" in (report.error or "")
    assert report.sent == 1
    with store.reader() as conn:
        rows = {r.channel: r for r in conn.execute(select(N))}
    assert rows["telegram"].status == Status.PENDING
    assert rows["telegram"].attempts == 0


# --- 8. times with an offset and no zone keep that offset ---------------------------------


@sqlite_only
def test_offset_times_without_a_zone_render_in_that_offset(cli: Cli) -> None:
    now = datetime.now(UTC).astimezone(notifyctl_tz(1))
    start = (now + timedelta(minutes=30)).replace(second=0, microsecond=0)
    created = cli.ok(
        "create",
        "b1",
        "--starts-at",
        start.isoformat(),
        "--ends-at",
        (start + timedelta(hours=1)).isoformat(),
        "--to",
        "console:me",
        "--remind",
        "hour_before",
    )
    sent = cli.ok("dispatch")

    assert "time zone UTC+01:00" in created.stdout
    assert f"{start:%H:%M} (UTC+01:00)" in sent.stdout


def notifyctl_tz(hours: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


# --- 9. smaller ones -----------------------------------------------------------------------


def test_a_reminder_made_useless_is_expired_even_when_its_recipient_has_a_password(
    store: Store, clock: FrozenClock
) -> None:
    start = clock() + timedelta(days=2)
    to = ["webhook:https://user:s3cret@hooks.example.com/booking"]
    create_booking(store, "b1", starts_at=start, ends_at=start + timedelta(hours=1), to=to)

    result = create_booking(  # moved to a start ten minutes ago
        store,
        "b1",
        starts_at=clock() - timedelta(minutes=10),
        ends_at=clock() + timedelta(minutes=50),
        to=to,
    )

    assert result.cancelled == 2  # day_before and hour_before can no longer be of use
    row = reminder(store, "day_before")
    assert row["status"] == Status.EXPIRED
    assert row["reason"] == Reason.USELESS


def test_ctrl_c_is_recorded_as_exit_130(store: Store, clock: FrozenClock, tg: FakeTelegram) -> None:
    remind(store, "b1", "12345")

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dispatcher(store, clock, tg.api_url, http_client=AfterClient(interrupt)).run()

    with store.reader() as conn:
        [exit_code] = conn.scalars(select(DispatchRun.exit_code)).all()
    assert exit_code == 130


# --- reconcile: the fate of one reminder when create writes its booking again -------------

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD = (T0 + timedelta(hours=1), T0 + timedelta(hours=2))
NEW = (T0 + timedelta(days=1), T0 + timedelta(days=1, hours=1))
PAST = (T0 - timedelta(hours=1), T0 + timedelta(hours=1))


@pytest.mark.parametrize(
    ("status", "reason", "wanted", "useless", "reactivating", "fate"),
    [
        (Status.PENDING, None, OLD, False, False, "keep"),
        (Status.PENDING, None, NEW, False, False, "rearm"),
        (Status.SENDING, None, OLD, False, False, "keep"),  # its outcome applies
        (Status.SENDING, None, NEW, False, False, "rearm"),  # the newer intent wins
        (Status.PENDING, None, None, False, False, "cancel"),
        (Status.SENDING, None, None, False, False, "cancel"),
        (Status.PENDING, None, None, True, False, "expire"),
        (Status.SENDING, None, None, True, False, "expire"),
        (Status.FAILED, None, NEW, False, False, "rearm"),
        (Status.FAILED, None, OLD, False, False, "keep"),
        (Status.EXPIRED, None, NEW, False, False, "rearm"),
        (Status.SENT, None, NEW, False, False, "rearm"),
        (Status.SENT, None, PAST, False, False, "keep"),  # new time already passed
        (Status.SENT, None, OLD, False, False, "keep"),
        (Status.SENT, None, None, False, False, "keep"),
        (Status.CANCELLED, Reason.REMOVED, OLD, False, False, "rearm"),
        (Status.CANCELLED, Reason.CANCELLED, OLD, False, False, "keep"),
        (Status.CANCELLED, Reason.BOOKING_CANCELLED, OLD, False, True, "rearm"),
        (Status.CANCELLED, Reason.BOOKING_CANCELLED, None, False, True, "keep"),
    ],
)
def test_reconcile_table(
    status: Status,
    reason: Reason | None,
    wanted: tuple[datetime, datetime] | None,
    useless: bool,
    reactivating: bool,
    fate: str,
) -> None:
    decided = reconcile(
        status, reason, OLD, wanted, useless=useless, reactivating=reactivating, now=T0
    )
    assert decided.value == fate


def test_rearm_revokes_the_lease_of_a_reminder_in_flight(store: Store, clock: FrozenClock) -> None:
    remind(store, "b1", "12345")
    with store.transaction() as conn:
        queries.claim_due(conn, clock(), 10, "run-a", timedelta(seconds=300))
        conn.execute(update(N).values(updated_at=clock()))
    start = clock() + timedelta(hours=5)

    result = create_booking(
        store,
        "b1",
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=["12345"],
        remind=["hour_before"],
        timezone="Europe/Berlin",
    )

    assert result.rescheduled == 1
    row = reminder(store)
    assert (row["status"], row["lease_token"]) == (Status.PENDING, None)
    with store.transaction() as conn:
        won = queries.record_outcome(conn, row["id"], "run-a", {"status": Status.SENT})
    assert won is False


# --- the run stops waiting for a send that ignores every deadline -----------------------


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from notifyctl.channels import CHANNELS, channel_module
    from tests import probe_channel

    monkeypatch.setitem(CHANNELS, "probe", "tests.probe_channel:ProbeChannel")
    channel_module.cache_clear()
    probe_channel.sent.clear()
    probe_channel.script.clear()
    yield probe_channel
    probe_channel.script.clear()
    channel_module.cache_clear()


@sqlite_only
def test_a_send_stuck_past_its_deadline_is_abandoned_as_uncertain(store: Store, probe: Any) -> None:
    store.clock = lambda: datetime.now(UTC)  # real time: the stuck send holds a real thread
    start = store.clock() + timedelta(minutes=30)
    create_booking(
        store,
        "b1",
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=["probe:stuck", "probe:fine"],
        remind=["hour_before"],
    )
    release = threading.Event()

    def stuck(message: Any) -> Any:
        release.wait(30)
        return SendResult.sent("late")

    probe.script.extend([stuck])
    settings = Settings(database_url=str(store.engine.url), send_deadline=0.2)
    run = Dispatcher(
        store, settings, DispatchOptions(max_seconds=0.3, concurrency=2), stdout=io.StringIO()
    )

    report = run.run()
    release.set()

    assert report.exit_code == 0
    assert report.sent == 1
    assert report.retried == 1
    with store.reader() as conn:
        rows = {r.recipient: r for r in conn.execute(select(N))}
        [attempt] = [a for a in conn.execute(select(DeliveryAttempt)) if a.uncertain]
    assert rows["stuck"].status == Status.PENDING
    assert rows["fine"].status == Status.SENT
    assert attempt.notification_id == rows["stuck"].id
    assert "send deadline" in (attempt.error or "")


def test_reminders_rearmed_together_mid_run_send_only_the_latest(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    start = clock() + timedelta(minutes=30)
    kinds = ["day_before", "hour_before"]  # both overdue: the run starts by superseding one
    move_booking(store, start, remind=kinds)
    moved: list[Any] = []

    def reschedule_once() -> None:
        if not moved:  # the in-flight reschedule re-arms both kinds, both due at once
            moved.append(move_booking(store, start + timedelta(minutes=10), remind=kinds))

    run = dispatcher(store, clock, tg.api_url, http_client=AfterClient(reschedule_once))
    run.run()

    assert [m.text.split(" starts ")[0] for m in tg.messages] == ['Reminder: "b1"'] * 2
    assert reminder(store, "day_before")["status"] == Status.EXPIRED
    assert reminder(store, "day_before")["reason"] == Reason.SUPERSEDED
    assert reminder(store, "hour_before")["status"] == Status.SENT


def run_with_first_pacing_wait(
    store: Store,
    clock: FrozenClock,
    tg: FakeTelegram,
    meanwhile: Callable[[], None],
    *,
    in_lead: bool = False,
) -> None:
    """One run (a send at a time) that calls ``meanwhile`` in its first pacing wait: the
    second message to a chat waits for its turn after a claim that included it. With
    ``in_lead``, in the first wait of the render lead instead: its text is ready then."""
    done: list[bool] = []

    def sleep(seconds: float) -> None:
        lead = seconds == RENDER_LEAD.total_seconds()
        if not done and (lead or not in_lead):
            meanwhile()
            done.append(True)
        clock.advance(seconds)

    run = dispatcher(store, clock, tg.api_url, concurrency=1)
    run.sleep = sleep
    run._pacer = Pacer(store, run.options.rate_limit, sleep, run._patiently)
    run.run()
    assert done, "no such pacing wait: the meanwhile change never happened"


@pytest.mark.parametrize("in_lead", [False, True], ids=["pacing-wait", "render-lead"])
def test_a_reschedule_between_claim_and_send_stops_the_old_text(
    store: Store, clock: FrozenClock, tg: FakeTelegram, in_lead: bool
) -> None:
    """Committed while the claim waits for its turn, or in the lead after its text was
    rendered for that turn: the booking is read again before the request leaves."""
    remind(store, "b1", "12345")
    remind(store, "b2", "12345")  # the same chat: its turn comes a second later
    later = clock() + timedelta(hours=3)

    def reschedule() -> None:
        move = {"starts_at": later, "ends_at": later + timedelta(hours=1)}
        create_booking(store, "b2", to=["12345"], remind=["hour_before"], **move)

    run_with_first_pacing_wait(store, clock, tg, reschedule, in_lead=in_lead)

    assert [m.text for m in tg.messages] == [tg.messages[0].text]  # only b1 went out
    moved = reminder(store, booking="b2")
    assert (moved["status"], moved["due_at"]) == (Status.PENDING, later - timedelta(hours=1))


def test_a_title_changed_in_the_render_lead_is_in_the_text_that_leaves(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    remind(store, "b2", "12345", title="Yoga")  # the same chat: its turn comes a second later
    start = reminder(store, booking="b2")["scheduled_at"] + timedelta(hours=1)

    def retitle() -> None:  # same times: the reminder stays claimed, its booking changes
        times = {"starts_at": start, "ends_at": start + timedelta(hours=1)}
        create_booking(store, "b2", to=["12345"], remind=["hour_before"], title="Pilates", **times)

    run_with_first_pacing_wait(store, clock, tg, retitle, in_lead=True)

    assert len(tg.messages) == 2
    assert "Pilates" in tg.messages[1].text
    assert "Yoga" not in tg.messages[1].text
    assert reminder(store, booking="b2")["status"] == Status.SENT


def test_a_stop_request_gives_back_what_has_not_gone_out_and_ends_the_run_as_130(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    for booking in ("b1", "b2", "b3"):  # one chat: b2 waits for its turn, b3 behind it
        remind(store, booking, "12345")
    due = reminder(store, booking="b2")["due_at"]
    stop = StopRequest()
    run = dispatcher(store, clock, tg.api_url, concurrency=1)
    run._stop = stop

    def sleep(seconds: float) -> None:  # SIGTERM arrives during b2's pacing wait
        stop.request()
        clock.advance(seconds)

    run._pacer = Pacer(store, run.options.rate_limit, sleep, run._patiently)
    report = run.run()

    assert len(tg.messages) == 1  # b1 went out before; nothing after the request
    assert (report.exit_code, report.sent, report.released) == (130, 1, 2)
    assert reminder(store, booking="b1")["status"] == Status.SENT
    for booking in ("b2", "b3"):  # given back now, not after a lease, as they were
        row = reminder(store, booking=booking)
        assert (row["status"], row["attempts"], row["due_at"]) == (Status.PENDING, 0, due)
        assert row["lease_token"] is None
    with store.reader() as conn:
        assert conn.scalars(select(DispatchRun.exit_code)).all() == [130]


def test_a_recipient_suppressed_between_claim_and_send_is_not_sent_to(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345")
    remind(store, "b2", "12345|console:desk")  # the same chat: its turn comes a second later

    def suppress() -> None:  # another host's run was told the chat is gone meanwhile
        with store.transaction() as conn:
            queries.set_recipient_state(
                conn, "telegram", "12345", RecipientState.SUPPRESSED, clock(),
                Reason.RECIPIENT_GONE, "Forbidden: bot was blocked by the user",
            )  # fmt: skip

    run_with_first_pacing_wait(store, clock, tg, suppress)

    assert [m.text for m in tg.messages] == [tg.messages[0].text]  # only b1 went to the chat
    moved = reminder(store, booking="b2")
    assert (moved["channel"], moved["recipient"]) == ("console", "desk")
    assert moved["status"] in (Status.PENDING, Status.SENT)


def test_a_send_deadline_never_outlasts_the_lease(store: Store) -> None:
    settings = Settings(database_url=str(store.engine.url), send_deadline=30)
    options = DispatchOptions(lease_seconds=20, max_seconds=5)

    run = Dispatcher(store, settings, options, stdout=io.StringIO())

    assert run.context.send_deadline == 5  # a quarter of the lease: it ends inside it
