"""Stopping a dispatch on a signal: the first asks, a second insists.

The first SIGINT (Ctrl-C) or SIGTERM (``kill``, ``timeout``, a stopping
service) asks the run to stop: it claims nothing more, gives back at once
what it has not sent (no lease to wait out: those reminders stay on time for
the next run), records the answers of the sends already out, and exits 130.
A second signal stops it at once; what it still had out is rescued after its
lease, as after a crash. A ``--workers`` command passes the request on to its
helpers, which hear SIGTERM from it only (a terminal's Ctrl-C reaches the
whole process group, and must count once).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator


class StopRequest:
    """Made by the first signal (or ``request()``); a dispatch run asks ``requested``
    between steps, and its pacing waits (``wait``) end when it is made."""

    def __init__(self, *, insist: bool = True) -> None:
        self._event = threading.Event()
        self._insist = insist  # a second signal raises KeyboardInterrupt (helpers: ignored)
        self._helpers: list[int] = []
        self._listeners: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the request is made meanwhile."""
        self._event.wait(seconds)

    def on_request(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when the request is made; it may run in a signal handler,
        so it must be reentrant (``queue.SimpleQueue.put`` is)."""
        self._listeners.append(listener)

    def add_helpers(self, pids: list[int]) -> None:
        """Processes to pass the request on to (at once, when it came already)."""
        self._helpers.extend(pids)
        if self.requested:
            self._tell_helpers()

    def request(self) -> None:
        self._event.set()
        self._tell_helpers()
        for listener in self._listeners:
            listener()

    def __call__(self, signum: int, frame: object) -> None:
        if not self.requested:
            self.request()
        elif self._insist:
            raise KeyboardInterrupt

    def _tell_helpers(self) -> None:
        for pid in self._helpers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM), *, insist: bool = True
) -> Iterator[StopRequest]:
    """Inside: ``signals`` ask the run to stop instead of killing it. Only the main
    thread can set handlers: elsewhere the request is one nobody can make."""
    stop = StopRequest(insist=insist)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.signal(signum, stop) for signum in signals}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
