"""``apprise:URL``: any Apprise service (Slack, Discord, SMS, …), an optional extra.

Apprise is imported only inside these functions, so nothing pays for it unless
an ``apprise:`` recipient is created or due. Apprise reports only success or
failure, so every failure is a retry with backoff (SPEC §6). Apprise URLs
carry tokens in every part: errors name the service and Apprise's own
privacy-masked URL, never the URL itself.
"""

from __future__ import annotations

import threading
import warnings
from types import ModuleType
from typing import Any

from ..config import REDACTED, Settings, redact, url_password
from ..errors import ConfigError
from .base import ChannelContext, Message, SendResult, TextFormat

MISSING_EXTRA = "apprise: recipients need the optional extra: pip install 'notifyctl[apprise]'"
_MAX_ERROR = 500
_load_lock = threading.Lock()
_plugins_loaded = False


def _apprise() -> ModuleType:
    """The apprise module with its plugins loaded; ``ImportError`` without the extra.

    Apprise imports its plugins on first use, and some of them import
    deprecated stdlib modules: those DeprecationWarnings are Apprise's, not
    our users', so they are silenced for that one load.
    """
    global _plugins_loaded
    with _load_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise

        if not _plugins_loaded:
            apprise.Apprise().add("json://localhost")  # no network: parses, loads plugins
            _plugins_loaded = True
    return apprise


def validate(address: str) -> str:
    try:
        apprise = _apprise()
    except ImportError:
        raise ValueError(MISSING_EXTRA) from None
    if not address or any(c.isspace() for c in address):
        raise ValueError("an Apprise URL may not be empty or contain spaces")
    if not apprise.Apprise().add(address):
        raise ValueError(
            "Apprise does not accept this URL (see https://github.com/caronc/apprise/wiki)"
        )
    return address


def check_config(settings: Settings) -> None:
    try:
        _apprise()
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None


class AppriseChannel:
    text_format: TextFormat = "plain"
    pacing_key: str | None = None
    max_text_length: int | None = None
    parts: frozenset[str] = frozenset({"subject"})

    def __init__(self, context: ChannelContext) -> None:
        check_config(context.settings)
        self._apprise = _apprise()

    def send(self, message: Message) -> SendResult:
        apprise = self._apprise
        url = message.recipient
        redact.add([url_password(url)])
        notifier = apprise.Apprise()
        if not notifier.add(url):
            return SendResult.failed("Apprise does not accept this URL any more")
        service = notifier[0]
        name = str(getattr(service, "service_name", None) or "Apprise")
        shown = _privacy_url(service)
        try:
            result = notifier.notify(
                body=message.text,
                title=message.subject or "",
                body_format=apprise.NotifyFormat.TEXT,
            )
        except Exception as e:  # a plugin that crashes must not crash the run
            error = f"apprise {name} ({shown}): {type(e).__name__}: {e}"
            return SendResult.retry(_clean(error, url, shown))
        try:
            if result:
                return SendResult.sent()
            reasons = _reasons(result)
        finally:
            close = getattr(result, "close", None)
            if callable(close):
                close()
        error = f"apprise {name} ({shown}): notification failed"
        if reasons:
            error += ": " + reasons
        return SendResult.retry(_clean(error, url, shown))

    def close(self) -> None:
        """Apprise keeps no connection between notifications."""


def _privacy_url(service: Any) -> str:
    try:
        shown = str(service.url(privacy=True))
    except Exception:
        return REDACTED
    return shown.split("?", 1)[0]


def _reasons(result: object) -> str:
    """Apprise 2's captured warnings and errors for this call (1.x returns a bare bool)."""
    logs = getattr(result, "logs", None)
    if not callable(logs):
        return ""
    messages: list[str] = []
    for entry in logs():
        if getattr(entry, "level", "") in ("WARNING", "ERROR", "CRITICAL"):
            text = " ".join(str(getattr(entry, "message", "")).split())
            if text and text not in messages:
                messages.append(text)
    return "; ".join(messages)


def _clean(text: str, url: str, shown: str) -> str:
    return redact(text.replace(url, shown))[:_MAX_ERROR]


def open_channel(context: ChannelContext) -> AppriseChannel:
    return AppriseChannel(context)
