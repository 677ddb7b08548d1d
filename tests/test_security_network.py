"""SPEC §14, the network half: what end-user recipients can make notifyctl do.

Every test runs the real CLI against real servers on 127.0.0.1: a receiver
that trickles its answer a byte at a time, receivers on non-public addresses,
redirecting receivers, Apprise URLs with parameters that read files, an
http:// Telegram API URL, and a signed body replayed to another receiver.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from notifyctl.db import make_engine
from notifyctl.models import DeliveryAttempt
from tests.fakes.http_receiver import Answer, HttpReceiver, closed_port
from tests.fakes.smtp import running_smtp
from tests.fakes.telegram import FakeTelegram, migrated
from tests.fakes.trickle import Trickler
from tests.support import Cli, CliResult

TOKEN = "246813579:AAF-security_Network_SECRET_q1"
SECRET = "whsec-security-0123456789"
SLACK = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
SLACK_TOKEN = "TIiajkdnlazkcOXrIdevi7FQ"
DEADLINE = "0.5"
#: a pre-fix run waits on a trickling receiver forever: the fake gives up after this
SAFETY_NET = 10.0

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def create(
    cli: Cli,
    booking: str,
    *recipients: str,
    options: tuple[str, ...] = ("--starts-at", "+30m", "--ends-at", "+90m"),
    **env: str,
) -> CliResult:
    """A booking whose hour_before reminder is due now (unless ``options`` move it)."""
    args = ["create", booking, *options, "--remind", "hour_before"]
    for recipient in recipients:
        args += ["--to", recipient]
    return cli(*args, **env)


def ok(result: CliResult) -> CliResult:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def rows(cli: Cli) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(
        ok(cli("list", "--status", "all", "--format", "json")).stdout
    )
    return listed


def attempts(database_url: str) -> list[Any]:
    """Every delivery attempt: (outcome, error, uncertain) rows."""
    engine = make_engine(database_url, create_file=False)
    table = DeliveryAttempt.__table__
    try:
        with engine.connect() as conn:
            query = select(table.c.outcome, table.c.error, table.c.uncertain)
            return list(conn.execute(query.order_by(table.c.id)))
    finally:
        engine.dispose()


def one_error_line(result: CliResult) -> str:
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


# --- every send ends at its deadline ---------------------------------------------------------

HTTP_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99999\r\n\r\n"


@contextlib.contextmanager
def trickling(**kwargs: Any) -> Iterator[Trickler]:
    with Trickler(**kwargs) as server:
        timer = threading.Timer(SAFETY_NET, server.stop)
        timer.start()
        yield server
        timer.cancel()


@pytest.mark.parametrize("phase", ["head", "body"])
@pytest.mark.parametrize("channel", ["webhook", "telegram", "apprise"])
def test_a_trickling_http_receiver_cannot_hold_a_send_past_its_deadline(
    cli: Cli, database_url: str, channel: str, phase: str
) -> None:
    # "head": the status line itself trickles; "body": the headers come at once
    shape = {"payload": HTTP_HEAD} if phase == "head" else {"prefix": HTTP_HEAD, "payload": b"{"}
    with trickling(**shape) as trickler:
        env = {
            "NOTIFYCTL_SEND_DEADLINE": DEADLINE,
            "NOTIFYCTL_WEBHOOK_ALLOW": "127.0.0.1",
            "NOTIFYCTL_APPRISE_SCHEMES": "json",
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": f"http://127.0.0.1:{trickler.port}",
        }
        recipient = {
            "webhook": f"webhook:{trickler.url()}",
            "telegram": "12345",
            "apprise": f"apprise:json://127.0.0.1:{trickler.port}/notify",
        }[channel]
        ok(create(cli, "b1", recipient, **env))

        started = time.monotonic()
        result = cli("dispatch", **env)
        elapsed = time.monotonic() - started
        assert trickler.received  # the request went out

    assert result.exit_code == 0, result.stderr
    assert elapsed < 5.0, f"the send outlived its {DEADLINE} s deadline: {elapsed:.1f} s"
    [row] = rows(cli)
    if channel == "webhook" and phase == "body":
        # a webhook's answer is its status line: a body never read cannot hold it
        assert row["status"] == "sent"
        return
    assert row["status"] == "pending"  # retried later, and
    [attempt] = attempts(database_url)
    assert attempt.uncertain is True  # recorded as possibly delivered
    assert "deadline" in (attempt.error or "")
    assert TOKEN.split(":")[1] not in (attempt.error or "")


@sqlite_only
def test_a_trickling_smtp_server_cannot_hold_a_send_past_its_deadline(
    cli: Cli, database_url: str
) -> None:
    env = {
        "NOTIFYCTL_SEND_DEADLINE": DEADLINE,
        "NOTIFYCTL_EMAIL_FROM": "reminders@example.com",
    }
    with trickling(payload=b"220 slow.example ESMTP\r\n", read_request=False) as server:
        env["NOTIFYCTL_SMTP_URL"] = f"smtp://127.0.0.1:{server.port}"
        ok(create(cli, "b1", "email:ann@example.org", **env))
        started = time.monotonic()
        result = cli("dispatch", **env)
        elapsed = time.monotonic() - started

    assert result.exit_code == 0, result.stderr
    assert elapsed < 5.0, f"the send outlived its {DEADLINE} s deadline: {elapsed:.1f} s"
    [attempt] = attempts(database_url)
    assert "deadline" in (attempt.error or "")
    assert attempt.uncertain is False  # still in the greeting: nothing was sent


# --- webhooks reach only public addresses ------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "10.0.0.8",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "224.0.0.1",
        "0.0.0.0",
        "[::1]",
        "[::]",
        "[fc00::1]",
        "[fd12:3456::1]",
        "[fe80::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    ],
)
def test_create_refuses_a_webhook_to_a_literal_non_public_address(cli: Cli, host: str) -> None:
    result = create(cli, "b1", "console:desk", f"webhook:http://{host}:8080/hook")

    assert result.exit_code == 2
    line = one_error_line(result)
    assert "non-public" in line
    assert "NOTIFYCTL_WEBHOOK_ALLOW" in line
    assert rows(cli) == []  # nothing written, not even the console reminder


def test_a_webhook_name_resolving_to_loopback_is_refused_at_send_time(
    cli: Cli, database_url: str
) -> None:
    with HttpReceiver() as rx:
        ok(create(cli, "b1", f"webhook:http://localhost:{rx.port}/hook"))  # names pass create
        result = cli("dispatch")
        assert rx.requests == []  # never reached

    assert result.exit_code == 0, result.stderr
    [row] = rows(cli)
    assert row["status"] == "failed"
    assert "NOTIFYCTL_WEBHOOK_ALLOW" in row["last_error"]


@sqlite_only
@pytest.mark.parametrize("allow", ["localhost", "127.0.0.0/8", "  10.0.0.0/8, LOCALHOST ,"])
def test_internal_receivers_named_in_the_allowlist_get_their_webhooks(cli: Cli, allow: str) -> None:
    with HttpReceiver() as rx:
        env = {"NOTIFYCTL_WEBHOOK_ALLOW": allow}
        ok(create(cli, "b1", f"webhook:http://localhost:{rx.port}/hook", **env))
        ok(cli("dispatch", **env))
        assert len(rx.requests) == 1
    assert [r["status"] for r in rows(cli)] == ["sent"]


@sqlite_only
def test_every_resolved_address_is_checked_and_the_checked_one_connected_to(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "rebind.test" answers a public address and a loopback one: refused, even
    # though a connection to the first would have worked
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            calls.append(host)
            public = real("8.8.8.8", port, *args, **kwargs)
            return public + real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with HttpReceiver() as rx:
        ok(create(cli, "b1", f"webhook:http://rebind.test:{rx.port}/hook"))
        ok(cli("dispatch"))
        assert rx.requests == []
    [row] = rows(cli)
    assert row["status"] == "failed"
    assert calls == ["rebind.test"]  # resolved once: what was checked is what is used


@sqlite_only
def test_a_bad_allowlist_is_a_configuration_error(cli: Cli) -> None:
    result = create(
        cli, "b1", "webhook:https://hooks.example.com/h", NOTIFYCTL_WEBHOOK_ALLOW="10.0.0.0/8,a b"
    )
    assert result.exit_code == 3
    assert "NOTIFYCTL_WEBHOOK_ALLOW" in one_error_line(result)


def test_only_the_status_line_of_an_error_answer_is_stored(cli: Cli, database_url: str) -> None:
    with HttpReceiver() as rx:
        rx.script(Answer(500, body=b"<h1>internal-admin-page: db password hunter2</h1>"))
        env = {"NOTIFYCTL_WEBHOOK_ALLOW": "127.0.0.1"}
        ok(create(cli, "b1", f"webhook:{rx.url()}", **env))
        ok(cli("dispatch", **env))

    [row] = rows(cli)
    assert row["last_error"] == "HTTP 500 Internal Server Error"
    [attempt] = attempts(database_url)
    assert attempt.error == "HTTP 500 Internal Server Error"


@sqlite_only
def test_webhooks_ignore_netrc_and_environment_proxies(cli: Cli, tmp_path: Path) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login operator password netrc-Secret-77\n")
    netrc.chmod(0o600)
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    env = {
        "NOTIFYCTL_WEBHOOK_ALLOW": "127.0.0.1",
        "HOME": str(tmp_path),
        "NETRC": str(netrc),
        "HTTP_PROXY": dead_proxy,
        "HTTPS_PROXY": dead_proxy,
        "ALL_PROXY": dead_proxy,
        "NO_PROXY": "",
    }
    with HttpReceiver() as rx:
        ok(create(cli, "b1", f"webhook:{rx.url()}", **env))
        ok(cli("dispatch", **env))
        [request] = rx.requests  # straight to the receiver, not through the proxy
    assert "authorization" not in request.headers  # the operator's .netrc stays home
    assert [r["status"] for r in rows(cli)] == ["sent"]


@sqlite_only
def test_telegram_goes_through_the_operators_proxy_unless_no_proxy_exempts_it(cli: Cli) -> None:
    api_url = f"http://127.0.0.1:{closed_port()}"  # nobody there: reachable through the proxy only
    with HttpReceiver() as proxy:  # answers {"ok": true} as the Bot API would
        env = {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": api_url,
            "HTTP_PROXY": proxy.url(""),
            "NO_PROXY": "",
        }
        ok(create(cli, "b1", "12345"))
        ok(cli("dispatch", **env))
        [request] = proxy.requests
        assert request.path == f"{api_url}/bot{TOKEN}/sendMessage"  # a forward proxy's request
        assert request.json()["chat_id"] == "12345"

        ok(create(cli, "b2", "12345"))
        ok(cli("dispatch", **{**env, "NO_PROXY": "127.0.0.1"}))
        assert len(proxy.requests) == 1  # straight to the API URL, where nobody listens
    assert sorted(r["status"] for r in rows(cli)) == ["pending", "sent"]


# --- Apprise: allowed services, no parameters that read, fetch or re-time ---------------------


@sqlite_only
@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?template=/etc/passwd", "template"),
        ("?template=http://169.254.169.254/latest/meta-data/", "template"),
        ("?attach=file:///etc/shadow", "attach"),
        ("?avatar_url=http://10.0.0.1/x.png", "avatar_url"),
        ("?verify=no", "verify"),
        ("?method=GET", "method"),
        ("?cto=600&rto=600", "cto"),
        ("?redirect=yes", "redirect"),
        ("?retry=9&wait=60", "retry"),
        ("?+X-Injected=1", "+"),
        ("?-token=x", "+"),
        ("?:text=forged", "+"),
        ("?footer=http://169.254.169.254/", "URL or a file"),
        ("?format=text;template=/etc/passwd", "template"),
    ],
)
def test_create_refuses_apprise_parameters_that_read_fetch_or_re_time(
    cli: Cli, query: str, named: str
) -> None:
    result = create(cli, "b1", "console:desk", f"apprise:{SLACK}{query}")

    assert result.exit_code == 2
    line = one_error_line(result)
    assert named in line
    assert SLACK_TOKEN not in line
    assert rows(cli) == []


@sqlite_only
@pytest.mark.parametrize(
    "url",
    [
        "json://127.0.0.1:9/notify",  # posts to any host
        "xml://169.254.169.254/",
        "mailtos://user:pass@internal.example",  # an SMTP server of the user's choosing
        "ntfy://127.0.0.1/topic",
        "windows://",  # acts on the host itself
    ],
)
def test_create_accepts_only_the_allowed_apprise_services(cli: Cli, url: str) -> None:
    result = create(cli, "b1", f"apprise:{url}")
    assert result.exit_code == 2
    assert "NOTIFYCTL_APPRISE_SCHEMES" in one_error_line(result)
    # the operator can opt in
    scheme = url.split("://")[0]
    if scheme in ("json", "ntfy"):
        ok(create(cli, "b1", f"apprise:{url}", NOTIFYCTL_APPRISE_SCHEMES=f"{scheme},slack"))


def test_apprise_services_the_operator_no_longer_allows_are_not_sent(
    cli: Cli, database_url: str
) -> None:
    with HttpReceiver() as rx:
        url = f"apprise:json://127.0.0.1:{rx.port}/notify"
        ok(create(cli, "b1", url, NOTIFYCTL_APPRISE_SCHEMES="json"))
        ok(cli("dispatch"))  # the default set, without json, applies now
        assert rx.requests == []
    [row] = rows(cli)
    assert row["status"] == "failed"
    assert "NOTIFYCTL_APPRISE_SCHEMES" in row["last_error"]


@sqlite_only
def test_apprise_tokens_are_masked_wherever_recipients_are_shown(cli: Cli) -> None:
    tgram_token = "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    tgram = f"apprise:tgram://123456789:{tgram_token}/12345"
    discord_native = "apprise:https://discord.com/api/webhooks/4174216298/JHMHI8qBe7bk2ZwO5U711o3dV"
    recipients = (f"apprise:{SLACK}", tgram, discord_native)
    later = ("--starts-at", "+5h", "--ends-at", "+6h")
    results = [
        ok(create(cli, "b1", *recipients)),
        # skipped lines: start+3h falls after the end
        ok(create(cli, "b2", *recipients, options=(*later, "--remind", "start+3h"))),
        ok(create(cli, "b3", *recipients, options=(*later, "--remind", "start+3h", "--json"))),
        ok(cli("list")),
        ok(cli("list", "--status", "all", "--format", "json")),
        ok(cli("list", "--status", "all", "--format", "csv")),
        ok(cli("dispatch", "--dry-run")),
    ]
    output = "\n".join(r.stdout + r.stderr for r in results)
    assert "skipped" in results[1].stdout
    for secret in (SLACK_TOKEN, tgram_token, "JHMHI8qBe7bk2ZwO5U711o3dV"):
        assert secret not in output
    assert "slack://" in output
    assert "tgram://" in output


# --- Telegram: https only, no redirects, a valid new chat id -----------------------------------


@sqlite_only
@pytest.mark.parametrize(
    "api_url", ["http://api.telegram.org", "http://10.0.0.5:8081", "ftp://api.telegram.org"]
)
def test_an_http_telegram_api_url_to_another_host_stops_dispatch(cli: Cli, api_url: str) -> None:
    with FakeTelegram(token=TOKEN) as tg:
        ok(create(cli, "b1", "12345"))
        result = cli("dispatch", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=api_url)
        assert tg.messages == []

    assert result.exit_code == 3
    assert "https" in result.stderr
    assert "TELEGRAM_API_URL" in result.stderr
    assert TOKEN.split(":")[1] not in result.stderr
    [row] = rows(cli)
    assert (row["status"], row["attempts"]) == ("pending", 0)


@sqlite_only
def test_plain_http_to_a_loopback_bot_api_still_works(cli: Cli) -> None:
    with FakeTelegram(token=TOKEN) as tg:
        ok(create(cli, "b1", "12345"))
        api = tg.api_url.replace("127.0.0.1", "localhost")
        ok(cli("dispatch", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=api))
        assert len(tg.messages) == 1


@pytest.mark.parametrize("channel", ["webhook", "telegram", "apprise"])
def test_redirects_are_never_followed(cli: Cli, channel: str) -> None:
    env = {
        "NOTIFYCTL_WEBHOOK_ALLOW": "127.0.0.1",
        "NOTIFYCTL_APPRISE_SCHEMES": "json",
        "TELEGRAM_BOT_TOKEN": TOKEN,
    }
    with HttpReceiver() as rx:
        env["TELEGRAM_API_URL"] = f"http://127.0.0.1:{rx.port}"
        target = f"http://127.0.0.1:{rx.port}/elsewhere"
        rx.script(*[Answer(status, {"Location": target}, b"") for status in (302, 307, 308)])
        recipient = {
            "webhook": f"webhook:{rx.url()}",
            "telegram": "12345",
            "apprise": f"apprise:json://127.0.0.1:{rx.port}/notify",
        }[channel]
        ok(create(cli, "b1", recipient, **env))
        ok(cli("dispatch", **env))
        paths = [r.path for r in rx.requests]

    assert "/elsewhere" not in paths
    assert len(paths) == 1
    [row] = rows(cli)
    assert row["status"] in ("failed", "pending")  # apprise reports only "failed": backoff
    assert row["status"] == "pending" or "redirect" in row["last_error"]


@sqlite_only
@pytest.mark.parametrize(
    "new_id",
    [
        12345,  # a private chat is never a migration target
        -4000,  # the chat itself
        -10012345678901234,  # beyond 52 bits
        -42,  # not a supergroup id
        "-100abc",
        True,
    ],
)
def test_an_invalid_migrate_to_chat_id_moves_nothing(cli: Cli, new_id: Any) -> None:
    with FakeTelegram(token=TOKEN) as tg:
        ok(create(cli, "b1", "-4000"))
        ok(create(cli, "b2", "-4000", options=("--starts-at", "+5h", "--ends-at", "+6h")))
        tg.script(-4000, migrated(new_id))
        ok(cli("dispatch", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=tg.api_url))
        assert len(tg.messages) == 1  # not sent again to a "new" chat

    listed = rows(cli)
    assert {r["recipient"] for r in listed} == {"-4000"}  # nothing moved
    failed = [r for r in listed if r["status"] == "failed"]
    assert len(failed) == 1
    assert "not valid" in failed[0]["last_error"]


@sqlite_only
def test_a_valid_migrate_to_chat_id_still_moves_the_chat(cli: Cli) -> None:
    with FakeTelegram(token=TOKEN) as tg:
        ok(create(cli, "b1", "-4000"))
        tg.script(-4000, migrated(-1001234567890))
        ok(cli("dispatch", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=tg.api_url))
        assert [str(m.chat_id) for m in tg.messages][-1] == "-1001234567890"


# --- webhook signatures are bound to the receiver ----------------------------------------------


def readme_verify(my_url: str, secret: bytes, headers: Any, body: bytes) -> bool:
    """The README's verifier, verbatim but for MY_URL becoming a parameter."""
    timestamp = headers.get("X-Notifyctl-Timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return False
    signed = f"{timestamp}.{my_url}.".encode() + body
    expected = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-Notifyctl-Signature", ""))


def test_a_signed_body_cannot_be_replayed_to_another_receiver(cli: Cli) -> None:
    env = {"NOTIFYCTL_WEBHOOK_ALLOW": "127.0.0.1", "NOTIFYCTL_WEBHOOK_SECRET": SECRET}
    with HttpReceiver() as rx:
        mallory, victim = rx.url("/end-user-hook"), rx.url("/billing-hook")
        ok(create(cli, "b1", f"webhook:{mallory}", **env))
        ok(cli("dispatch", **env))
        [received] = rx.requests

    headers = {
        "X-Notifyctl-Timestamp": received.headers["x-notifyctl-timestamp"],
        "X-Notifyctl-Signature": received.headers["x-notifyctl-signature"],
    }
    assert readme_verify(mallory, SECRET.encode(), headers, received.body)
    # the same headers and body, replayed by the end user to the operator's receiver
    assert not readme_verify(victim, SECRET.encode(), headers, received.body)


def test_readme_shows_the_verifier_this_file_uses() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for line in (
        'signed = f"{timestamp}.{MY_URL}.".encode() + body',
        'expected = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()',
        'return hmac.compare_digest(expected, headers.get("X-Notifyctl-Signature", ""))',
    ):
        assert line in readme


# --- the SMTP deadline also covers a reused connection's DATA ----------------------------------


@sqlite_only
def test_email_still_goes_out_within_the_deadline(cli: Cli) -> None:
    with running_smtp() as smtp:
        env = {
            "NOTIFYCTL_SEND_DEADLINE": "2",
            "NOTIFYCTL_SMTP_URL": smtp.url(),
            "NOTIFYCTL_EMAIL_FROM": "reminders@example.com",
        }
        ok(create(cli, "b1", "email:ann@example.org", "email:bob@example.org", **env))
        ok(cli("dispatch", **env))
        assert len(smtp.messages) == 2


def test_the_deadline_watchdog_keeps_only_the_sends_under_way() -> None:
    """A fast run sends thousands of messages within one deadline's length: the watchdog
    must not hold every one of them until its deadline passes (RSS grew with the rate)."""
    from notifyctl.channels import netguard

    watchdog = netguard._WATCHDOG
    with netguard.Deadline(300) as under_way:
        for _ in range(5000):
            with netguard.Deadline(300):
                pass
        held = [entry[2] for entry in watchdog._heap]
        assert len(held) <= 2 * 1 + 64 + 1
        assert under_way in held  # the send still under way keeps its deadline
