"""Recipient health and fallback (SPEC §11), end to end through the CLI on SQLite and PostgreSQL.

Real servers on 127.0.0.1 answer: the fake Telegram Bot API, a recording SMTP
server (aiosmtpd) and the scripted HTTP receiver for webhooks. Commands run
in-process on a frozen clock (``frozen_cli``), so retries and due times move
only when a test advances it; the multi-process test runs ``notifyctl
dispatch`` as real processes on the wall clock.

- a permanent "recipient gone" answer suppresses the recipient and cancels its
  other pending reminders; ``create`` then creates nothing for it;
- ``notifyctl recipients`` lists recipients and their state, ``unsuppress``
  makes them active again;
- ``--to "A|B"`` chains alternatives: one reminder per kind, the first
  alternative not suppressed is tried, the next one when it fails for good,
  gives up or would retry too late; exactly one delivers.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from notifyctl.models import DeliveryAttempt
from tests import dbstate as db
from tests.fakes.http_receiver import Answer, HttpReceiver
from tests.fakes.smtp import SmtpServer, running_smtp
from tests.fakes.telegram import FakeTelegram, Reply, blocked_by_user, chat_not_found, error
from tests.ops_support import frozen_cli
from tests.support import Cli, CliResult, FrozenClock, clean_env, dispatchers, finish
from tests.test_ops_metrics_ping import outcome, read_metrics

TOKEN = "246813579:AAG-recipients_Test_SECRET_k9"
EMAIL_FROM = "Bookings <reminders@example.com>"
CHAT = "123456789"
OTHER_CHAT = "987654321"
ANN = "ann@example.com"
BOB = "bob@example.org"
CHAIN = f"{CHAT}|email:{ANN}"
ROUTE = f"telegram:{CHAT}|email:{ANN}"
HOUR = timedelta(hours=1)

GONE_ANSWERS = {
    "blocked": error(403, "Forbidden: bot was blocked by the user"),
    "deactivated": error(403, "Forbidden: user is deactivated"),
    "kicked": error(403, "Forbidden: bot was kicked from the group chat"),
    "initiate": error(403, "Forbidden: bot can't initiate conversation with a user"),
    "chat not found": chat_not_found(),
}


# --- the world: fakes, a CLI on the frozen clock ----------------------------------------------


@dataclass
class World:
    cli: Cli
    clock: FrozenClock
    url: str
    tg: FakeTelegram
    smtp: SmtpServer
    rx: HttpReceiver


def servers_env(tg: FakeTelegram, smtp: SmtpServer) -> dict[str, str]:
    return {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": tg.api_url,
        "NOTIFYCTL_SMTP_URL": smtp.url(),
        "NOTIFYCTL_EMAIL_FROM": EMAIL_FROM,
        "NOTIFYCTL_WEBHOOK_ALLOW": "127.0.0.1",
    }


@pytest.fixture
def world(
    monkeypatch: pytest.MonkeyPatch, database_url: str, clock: FrozenClock
) -> Iterator[World]:
    with FakeTelegram(token=TOKEN) as tg, running_smtp() as smtp, HttpReceiver() as rx:
        cli = frozen_cli(monkeypatch, database_url, clock)
        cli.env |= servers_env(tg, smtp)
        yield World(cli, clock, database_url, tg, smtp, rx)


def iso(value: datetime) -> str:
    return value.isoformat()


def create_args(booking_id: str, to: tuple[str, ...], start: datetime, remind: str) -> list[str]:
    args = ["create", booking_id, "--title", "Yoga", "--starts-at", iso(start)]
    args += ["--ends-at", iso(start + HOUR), "--remind", remind]
    for recipient in to:
        args += ["--to", recipient]
    return args


def book(
    w: World,
    booking_id: str,
    *to: str,
    start: datetime | None = None,
    remind: str = "hour_before",
) -> dict[str, Any]:
    """Create (or update) a booking an hour long, by default starting in 30 minutes.

    Its ``hour_before`` reminder is then due at once; returns ``create --json``.
    """
    when = start if start is not None else w.clock() + timedelta(minutes=30)
    result = w.cli.ok(*create_args(booking_id, to, when, remind), "--json")
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def json_tail(stdout: str) -> Any:
    """The JSON document that ends ``stdout`` (console deliveries may print before it)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line in ("{", "[", "[]"))
    return json.loads("\n".join(lines[start:]))


def dispatch(w: World, *args: str) -> dict[str, Any]:
    report: dict[str, Any] = json_tail(w.cli.ok("dispatch", "--json", *args).stdout)
    return report


def listed(w: World, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        w.cli.ok("list", "--status", "all", "--format", "json", *args).stdout
    )
    return rows


def of_booking(w: World, booking_id: str) -> list[dict[str, Any]]:
    return [r for r in listed(w) if r["booking_id"] == booking_id]


def recipients(w: World, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        w.cli.ok("recipients", "--format", "json", *args).stdout
    )
    return rows


def suppressed(w: World) -> list[dict[str, Any]]:
    return recipients(w, "--suppressed")


def stored(w: World, booking_id: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The booking's reminder rows keyed by (kind, channel, recipient as stored)."""
    return db.by_key(db.reminders(w.url, booking_id))


def attempts(url: str, notification_id: int) -> list[dict[str, Any]]:
    with db.connect(url) as conn:
        stmt = (
            select(DeliveryAttempt)
            .where(DeliveryAttempt.notification_id == notification_id)
            .order_by(DeliveryAttempt.id)
        )
        return [r._asdict() for r in conn.execute(stmt)]


def cancelled_as_suppressed(row: dict[str, Any]) -> bool:
    """A listed row cancelled because its recipient is suppressed (``reason`` if listed)."""
    why = row["reason"] if "reason" in row else row["last_error"]
    return row["status"] == "cancelled" and "suppressed" in (why or "")


def assert_one_suppressed(
    w: World, channel: str, recipient: str, *, detail_has: str
) -> dict[str, Any]:
    [entry] = suppressed(w)
    assert {"channel", "recipient", "state", "reason", "detail", "since"} <= set(entry), entry
    assert (entry["channel"], entry["recipient"]) == (channel, recipient), entry
    assert (entry["state"], entry["reason"]) == ("suppressed", "recipient_gone"), entry
    assert detail_has.lower() in (entry["detail"] or "").lower(), entry
    assert TOKEN not in json.dumps(entry)
    assert datetime.fromisoformat(entry["since"]) == w.clock(), entry
    return entry


def assert_usage_error(result: CliResult, contains: str = "") -> None:
    db.assert_usage_error(result, contains=contains)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- 1. permanent "recipient gone" answers ---------------------------------------------------


@pytest.mark.parametrize("answer", list(GONE_ANSWERS), ids=list(GONE_ANSWERS))
def test_a_telegram_gone_answer_suppresses_the_chat_and_cancels_its_other_reminders(
    world: World, answer: str
) -> None:
    w = world
    book(w, "a", CHAT, remind="hour_before,at_start")  # hour_before due now, at_start in 30 min
    book(w, "b", CHAT, OTHER_CHAT, start=w.clock() + 3 * HOUR, remind="hour_before,at_start")
    w.tg.script(CHAT, GONE_ANSWERS[answer])

    report = dispatch(w)

    assert (report["sent"], report["failed"]) == (0, 1), report
    [refused] = w.tg.messages
    assert (refused.chat_id, refused.status) == (CHAT, GONE_ANSWERS[answer].status)
    assert_one_suppressed(w, "telegram", CHAT, detail_has=answer)

    rows = {(r["booking_id"], r["kind"], r["recipient"]): r for r in listed(w)}
    assert rows["a", "hour_before", CHAT]["status"] == "failed"
    for key in [("a", "at_start", CHAT), ("b", "hour_before", CHAT), ("b", "at_start", CHAT)]:
        assert cancelled_as_suppressed(rows[key]), rows[key]
    for kind in ("hour_before", "at_start"):  # another chat of the same booking: untouched
        assert rows["b", kind, OTHER_CHAT]["status"] == "pending"
    # the reason is stored on the rows themselves
    for row in db.reminders(w.url):
        if row["status"] == "cancelled":
            assert row["reason"] == "suppressed", row
    shown = json.loads(w.cli.ok("list", "--status", "cancelled", "--format", "json").stdout)
    assert sorted((r["booking_id"], r["kind"]) for r in shown) == [
        ("a", "at_start"),
        ("b", "at_start"),
        ("b", "hour_before"),
    ]
    for out in (w.cli.ok("recipients").stdout, w.cli.ok("list", "--status", "all").stdout):
        assert TOKEN not in out


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown",
        "551 5.1.6 User not local; please try <ann@example.net>",
        "553 5.1.3 Mailbox name not allowed",
    ],
    ids=["550", "551", "553"],
)
def test_a_refused_mailbox_is_suppressed_and_its_other_reminders_cancelled(
    world: World, reply: str
) -> None:
    w = world
    w.smtp.refuse(ANN, reply)
    book(w, "a", f"email:{ANN}", f"email:{BOB}", remind="hour_before,at_start")

    report = dispatch(w)

    assert (report["sent"], report["failed"]) == (1, 1), report
    assert w.smtp.recipients() == [BOB]
    assert w.smtp.refusals == [ANN]
    assert_one_suppressed(w, "email", ANN, detail_has=reply[:3])
    rows = {(r["kind"], r["recipient"]): r for r in of_booking(w, "a")}
    assert rows["hour_before", ANN]["status"] == "failed"
    assert cancelled_as_suppressed(rows["at_start", ANN]), rows["at_start", ANN]
    assert rows["hour_before", BOB]["status"] == "sent"
    assert rows["at_start", BOB]["status"] == "pending"


def test_a_webhook_answering_410_gone_is_suppressed(world: World) -> None:
    w = world
    gone, live = w.rx.url("/gone"), w.rx.url("/live")
    w.rx.answer_path("/gone", Answer(410, body=b"this hook was deleted"))
    book(w, "a", f"webhook:{gone}", f"webhook:{live}", remind="hour_before,at_start")

    report = dispatch(w)

    assert (report["sent"], report["failed"]) == (1, 1), report
    assert sorted(r.path for r in w.rx.requests) == ["/gone", "/live"]
    assert_one_suppressed(w, "webhook", gone, detail_has="410")
    rows = {(r["kind"], r["recipient"]): r for r in of_booking(w, "a")}
    assert cancelled_as_suppressed(rows["at_start", gone]), rows["at_start", gone]
    assert rows["at_start", live]["status"] == "pending"


def test_a_gone_webhook_with_a_password_in_its_url_is_listed_without_it(world: World) -> None:
    w = world
    secret = "pw-Hook_SECRET-77"
    hook = w.rx.url("/gone", userinfo=f"ops:{secret}@")
    w.rx.answer_path("/gone", Answer(410, body=f"gone: {hook}".encode()))
    book(w, "a", f"webhook:{hook}")

    dispatch(w)

    [entry] = suppressed(w)
    assert entry["channel"] == "webhook"
    assert "/gone" in entry["recipient"], entry
    for out in (
        json.dumps(entry),
        w.cli.ok("recipients").stdout,
        w.cli.ok("recipients", "--format", "csv").stdout,
    ):
        assert secret not in out
    assert w.cli("recipients", "unsuppress", f"webhook:{hook}").exit_code == 0
    assert suppressed(w) == []


def test_a_full_mailbox_suppresses_nobody(world: World) -> None:
    w = world
    w.smtp.refuse(ANN, "552 5.2.2 Mailbox full")
    book(w, "a", f"email:{ANN}", remind="hour_before,at_start")

    dispatch(w)

    assert suppressed(w) == []
    assert {r["kind"]: r["status"] for r in of_booking(w, "a")}["at_start"] == "pending"


@pytest.mark.parametrize(
    "reply",
    [
        error(500, "Internal Server Error"),
        error(400, "Bad Request: can't parse entities: unsupported start tag"),
    ],
    ids=["500", "400-parse"],
)
def test_other_failures_suppress_nobody(world: World, reply: Reply) -> None:
    w = world
    book(w, "a", CHAT, remind="hour_before,at_start")
    w.tg.script(CHAT, reply)

    dispatch(w)

    assert suppressed(w) == []
    [at_start] = [r for r in of_booking(w, "a") if r["kind"] == "at_start"]
    assert at_start["status"] == "pending"


# --- 2. create and a suppressed recipient ----------------------------------------------------


def suppress_chat(w: World, chat: str = CHAT, answer: Reply | None = None) -> None:
    """A reminder to ``chat`` answered "blocked": the chat is suppressed from then on."""
    book(w, f"gone-{chat}", chat)
    w.tg.script(chat, answer or blocked_by_user())
    dispatch(w)
    assert [s["recipient"] for s in suppressed(w) if s["channel"] == "telegram"].count(chat) == 1
    w.clock.advance(minutes=1)  # the next sends are not paced behind this one


def suppress_mailbox(w: World, address: str = ANN) -> None:
    w.smtp.refuse(address)
    book(w, f"gone-{address.partition('@')[0]}", f"email:{address}")
    dispatch(w)
    assert [s["recipient"] for s in suppressed(w) if s["channel"] == "email"].count(address) == 1
    w.smtp.accept(address)
    w.clock.advance(minutes=1)


def test_create_for_a_suppressed_recipient_creates_nothing_for_it_and_says_so(
    world: World,
) -> None:
    w = world
    suppress_chat(w)

    body = book(w, "c", CHAT, OTHER_CHAT, remind="hour_before,at_start")
    text = w.cli.ok(
        *create_args("d", (f"telegram:{CHAT}", f"email:{BOB}"), w.clock() + 3 * HOUR, "at_start")
    )
    only = book(w, "e", CHAT)

    assert body["suppressed"] == [f"telegram:{CHAT}"], body
    assert body["added"] == 2, body
    assert {(r["channel"], r["recipient"]) for r in of_booking(w, "c")} == {
        ("telegram", OTHER_CHAT)
    }
    assert "suppressed" in text.stdout, text.stdout
    assert f"telegram:{CHAT}" in text.stdout or CHAT in text.stdout, text.stdout
    assert {(r["channel"], r["recipient"]) for r in of_booking(w, "d")} == {("email", BOB)}
    assert only["suppressed"] == [f"telegram:{CHAT}"], only
    assert only["added"] == 0
    assert db.reminders(w.url, "e") == []

    dispatch(w)
    assert [m.chat_id for m in w.tg.sent()] == [OTHER_CHAT]  # nothing more to the gone chat


# --- 3. recipients and unsuppress ------------------------------------------------------------


def test_recipients_lists_every_known_recipient_with_its_state(world: World) -> None:
    w = world
    suppress_chat(w)
    book(w, "b", OTHER_CHAT, f"email:{BOB}", start=w.clock() + 5 * HOUR)

    everyone = recipients(w)
    only_suppressed = suppressed(w)
    table = w.cli.ok("recipients").stdout
    csv_out = w.cli.ok("recipients", "--format", "csv").stdout

    states = {(r["channel"], r["recipient"]): r["state"] for r in everyone}
    assert states == {
        ("telegram", CHAT): "suppressed",
        ("telegram", OTHER_CHAT): "active",
        ("email", BOB): "active",
    }
    assert [(r["channel"], r["recipient"]) for r in only_suppressed] == [("telegram", CHAT)]
    for shown in (CHAT, OTHER_CHAT, "suppressed"):
        assert shown in table, table
    parsed = list(csv.DictReader(io.StringIO(csv_out)))
    assert {"channel", "recipient", "state", "reason", "since"} <= set(parsed[0]), csv_out
    assert {(r["channel"], r["recipient"], r["state"]) for r in parsed} == {
        ("telegram", CHAT, "suppressed"),
        ("telegram", OTHER_CHAT, "active"),
        ("email", BOB, "active"),
    }


def test_unsuppress_takes_every_spelling_of_a_recipient(world: World) -> None:
    w = world
    suppress_chat(w, CHAT)
    suppress_chat(w, OTHER_CHAT, chat_not_found())
    suppress_mailbox(w, ANN)
    assert len(suppressed(w)) == 3

    result = w.cli(
        "recipients", "unsuppress", f"telegram:{CHAT}", OTHER_CHAT, "email:ann@EXAMPLE.com"
    )

    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert suppressed(w) == []
    states = {(r["channel"], r["recipient"]): r["state"] for r in recipients(w)}
    assert states == {
        ("telegram", CHAT): "active",
        ("telegram", OTHER_CHAT): "active",
        ("email", ANN): "active",
    }


def test_unsuppress_then_the_same_create_rearms_and_the_next_dispatch_delivers(
    world: World,
) -> None:
    w = world
    later = w.clock() + 3 * HOUR
    book(w, "a", CHAT)
    book(w, "b", CHAT, start=later, remind="hour_before,at_start")
    w.tg.script(CHAT, blocked_by_user())
    dispatch(w)
    assert all(cancelled_as_suppressed(r) for r in of_booking(w, "b"))

    w.cli.ok("recipients", "unsuppress", CHAT)
    again = book(w, "b", CHAT, start=later, remind="hour_before,at_start")

    assert not again.get("suppressed"), again
    assert {r["kind"]: r["status"] for r in of_booking(w, "b")} == {
        "hour_before": "pending",
        "at_start": "pending",
    }
    w.clock.set(later - HOUR + timedelta(seconds=1))  # b's hour_before falls due
    report = dispatch(w)
    assert report["sent"] == 1, report
    assert [m.chat_id for m in w.tg.sent()] == [CHAT]
    assert {r["kind"]: r["status"] for r in of_booking(w, "b")} == {
        "hour_before": "sent",
        "at_start": "pending",
    }


def test_unsuppress_of_an_unknown_recipient_is_a_usage_error_unless_missing_ok(
    world: World,
) -> None:
    w = world
    suppress_chat(w)

    unknown = w.cli("recipients", "unsuppress", "555000111")
    mixed = w.cli("recipients", "unsuppress", CHAT, "email:nobody@example.net")
    assert_usage_error(unknown, "555000111")
    assert_usage_error(mixed, "nobody@example.net")
    assert [s["recipient"] for s in suppressed(w)] == [CHAT]  # exit 2: nothing written

    tolerant = w.cli("recipients", "unsuppress", "--missing-ok", CHAT, "555000111")
    assert tolerant.exit_code == 0, (tolerant.stdout, tolerant.stderr)
    assert suppressed(w) == []


# --- 4. fallback chains ----------------------------------------------------------------------


def test_a_chain_is_one_reminder_per_kind_shown_with_its_route(world: World) -> None:
    w = world
    body = book(w, "a", CHAIN, remind="hour_before,at_start")

    rows = of_booking(w, "a")
    header = w.cli.ok("list", "--status", "all", "--format", "csv").stdout.splitlines()[0]

    assert body["added"] == 2, body
    assert not body.get("suppressed"), body
    assert sorted(r["kind"] for r in rows) == ["at_start", "hour_before"]
    for row in rows:
        assert (row["channel"], row["recipient"]) == ("telegram", CHAT), row
        assert (row["route"], row["alternative"]) == (ROUTE, 1), row
    assert {"route", "alternative"} <= set(header.split(","))
    assert book(w, "a", CHAIN, remind="hour_before,at_start")["action"] == "unchanged"


def test_chains_from_jsonl_and_csv_files(world: World, tmp_path: Path) -> None:
    w = world
    start = w.clock() + 3 * HOUR
    jsonl = tmp_path / "bookings.jsonl"
    record = {
        "booking_id": "j1",
        "starts_at": iso(start),
        "ends_at": iso(start + HOUR),
        "to": [f"{CHAT}|email:a@x.org"],
        "remind": ["hour_before"],
    }
    jsonl.write_text(json.dumps(record) + "\n", encoding="utf-8")
    table = tmp_path / "bookings.csv"
    table.write_text(
        "booking_id,starts_at,ends_at,to,remind\n"
        f'c1,{iso(start)},{iso(start + HOUR)},"{OTHER_CHAT}|email:b@x.org email:{BOB}",'
        "hour_before\n",
        encoding="utf-8",
    )

    w.cli.ok("create", "--from-file", str(jsonl))
    w.cli.ok("create", "--from-file", str(table))

    routes = {(r["booking_id"], r["route"], r["alternative"]) for r in listed(w)}
    assert routes == {
        ("j1", f"telegram:{CHAT}|email:a@x.org", 1),
        ("c1", f"telegram:{OTHER_CHAT}|email:b@x.org", 1),
        ("c1", f"email:{BOB}", 1),
    }


def the_reminder(w: World, booking_id: str) -> dict[str, Any]:
    [row] = of_booking(w, booking_id)
    return row


def test_a_chain_falls_back_to_email_when_telegram_says_blocked(world: World) -> None:
    w = world
    book(w, "a", CHAIN)
    w.tg.script(CHAT, blocked_by_user())

    report = dispatch(w)

    assert report["sent"] == 1, report
    assert report["fallback"] == 1, report
    assert [(m.chat_id, m.status) for m in w.tg.messages] == [(CHAT, 403)]
    assert w.tg.sent() == []
    [mail] = w.smtp.messages
    assert mail.rcpt_tos == (ANN,)
    row = the_reminder(w, "a")
    assert (row["status"], row["channel"], row["recipient"]) == ("sent", "email", ANN), row
    assert (row["route"], row["alternative"]) == (ROUTE, 2), row
    assert_one_suppressed(w, "telegram", CHAT, detail_has="blocked")

    assert dispatch(w)["sent"] == 0  # nothing left: exactly one alternative delivered
    assert len(w.smtp.messages) == 1
    assert book(w, "a", CHAIN)["action"] == "unchanged"  # a replay does not re-arm it
    assert the_reminder(w, "a")["status"] == "sent"


def test_a_chain_whose_every_alternative_is_gone_fails_and_suppresses_both(world: World) -> None:
    w = world
    book(w, "a", CHAIN)
    w.tg.script(CHAT, blocked_by_user())
    w.smtp.refuse(ANN)

    report = dispatch(w)

    assert (report["sent"], report["failed"], report["fallback"]) == (0, 1, 1), report
    assert w.tg.sent() == []
    assert w.smtp.messages == []
    assert w.smtp.refusals == [ANN]
    row = the_reminder(w, "a")
    assert (row["status"], row["channel"], row["alternative"]) == ("failed", "email", 2), row
    assert {(s["channel"], s["recipient"]) for s in suppressed(w)} == {
        ("telegram", CHAT),
        ("email", ANN),
    }


def test_a_chain_falls_back_once_telegram_runs_out_of_attempts(world: World) -> None:
    w = world
    book(w, "a", CHAIN)
    w.tg.script(CHAT, error(500, "Internal Server Error"), error(500, "Internal Server Error"))

    first = dispatch(w, "--max-attempts", "2")
    row = the_reminder(w, "a")
    assert (first["retried"], first["fallback"]) == (1, 0), first
    assert (row["status"], row["channel"], row["alternative"]) == ("pending", "telegram", 1), row
    assert w.smtp.messages == []

    w.clock.set(datetime.fromisoformat(row["due_at"]) + timedelta(seconds=1))  # past the backoff
    second = dispatch(w, "--max-attempts", "2")

    assert (second["sent"], second["fallback"]) == (1, 1), second
    assert [m.status for m in w.tg.messages] == [500, 500]
    assert [m.rcpt_tos for m in w.smtp.messages] == [(ANN,)]
    row = the_reminder(w, "a")
    assert (row["status"], row["channel"], row["alternative"]) == ("sent", "email", 2), row
    assert datetime.fromisoformat(row["sent_at"]) < datetime.fromisoformat(row["not_after"])
    assert suppressed(w) == []  # a server error says nothing about the recipient


def test_a_chain_falls_back_at_once_when_the_retry_would_come_too_late(world: World) -> None:
    w = world
    # starts in 20 s: hour_before is useful until the start, a retry (30 s ± 20 %) is not
    book(w, "a", CHAIN, start=w.clock() + timedelta(seconds=20))
    w.tg.script(CHAT, error(502, "Bad Gateway"))

    report = dispatch(w)

    assert (report["sent"], report["fallback"]) == (1, 1), report
    assert [m.status for m in w.tg.messages] == [502]
    assert [m.rcpt_tos for m in w.smtp.messages] == [(ANN,)]
    row = the_reminder(w, "a")
    assert (row["status"], row["channel"], row["alternative"]) == ("sent", "email", 2), row
    assert suppressed(w) == []


def test_a_chain_starts_at_its_first_alternative_not_suppressed(world: World) -> None:
    w = world
    suppress_chat(w)
    sent_before = len(w.tg.messages)

    body = book(w, "c", CHAIN)

    assert not body.get("suppressed"), body
    assert body["added"] == 1, body
    row = the_reminder(w, "c")
    assert (row["channel"], row["recipient"]) == ("email", ANN), row
    assert (row["route"], row["alternative"]) == (ROUTE, 2), row
    assert book(w, "c", CHAIN)["action"] == "unchanged"  # a replay changes nothing
    assert the_reminder(w, "c")["alternative"] == 2
    report = dispatch(w)
    assert report["sent"] == 1, report
    assert len(w.tg.messages) == sent_before
    assert [m.rcpt_tos for m in w.smtp.messages] == [(ANN,)]


def test_a_pending_chain_moves_on_when_its_alternative_in_use_is_suppressed(
    world: World,
) -> None:
    w = world
    later = w.clock() + 3 * HOUR
    book(w, "plain", CHAT)  # due now: its answer suppresses the chat
    book(w, "chain", CHAIN, start=later)  # due in 2 h, on the same chat first
    w.tg.script(CHAT, blocked_by_user())

    dispatch(w)

    row = the_reminder(w, "chain")
    assert row["status"] == "pending", json.dumps(row)  # not cancelled: another alternative
    w.clock.set(later - HOUR + timedelta(seconds=1))
    report = dispatch(w)
    assert report["sent"] == 1, report
    assert [(m.chat_id, m.status) for m in w.tg.messages] == [(CHAT, 403)]  # not tried again
    assert [m.rcpt_tos for m in w.smtp.messages] == [(ANN,)]
    row = the_reminder(w, "chain")
    assert (row["status"], row["channel"], row["alternative"]) == ("sent", "email", 2), row


def test_a_chat_is_suppressed_whatever_its_topic_but_only_for_its_own_bot(
    world: World,
) -> None:
    w = world
    w.cli.env["TELEGRAM_BOT_TOKEN_STUDIO2"] = TOKEN + "2"
    w.tg.tokens = w.tg.tokens | {TOKEN + "2"}
    later = w.clock() + 3 * HOUR
    book(w, "topic", f"telegram:{CHAT}#42")
    book(w, "plain", CHAT, start=later)
    book(w, "other-bot", f"telegram:studio2/{CHAT}", start=later)
    w.tg.script(CHAT, blocked_by_user())

    dispatch(w)

    [entry] = suppressed(w)
    assert (entry["channel"], entry["recipient"]) == ("telegram", CHAT), entry
    assert cancelled_as_suppressed(the_reminder(w, "plain"))
    assert the_reminder(w, "other-bot")["status"] == "pending"
    assert book(w, "again", f"telegram:{CHAT}#7")["suppressed"], "another topic of that chat"


def test_a_cancel_notice_follows_the_chain_too(world: World) -> None:
    w = world
    book(w, "a", CHAIN)
    w.tg.script(CHAT, blocked_by_user())
    dispatch(w)

    cancelled = json.loads(w.cli.ok("cancel", "a", "--reason", "Teacher ill", "--json").stdout)
    assert cancelled["notices"] == 1, cancelled
    w.clock.advance(minutes=1)
    dispatch(w)

    assert [(m.chat_id, m.status) for m in w.tg.messages] == [(CHAT, 403)]
    _reminder, notice = w.smtp.messages
    assert notice.rcpt_tos == (ANN,)
    assert str(notice.parsed()["Subject"]).startswith("Cancelled: Yoga")


def test_a_chain_whose_alternatives_are_all_suppressed_creates_nothing(world: World) -> None:
    w = world
    suppress_chat(w)
    suppress_mailbox(w, ANN)

    body = book(w, "d", CHAIN, f"email:{BOB}")
    text = w.cli.ok(*create_args("e", (CHAIN,), w.clock() + 3 * HOUR, "hour_before"))

    [chain] = body["suppressed"]
    assert f"telegram:{CHAT}" in chain, body
    assert f"email:{ANN}" in chain, body
    assert {(r["channel"], r["recipient"]) for r in of_booking(w, "d")} == {("email", BOB)}
    assert "suppressed" in text.stdout, text.stdout
    assert db.reminders(w.url, "e") == []


# --- 5. counted: run report, metrics, stats, history -----------------------------------------


def test_a_fallback_is_counted_in_the_run_the_metrics_the_stats_and_the_history(
    world: World, tmp_path: Path
) -> None:
    w = world
    book(w, "a", CHAIN)
    w.tg.script(CHAT, blocked_by_user())
    metrics_path = tmp_path / "notifyctl.prom"

    report = dispatch(w, "--metrics-file", str(metrics_path))
    stats = json.loads(w.cli.ok("stats", "--format", "json").stdout)

    assert report["fallback"] == 1, report
    assert report["by_channel"]["telegram"].get("fallback") == 1, report
    metrics = read_metrics(metrics_path)
    assert metrics["notifyctl_dispatch_outcomes_total", outcome("telegram", "fallback")] == 1
    assert metrics["notifyctl_dispatch_outcomes_total", outcome("email", "sent")] == 1
    telegram = [g for g in stats["by_channel_kind"] if g["channel"] == "telegram"]
    assert telegram, stats["by_channel_kind"]
    assert all("fallbacks" in g for g in stats["by_channel_kind"]), stats["by_channel_kind"]
    assert sum(g["fallbacks"] for g in telegram) == 1, telegram
    assert sum(g["fallbacks"] for g in stats["by_channel_kind"]) == 1
    assert stats["runs"][0].get("fallback") == 1, stats["runs"][0]

    row = the_reminder(w, "a")
    history = attempts(w.url, row["id"])
    outcomes = [h["outcome"] for h in history]
    assert (outcomes.count("fallback"), outcomes[-1]) == (1, "sent"), history
    [left_row] = [h for h in history if h["outcome"] == "fallback"]
    left = left_row["error"] or ""
    assert f"telegram:{CHAT}" in left or "alternative 1" in left, left  # which one was left
    assert "blocked" in left.lower(), left  # and why
    assert TOKEN not in left


# --- 6. change notices follow the chain ------------------------------------------------------


def test_a_change_notice_goes_to_the_alternative_that_delivered(world: World) -> None:
    w = world
    start = w.clock() + timedelta(minutes=30)
    book(w, "a", CHAIN, start=start)
    w.tg.script(CHAT, blocked_by_user())
    dispatch(w)
    assert [m.rcpt_tos for m in w.smtp.messages] == [(ANN,)]

    moved = book(w, "a", CHAIN, start=start + 24 * HOUR)
    assert moved["notices"] == 1, moved
    w.clock.advance(minutes=1)
    report = dispatch(w)

    assert report["sent"] == 1, report
    assert [(m.chat_id, m.status) for m in w.tg.messages] == [(CHAT, 403)]  # nothing new
    _reminder, notice = w.smtp.messages
    assert notice.rcpt_tos == (ANN,)
    assert str(notice.parsed()["Subject"]).startswith("Moved: Yoga"), notice.parsed()["Subject"]
    [row] = [r for r in of_booking(w, "a") if r["kind"] == "rescheduled"]
    assert (row["status"], row["channel"], row["recipient"]) == ("sent", "email", ANN), row


# --- 4(e). four dispatch processes over 200 chains --------------------------------------------

CHAINS = 200
FIRST_CHAT = 8_100_000


@pytest.mark.slow
def test_four_dispatch_processes_deliver_every_chain_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    """200 Telegram→email chains, every other chat blocked: each booking delivered once."""
    now = datetime.now().astimezone()
    start = now + timedelta(minutes=30)  # hour_before due at once
    path = tmp_path / "chains.jsonl"
    with path.open("w", encoding="utf-8") as lines:
        for i in range(CHAINS):
            record = {
                "booking_id": f"b{i}",
                "starts_at": iso(start),
                "ends_at": iso(start + HOUR),
                "to": [f"{FIRST_CHAT + i}|email:u{i}@example.org"],
                "remind": ["hour_before"],
                "title": f"Class {i}",
            }
            lines.write(json.dumps(record) + "\n")
    cli = Cli(database_url)
    cli.ok("create", "--from-file", str(path))

    with FakeTelegram(token=TOKEN) as tg, running_smtp() as smtp:
        for i in range(0, CHAINS, 2):
            tg.script(FIRST_CHAT + i, blocked_by_user())
        env = clean_env(database_url, NOTIFYCTL_NO_WAIT="1", **servers_env(tg, smtp))
        began = time.monotonic()
        with dispatchers(4, env, "--rate-limit", "10000", "--max-seconds", "50") as procs:
            reports = finish(procs, timeout=120)
        wall = time.monotonic() - began
        telegram = Counter(int(m.chat_id) - FIRST_CHAT for m in tg.sent())
        refused = Counter(int(m.chat_id) - FIRST_CHAT for m in tg.messages if m.status == 403)
        mailed = Counter(int(r[1:].partition("@")[0]) for r in smtp.recipients())

    fallbacks = [r["fallback"] for r in reports]
    sent = [r["sent"] for r in reports]
    print(
        f"\n4 dispatch processes, {CHAINS} chains: {wall:.2f} s wall, "
        f"sent per run {sent}, fallbacks per run {fallbacks}, "
        f"{sum(telegram.values())} via Telegram, {sum(mailed.values())} via email"
    )
    delivered = telegram + mailed
    assert [b for b, n in delivered.items() if n > 1] == []  # 0 twice
    assert sorted(delivered) == list(range(CHAINS))  # 0 lost
    assert sorted(telegram) == list(range(1, CHAINS, 2))
    assert sorted(mailed) == list(range(0, CHAINS, 2))
    assert sorted(refused) == list(range(0, CHAINS, 2))
    assert set(refused.values()) == {1}
    assert sum(sent) == CHAINS
    assert sum(fallbacks) == CHAINS // 2
    statuses = Counter(r["status"] for r in db.reminders(database_url))
    assert statuses == Counter({"sent": CHAINS})
    with db.connect(database_url) as conn:
        outcomes = Counter(conn.scalars(select(DeliveryAttempt.outcome)).all())
    assert outcomes["fallback"] == CHAINS // 2
    suppressed_now = json.loads(cli.ok("recipients", "--suppressed", "--format", "json").stdout)
    assert len(suppressed_now) == CHAINS // 2


def test_a_later_reminder_supersedes_an_earlier_one_on_another_alternative(
    world: World,
) -> None:
    """Only the latest reminder of a chain is sent, whichever alternative each is on."""
    w = world
    start = w.clock() + timedelta(days=1, minutes=-1)  # day_before due now, hour_before in 23 h
    book(w, "a", CHAIN, start=start, remind="day_before,hour_before")
    w.tg.script(CHAT, error(500, "Internal Server Error"), error(500, "Internal Server Error"))
    w.smtp.refuse(ANN, "451 4.2.0 try again later")
    dispatch(w, "--max-attempts", "2")
    w.clock.advance(60)  # past the backoff: telegram gives up, the email is refused for now
    assert dispatch(w, "--max-attempts", "2")["fallback"] == 1
    day_before = stored(w, "a")[("day_before", "email", ANN)]
    assert (day_before["status"], day_before["attempts"]) == ("pending", 1), day_before
    w.smtp.accept(ANN)

    w.clock.set(start - HOUR)  # the email's retry and hour_before on telegram are both due
    report = dispatch(w, "--max-attempts", "2")

    assert (report["sent"], report["expired"]) == (1, 1), report
    assert w.smtp.messages == []
    assert [m.status for m in w.tg.messages][-1] == 200
    assert stored(w, "a")[("day_before", "email", ANN)]["reason"] == "superseded"
