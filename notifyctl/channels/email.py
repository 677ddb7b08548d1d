"""``email:ADDR``: one SMTP connection per batch, STARTTLS or implicit TLS (SPEC §6).

``NOTIFYCTL_SMTP_URL`` chooses the transport:

- ``smtps://user:pass@host[:465]``: TLS from the first byte;
- ``smtp://user:pass@host[:587]``: STARTTLS, required (no silent fallback to
  plain text);
- ``smtp://localhost[:25]`` (127.0.0.1, ::1, localhost, on any port but 587):
  plain SMTP to a local relay, the only case without TLS.

The connection opens on the first send, is reused by the next ones and is
opened again when the server dropped it while idle. The SMTP password never
appears in an error: the server's replies and every exception text go
through the redactor. Each send ends at its deadline (``netguard``), however
slowly the server answers, TLS handshakes included.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import smtplib
import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from ..config import REDACTED, Settings, redact, redact_url, require, url_password
from ..errors import ConfigError
from . import netguard
from .base import ChannelContext, Message, SendResult, TextFormat

Security = Literal["tls", "starttls", "plain"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
SUBMISSION_PORT = 587
MAX_SUBJECT = 78
_MAX_ERROR = 500
_FORBIDDEN = frozenset('<>()[],;:"\\')
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_LOCAL = re.compile(r"[!#$%&'*+/=?^_`{|}~A-Za-z0-9-]+(?:\.[!#$%&'*+/=?^_`{|}~A-Za-z0-9-]+)*")
#: 7-bit transfer encodings, so no server needs 8BITMIME or SMTPUTF8
_POLICY = email.policy.SMTP.clone(cte_type="7bit")
#: replies that say the credentials (or their absence) are the problem
_AUTH_CODES = frozenset({530, 534, 535, 538})


def validate(address: str) -> str:
    """A plausible address: ``local@domain.tld`` or ``local@localhost``.

    The domain is lower-cased and IDNA-encoded; the local part must be ASCII.
    """
    if len(address) > 254 or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address):
        raise ValueError("an email address has no spaces or control characters (max 254)")
    if address.count("@") != 1 or any(c in _FORBIDDEN for c in address):
        raise ValueError("an email address is local@domain, without a display name or brackets")
    local, domain = address.split("@")
    if not _LOCAL.fullmatch(local) or len(local) > 64:
        raise ValueError("the part before @ must be plain ASCII (letters, digits, . _ + - …)")
    try:
        domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError("the domain of the email address is not valid") from None
    if domain != "localhost" and ("." not in domain or not _DOMAIN.fullmatch(domain)):
        raise ValueError("the domain of the email address needs a dot (example.com)")
    return f"{local}@{domain}"


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to submit mail, parsed from ``NOTIFYCTL_SMTP_URL``."""

    host: str
    port: int
    security: Security
    username: str | None = None
    password: str | None = None


def parse_smtp_url(url: str) -> SmtpTarget:
    """``smtp[s]://[user[:pass]@]host[:port]`` → target; ``ConfigError`` (URL redacted)."""
    shown = _show_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"NOTIFYCTL_SMTP_URL is not a valid URL: {shown}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise ConfigError(f"NOTIFYCTL_SMTP_URL must start with smtp:// or smtps://, not {shown}")
    host = parts.hostname
    if not host:
        raise ConfigError(f"NOTIFYCTL_SMTP_URL has no host: {shown}")
    loopback = host in LOOPBACK_HOSTS
    security: Security
    if scheme == "smtps":
        security, port = "tls", port or 465
    elif loopback and port != SUBMISSION_PORT:
        security, port = "plain", port or 25
    else:
        security, port = "starttls", port or SUBMISSION_PORT
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if password and not username:
        raise ConfigError(f"NOTIFYCTL_SMTP_URL has a password but no user: {shown}")
    return SmtpTarget(host, port, security, username, password)


def sender_address(email_from: str) -> str:
    """The envelope sender inside ``NOTIFYCTL_EMAIL_FROM`` (``Name <a@b>`` or ``a@b``)."""
    _, address = email.utils.parseaddr(email_from)
    try:
        return validate(address)
    except ValueError as e:
        raise ConfigError(f"NOTIFYCTL_EMAIL_FROM is not a usable sender address: {e}") from None


def check_config(settings: Settings) -> None:
    if not settings.smtp_url:
        raise ConfigError("NOTIFYCTL_SMTP_URL is not set, and email reminders are due")
    parse_smtp_url(settings.smtp_url)
    if not settings.email_from:
        raise ConfigError("NOTIFYCTL_EMAIL_FROM is not set, and email reminders are due")
    sender_address(settings.email_from)


def subject_for(message: Message) -> str:
    """The message's subject, or ``Reminder: <first line of the text>``, on one line."""
    subject = " ".join((message.subject or "").split())
    if not subject:
        first = next((line for line in message.text.splitlines() if line.strip()), "")
        first = " ".join(first.split())
        subject = first if first.lower().startswith("reminder") else f"Reminder: {first}"
        subject = subject.rstrip(": ") or "Reminder"
    if len(subject) > MAX_SUBJECT:
        subject = subject[: MAX_SUBJECT - 1].rstrip() + "…"
    return subject


class EmailChannel:
    text_format: TextFormat = "plain"
    pacing_key: str | None = None
    max_text_length: int | None = None
    parts: frozenset[str] = frozenset({"subject", "html"})

    def __init__(
        self,
        context: ChannelContext,
        *,
        now: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        settings = context.settings
        check_config(settings)
        smtp_url = require(settings.smtp_url, "NOTIFYCTL_SMTP_URL")
        self._target = parse_smtp_url(smtp_url)
        redact.add([self._target.password, url_password(smtp_url)])
        self._from_header = require(settings.email_from, "NOTIFYCTL_EMAIL_FROM")
        self._sender = sender_address(self._from_header)
        self._domain = self._sender.rsplit("@", 1)[1]
        self._now = now
        self._ssl_context = ssl_context
        self._connect_timeout = context.connect_timeout
        self._read_timeout = context.read_timeout
        self._deadline = context.send_deadline
        self._smtp: smtplib.SMTP | None = None
        # one connection, one transaction at a time
        self._lock = threading.Lock()

    def message_id(self, notification_id: int) -> str:
        """Stable per notification, so a resend is recognisable as the same mail."""
        return f"<notifyctl-{notification_id}@{self._domain}>"

    def compose(self, message: Message) -> EmailMessage:
        mail = EmailMessage(policy=_POLICY)
        mail["From"] = self._from_header
        mail["To"] = message.recipient
        mail["Subject"] = subject_for(message)
        mail["Date"] = email.utils.formatdate(self._now(), usegmt=True)
        mail["Message-ID"] = self.message_id(message.notification_id)
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        return mail

    def send(self, message: Message) -> SendResult:
        try:
            recipient = validate(message.recipient)
            mail = self.compose(message)
            data = mail.as_bytes()
        except (ValueError, TypeError) as e:
            return SendResult.failed(_clean(f"cannot build the email: {e}"))
        with netguard.Deadline(self._deadline) as deadline:
            # the wait for the shared connection counts too
            if not self._lock.acquire(timeout=deadline.left()):
                return SendResult.retry(f"SMTP: {deadline.message()}: the connection was busy")
            try:
                return self._deliver(
                    recipient, data, self.message_id(message.notification_id), deadline
                )
            finally:
                self._lock.release()

    def _deliver(
        self, recipient: str, data: bytes, message_id: str, deadline: netguard.Deadline
    ) -> SendResult:
        for _ in range(2):
            fresh = self._smtp is None
            try:
                smtp = self._smtp or self._open(deadline)
            except (smtplib.SMTPException, OSError) as e:
                if deadline.expired:  # nothing was sent yet
                    return SendResult.retry(_clean(f"SMTP: {deadline.message()}"))
                return classify_error(e)
            stage = "mail"
            try:
                if smtp.sock is not None:
                    deadline.watch(smtp.sock)
                    smtp.sock.settimeout(deadline.timeout(self._read_timeout))
                smtp.ehlo_or_helo_if_needed()
                code, reply = smtp.mail(self._sender)
                if code != 250:
                    raise smtplib.SMTPSenderRefused(code, reply, self._sender)
                stage = "rcpt"
                code, reply = smtp.rcpt(recipient)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
                stage = "data"
                code, reply = smtp.data(data)  # raises SMTPDataError unless 354 first
                if code != 250:
                    raise smtplib.SMTPDataError(code, reply)
            except (smtplib.SMTPException, OSError) as e:
                if not deadline.expired:
                    result = self._failure(e, stage, fresh)
                    if result is None:
                        continue
                    return result
                self._drop()
                # abandoned at the deadline: once DATA went out the mail may have been taken
                return SendResult.retry(
                    _clean(f"SMTP: {deadline.message()}"), uncertain=stage == "data"
                )
            return SendResult.sent(message_id)
        return SendResult.retry("SMTP: the server closed the connection twice")  # pragma: no cover

    def _failure(self, error: Exception, stage: str, fresh: bool) -> SendResult | None:
        """A failed transaction → outcome; None to try once more on a fresh connection."""
        if isinstance(error, smtplib.SMTPServerDisconnected):
            self._drop()
            if stage == "mail" and not fresh:
                return None  # the server closed the idle connection: nothing was sent
            # a drop during DATA may come after the server took the message
            return SendResult.retry(
                _clean(f"SMTP: {str(error) or 'server disconnected'}"), uncertain=stage == "data"
            )
        if isinstance(error, smtplib.SMTPResponseException):
            self._reset(error.smtp_code)
            if error.smtp_code == 421 and stage == "mail" and not fresh:
                return None  # an idle connection the server is closing: nothing was sent
            return classify_error(error)
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            self._reset(_recipient_code(error))
            return classify_error(error)
        self._drop()
        return classify_error(error, uncertain=stage == "data")

    def _open(self, deadline: netguard.Deadline) -> smtplib.SMTP:
        target = self._target
        smtp: smtplib.SMTP
        connect_timeout = deadline.timeout(self._connect_timeout)
        # connects and checks the 220 greeting (closing the socket when it is not)
        if target.security == "tls":
            smtp = _SMTPS(target.host, target.port, timeout=connect_timeout, context=self._tls())
        else:
            smtp = _SMTP(target.host, target.port, timeout=connect_timeout)
        try:
            if smtp.sock is not None:
                smtp.sock.settimeout(deadline.timeout(self._read_timeout))
            smtp.ehlo_or_helo_if_needed()
            if target.security == "starttls":
                smtp.starttls(context=self._tls())
                smtp.ehlo()
            if target.username:
                try:
                    smtp.login(target.username, target.password or "")
                except smtplib.SMTPException as e:
                    if type(e) is smtplib.SMTPException:  # "No suitable authentication method"
                        raise smtplib.SMTPNotSupportedError(str(e)) from e
                    raise
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return typing.cast(ssl.SSLContext, _WatchedTLS(self._ssl_context))

    def _reset(self, code: int) -> None:
        """After a refused transaction: RSET to reuse the connection, or drop it."""
        if self._smtp is None:
            return
        if code == 421:  # the server is closing the channel
            self._drop()
            return
        try:
            self._smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def close(self) -> None:
        with self._lock:
            smtp, self._smtp = self._smtp, None
            if smtp is None:
                return
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            finally:
                smtp.close()


class _SMTP(smtplib.SMTP):
    """Plain SMTP (STARTTLS later) whose socket the send's deadline can cut."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout, self.source_address)
        netguard.watch(sock)
        return sock


class _SMTPS(smtplib.SMTP_SSL):
    """Implicit TLS that closes its socket when the handshake fails."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout)
        try:
            return self.context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise


class _WatchedTLS:
    """An SSLContext whose sockets the send's deadline watches from the first
    handshake byte (a server trickling its handshake is cut too)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def wrap_socket(self, sock: socket.socket, server_hostname: str | None = None) -> ssl.SSLSocket:
        tls = self._context.wrap_socket(
            sock, server_hostname=server_hostname, do_handshake_on_connect=False
        )
        netguard.watch(tls)
        try:
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


#: RCPT answers that say the mailbox is gone (unknown, moved away, name not allowed)
GONE_CODES = (550, 551, 553)


def _recipient_code(error: smtplib.SMTPRecipientsRefused) -> int:
    codes = [code for code, _ in error.recipients.values()]
    return max(codes) if codes else 0


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def classify_error(error: BaseException, *, uncertain: bool = False) -> SendResult:
    """An smtplib/socket failure → outcome class (SPEC §6, email)."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        code = _recipient_code(error)
        replies = "; ".join(_reply_text(reply) for _, reply in error.recipients.values())
        text = _clean(f"SMTP {code}: recipient refused: {replies}")
        if code in GONE_CODES:  # this mailbox does not exist (any more): suppress it
            return SendResult.gone(text)
        return SendResult.failed(text) if code >= 500 else SendResult.retry(text)
    if isinstance(error, smtplib.SMTPResponseException):
        code = error.smtp_code
        text = _clean(f"SMTP {code}: {_reply_text(error.smtp_error)}")
        if isinstance(error, smtplib.SMTPAuthenticationError) or code in _AUTH_CODES:
            if 400 <= code < 500:  # e.g. 454: temporary authentication failure
                return SendResult.retry(text)
            return SendResult.bad_credentials(
                f"{text} (check the user and password in NOTIFYCTL_SMTP_URL)"
            )
        if code >= 500:
            return SendResult.failed(text)
        return SendResult.retry(text)
    if isinstance(error, smtplib.SMTPNotSupportedError):
        # STARTTLS or AUTH not offered: the URL does not fit this server
        return SendResult.bad_credentials(_clean(f"SMTP server: {error}"))
    if isinstance(error, ssl.SSLCertVerificationError):
        return SendResult.bad_credentials(
            _clean(f"SMTP server's TLS certificate rejected: {error.verify_message or error}")
        )
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return SendResult.retry(
            _clean(f"SMTP: {str(error) or 'server disconnected'}"), uncertain=uncertain
        )
    return SendResult.retry(_clean(f"SMTP: {type(error).__name__}: {error}"), uncertain=uncertain)


def _clean(text: str) -> str:
    return redact(text)[:_MAX_ERROR]


def _show_url(url: str) -> str:
    """The SMTP URL fit for an error message: no password, whatever its shape."""
    try:
        shown = redact_url(url)
    except ValueError:  # e.g. a bad port next to a password
        return REDACTED
    return redact(shown)


def open_channel(
    context: ChannelContext,
    *,
    now: Callable[[], float] = time.time,
    ssl_context: ssl.SSLContext | None = None,
) -> EmailChannel:
    return EmailChannel(context, now=now, ssl_context=ssl_context)
