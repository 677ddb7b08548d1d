"""A fake Telegram Bot API for the fault campaign that records every delivery durably.

    python -m chaos.fake_telegram --record deliveries.jsonl --latency 0.3:1.2 --host 0.0.0.0

Prints ``PORT=<n>`` as its first stdout line, then serves until SIGTERM/SIGINT.

Every ``sendMessage`` is appended to the record file as one JSON line and
fsync'ed *before* the (delayed) answer goes out, so a delivery survives the
kill of the dispatcher that made it, and the campaign sees exactly what a
real chat would have shown. The configurable latency (a uniform range) keeps
sends in flight when faults hit.

A dispatcher is told ``TELEGRAM_API_URL=http://HOST:PORT/r/<label>``; the
``<label>`` path prefix names the process that sent each message (the
``label`` field), which is how the campaign knows whether a duplicate came
from a process it killed or cut off.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a killed or cut-off dispatcher hung up: expected here
        super().handle_error(request, client_address)


class Recorder:
    """Appends deliveries to a JSON Lines file, each flushed and fsync'ed."""

    def __init__(self, path: Path, latency: tuple[float, float], seed: int) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._next_id = 1
        self._random = random.Random(seed)
        self.latency = latency

    def record(self, entry: dict[str, Any]) -> tuple[int, float]:
        """Write one delivery; return (message id, the delay before answering)."""
        with self._lock:
            message_id = self._next_id
            self._next_id += 1
            entry["message_id"] = message_id
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            delay = self._random.uniform(*self.latency)
        return message_id, delay

    def close(self) -> None:
        with self._lock:
            self._file.close()


def make_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # see NOTES.md: keep-alive replies stall otherwise

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload, separators=(",", ":")).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

        def do_GET(self) -> None:
            self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""
            arrived = time.time()
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            # /r/<label>/bot<token>/sendMessage
            if len(parts) != 4 or parts[0] != "r" or parts[3] != "sendMessage":
                self._answer(404, {"ok": False, "error_code": 404, "description": "Not Found"})
                return
            try:
                params = json.loads(raw) if len(raw) == length else {}
            except ValueError:
                params = {}
            chat_id = str(params.get("chat_id", ""))
            text = str(params.get("text", ""))
            if not (chat_id and text):  # a request cut short (its sender killed mid-body)
                self._answer(400, {"ok": False, "error_code": 400, "description": "Bad Request"})
                return  # is no message, as Telegram would never show one
            message_id, delay = recorder.record(
                {
                    "t": arrived,
                    "label": parts[1],
                    "chat_id": chat_id,
                    "text": text,
                    "peer": self.client_address[0],
                }
            )
            time.sleep(delay)
            result = {
                "message_id": message_id,
                "chat": {"id": chat_id, "type": "private"},
                "date": int(arrived),
                "text": text,
            }
            self._answer(200, {"ok": True, "result": result})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fake Telegram Bot API that records deliveries")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", type=Path, required=True, help="JSON Lines file to append to")
    parser.add_argument("--latency", default="0:0", help="MIN:MAX seconds before answering")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    low, _, high = args.latency.partition(":")
    latency = (float(low), float(high or low))

    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    recorder = Recorder(args.record, latency, args.seed)
    server = _Server((args.host, args.port), make_handler(recorder))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        print(f"PORT={server.server_port}", flush=True)
        signal.sigwait(stop_signals)
    finally:
        server.shutdown()
        server.server_close()
        recorder.close()
    return 0


def read_deliveries(path: Path) -> list[dict[str, Any]]:
    """Every recorded delivery (a torn last line, impossible after fsync, is skipped)."""
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


if __name__ == "__main__":
    sys.exit(main())
