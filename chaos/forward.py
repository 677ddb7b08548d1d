"""A TCP forwarder run inside a network namespace: ns loopback → the host's fake Telegram.

    ip netns exec NS python -m chaos.forward --target 10.0.0.1:8080

notifyctl speaks plain http to Telegram only on loopback (the token is in the
URL), so each namespace "host" gets a local endpoint, like a local Bot API
server, whose upstream crosses the veth that the campaign cuts. Prints
``PORT=<n>`` and forwards until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys

from chaos.infra import Relay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    args = parser.parse_args(argv)
    lhost, _, lport = args.listen.rpartition(":")
    thost, _, tport = args.target.rpartition(":")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    relay = Relay((lhost, int(lport)), (thost, int(tport)))
    print(f"PORT={relay.port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
