"""Every channel at once, end to end through the CLI, on SQLite and PostgreSQL.

One booking gets recipients on Telegram (the fake Bot API), a webhook and an
Apprise ``json://`` service (both the scripted HTTP receiver), email (a real
aiosmtpd server on 127.0.0.1) and the console. It is created and dispatched
through the CLI with an operator's German templates file, and each channel
must receive exactly one message, in the operator's words, escaped for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from notifyctl.db import make_engine
from notifyctl.models import DeliveryAttempt, Notification
from tests.fakes.http_receiver import Answer, HttpReceiver, closed_port
from tests.fakes.smtp import SmtpServer, running_smtp
from tests.fakes.telegram import FakeTelegram
from tests.support import Cli, CliResult

REPO = Path(__file__).resolve().parent.parent
TOKEN = "987654321:AAE-e2e_Channels_SECRET_z7"
WEBHOOK_SECRET = "whsec-e2e-Kq81xZ"
EMAIL_FROM = "Buchungen <buchung@example.com>"
TITLE = "Yoga & Tee <Anfänger>"
ZONE = "Europe/Berlin"

TEMPLATES = """\
# English texts: a German booking must never get these
[kinds.hour_before]
text = "Reminder: {{ title }} at {{ start_time }}"
subject = "Soon: {{ title }}"

[locales.de.kinds.hour_before]
subject = "Gleich: {{ title }} um {{ start_time }} Uhr"
text = "Erinnerung: „{{ title }}“ um {{ start_time }} Uhr ({{ timezone }}), Raum {{ data.room }}."
html = "<p>Erinnerung: <b>{{ title }}</b> um {{ start_time }} Uhr, Raum {{ data.room }}.</p>"

[locales.de.kinds.hour_before.telegram]
text = "🔔 <b>{{ title }}</b> beginnt um {{ start_time }} Uhr, Raum {{ data.room }}."
"""


# --- the flow --------------------------------------------------------------------------


@dataclass
class Servers:
    tg: FakeTelegram
    rx: HttpReceiver
    smtp: SmtpServer

    def env(self, templates: Path) -> dict[str, str]:
        return {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": self.tg.api_url,
            "NOTIFYCTL_SMTP_URL": self.smtp.url(),
            "NOTIFYCTL_EMAIL_FROM": EMAIL_FROM,
            "NOTIFYCTL_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "NOTIFYCTL_TEMPLATES": str(templates),
            # the receivers listen on loopback, and json:// may post anywhere: both opt-ins
            "NOTIFYCTL_WEBHOOK_ALLOW": "127.0.0.1",
            "NOTIFYCTL_APPRISE_SCHEMES": "json",
        }


@pytest.fixture
def servers() -> Iterator[Servers]:
    with FakeTelegram(token=TOKEN) as tg, HttpReceiver() as rx, running_smtp() as smtp:
        yield Servers(tg, rx, smtp)


@pytest.fixture
def templates_file(tmp_path: Path) -> Path:
    path = tmp_path / "templates.toml"
    path.write_text(TEMPLATES, encoding="utf-8")
    return path


Run = Callable[..., CliResult]


def process_runner(database_url: str, cwd: Path) -> Run:
    """Like ``Cli``, but each command is a fresh ``python -m notifyctl`` process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFYCTL_", "TELEGRAM_"))}
    base.pop("DATABASE_URL", None)
    base.update(NOTIFYCTL_DATABASE_URL=database_url, NOTIFYCTL_NO_WAIT="1", PYTHONPATH=str(REPO))

    def run(*args: str, **env: str) -> CliResult:
        done = subprocess.run(
            [sys.executable, "-m", "notifyctl", *args],
            env={**base, **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    return run


def ok(run: Run, *args: str, **env: str) -> CliResult:
    result = run(*args, **env)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result


def booking_start() -> datetime:
    """Half an hour from now, on the minute: its hour_before reminder is due now."""
    return (datetime.now(UTC) + timedelta(minutes=30)).replace(second=0, microsecond=0)


def listed(run: Run) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        ok(run, "list", "--status", "all", "--format", "json").stdout
    )
    return rows


def every_channel_flow(run: Run, servers: Servers, templates: Path) -> None:
    """Create one German booking for every channel, dispatch once, check every delivery."""
    env = servers.env(templates)
    start = booking_start()
    hook = servers.rx.url("/hook")
    notify = f"json://127.0.0.1:{servers.rx.port}/notify"
    ok(
        run,
        "create",
        "yoga-de-1",
        "--starts-at",
        start.isoformat(),
        "--ends-at",
        (start + timedelta(hours=1)).isoformat(),
        "--title",
        TITLE,
        "--timezone",
        ZONE,
        "--remind",
        "hour_before",
        "--locale",
        "de",
        "--data",
        "room=A1 <Süd>",
        "--to",
        "12345",
        "--to",
        f"webhook:{hook}",
        "--to",
        "email:anna@example.org",
        "--to",
        f"apprise:{notify}",
        "--to",
        "console:empfang",
        **env,
    )
    ids = {row["channel"]: row["id"] for row in listed(run)}
    assert sorted(ids) == ["apprise", "console", "email", "telegram", "webhook"]

    before = time.time()
    result = ok(run, "dispatch", **env)

    at = start.astimezone(ZoneInfo(ZONE)).strftime("%H:%M")
    german = f"Erinnerung: „{TITLE}“ um {at} Uhr ({ZONE}), Raum A1 <Süd>."
    subject = f"Gleich: {TITLE} um {at} Uhr"

    # console: the plain text, on stdout, then the one summary line
    lines = result.stdout.splitlines()
    assert lines[0] == f"[console:empfang] {german}"
    assert re.fullmatch(r"dispatch: 5 sent in \d+\.\ds", lines[1]), result.stdout
    assert len(lines) == 2
    assert result.stderr == ""

    # telegram: the channel's own template, values HTML-escaped, markup kept
    [message] = servers.tg.messages
    assert (message.chat_id, message.status, message.parse_mode) == ("12345", 200, "HTML")
    assert message.text == (
        f"🔔 <b>Yoga &amp; Tee &lt;Anfänger&gt;</b> beginnt um {at} Uhr, Raum A1 &lt;Süd&gt;."
    )

    # webhook and apprise: one request each, plain text
    by_path: dict[str, list[Any]] = {}
    for request in servers.rx.requests:
        by_path.setdefault(request.path, []).append(request)
    assert sorted(by_path) == ["/hook", "/notify"]
    [webhook] = by_path["/hook"]
    [apprise] = by_path["/notify"]

    assert webhook.method == "POST"
    assert webhook.headers["idempotency-key"] == str(ids["webhook"])
    timestamp = webhook.headers["x-notifyctl-timestamp"]
    assert before - 5 <= int(timestamp) <= time.time() + 5
    signed = f"{timestamp}.{hook}.".encode() + webhook.body  # bound to the receiver's URL
    expected = hmac.new(WEBHOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(webhook.headers["x-notifyctl-signature"], f"sha256={expected}")
    body = webhook.json()
    assert body["notification_id"] == ids["webhook"]
    assert (body["booking_id"], body["kind"], body["title"]) == ("yoga-de-1", "hour_before", TITLE)
    assert body["text"] == german
    assert body["data"] == {"room": "A1 <Süd>"}
    assert body["timezone"] == ZONE
    assert datetime.fromisoformat(body["starts_at"]) == start

    document = apprise.json()
    assert (document["title"], document["message"]) == (subject, german)

    # email: subject, Message-ID from the notification id, plain text and escaped HTML
    [accepted] = servers.smtp.messages
    mail = accepted.parsed()
    assert (accepted.mail_from, accepted.rcpt_tos) == ("buchung@example.com", ("anna@example.org",))
    assert mail["Subject"] == subject
    assert mail["To"] == "anna@example.org"
    assert mail["Message-ID"] == f"<notifyctl-{ids['email']}@example.com>"
    plain = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == german
    assert html.get_content().strip() == (
        f"<p>Erinnerung: <b>Yoga &amp; Tee &lt;Anfänger&gt;</b> um {at} Uhr, "
        "Raum A1 &lt;Süd&gt;.</p>"
    )

    # every reminder sent, once
    rows = listed(run)
    assert [(r["channel"], r["status"], r["attempts"]) for r in rows] == [
        (r["channel"], "sent", 1) for r in rows
    ]
    assert len(rows) == 5


def test_every_channel_gets_one_message_in_the_operators_words(
    cli: Cli, servers: Servers, templates_file: Path
) -> None:
    every_channel_flow(cli, servers, templates_file)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_channel_flow_as_separate_processes(
    database_url: str, servers: Servers, templates_file: Path, tmp_path: Path
) -> None:
    every_channel_flow(process_runner(database_url, tmp_path), servers, templates_file)


def test_a_second_dispatch_sends_nothing_again(
    cli: Cli, servers: Servers, templates_file: Path
) -> None:
    every_channel_flow(cli, servers, templates_file)

    again = ok(cli, "dispatch", **servers.env(templates_file))

    assert (again.stdout, again.stderr) == ("", "")
    assert len(servers.tg.messages) == 1
    assert len(servers.rx.requests) == 2
    assert len(servers.smtp.messages) == 1


# --- apprise is an optional extra -------------------------------------------------------


@pytest.fixture
def without_apprise(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ``notifyctl[apprise]`` were not installed: ``import apprise`` fails."""
    monkeypatch.setitem(sys.modules, "apprise", None)


def create_args(booking: str, *recipients: str) -> list[str]:
    args = ["create", booking, "--starts-at", "+30m", "--ends-at", "+90m"]
    args += ["--remind", "hour_before"]
    for recipient in recipients:
        args += ["--to", recipient]
    return args


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.usefixtures("without_apprise")
def test_without_the_extra_create_rejects_apprise_recipients(cli: Cli) -> None:
    result = cli(
        *create_args("b1", "console:desk", "apprise:json://127.0.0.1:9/notify"),
        NOTIFYCTL_APPRISE_SCHEMES="json",
    )

    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert "notifyctl[apprise]" in line
    assert "Traceback" not in result.stderr
    assert listed(cli) == []  # nothing written, not even the console reminder


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_the_extra_a_due_apprise_reminder_stops_dispatch_with_exit_3(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok(
        cli,
        *create_args("b1", "apprise:json://127.0.0.1:9/notify"),
        NOTIFYCTL_APPRISE_SCHEMES="json",
    )
    monkeypatch.setitem(sys.modules, "apprise", None)  # the extra went away since

    result = cli("dispatch")

    assert result.exit_code == 3
    assert "notifyctl[apprise]" in result.stderr
    [row] = listed(cli)
    assert (row["status"], row["attempts"]) == ("pending", 0)


# --- secrets never in output -------------------------------------------------------------


def _all_output(*results: CliResult) -> str:
    return "\n".join(f"{r.stdout}\n{r.stderr}" for r in results)


def stored_errors(database_url: str) -> list[str]:
    engine = make_engine(database_url, create_file=False)
    try:
        with engine.connect() as conn:
            errors = list(conn.scalars(select(Notification.last_error)))
            errors += list(conn.scalars(select(DeliveryAttempt.error)))
    finally:
        engine.dispose()
    return [e for e in errors if e]


def test_webhook_url_credentials_never_appear_in_cli_output(cli: Cli, database_url: str) -> None:
    password = f"s3cret-{uuid.uuid4().hex[:10]}"
    cli.env["NOTIFYCTL_WEBHOOK_ALLOW"] = "127.0.0.1"  # the receivers listen on loopback
    with HttpReceiver() as rx:
        # the receiver echoes the credentials it was sent, in its error page
        rx.script(Answer(500, body=f"denied user:{password} for {rx.url()}".encode()))
        https_refused = f"https://user:{password}@127.0.0.1:{closed_port()}/hook"
        http_500 = rx.url("/hook", userinfo=f"user:{password}@")
        invalid = f"webhook:ftp://user:{password}@example.com/hook"
        results = [
            cli(*create_args("b1", f"webhook:{https_refused}", f"webhook:{http_500}")),
            cli(*create_args("b2", invalid)),  # rejected: the error must not echo it
            cli("dispatch", "--dry-run"),
            cli("templates", "preview", "b1"),
            cli("dispatch", "-v"),
            cli("list"),
            cli("list", "--status", "all", "--format", "json"),
            cli("list", "--status", "all", "--format", "csv"),
            cli("list", "--summary"),
            cli("stats"),
        ]
        [request] = rx.requests

    assert [r.exit_code for r in results] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    assert "authorization" in request.headers  # the credentials were used to send ...
    output = _all_output(*results)
    assert password not in output  # ... and never shown
    assert "user:***@" in results[5].stdout  # list masks the password, keeps the rest
    assert re.search(r"reminder \d+ webhook:\S+ retried", results[4].stderr)
    errors = stored_errors(database_url)
    assert len(errors) >= 4  # both reminders' last_error and both attempts
    assert not [e for e in errors if password in e]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_create_never_shows_webhook_credentials_of_skipped_reminders(cli: Cli) -> None:
    password = f"s3cret-{uuid.uuid4().hex[:10]}"
    url = f"webhook:https://user:{password}@hooks.example.com/hook"
    # start+2h falls after the end: skipped, and reported per recipient
    args = [*create_args("b1", url), "--remind", "start+2h"]

    text = cli(*args)
    as_json = cli(*create_args("b2", url), "--remind", "start+2h", "--json")

    assert "skipped start+2h" in text.stdout
    assert json.loads(as_json.stdout)["skipped"]
    assert password not in _all_output(text, as_json)


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    return AuthResult(success=False, handled=False)  # every login is refused: 535


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_smtp_password_never_appears_in_cli_output(cli: Cli, database_url: str) -> None:
    password = f"smtp-{uuid.uuid4().hex[:10]}"
    ok(cli, *create_args("b1", "email:anna@example.org"))
    with running_smtp(
        auth_required=True, auth_require_tls=False, authenticator=check_login
    ) as smtp:
        env = {"NOTIFYCTL_EMAIL_FROM": EMAIL_FROM}
        rejected = cli("dispatch", "-v", NOTIFYCTL_SMTP_URL=smtp.url(f"mailer:{password}@"), **env)
        bad_port = f"smtp://mailer:{password}@127.0.0.1:99999"
        malformed = cli("dispatch", "-v", NOTIFYCTL_SMTP_URL=bad_port, **env)
        https = f"https://mailer:{password}@127.0.0.1:{smtp.controller.port}"
        wrong_scheme = cli("dispatch", NOTIFYCTL_SMTP_URL=https, **env)
        listing = cli("list", "--status", "all", "--format", "json")

    assert (rejected.exit_code, malformed.exit_code, wrong_scheme.exit_code) == (3, 3, 3)
    assert "535" in rejected.stderr  # the server's refusal is reported ...
    assert "NOTIFYCTL_SMTP_URL" in malformed.stderr + wrong_scheme.stderr
    assert password not in _all_output(rejected, malformed, wrong_scheme, listing)  # ... safely
    assert smtp.messages == []
    [row] = json.loads(listing.stdout)
    assert row["status"] == "pending"  # bad credentials give the claim back
    assert not [e for e in stored_errors(database_url) if password in e]
