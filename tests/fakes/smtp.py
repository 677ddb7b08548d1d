"""A recording SMTP server (aiosmtpd) on 127.0.0.1 for end-to-end tests.

Usage::

    with running_smtp() as smtp:
        env["NOTIFYCTL_SMTP_URL"] = smtp.url()
        smtp.refuse("ann@example.com")  # 550 at RCPT TO, every time
        ...  # run the code under test
        assert smtp.recipients() == ["bob@example.org"]

Every accepted message is kept (``messages``); ``refuse`` makes one mailbox
answer a permanent error at ``RCPT TO`` (550 by default, or any reply such as
``"553 5.1.3 bad address"``) until :meth:`SmtpServer.accept` takes it back.
Addresses are compared case-insensitively. Plain SMTP: notifyctl allows it
to a loopback relay only.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

__all__ = ["Accepted", "SmtpRecorder", "SmtpServer", "running_smtp"]

REFUSED = "550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"


@dataclass(frozen=True)
class Accepted:
    """One message the server took: envelope and raw content."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class SmtpRecorder:
    """aiosmtpd handler: keeps what it accepts, refuses the mailboxes it is told to."""

    accepted: list[Accepted] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # lower-cased address → reply
    refusals: list[str] = field(default_factory=list)  # every RCPT TO refused, as sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.lock:
            reply = self.refused.get(address.lower())
            if reply is not None:
                self.refusals.append(address)
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.accepted.append(
                Accepted(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 2.0.0 accepted"


class EphemeralController(Controller):
    """aiosmtpd's Controller on an ephemeral port (port=0): the test servers' one way to start."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@dataclass
class SmtpServer:
    controller: Any
    recorder: SmtpRecorder

    def url(self, userinfo: str = "") -> str:
        return f"smtp://{userinfo}127.0.0.1:{self.controller.port}"

    def refuse(self, address: str, reply: str | None = None) -> None:
        """Answer ``RCPT TO:<address>`` with ``reply`` (default: 550 user unknown) from now on."""
        with self.recorder.lock:
            self.recorder.refused[address.lower()] = reply or REFUSED.format(address=address)

    def accept(self, address: str) -> None:
        """Take ``address`` back: accepted again."""
        with self.recorder.lock:
            self.recorder.refused.pop(address.lower(), None)

    @property
    def messages(self) -> list[Accepted]:
        """Every accepted message, in arrival order (a copy)."""
        with self.recorder.lock:
            return list(self.recorder.accepted)

    @property
    def refusals(self) -> list[str]:
        """Every refused ``RCPT TO`` address, in order (a copy)."""
        with self.recorder.lock:
            return list(self.recorder.refusals)

    def recipients(self) -> list[str]:
        """The envelope recipients of every accepted message, one entry per message and rcpt."""
        return [rcpt for m in self.messages for rcpt in m.rcpt_tos]


@contextlib.contextmanager
def running_smtp(**kwargs: Any) -> Iterator[SmtpServer]:
    recorder = SmtpRecorder()
    controller = EphemeralController(recorder, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    try:
        yield SmtpServer(controller, recorder)
    finally:
        controller.stop()
