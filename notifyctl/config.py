"""Settings and secret redaction.

Precedence is option > process environment > ``.env`` > default. Typer reads
options and environment variables; ``load_dotenv_file`` fills the environment
from ``.env`` without overriding what is already set, which gives the order.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

APP_NAME = "notifyctl"
DEFAULT_TELEGRAM_API_URL = "https://api.telegram.org"
DEFAULT_SEND_DEADLINE = 30.0
REDACTED = "***"


def default_database_path() -> Path:
    """``notifyctl.db`` in the user's app directory (XDG on Linux)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / APP_NAME / "notifyctl.db"


def default_database_url() -> str:
    return f"sqlite:///{default_database_path()}"


def load_dotenv_file() -> None:
    """Load ``.env`` from the working directory upwards; never override the environment."""
    from dotenv import find_dotenv, load_dotenv

    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know about its environment."""

    database_url: str = field(default_factory=default_database_url)
    timezone: str = "UTC"
    telegram_token: str | None = None
    telegram_api_url: str = DEFAULT_TELEGRAM_API_URL
    webhook_secret: str | None = None
    smtp_url: str | None = None
    email_from: str | None = None
    templates_path: str | None = None
    #: NOTIFYCTL_WEBHOOK_ALLOW: hosts/CIDRs webhooks may reach besides public addresses
    webhook_allow: str | None = None
    #: NOTIFYCTL_APPRISE_SCHEMES: Apprise services accepted (None: a safe default set)
    apprise_schemes: str | None = None
    #: NOTIFYCTL_SEND_DEADLINE: seconds one send may take on any channel, answer included
    send_deadline: float = DEFAULT_SEND_DEADLINE

    def secrets(self) -> list[str]:
        """Every secret these settings hold, for the redactor."""
        found = [self.telegram_token, self.webhook_secret]
        found += [url_password(u) for u in (self.database_url, self.smtp_url)]
        return [s for s in found if s]


def parse_send_deadline(text: str | None) -> float:
    """``NOTIFYCTL_SEND_DEADLINE``: seconds, 0.1 to 3600 (default 30)."""
    if not text or not text.strip():
        return DEFAULT_SEND_DEADLINE
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0.1 <= seconds <= 3600:
        raise ConfigError("NOTIFYCTL_SEND_DEADLINE must be a number of seconds from 0.1 to 3600")
    return seconds


def url_password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return REDACTED
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:{REDACTED}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


_TOKEN_IN_PATH = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")
_PASSWORD_IN_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.I)


class Redactor:
    """Removes known secrets (and anything shaped like one) from text.

    A process-wide instance collects the secrets each command configures, so
    the error chokepoint and the log filter can scrub whatever reaches them.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str | None]) -> None:
        with self._lock:
            self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "<redacted>" if ":" in secret else REDACTED)
        text = _TOKEN_IN_PATH.sub("/bot<redacted>", text)
        return _PASSWORD_IN_URL.sub(rf"\g<scheme>{REDACTED}@", text)


redact = Redactor()


def require(value: str | None, what: str) -> str:
    if not value:
        raise ConfigError(f"{what} is not set")
    return value
