"""Change notices (SPEC §10): who is told when a booking moves or is cancelled, and how.

The decision is a pure function (a table test); everything else runs through
the real CLI on SQLite and PostgreSQL against the fake Telegram Bot API
(``editMessageText`` included, with its real refusals), the scripted webhook
receiver and a real SMTP server. Times are relative to the wall clock the CLI
reads: a booking 30 minutes away has its ``hour_before`` reminder due at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from notifyctl.db import make_engine
from notifyctl.models import Booking, DeliveryAttempt, Notification, Reason
from notifyctl.notices import Change, Decision, Step, Told, notice_for
from notifyctl.service import Store, cancel, create_booking
from tests import dbstate as db
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.smtp import running_smtp
from tests.fakes.telegram import (
    MESSAGE_NOT_MODIFIED,
    FakeTelegram,
    Reply,
    cant_be_edited,
    edit_not_found,
    error,
)
from tests.support import Cli, CliResult, FrozenClock, clean_env

TOKEN = "555111222:AAF-notices_Test_SECRET_q4"
CHAT = "4242"
TITLE = "Yoga <b>& friends</b>"

# --- the decision, as a table -------------------------------------------------------------

T0 = datetime(2026, 12, 9, 17, 0, tzinfo=UTC)
H = timedelta(hours=1)
NOW = T0 - 24 * H
OLD = (T0, T0 + H)
NEW = (T0 + 25 * H, T0 + 26 * H)
NEWER = (T0 + 49 * H, T0 + 50 * H)
GOT = Told(received=True)
NOTHING_YET = Told(received=False)
PENDING_MOVE = Told(received=True, pending_move=OLD)


@pytest.mark.parametrize(
    ("change", "told", "now", "expected"),
    [
        # a move after a reminder went out: told, "was" the old times, useful until the later start
        (Change("moved", OLD, NEW), GOT, NOW, Decision(Step.QUEUE, "rescheduled", OLD, NEW[0])),
        # moved earlier: useful until the old start
        (Change("moved", NEW, OLD), GOT, NOW, Decision(Step.QUEUE, "rescheduled", NEW, NEW[0])),
        # nothing received yet: the reminders simply follow the booking
        (Change("moved", OLD, NEW), NOTHING_YET, NOW, Decision(Step.NONE)),
        (Change("cancelled", OLD), NOTHING_YET, NOW, Decision(Step.NONE)),
        # a second move before the notice went out: one notice, the earliest "was" kept
        (
            Change("moved", NEW, NEWER),
            PENDING_MOVE,
            NOW,
            Decision(Step.UPDATE, "rescheduled", OLD, NEWER[0]),
        ),
        # moved back to what the recipient was told: nothing left to tell
        (
            Change("moved", NEW, OLD),
            PENDING_MOVE,
            NOW,
            Decision(Step.WITHDRAW, "rescheduled", withdraw_reason=Reason.MOVED_BACK),
        ),
        # a cancel: told with the start the recipient knows, replacing a pending move notice
        (Change("cancelled", OLD), GOT, NOW, Decision(Step.QUEUE, "cancelled", OLD, OLD[0])),
        (
            Change("cancelled", NEW),
            PENDING_MOVE,
            NOW,
            Decision(Step.QUEUE, "cancelled", OLD, NEW[0]),
        ),
        # after the start a notice is of no use
        (Change("cancelled", OLD), GOT, T0 + H, Decision(Step.NONE)),
        (Change("moved", OLD, (T0 - H, T0)), GOT, T0 + H, Decision(Step.NONE)),
        # booked again before the cancel notice went out: withdrawn
        (
            Change("rebooked", OLD),
            Told(received=True, pending_cancel=True),
            NOW,
            Decision(Step.WITHDRAW, "cancelled", withdraw_reason=Reason.REBOOKED),
        ),
        (Change("rebooked", OLD), GOT, NOW, Decision(Step.NONE)),
    ],
)
def test_notice_for_decides_queue_update_withdraw_or_nothing(
    change: Change, told: Told, now: datetime, expected: Decision
) -> None:
    assert notice_for(change, told, now) == expected


# --- through the CLI ------------------------------------------------------------------------


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def tcli(cli: Cli, tg: FakeTelegram) -> Cli:
    """The CLI with the fake Bot API configured."""
    cli.env |= {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": tg.api_url}
    return cli


def at(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).replace(microsecond=0).isoformat()


def book(cli: Cli, start_in: float, *extra: str, to: str = CHAT) -> CliResult:
    """yoga-1, an hour long, ``start_in`` minutes from now, with an ``hour_before`` reminder."""
    return cli.ok(
        "create",
        "yoga-1",
        "--title",
        TITLE,
        "--starts-at",
        at(start_in),
        "--ends-at",
        at(start_in + 60),
        "--to",
        to,
        "--remind",
        "hour_before",
        "--timezone",
        "Europe/Berlin",
        "--json",
        *extra,
    )


def notices(result: CliResult) -> int:
    body = json.loads(result.stdout)
    return int(body["notices"])


def rows(database_url: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in db.reminders(database_url, "yoga-1") if r["kind"] == kind]


def history(database_url: str) -> list[dict[str, Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            stmt = select(DeliveryAttempt).order_by(DeliveryAttempt.id)
            return [r._asdict() for r in conn.execute(stmt)]
    finally:
        engine.dispose()


def reminder_went_out(cli: Cli, tg: FakeTelegram) -> None:
    book(cli, 30)
    cli.ok("dispatch")
    assert len(tg.sent()) == 1


def test_reschedule_after_a_reminder_sends_one_notice_and_edits_the_reminder(
    tcli: Cli, tg: FakeTelegram, database_url: str
) -> None:
    reminder_went_out(tcli, tg)
    [reminder] = rows(database_url, "hour_before")
    assert (
        reminder["sent_text"]
        == f'Reminder: "{TITLE}" starts in 30 minutes, at '
        + (reminder["sent_text"].split("at ", 1)[1])
    )  # stored as the chat shows it: no markup, entities decoded

    assert notices(book(tcli, 26 * 60)) == 1
    tcli.ok("dispatch")

    first, notice = tg.sent()
    assert notice.parse_mode == "HTML"
    assert notice.text.startswith('"Yoga &lt;b&gt;&amp; friends&lt;/b&gt;" moved: now ')
    assert ", was " in notice.text
    [edit] = tg.edits
    assert (edit.chat_id, edit.message_id, edit.status) == (CHAT, first.message_id, 200)
    assert edit.at - notice.at >= 0.9  # paced like a send: 1 message/s per chat
    assert edit.text.startswith('<s>Reminder: "Yoga &lt;b&gt;&amp; friends&lt;/b&gt;" starts ')
    assert "</s>\nMoved to " in edit.text
    assert "(Europe/Berlin)." in edit.text
    [notice_row] = rows(database_url, "rescheduled")
    assert notice_row["status"] == "sent"
    edits = [a for a in history(database_url) if a["outcome"] in ("edited", "edit_failed")]
    assert [(a["notification_id"], a["outcome"]) for a in edits] == [(reminder["id"], "edited")]
    stats = json.loads(tcli.ok("stats", "--format", "json").stdout)
    assert stats["runs"][0]["edited"] == 1


def test_two_moves_before_it_went_out_make_one_notice_with_the_first_was(
    tcli: Cli, tg: FakeTelegram, database_url: str
) -> None:
    reminder_went_out(tcli, tg)
    first_start = rows(database_url, "hour_before")[0]["not_after"]  # hour_before: the start

    assert notices(book(tcli, 26 * 60)) == 1
    assert notices(book(tcli, 50 * 60)) == 1  # the pending notice, updated

    [notice_row] = rows(database_url, "rescheduled")
    assert notice_row["previous_starts_at"] == first_start
    tcli.ok("dispatch")
    sent = tg.sent()
    assert len(sent) == 2
    was = first_start.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert sent[1].text.endswith(f"was {was:%a} {was.day} {was:%b} at {was:%H:%M}.")


def test_a_move_and_a_move_back_before_it_went_out_tell_nobody(
    tcli: Cli, tg: FakeTelegram, database_url: str
) -> None:
    book(tcli, 30)
    tcli.ok("dispatch")
    original = db.booking(database_url, "yoga-1")
    start = original["starts_at"].isoformat()
    end = original["ends_at"].isoformat()

    assert notices(book(tcli, 26 * 60)) == 1
    back = tcli.ok(
        "create", "yoga-1", "--title", TITLE, "--starts-at", start, "--ends-at", end,
        "--to", CHAT, "--remind", "hour_before", "--timezone", "Europe/Berlin",
    )  # fmt: skip

    assert "1 change notice(s) withdrawn" in back.stdout
    [notice_row] = rows(database_url, "rescheduled")
    assert (notice_row["status"], notice_row["reason"]) == ("cancelled", "moved_back")
    tcli.ok("dispatch")
    # the reminder, re-armed by the move, is due again at its old time; no notice, no edit
    assert [m.text.startswith("Reminder: ") for m in tg.messages] == [True, True]
    assert tg.edits == []


def test_cancel_with_a_reason_sends_a_notice_with_the_reason_escaped(
    tcli: Cli, tg: FakeTelegram, database_url: str
) -> None:
    reminder_went_out(tcli, tg)

    result = tcli.ok("cancel", "yoga-1", "--reason", "Teacher <ill> & no cover", "--json")

    assert json.loads(result.stdout)["notices"] == 1
    assert db.booking(database_url, "yoga-1")["cancel_reason"] == "Teacher <ill> & no cover"
    tcli.ok("dispatch")
    notice = tg.sent()[1]
    assert " is cancelled. Reason: Teacher &lt;ill&gt; &amp; no cover" in notice.text
    [edit] = tg.edits
    assert edit.text.endswith("</s>\nCancelled. Reason: Teacher &lt;ill&gt; &amp; no cover")


def test_a_cancel_replaces_a_pending_move_notice(
    tcli: Cli, tg: FakeTelegram, database_url: str
) -> None:
    reminder_went_out(tcli, tg)
    first_start = rows(database_url, "hour_before")[0]["not_after"]
    book(tcli, 26 * 60)

    tcli.ok("cancel", "yoga-1")

    [moved] = rows(database_url, "rescheduled")
    [cancelled] = rows(database_url, "cancelled")
    assert (moved["status"], moved["reason"]) == ("cancelled", "replaced")
    assert (cancelled["status"], cancelled["previous_starts_at"]) == ("pending", first_start)
    tcli.ok("dispatch")
    assert len(tg.sent()) == 2  # the reminder, then only the cancel notice


def test_nothing_sent_yet_means_no_notice(tcli: Cli, tg: FakeTelegram, database_url: str) -> None:
    book(tcli, 26 * 60)

    assert notices(book(tcli, 50 * 60)) == 0
    assert json.loads(tcli.ok("cancel", "yoga-1", "--json").stdout)["notices"] == 0
    tcli.ok("dispatch")

    assert tg.messages == []
    assert {r["kind"] for r in db.reminders(database_url, "yoga-1")} == {"hour_before"}


@pytest.mark.parametrize(
    "refusal",
    [
        cant_be_edited(),
        edit_not_found(),
        error(400, MESSAGE_NOT_MODIFIED),
    ],
    ids=["cant-be-edited", "not-found", "not-modified"],
)
def test_a_refused_edit_is_recorded_and_the_notice_still_goes_out(
    tcli: Cli, tg: FakeTelegram, database_url: str, refusal: Reply
) -> None:
    reminder_went_out(tcli, tg)
    book(tcli, 26 * 60)
    tg.script_edit(CHAT, refusal)

    result = tcli.ok("dispatch", "--json")

    assert json.loads(result.stdout)["sent"] == 1
    [notice_row] = rows(database_url, "rescheduled")
    assert notice_row["status"] == "sent"
    [failed] = [a for a in history(database_url) if a["outcome"] == "edit_failed"]
    assert failed["http_status"] == 400
    assert failed["error"].startswith("400: Bad Request: message")
    assert TOKEN not in (failed["error"] + result.stdout + result.stderr)


def test_no_notices_switches_turn_them_off(tcli: Cli, tg: FakeTelegram, database_url: str) -> None:
    reminder_went_out(tcli, tg)

    assert notices(book(tcli, 26 * 60, "--no-notices")) == 0
    assert notices(book_env_off(tcli)) == 0
    off = tcli.ok("cancel", "yoga-1", "--no-notices", "--json")

    assert json.loads(off.stdout)["notices"] == 0
    assert {r["kind"] for r in db.reminders(database_url, "yoga-1")} == {"hour_before"}


def book_env_off(cli: Cli) -> CliResult:
    saved = dict(cli.env)
    cli.env["NOTIFYCTL_NOTICES"] = "off"
    try:
        return book(cli, 50 * 60)
    finally:
        cli.env = saved


def test_notice_kinds_are_not_reminder_kinds(cli: Cli, database_url: str) -> None:
    result = cli(
        "create", "b1", "--starts-at", at(90), "--ends-at", at(120), "--to", "console:a",
        "--remind", "rescheduled",
    )  # fmt: skip

    db.assert_usage_error(result, contains="rescheduled is a change notice")
    assert db.bookings(database_url) == []


def test_invalid_reason_is_refused_and_nothing_is_cancelled(cli: Cli, database_url: str) -> None:
    cli.ok("create", "b1", "--starts-at", at(90), "--ends-at", at(120), "--to", "console:a")

    result = cli("cancel", "b1", "--reason", "x" * 501)

    db.assert_usage_error(result, contains="invalid --reason")
    assert db.booking(database_url, "b1")["status"] == "active"


def test_webhook_and_email_notices_carry_what_changed(cli: Cli, database_url: str) -> None:
    with HttpReceiver() as rx, running_smtp() as smtp:
        cli.env |= {
            "NOTIFYCTL_WEBHOOK_ALLOW": "127.0.0.1",
            "NOTIFYCTL_SMTP_URL": smtp.url(),
            "NOTIFYCTL_EMAIL_FROM": "Bookings <b@example.com>",
        }
        hook, mail = f"webhook:{rx.url('/hook')}", "email:ann@example.com"
        book(cli, 30, "--to", mail, to=hook)
        cli.ok("dispatch")
        before = db.booking(database_url, "yoga-1")
        book(cli, 26 * 60, "--to", mail, to=hook)
        cli.ok("dispatch")
        cli.ok("cancel", "yoga-1", "--reason", "Flooded")
        cli.ok("dispatch")

        bodies = [r.json() for r in rx.requests]
        subjects = [m.parsed()["Subject"] for m in smtp.messages]
    assert [b.get("event") for b in bodies] == [None, "rescheduled", "cancelled"]
    moved = bodies[1]
    assert moved["previous_starts_at"] == before["starts_at"].isoformat()
    assert moved["previous_ends_at"] == before["ends_at"].isoformat()
    assert (moved["reason"], bodies[2]["reason"]) == (None, "Flooded")
    assert subjects[1:] == [f"Moved: {TITLE}", f"Cancelled: {TITLE}"]


def test_list_stats_and_preview_show_notices_as_their_own_kinds(
    tcli: Cli, tg: FakeTelegram, database_url: str
) -> None:
    reminder_went_out(tcli, tg)
    book(tcli, 26 * 60)

    listed = json.loads(tcli.ok("list", "--kind", "rescheduled", "--format", "json").stdout)
    preview = tcli.ok("templates", "preview", "yoga-1", "--kind", "rescheduled")
    tcli.ok("dispatch")
    stats = json.loads(tcli.ok("stats", "--format", "json").stdout)

    assert [(r["kind"], r["status"]) for r in listed] == [("rescheduled", "pending")]
    assert "moved: now" in preview.stdout
    kinds = {(g["channel"], g["kind"]): g["sent"] for g in stats["by_channel_kind"]}
    assert kinds[("telegram", "rescheduled")] == 1


TEMPLATES = """\
[default]
text = "Reminder {{ title }} {{ starts_relative }}"

[kinds.rescheduled]
text = "{{ title }}: {{ previous_start_date }} {{ previous_start_time }} now {{ start_time }}"

[kinds.cancelled]
text = "{{ title }} off ({{ previous_start_time }}): {{ reason }}"
"""


def test_templates_override_notices_and_check_covers_them(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "t.toml"
    path.write_text(TEMPLATES)
    checked = cli.ok("templates", "check", "--templates", str(path))
    path.write_text(TEMPLATES.replace("{{ reason }}", "{{ reasons }}"))
    broken = cli("templates", "check", "--templates", str(path))

    assert broken.exit_code == 2
    assert "kinds.cancelled" in broken.stderr
    assert "reasons" in broken.stderr
    assert checked.exit_code == 0
    path.write_text(TEMPLATES)
    cli.env["NOTIFYCTL_TEMPLATES"] = str(path)
    book(cli, 30, to="console:ann")
    cli.ok("dispatch")
    cli.ok("cancel", "yoga-1", "--reason", "rain")
    out = cli.ok("dispatch").stdout
    [line] = [line for line in out.splitlines() if line.startswith("[console:ann]")]
    assert line.startswith(f"[console:ann] {TITLE} off (")
    assert line.endswith("): rain")


def test_overlapping_dispatchers_send_each_notice_once(
    tcli: Cli, tg: FakeTelegram, database_url: str
) -> None:
    for n in range(6):
        chat = str(7000 + n)
        tcli.ok(
            "create", f"b{n}", "--starts-at", at(30), "--ends-at", at(90), "--to", chat,
            "--remind", "hour_before",
        )  # fmt: skip
    tcli.ok("dispatch")
    for n in range(6):
        tcli.ok(
            "create", f"b{n}", "--starts-at", at(26 * 60), "--ends-at", at(27 * 60),
            "--to", str(7000 + n), "--remind", "hour_before",
        )  # fmt: skip
    tg.reset()
    env = clean_env(database_url, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=tg.api_url)
    command = [sys.executable, "-m", "notifyctl", "dispatch", "--batch-size", "1"]

    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE) for _ in range(3)]
    for run in runs:
        run.communicate(timeout=120)

    assert [r.returncode for r in runs] == [0, 0, 0]
    texts = sorted(m.chat_id for m in tg.sent())
    assert texts == [str(7000 + n) for n in range(6)]
    assert len([e for e in tg.edits if e.status == 200]) == 6


def test_python_api_takes_the_same_switches(store: Store, clock: FrozenClock) -> None:
    def book(start: datetime, **switches: Any) -> Any:
        return create_booking(
            store, "api-1", starts_at=start, ends_at=start + H, to=["console:ann"], **switches
        )

    def delivered() -> None:  # as a dispatch that delivered the reminder would leave it
        with store.transaction() as conn:
            conn.execute(update(Notification).values(status="sent", sent_at=clock()))

    book(clock() + timedelta(minutes=30), remind=["hour_before"])
    delivered()
    quiet = book(clock() + 26 * H, remind=["hour_before"], notices=False)
    delivered()
    told = book(clock() + 50 * H, remind=["hour_before"])
    cancelled = cancel(store, ["api-1"], reason="Teacher ill")

    assert (quiet.notices, told.notices, cancelled.notices) == (0, 1, 1)
    with store.reader() as conn:
        booking = conn.execute(select(Booking)).one()
        kinds = dict(conn.execute(select(Notification.kind, Notification.status)).all())
    assert booking.cancel_reason == "Teacher ill"
    assert kinds == {"hour_before": "cancelled", "rescheduled": "cancelled", "cancelled": "pending"}


def test_the_readme_walkthrough_with_the_console_channel(database_url: str, tmp_path: Path) -> None:
    """ "When bookings change" in README.md, command by command, as a new user runs it."""
    env = clean_env(database_url)

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "notifyctl", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stderr) == (0, ""), args
        return done.stdout

    booking = ("--title", "Yoga", "--to", "console:ann", "--timezone", "Europe/Berlin")
    run("create", "yoga-1", "--starts-at", "+30m", "--ends-at", "+90m", *booking)
    first = run("dispatch")
    moved = run("create", "yoga-1", "--starts-at", "+2d", "--ends-at", "+2d1h", *booking)
    told = run("dispatch")
    cancelled = run("cancel", "yoga-1", "--reason", "Teacher ill")
    told_again = run("dispatch")

    assert '[console:ann] Reminder: "Yoga" starts in 30 minutes' in first
    assert moved.startswith("rescheduled yoga-1: ")
    assert moved.rstrip().endswith(", 1 change notice(s) queued")
    assert told.startswith('[console:ann] "Yoga" moved: now ')
    assert "(Europe/Berlin), was " in told
    assert cancelled.rstrip().endswith(", 1 change notice(s) queued")
    assert told_again.startswith('[console:ann] "Yoga" on ')
    assert "is cancelled. Reason: Teacher ill\n" in told_again
    listed = json.loads(run("list", "--status", "all", "--kind", "rescheduled", "--format", "json"))
    assert [(r["kind"], r["status"]) for r in listed] == [("rescheduled", "sent")]


def test_a_move_of_the_end_only_says_so(tcli: Cli, tg: FakeTelegram, database_url: str) -> None:
    reminder_went_out(tcli, tg)
    start = db.booking(database_url, "yoga-1")["starts_at"].isoformat()

    tcli.ok(
        "create", "yoga-1", "--title", TITLE, "--starts-at", start, "--ends-at", at(150),
        "--to", CHAT, "--remind", "hour_before", "--timezone", "Europe/Berlin",
    )  # fmt: skip
    tcli.ok("dispatch")

    notice = tg.sent()[1]
    assert " now ends at " in notice.text
    assert ", was " in notice.text
    [edit] = tg.edits
    assert "</s>\nNow ends at " in edit.text


def test_a_reminder_due_with_a_retried_notice_supersedes_nothing(
    store: Store, clock: FrozenClock
) -> None:
    """Superseding keeps only the latest *reminder*: a notice neither swallows nor is swallowed."""
    from tests import test_dispatch as engine

    with FakeTelegram(token=engine.TOKEN) as fake:
        kinds = ("hour_before", "at_start")
        engine.remind(store, "b1", "12345", kinds=kinds)
        engine.run(store, clock, fake)
        engine.remind(store, "b1", "12345", starts_in=timedelta(minutes=10), kinds=kinds)
        fake.script("12345", error(500, "Internal Server Error"))
        engine.run(store, clock, fake)  # the notice: 500, retried after a backoff
        assert engine.reminder(store, "rescheduled")["status"] == "pending"

        clock.advance(minutes=10)  # at_start (scheduled after the notice) and the retry: due
        report = engine.run(store, clock, fake)

        texts = [m.text for m in fake.sent()]
    assert (report.sent, report.expired) == (2, 0)
    assert sum(" moved: now " in t for t in texts) == 1
    assert engine.reminder(store, "rescheduled")["status"] == "sent"
    assert engine.reminder(store, "at_start")["status"] == "sent"


def test_booked_again_before_the_cancel_notice_went_out_withdraws_it(
    tcli: Cli, tg: FakeTelegram, database_url: str
) -> None:
    reminder_went_out(tcli, tg)
    tcli.ok("cancel", "yoga-1", "--reason", "Flooded")
    again = json.loads(tcli.ok("cancel", "yoga-1", "--json").stdout)  # idempotent: no second

    rebooked = json.loads(book(tcli, 30, "--reactivate").stdout)
    tcli.ok("dispatch")

    assert again["notices"] == 0
    assert (rebooked["action"], rebooked["notices_withdrawn"]) == ("reactivated", 1)
    [notice_row] = rows(database_url, "cancelled")
    assert (notice_row["status"], notice_row["reason"]) == ("cancelled", "rebooked")
    assert db.booking(database_url, "yoga-1")["cancel_reason"] is None
    assert not any(" is cancelled." in m.text for m in tg.messages)


def test_a_default_template_written_for_reminders_never_applies_to_a_notice() -> None:
    from notifyctl.texts import BUILTIN, TemplateSet

    operator = TemplateSet({(None, None, None): {"text": "Reminder: {{ title }} tomorrow"}})

    assert operator.lookup(None, "rescheduled", "telegram") is BUILTIN
    assert operator.lookup("de", "cancelled", "console") is BUILTIN
    assert operator.lookup(None, "day_before", "telegram").text == "Reminder: {{ title }} tomorrow"
