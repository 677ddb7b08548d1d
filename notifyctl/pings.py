"""Healthcheck pings (the healthchecks.io convention): start, success, fail or exit code.

``requests`` is imported only when a ping is sent, in its own daemon thread.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

from .config import REDACTED, redact, redact_url
from .errors import InvalidInput, NotifyctlError

if TYPE_CHECKING:
    import requests

    from .runs import RunReport

log = logging.getLogger("notifyctl.pings")

PING_TIMEOUT = 3.0

PingEvent = Literal["start", "success", "fail"] | int
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{16,}")


def _hidden_segments(url: str) -> list[str]:
    """Path segments to keep secret: the last one, and any that looks like a key."""
    try:
        segments = [s for s in urlsplit(url).path.split("/") if s]
    except ValueError:
        return []
    return [s for i, s in enumerate(segments) if i == len(segments) - 1 or _TOKEN_LIKE.fullmatch(s)]


def redact_ping_url(url: str) -> str:
    """A ping URL fit for logs: no password, no query, and its secret path segments hidden."""
    try:
        parts = urlsplit(redact_url(url))
    except ValueError:
        return REDACTED
    hidden = set(_hidden_segments(url))
    path = "/".join(REDACTED if s in hidden else s for s in parts.path.split("/"))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _scrub(text: str, url: str) -> str:
    """``text`` (an error about ``url``) without the URL's secret parts.

    Segments are hidden only where they stand as path segments (after a ``/``,
    up to the next delimiter) and the query only after its ``?``: a short path
    such as ``/x`` must not turn every letter x of the message into ``***``.
    """
    _, _, query = url.partition("?")
    segments = sorted(set(_hidden_segments(url)), key=len, reverse=True)
    if segments:
        alternatives = "|".join(re.escape(s) for s in segments)
        text = re.sub(rf"(?<=/)(?:{alternatives})(?=[/?#\s'\"),;]|$)", REDACTED, text)
    if query:
        text = text.replace(f"?{query}", f"?{REDACTED}")
    return redact(text)


def check_ping_url(url: str) -> None:
    """An http(s) URL with a host, or exit 2 now (not a warning every minute)."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise InvalidInput(
            f"invalid --ping-url {redact_ping_url(url)!r}: use an http(s) URL, "
            "e.g. https://hc-ping.com/<uuid>"
        )


def ping_target(url: str, event: PingEvent) -> str:
    """healthchecks.io: ``URL/start``, ``URL`` on success, ``URL/fail`` or ``URL/<code>``."""
    if event == "success" or event == 0:
        suffix = ""
    elif event == "start" or (isinstance(event, int) and 0 < event <= 255):
        suffix = f"/{event}"
    else:
        suffix = "/fail"
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def ping(
    url: str,
    event: PingEvent,
    session: requests.Session | None = None,
    timeout: float = PING_TIMEOUT,
    *,
    body: str | None = None,
) -> bool:
    """Tell a healthchecks.io-style monitor about a run; True when it answered 2xx.

    Never raises, and never takes longer than ``timeout`` (name resolution
    included: the request runs in a daemon thread that is left behind when it
    is late). Warnings name the URL with its secrets hidden.
    """
    redact.add(s for s in _hidden_segments(url) if _TOKEN_LIKE.fullmatch(s))
    outcome: list[str | None] = []

    def send() -> None:
        try:
            import requests

            target = ping_target(url, event)
            own = session is None
            http = session or requests.Session()
            try:
                response = http.post(
                    target,
                    data=(body or "").encode(),
                    timeout=(timeout, timeout),
                    allow_redirects=True,
                )
                response.close()
            finally:
                if own:
                    http.close()
            ok = 200 <= response.status_code < 300
            outcome.append(None if ok else f"HTTP {response.status_code}")
        except Exception as e:  # a ping must never fail the run
            outcome.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=send, name="notifyctl-ping", daemon=True)
    thread.start()
    thread.join(timeout)
    problem = outcome[0] if outcome else f"no answer within {timeout:g}s"
    if problem is not None:
        log.warning(
            "ping %s (%s) failed: %s",
            redact_ping_url(url),
            event,
            _scrub(problem, url)[:300],
            extra={"action": "ping_failed"},
        )
        return False
    return True


@dataclass
class Healthcheck:
    """Pings ``URL/start`` on enter, then ``URL`` or ``URL/<exit code>`` on exit.

    No URL: does nothing. An exception leaving the block pings its exit code
    (``NotifyctlError``) or ``/fail`` and is not swallowed.
    """

    url: str | None
    session: requests.Session | None = None
    timeout: float = PING_TIMEOUT
    exit_code: int = 0
    summary: str | None = None

    def __enter__(self) -> Healthcheck:
        self._ping("start")
        return self

    def finish(self, report: RunReport) -> None:
        """The run's result, pinged when the block ends."""
        self.exit_code = report.exit_code
        self.summary = report.summary_line() + (f"\nerror: {report.error}" if report.error else "")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self._ping("success" if self.exit_code == 0 else self.exit_code, self.summary)
        elif isinstance(exc, NotifyctlError):
            self._ping(int(exc.exit_code), f"error: {exc.message}")
        else:
            self._ping("fail", f"error: {type(exc).__name__}")

    def _ping(self, event: PingEvent, body: str | None = None) -> None:
        if self.url:
            ping(self.url, event, self.session, self.timeout, body=redact(body) if body else None)
