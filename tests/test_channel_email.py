"""email: channel against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import io
import shutil
import socket
import ssl
import subprocess
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from notifyctl.channels import email as em
from notifyctl.channels import parse_recipient
from notifyctl.channels.base import ChannelContext, Delivery, Message, SendResult
from notifyctl.config import Settings
from notifyctl.errors import ConfigError, InvalidInput
from tests.fakes.smtp import EphemeralController

# aiosmtpd warns about AUTH over plain text, which the loopback tests do on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

NOW = 1_700_000_000.0
USER = "mailer"
PASSWORD = "smtp-Pa55word!"
FROM = "Bookings <reminders@example.com>"


# --- a recording SMTP server ----------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    peer: Any  # (host, port): one value per connection
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    user: bytes | None

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class Recorder:
    """aiosmtpd handler: records envelopes; replies can be scripted per recipient."""

    delivered: list[Delivered] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_replies: deque[str] = field(default_factory=deque)
    data_action: deque[str] = field(default_factory=deque)  # "drop" | "hang"
    quits: int = 0
    servers: dict[Any, Any] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.servers[session.peer] = server
        action = self.data_action.popleft() if self.data_action else ""
        if action == "hang":
            await asyncio.get_running_loop().create_future()  # cancelled when the server stops
        if self.data_replies:
            return self.data_replies.popleft()
        user = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.delivered.append(
            Delivered(
                session.peer,
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                server.transport.get_extra_info("ssl_object") is not None,
                user,
            )
        )
        if action == "drop":  # took the message, then died before answering
            server.transport.close()
        return "250 2.0.0 Message accepted for delivery"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"


@dataclass
class SmtpServer:
    controller: Any
    recorder: Recorder

    @property
    def host(self) -> str:
        return str(self.controller.hostname)

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def url(self, scheme: str = "smtp", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo}{self.host}:{self.port}"

    def drop_connection(self, peer: Any) -> None:
        """Close the server side of one connection, as an idle timeout would."""

        async def close() -> None:
            self.recorder.servers[peer].transport.close()

        asyncio.run_coroutine_threadsafe(close(), self.controller.loop).result(5)


@contextlib.contextmanager
def running_smtp(**kwargs: Any) -> Iterator[SmtpServer]:
    kwargs.setdefault("hostname", "127.0.0.1")
    recorder = Recorder()
    controller = EphemeralController(recorder, port=0, **kwargs)
    controller.start()
    try:
        yield SmtpServer(controller, recorder)
    finally:
        controller.stop()


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    # handled=False: aiosmtpd answers 535 itself on failure
    return AuthResult(success=ok, handled=False, auth_data=data if ok else None)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with running_smtp() as server:
        yield server


@pytest.fixture
def auth_smtp() -> Iterator[SmtpServer]:
    with running_smtp(
        auth_required=True, auth_require_tls=False, authenticator=check_login
    ) as server:
        yield server


def make_context(
    smtp_url: str | None, email_from: str | None = FROM, **kw: float
) -> ChannelContext:
    settings = Settings(database_url="sqlite://", smtp_url=smtp_url, email_from=email_from)
    return ChannelContext(settings=settings, stdout=io.StringIO(), **kw)


@contextlib.contextmanager
def open_channel(url: str, **kwargs: Any) -> Iterator[em.EmailChannel]:
    timeouts = {k: kwargs.pop(k) for k in ("connect_timeout", "read_timeout") if k in kwargs}
    ch = em.open_channel(make_context(url, **timeouts), now=lambda: NOW, **kwargs)
    try:
        yield ch
    finally:
        ch.close()


def make_message(to: str = "alice@example.org", notification_id: int = 42, **kw: Any) -> Message:
    kw.setdefault("text", 'Reminder: "Yoga" starts in 1 hour at 18:00 (Europe/Berlin).')
    return Message(
        notification_id=notification_id,
        booking_id="B-1",
        kind="hour_before",
        recipient=to,
        **kw,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- TLS material ---------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A self-signed certificate for 127.0.0.1 and 127.0.0.2 (made with openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    certs = Certs(folder / "cert.pem", folder / "key.pem")
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=notifyctl-test"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost"),
            *("-keyout", str(certs.key), "-out", str(certs.cert)),
        ],
        check=True,
        capture_output=True,
    )
    return certs


def second_loopback_available() -> bool:
    """127.0.0.2 answers on Linux; it is not one of the plain-SMTP loopback names."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError:
        return False
    return True


# --- validation and configuration -----------------------------------------------------


@pytest.mark.parametrize(
    ("address", "normalised"),
    [
        ("alice@example.org", "alice@example.org"),
        ("Alice.Smith+yoga@Example.ORG", "Alice.Smith+yoga@example.org"),
        ("ops@localhost", "ops@localhost"),
        ("o'brien@sub.example.co.uk", "o'brien@sub.example.co.uk"),
        ("zoe@bücher.example", "zoe@xn--bcher-kva.example"),
    ],
)
def test_validate_accepts_plausible_addresses(address: str, normalised: str) -> None:
    assert em.validate(address) == normalised


@pytest.mark.parametrize(
    "address",
    [
        "",
        "alice",
        "alice@",
        "@example.org",
        "alice@@example.org",
        "alice@bob@example.org",
        "alice@example",
        "alice@.example.org",
        "alice@example..org",
        "alice@example.org.",
        "alice smith@example.org",
        "alice@example.org\nBcc: mallory@example.net",
        "alice@example.org\r",
        "Alice <alice@example.org>",
        "alice@[192.0.2.1]",
        ".alice@example.org",
        "zoë@example.org",
    ],
)
def test_validate_rejects_implausible_addresses(address: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        em.validate(address)


def test_registry_parses_email_recipients() -> None:
    assert parse_recipient("email:Bob@Example.COM") == ("email", "Bob@example.com")
    with pytest.raises(InvalidInput, match="email"):
        parse_recipient("email:not-an-address")


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("smtp://mail.example.com", em.SmtpTarget("mail.example.com", 587, "starttls")),
        ("smtp://mail.example.com:25", em.SmtpTarget("mail.example.com", 25, "starttls")),
        ("SMTP://mail.example.com:2525", em.SmtpTarget("mail.example.com", 2525, "starttls")),
        ("smtp://localhost", em.SmtpTarget("localhost", 25, "plain")),
        ("smtp://127.0.0.1:2525", em.SmtpTarget("127.0.0.1", 2525, "plain")),
        ("smtp://[::1]:25", em.SmtpTarget("::1", 25, "plain")),
        ("smtp://localhost:587", em.SmtpTarget("localhost", 587, "starttls")),
        ("smtp://127.0.0.2:25", em.SmtpTarget("127.0.0.2", 25, "starttls")),
        ("smtps://mail.example.com", em.SmtpTarget("mail.example.com", 465, "tls")),
        ("smtps://127.0.0.1:1465", em.SmtpTarget("127.0.0.1", 1465, "tls")),
        (
            "smtp://me%40example.com:p%40ss%3Aword@mail.example.com:587",
            em.SmtpTarget("mail.example.com", 587, "starttls", "me@example.com", "p@ss:word"),
        ),
    ],
)
def test_smtp_url_picks_tls_mode_and_port(url: str, target: em.SmtpTarget) -> None:
    assert em.parse_smtp_url(url) == target


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"smtp_url": None}, "NOTIFYCTL_SMTP_URL is not set"),
        ({"smtp_url": ""}, "NOTIFYCTL_SMTP_URL is not set"),
        ({"email_from": None}, "NOTIFYCTL_EMAIL_FROM is not set"),
        ({"email_from": "not an address"}, "NOTIFYCTL_EMAIL_FROM"),
        ({"smtp_url": f"http://{USER}:{PASSWORD}@mail.example.com"}, "smtp:// or smtps://"),
        ({"smtp_url": f"smtp://{USER}:{PASSWORD}@mail.example.com:99999"}, "not a valid URL"),
        ({"smtp_url": f"smtp://{USER}:{PASSWORD}@:587"}, "no host"),
        ({"smtp_url": f"smtp://:{PASSWORD}@mail.example.com"}, "no user"),
    ],
)
def test_check_config_rejects_missing_or_bad_settings_without_the_password(
    settings: dict[str, str | None], message: str
) -> None:
    values: dict[str, Any] = {
        "smtp_url": f"smtp://{USER}:{PASSWORD}@mail.example.com:587",
        "email_from": FROM,
    }
    values.update(settings)
    with pytest.raises(ConfigError, match=message) as info:
        em.check_config(Settings(database_url="sqlite://", **values))
    assert PASSWORD not in info.value.message


def test_opening_the_channel_checks_the_config() -> None:
    with pytest.raises(ConfigError, match="NOTIFYCTL_SMTP_URL"):
        em.open_channel(make_context(None))


def test_channel_shape() -> None:
    ch = em.open_channel(make_context("smtp://localhost"))
    try:
        assert (ch.text_format, ch.pacing_key, ch.max_text_length) == ("plain", None, None)
    finally:
        ch.close()  # never connected: nothing to do


# --- delivery -------------------------------------------------------------------------


def test_sends_a_plain_text_email_with_a_stable_message_id(smtp: SmtpServer) -> None:
    message = make_message(subject="Yoga in 1 hour", text="Café at 18:00 (Europe/Berlin).\n")
    with open_channel(smtp.url()) as ch:
        result = ch.send(message)
    assert result == SendResult.sent("<notifyctl-42@example.com>")

    [delivered] = smtp.recorder.delivered
    assert delivered.mail_from == "reminders@example.com"
    assert delivered.rcpt_tos == ["alice@example.org"]
    assert delivered.tls is False  # plain SMTP, allowed on loopback only
    mail = delivered.parsed()
    assert mail["From"] == FROM
    assert mail["To"] == "alice@example.org"
    assert mail["Subject"] == "Yoga in 1 hour"
    assert mail["Message-ID"] == "<notifyctl-42@example.com>"
    assert mail["Date"].datetime == dt.datetime.fromtimestamp(NOW, dt.UTC)
    assert mail["Auto-Submitted"] == "auto-generated"
    assert not mail.is_multipart()
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content().replace("\r\n", "\n") == "Café at 18:00 (Europe/Berlin).\n"
    # 7-bit on the wire: no server needs 8BITMIME
    assert all(byte < 128 for byte in delivered.content)


def test_html_part_is_an_alternative_to_the_text(smtp: SmtpServer) -> None:
    message = make_message(text="Yoga at 18:00", html="<p>Yoga at <b>18:00</b></p>")
    with open_channel(smtp.url()) as ch:
        assert ch.send(message).delivery is Delivery.SENT
    mail = smtp.recorder.delivered[0].parsed()
    assert mail.get_content_type() == "multipart/alternative"
    plain = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == "Yoga at 18:00"
    assert html.get_content().strip() == "<p>Yoga at <b>18:00</b></p>"


@pytest.mark.parametrize(
    ("subject", "text", "expected"),
    [
        ("Yoga soon", "whatever", "Yoga soon"),
        ("  Two\nlines  ", "x", "Two lines"),
        (None, '"Yoga" starts at 18:00.\nBring a mat.', 'Reminder: "Yoga" starts at 18:00.'),
        (None, "\n\nReminder: Yoga at 18:00", "Reminder: Yoga at 18:00"),
        (None, "", "Reminder"),
        (None, "x" * 200, "Reminder: " + "x" * 67 + "…"),
    ],
)
def test_subject_falls_back_to_the_first_line(
    subject: str | None, text: str, expected: str
) -> None:
    result = em.subject_for(make_message(subject=subject, text=text))
    assert result == expected
    assert len(result) <= em.MAX_SUBJECT


def test_a_batch_shares_one_connection_and_close_quits(smtp: SmtpServer) -> None:
    with open_channel(smtp.url()) as ch:
        results = [ch.send(make_message(f"user{i}@example.org", i)) for i in range(3)]
        assert smtp.recorder.quits == 0
    assert [r.provider_id for r in results] == [f"<notifyctl-{i}@example.com>" for i in range(3)]
    assert len({d.peer for d in smtp.recorder.delivered}) == 1
    assert smtp.recorder.quits == 1


def test_a_dropped_idle_connection_is_opened_again(smtp: SmtpServer) -> None:
    with open_channel(smtp.url()) as ch:
        assert ch.send(make_message(notification_id=1)).delivery is Delivery.SENT
        smtp.drop_connection(smtp.recorder.delivered[0].peer)
        assert ch.send(make_message(notification_id=2)).delivery is Delivery.SENT
    first, second = smtp.recorder.delivered
    assert first.peer != second.peer


@pytest.mark.parametrize(
    ("code", "delivery"),
    [(550, Delivery.GONE), (551, Delivery.GONE), (553, Delivery.GONE), (554, Delivery.FAILED)],
)
def test_recipient_5xx_fails_and_the_connection_goes_on(
    smtp: SmtpServer, code: int, delivery: Delivery
) -> None:
    """550/551/553 for the mailbox: it is gone (suppressed, SPEC §11); other 5xx fail it."""
    smtp.recorder.rcpt_replies["gone@example.org"] = (
        f"{code} 5.1.1 <gone@example.org>: no such user"
    )
    with open_channel(smtp.url()) as ch:
        refused = ch.send(make_message("gone@example.org", 1))
        accepted = ch.send(make_message("alice@example.org", 2))
    assert refused.delivery is delivery
    assert (
        refused.error == f"SMTP {code}: recipient refused: 5.1.1 <gone@example.org>: no such user"
    )
    assert accepted.delivery is Delivery.SENT
    assert [d.rcpt_tos for d in smtp.recorder.delivered] == [["alice@example.org"]]
    assert len({d.peer for d in smtp.recorder.delivered}) == 1


def test_recipient_4xx_backs_off(smtp: SmtpServer) -> None:
    smtp.recorder.rcpt_replies["busy@example.org"] = "450 4.2.1 mailbox busy, try later"
    with open_channel(smtp.url()) as ch:
        result = ch.send(make_message("busy@example.org"))
    assert result.delivery is Delivery.RETRY
    assert result.error == "SMTP 450: recipient refused: 4.2.1 mailbox busy, try later"


@pytest.mark.parametrize(
    ("reply", "delivery"),
    [
        ("554 5.6.0 message content rejected", Delivery.FAILED),
        ("552 5.3.4 message too big", Delivery.FAILED),
        ("451 4.3.0 local error in processing", Delivery.RETRY),
        ("421 4.3.2 shutting down", Delivery.RETRY),
    ],
)
def test_data_replies_decide_the_outcome(smtp: SmtpServer, reply: str, delivery: Delivery) -> None:
    smtp.recorder.data_replies.append(reply)
    with open_channel(smtp.url()) as ch:
        result = ch.send(make_message(notification_id=1))
        assert ch.send(make_message(notification_id=2)).delivery is Delivery.SENT
    assert result.delivery is delivery
    assert result.error == f"SMTP {reply[:3]}: {reply[4:]}"


def test_a_drop_after_the_data_is_an_uncertain_retry(smtp: SmtpServer) -> None:
    smtp.recorder.data_action.append("drop")
    with open_channel(smtp.url()) as ch:
        result = ch.send(make_message())
        again = ch.send(make_message())
    assert result.delivery is Delivery.RETRY
    assert result.uncertain is True
    assert again.delivery is Delivery.SENT
    # the duplicate carries the same Message-ID, so mail clients can fold it
    ids = {d.parsed()["Message-ID"] for d in smtp.recorder.delivered}
    assert ids == {"<notifyctl-42@example.com>"}


def test_a_read_timeout_is_an_uncertain_retry(smtp: SmtpServer) -> None:
    smtp.recorder.data_action.append("hang")
    with open_channel(smtp.url(), read_timeout=0.2) as ch:
        result = ch.send(make_message())
    assert result.delivery is Delivery.RETRY
    assert result.uncertain is True
    assert "timed out" in (result.error or "")


def test_connection_refused_backs_off() -> None:
    with open_channel(f"smtp://{USER}:{PASSWORD}@127.0.0.1:{closed_port()}") as ch:
        result = ch.send(make_message())
    assert result.delivery is Delivery.RETRY
    assert result.uncertain is False
    assert "ConnectionRefusedError" in (result.error or "")
    assert PASSWORD not in (result.error or "")


def test_connect_timeout_backs_off() -> None:
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):  # fill the accept queue: the next handshake never completes
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        with open_channel(f"smtp://127.0.0.1:{port}", connect_timeout=0.2) as ch:
            result = ch.send(make_message())
    assert result.delivery is Delivery.RETRY
    assert result.uncertain is False


# --- authentication -------------------------------------------------------------------


def test_logs_in_with_the_url_credentials(auth_smtp: SmtpServer) -> None:
    with open_channel(auth_smtp.url(userinfo=f"{USER}:{PASSWORD.replace('!', '%21')}@")) as ch:
        assert ch.send(make_message()).delivery is Delivery.SENT
    assert auth_smtp.recorder.delivered[0].user == USER.encode()


@pytest.mark.parametrize(
    "userinfo",
    [f"{USER}:wrong-{PASSWORD}@", f"{USER}:@", ""],
    ids=["wrong password", "empty password", "no credentials"],
)
def test_rejected_or_missing_credentials_stop_the_run(auth_smtp: SmtpServer, userinfo: str) -> None:
    with open_channel(auth_smtp.url(userinfo=userinfo)) as ch:
        result = ch.send(make_message())
    assert result.delivery is Delivery.BAD_CREDENTIALS
    assert "NOTIFYCTL_SMTP_URL" in (result.error or "")
    assert PASSWORD not in (result.error or "")
    assert auth_smtp.recorder.delivered == []


def test_credentials_for_a_server_without_auth_stop_the_run(smtp: SmtpServer) -> None:
    with open_channel(smtp.url(userinfo=f"{USER}:{PASSWORD}@")) as ch:
        result = ch.send(make_message())
    assert result.delivery is Delivery.BAD_CREDENTIALS
    assert "AUTH" in (result.error or "")
    assert PASSWORD not in (result.error or "")


# --- TLS ------------------------------------------------------------------------------


def test_smtps_uses_implicit_tls(certs: Certs) -> None:
    with (
        running_smtp(
            ssl_context=certs.server_context(),
            auth_required=True,
            auth_require_tls=False,  # aiosmtpd only counts STARTTLS as TLS
            authenticator=check_login,
        ) as server,
        open_channel(
            server.url("smtps", f"{USER}:{PASSWORD}@"), ssl_context=certs.client_context()
        ) as ch,
    ):
        assert ch.send(make_message()).delivery is Delivery.SENT
    [delivered] = server.recorder.delivered
    assert delivered.tls is True
    assert delivered.user == USER.encode()


def test_an_untrusted_certificate_stops_the_run(certs: Certs) -> None:
    with (
        running_smtp(ssl_context=certs.server_context()) as server,
        open_channel(server.url("smtps", f"{USER}:{PASSWORD}@")) as ch,  # system CAs only
    ):
        result = ch.send(make_message())
    assert result.delivery is Delivery.BAD_CREDENTIALS
    assert "certificate" in (result.error or "")
    assert PASSWORD not in (result.error or "")
    assert server.recorder.delivered == []


needs_127_0_0_2 = pytest.mark.skipif(
    not second_loopback_available(), reason="127.0.0.2 is not routed to loopback here"
)


@needs_127_0_0_2
def test_smtp_to_a_non_loopback_host_upgrades_with_starttls(certs: Certs) -> None:
    with (
        running_smtp(
            hostname="127.0.0.2",
            tls_context=certs.server_context(),
            require_starttls=True,
            auth_required=True,
            authenticator=check_login,
        ) as server,
        open_channel(
            server.url("smtp", f"{USER}:{PASSWORD}@"), ssl_context=certs.client_context()
        ) as ch,
    ):
        assert ch.send(make_message()).delivery is Delivery.SENT
    [delivered] = server.recorder.delivered
    assert delivered.tls is True
    assert delivered.user == USER.encode()


@needs_127_0_0_2
def test_a_server_without_starttls_is_refused_not_used_in_plain_text() -> None:
    with (
        running_smtp(hostname="127.0.0.2") as server,
        open_channel(server.url("smtp", f"{USER}:{PASSWORD}@")) as ch,
    ):
        result = ch.send(make_message())
    assert result.delivery is Delivery.BAD_CREDENTIALS
    assert "STARTTLS" in (result.error or "")
    assert server.recorder.delivered == []


# --- secrets --------------------------------------------------------------------------


def test_the_smtp_password_never_appears_in_any_error(auth_smtp: SmtpServer) -> None:
    recorder = auth_smtp.recorder
    recorder.rcpt_replies["gone@example.org"] = f"550 no such user (you said {PASSWORD})"
    recorder.data_replies.extend([f"451 try later {PASSWORD}", f"554 rejected {PASSWORD}"])
    results: list[SendResult] = []
    good = f"{USER}:{PASSWORD}@"
    with open_channel(auth_smtp.url(userinfo=good)) as ch:
        results.append(ch.send(make_message("gone@example.org")))
        results.append(ch.send(make_message()))
        results.append(ch.send(make_message()))
    sends: list[tuple[str, Callable[[], Message]]] = [
        (auth_smtp.url(userinfo=f"{USER}:{PASSWORD}x@"), make_message),
        (f"smtp://{good}127.0.0.1:{closed_port()}", make_message),
    ]
    for url, build in sends:
        with open_channel(url) as ch:
            results.append(ch.send(build()))
    assert [r.delivery for r in results] == [
        Delivery.GONE,
        Delivery.RETRY,
        Delivery.FAILED,
        Delivery.BAD_CREDENTIALS,
        Delivery.RETRY,
    ]
    for result in results:
        assert result.error
        assert PASSWORD not in result.error, result.error
