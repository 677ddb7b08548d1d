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
from typing import Protocol, TypeVar

from . import queries
from .db import Store

CHAT_INTERVAL = timedelta(seconds=1)
GROUP_WINDOW = timedelta(minutes=1)
GROUP_LIMIT = 20
Sleep = Callable[[float], None]
T = TypeVar("T")


class Patiently(Protocol):
    """Runs a database step again while the store is busy, until a deadline."""

    def __call__(self, work: Callable[[], T], deadline: datetime, /) -> T: ...


PAUSE_PATIENCE = timedelta(seconds=10)
#: how late a reserved send slot may still be used at high rates (at least one interval)
SLOT_GRACE = timedelta(milliseconds=100)
#: below this rate (msg/s) a slot may be used at most one interval late
GRACE_FROM_RATE = 100.0


def _at_once(work: Callable[[], T], _deadline: datetime, /) -> T:
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
        self, store: Store, key: str, rate: float, patiently: Patiently = _at_once
    ) -> None:
        self._store = store
        self._patiently = patiently
        self._key = key
        self._interval = timedelta(seconds=1 / rate)
        # provider-like rates keep one interval (one extra send at most, as before)
        fast = rate >= GRACE_FROM_RATE
        self._grace = max(self._interval, SLOT_GRACE) if fast else self._interval
        self._block = max(1, int(rate))
        self._lock = threading.Lock()
        self._slots: deque[datetime] = deque()

    def take(self, deadline: datetime, wanted: int = 1) -> datetime:
        """The time of this run's next free slot (reserving up to ``wanted`` when out).

        A busy store is waited for until ``deadline``; then ``DatabaseError``.
        """
        with self._lock:
            self._drop_missed()
            if not self._slots:
                count = max(1, min(self._block, wanted))
                first = self._patiently(lambda: self._reserve(count), deadline)
                self._slots.extend(first + self._interval * i for i in range(count))
            return self._slots.popleft()

    def _drop_missed(self) -> None:
        """Forget slots more than ``SLOT_GRACE`` past: a slot is a moment, not a credit.

        A run stalled (CPU, swap, a slow render) would otherwise send its missed
        slots back to back and, beside other runs on theirs, go over the
        provider's rate. Within the grace a slot is still used: any window of W
        seconds then holds at most ``rate * (W + grace) + 1`` sends of all runs
        together. Below ``GRACE_FROM_RATE`` the grace is one interval (a
        provider's limit leaves no room: 25 msg/s against Telegram's 30); above
        it, 100 ms, so that a run far below a high limit no longer reserves
        again, one transaction per message, because each next slot is a few
        hundred microseconds old.
        """
        stale = self._store.clock() - self._grace
        while self._slots and self._slots[0] < stale:
            self._slots.popleft()

    def _reserve(self, count: int) -> datetime:
        with self._store.transaction() as conn:
            now = self._store.clock()
            if conn.dialect.name == "postgresql":
                return queries.reserve_slots_at_once(conn, self._key, count, self._interval, now)
            queries.ensure_pacing_row(conn, self._key, now)
            return queries.reserve_slots(conn, self._key, count, self._interval, now)

    def pause(self, seconds: float) -> None:
        """The provider said 429: no run sends for this bot before now + seconds."""
        until = self._store.clock() + timedelta(seconds=seconds)

        def write() -> None:
            with self._store.transaction() as conn:
                now = self._store.clock()
                queries.ensure_pacing_row(conn, self._key, now)
                queries.pause_sender(conn, self._key, until, now)

        with self._lock:
            self._slots.clear()
            self._patiently(write, self._store.clock() + PAUSE_PATIENCE)


class Allowance:
    """The send slots one batch will use under one sender.

    Handed to each send of the batch; the shared row is asked for as many
    slots as the batch still needs (up to a second's worth), so a batch
    reserves in blocks and never more than it sends.
    """

    def __init__(self, key: str | None, slots: SharedSlots | None, count: int) -> None:
        self.key = key
        self._slots = slots
        self._remaining = count
        self._lock = threading.Lock()

    def take(self, deadline: datetime) -> datetime | None:
        """The next slot of this batch; None when its sender is not rate-limited."""
        if self._slots is None:
            return None
        with self._lock:
            wanted = max(1, self._remaining)
            self._remaining -= 1
        return self._slots.take(deadline, wanted)


class Pacer:
    """Decides when each message may go, and waits for it."""

    def __init__(
        self, store: Store, rate: float, sleep: Sleep, patiently: Patiently = _at_once
    ) -> None:
        self._store = store
        self._clock = store.clock
        self._patiently = patiently
        self._rate = rate
        self._sleep = sleep
        self._chats = ChatSpacing()
        self._shared: dict[str, SharedSlots] = {}
        self._lock = threading.Lock()

    def _slots(self, key: str) -> SharedSlots:
        with self._lock:
            if key not in self._shared:
                self._shared[key] = SharedSlots(self._store, key, self._rate, self._patiently)
            return self._shared[key]

    def allowance(self, key: str | None, count: int) -> Allowance:
        """The slots ``count`` messages under sender ``key`` (None: unlimited) will take."""
        return Allowance(key, None if key is None else self._slots(key), count)

    def wait_turn(
        self, allowance: Allowance, chat: str, deadline: datetime, lead: timedelta = timedelta(0)
    ) -> Turn:
        """Block until ``lead`` before a message to ``chat`` of this allowance may go.

        The caller prepares the message for ``Turn.at`` in that lead time, then
        ``sleep_until(turn.at)``: the request leaves on its slot, its text true
        then. When the turn would come after ``deadline`` (e.g. a 429 pause
        outlasting the claim's lease) it is returned ``late`` at once, without
        waiting: the caller gives the reminder back, due then, instead of
        sending it late.
        """
        if allowance.key is None:
            return Turn(self._clock())
        chat_turn = self._chats.reserve(chat, self._clock())
        if chat_turn > deadline:
            return Turn(chat_turn, late=True)
        self.sleep_until(chat_turn - lead)
        slot = allowance.take(deadline)
        slot = chat_turn if slot is None else max(slot, chat_turn)
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
