"""Model-based test of the delivery guarantees (issue 11, SPEC §4 and §5 "Races and faults").

A hypothesis ``RuleBasedStateMachine`` drives random interleavings of create,
reschedule, replayed create, cancel, dispatch runs (with scripted provider
outcomes and changes that commit *while* a message is in flight), crashed runs
(claims never recorded, later rescued) and clock steps against the real store,
on SQLite and on PostgreSQL, and checks the guarantees after every step.

How it is built
- The provider is faked at the channel boundary: channel ``model``
  (tests/model_channel.py) asks ``ReminderModel._provider`` what happens to each
  message. The answer comes from the run's script: ok, 429, 500, 403 (a plain
  permanent failure), gone (``SendResult.gone``: the recipient is suppressed,
  SPEC §11), a chat migration, or a timeout after the request left (the message
  arrived; the engine is told "retry, uncertain"). A script step may also run a reschedule,
  a replayed create or a cancel synchronously inside ``send``: a change that
  commits while the message is in flight; or make a stop request (SIGTERM) then:
  the run records that answer, sends nothing more and ends with exit 130.
- Dispatch runs are real ``Dispatcher`` runs with the frozen clock: pacing waits
  advance it through ``sleep``, and ``monotonic`` is derived from it, so every
  run is deterministic. ``batch_size=1, concurrency=1`` keeps claim, send and
  record strictly sequential (a change inside ``send`` never races a record),
  which makes every failure replayable and shrinkable.
- A crashed run claims with ``queries.claim_due`` and never records; the
  messages may or may not have left (``kill -9`` after the request).
- The model (plain Python) is the oracle. Keys are (booking, kind, target): a
  target is a person, or a chain of two persons (``--to "model:a|model:b"``, SPEC
  §11: one reminder for the chain, whichever alternative delivers it); a person
  keeps its identity across chat migrations (old address → new address).
  An *arming* is one scheduled time of one key as ``create`` armed it; a new
  time (or removing and re-adding) is a new arming. An arming is *required*
  unless the previous one was already delivered and the new time is not in the
  future (SPEC: "a sent reminder whose new time is in the future is armed
  again").

Checked at every delivery: the key is still wanted and its booking active (no
send after a cancel or removal that committed first), the clock is within
[scheduled_at, not_after) of its current arming (never early with an old
retry time, never useless), no second delivery of one arming unless an earlier
one was uncertain (and then the history holds an uncertain attempt), and the
text is true when the request leaves (rendered from the booking as stored, at
that moment). After every step: ``create``'s report matches the rows, rows are
consistent (no lease outside ``sending``, no row left ``sending`` by a run,
pending rows follow their arming's times and are never due before their
scheduled time, one live row per key, nothing live for a cancelled booking),
and no required arming is lost (it is still live, was delivered, or ended
failed/expired with a reason, or cancelled "suppressed" when its alternative and
every later one were suppressed).

Recipient health (SPEC §11): nothing is sent to an address after a gone answer
suppressed it (unsuppress is not modelled), no pending row waits on a suppressed
address (a suppression moves its reminders on or ends them, and nothing moves onto
one), ``create`` leaves out a chain whose every alternative is suppressed and says
so, a row's route names the alternative in use (a chat migration rewrites both), a
run moves a reminder along its chain only forward and each move leaves a
"fallback" in its history, and a claim's ``attempts`` never exceeds the claims
seen on the alternative in use (a fallback starts again at 0). A chain's arming
is one arming: delivered at most once across its alternatives unless an earlier
attempt was uncertain. At the end the clock is walked through every
due time with a healthy provider until every row is final, and the same
checks run once more.

Change notices (SPEC §10) are legitimate sends after a move or a cancel; a
*reminder* after a cancel is still a violation. Checked at every notice: its
recipient received something of that booking before, a ``cancelled`` notice
only for a cancelled booking and a ``rescheduled`` one only for an active
booking that is not back at the times the notice says it "was" (moving back
withdraws it), and at most one delivery per notice and change of the booking
unless an earlier one was uncertain.

``NOTIFYCTL_MODEL_EXAMPLES`` (examples per database; default 150 on SQLite, 60 on
PostgreSQL) and
``NOTIFYCTL_MODEL_STEPS`` (steps per example, default 30) make it run longer.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, func, inspect, select, text

from notifyctl import queries
from notifyctl.channels import CHANNELS, channel_module
from notifyctl.channels.base import Message, SendResult
from notifyctl.config import Settings
from notifyctl.db import make_engine
from notifyctl.dispatch import Dispatcher, DispatchOptions
from notifyctl.errors import InvalidInput
from notifyctl.kinds import is_notice
from notifyctl.message import render_for
from notifyctl.models import Booking, DeliveryAttempt, Notification
from notifyctl.runs import Action
from notifyctl.service import Store, cancel, create_booking
from notifyctl.stopping import StopRequest
from tests import model_channel
from tests.support import FrozenClock, stat_hours_drift

# CI: 150 examples on SQLite and 60 on PostgreSQL, 60-90 s on two shared cores
EXAMPLES = os.environ.get("NOTIFYCTL_MODEL_EXAMPLES")
STEPS = int(os.environ.get("NOTIFYCTL_MODEL_STEPS", "30"))
MODEL_SETTINGS = settings(
    max_examples=int(EXAMPLES or 150),
    stateful_step_count=STEPS,
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)

N = Notification
BOOKING_IDS = ("b1", "b2", "b3")
PERSONS = ("a", "b", "c")  # a person's first address is its name
KIND_NAMES = ("day_before", "hour_before", "at_start", "before_end")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
LIVE = ("pending", "sending")
DAYS = (datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 10, 24, tzinfo=UTC))
LEASE = timedelta(seconds=300)


def kind_times(kind: str, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """(scheduled_at, not_after) per SPEC §4, written out independently of notifyctl.kinds."""
    return {
        "day_before": (start - timedelta(hours=24), start),
        "hour_before": (start - timedelta(hours=1), start),
        "at_start": (start, end),
        "before_end": (end - timedelta(minutes=5), end),
    }[kind]


# --- the model ------------------------------------------------------------------------

Key = tuple[str, str, str]  # (booking id, kind, target: a person, or a chain "a|b" of persons)


@dataclass(frozen=True)
class Delivered:
    at: datetime
    notification_id: int
    uncertain: bool
    via: str  # "send" (a dispatch run) or "crash" (a run killed after the request left)


@dataclass
class Arming:
    key: Key
    gen: int
    scheduled: datetime
    not_after: datetime
    armed_at: datetime
    required: bool
    active: bool = True
    deliveries: list[Delivered] = field(default_factory=list)

    @property
    def satisfied(self) -> bool:
        return bool(self.deliveries) or not self.required

    def __str__(self) -> str:
        booking, kind, person = self.key
        return (
            f"{booking}/{kind}/{person} arming #{self.gen} "
            f"(scheduled {self.scheduled:%m-%d %H:%M:%S}, not after {self.not_after:%m-%d %H:%M:%S}"
            f", armed {self.armed_at:%m-%d %H:%M:%S}, "
            f"{'required' if self.required else 'optional'}, delivered {len(self.deliveries)}x)"
        )


@dataclass(frozen=True)
class CreateArgs:
    starts_at: datetime
    ends_at: datetime
    to: tuple[str, ...]
    remind: tuple[str, ...]
    timezone: str

    def moved(self, start: datetime) -> CreateArgs:
        length = self.ends_at - self.starts_at
        return CreateArgs(start, start + length, self.to, self.remind, self.timezone)


@dataclass
class BookingModel:
    args: CreateArgs
    cancelled: bool = False


class Interference(NamedTuple):
    """A change that commits while a message is in flight."""

    action: str  # reschedule | replay | cancel
    booking: str  # a booking id, or "same": the booking of the message in flight
    starts_in: int  # minutes from now (reschedule only)


class Step(NamedTuple):
    """What the provider does with one message (in the order messages are sent)."""

    outcome: str  # ok | 429/<s> | 500 | 403 | gone | migrate | timeout
    interference: Interference | None = None
    stop: bool = False  # a stop request (SIGTERM) arrives while this message is in flight


class Violation(AssertionError):
    pass


# --- strategies -------------------------------------------------------------------------

bookings = st.sampled_from(BOOKING_IDS)
starts_in = st.one_of(
    st.sampled_from([30, 59, 60, 61, 90, 1439, 1440, 1441, 1500, 2880]),
    st.integers(-90, 3 * 24 * 60),
)
durations = st.sampled_from([30, 60, 90, 180])
outcomes = st.sampled_from(
    ["ok", "ok", "429/1", "429/90", "429/400", "500", "403", "gone", "migrate", "timeout"]
)
interferences = st.one_of(
    st.none(),
    st.builds(
        Interference,
        st.sampled_from(["reschedule", "replay", "cancel"]),
        st.sampled_from(["same", *BOOKING_IDS]),
        starts_in,
    ),
)
stops = st.sampled_from([False, False, False, True])
scripts = st.lists(st.builds(Step, outcomes, interferences, stops), max_size=6)
clock_steps = st.one_of(
    st.sampled_from([1, 29, 59, 60, 61, 299, 301, 1800, 3599, 3600, 3601, 86_399, 86_400]),
    st.integers(1, 3 * 86_400),
)


# --- the machine ------------------------------------------------------------------------


class ReminderModel(RuleBasedStateMachine):
    def __init__(self, fresh_engine: Callable[[], Engine]) -> None:
        super().__init__()
        self.clock = FrozenClock(DAYS[0])
        self.store = Store(fresh_engine(), self.clock)
        self.settings = Settings(database_url=self.store.url)
        self.bookings: dict[str, BookingModel] = {}
        self.armings: dict[Key, Arming] = {}
        self.addresses: dict[str, list[str]] = {p: [p] for p in PERSONS}
        self.owner: dict[str, str] = {p: p for p in PERSONS}
        self.crash_tokens: set[str] = set()
        # recipient health (SPEC §11): address → when a "gone" answer suppressed it
        self.suppressed: dict[str, datetime] = {}
        # reminder → (alternative, claims seen on it since it got there): bounds its attempts
        self.claims: dict[int, tuple[int, int]] = {}
        self.script: list[Step] = []
        self.stop = StopRequest()
        self.violations: list[str] = []
        self.runs = 0
        self.healthy = True  # False once a step failed: teardown then skips the drain
        # per dispatch run
        self.run_deliveries: list[tuple[Arming, Delivered]] = []
        # reminder → (outcome, attempts, alternative) of its last send in this run
        self.run_last_send: dict[int, tuple[str, int, int]] = {}
        self.run_touched: set[str] = set()
        # change notices: who received something of a booking, and each change's notices
        self.received: set[tuple[str, str]] = set()  # (booking, person)
        self.changes: dict[str, int] = defaultdict(int)  # booking → changes so far
        self.notices: dict[tuple[str, str, str, int], list[Delivered]] = defaultdict(list)
        model_channel.provider = self._provider

    # -- helpers ---------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock()

    @contextmanager
    def guarded(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.healthy = False
            raise

    def fail(self, message: str) -> None:
        self.violations.append(f"[{self.now():%Y-%m-%d %H:%M:%S}] {message}")

    def raise_violations(self) -> None:
        if self.violations:
            found, self.violations = self.violations, []
            raise Violation("\n".join(found))

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.fail(message)

    def person_of(self, recipient: str) -> str:
        return self.owner[recipient]

    def rows(self) -> list[Any]:
        with self.store.reader() as conn:
            return list(
                conn.execute(
                    select(N, Booking.external_id, Booking.status.label("booking_status"))
                    .join(Booking, Booking.id == N.booking_id)
                    .order_by(N.id)
                )
            )

    def target_of(self, route: str) -> str:
        """The persons of a stored route ("model:a.1|model:b" → "a|b"): its identity in the
        model, whatever chat migrations rewrote."""
        return "|".join(self.person_of(part.split(":", 1)[1]) for part in route.split("|"))

    def key_of(self, row: Any) -> Key:
        return (row.external_id, row.kind, self.target_of(row.route))

    def check_not_suppressed(self, address: str, what: str) -> None:
        """A suppressed recipient receives nothing after its suppression (SPEC §11)."""
        since = self.suppressed.get(address)
        if since is not None:
            self.fail(f"{what} sent to {address}, suppressed since {since:%m-%d %H:%M:%S}")

    def count_claim(self, notification_id: int, alternative: int, attempts: int, what: str) -> None:
        """A claim of a reminder on its alternative: attempts count only claims on that
        alternative (a fallback starts it again at 0; a re-arm or a give-back lowers it)."""
        seen = self.claims.get(notification_id)
        count = seen[1] + 1 if seen is not None and seen[0] == alternative else 1
        self.claims[notification_id] = (alternative, count)
        self.check(
            attempts <= count,
            f"{what}: reminder {notification_id} claimed with attempts={attempts} on alternative "
            f"{alternative} after {count} claim(s) there (a fallback kept the attempts?)",
        )

    def fallbacks(self) -> dict[int, int]:
        """Per reminder, how many "fallback" entries its history holds."""
        with self.store.reader() as conn:
            return dict(
                conn.execute(
                    select(DeliveryAttempt.notification_id, func.count())
                    .where(DeliveryAttempt.outcome == Action.FALLBACK)
                    .group_by(DeliveryAttempt.notification_id)
                ).all()
            )

    def snapshot(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        with self.store.reader() as conn:
            booking_rows = [tuple(r) for r in conn.execute(select(Booking).order_by(Booking.id))]
            reminder_rows = [tuple(r) for r in conn.execute(select(N).order_by(N.id))]
        return booking_rows, reminder_rows

    def uncertain_attempt_for(self, notification_ids: set[int]) -> bool:
        with self.store.reader() as conn:
            found = conn.scalar(
                select(DeliveryAttempt.id)
                .where(
                    DeliveryAttempt.notification_id.in_(notification_ids),
                    DeliveryAttempt.uncertain.is_(True),
                )
                .limit(1)
            )
        return found is not None

    def describe(self, key: Key) -> str:
        lines = [str(self.armings[key])] if key in self.armings else [f"{key}: no arming"]
        for row in self.rows():
            if self.key_of(row) == key:
                lines.append(
                    f"  row {row.id} to {row.recipient} (alternative {row.alternative} of "
                    f"{row.route}): {row.status} {row.reason or ''}, scheduled "
                    f"{row.scheduled_at:%m-%d %H:%M:%S}, due {row.due_at:%m-%d %H:%M:%S}, "
                    f"updated {row.updated_at:%m-%d %H:%M:%S}, attempts {row.attempts}, "
                    f"last_error {row.last_error!r}"
                )
        return "\n".join(lines)

    # -- create / cancel, with their reports checked against the model and the rows ---------

    def do_create(self, booking_id: str, args: CreateArgs, *, replay: bool = False) -> None:
        now = self.now()
        model = self.bookings.get(booking_id)
        before = self.snapshot()
        stale = any(
            r.external_id == booking_id and r.status in LIVE and r.not_after <= now
            for r in self.rows()
        )
        try:
            result = create_booking(
                self.store,
                booking_id,
                starts_at=args.starts_at,
                ends_at=args.ends_at,
                to=list(args.to),
                remind=list(args.remind),
                timezone=args.timezone,
            )
        except InvalidInput as e:
            self.check(
                model is not None and model.cancelled,
                f"create {booking_id} refused: {e.message}",
            )
            self.check(self.snapshot() == before, f"a refused create of {booking_id} wrote")
            return
        if model is not None and model.cancelled:
            self.fail(f"create of cancelled booking {booking_id} accepted: {result.action}")
            return
        # a route whose every alternative is suppressed is left out (SPEC §11)
        targets, left_out = [], []
        for to in args.to:
            target = self.target_of(to)
            current = [self.addresses[p][-1] for p in target.split("|")]
            (left_out if all(a in self.suppressed for a in current) else targets).append(target)
        self.check(
            len(result.suppressed) == len(left_out),
            f"create {booking_id} reported suppressed {result.suppressed}, expected {left_out}",
        )
        wanted: dict[Key, tuple[datetime, datetime]] = {}
        for kind in args.remind:
            scheduled, not_after = kind_times(kind, args.starts_at, args.ends_at)
            if not_after > now and scheduled < not_after:
                for target in targets:
                    wanted[(booking_id, kind, target)] = (scheduled, not_after)
        what = f"create {booking_id}{' (replayed)' if replay else ''} reported {result.action}"
        if model is None:
            self.check(result.action == "created", what)
            self.check(result.added == len(wanted), f"{what} added={result.added}/{len(wanted)}")
        else:
            moved = (model.args.starts_at, model.args.ends_at) != (args.starts_at, args.ends_at)
            self.check((result.action == "rescheduled") == moved, f"{what}; times moved: {moved}")
            if replay and not stale:
                self.check(result.action == "unchanged", f"{what}, not unchanged")
        self.check(
            len(result.skipped) == len(args.remind) * len(targets) - len(wanted),
            f"{what} skipped {len(result.skipped)}",
        )
        if result.action == "unchanged":
            self.check(self.snapshot() == before, f"{what} but wrote")
        if result.action == "rescheduled":
            self.changes[booking_id] += 1
        self.bookings[booking_id] = BookingModel(args)
        new_keys = self.arm(booking_id, wanted, now)
        # the report matches the rows: the booking has the new times, re-armed rows are due then
        with self.store.reader() as conn:
            booking = conn.execute(select(Booking).where(Booking.external_id == booking_id)).one()
        self.check(
            (booking.starts_at, booking.ends_at) == (args.starts_at, args.ends_at),
            f"{what} but the booking keeps {booking.starts_at}..{booking.ends_at}",
        )
        for row in self.rows():
            if row.external_id == booking_id and row.status == "pending":
                key = self.key_of(row)
                if key in new_keys and row.due_at != row.scheduled_at:
                    self.fail(f"{what}: re-armed row {row.id} not due at its new time")

    def arm(
        self, booking_id: str, wanted: dict[Key, tuple[datetime, datetime]], now: datetime
    ) -> set[Key]:
        """The model's side of create: which armings end, stay, or start."""
        for key, arming in self.armings.items():
            if key[0] == booking_id and arming.active and key not in wanted:
                arming.active = False
        new_keys: set[Key] = set()
        for key, (scheduled, not_after) in wanted.items():
            previous = self.armings.get(key)
            if (
                previous is not None
                and previous.active
                and (previous.scheduled, previous.not_after) == (scheduled, not_after)
            ):
                continue
            required = previous is None or scheduled > now or not previous.satisfied
            self.armings[key] = Arming(
                key,
                previous.gen + 1 if previous else 1,
                scheduled,
                not_after,
                now,
                required,
            )
            new_keys.add(key)
        return new_keys

    def do_cancel(self, booking_id: str) -> None:
        model = self.bookings.get(booking_id)
        result = cancel(self.store, [booking_id], missing_ok=True)
        self.check(
            result.bookings == (model is not None),
            f"cancel {booking_id}: {result.as_dict()}",
        )
        if model is not None:
            if not model.cancelled:
                self.changes[booking_id] += 1
            model.cancelled = True
            for key, arming in self.armings.items():
                if key[0] == booking_id:
                    arming.active = False

    # -- deliveries --------------------------------------------------------------------------

    def deliver(
        self,
        key: Key,
        notification_id: int,
        *,
        uncertain: bool,
        via: str,
        previous: tuple[datetime, datetime] | None = None,
    ) -> None:
        if is_notice(key[1]):
            self.deliver_notice(key, notification_id, uncertain, via, previous)
        else:
            self.deliver_reminder(key, notification_id, uncertain=uncertain, via=via)
        self.received.add((key[0], key[2]))

    def deliver_notice(
        self,
        key: Key,
        notification_id: int,
        uncertain: bool,
        via: str,
        previous: tuple[datetime, datetime] | None,
    ) -> None:
        """A change notice: to someone who got something, once per change, and still true."""
        booking_id, kind, person = key
        what = f"{via}: notice {notification_id} {key}"
        model = self.bookings.get(booking_id)
        if (booking_id, person) not in self.received:
            self.fail(f"{what} to a recipient that never received anything of the booking")
        if model is None:
            self.fail(f"{what} for a booking never created")
            return
        if kind == "cancelled":
            self.check(model.cancelled, f"{what}: cancel notice for an active booking")
        else:
            self.check(not model.cancelled, f"{what}: move notice after the booking was cancelled")
            now_times = (model.args.starts_at, model.args.ends_at)
            self.check(previous != now_times, f"{what}: 'moved' back to {previous}: told nothing")
        deliveries = self.notices[(booking_id, kind, person, self.changes[booking_id])]
        if deliveries and not any(d.uncertain for d in deliveries):
            self.fail(f"{what} delivered twice for one change: first {deliveries[0]}")
        deliveries.append(Delivered(self.now(), notification_id, uncertain, via))

    def deliver_reminder(
        self, key: Key, notification_id: int, *, uncertain: bool, via: str
    ) -> None:
        now = self.now()
        arming = self.armings.get(key)
        if arming is None or not arming.active:
            self.fail(
                f"{via}: reminder {notification_id} {key} delivered after its booking was "
                f"cancelled or the reminder removed\n{self.describe(key)}"
            )
            return
        if now >= arming.not_after:
            self.fail(f"{via}: {arming} delivered after not_after")
        if now < arming.scheduled:
            self.fail(f"{via}: reminder {notification_id} delivered early: {arming}")
        if arming.deliveries and not any(d.uncertain for d in arming.deliveries):
            self.fail(
                f"{via}: reminder {notification_id} delivered twice for one arming: {arming}, "
                f"first {arming.deliveries[0]}"
            )
        delivered = Delivered(now, notification_id, uncertain, via)
        arming.deliveries.append(delivered)
        self.run_deliveries.append((arming, delivered))

    def check_text(self, message: Message) -> None:
        """The text must be true now: rendered from the booking as stored, at this moment."""
        with self.store.reader() as conn:
            booking = conn.execute(
                select(Booking).where(Booking.external_id == message.booking_id)
            ).one()
        rendered, _ = render_for(
            booking,
            message.kind,
            "model",
            message.recipient,
            self.now(),
            None,
            previous=previous_in(message),
        )
        self.check(
            message.text == rendered.text,
            f"false text for reminder {message.notification_id}: sent {message.text!r}, "
            f"true when sent: {rendered.text!r}",
        )
        self.check(
            message.payload.get("starts_at") == booking.starts_at.isoformat(),
            f"payload starts_at {message.payload.get('starts_at')} != {booking.starts_at}",
        )

    def _provider(self, message: Message) -> SendResult:
        try:
            return self._provide(message)
        except Exception as e:  # a violation or a test bug: report it after the run
            self.fail(f"provider raised {type(e).__name__}: {e}\n{traceback.format_exc()}")
            return SendResult.failed("model provider error")

    def _provide(self, message: Message) -> SendResult:
        what = f"{message.kind} {message.notification_id}"
        self.check(not self.stop.requested, f"{what} sent after the run was asked to stop")
        self.check_not_suppressed(message.recipient, what)
        with self.store.reader() as conn:
            claimed = conn.execute(
                select(N.attempts, N.route, N.alternative).where(N.id == message.notification_id)
            ).one()
        self.count_claim(message.notification_id, claimed.alternative, claimed.attempts, what)
        person = self.person_of(message.recipient)
        current = self.addresses[person][-1]
        if message.recipient != current:  # what Telegram answers for a migrated group
            return SendResult.moved(current, "Bad Request: group chat was upgraded", 400)
        self.check_text(message)
        step = self.script.pop(0) if self.script else Step("ok")
        self.run_last_send[message.notification_id] = (
            step.outcome,
            claimed.attempts,
            claimed.alternative,
        )
        key = (message.booking_id, message.kind, self.target_of(claimed.route))
        if step.outcome in ("ok", "timeout"):
            self.deliver(
                key,
                message.notification_id,
                uncertain=step.outcome == "timeout",
                via="send",
                previous=previous_in(message),
            )
        result: SendResult
        if step.outcome == "ok":
            result = SendResult.sent(str(uuid.uuid4().int % 10**9), 200)
        elif step.outcome == "timeout":
            result = SendResult.retry("read timeout after the request was sent", uncertain=True)
        elif step.outcome.startswith("429/"):
            seconds = int(step.outcome.split("/")[1])
            result = SendResult.retry_after_seconds(
                seconds, f"Too Many Requests: retry after {seconds}", 429
            )
        elif step.outcome == "500":
            result = SendResult.retry("Internal Server Error", 500)
        elif step.outcome == "403":  # a plain permanent failure: the recipient stays
            result = SendResult.failed("Forbidden: bot was blocked by the user", 403)
        elif step.outcome == "gone":  # SPEC §11: suppress the recipient
            result = SendResult.gone("Forbidden: bot was blocked by the user", 403)
        else:
            assert step.outcome == "migrate"
            new = f"{person}.{len(self.addresses[person])}"
            self.addresses[person].append(new)
            self.owner[new] = person
            result = SendResult.moved(new, "Bad Request: group chat was upgraded", 400)
        if step.interference is not None:
            self.interfere(step.interference, message.booking_id)
        if step.outcome == "gone":  # the run records it (and suppresses) after this change
            self.suppressed.setdefault(message.recipient, self.now())
        if step.stop:
            self.stop.request()
        return result

    def interfere(self, change: Interference, in_flight: str) -> None:
        booking_id = in_flight if change.booking == "same" else change.booking
        self.run_touched.add(booking_id)
        if change.action == "cancel":
            self.do_cancel(booking_id)
            return
        model = self.bookings.get(booking_id)
        if model is None:
            return
        if change.action == "replay":
            self.do_create(booking_id, model.args, replay=True)
        else:
            start = self.now() + timedelta(minutes=change.starts_in)
            self.do_create(booking_id, model.args.moved(start))

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(
        self, script: list[Step], rate: float, max_attempts: int, *, wait: bool = False
    ) -> None:
        self.runs += 1
        self.script = list(script)
        self.run_deliveries, self.run_last_send, self.run_touched = [], {}, set()
        superseded = self.superseded_now()
        alternatives_before = {row.id: row.alternative for row in self.rows()}
        fallbacks_before = self.fallbacks()
        epoch = self.now()
        self.stop = StopRequest()
        report = Dispatcher(
            self.store,
            self.settings,
            DispatchOptions(
                batch_size=1,
                concurrency=1,
                max_seconds=50,
                lease_seconds=LEASE.total_seconds(),
                max_attempts=max_attempts,
                backoff_base=30,
                rate_limit=rate,
                wait=wait,  # SPEC §13: wait within the budget (the frozen clock's sleep)
            ),
            stdout=io.StringIO(),
            rng=random.Random(self.runs),
            sleep=self.clock.sleep,
            monotonic=lambda: (self.clock() - epoch).total_seconds(),
            stop=self.stop,
        ).run()
        expected = 130 if self.stop.requested else 0  # a stopped run ends interrupted
        self.check(
            report.exit_code == expected, f"dispatch exit {report.exit_code}: {report.error}"
        )
        self.raise_violations()
        # superseding: of several due in one run, only the latest is sent
        for arming, delivered in self.run_deliveries:
            if (delivered.notification_id, arming.gen) in superseded:
                self.fail(f"superseded reminder {delivered.notification_id} sent: {arming}")
            if delivered.uncertain and not self.uncertain_attempt_for({delivered.notification_id}):
                self.fail(f"timeout of reminder {delivered.notification_id} not marked uncertain")
            if len(arming.deliveries) > 1 and not self.uncertain_attempt_for(
                {d.notification_id for d in arming.deliveries}
            ):
                self.fail(f"{arming} delivered again without an uncertain attempt in history")
        # 429 and a moved chat give the attempt back
        by_id = {row.id: row for row in self.rows()}
        for notification_id, (outcome, claimed, alternative) in self.run_last_send.items():
            row = by_id.get(notification_id)
            given_back = outcome.startswith("429/") or outcome == "migrate"
            if (
                given_back
                and row is not None
                and row.status == "pending"
                and row.alternative == alternative  # not moved on (a fallback starts at 0)
                and row.external_id not in self.run_touched
            ):
                self.check(
                    row.attempts == claimed - 1,
                    f"{outcome} for reminder {notification_id} counted as an attempt "
                    f"({row.attempts} after, {claimed} while sending)",
                )
        # a run moves a reminder along its chain only forward, and the history says so
        fallbacks_after = self.fallbacks()
        for row in by_id.values():
            before = alternatives_before.get(row.id)
            if before is None or row.external_id in self.run_touched:
                continue
            key = self.key_of(row)
            self.check(
                row.alternative >= before,
                f"run moved reminder {row.id} back from alternative {before}\n{self.describe(key)}",
            )
            if row.alternative > before:
                self.check(
                    fallbacks_after.get(row.id, 0) > fallbacks_before.get(row.id, 0),
                    f"reminder {row.id} moved from alternative {before} to {row.alternative} "
                    f"without a fallback in its history\n{self.describe(key)}",
                )
        self.raise_violations()

    def superseded_now(self) -> set[tuple[int, int]]:
        """(reminder, arming) due now that a later one of the same booking and recipient (or
        chain, whichever alternative each is on) supersedes: this run must not send that
        arming (it may send a later re-arming)."""
        now = self.now()
        groups: dict[tuple[int, str], list[Any]] = defaultdict(list)
        for row in self.rows():
            if not is_notice(row.kind):  # notices neither supersede nor are superseded
                groups[(row.booking_id, row.route)].append(row)
        found: set[tuple[int, int]] = set()
        for rows in groups.values():
            for row in rows:
                if row.status != "pending" or row.due_at > now:
                    continue
                if any(
                    later.scheduled_at > row.scheduled_at
                    and (later.status == "sent" or (later.status in LIVE and later.due_at <= now))
                    for later in rows
                ):
                    arming = self.armings.get(self.key_of(row))
                    found.add((row.id, arming.gen if arming else 0))
        return found

    # -- rules -------------------------------------------------------------------------------

    @initialize(day=st.sampled_from(DAYS), minute=st.integers(0, 24 * 60 - 1))
    def start_clock(self, day: datetime, minute: int) -> None:
        self.clock.set(day + timedelta(minutes=minute))

    @rule(
        booking=bookings,
        starts_in=starts_in,
        minutes=durations,
        persons=st.lists(st.sampled_from(PERSONS), min_size=1, max_size=3, unique=True),
        chain=st.booleans(),
        kinds=st.lists(st.sampled_from(KIND_NAMES), min_size=1, max_size=4, unique=True),
        zone=st.sampled_from(ZONES),
        current_address=st.booleans(),
    )
    def create(
        self,
        booking: str,
        starts_in: int,
        minutes: int,
        persons: list[str],
        chain: bool,
        kinds: list[str],
        zone: str,
        current_address: bool,
    ) -> None:
        with self.guarded():
            start = self.now() + timedelta(minutes=starts_in)
            # a chain: the first two persons become one --to "model:x|model:y" (SPEC §11);
            # a recipient may appear in only one --to value
            recipients = ["|".join(persons[:2]), *persons[2:]] if chain else persons
            to = tuple(
                "|".join(
                    f"model:{self.addresses[p][-1] if current_address else p}"
                    for p in target.split("|")
                )
                for target in recipients
            )
            args = CreateArgs(start, start + timedelta(minutes=minutes), to, tuple(kinds), zone)
            self.do_create(booking, args)
            self.raise_violations()

    @rule(booking=bookings, starts_in=starts_in)
    def reschedule(self, booking: str, starts_in: int) -> None:
        with self.guarded():
            if booking in self.bookings:
                start = self.now() + timedelta(minutes=starts_in)
                self.do_create(booking, self.bookings[booking].args.moved(start))
                self.raise_violations()

    @rule(booking=bookings)
    def replay(self, booking: str) -> None:
        with self.guarded():
            if booking in self.bookings:
                self.do_create(booking, self.bookings[booking].args, replay=True)
                self.raise_violations()

    @rule(booking=bookings)
    def cancel_booking(self, booking: str) -> None:
        with self.guarded():
            self.do_cancel(booking)
            self.raise_violations()

    @rule(
        script=scripts,
        rate=st.sampled_from([25.0, 1.0, 1 / 60]),
        max_attempts=st.sampled_from([10, 2]),
        wait=st.booleans(),
    )
    def run_dispatch(self, script: list[Step], rate: float, max_attempts: int, wait: bool) -> None:
        with self.guarded():
            self.dispatch(script, rate, max_attempts, wait=wait)

    @rule(limit=st.integers(1, 4), sent=st.booleans())
    def crashed_run(self, limit: int, sent: bool) -> None:
        """A run claims, (maybe) sends, and is killed before it records anything."""
        with self.guarded():
            token = str(uuid.uuid4())
            self.crash_tokens.add(token)
            self.run_deliveries = []
            with self.store.transaction() as conn:
                claimed = queries.claim_due(conn, self.now(), limit, token, LEASE)
                booking_ids = {
                    b.id: b.external_id
                    for b in conn.execute(select(Booking.id, Booking.external_id))
                }
            for row in claimed:
                self.count_claim(row.id, row.alternative, row.attempts, "crashed run")
            if sent:
                for row in claimed:
                    self.check_not_suppressed(row.recipient, f"crash: {row.kind} {row.id}")
                    person = self.person_of(row.recipient)
                    if row.recipient == self.addresses[person][-1]:
                        key = (booking_ids[row.booking_id], row.kind, self.target_of(row.route))
                        was = (row.previous_starts_at, row.previous_ends_at)
                        self.deliver(
                            key,
                            row.id,
                            uncertain=True,
                            via="crash",
                            previous=was if is_notice(row.kind) else None,
                        )
            for arming, _ in self.run_deliveries:
                if len(arming.deliveries) > 1 and not self.uncertain_attempt_for(
                    {d.notification_id for d in arming.deliveries[:-1]}
                ):
                    self.fail(f"{arming} delivered again without an uncertain attempt")
            self.raise_violations()

    @rule(seconds=clock_steps)
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(extra=st.sampled_from([0, 1, 61]))
    def advance_to_next_due(self, extra: int) -> None:
        with self.guarded():
            upcoming = self.next_event(strictly_after=self.now())
            if upcoming is not None:
                self.clock.set(upcoming + timedelta(seconds=extra))

    def next_event(self, strictly_after: datetime) -> datetime | None:
        """The next moment something happens to a live row: due, useless, or lease over."""
        times = []
        for row in self.rows():
            if row.status == "pending":
                times += [row.due_at, row.not_after]
            elif row.status == "sending" and row.lease_expires_at is not None:
                times.append(row.lease_expires_at)
        later = [t for t in times if t > strictly_after]
        return min(later) if later else None

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def store_is_consistent(self) -> None:
        with self.guarded():
            self.check_rows(final=False)
            drift = stat_hours_drift(self.store.engine)
            self.check(not drift, f"stats counts (kept, recounted) drifted: {drift}")
            self.raise_violations()

    def check_rows(self, *, final: bool) -> None:
        rows = self.rows()
        live: dict[Key, list[Any]] = defaultdict(list)
        by_key: dict[Key, list[Any]] = defaultdict(list)
        for row in rows:
            key = self.key_of(row)
            by_key[key].append(row)
            # the route names the alternative in use (a chat migration rewrites both)
            parts = row.route.split("|")
            in_use = parts[row.alternative] if 0 <= row.alternative < len(parts) else None
            self.check(
                in_use == f"{row.channel}:{row.recipient}",
                f"row {row.id} on {row.channel}:{row.recipient} but its route {row.route} "
                f"names {in_use} as alternative {row.alternative}",
            )
            # nothing waits for a suppressed recipient: it moved on, or ended
            if row.status == "pending" and row.recipient in self.suppressed:
                self.fail(
                    f"row {row.id} pending for suppressed {row.recipient} (since "
                    f"{self.suppressed[row.recipient]:%m-%d %H:%M:%S})\n{self.describe(key)}"
                )
            if row.status == "sending":
                self.check(
                    row.lease_token is not None and row.lease_expires_at is not None,
                    f"row {row.id} sending without a lease",
                )
                self.check(
                    row.lease_token in self.crash_tokens,
                    f"row {row.id} left sending by a dispatch run that ended\n{self.describe(key)}",
                )
            else:
                self.check(row.lease_token is None, f"row {row.id} {row.status} keeps a lease")
            if is_notice(row.kind):
                self.check(
                    row.status not in LIVE
                    or (row.booking_status == "cancelled") == (row.kind == "cancelled"),
                    f"notice {row.id} {row.kind} {row.status} for a {row.booking_status} booking",
                )
                continue
            if row.status in LIVE:
                live[key].append(row)
                self.check(
                    row.booking_status == "active",
                    f"row {row.id} {row.status} for cancelled booking {row.external_id}",
                )
            if row.status == "pending":
                arming = self.armings.get(key)
                if arming is None or not arming.active:
                    self.fail(f"row {row.id} pending for a removed reminder\n{self.describe(key)}")
                    continue
                if (row.scheduled_at, row.not_after) != (arming.scheduled, arming.not_after):
                    self.fail(
                        f"row {row.id} pending on old times (reschedule not applied)\n"
                        f"{self.describe(key)}"
                    )
                elif row.due_at < arming.scheduled:
                    self.fail(
                        f"row {row.id} due {row.due_at:%m-%d %H:%M:%S} before its scheduled "
                        f"time (an old retry time?)\n{self.describe(key)}"
                    )
        for key, rows_of_key in live.items():
            if len(rows_of_key) > 1:
                self.fail(f"{len(rows_of_key)} live rows for one reminder\n{self.describe(key)}")
        for key, arming in self.armings.items():
            if not arming.active or arming.satisfied:
                continue
            rows_of_key = by_key.get(key, [])
            if final:
                self.check(not live.get(key), f"still live at the end\n{self.describe(key)}")
            if live.get(key):
                continue
            if any(self.ended(r) and r.updated_at >= arming.armed_at for r in rows_of_key):
                continue
            self.fail(f"lost: never delivered, nothing left to send it\n{self.describe(key)}")

    def ended(self, row: Any) -> bool:
        """Ended with a reason: failed or expired, or cancelled because the alternative in
        use and every later one were suppressed (SPEC §11)."""
        if row.status in ("failed", "expired"):
            return bool(row.reason or row.last_error)
        rest = [part.split(":", 1)[1] for part in row.route.split("|")[row.alternative :]]
        return (
            row.status == "cancelled"
            and row.reason == "suppressed"
            and all(address in self.suppressed for address in rest)
        )

    # -- the end: deliver everything still due, then check that nothing was lost -----------------

    def teardown(self) -> None:
        try:
            if self.healthy:
                self.drain()
        finally:
            model_channel.provider = None

    def drain(self) -> None:
        for _ in range(400):
            self.dispatch([], 25.0, 10)
            self.check_rows(final=False)
            self.raise_violations()
            upcoming = self.next_event(strictly_after=self.now())
            if upcoming is None:
                if not any(r.status in LIVE for r in self.rows()):
                    break
                upcoming = self.now() + timedelta(seconds=1)
            self.clock.set(upcoming)
        self.check_rows(final=True)
        self.raise_violations()


def previous_in(message: Message) -> tuple[datetime, datetime] | None:
    """A notice's "was" times, as its webhook-style payload carries them."""
    if not is_notice(message.kind):
        return None
    return (
        datetime.fromisoformat(message.payload["previous_starts_at"]),
        datetime.fromisoformat(message.payload["previous_ends_at"]),
    )


# --- fresh stores per example -----------------------------------------------------------------


class FreshStores:
    """A clean, migrated store for each example: a copy of the SQLite template, or the
    test's PostgreSQL database with every table emptied (whatever tables a later
    migration adds)."""

    def __init__(self, database_url: str, sqlite_template: Path, workdir: Path) -> None:
        self.database_url = database_url
        self.sqlite = database_url.startswith("sqlite")
        self.template = sqlite_template
        self.workdir = workdir
        self.engine: Engine | None = None
        self.path: Path | None = None
        self.count = 0
        self.tables: list[str] = []

    def __call__(self) -> Engine:
        self.count += 1
        if self.sqlite:
            self.close()
            self.path = self.workdir / f"model-{self.count}.db"
            for stale in self.workdir.glob(f"{self.path.name}*"):  # never replay an old WAL
                stale.unlink()
            shutil.copy(self.template, self.path)
            self.engine = make_engine(f"sqlite:///{self.path}", create_file=False)
            return self.engine
        if self.engine is None:
            self.engine = make_engine(self.database_url, create_file=False)
            names = inspect(self.engine).get_table_names()
            self.tables = [t for t in names if t != "alembic_version"]
        with self.engine.begin() as conn:
            tables = ", ".join(f'"{t}"' for t in self.tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        if self.path is not None:
            for path in self.workdir.glob(f"{self.path.name}*"):
                path.unlink()
            self.path = None


@pytest.fixture
def model_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(CHANNELS, "model", "tests.model_channel:ModelChannel")
    channel_module.cache_clear()
    yield
    model_channel.provider = None
    channel_module.cache_clear()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """Where the per-example SQLite copies live: tmpfs when there is one (many commits)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="notifyctl-model-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_delivery_guarantees_hold_under_random_interleavings(
    database_url: str, sqlite_template: Path, scratch: Path, model_provider: None
) -> None:
    stores = FreshStores(database_url, sqlite_template, scratch)
    try:
        examples = int(EXAMPLES) if EXAMPLES else 150 if stores.sqlite else 60
        run_state_machine_as_test(
            lambda: ReminderModel(stores), settings=settings(MODEL_SETTINGS, max_examples=examples)
        )
    finally:
        stores.close()
