"""Run the fake Telegram Bot API server (tests/fakes/telegram.py) as a process.

    python benchmarks/fake_telegram_server.py --port 0 --latency 0.1 --rate 30 --token T

Prints ``PORT=<n>`` as its first stdout line, then serves until SIGTERM or
SIGINT; on exit it prints the JSON counters (the same as ``GET /stats``) as
one more stdout line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.telegram import FakeTelegram


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to replies")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="429 above this many messages/s (0 = no limit)"
    )
    parser.add_argument("--token", default="123:ABC")
    parser.add_argument("--revoked", action="append", default=[], help="token answered 401")
    args = parser.parse_args(argv)

    # Block the signals before any thread starts (threads inherit the mask),
    # then wait for them synchronously in the main thread.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    tg = FakeTelegram(
        token=args.token,
        rate_limit=args.rate or None,
        latency=args.latency,
        revoked=args.revoked,
        host=args.host,
        port=args.port,
    )
    try:
        print(f"PORT={tg.port}", flush=True)
        signal.sigwait(stop_signals)
    finally:
        tg.stop()
    print(json.dumps(tg.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
