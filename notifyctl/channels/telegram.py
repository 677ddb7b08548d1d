"""Telegram Bot API over requests: sendMessage in HTML parse mode.

The token lives in the URL path, so every error text that leaves this module
goes through the redactor, and urllib3's debug log gets a redacting filter.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any

from ..config import Settings, redact
from ..errors import ConfigError
from .base import ChannelContext, Message, SendResult, TextFormat

if TYPE_CHECKING:
    import requests

MAX_TEXT_LENGTH = 4096
_CHAT_ID = re.compile(r"-?[1-9]\d{0,15}")
_USERNAME = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,31}")


def validate(address: str) -> str:
    if _CHAT_ID.fullmatch(address) or _USERNAME.fullmatch(address):
        return address
    raise ValueError("a Telegram recipient is a numeric chat id or an @channel username")


def check_config(settings: Settings) -> None:
    token = settings.telegram_token
    if not token:
        raise ConfigError("TELEGRAM_BOT_TOKEN is not set, and Telegram reminders are due")
    if not re.fullmatch(r"\d+:[\w-]+", token):
        raise ConfigError("TELEGRAM_BOT_TOKEN does not look like a bot token (digits:secret)")
    if not settings.telegram_api_url.startswith(("https://", "http://")):
        raise ConfigError("TELEGRAM_API_URL must be an http(s) URL")


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

    def __init__(self, context: ChannelContext) -> None:

        settings = context.settings
        check_config(settings)
        token = settings.telegram_token or ""
        redact.add([token])
        _install_log_redaction()
        self.pacing_key: str | None = pacing_key_for(token)
        self._url = f"{settings.telegram_api_url.rstrip('/')}/bot{token}/sendMessage"
        self._timeout = (context.connect_timeout, context.read_timeout)
        self._own_session = context.http_session is None
        self._session: requests.Session = context.http_session or _session_for(self._url)

    def send(self, message: Message) -> SendResult:
        import requests

        body: dict[str, Any] = {
            "chat_id": message.recipient,
            "text": message.text,
            "link_preview_options": {"is_disabled": True},
        }
        if message.text_format == "html":
            body["parse_mode"] = "HTML"
        try:
            response = self._session.post(self._url, json=body, timeout=self._timeout)
        except requests.ConnectionError as e:
            # refused, reset, DNS, connect timeout; "aborted" means it broke after sending
            return SendResult.retry(_describe(e), uncertain="aborted" in str(e))
        except requests.Timeout as e:
            # the request went out: the message may have been delivered
            return SendResult.retry(_describe(e), uncertain=True)
        except requests.RequestException as e:
            return SendResult.retry(_describe(e))
        return classify_response(response.status_code, _json_or_none(response))

    def close(self) -> None:
        if self._own_session:
            self._session.close()


def _session_for(url: str) -> requests.Session:
    """A Session that reads the environment (proxies, CA bundle) once, not per request.

    requests otherwise looks up proxies, ~/.netrc and the CA bundle path again on
    every send; a burst of reminders pays that thousands of times.
    """
    import os

    import requests

    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(url))
    session.verify = (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
    session.trust_env = False
    return session


def _describe(error: Exception) -> str:
    return redact(f"{type(error).__name__}: {error}")[:500]


def _json_or_none(response: requests.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def classify_response(status: int, data: dict[str, Any] | None) -> SendResult:
    """Bot API answer → outcome class (SPEC §5, Outcomes)."""
    if data is not None and data.get("ok") is True:
        result = data.get("result") or {}
        message_id = result.get("message_id") if isinstance(result, dict) else None
        return SendResult.sent(str(message_id) if message_id is not None else None, status)
    data = data or {}
    code = int(data.get("error_code") or status)
    description = redact(str(data.get("description") or f"HTTP {status}"))[:500]
    parameters = data.get("parameters") or {}
    error = f"{code}: {description}"
    if code == 429:
        retry_after = float(parameters.get("retry_after") or 1)
        return SendResult.retry_after_seconds(retry_after, error, status)
    if "migrate_to_chat_id" in parameters:
        return SendResult.moved(str(parameters["migrate_to_chat_id"]), error, status)
    if code in (401, 404):
        return SendResult.bad_credentials(error, status)
    if code >= 500 or status >= 500:
        return SendResult.retry(error, status)
    return SendResult.failed(error, status)


def open_channel(context: ChannelContext) -> TelegramChannel:
    return TelegramChannel(context)
