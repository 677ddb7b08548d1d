"""Channel registry: one module per channel, imported only when needed.

Each module defines ``validate(address) -> str`` (the normalised address, or
``ValueError`` with a message), ``check_config(settings)`` (raises
``ConfigError``) and ``open_channel(context) -> Channel``. Adding a channel is
one module and one line in ``CHANNELS``.

A channel with several senders (Telegram: one per bot) also defines
``sender_of(address) -> str | None`` (None: the channel's default sender),
and takes that name in ``check_config(settings, name)`` and
``open_channel(context, name)``. A run opens, disables and gives back per
*sender*: ``telegram`` (the default bot) or ``telegram:<bot>``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from types import ModuleType

from ..config import Settings, redact_url
from ..errors import ConfigError, InvalidInput
from .base import Channel, ChannelContext, TextFormat

#: channel name → ``module:Class`` of its implementation
CHANNELS: dict[str, str] = {
    "telegram": "notifyctl.channels.telegram:TelegramChannel",
    "console": "notifyctl.channels.console:ConsoleChannel",
    "webhook": "notifyctl.channels.webhook:WebhookChannel",
    "email": "notifyctl.channels.email:EmailChannel",
    "apprise": "notifyctl.channels.apprise_channel:AppriseChannel",
}

MAX_ADDRESS_LENGTH = 2048  # notifications.recipient
_TELEGRAM_SHORT = re.compile(r"-?\d+|@\w+")


@cache
def channel_module(name: str) -> ModuleType:
    """The module of a registered channel; ``KeyError`` for an unknown one."""
    return importlib.import_module(CHANNELS[name].partition(":")[0])


@dataclass(frozen=True)
class Capabilities:
    """What a channel's messages hold: its text format, extra parts and longest text."""

    text_format: TextFormat
    parts: frozenset[str]
    max_text_length: int | None


def capabilities(name: str) -> Capabilities:
    """A registered channel's capabilities, read from its class (``KeyError``: unknown)."""
    cls: type[Channel] = getattr(channel_module(name), CHANNELS[name].partition(":")[2])
    return Capabilities(cls.text_format, cls.parts, cls.max_text_length)


def shown_recipient(recipient: str) -> str:
    """A recipient as output shows it: passwords and tokens inside URLs masked.

    http(s) URLs (webhooks, and Apprise's native URLs) keep host and readable
    path; any other URL is an Apprise service, shown through Apprise's own
    privacy rendering (``slack://T1…/****/…``).
    """
    scheme, sep, _ = recipient.partition("://")
    if not sep:
        return recipient
    if scheme.lower() in ("http", "https"):
        return channel_module("webhook").shown(recipient)  # type: ignore[no-any-return]
    return channel_module("apprise").shown(recipient)  # type: ignore[no-any-return]


def _shown_safely(address: str) -> str:
    try:
        return shown_recipient(address)
    except Exception:  # a message about a bad address must not fail on it
        return redact_url(address)


def parse_recipient(raw: str) -> tuple[str, str]:
    """``--to`` value → (channel, normalised address); exit 2 when invalid."""
    text = raw.strip()
    if _TELEGRAM_SHORT.fullmatch(text):
        channel, address = "telegram", text
    elif ":" in text:
        channel, address = text.split(":", 1)
        channel = channel.lower()
    else:
        raise InvalidInput(
            f"invalid recipient {_quoted(text)}: use a Telegram chat id, @channel, "
            "or CHANNEL:ADDRESS (telegram:, console:, webhook:, email:, apprise:)"
        )
    if channel not in CHANNELS:
        raise InvalidInput(
            f"invalid recipient {_quoted(text)}: unknown channel {channel!r} "
            f"(available: {', '.join(CHANNELS)})"
        )
    if len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidInput(f"invalid recipient: longer than {MAX_ADDRESS_LENGTH} characters")
    try:
        return channel, channel_module(channel).validate(address)
    except ValueError as e:
        raise InvalidInput(f"invalid recipient {_quoted(text)}: {e}") from e


def _quoted(text: str) -> str:
    """A ``--to`` value as an error message shows it: no URL password or token."""
    if len(text) > MAX_ADDRESS_LENGTH:
        return repr("…")
    prefix, sep, rest = text.partition(":")
    return repr(f"{prefix}{sep}{_shown_safely(rest)}")


def sender(channel: str, recipient: str) -> str:
    """Who sends to ``recipient``: the channel, or ``<channel>:<name>`` (a named bot)."""
    of = getattr(channel_module(channel), "sender_of", None) if channel in CHANNELS else None
    name = of(recipient) if of is not None else None
    return f"{channel}:{name}" if name else channel


def suppression_key(channel: str, recipient: str) -> str:
    """What a "gone" answer for ``recipient`` suppresses (Telegram: the chat, all topics)."""
    of = getattr(channel_module(channel), "suppression_key", None) if channel in CHANNELS else None
    return of(recipient) if of is not None else recipient


def chat_key(channel: str, recipient: str) -> str:
    """The chat a send to ``recipient`` counts in for per-chat limits (Telegram: per bot)."""
    of = getattr(channel_module(channel), "chat_key", None) if channel in CHANNELS else None
    return of(recipient) if of is not None else recipient


def open_sender(name: str, context: ChannelContext) -> Channel:
    """The channel object of one sender (``sender``'s value)."""
    channel, _, sub = name.partition(":")
    module = channel_module(channel)
    opened: Channel = module.open_channel(context, sub) if sub else module.open_channel(context)
    return opened


def config_problems(settings: Settings, senders: Iterable[str]) -> dict[str, str]:
    """Sender (channel or ``telegram:<bot>``) → why it cannot send, for those given."""
    problems: dict[str, str] = {}
    for name in sorted(set(senders)):
        channel, _, sub = name.partition(":")
        if channel not in CHANNELS:
            continue
        module = channel_module(channel)
        try:
            module.check_config(settings, sub) if sub else module.check_config(settings)
        except ConfigError as e:
            problems[name] = e.message
    return problems
