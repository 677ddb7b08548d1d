"""The one small interface every channel implements.

A channel takes a rendered ``Message`` and a recipient address and returns a
``SendResult``; it knows nothing of the database. Provider failures become
one of the ``Delivery`` classes here, with secrets already redacted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TextIO, runtime_checkable

from ..config import Settings

TextFormat = Literal["html", "plain"]


class Delivery(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"  # passing failure: back off and try again
    RETRY_AFTER = "rate_limited"  # provider asked us to wait retry_after seconds
    FAILED = "failed"  # permanent for this message
    GONE = "gone"  # the recipient takes no more messages (blocked, bounced, 410): suppress it
    MOVED = "moved"  # the chat has a new address (moved_to); retry there at once
    BAD_CREDENTIALS = "bad_credentials"  # stop the run, exit 3


@dataclass(frozen=True)
class SendResult:
    delivery: Delivery
    provider_id: str | None = None
    http_status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    uncertain: bool = False
    moved_to: str | None = None
    #: the text as the recipient sees it (channels that can edit it later: Telegram)
    shown_text: str | None = None

    @classmethod
    def sent(cls, provider_id: str | None = None, http_status: int | None = None) -> SendResult:
        return cls(Delivery.SENT, provider_id=provider_id, http_status=http_status)

    @classmethod
    def retry(
        cls, error: str, http_status: int | None = None, *, uncertain: bool = False
    ) -> SendResult:
        return cls(Delivery.RETRY, http_status=http_status, error=error, uncertain=uncertain)

    @classmethod
    def retry_after_seconds(
        cls, seconds: float, error: str, http_status: int | None = None
    ) -> SendResult:
        return cls(Delivery.RETRY_AFTER, http_status=http_status, error=error, retry_after=seconds)

    @classmethod
    def failed(cls, error: str, http_status: int | None = None) -> SendResult:
        return cls(Delivery.FAILED, http_status=http_status, error=error)

    @classmethod
    def gone(cls, error: str, http_status: int | None = None) -> SendResult:
        return cls(Delivery.GONE, http_status=http_status, error=error)

    @classmethod
    def moved(cls, new_address: str, error: str, http_status: int | None = None) -> SendResult:
        return cls(Delivery.MOVED, http_status=http_status, error=error, moved_to=new_address)

    @classmethod
    def bad_credentials(cls, error: str, http_status: int | None = None) -> SendResult:
        return cls(Delivery.BAD_CREDENTIALS, http_status=http_status, error=error)


@dataclass(frozen=True)
class Message:
    """One rendered reminder for one recipient."""

    notification_id: int
    booking_id: str
    kind: str
    recipient: str
    text: str
    text_format: TextFormat = "plain"
    subject: str | None = None
    html: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


class Channel(Protocol):
    """What dispatch needs from a channel."""

    #: "html" when the channel sends text in HTML (values get escaped for it)
    text_format: TextFormat
    #: key of the shared rate limit (pacing row) this channel sends under, if any
    pacing_key: str | None
    #: longest text the provider accepts (None: no limit); longer text is cut with "…"
    max_text_length: int | None
    #: optional parts of a message this channel sends besides the text: "subject", "html"
    parts: frozenset[str]

    def send(self, message: Message) -> SendResult: ...

    def close(self) -> None: ...


@runtime_checkable
class Editor(Protocol):
    """A channel that can correct a message it sent (Telegram's editMessageText)."""

    pacing_key: str | None  # edits count in the same rate limits as sends

    def edit(self, recipient: str, message_id: str, html_text: str) -> SendResult:
        """Replace the text of message ``message_id`` sent to ``recipient``; SENT when done."""
        ...


@dataclass(frozen=True)
class ChannelContext:
    """What a channel may use: settings, where console output goes, time limits.

    ``send_deadline`` bounds one whole send (connect, request, answer), however
    a receiver paces its bytes; ``connect_timeout`` and ``read_timeout`` bound
    single operations within it. A send abandoned at its deadline after the
    request went out is a retry marked uncertain. 0 (the default) takes
    ``settings.send_deadline`` (``NOTIFYCTL_SEND_DEADLINE``).
    """

    settings: Settings
    stdout: TextIO
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    # a netguard.JsonClient to share (Telegram; tests inject their own). Webhooks
    # never use it: their session checks addresses and ignores the environment.
    http_client: Any = None
    send_deadline: float = 0.0
    #: sends in flight at once (``dispatch --concurrency``): connections a channel keeps open
    concurrency: int = 10

    def __post_init__(self) -> None:
        if self.send_deadline <= 0:
            object.__setattr__(self, "send_deadline", self.settings.send_deadline)
