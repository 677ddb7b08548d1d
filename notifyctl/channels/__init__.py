"""Channel registry: one module per channel, imported only when needed.

Each module defines ``validate(address) -> str`` (the normalised address, or
``ValueError`` with a message), ``check_config(settings)`` (raises
``ConfigError``) and ``open_channel(context) -> Channel``. Adding a channel is
one module and one line in ``CHANNELS``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from functools import cache
from types import ModuleType

from ..config import Settings, redact_url
from ..errors import ConfigError, InvalidInput

CHANNELS: dict[str, str] = {
    "telegram": "notifyctl.channels.telegram",
    "console": "notifyctl.channels.console",
    "webhook": "notifyctl.channels.webhook",
    "email": "notifyctl.channels.email",
    "apprise": "notifyctl.channels.apprise_channel",
}

MAX_ADDRESS_LENGTH = 2048  # notifications.recipient
_TELEGRAM_SHORT = re.compile(r"-?\d+|@\w+")


@cache
def channel_module(name: str) -> ModuleType:
    """The module of a registered channel; ``KeyError`` for an unknown one."""
    return importlib.import_module(CHANNELS[name])


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
    prefix, sep, rest = text.partition(":")
    # as messages show it: no URL password or token
    raw = f"{prefix}{sep}{_shown_safely(rest)}" if len(text) <= MAX_ADDRESS_LENGTH else "…"
    if _TELEGRAM_SHORT.fullmatch(text):
        channel, address = "telegram", text
    elif ":" in text:
        channel, address = text.split(":", 1)
        channel = channel.lower()
    else:
        raise InvalidInput(
            f"invalid recipient {raw!r}: use a Telegram chat id, @channel, "
            "or CHANNEL:ADDRESS (telegram:, console:, webhook:, email:, apprise:)"
        )
    if channel not in CHANNELS:
        raise InvalidInput(
            f"invalid recipient {raw!r}: unknown channel {channel!r} "
            f"(available: {', '.join(CHANNELS)})"
        )
    if len(address) > MAX_ADDRESS_LENGTH:
        raise InvalidInput(f"invalid recipient: longer than {MAX_ADDRESS_LENGTH} characters")
    try:
        return channel, channel_module(channel).validate(address)
    except ValueError as e:
        raise InvalidInput(f"invalid recipient {raw!r}: {e}") from e


def config_problems(settings: Settings, channels: Iterable[str]) -> dict[str, str]:
    """Channel → why it cannot send (configuration missing or invalid), for those given."""
    problems: dict[str, str] = {}
    for name in sorted(set(channels)):
        if name not in CHANNELS:
            continue
        try:
            channel_module(name).check_config(settings)
        except ConfigError as e:
            problems[name] = e.message
    return problems
