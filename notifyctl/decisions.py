"""Pure decisions of a dispatch run: what a provider's answer does to a reminder.

Functions of values and ``now`` (and an injected ``random.Random`` for
jitter); no I/O, no clock. ``Outcome`` is built only by its named
constructors and applied by the run's one fenced writer.
"""

from __future__ import annotations

import random
from collections.abc import Container
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .channels.base import Delivery, SendResult
from .models import Reason, Status
from .routes import Address, alternatives, first_available
from .runs import BACKOFF_CAP, Action, DispatchOptions

JITTER = 0.2


def backoff_seconds(attempt: int, base: float, cap: float = BACKOFF_CAP) -> float:
    """Exact schedule: base, 2*base, 4*base … capped (attempt counts from 1)."""
    return float(min(cap, base * 2 ** min(max(0, attempt - 1), 62)))


def jittered(seconds: float, rng: random.Random) -> float:
    """±20 % so that a burst of failures does not retry in lockstep."""
    return seconds * rng.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class Outcome:
    """What one attempt does to its reminder; built only by the constructors below.

    Every path a claim can take ends in exactly one of these, applied by one
    fenced writer (``Dispatcher._record``): River's "set state if running".
    """

    status: Status
    action: Action  # what became of the claim (history, counters, metrics, logs)
    due_at: datetime | None = None
    error: str | None = None
    reason: Reason | None = None
    give_back_attempt: bool = False
    moved_to: str | None = None
    suppress: bool = False  # the recipient is gone: suppress it (SPEC §11)
    next_alternative: tuple[int, Address] | None = None  # a fallback's (position, address)

    @classmethod
    def sent(cls) -> Outcome:
        return cls(Status.SENT, Action.SENT)

    @classmethod
    def retry(cls, at: datetime, error: str | None) -> Outcome:
        return cls(Status.PENDING, Action.RETRIED, due_at=at, error=error)

    @classmethod
    def rate_limited(cls, at: datetime, error: str | None) -> Outcome:
        return cls(
            Status.PENDING, Action.RATE_LIMITED, due_at=at, error=error, give_back_attempt=True
        )

    @classmethod
    def chat_moved(cls, new_chat: str, now: datetime, error: str | None) -> Outcome:
        return cls(
            Status.PENDING,
            Action.MOVED,
            due_at=now,
            error=error,
            give_back_attempt=True,
            moved_to=new_chat,
        )

    @classmethod
    def released(cls, due_at: datetime | None = None, action: Action = Action.RELEASED) -> Outcome:
        """Given back untouched (not sent, or sent with credentials the provider refused)."""
        return cls(Status.PENDING, action, due_at=due_at, give_back_attempt=True)

    @classmethod
    def failed(cls, error: str | None, reason: Reason = Reason.PERMANENT) -> Outcome:
        return cls(Status.FAILED, Action.FAILED, error=error, reason=reason)

    @classmethod
    def expired(cls, error: str, reason: Reason = Reason.TOO_LATE) -> Outcome:
        return cls(Status.EXPIRED, Action.EXPIRED, error=error, reason=reason)

    @classmethod
    def fallback(cls, now: datetime, left: Outcome, to: tuple[int, Address]) -> Outcome:
        """Leave this alternative of the chain (as ``left`` says why) for ``to``, at once."""
        return cls(
            Status.PENDING,
            Action.FALLBACK,
            due_at=now,
            error=left.error,
            reason=left.reason,
            suppress=left.suppress,
            next_alternative=to,
        )


def along_chain(
    outcome: Outcome, route: str, alternative: int, suppressed: Container[Address], now: datetime
) -> Outcome:
    """A reminder that failed or expired on one alternative of its chain tries the next
    one that is not suppressed, at once (SPEC §11); otherwise ``outcome`` stands."""
    if outcome.status not in (Status.FAILED, Status.EXPIRED) or outcome.reason in NOT_ALONG:
        return outcome
    found = first_available(alternatives(route), suppressed, alternative + 1)
    return outcome if found is None else Outcome.fallback(now, outcome, found)


#: outcomes that end a reminder whatever alternative it is on
NOT_ALONG = (Reason.TEMPLATE, Reason.UNKNOWN_CHANNEL, Reason.SUPERSEDED)


def decide_retry(
    attempts: int,
    now: datetime,
    not_after: datetime,
    options: DispatchOptions,
    rng: random.Random,
    error: str | None,
) -> Outcome:
    """After a passing failure: retry later, or fail when out of attempts, or expire."""
    if attempts >= options.max_attempts:
        return Outcome.failed(f"gave up after {attempts} attempts: {error}", Reason.GAVE_UP)
    at = now + timedelta(seconds=jittered(backoff_seconds(attempts, options.backoff_base), rng))
    if at >= not_after:
        return Outcome.expired(f"retry would come too late: {error}")
    return Outcome.retry(at, error)


def decide(
    result: SendResult,
    attempts: int,
    now: datetime,
    not_after: datetime,
    options: DispatchOptions,
    rng: random.Random,
) -> Outcome:
    """SendResult → Outcome (SPEC §5 Outcomes), for every delivery class."""
    if result.delivery is Delivery.SENT:
        return Outcome.sent()
    if result.delivery is Delivery.RETRY_AFTER:
        at = now + timedelta(seconds=max(1.0, result.retry_after or 1.0))
        if at >= not_after:
            return Outcome.expired(f"rate limited past its useful time: {result.error}")
        return Outcome.rate_limited(at, result.error)
    if result.delivery is Delivery.MOVED and result.moved_to:
        return Outcome.chat_moved(result.moved_to, now, result.error)
    if result.delivery is Delivery.RETRY:
        return decide_retry(attempts, now, not_after, options, rng, result.error)
    if result.delivery is Delivery.BAD_CREDENTIALS:
        return Outcome.released(action=Action.BAD_CREDENTIALS)
    if result.delivery is Delivery.GONE:
        return replace(Outcome.failed(result.error, Reason.RECIPIENT_GONE), suppress=True)
    return Outcome.failed(result.error)
