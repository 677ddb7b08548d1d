"""``webhook:URL``: a signed JSON POST per reminder (SPEC §6).

The body is serialised once (compact, sorted keys) and sent as those exact
bytes, so the signature a receiver checks is over what it received. A URL may
carry credentials (``https://user:pass@host/hook``) or a token in its path:
no error text that leaves this module contains either.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from ..config import REDACTED, Settings, redact, redact_url, url_password
from .base import ChannelContext, Message, SendResult, TextFormat

if TYPE_CHECKING:
    import requests

USER_AGENT = "notifyctl"
MIN_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 3600.0
_SCHEMES = ("https", "http")
_MAX_ERROR = 500
_MIN_SECRET_PATH = 8


def validate(address: str) -> str:
    """An absolute http(s) URL with a host; the message never echoes the URL."""
    if not address or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address):
        raise ValueError("a webhook URL may not be empty or contain spaces or control characters")
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        raise ValueError("the webhook URL is malformed (bad host or port)") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise ValueError(
            "a webhook URL must start with https:// (or http:// for internal services)"
        )
    if not parts.hostname:
        raise ValueError("the webhook URL has no host")
    if port == 0:
        raise ValueError("the webhook URL has an invalid port")
    return address


def check_config(settings: Settings) -> None:
    """Webhooks need nothing: without ``NOTIFYCTL_WEBHOOK_SECRET`` they go unsigned."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def build_body(message: Message) -> bytes:
    """The JSON document a receiver gets: the dispatcher's payload plus the text."""
    document: dict[str, Any] = {
        "notification_id": message.notification_id,
        "booking_id": message.booking_id,
        "kind": message.kind,
    }
    document.update(message.payload)
    # the receiver knows its own URL; never copy a password in it into the body
    document["recipient"] = redact_url(str(document.get("recipient") or message.recipient))
    document["text"] = message.text
    return json.dumps(
        document, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=_json_default
    ).encode("utf-8")


def _json_default(value: object) -> str:
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return str(isoformat())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (delay seconds or HTTP-date) → seconds, clamped to [1 s, 1 h].

    ``None`` when the header is missing or unusable.
    """
    if value is None:
        return None
    text = value.strip()
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, as every HTTP-date is
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


class WebhookChannel:
    text_format: TextFormat = "plain"
    pacing_key: str | None = None
    max_text_length: int | None = None
    parts: frozenset[str] = frozenset()

    def __init__(self, context: ChannelContext, *, now: Callable[[], float] = time.time) -> None:
        import requests

        self._secret = context.settings.webhook_secret or None
        redact.add([self._secret])
        self._now = now
        self._timeout = (context.connect_timeout, context.read_timeout)
        self._own_session = context.http_session is None
        self._session: requests.Session = context.http_session or requests.Session()

    def send(self, message: Message) -> SendResult:
        import requests

        url = message.recipient
        scrub = _Scrubber(url)
        try:
            body = build_body(message)
        except (TypeError, ValueError) as e:
            return SendResult.failed(scrub(f"the webhook payload is not JSON: {e}"))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(message.notification_id),
            "User-Agent": USER_AGENT,
        }
        now = self._now()
        if self._secret:
            timestamp = int(now)
            headers["X-Notifyctl-Timestamp"] = str(timestamp)
            headers["X-Notifyctl-Signature"] = sign(self._secret, timestamp, body)
        try:
            response = self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            )
        except requests.ConnectTimeout as e:
            # nothing was sent: a plain backoff
            return SendResult.retry(scrub(_describe(e)))
        except requests.Timeout as e:
            # the request went out: the receiver may have acted on it
            return SendResult.retry(scrub(_describe(e)), uncertain=True)
        except requests.ConnectionError as e:
            # refused, reset, DNS; "aborted" means it broke after the request was sent
            return SendResult.retry(scrub(_describe(e)), uncertain="aborted" in str(e))
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as e:
            return SendResult.failed(scrub(_describe(e)))
        except requests.RequestException as e:
            return SendResult.retry(scrub(_describe(e)), uncertain=True)
        try:
            return classify_response(
                response.status_code,
                response.headers.get("Retry-After"),
                _snippet(response),
                now=now,
                scrub=scrub,
            )
        finally:
            response.close()

    def close(self) -> None:
        if self._own_session:
            self._session.close()


def classify_response(
    status: int,
    retry_after: str | None,
    snippet: str,
    *,
    now: float,
    scrub: Callable[[str], str] = redact,
) -> SendResult:
    """HTTP answer → outcome class (SPEC §6, webhook)."""
    if 200 <= status < 300:
        return SendResult.sent(None, status)
    detail = f": {snippet}" if snippet else ""
    if 300 <= status < 400:
        error = f"HTTP {status}: the webhook answered with a redirect, which is not followed"
        return SendResult.failed(error, status)
    error = scrub(f"HTTP {status}{detail}")
    if status in (429, 503):
        seconds = parse_retry_after(retry_after, now)
        if seconds is not None:
            return SendResult.retry_after_seconds(seconds, error, status)
        return SendResult.retry(error, status)
    if status >= 500:
        return SendResult.retry(error, status)
    return SendResult.failed(error, status)


def _snippet(response: requests.Response) -> str:
    """The start of the answer's body on one line, for the stored error."""
    text = response.content[:1000].decode("utf-8", "replace")
    return " ".join(text.split())[:200]


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


class _Scrubber:
    """Removes this URL's credentials and path (tokens live there) from a text."""

    def __init__(self, url: str) -> None:
        self._replacements: list[tuple[str, str]] = []
        password = url_password(url)
        redact.add([password])
        try:
            parts = urlsplit(url)
            safe = _safe_url(parts)
        except ValueError:
            self._replacements.append((url, REDACTED))
            return
        self._replacements.append((url, safe))
        if "@" in parts.netloc:
            userinfo = parts.netloc.rsplit("@", 1)[0]
            self._replacements.append((userinfo + "@", ""))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(path) >= _MIN_SECRET_PATH:  # short paths hold no token, and match too much
            self._replacements.append((path, "/" + REDACTED))

    def __call__(self, text: str) -> str:
        for secret, replacement in self._replacements:
            text = text.replace(secret, replacement)
        return redact(text)[:_MAX_ERROR]


def _safe_url(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    path = "/" + REDACTED if len(parts.path) > 1 or parts.query else parts.path
    return f"{parts.scheme}://{host}{path}"


def open_channel(
    context: ChannelContext, *, now: Callable[[], float] = time.time
) -> WebhookChannel:
    return WebhookChannel(context, now=now)
