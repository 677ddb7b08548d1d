"""``probe:NAME``, a channel for tests: it records each message and answers as scripted.

Registered in ``CHANNELS`` by the ``probe`` fixture of the tests that use it.
A scripted answer is a callable, so a test can make a send block, commit
something while the message is in flight, or raise.
"""

from __future__ import annotations

from collections.abc import Callable

from notifyctl.channels.base import ChannelContext, Message, SendResult, TextFormat
from notifyctl.config import Settings

Answer = Callable[[Message], SendResult]
sent: list[Message] = []
script: list[Answer] = []


def validate(address: str) -> str:
    return address


def check_config(settings: Settings) -> None:
    """Needs nothing."""


class ProbeChannel:
    text_format: TextFormat = "plain"
    pacing_key: str | None = None
    max_text_length: int | None = None
    parts: frozenset[str] = frozenset()

    def send(self, message: Message) -> SendResult:
        sent.append(message)
        answer = script.pop(0) if script else None
        return answer(message) if answer else SendResult.sent(str(len(sent)))

    def close(self) -> None:
        """Nothing to release."""


def open_channel(context: ChannelContext) -> ProbeChannel:
    return ProbeChannel()
