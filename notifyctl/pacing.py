"""Rate limits: per chat and per group inside a run, per bot across every run.

The per-bot limit is shared through the pacing row of the store: a run
reserves a block of consecutive send slots (``1 / rate`` apart) in one short
write transaction, then sends each message no earlier than its slot. Runs
that share the store therefore never exceed the rate together, whichever host
they run on. A 429 moves the shared next slot past ``retry_after``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from . import queries
from .db import translate_errors
from .times import Clock

CHAT_INTERVAL = timedelta(seconds=1)
GROUP_WINDOW = timedelta(minutes=1)
GROUP_LIMIT = 20
Sleep = Callable[[float], None]
#: runs a database step again while the store is busy, until a deadline (Dispatcher._patiently)
Patiently = Callable[[Callable[[], Any], datetime], Any]
PAUSE_PATIENCE = timedelta(seconds=10)


def _at_once(work: Callable[[], Any], _deadline: datetime) -> Any:
    return work()


@dataclass(frozen=True)
class Turn:
    """When a message may leave; ``late`` when that is after the caller's deadline."""

    at: datetime
    late: bool = False


class ChatSpacing:
    """At most one message a second per chat, 20 a minute per group (negative id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, datetime] = {}
        self._group_sends: dict[str, deque[datetime]] = {}

    def reserve(self, chat: str, now: datetime) -> datetime:
        """The earliest time a message to ``chat`` may go; that turn is taken."""
        with self._lock:
            at = max(now, self._next.get(chat, now))
            if chat.startswith("-"):
                sends = self._group_sends.setdefault(chat, deque())
                while sends and sends[0] <= at - GROUP_WINDOW:
                    sends.popleft()
                if len(sends) >= GROUP_LIMIT:
                    at = max(at, sends[0] + GROUP_WINDOW)
                    sends.popleft()
                sends.append(at)
            self._next[chat] = at + CHAT_INTERVAL
            return at


class SharedSlots:
    """Send slots of one bot, reserved in blocks from the store's pacing row."""

    def __init__(
        self, engine: Engine, key: str, rate: float, clock: Clock, patiently: Patiently = _at_once
    ) -> None:
        self._engine = engine
        self._patiently = patiently
        self._key = key
        self._interval = timedelta(seconds=1 / rate)
        self._block = max(1, int(rate))
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: deque[datetime] = deque()

    def take(self, deadline: datetime, wanted: int = 1) -> datetime:
        """The time of this run's next free slot (reserving a block when out).

        A busy store is waited for until ``deadline``; then ``DatabaseError``.
        """
        with self._lock:
            if not self._slots:
                count = max(1, min(self._block, wanted))
                first = self._patiently(lambda: self._reserve(count), deadline)
                self._slots.extend(first + self._interval * i for i in range(count))
            return self._slots.popleft()

    def _reserve(self, count: int) -> datetime:
        with translate_errors(str(self._engine.url)), self._engine.begin() as conn:
            queries.ensure_pacing_row(conn, self._key, self._clock())
            return queries.reserve_slots(conn, self._key, count, self._interval, self._clock())

    def pause(self, seconds: float) -> None:
        """The provider said 429: no run sends for this bot before now + seconds."""
        until = self._clock() + timedelta(seconds=seconds)

        def write() -> None:
            with translate_errors(str(self._engine.url)), self._engine.begin() as conn:
                queries.ensure_pacing_row(conn, self._key, self._clock())
                queries.pause_sender(conn, self._key, until, self._clock())

        with self._lock:
            self._slots.clear()
            self._patiently(write, self._clock() + PAUSE_PATIENCE)


class Pacer:
    """Decides when each message may go, and waits for it."""

    def __init__(
        self,
        engine: Engine,
        rate: float,
        clock: Clock,
        sleep: Sleep,
        patiently: Patiently = _at_once,
    ) -> None:
        self._engine = engine
        self._patiently = patiently
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._chats = ChatSpacing()
        self._shared: dict[str, SharedSlots] = {}
        self._lock = threading.Lock()
        self._expected: dict[str, int] = {}

    def _slots(self, key: str) -> SharedSlots:
        with self._lock:
            if key not in self._shared:
                self._shared[key] = SharedSlots(
                    self._engine, key, self._rate, self._clock, self._patiently
                )
            return self._shared[key]

    def expect(self, key: str | None, count: int) -> None:
        """``count`` messages under ``key`` are about to go: reserve slots to match."""
        if key is not None:
            with self._lock:
                self._expected[key] = self._expected.get(key, 0) + count

    def wait_turn(
        self, key: str | None, chat: str, deadline: datetime, lead: timedelta = timedelta(0)
    ) -> Turn:
        """Block until ``lead`` before a message to ``chat`` under sender ``key`` may go.

        The caller prepares the message for ``Turn.at`` in that lead time, then
        ``sleep_until(turn.at)``: the request leaves on its slot, its text true
        then. When the turn would come after ``deadline`` (e.g. a 429 pause
        outlasting the claim's lease) it is returned ``late`` at once, without
        waiting: the caller gives the reminder back, due then, instead of
        sending it late.
        """
        if key is None:
            return Turn(self._clock())
        chat_turn = self._chats.reserve(chat, self._clock())
        if chat_turn > deadline:
            return Turn(chat_turn, late=True)
        self.sleep_until(chat_turn - lead)
        with self._lock:
            wanted = max(1, self._expected.get(key, 1))
            self._expected[key] = wanted - 1
        slot = max(self._slots(key).take(deadline, wanted), chat_turn)
        if slot > deadline:
            return Turn(slot, late=True)
        self.sleep_until(slot - lead)
        return Turn(slot)

    def pause(self, key: str | None, seconds: float) -> None:
        if key is not None:
            self._slots(key).pause(seconds)

    def sleep_until(self, when: datetime) -> None:
        delay = (when - self._clock()).total_seconds()
        if delay > 0:
            self._sleep(delay)
