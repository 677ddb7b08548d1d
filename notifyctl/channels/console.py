"""``console:NAME``: prints the message on stdout, for demos and dry runs."""

from __future__ import annotations

import re
import threading
from typing import TextIO

from ..config import Settings
from .base import ChannelContext, Message, SendResult, TextFormat

_NAME = re.compile(r"[\w.@+-]{1,64}")


def validate(address: str) -> str:
    if not _NAME.fullmatch(address):
        raise ValueError("console names are 1-64 letters, digits or . @ + - _")
    return address


def check_config(settings: Settings) -> None:
    """The console needs nothing."""


class ConsoleChannel:
    text_format: TextFormat = "plain"
    pacing_key: str | None = None
    max_text_length: int | None = None
    parts: frozenset[str] = frozenset()

    def __init__(self, stdout: TextIO) -> None:
        self._stdout = stdout
        self._lock = threading.Lock()

    def send(self, message: Message) -> SendResult:
        with self._lock:
            print(f"[console:{message.recipient}] {message.text}", file=self._stdout, flush=True)
        return SendResult.sent()

    def close(self) -> None:
        """Nothing to release."""


def open_channel(context: ChannelContext) -> ConsoleChannel:
    return ConsoleChannel(context.stdout)
