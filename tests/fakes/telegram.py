"""A fake Telegram Bot API server for tests and benchmarks (stdlib only).

Usage::

    with FakeTelegram(token="123:ABC", rate_limit=30.0) as tg:
        env["TELEGRAM_API_URL"] = tg.api_url
        tg.script("42", error(403, "Forbidden: bot was blocked by the user"))
        ...  # run the code under test
        tg.wait_for(3)
        assert [m.status for m in tg.messages] == [403, 200, 200]

Endpoints:

- ``POST /bot<token>/sendMessage`` with a JSON (or form-encoded) body;
- ``POST /bot<token>/editMessageText`` of a message this fake sent, with the
  real API's refusals: 400 "message to edit not found" (unknown id in that
  chat), "message is not modified: …" (the same text), "message can't be
  edited" (older than ``edit_window`` seconds, or scripted with
  :meth:`FakeTelegram.script_edit`);
- ``POST|GET /bot<token>/getMe``;
- ``GET /stats`` - JSON counters (see :meth:`FakeTelegram.stats`).

Anything else under ``/bot<token>/`` answers 404 like the real API. A token
other than the server's (or one of its further ``tokens``: several bots on one
API URL) answers 404, a revoked one 401. A ``message_thread_id`` listed in
``missing_threads`` answers 400 "message thread not found".

Answers to ``sendMessage`` are decided in this order: the global override
(:meth:`FakeTelegram.fail_all`), then the per-chat script
(:meth:`FakeTelegram.script`), then the rate ceiling, then success. Scripted
and overriding answers bypass the rate ceiling; every 200 counts in it.

The handler sets ``disable_nagle_algorithm``: without it every keep-alive
reply stalls ~40 ms (Nagle + delayed ACK) and the fake, not the code under
test, would be measured.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from tests.fakes.server import LoopbackHTTPServer

__all__ = [
    "Edit",
    "FakeTelegram",
    "Received",
    "Reply",
    "close_connection",
    "error",
    "hang",
    "http_status_only",
    "ok",
]

MAX_TEXT_LENGTH = 4096
NO_ANSWER = 0  # Received.status of a request answered by dropping the connection


def _dumps(obj: object) -> bytes:
    """Compact JSON, as the real Bot API sends it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Reply:
    """How to answer one request. Build with :func:`ok`, :func:`error`, ...

    ``body`` None means "the normal success body for this message".
    """

    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    delay: float = 0.0
    close: bool = False


def ok() -> Reply:
    """A normal success answer (a new message id)."""
    return Reply()


def error(code: int, description: str, **parameters: Any) -> Reply:
    """A Bot API error: ``{"ok":false,"error_code":code,"description":...[,"parameters":{...}]}``.

    >>> error(429, "Too Many", retry_after=5).body
    b'{"ok":false,"error_code":429,"description":"Too Many","parameters":{"retry_after":5}}'
    """
    payload: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        payload["parameters"] = parameters
    return Reply(status=code, body=_dumps(payload))


def http_status_only(status: int, body: str = "") -> Reply:
    """A bare HTTP status with a non-JSON body (a proxy's 502 page, ...)."""
    return Reply(status=status, body=body.encode(), content_type="text/plain; charset=utf-8")


def hang(seconds: float, then: Reply | None = None) -> Reply:
    """Wait ``seconds`` before answering (``then``, default a success).

    The message counts as received (and, by default, as sent): this models a
    client read timeout after the message may have gone out. Other requests
    are not blocked; :meth:`FakeTelegram.stop` cuts the wait short.
    """
    base = then if then is not None else ok()
    return Reply(base.status, base.body, base.content_type, base.delay + seconds, base.close)


def close_connection() -> Reply:
    """Drop the connection without answering (recorded with status 0)."""
    return Reply(status=NO_ANSWER, close=True)


# Ready-made common answers (descriptions as the real API words them).
def too_many_requests(retry_after: int) -> Reply:
    return error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)


def chat_not_found() -> Reply:
    return error(400, "Bad Request: chat not found")


def blocked_by_user() -> Reply:
    return error(403, "Forbidden: bot was blocked by the user")


def migrated(to_chat_id: int) -> Reply:
    return error(
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
        migrate_to_chat_id=to_chat_id,
    )


MESSAGE_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)


def cant_be_edited() -> Reply:
    return error(400, "Bad Request: message can't be edited")


def edit_not_found() -> Reply:
    return error(400, "Bad Request: message to edit not found")


_NOT_FOUND = error(404, "Not Found")
_BOT = {"id": 1, "is_bot": True, "first_name": "Fake", "username": "fake_bot"}
_UNAUTHORIZED = error(401, "Unauthorized")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Received:
    """One ``sendMessage`` request as the fake saw it."""

    chat_id: str
    text: str
    parse_mode: str | None
    at: float  # time.monotonic() on arrival
    status: int  # HTTP status answered; 0 = connection dropped
    message_id: int | None = None  # set on 200
    link_preview_options: Any = None
    token: str = ""
    message_thread_id: str | None = None  # a forum topic, as sent


@dataclass(frozen=True)
class Edit:
    """One ``editMessageText`` request as the fake saw it."""

    chat_id: str
    message_id: int | None
    text: str
    parse_mode: str | None
    at: float
    status: int
    token: str = ""


# --------------------------------------------------------------------------- server


class _Server(LoopbackHTTPServer):
    def __init__(self, host: str, port: int, fake: FakeTelegram) -> None:
        self.fake = fake
        super().__init__(_Handler, port, host)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "nginx"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def answer(self, reply: Reply, body: bytes) -> None:
        if reply.close:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # client gave up (read timeout) - fine
            self.close_connection = True


class FakeTelegram:
    """In-process fake Bot API server; see the module docstring."""

    def __init__(
        self,
        token: str = "123:ABC",
        *,
        rate_limit: float | None = None,
        latency: float = 0.0,
        revoked: Iterable[str] = (),
        tokens: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.tokens = frozenset([token, *tokens])  # every bot this server knows
        #: topics that are gone: a send into one answers 400 "message thread not found"
        self.missing_threads: set[str] = set()
        self.rate_limit = rate_limit
        self.latency = latency
        self._revoked = set(revoked)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._messages: list[Received] = []
        self._scripts: dict[str, deque[Reply]] = {}
        self._override: Reply | None = None
        # arrival times of recent 200s, per token: every bot has its own rate limit
        self._windows: dict[str, deque[float]] = {}
        self._next_message_id = 1
        #: the text of every message sent, and when: (token, chat, message id) → (text, at)
        self._texts: dict[tuple[str, str, int], tuple[str, float]] = {}
        self._edits: list[Edit] = []
        self._edit_scripts: dict[str, deque[Reply]] = {}
        #: how long a sent message can be edited (the real API: about 48 hours)
        self.edit_window = 48 * 3600.0
        self._requests = 0
        self._by_status: Counter[int] = Counter()
        self._started_at = time.monotonic()
        self._server = _Server(host, port, self)
        self.host = host
        self.port: int = self._server.server_port
        self._server.start()

    # ------------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        """Base URL for TELEGRAM_API_URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving, cut hangs/latency short, close every connection. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.close()

    def __enter__(self) -> FakeTelegram:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ scripting

    def script(self, chat_id: str | int, *responses: Reply) -> None:
        """Queue answers for ``chat_id``, one per request, then normal behaviour."""
        with self._lock:
            self._scripts.setdefault(str(chat_id), deque()).extend(responses)

    def script_edit(self, chat_id: str | int, *responses: Reply) -> None:
        """Queue answers to ``editMessageText`` in ``chat_id``, one per request."""
        with self._lock:
            self._edit_scripts.setdefault(str(chat_id), deque()).extend(responses)

    def fail_all(self, response: Reply) -> None:
        """Answer every sendMessage with ``response`` until :meth:`clear`."""
        with self._lock:
            self._override = response

    def clear(self) -> None:
        """Remove the global override and all per-chat scripts."""
        with self._lock:
            self._override = None
            self._scripts.clear()

    def revoke(self, token: str | None = None) -> None:
        """Treat ``token`` (default: the server's own) as revoked: 401."""
        with self._lock:
            self._revoked.add(self.token if token is None else token)

    def reset(self) -> None:
        """Forget received messages and counters (scripts are kept)."""
        with self._lock:
            self._messages.clear()
            self._windows.clear()
            self._requests = 0
            self._by_status.clear()
            self._started_at = time.monotonic()

    # ------------------------------------------------------------------ inspection

    @property
    def messages(self) -> list[Received]:
        """Every sendMessage received, in arrival order (a copy)."""
        with self._lock:
            return list(self._messages)

    def sent(self) -> list[Received]:
        """Only the messages answered with 200."""
        return [m for m in self.messages if m.status == 200]

    @property
    def edits(self) -> list[Edit]:
        """Every editMessageText received, in arrival order (a copy)."""
        with self._lock:
            return list(self._edits)

    def text_of(self, chat_id: str | int, message_id: int) -> str | None:
        """The text of a sent message as the chat shows it now (after any edit)."""
        with self._lock:
            for (_, chat, mid), (text, _) in self._texts.items():
                if chat == str(chat_id) and mid == message_id:
                    return text
        return None

    @property
    def count_429(self) -> int:
        with self._lock:
            return sum(1 for m in self._messages if m.status == 429)

    def wait_for(self, count: int, timeout: float = 5.0, *, sent: bool = False) -> list[Received]:
        """Block until ``count`` messages (only 200s if ``sent``) were received.

        Returns the messages; raises TimeoutError otherwise.
        """

        def enough() -> bool:
            return self._count(sent) >= count

        with self._changed:
            if not self._changed.wait_for(enough, timeout):
                raise TimeoutError(
                    f"fake Telegram: {self._count(sent)} of {count} messages after {timeout} s"
                )
            msgs = list(self._messages)
        return [m for m in msgs if m.status == 200] if sent else msgs

    def _count(self, sent: bool) -> int:  # caller holds the lock
        if sent:
            return sum(1 for m in self._messages if m.status == 200)
        return len(self._messages)

    def max_per_second(self) -> int:
        """Most 200s within any sliding 1-second window (for rate-limit checks)."""
        with self._lock:
            times = sorted(m.at for m in self._messages if m.status == 200)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def stats(self) -> dict[str, Any]:
        """JSON-able counters (also served at ``GET /stats``)."""
        with self._lock:
            msgs = list(self._messages)
            requests = self._requests
            by_status = dict(self._by_status)
            started = self._started_at
        ok_times = [m.at for m in msgs if m.status == 200]
        return {
            "requests": requests,
            "messages": len(msgs),
            "sent": len(ok_times),
            "count_429": sum(1 for m in msgs if m.status == 429),
            "by_status": {str(k): v for k, v in sorted(by_status.items())},
            "max_per_second": self.max_per_second(),
            "first_sent_at": min(ok_times) if ok_times else None,
            "last_sent_at": max(ok_times) if ok_times else None,
            "uptime": time.monotonic() - started,
            "rate_limit": self.rate_limit,
            "latency": self.latency,
        }

    # ------------------------------------------------------------------ handling

    def _handle(self, h: _Handler) -> None:
        body = h.read_body() if h.command == "POST" else b""
        path = h.path.split("?", 1)[0]
        if path == "/stats" and h.command == "GET":
            self._reply(h, Reply(), _dumps(self.stats()))
            return
        parts = path.split("/")
        if len(parts) != 3 or parts[0] != "" or not parts[1].startswith("bot"):
            self._reply(h, _NOT_FOUND, _NOT_FOUND.body or b"")
            return
        token, method = parts[1][3:], parts[2]
        if method == "sendMessage" and h.command == "POST":
            self._send_message(h, token, body)
            return
        if method == "editMessageText" and h.command == "POST":
            self._edit_message(h, token, body)
            return
        auth = self._auth(token)
        if auth is None and method == "getMe":
            self._reply(h, Reply(), _dumps({"ok": True, "result": _BOT}))
            return
        reply = auth or _NOT_FOUND
        self._reply(h, reply, reply.body or b"")

    def _auth(self, token: str) -> Reply | None:
        if token in self._revoked:
            return _UNAUTHORIZED
        if token not in self.tokens:
            return _NOT_FOUND
        return None

    def _send_message(self, h: _Handler, token: str, raw: bytes) -> None:
        params = _parse_params(raw, h.headers.get("Content-Type", ""))
        chat_id = "" if params.get("chat_id") is None else str(params["chat_id"])
        text = params.get("text")
        text = "" if text is None else str(text)
        parse_mode = params.get("parse_mode")
        now = time.monotonic()
        message_id: int | None = None
        with self._changed:
            self._requests += 1
            reply = self._decide(token, params, chat_id, text, now)
            if reply.status == 200:
                self._windows.setdefault(token, deque()).append(now)
                if reply.body is None:
                    message_id = self._next_message_id
                    self._next_message_id += 1
                    self._texts[(token, chat_id, message_id)] = (text, now)
            self._by_status[reply.status] += 1
            self._messages.append(
                Received(
                    chat_id=chat_id,
                    text=text,
                    parse_mode=None if parse_mode is None else str(parse_mode),
                    at=now,
                    status=reply.status,
                    message_id=message_id,
                    link_preview_options=params.get("link_preview_options"),
                    token=token,
                    message_thread_id=(
                        None
                        if params.get("message_thread_id") is None
                        else str(params["message_thread_id"])
                    ),
                )
            )
            self._changed.notify_all()
        if message_id is not None:
            body = _dumps({"ok": True, "result": _message(message_id, params["chat_id"], text)})
        else:
            body = reply.body or b""
        self._reply(h, reply, body)

    def _edit_message(self, h: _Handler, token: str, raw: bytes) -> None:
        params = _parse_params(raw, h.headers.get("Content-Type", ""))
        chat_id = "" if params.get("chat_id") is None else str(params["chat_id"])
        text = "" if params.get("text") is None else str(params["text"])
        raw_id = params.get("message_id")
        message_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        now = time.monotonic()
        with self._changed:
            self._requests += 1
            reply = self._decide_edit(token, chat_id, message_id, text, now)
            if reply.status == 200 and message_id is not None:
                self._texts[(token, chat_id, message_id)] = (
                    text,
                    self._texts[(token, chat_id, message_id)][1],
                )
                self._windows.setdefault(token, deque()).append(now)
            self._by_status[reply.status] += 1
            parse_mode = params.get("parse_mode")
            self._edits.append(
                Edit(
                    chat_id,
                    message_id,
                    text,
                    None if parse_mode is None else str(parse_mode),
                    now,
                    reply.status,
                    token,
                )
            )
            self._changed.notify_all()
        if reply.status == 200 and reply.body is None and message_id is not None:
            result = _message(message_id, params["chat_id"], text) | {"edit_date": int(time.time())}
            body = _dumps({"ok": True, "result": result})
        else:
            body = reply.body or b""
        self._reply(h, reply, body)

    def _decide_edit(
        self, token: str, chat_id: str, message_id: int | None, text: str, now: float
    ) -> Reply:
        """The answer to one edit, as the real API words it; caller holds the lock."""
        auth = self._auth(token)
        if auth is not None:
            return auth
        queue = self._edit_scripts.get(chat_id)
        if queue:
            reply = queue.popleft()
            if not queue:
                del self._edit_scripts[chat_id]
            return reply
        if not chat_id:
            return error(400, "Bad Request: chat_id is empty")
        sent = self._texts.get((token, chat_id, message_id)) if message_id is not None else None
        if sent is None:
            return edit_not_found()
        if not text.strip():
            return error(400, "Bad Request: message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            return error(400, "Bad Request: message is too long")
        if now - sent[1] > self.edit_window:
            return cant_be_edited()
        if text == sent[0]:
            return error(400, MESSAGE_NOT_MODIFIED)
        return ok()

    def _decide(
        self, token: str, params: Mapping[str, Any], chat_id: str, text: str, now: float
    ) -> Reply:
        """Choose the answer; caller holds the lock."""
        auth = self._auth(token)
        if auth is not None:
            return auth
        if self._override is not None:
            return self._override
        queue = self._scripts.get(chat_id)
        if queue:
            reply = queue.popleft()
            if not queue:
                del self._scripts[chat_id]
            return reply
        if not chat_id:
            return error(400, "Bad Request: chat_id is empty")
        if str(params.get("message_thread_id")) in self.missing_threads:
            return error(400, "Bad Request: message thread not found")
        if not text.strip():
            return error(400, "Bad Request: message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            return error(400, "Bad Request: message is too long")
        if self.rate_limit is not None:
            window = self._windows.setdefault(token, deque())
            while window and now - window[0] >= 1.0:
                window.popleft()
            if len(window) >= self.rate_limit:
                retry_after = max(1, math.ceil(window[0] + 1.0 - now))
                return too_many_requests(retry_after)
        return ok()

    def _reply(self, h: _Handler, reply: Reply, body: bytes) -> None:
        delay = self.latency + reply.delay
        if delay > 0 and self._stopping.wait(delay):
            h.close_connection = True  # shutting down: give up on this reply
            return
        h.answer(reply, body)


def _parse_params(raw: bytes, content_type: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        if "application/x-www-form-urlencoded" in content_type:
            return dict(parse_qsl(raw.decode()))
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _message(message_id: int, chat_id: Any, text: str) -> dict[str, Any]:
    cid: Any = chat_id
    chat: dict[str, Any]
    if isinstance(chat_id, str) and chat_id.startswith("@"):
        fake_id = -1000000000000 - zlib.crc32(chat_id.encode()) % 10**9
        chat = {"id": fake_id, "type": "channel", "username": chat_id[1:]}
    else:
        with contextlib.suppress(TypeError, ValueError):
            cid = int(chat_id)
        kind = "private"
        if isinstance(cid, int) and cid < 0:
            kind = "supergroup" if str(cid).startswith("-100") else "group"
        chat = {"id": cid, "type": kind}
    return {
        "message_id": message_id,
        "from": _BOT,
        "chat": chat,
        "date": int(time.time()),
        "text": text,
    }
