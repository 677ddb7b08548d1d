"""A loopback TCP server that answers one byte at a time, forever (stdlib only).

Models a receiver that keeps every single read alive (each byte arrives well
within any per-read timeout) but never finishes its answer: only an overall
deadline ends such a send. It first reads what the client sends (an HTTP
request; nothing for SMTP, where the server speaks first), then trickles
``prefix`` at once and ``payload`` byte by byte with ``interval`` seconds
between bytes, then keeps trickling spaces. ``stop()`` cuts every connection and joins every thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

__all__ = ["Trickler"]


class Trickler:
    def __init__(
        self,
        payload: bytes,
        *,
        interval: float = 0.05,
        read_request: bool = True,
        prefix: bytes = b"",
    ) -> None:
        self.payload = payload
        self.prefix = prefix
        self.interval = interval
        self.read_request = read_request
        self.connections = 0
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            if self.read_request:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                with self._lock:
                    self.received.append(data)
            conn.sendall(self.prefix)
            position = 0
            while not self._stop.is_set():
                byte = self.payload[position : position + 1] or b" "
                conn.sendall(byte)
                position += 1
                self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self._accepting.join()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join()

    def __enter__(self) -> Trickler:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
