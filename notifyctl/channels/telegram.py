"""Telegram Bot API: sendMessage in HTML parse mode (urllib3, ``netguard.JsonClient``).

The token lives in the URL path, so every error text that leaves this module
goes through the redactor, and urllib3's debug log gets a redacting filter.
The API URL must be https (plain http only to loopback, where a local Bot API
server or a test fake runs), redirects are never followed, answers are read
up to a small bound, and each send ends at its deadline (``netguard``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings, redact
from ..errors import ConfigError
from . import netguard
from .base import ChannelContext, Delivery, Message, SendResult, TextFormat

MAX_TEXT_LENGTH = 4096
_CHAT_ID = re.compile(r"-?[1-9]\d{0,15}")
_USERNAME = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,31}")
#: a supergroup id: -100 followed by the group's number, within 52 bits
_SUPERGROUP_ID = re.compile(r"-100\d{1,13}")
_MAX_CHAT_ID = 2**52


#: a named bot: TELEGRAM_BOT_TOKEN_<NAME>, the name case-insensitive
_BOT_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_THREAD_ID = re.compile(r"[1-9]\d{0,15}")
TOKEN_VARIABLE = "TELEGRAM_BOT_TOKEN"


def parse_address(address: str) -> tuple[str | None, str, str | None]:
    """``[<bot>/]<chat>[#<thread>]`` → (bot or None for the default one, chat, thread)."""
    bot: str | None = None
    rest = address
    if "/" in address:
        bot, _, rest = address.partition("/")
        if not _BOT_NAME.fullmatch(bot):
            raise ValueError(
                "a Telegram bot name is letters, digits and _ (TELEGRAM_BOT_TOKEN_<NAME>)"
            )
        bot = bot.lower()
    chat, sep, thread = rest.partition("#")
    if not (_CHAT_ID.fullmatch(chat) or _USERNAME.fullmatch(chat)):
        raise ValueError("a Telegram recipient is a numeric chat id or an @channel username")
    if sep and not _THREAD_ID.fullmatch(thread):
        raise ValueError("a forum topic is #<thread id>, a positive number")
    return bot, chat, thread if sep else None


def address_of(bot: str | None, chat: str, thread: str | None) -> str:
    """The stored recipient: the default bot keeps the plain chat id."""
    return f"{bot + '/' if bot else ''}{chat}{'#' + thread if thread else ''}"


def validate(address: str) -> str:
    """The canonical recipient ``[<bot>/]<chat>[#<thread>]``, the bot name lower-cased.

    A bot without a token yet is accepted: its token is needed only to send.
    """
    return address_of(*parse_address(address))


def sender_of(address: str) -> str | None:
    """The named bot that sends to ``address``; None for the default bot."""
    bot, sep, _ = address.partition("/")
    return bot.lower() if sep else None


def chat_key(address: str) -> str:
    """The chat whose limits (1/s, 20/min for a group) a send counts in.

    Per bot and per chat: a topic shares its chat's limit. The chat comes first,
    so a group's key still starts with ``-``.
    """
    bot, sep, rest = address.partition("/")
    if not sep:
        bot, rest = "", address
    chat = rest.partition("#")[0]
    return f"{chat}@{bot.lower()}" if bot else chat


def token_variable(bot: str | None) -> str:
    return f"{TOKEN_VARIABLE}_{bot.upper()}" if bot else TOKEN_VARIABLE


def token_of(settings: Settings, bot: str | None) -> str | None:
    if bot is None:
        return settings.telegram_token
    return settings.telegram_bots.get(bot.lower())


def check_config(settings: Settings, bot: str | None = None) -> None:
    token = token_of(settings, bot)
    variable = token_variable(bot)
    due = f"reminders of Telegram bot {bot!r}" if bot else "Telegram reminders"
    if not token:
        raise ConfigError(f"{variable} is not set, and {due} are due")
    if not re.fullmatch(r"\d+:[\w-]+", token):
        raise ConfigError(f"{variable} does not look like a bot token (digits:secret)")
    check_api_url(settings.telegram_api_url)


def check_api_url(url: str) -> None:
    """https, or http to loopback only: the token travels in the URL path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("TELEGRAM_API_URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        raise ConfigError("TELEGRAM_API_URL must be an https:// URL")
    if scheme == "http" and not netguard.is_loopback_host(host):
        raise ConfigError(
            "TELEGRAM_API_URL must be https:// (plain http:// only to localhost, "
            "127.0.0.0/8 or ::1): the bot token would travel in clear text"
        )


def pacing_key_for(token: str) -> str:
    """The pacing row of one bot: a hash, never the token itself."""
    return "telegram:" + hashlib.sha256(token.encode()).hexdigest()[:32]


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def _install_log_redaction() -> None:
    for name in ("urllib3.connectionpool", "urllib3", "requests"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())


class TelegramChannel:
    text_format: TextFormat = "html"
    max_text_length: int | None = MAX_TEXT_LENGTH
    parts: frozenset[str] = frozenset()

    def __init__(self, context: ChannelContext, bot: str | None = None) -> None:
        """The channel of one bot (None: the default bot, TELEGRAM_BOT_TOKEN)."""
        settings = context.settings
        check_config(settings, bot)
        token = token_of(settings, bot) or ""
        redact.add([token])
        self.bot = bot
        _install_log_redaction()
        self.pacing_key: str | None = pacing_key_for(token)
        base = f"{settings.telegram_api_url.rstrip('/')}/bot{token}"
        self._url = f"{base}/sendMessage"
        self._edit_url = f"{base}/editMessageText"
        self._connect_timeout = context.connect_timeout
        self._read_timeout = context.read_timeout
        self._deadline = context.send_deadline
        self._own_client = context.http_client is None
        self._client: netguard.JsonClient = context.http_client or _client_for(
            self._url, context.concurrency
        )

    def send(self, message: Message) -> SendResult:
        bot, chat, thread = parse_address(message.recipient)
        if bot != self.bot:  # dispatch opens one channel per bot: never another bot's chat
            return SendResult.retry(f"recipient of bot {bot!r} given to bot {self.bot!r}")
        body: dict[str, Any] = {
            "chat_id": chat,
            "text": message.text,
            "link_preview_options": {"is_disabled": True},
        }
        if thread is not None:
            body["message_thread_id"] = int(thread)
        if message.text_format == "html":
            body["parse_mode"] = "HTML"
        result = self._call(self._url, body, chat)
        if result.moved_to is not None:  # the same bot, the same topic, the new chat id
            result = replace(result, moved_to=address_of(bot, result.moved_to, thread))
        if result.delivery is Delivery.SENT:
            result = replace(result, shown_text=shown_text(message.text, message.text_format))
        return result

    def edit(self, recipient: str, message_id: str, html_text: str) -> SendResult:
        """editMessageText: the message's text replaced (the user gets no new notification)."""
        bot, chat, _ = parse_address(recipient)
        if bot != self.bot:
            return SendResult.failed(f"recipient of bot {bot!r} given to bot {self.bot!r}")
        body: dict[str, Any] = {
            "chat_id": chat,
            "message_id": int(message_id),
            "text": html_text,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True},
        }
        return self._call(self._edit_url, body, chat)

    def _call(self, url: str, body: dict[str, Any], chat: str) -> SendResult:
        """One Bot API call within the send deadline, its answer as an outcome class."""
        with netguard.Deadline(self._deadline) as deadline:
            try:
                status, content = self._client.post_json(
                    url,
                    body,
                    connect_timeout=deadline.timeout(self._connect_timeout),
                    read_timeout=deadline.timeout(self._read_timeout),
                )
            except netguard.HttpFailure as e:
                if deadline.expired:
                    # abandoned at the deadline: once sent, the message may have arrived
                    return SendResult.retry(deadline.message(), uncertain=deadline.request_started)
                # refused, reset, DNS: not sent; a read timeout or "aborted": maybe sent
                return SendResult.retry(redact(str(e))[:500], uncertain=e.uncertain)
        if 300 <= status < 400:
            return SendResult.failed(
                f"HTTP {status}: the Bot API answered with a redirect, "
                "which is not followed (check TELEGRAM_API_URL)",
                status,
            )
        return classify_response(status, _json_or_none(content), chat_id=chat)

    def close(self) -> None:
        if self._own_client:
            self._client.close()


_TAG = re.compile(r"<[^>]*>")


def shown_text(text: str, text_format: TextFormat) -> str:
    """What the recipient reads: the HTML parse mode's tags gone, its entities decoded."""
    import html

    return html.unescape(_TAG.sub("", text)) if text_format == "html" else text


def _client_for(url: str, pool_size: int) -> netguard.JsonClient:
    """The Bot API client, with the environment's proxy and CA bundle read once.

    The operator's own proxy variables (HTTPS_PROXY, NO_PROXY, ...) apply to the
    operator's own API URL; ``.netrc`` never does.
    """
    import os

    from requests.utils import get_environ_proxies, select_proxy

    return netguard.JsonClient(
        proxy=select_proxy(url, get_environ_proxies(url)),
        ca_bundle=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
        pool_size=pool_size,
    )


def _json_or_none(content: bytes) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # also a body cut at the size bound
        return None
    return data if isinstance(data, dict) else None


def valid_migration(new_id: object, old_id: str | None) -> str | None:
    """``migrate_to_chat_id`` as a chat id, or None when it is not a plausible one.

    A group moves to a supergroup: an int (or its text) shaped ``-100…``,
    within 52 bits, and not the chat it moves from.
    """
    if isinstance(new_id, bool) or not isinstance(new_id, int | str):
        return None
    text = str(new_id).strip()
    if not _SUPERGROUP_ID.fullmatch(text) or abs(int(text)) >= _MAX_CHAT_ID:
        return None
    if old_id is not None and text == old_id.strip():
        return None
    return text


def _retry_after(parameters: dict[str, Any]) -> float:
    value = parameters.get("retry_after")
    seconds = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 1.0
    )
    return min(max(seconds, 1.0), 86400.0) if math.isfinite(seconds) else 1.0


#: answers that say the chat takes no more messages from this bot (SPEC §11)
GONE_ANSWERS = {
    403: (
        "bot was blocked by the user",
        "user is deactivated",
        "bot was kicked",
        "bot can't initiate conversation",
    ),
    400: ("chat not found",),
}


def is_gone(code: int, description: str) -> bool:
    lowered = description.lower()
    return any(answer in lowered for answer in GONE_ANSWERS.get(code, ()))


def suppression_key(address: str) -> str:
    """What a "gone" answer suppresses: the bot's chat, every topic in it."""
    return address.partition("#")[0]


def classify_response(
    status: int, data: dict[str, Any] | None, *, chat_id: str | None = None
) -> SendResult:
    """Bot API answer → outcome class (SPEC §5, Outcomes)."""
    if data is not None and data.get("ok") is True:
        result = data.get("result") or {}
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return SendResult.sent(str(message_id) if message_id is not None else None, status)
    data = data or {}
    # the answer's fields are checked for shape: a broken or hostile API server
    # (TELEGRAM_API_URL) must not crash the run or move reminders anywhere
    raw_code = data.get("error_code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else status
    description = " ".join(str(data.get("description") or f"HTTP {status}").split())
    error = f"{code}: {redact(description[:500])}"
    parameters = data.get("parameters")
    if not isinstance(parameters, dict):
        parameters = {}
    if code == 429:
        return SendResult.retry_after_seconds(_retry_after(parameters), error, status)
    if "migrate_to_chat_id" in parameters:
        new_id = valid_migration(parameters["migrate_to_chat_id"], chat_id)
        if new_id is not None:
            return SendResult.moved(new_id, error, status)
        return SendResult.failed(f"{error} (the new chat id given is not valid)", status)
    if code in (401, 404):
        return SendResult.bad_credentials(error, status)
    if is_gone(code, description):
        return SendResult.gone(error, status)
    if code >= 500 or status >= 500:
        return SendResult.retry(error, status)
    return SendResult.failed(error, status)


def open_channel(context: ChannelContext, bot: str | None = None) -> TelegramChannel:
    return TelegramChannel(context, bot)
