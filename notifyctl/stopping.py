"""Stopping a dispatch on a signal: the first asks, a second insists.

The first SIGINT (Ctrl-C) or SIGTERM (``kill``, ``timeout``, a stopping
service) asks the run to stop: it claims nothing more, gives back at once
what it has not sent (no lease to wait out: those reminders stay on time for
the next run), records the answers of the sends already out, and exits 130.
A second signal stops it at once: its sends still out are cut (the run's
``KeyboardInterrupt`` handler) and rescued after their lease, as after a
crash. A ``--workers`` command passes the request on to its helpers, which
hear SIGTERM from it only (a terminal's Ctrl-C reaches the whole process
group, and must count once).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

#: a wait looks at the request this often (a plain flag: see ``StopRequest``)
WAKE_EVERY = 0.1


class StopRequest:
    """Made by the first signal (or ``request()``); a dispatch run asks ``requested``
    between steps, and its pacing waits (``wait``) end when it is made.

    A signal handler runs in the main thread between two bytecodes, possibly while
    that thread holds a lock (inside ``threading.Event.wait``, say): so the request
    is a plain flag, and the handler only sets it, signals the helpers and calls
    reentrant listeners. Waits look at the flag every ``WAKE_EVERY`` seconds.
    """

    def __init__(self, *, insist: bool = True) -> None:
        self._requested = False
        self._insist = insist  # a second signal raises KeyboardInterrupt (helpers: ignored)
        self._helpers: list[int] = []
        self._listeners: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self._requested

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or about ``WAKE_EVERY`` past the request when it comes first."""
        end = time.monotonic() + seconds
        while not self._requested:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, WAKE_EVERY))

    def on_request(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when the request is made; it may run in a signal handler,
        so it must be reentrant (``queue.SimpleQueue.put`` is)."""
        self._listeners.append(listener)

    def add_helpers(self, pids: list[int]) -> None:
        """Processes to pass the request on to (at once, when it came already)."""
        self._helpers.extend(pids)
        if self._requested:
            self._tell_helpers()

    def request(self) -> None:
        self._requested = True
        self._tell_helpers()
        for listener in self._listeners:
            listener()

    def __call__(self, signum: int, frame: object) -> None:
        if not self._requested:
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
