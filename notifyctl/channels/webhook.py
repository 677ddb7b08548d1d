"""``webhook:URL``: a signed JSON POST per reminder (SPEC §6, §14).

The body is serialised once (compact, sorted keys) and sent as those exact
bytes, so the signature a receiver checks is over what it received. The
signature also covers the receiver's URL, so a body signed for one receiver
cannot be replayed to another. A URL may carry credentials
(``https://user:pass@host/hook``) or a token in its path: no error text that
leaves this module contains either.

Webhook URLs come from end users: only public addresses are reached, unless
``NOTIFYCTL_WEBHOOK_ALLOW`` names the host or its network, and the check is
made on the address actually connected to (``netguard``). The environment's
proxies and ``.netrc`` are never consulted, redirects never followed, the
answer's body never stored (only its status line), and the whole send ends at
its deadline however slowly the receiver answers.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import hmac
import http
import json
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from ..config import REDACTED, Settings, redact, redact_url, url_password
from ..errors import ConfigError
from . import netguard
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
    """An absolute http(s) URL with a host; the message never echoes the URL.

    A literal non-public IP (loopback, private, link-local, …) is refused here
    unless ``NOTIFYCTL_WEBHOOK_ALLOW`` allows it; names are checked when sent.
    """
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
    allow_policy(os.environ.get("NOTIFYCTL_WEBHOOK_ALLOW")).check_literal(parts.hostname)
    return address


def shown(url: str) -> str:
    """The URL as output shows it: password, tokens in the path and query values masked.

    A path segment is taken for a token when it is long (16+ characters) or
    mixes letters and digits over 8+ characters (Slack's ``T…/B…/…``,
    Discord's ``ID/TOKEN``); ``/hooks/booking`` stays readable.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return REDACTED
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        user = _mask_segment(parts.username or "")
        host = f"{user}:{REDACTED}@{host}" if parts.password is not None else f"{user}@{host}"
    path = "/".join(_mask_segment(segment) for segment in parts.path.split("/"))
    query = "&".join(
        f"{key}={REDACTED}" if sep else _mask_segment(key)
        for key, sep, _ in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return f"{parts.scheme}://{host}{path}" + (f"?{query}" if query else "")


def _mask_segment(segment: str) -> str:
    letters = any(c.isalpha() for c in segment)
    digits = any(c.isdigit() for c in segment)
    if len(segment) >= 16 or (len(segment) >= 8 and letters and digits):
        return REDACTED
    return segment


def allow_policy(allow: str | None) -> netguard.AddressPolicy:
    """``NOTIFYCTL_WEBHOOK_ALLOW`` parsed; ``ConfigError`` (exit 3) when malformed."""
    try:
        return netguard.AddressPolicy.parse(allow)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_config(settings: Settings) -> None:
    """Only a well-formed allowlist: without a secret webhooks go unsigned."""
    allow_policy(settings.webhook_allow)


def sign(secret: str, timestamp: int, url: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, "<timestamp>.<url>.<body>")>``.

    ``url`` is the receiver's URL exactly as given to ``create`` (after
    ``webhook:``): a receiver checks with its own URL, so a body another
    receiver got cannot be replayed to it.
    """
    signed = f"{timestamp}.{url}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


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

        self._secret = context.settings.webhook_secret or None
        redact.add([self._secret])
        self._now = now
        self._connect_timeout = context.connect_timeout
        self._read_timeout = context.read_timeout
        self._deadline = context.send_deadline
        # never a shared session: this one checks every address it connects
        # to and ignores proxies and .netrc from the environment
        policy = allow_policy(context.settings.webhook_allow)
        self._session: requests.Session = netguard.http_session(
            policy, trust_env=False, pool_size=context.concurrency
        )

    def send(self, message: Message) -> SendResult:
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
            headers["X-Notifyctl-Signature"] = sign(self._secret, timestamp, url, body)
        with netguard.Deadline(self._deadline) as deadline:
            return self._post(url, body, headers, deadline, now, scrub)

    def _post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        deadline: netguard.Deadline,
        now: float,
        scrub: Callable[[str], str],
    ) -> SendResult:
        import requests

        timeout = (deadline.timeout(self._connect_timeout), deadline.timeout(self._read_timeout))
        try:
            response = self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True
            )
        except requests.RequestException as e:
            return _failure(e, deadline, scrub)
        try:
            _drain(response)
        finally:
            response.close()
        return classify_response(response.status_code, response.headers.get("Retry-After"), now=now)

    def close(self) -> None:
        self._session.close()


def _failure(
    error: Exception, deadline: netguard.Deadline, scrub: Callable[[str], str]
) -> SendResult:
    import requests

    if netguard.refused(error):
        return SendResult.failed(
            "the webhook host resolves to a non-public address "
            "(allow internal receivers with NOTIFYCTL_WEBHOOK_ALLOW)"
        )
    if deadline.expired:
        # abandoned at the deadline; once the request went out it may have been acted on
        return SendResult.retry(deadline.message(), uncertain=deadline.request_started)
    if isinstance(error, requests.ConnectTimeout):
        # nothing was sent: a plain backoff
        return SendResult.retry(scrub(_describe(error)))
    if isinstance(error, requests.Timeout):
        # the request went out: the receiver may have acted on it
        return SendResult.retry(scrub(_describe(error)), uncertain=True)
    if isinstance(error, requests.ConnectionError):
        # refused, reset, DNS; "aborted" means it broke after the request was sent
        return SendResult.retry(scrub(_describe(error)), uncertain="aborted" in str(error))
    if isinstance(error, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema):
        return SendResult.failed(scrub(_describe(error)))
    return SendResult.retry(scrub(_describe(error)), uncertain=True)


def _drain(response: requests.Response) -> None:
    """Read a small declared body so the connection can be reused; its text is never used.

    A body without a length, a larger one, or one that does not arrive in
    time only costs the connection (closed with the response).
    """
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= netguard.MAX_BODY:
        try:
            netguard.read_bounded(response)
        except Exception:  # the status line is the answer; a broken body changes nothing
            return


def status_line(status: int) -> str:
    """``HTTP 500 Internal Server Error``: the standard phrase, never the receiver's text."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def classify_response(status: int, retry_after: str | None, *, now: float) -> SendResult:
    """HTTP answer → outcome class (SPEC §6, webhook); only the status line is kept."""
    if 200 <= status < 300:
        return SendResult.sent(None, status)
    if 300 <= status < 400:
        error = (
            f"{status_line(status)}: the webhook answered with a redirect, which is not followed"
        )
        return SendResult.failed(error, status)
    error = status_line(status)
    if status in (429, 503):
        seconds = parse_retry_after(retry_after, now)
        if seconds is not None:
            return SendResult.retry_after_seconds(seconds, error, status)
        return SendResult.retry(error, status)
    if status >= 500:
        return SendResult.retry(error, status)
    if status == 410:  # Gone: the receiver says this URL takes nothing any more
        return SendResult.gone(error, status)
    return SendResult.failed(error, status)


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
