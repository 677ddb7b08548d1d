"""Several Telegram bots and forum topics (SPEC §12), on SQLite and PostgreSQL.

One fake Bot API knows both tokens (one API URL serves every bot, as the real
one does): the default bot's and studio2's.
"""

from __future__ import annotations

import io
import json
import random
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from notifyctl.channels import config_problems, parse_recipient, sender
from notifyctl.channels.telegram import pacing_key_for
from notifyctl.config import Settings, telegram_bots_from
from notifyctl.dispatch import Dispatcher, DispatchOptions, RunReport
from notifyctl.models import DeliveryAttempt, Notification, Pacing, Status
from notifyctl.pacing import SharedSlots
from notifyctl.service import Store, create_booking
from tests.fakes.telegram import FakeTelegram, error, migrated, too_many_requests
from tests.support import Cli, FrozenClock, clean_env, dispatchers, due_now, finish

TOKEN = "123456789:AAH-default_Bot_SECRET_a1"
TOKEN2 = "987654321:BBQ-studio2_Bot_SECRET_b2"
N = Notification


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram(token=TOKEN, tokens=[TOKEN2]) as fake:
        yield fake


def run(
    store: Store,
    clock: FrozenClock,
    tg: FakeTelegram,
    *,
    token: str | None = TOKEN,
    bots: dict[str, str] | None = None,
) -> RunReport:
    settings = Settings(
        database_url=str(store.engine.url),
        telegram_token=token,
        telegram_bots={"studio2": TOKEN2} if bots is None else bots,
        telegram_api_url=tg.api_url,
    )
    epoch = clock()
    return Dispatcher(
        store,
        settings,
        DispatchOptions(wait=False),
        stdout=io.StringIO(),
        rng=random.Random(1),
        sleep=clock.sleep,
        monotonic=lambda: (clock() - epoch).total_seconds(),
    ).run()


def remind(store: Store, booking_id: str, *to: str, starts_in: timedelta | None = None) -> None:
    start = store.clock() + (starts_in or timedelta(minutes=30))
    create_booking(
        store,
        booking_id,
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=list(to),
        remind=["hour_before"],
        timezone="UTC",
    )


def rows(store: Store) -> dict[str, dict[str, Any]]:
    """recipient → its reminder."""
    with store.reader() as conn:
        return {r.recipient: r._asdict() for r in conn.execute(select(N).order_by(N.id))}


def stored_errors(store: Store) -> str:
    with store.reader() as conn:
        errors = list(conn.scalars(select(DeliveryAttempt.error)))
        errors += list(conn.scalars(select(N.last_error)))
    return "\n".join(e for e in errors if e)


def assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
        assert TOKEN2 not in text
        assert TOKEN2.split(":")[1] not in text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored", "bot"),
    [
        ("12345", "12345", None),
        ("telegram:12345", "12345", None),
        ("telegram:Studio2/12345", "studio2/12345", "studio2"),
        ("telegram:-1001234567890#42", "-1001234567890#42", None),
        ("telegram:STUDIO_2/-1001234567890#42", "studio_2/-1001234567890#42", "studio_2"),
        ("telegram:studio2/@news", "studio2/@news", "studio2"),
    ],
)
def test_recipients_name_their_bot_and_topic(raw: str, stored: str, bot: str | None) -> None:
    assert parse_recipient(raw) == ("telegram", stored)
    assert sender("telegram", stored) == (f"telegram:{bot}" if bot else "telegram")


@pytest.mark.parametrize(
    "raw",
    ["telegram:bad-name/123", "telegram:/123", "telegram:studio2/", "telegram:123#0",
     "telegram:123#x", "telegram:a/b/123", "-100123#42"],
)  # fmt: skip
def test_invalid_bot_or_topic_is_refused(cli: Cli, raw: str) -> None:
    result = cli("create", "b1", "--starts-at", "+2h", "--ends-at", "+3h", "--to", raw)
    assert result.exit_code == 2, result.stdout


def test_named_tokens_are_read_once_case_insensitively_and_are_secrets() -> None:
    bots = telegram_bots_from(
        {"TELEGRAM_BOT_TOKEN_Studio2": TOKEN2, "TELEGRAM_BOT_TOKEN": TOKEN, "OTHER": "x"}
    )
    assert bots == {"studio2": TOKEN2}
    settings = Settings(database_url="sqlite://", telegram_token=TOKEN, telegram_bots=bots)
    assert set(settings.secrets()) >= {TOKEN, TOKEN2}
    problems = config_problems(settings, ["telegram", "telegram:studio2", "telegram:studio3"])
    assert list(problems) == ["telegram:studio3"]
    assert "TELEGRAM_BOT_TOKEN_STUDIO3" in problems["telegram:studio3"]


def test_create_accepts_a_bot_without_a_token_yet_and_help_says_so(cli: Cli) -> None:
    cli.ok("create", "b1", "--starts-at", "+2h", "--ends-at", "+3h", "--to", "telegram:Later/5")
    listed = json.loads(cli.ok("list", "--format", "json").stdout)
    assert {r["recipient"] for r in listed} == {"later/5"}  # one per kind
    help_text = " ".join(cli.ok("create", "--help").stdout.split())
    assert "TELEGRAM_BOT_TOKEN_" in help_text
    assert "not set yet is accepted" in help_text


# --- several bots in one run -----------------------------------------------------------


def test_two_bots_deliver_in_one_cli_run(cli: Cli, store: Store, tg: FakeTelegram) -> None:
    to = ("--to", "12345", "--to", "telegram:Studio2/12345")  # one chat id, two bots
    times = ("--starts-at", "+30m", "--ends-at", "+90m", "--remind", "hour_before")
    cli.ok("create", "b1", *times, *to)
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_BOT_TOKEN_STUDIO2": TOKEN2,
        "TELEGRAM_API_URL": tg.api_url,
    }
    dry = cli.ok("dispatch", "--dry-run", **env)
    assert "telegram:studio2/12345" in dry.stdout

    result = cli.ok("dispatch", "-v", **env)

    assert sorted((m.token, m.chat_id) for m in tg.sent()) == sorted(
        [(TOKEN, "12345"), (TOKEN2, "12345")]
    )
    assert "studio2/12345" in result.stderr
    assert {r["status"] for r in rows(store).values()} == {Status.SENT}
    listed = cli.ok("list", "--status", "sent").stdout
    assert "studio2/12345" in listed
    with store.reader() as conn:  # two bots: two pacing rows, two budgets
        keys = set(conn.scalars(select(Pacing.key)))
    assert keys == {pacing_key_for(TOKEN), pacing_key_for(TOKEN2)}
    assert_no_token(dry.stdout, dry.stderr, result.stdout, result.stderr, listed)


def test_missing_token_of_one_bot_gives_back_only_its_reminders(
    cli: Cli, store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    clock.set(datetime.now(UTC))
    remind(store, "b1", "12345", "telegram:studio2/12345", "telegram:studio2/-100777#3")
    remind(store, "b2", "console:desk")

    result = cli("dispatch", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=tg.api_url)

    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "TELEGRAM_BOT_TOKEN_STUDIO2" in result.stderr
    assert "studio2" in result.stderr
    assert [(m.token, m.chat_id) for m in tg.sent()] == [(TOKEN, "12345")]
    found = rows(store)
    assert found["12345"]["status"] == Status.SENT
    assert found["desk"]["status"] == Status.SENT
    for recipient in ("studio2/12345", "studio2/-100777#3"):
        assert (found[recipient]["status"], found[recipient]["attempts"]) == (Status.PENDING, 0)
        assert found[recipient]["last_error"] is None
    assert_no_token(result.stdout, result.stderr, stored_errors(store))


def test_revoked_token_of_one_bot_gives_back_only_its_reminders(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "12345", "telegram:studio2/12345", "telegram:studio2/678")
    tg.revoke(TOKEN2)

    report = run(store, clock, tg)

    assert report.exit_code == 3
    assert "telegram:studio2" in (report.error or "")
    assert [(m.token, m.chat_id) for m in tg.sent()] == [(TOKEN, "12345")]
    found = rows(store)
    assert found["12345"]["status"] == Status.SENT
    for recipient in ("studio2/12345", "studio2/678"):
        assert (found[recipient]["status"], found[recipient]["attempts"]) == (Status.PENDING, 0)
    assert_no_token(report.error or "", stored_errors(store))

    tg.clear()  # the next run, with the default bot still fine, claims nothing of studio2's
    assert run(store, clock, tg, bots={}).exit_code == 3
    assert len(tg.sent()) == 1


def test_a_429_pauses_only_that_bot(store: Store, clock: FrozenClock, tg: FakeTelegram) -> None:
    remind(store, "b1", "12345", "telegram:studio2/777")
    tg.script("777", too_many_requests(30))
    now = clock()

    report = run(store, clock, tg)

    assert report.exit_code == 0
    with store.reader() as conn:
        slots = dict(conn.execute(select(Pacing.key, Pacing.next_slot_at)).all())
    assert slots[pacing_key_for(TOKEN2)] >= now + timedelta(seconds=29)
    assert slots[pacing_key_for(TOKEN)] < now + timedelta(seconds=5)
    assert rows(store)["12345"]["status"] == Status.SENT


# --- forum topics ----------------------------------------------------------------------


def test_a_topic_reaches_the_api_and_a_missing_one_fails_only_its_reminder(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    chat = "-1001234567890"
    remind(store, "b1", f"telegram:{chat}#42", f"telegram:{chat}#7", chat)
    remind(store, "b2", f"telegram:studio2/{chat}#42")
    tg.missing_threads.add("7")

    report = run(store, clock, tg)

    assert report.exit_code == 0
    sent = sorted((m.token == TOKEN2, m.message_thread_id or "") for m in tg.sent())
    assert sent == [(False, ""), (False, "42"), (True, "42")]
    assert {m.chat_id for m in tg.messages} == {chat}
    found = rows(store)
    assert found[f"{chat}#7"]["status"] == Status.FAILED
    assert "message thread not found" in found[f"{chat}#7"]["last_error"]
    for recipient in (f"{chat}#42", chat, f"studio2/{chat}#42"):
        assert found[recipient]["status"] == Status.SENT


# --- migration per bot -----------------------------------------------------------------


def test_same_chat_under_two_bots_is_two_recipients_and_migration_keeps_the_bot(
    store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    remind(store, "b1", "telegram:studio2/-4001#5")
    remind(store, "b2", "-4001", "telegram:studio2/-4001#5", starts_in=timedelta(hours=3))
    tg.script("-4001", migrated(-1004001))

    report = run(store, clock, tg)

    assert report.moved == 1
    assert [(m.token, m.chat_id) for m in tg.messages] == [
        (TOKEN2, "-4001"),
        (TOKEN2, "-1004001"),
    ]
    assert tg.messages[1].message_thread_id == "5"
    with store.reader() as conn:
        found = sorted(conn.execute(select(N.recipient, N.status)).all())
    assert found == [
        ("-4001", Status.PENDING),  # the default bot's chat did not move
        ("studio2/-1004001#5", Status.PENDING),  # b2's, moved with its bot and topic
        ("studio2/-1004001#5", Status.SENT),
    ]


# --- redaction -------------------------------------------------------------------------


def test_every_bots_token_is_redacted_in_output_logs_and_stored_errors(
    cli: Cli, store: Store, clock: FrozenClock, tg: FakeTelegram
) -> None:
    clock.set(datetime.now(UTC))
    remind(store, "b1", "12345", "telegram:studio2/12345")
    # a broken gateway in front of the API echoes the request line, token in its path
    echo = error(502, f"Bad Gateway: POST /bot{TOKEN}/sendMessage, /bot{TOKEN2}/sendMessage")
    tg.script("12345", echo, echo)
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_BOT_TOKEN_STUDIO2": TOKEN2,
        "TELEGRAM_API_URL": tg.api_url,
    }

    result = cli("dispatch", "-v", "--json", **env)
    listed = cli("list", "--format", "json", **env)

    assert result.exit_code == 0, result.stderr
    assert "studio2/12345" in result.stderr
    assert {r["status"] for r in json.loads(listed.stdout)} == {Status.PENDING}
    errors = stored_errors(store)
    assert errors.count("/bot") >= 2  # the URLs are there, their tokens are not
    assert_no_token(result.stdout, result.stderr, listed.stdout, listed.stderr, errors)


def test_slots_a_stalled_run_missed_are_dropped_not_sent_back_to_back(
    store: Store, clock: FrozenClock
) -> None:
    interval = timedelta(seconds=1 / 25)
    slots = SharedSlots(store, "bot", 25.0)
    deadline = clock() + timedelta(minutes=1)
    start = clock()
    assert slots.take(deadline, wanted=25) == start  # a block of a second's slots
    clock.advance(0.5)  # the run stalls: half of its block is in the past
    late = slots.take(deadline)
    assert clock() - interval <= late  # the next send goes on a slot of now, not 0.46 s ago
    assert late == start + 12 * interval  # the missed ones are forgotten, the rest kept
    clock.advance(5)  # stalled past the whole block: a fresh reservation after it
    assert slots.take(deadline) == clock()


def test_slots_a_little_late_are_still_used_without_reserving_again(
    store: Store, clock: FrozenClock
) -> None:
    interval = timedelta(seconds=1 / 10_000)
    slots = SharedSlots(store, "bot", 10_000.0)
    deadline = clock() + timedelta(minutes=1)
    start = clock()
    taken = []
    for _ in range(50):
        taken.append(slots.take(deadline, wanted=50))
        clock.advance(0.001)  # a send a millisecond: every next slot is already past
    assert taken == [start + i * interval for i in range(50)]  # one block, each slot used
    with store.reader() as conn:
        next_slot = conn.scalar(select(Pacing.next_slot_at).where(Pacing.key == "bot"))
    assert next_slot == start + 50 * interval  # reserved once, not once per send


def test_two_bots_deliver_twice_one_bots_rate_across_four_processes(
    database_url: str, store: Store, clock: FrozenClock
) -> None:
    """Rate limits are per token: two bots are two budgets, shared by every dispatcher."""
    per_bot = 100
    due_now(
        store,
        clock,
        [
            f"telegram:{'studio2/' if bot else ''}{7000 + i}"
            for bot in (0, 1)
            for i in range(per_bot)
        ],
    )
    with FakeTelegram(token=TOKEN, tokens=[TOKEN2], rate_limit=30) as tg:
        env = clean_env(
            database_url,
            NOTIFYCTL_NO_WAIT="1",
            TELEGRAM_BOT_TOKEN=TOKEN,
            TELEGRAM_BOT_TOKEN_STUDIO2=TOKEN2,
            TELEGRAM_API_URL=tg.api_url,
        )
        with dispatchers(4, env) as procs:
            finish(procs, timeout=60)
        sent = tg.sent()
        count_429 = tg.count_429

    assert count_429 == 0
    assert len(sent) == 2 * per_bot
    times = sorted(m.at for m in sent)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    by_bot = {token: sum(1 for m in sent if m.token == token) for token in (TOKEN, TOKEN2)}
    print(f"\n2 bots, 4 dispatchers vs 30 msg/s per token: {busiest} in the busiest second")
    assert by_bot == {TOKEN: per_bot, TOKEN2: per_bot}
    # two budgets at once: more than one token's limit went out in one second, no 429
    assert busiest > 30
