"""A scripted HTTP receiver on 127.0.0.1 for channel tests (stdlib only).

Usage::

    with HttpReceiver() as rx:
        rx.script(Answer(503, {"Retry-After": "7"}), Answer(action="drop"))
        ...  # POST to rx.url("/hook")
        assert [r.path for r in rx.requests] == ["/hook", "/hook"]

Every request is recorded; the scripted answers are used in order, then 200.
``answer_path(path, answer)`` gives one path a standing answer (``Answer(410)``
for a receiver that is gone) ahead of the script, until ``clear_path``.
``hang`` holds the request until the receiver stops (a read timeout for the
client), ``drop`` closes the connection without any answer. Stopping shuts
down every open connection, so a keep-alive connection the client left open
never delays the teardown.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Literal

from tests.fakes.server import LoopbackHTTPServer

__all__ = ["Answer", "HttpReceiver", "Received", "closed_port"]


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok":true}'
    action: Literal["reply", "hang", "drop"] = "reply"


class HttpReceiver:
    """Records every request and answers from a script, then 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._answers: deque[Answer] = deque()
        self._by_path: dict[str, Answer] = {}  # standing answers, by path without the query
        self._lock = threading.Lock()
        self.release = threading.Event()
        self.server = _Server(self)
        self.port: int = self.server.server_address[1]
        self.server.start()

    def url(self, path: str = "/hook", userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self._answers.extend(answers)

    def answer_path(self, path: str, answer: Answer) -> None:
        """Answer every request to ``path`` (query ignored) with ``answer``, ahead of the script."""
        with self._lock:
            self._by_path[path] = answer

    def clear_path(self, path: str) -> None:
        with self._lock:
            self._by_path.pop(path, None)

    def record(self, request: Received) -> Answer:
        with self._lock:
            self.requests.append(request)
            standing = self._by_path.get(request.path.partition("?")[0])
            if standing is not None:
                return standing
            return self._answers.popleft() if self._answers else Answer()

    def stop(self) -> None:
        self.release.set()
        self.server.close()

    def __enter__(self) -> HttpReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(LoopbackHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread

    def __init__(self, receiver: HttpReceiver) -> None:
        self.receiver = receiver
        super().__init__(_Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 10
    server: _Server

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.receiver.record(Received(self.command, self.path, headers, body))
        if answer.action == "hang":
            self.server.receiver.release.wait(10)
            self.close_connection = True
            return
        if answer.action == "drop":
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    do_POST = do_PUT = do_GET = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
