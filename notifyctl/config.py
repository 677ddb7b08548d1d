"""Settings and secret redaction.

Precedence is option > process environment > ``.env`` > default. Typer reads
options and environment variables; ``load_dotenv_file`` fills the environment
from ``.env`` without overriding what is already set, which gives the order.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

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
    """Load ``.env`` from the working directory upwards; never override the environment.

    python-dotenv logs a line it cannot parse through ``logging`` (bare, without the
    file); each such complaint is shown once as ``warning: PATH: …`` on stderr instead.
    """
    import logging
    import sys

    from dotenv import find_dotenv, load_dotenv

    path = find_dotenv(usecwd=True)
    if not path:
        return
    complaints: list[str] = []

    def capture(record: logging.LogRecord) -> bool:
        complaints.append(record.getMessage())
        return False  # handled here: not also printed bare by logging's last resort

    logger = logging.getLogger("dotenv.main")
    logger.addFilter(capture)
    try:
        load_dotenv(path, override=False)
    finally:
        logger.removeFilter(capture)
    for message in dict.fromkeys(complaints):
        print(f"warning: {path}: {message}", file=sys.stderr)


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know about its environment."""

    database_url: str = field(default_factory=default_database_url)
    telegram_token: str | None = None
    #: named bots (TELEGRAM_BOT_TOKEN_<NAME>): lower-cased name → token
    telegram_bots: Mapping[str, str] = field(default_factory=dict, hash=False)
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

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **given: Any) -> Settings:
        """Settings from the environment, ``given`` (command-line options) winning.

        Only the variables no option reads: Typer already resolved those into ``given``.
        """
        read: dict[str, Any] = {
            "telegram_bots": telegram_bots_from(environ),
            "send_deadline": parse_send_deadline(environ.get("NOTIFYCTL_SEND_DEADLINE")),
        }
        for name, variable in _CHANNEL_VARIABLES.items():
            read[name] = environ.get(variable) or None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in {**read, **given}.items() if k in known})

    def secrets(self) -> list[str]:
        """Every secret these settings hold, for the redactor."""
        found = [self.telegram_token, self.webhook_secret, *self.telegram_bots.values()]
        for url in (self.database_url, self.smtp_url):
            found += url_passwords(url)
        return [s for s in found if s]


#: settings read from one environment variable each, empty meaning unset
_CHANNEL_VARIABLES = {
    "webhook_secret": "NOTIFYCTL_WEBHOOK_SECRET",
    "smtp_url": "NOTIFYCTL_SMTP_URL",
    "email_from": "NOTIFYCTL_EMAIL_FROM",
    "templates_path": "NOTIFYCTL_TEMPLATES",
    "webhook_allow": "NOTIFYCTL_WEBHOOK_ALLOW",
    "apprise_schemes": "NOTIFYCTL_APPRISE_SCHEMES",
}
_BOT_TOKEN_VARIABLE = re.compile(r"TELEGRAM_BOT_TOKEN_([A-Za-z0-9_]+)")


def telegram_bots_from(environ: Mapping[str, str]) -> dict[str, str]:
    """``TELEGRAM_BOT_TOKEN_<NAME>`` variables → {name lower-cased: token}, read once."""
    bots: dict[str, str] = {}
    for variable in sorted(environ):
        match = _BOT_TOKEN_VARIABLE.fullmatch(variable)
        if match and environ[variable]:
            bots[match.group(1).lower()] = environ[variable]
    return bots


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


#: ``password=`` / ``passwd=`` as a URL query parameter (psycopg and libpq accept it) or
#: as a libpq ``key=value`` word; the value runs to the next ``&``, ``#`` or space.
_PASSWORD_PARAM = re.compile(r"(?<![^?&;\s])((?:password|passwd)=)[^&#\s]*", re.I)


def url_passwords(url: str | None) -> list[str]:
    """The passwords a URL carries: in its user part and in a ``password=`` parameter."""
    if not url:
        return []
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
    except ValueError:
        pass
    _, _, query = url.partition("?")
    for name, value in parse_qsl(query.partition("#")[0], keep_blank_values=False):
        if name.lower() in ("password", "passwd"):
            found.append(value)
    # as written and as decoded: messages may show either spelling
    found += [unquote(p) for p in found if unquote(p) != p]
    return found


def url_password(url: str | None) -> str | None:
    """The password in a URL's user part or its ``password=`` parameter, if any."""
    found = url_passwords(url)
    return found[0] if found else None


def redact_url(url: str) -> str:
    """The URL with any password (user part or ``password=`` parameter) replaced by ``***``."""
    url = _PASSWORD_PARAM.sub(rf"\g<1>{REDACTED}", url)
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
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_USER_PART = re.compile(r"[^:/@\s]*")
_SPACE = re.compile(r"\s")
#: C0 controls but tab and newline, DEL and C1: escaped in everything redacted, so a
#: stored error or a diagnostic can never carry a terminal escape sequence.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: shorter secrets are not replaced as bare text: they would mangle ordinary words
MIN_SECRET_LENGTH = 8


def escape_control(match: re.Match[str]) -> str:
    """``\\x1b`` for an escape character: visible, inert."""
    return f"\\x{ord(match.group()):02x}"


def _mask_url_passwords(text: str) -> str:
    """``scheme://user:secret@`` → ``scheme://user:***@``, in one pass (linear time).

    Same matches as ``[a-z][a-z0-9+.-]*://[^:/@\\s]*:[^@\\s]+@``, but a regular
    expression of that shape backtracks quadratically on long text without ``@``.
    The next ``@`` and the next space are remembered, so no stretch is scanned twice.
    """
    out: list[str] = []
    last = 0
    pos = 0
    next_at = next_space = -1
    length = len(text)
    while (mark := text.find("://", pos)) >= 0:
        pos = mark + 3
        start = mark
        while start > 0 and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        if not any(c.isalpha() for c in text[start:mark]):
            continue
        user_end = _USER_PART.match(text, pos).end()  # type: ignore[union-attr]
        if user_end >= length or text[user_end] != ":":
            continue
        secret = user_end + 1
        if next_at < secret:
            next_at = text.find("@", secret)
            if next_at < 0:
                break  # no "@" anywhere after this: nothing further can match
        if next_space < secret:
            found = _SPACE.search(text, secret)
            next_space = found.start() if found else length
        if next_at == secret or next_space < next_at:
            continue
        out += [text[last:secret], REDACTED]
        last = pos = next_at
    out.append(text[last:])
    return "".join(out)


class Redactor:
    """Removes known secrets (and anything shaped like one) from text.

    A process-wide instance collects the secrets each command configures, so
    the error chokepoint and the log filter can scrub whatever reaches them.
    Every step is linear in the length of the text (long input is bad input,
    not a reason for a run to stall), and control characters come out escaped.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str | None]) -> None:
        """Secrets to replace wherever they appear; too short ones are left to the patterns."""
        with self._lock:
            self._secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)

    def __call__(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, "<redacted>" if ":" in secret else REDACTED)
        text = _TOKEN_IN_PATH.sub("/bot<redacted>", text)
        text = _PASSWORD_PARAM.sub(rf"\g<1>{REDACTED}", text)
        return _CONTROL.sub(escape_control, _mask_url_passwords(text))

    def clipped(self, text: str, limit: int = 1000) -> str:
        """Redacted, then cut to ``limit`` characters (cutting first could split a secret)."""
        return clip(self(text), limit)


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, ending with "…" when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


redact = Redactor()


def require(value: str | None, what: str) -> str:
    if not value:
        raise ConfigError(f"{what} is not set")
    return value


def configure_logging(verbose: bool) -> None:
    """notifyctl's log lines on stderr, bare; INFO and up with ``-v``, else WARNING."""
    import logging

    class CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
        """Writes to whatever ``sys.stderr`` is now (in-process runs swap it per call)."""

        @property
        def stream(self) -> TextIO:
            return sys.stderr

        @stream.setter
        def stream(self, _value: TextIO) -> None:
            pass

    logger = logging.getLogger("notifyctl")
    if not logger.handlers:
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
