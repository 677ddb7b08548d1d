"""One dispatch run: expire, rescue, then claim → send → record until done.

Sends happen outside any transaction, in send threads; the calling thread
records each outcome as soon as it returns, in its own short transaction,
fenced by the lease token. What an answer means is decided in
``decisions``; texts are built by ``message``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO, TypeVar

from sqlalchemy import Connection

from . import health, queries
from .channels import (
    CHANNELS,
    chat_key,
    config_problems,
    netguard,
    open_sender,
    sender,
    shown_recipient,
)
from .channels.base import Channel, ChannelContext, Delivery, Editor, Message, SendResult
from .config import Settings, redact
from .db import Store
from .decisions import Outcome, along_chain, decide
from .errors import ConfigError, DatabaseError, ExitCode
from .health import Moved
from .message import build_message, load_templates
from .models import Reason, Status
from .pacing import Allowance, Pacer, Patiently
from .queries import BookingRow
from .routes import Address, alternatives, has_next, route_text
from .runs import Action, DispatchOptions, RunReport
from .stopping import StopRequest

__all__ = ["DispatchOptions", "Dispatcher", "RunReport"]

log = logging.getLogger("notifyctl.dispatch")

T = TypeVar("T")


# --- the run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """One claimed reminder, as a value (no live database row)."""

    id: int
    lease_token: str
    channel: str
    recipient: str
    kind: str
    attempts: int
    not_after: datetime
    send_by: datetime  # last moment to start sending: well inside the lease
    lease_expires: datetime  # the last moment this run may record anything for it
    previous_starts_at: datetime | None = None  # a change notice's "was" (None: a reminder)
    previous_ends_at: datetime | None = None
    route: str = ""  # its chain of alternatives (routes.py): channel:recipient for one
    alternative: int = 0  # the position of channel:recipient in it


@dataclass(frozen=True)
class Attempted:
    """A send that was made: the provider's answer decides the outcome."""

    claim: Claim
    result: SendResult
    started: datetime
    finished: datetime


@dataclass(frozen=True)
class NotSent:
    """A claim decided without a request: released, expired, failed to render …"""

    claim: Claim
    outcome: Outcome


Returned = Attempted | NotSent

#: a text is rendered this long before its send slot, for that slot: sends stay on time
RENDER_LEAD = timedelta(milliseconds=100)


#: answers returning within this many seconds of each other are recorded together
GATHER = 0.02

#: a batch's bookings are read again when the copy is older than this (one query for all)
FRESH = 0.05


class _Wake:
    """Put on the returned queue when the run is asked to stop: the recorder wakes."""


WAKE = _Wake()


Corrected = tuple[str, list[dict[str, Any]]]  # a notice's channel, its edits' history rows


@dataclass
class _Flight:
    """The sends out at once, across the batches of one run."""

    returned: queue.SimpleQueue[Returned | BaseException | _Wake] = field(
        default_factory=queue.SimpleQueue
    )
    pending: dict[int, Claim] = field(default_factory=dict)  # sent off, not yet returned
    channels: dict[int, Channel] = field(default_factory=dict)
    corrections: list[Future[Corrected]] = field(default_factory=list)


@dataclass(frozen=True)
class _SendJob:
    claim: Claim
    channel: Channel
    bookings: BatchBookings
    allowance: Allowance


@dataclass(frozen=True)
class _CorrectJob:
    claim: Claim
    channel: Editor
    result: Future[Corrected]


_Job = _SendJob | _CorrectJob


class _Lanes:
    """The run's send threads: up to ``count``, each taking the next job in turn.

    Lighter per message than ``ThreadPoolExecutor.submit``, whose future (a
    ``Condition`` and its lock) for every send cost ~4 % of a run's CPU against
    a fast provider. Jobs not begun can be taken back: a stop gives them back
    at once instead of after their lease.
    """

    def __init__(self, count: int, work: Callable[[_Job], None]) -> None:
        self._count = count
        self._work = work
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def put(self, job: _Job) -> None:
        if len(self._threads) < self._count:  # one more thread per job, up to count
            thread = threading.Thread(target=self._lane, name=f"send_{len(self._threads)}")
            self._threads.append(thread)
            thread.start()
        self._jobs.put(job)

    def _lane(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._work(job)

    def take_unstarted(self) -> list[_Job]:
        taken: list[_Job] = []
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._jobs.get_nowait()
                assert job is not None  # only ``close`` puts None, after the last job
                taken.append(job)
        return taken

    def close(self) -> None:
        """Jobs not begun are dropped; each thread ends after its job, not waited for.

        A run that ends with jobs queued ended on an error: their claims are
        rescued after the lease. A send stuck past every deadline is not waited for.
        """
        self.take_unstarted()
        for _ in self._threads:
            self._jobs.put(None)


class BatchBookings:
    """The bookings of one claimed batch, read again whenever the copy is 50 ms old.

    A text must be true when it leaves, and a reschedule or cancel may commit at
    any moment after the claim: right before each send (in the lead time before
    its pacing slot, so the send stays on its slot) the claim's booking is taken
    from a copy at most ``FRESH`` seconds old, read in one query for the whole
    batch and only for the claims this run still holds. One query per 50 ms
    instead of one per message keeps a fast provider's throughput. A claim whose
    recipient was suppressed meanwhile (another run was told it is gone) counts
    as no longer held: it is given back, and the writer moves it along its chain.
    """

    def __init__(
        self,
        store: Store,
        token: str,
        bookings: dict[int, BookingRow],  # claim id → booking, as of the claim
        addresses: dict[int, Address],  # claim id → where it goes
        monotonic: Callable[[], float],
    ) -> None:
        self._store = store
        self._token = token
        self._addresses = addresses
        self.claimed = bookings
        self._current: dict[int, BookingRow | None] = dict(bookings)
        self._monotonic = monotonic
        self._read_at = monotonic()
        self._lock = threading.Lock()

    def current(self, claim_id: int, patiently: Patiently, by: datetime) -> BookingRow | None:
        """The claim's booking as of at most ``FRESH`` s ago; None when no longer held."""
        with self._lock:
            if self._monotonic() - self._read_at > FRESH:
                fresh = patiently(self._read, by)
                self._current = {i: fresh.get(i) for i in self._current}
                self._read_at = self._monotonic()
            return self._current.get(claim_id)

    def _read(self) -> dict[int, BookingRow]:
        with self._store.reader() as conn:
            held = queries.held_bookings(conn, self._token, list(self._current))
            gone = health.suppressed_among(conn, [(self._addresses[i],) for i in held])
        return {i: booking for i, booking in held.items() if self._addresses[i] not in gone}


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        options: DispatchOptions,
        *,
        stdout: TextIO,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        http_client: Any = None,
        stop: StopRequest | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.options = options.validate()
        self.clock = store.clock
        self.rng = rng or random.Random()
        self.sleep = sleep or time.sleep
        self.monotonic = monotonic
        self._stop = stop or StopRequest()
        # a send must end well inside its lease, or a rescuer may send it again meanwhile
        deadline = min(settings.send_deadline, self.options.lease_seconds / 4)
        self.context = ChannelContext(
            settings=settings,
            stdout=stdout,
            http_client=http_client,
            send_deadline=deadline,
            concurrency=self.options.concurrency,
        )
        self._channels: dict[str, Channel] = {}  # per sender: channel, or telegram:<bot>
        self._disabled: dict[str, str] = {}  # sender → why this run cannot send on it
        self._lock = threading.Lock()
        # a pacing wait (and the wait for the next due second) ends when asked to stop
        pace = sleep or self._stop.wait
        self._pacer = Pacer(store, self.options.rate_limit, pace, self._patiently)
        self.templates = load_templates(settings)

    # -- maintenance -------------------------------------------------------------------

    def _maintain(self, report: RunReport) -> None:
        now = self.clock()
        with self.store.transaction() as conn:
            run_id = queries.start_run(conn, socket.gethostname(), os.getpid(), now)
            expired = queries.expire_useless(conn, now) + queries.expire_superseded(conn, now)
            rescued = queries.rescue_expired_leases(conn, now, self.options.max_attempts)
            moved = health.after_rescue(conn, rescued, now, run_id)
            due_senders = queries.due_senders(conn, now)
        report.run_id = run_id
        report.expired += expired
        report.rescued += len(rescued.requeued) - moved.ended
        report.failed += len(rescued.failed) + moved.ended - moved.cancelled
        for channel in moved.fallbacks:
            report.count(Action.FALLBACK, channel)
        for name in due_senders:
            self._check_sender(name)

    def _check_sender(self, name: str) -> None:
        """A sender (channel or bot) whose configuration is missing stops only its reminders."""
        for key, why in config_problems(self.settings, [name]).items():
            self._disable(key, why)

    def _disable(self, key: str, why: str) -> None:
        with self._lock:
            self._disabled.setdefault(key, why)

    def _is_disabled(self, key: str) -> bool:
        with self._lock:
            return key in self._disabled

    # -- the run -----------------------------------------------------------------------

    def run(self) -> RunReport:
        started = self.monotonic()
        report = RunReport()
        try:
            self._maintain(report)
            self._loop(report, started)
            if self._stop.requested:
                report.exit_code, report.error = ExitCode.INTERRUPTED, "interrupted"
            elif self._disabled:
                report.exit_code = ExitCode.CONFIG
                whys = "; ".join(why for _, why in sorted(self._disabled.items()))
                report.error = (
                    f"{whys} (given back untouched; other channels and bots were delivered)"
                )
        except ConfigError as e:
            report.exit_code, report.error = e.exit_code, e.message
        except KeyboardInterrupt:  # a second signal: stop now, without the answers out
            report.exit_code = ExitCode.INTERRUPTED
            netguard.cut_every_send()
            raise
        except BaseException as e:  # recorded as a failed run, then handled by the caller
            report.exit_code = getattr(e, "exit_code", ExitCode.INTERNAL)
            raise
        finally:
            for channel in self._channels.values():
                channel.close()
            report.duration_seconds = self.monotonic() - started
            if report.run_id is not None:
                self._finish(report.run_id, report)
        return report

    def _finish(self, run_id: int, report: RunReport) -> None:
        """Record the run's counts and exit code; never hides the error that ended it."""
        try:
            with self.store.transaction() as conn:
                queries.finish_run(conn, run_id, report.counts(), report.exit_code, self.clock())
        except Exception:
            if report.exit_code == 0:
                raise
            log.warning("could not record the end of dispatch run %s", report.run_id)
        self._fold_stats()

    def _fold_stats(self) -> None:
        """Sum the counts for ``stats`` this run (and any cancel meanwhile) appended.

        Missing it costs nothing but the next run's fold: never an error of the run.
        """
        try:
            with self.store.transaction() as conn:
                queries.fold_stat_hours(conn)
        except Exception as e:
            log.warning(
                "could not fold the counts for stats (%s); the next run will", type(e).__name__
            )

    def _loop(self, report: RunReport, started: float) -> None:
        lease = timedelta(seconds=self.options.lease_seconds)
        # a send starts early enough to end (send deadline ≤ lease / 4) by 80 % of its lease
        lease_s = self.options.lease_seconds
        margin = timedelta(seconds=lease_s * 0.2 + self.context.send_deadline)
        flight = _Flight()
        lanes = _Lanes(self.options.concurrency, lambda job: self._work(flight.returned, job))
        try:
            self._claim_and_send(lanes, flight, report, started, lease, margin)
        finally:
            lanes.close()

    def _claim_and_send(
        self,
        lanes: _Lanes,
        flight: _Flight,
        report: RunReport,
        started: float,
        lease: timedelta,
        margin: timedelta,
    ) -> None:
        """Claim, send and record until nothing is due or the budget is spent.

        The next batch is claimed while the last sends of the previous one are
        still out (once half a batch or less is in flight), so the send threads
        never stand idle during a claim. Every claim keeps its own lease token
        and booking copy: the fence and the checks before a send are per batch,
        whichever batches are out together.
        """
        # No send starts after the budget: a run ends within --max-seconds plus one
        # send deadline, whatever receivers and pacing waits do.
        budget_end = self.clock() + timedelta(seconds=self.options.max_seconds)
        wait_until = self.clock() + self.options.wait_horizon
        self._stop.on_request(lambda: flight.returned.put(WAKE))
        low_water = self.options.batch_size // 2
        nothing_due = False  # the last claim found nothing: look again once all is answered
        while True:
            claiming = (
                not self._stop.requested and self.monotonic() - started < self.options.max_seconds
            )
            if claiming and not nothing_due and len(flight.pending) <= low_water:
                now = self.clock()
                if self._claim_batch(lanes, flight, now, lease, margin, budget_end, report):
                    continue
                if not flight.pending:
                    wake = self._next_wake(now, wait_until)
                    if wake is None:
                        break
                    log.info("waiting until %s for the next due reminder", wake.isoformat())
                    self._pacer.sleep_until(wake)  # on time to the second, without a cron tick
                    continue
                nothing_due = True
            if not flight.pending:
                if not claiming:
                    break
                nothing_due = False
                continue
            group = self._collected(flight)
            if self._stop.requested:  # give back what has not begun
                group += self._unstarted(lanes, flight)
            if not group:
                continue
            self._record(group, report)
            for item in group:  # a notice is out: correct what the recipient was told before
                channel = flight.channels.pop(item.claim.id)
                if _delivered_notice(item) and isinstance(channel, Editor):
                    corrected: Future[Corrected] = Future()
                    flight.corrections.append(corrected)
                    lanes.put(_CorrectJob(item.claim, channel, corrected))
            self._settle_corrections(flight, report, wait=False)
        self._settle_corrections(flight, report, wait=True)

    def _claim_batch(
        self,
        lanes: _Lanes,
        flight: _Flight,
        now: datetime,
        lease: timedelta,
        margin: timedelta,
        budget_end: datetime,
        report: RunReport,
    ) -> bool:
        """Claim one batch and hand its sends to the send threads; False when nothing was due."""
        token = str(uuid.uuid4())
        with self.store.transaction() as conn:
            rows = queries.claim_due(
                conn, now, self.options.batch_size, token, lease, self._disabled_now()
            )
            if not rows:
                return False
            bookings = queries.bookings_by_id(conn, (r.booking_id for r in rows))
            superseded = queries.superseded_among(conn, [r.id for r in rows], now)
        report.claimed += len(rows)
        send_by = min(now + lease - margin, budget_end)
        claims = [
            Claim(
                row.id,
                token,
                row.channel,
                row.recipient,
                row.kind,
                row.attempts,
                row.not_after,
                send_by,
                now + lease,
                row.previous_starts_at,
                row.previous_ends_at,
                row.route,
                row.alternative,
            )
            for row in rows
        ]
        if superseded:  # a later reminder of the same booking and recipient is due too
            self._record([_superseded(c) for c in claims if c.id in superseded], report)
            claims = [c for c in claims if c.id not in superseded]
        batch = BatchBookings(
            self.store,
            token,
            {r.id: bookings[r.booking_id] for r in rows},
            {r.id: (r.channel, r.recipient) for r in rows},
            self.monotonic,
        )
        self._send_batch(lanes, flight, claims, batch, report)
        return True

    def _next_wake(self, now: datetime, wait_until: datetime) -> datetime | None:
        """When the next reminder falls due, if this run can still wait for it (one query)."""
        with self.store.reader() as conn:
            due = queries.next_due(conn, now, self._disabled_now())
        return due if due is not None and due <= wait_until else None

    def _disabled_now(self) -> list[str]:
        with self._lock:
            return list(self._disabled)

    def _send_batch(
        self,
        lanes: _Lanes,
        flight: _Flight,
        claims: list[Claim],
        bookings: BatchBookings,
        report: RunReport,
    ) -> None:
        """Hand one batch's sends to the send threads (those that cannot go are recorded now)."""
        ready: list[tuple[Claim, Channel]] = []
        unsent: list[Returned] = []
        for claim in claims:
            prepared = self._prepare(claim)
            if isinstance(prepared, NotSent):
                unsent.append(prepared)
            else:
                ready.append((claim, prepared))
        self._warm_up(ready, bookings)
        # each sender's sends of this batch share one allowance: slots reserved in blocks
        allowances = {
            key: self._pacer.allowance(key, count)
            for key, count in Counter(c.pacing_key for _, c in ready).items()
        }
        for claim, channel in ready:
            flight.pending[claim.id] = claim
            flight.channels[claim.id] = channel
            lanes.put(_SendJob(claim, channel, bookings, allowances[channel.pacing_key]))
        if unsent:
            self._record(unsent, report)

    @staticmethod
    def _unstarted(lanes: _Lanes, flight: _Flight) -> list[Returned]:
        """The sends not begun yet, taken back: given back now, not after their lease."""
        unstarted: list[Returned] = []
        for job in lanes.take_unstarted():
            if isinstance(job, _SendJob):
                unstarted.append(NotSent(flight.pending.pop(job.claim.id), Outcome.released()))
            else:  # an edit still goes: it is bounded by its notice's last moment to send
                lanes.put(job)
        return unstarted

    def _work(
        self, returned: queue.SimpleQueue[Returned | BaseException | _Wake], job: _Job
    ) -> None:
        """One job in a send thread: what it returns, or raised, goes where it is awaited."""
        if isinstance(job, _CorrectJob):
            try:
                job.result.set_result(self._correct(job.claim, job.channel))
            except BaseException as e:  # raised again where the run records the edits
                job.result.set_exception(e)
            return
        try:
            returned.put(self._send(job.claim, job.channel, job.bookings, job.allowance))
        except BaseException as e:  # raised again in the recording thread
            returned.put(e)

    def _collected(self, flight: _Flight) -> list[Returned]:
        """The next sends to return, as one group: those finished within ``GATHER`` s.

        Gathering what returns within a few milliseconds records a fast
        provider's answers in a few transactions instead of one each.
        A send still out a whole send deadline after the claim's last moment to
        start is abandoned: it may have gone out, so it becomes a retry marked
        uncertain (channels end their own sends at the deadline; this is the
        backstop for one that does not). Whatever returns later for an
        abandoned claim is ignored. A stop request returns at once with what
        has returned (perhaps nothing).
        """
        pending = flight.pending
        deadline = self.context.send_deadline
        while True:
            latest = max(c.send_by for c in pending.values()) + timedelta(seconds=deadline)
            wait_s = (latest - self.clock()).total_seconds()
            try:
                group = [flight.returned.get(timeout=max(0.0, wait_s))]
            except queue.Empty:
                now = self.clock()
                abandoned = SendResult.retry(
                    f"no answer within the send deadline ({deadline:g} s): it may have gone out",
                    uncertain=True,
                )
                done: list[Returned] = [Attempted(c, abandoned, now, now) for c in pending.values()]
                pending.clear()
                return done
            gather_end = time.monotonic() + GATHER
            while len(group) < len(pending):
                try:
                    group.append(
                        flight.returned.get(timeout=max(0.0, gather_end - time.monotonic()))
                    )
                except queue.Empty:
                    break
            done = []
            woken = False  # asked to stop: back to the loop at once, to give back the rest
            for item in group:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, _Wake):
                    woken = True
                elif pending.pop(item.claim.id, None) is not None:
                    done.append(item)
            if done or woken:
                return done

    def _settle_corrections(self, flight: _Flight, report: RunReport, *, wait: bool) -> None:
        """Record the message edits that are done (all of them, waiting, when ``wait``)."""
        if not flight.corrections:
            return
        done = [f for f in flight.corrections if wait or f.done()]
        if done:
            flight.corrections = [f for f in flight.corrections if f not in done]
            self._record_corrections(done, report)

    def _warm_up(self, ready: list[tuple[Claim, Channel]], bookings: BatchBookings) -> None:
        """Render one text per channel and kind now, before any send slot is taken.

        The first render imports Jinja2 and compiles the templates: done in the
        sender threads, on their slots, it would make the first sends late and
        then bunch them into a burst the provider answers with 429.
        """
        seen: set[tuple[str, str]] = set()
        for claim, channel in ready:
            if (claim.channel, claim.kind) not in seen:
                seen.add((claim.channel, claim.kind))
                with contextlib.suppress(Exception):  # its own send reports the failure
                    booking = bookings.claimed[claim.id]
                    build_message(claim, booking, channel, self.clock(), self.templates)

    def _prepare(self, claim: Claim) -> Channel | NotSent:
        """The claim's channel, or what becomes of it when there is none to send on."""
        if claim.channel not in CHANNELS:
            return NotSent(
                claim,
                Outcome.failed(
                    f"unknown channel {claim.channel!r} (written by a newer notifyctl?)",
                    Reason.UNKNOWN_CHANNEL,
                ),
            )
        key = sender(claim.channel, claim.recipient)
        if self._is_disabled(key):
            return NotSent(claim, Outcome.released())
        try:
            return self._channel(key)
        except ConfigError as e:
            self._disable(key, e.message)
            return NotSent(claim, Outcome.released())

    def _channel(self, name: str) -> Channel:
        """The channel object of one sender (a channel, or ``telegram:<bot>``)."""
        with self._lock:
            if name not in self._channels:
                self._channels[name] = open_sender(name, self.context)
            return self._channels[name]

    def _send(
        self, claim: Claim, channel: Channel, bookings: BatchBookings, allowance: Allowance
    ) -> Returned:
        """Wait for the claim's turn, render its text as of that moment, send it."""
        try:
            chat = chat_key(claim.channel, claim.recipient)  # per bot and chat, topics included
            turn = self._pacer.wait_turn(allowance, chat, claim.send_by, RENDER_LEAD)
        except DatabaseError as e:  # the pacing row stayed locked: give it back, unsent
            log.warning("reminder %s: no send slot (%s); given back", claim.id, e.message)
            return NotSent(claim, Outcome.released())
        if turn.late:  # its turn comes too late for this lease: give it back
            return NotSent(claim, Outcome.released(due_at=turn.at))
        key = sender(claim.channel, claim.recipient)
        if self._is_disabled(key):
            return NotSent(claim, Outcome.released())
        now = max(self.clock(), turn.at)  # the moment the request leaves
        if now >= claim.not_after:
            return NotSent(claim, Outcome.expired("not sent before it stopped being useful"))
        text = self._text(claim, channel, bookings, now)
        if isinstance(text, NotSent):
            return text
        self._pacer.sleep_until(turn.at)
        # a change that committed during the lead wins too: the copy is checked once more
        text = self._text(claim, channel, bookings, self.clock(), text)
        if isinstance(text, NotSent):
            return text
        _, message = text
        if self._stop.requested:  # given back at once: on time for the next run
            return NotSent(claim, Outcome.released())
        started = self.clock()
        try:
            result = channel.send(message)
        except Exception as e:  # a channel bug must not lose the claim
            result = SendResult.retry(redact(f"{type(e).__name__}: {e}"))
        finished = self.clock()
        if result.delivery is Delivery.RETRY_AFTER:
            try:
                self._pacer.pause(channel.pacing_key, result.retry_after or 1.0)
            except DatabaseError as e:
                log.warning("could not share a rate-limit pause: %s", e.message)
        if result.delivery is Delivery.BAD_CREDENTIALS:
            self._disable(key, f"{key}: credentials rejected ({result.error})")
        return Attempted(claim, result, started, finished)

    def _text(
        self,
        claim: Claim,
        channel: Channel,
        bookings: BatchBookings,
        now: datetime,
        rendered: tuple[BookingRow, Message] | None = None,
    ) -> tuple[BookingRow, Message] | NotSent:
        """The claim's text as of ``now``, from its booking as read at most ``FRESH`` ago.

        ``rendered`` is kept when its booking is still the current one.
        """
        try:
            booking = bookings.current(claim.id, self._patiently, claim.send_by)
        except DatabaseError:
            booking = None
        if booking is None:  # cancelled or rescheduled meanwhile: the newer intent decides
            return NotSent(claim, Outcome.released())
        if rendered is not None and rendered[0] == booking:
            return rendered
        try:
            return booking, build_message(claim, booking, channel, now, self.templates)
        except Exception as e:  # any template failure fails this reminder, not the run
            error = redact(f"template error: {type(e).__name__}: {e}")
            return NotSent(claim, Outcome.failed(error, Reason.TEMPLATE))

    # -- corrections: Telegram reminders edited in place after a change notice ------------

    def _correct(self, claim: Claim, channel: Editor) -> tuple[str, list[dict[str, Any]]]:
        """Edit the messages a delivered notice corrects; their history rows.

        Paced like sends (same bot, same chat limits), never past the claim's
        last moment to send; any failure is recorded and never touches the notice.
        """
        from .message import booking_view
        from .notices import EDITABLE_FOR
        from .texts import correction

        rows: list[dict[str, Any]] = []
        try:
            with self.store.reader() as conn:
                found = queries.notice_corrections(conn, claim.id)
            if found is None:
                return claim.channel, rows
            corrects, booking = found
            view = booking_view(booking)
            key = channel.pacing_key
            chat = chat_key(claim.channel, claim.recipient)
            for entry in corrects:
                if datetime.fromisoformat(entry["sent_at"]) <= self.clock() - EDITABLE_FOR:
                    continue  # Telegram no longer edits it: not tried
                turn = self._pacer.wait_turn(self._pacer.allowance(key, 1), chat, claim.send_by)
                if turn.late:
                    break
                self._pacer.sleep_until(turn.at)
                started = self.clock()
                text = correction(str(entry["text"]), view, claim.kind, claim.previous_starts_at)
                result = channel.edit(claim.recipient, str(entry["message_id"]), text)
                if result.delivery is Delivery.RETRY_AFTER:
                    self._pacer.pause(key, result.retry_after or 1.0)
                rows.append(_edit_row(int(entry["id"]), result, started, self.clock()))
        except Exception as e:  # an edit never fails the run, nor the notice it follows
            log.warning("notice %s: corrections stopped: %s", claim.id, redact(str(e)))
        return claim.channel, rows

    def _record_corrections(
        self, corrections: list[Future[tuple[str, list[dict[str, Any]]]]], report: RunReport
    ) -> None:
        """History rows of the edits (outcome ``edited`` / ``edit_failed``), counted once."""
        done = [future.result() for future in corrections]
        rows = [{**row, "run_id": report.run_id} for _, edits in done for row in edits]
        if not rows:
            return
        deadline = self.clock() + timedelta(seconds=self.context.send_deadline)

        def write() -> None:
            with self.store.transaction() as conn:
                queries.insert_attempts(conn, rows)

        try:
            self._patiently(write, deadline)
        except DatabaseError as e:
            log.warning("could not record %d message edit(s): %s", len(rows), e.message)
            return
        for channel, edits in done:
            for row in edits:
                report.count(row["outcome"], channel)
        for row in rows:
            log.info(
                "reminder %s %s",
                row["notification_id"],
                row["outcome"],
                extra={"action": row["outcome"], "notification_id": row["notification_id"]},
            )

    # -- recording ---------------------------------------------------------------------

    def _patiently(self, work: Callable[[], T], deadline: datetime) -> T:
        """Run ``work`` again while the database is busy or away, until ``deadline``.

        SQLite's busy timeout is per statement and PostgreSQL may restart under
        a run: a write this run depends on (an outcome after a send, a pacing
        reservation) keeps trying for as long as the lease allows, because
        giving up on an outcome means the message is sent again later.
        """
        delay = 0.05
        while True:
            try:
                return work()
            except DatabaseError:
                if self.clock() + timedelta(seconds=delay) >= deadline:
                    raise
                self.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _record(self, group: list[Returned], report: RunReport) -> None:
        """Apply the outcomes that have returned, together: one fenced transaction.

        The one writer of a claim's fate. Every write is fenced by its own lease
        token (``queries.record_outcomes``), so a run that lost its lease (to a
        rescuer, a reschedule or a cancel) writes nothing over the newer owner;
        the attempts it made still go to the history. A recipient that is gone
        is suppressed here, whoever holds the lease: the provider said so.
        """
        now = self.clock()
        decided: list[Decided] = []
        for item in group:
            if isinstance(item, NotSent):
                decided.append((item.claim, item.outcome, None))
                continue
            claim, result = item.claim, item.result
            outcome = decide(result, claim.attempts, now, claim.not_after, self.options, self.rng)
            decided.append((claim, outcome, item))
        deadline = min(claim.lease_expires for claim, _, _ in decided)

        def write() -> tuple[list[Decided], set[int], Moved]:
            with self.store.transaction() as conn:
                elsewhere = _suppress_gone(conn, decided, now, report.run_id)
                final = _along_chains(conn, decided, now)
                won = _apply_outcomes(conn, final, now)
                back = [c.id for c, o, _ in final if c.id in won and o.status is Status.PENDING]
                elsewhere = elsewhere.plus(health.leave_suppressed(conn, back, now, report.run_id))
                attempts = [
                    _attempt_row(sent, report.run_id, outcome)
                    for _, outcome, sent in final
                    if sent is not None
                ]
                queries.insert_attempts(conn, attempts)
            return final, won, elsewhere

        final, won, elsewhere = self._patiently(write, deadline)
        for claim, outcome, _ in final:
            self._report(claim, outcome, claim.id in won, report)
        for channel in elsewhere.fallbacks:
            report.count(Action.FALLBACK, channel)

    @staticmethod
    def _report(claim: Claim, outcome: Outcome, won: bool, report: RunReport) -> None:
        """Count and log one outcome, once, after it was committed."""
        if not won:
            report.count(Action.LEASE_LOST)
            log.warning(
                "reminder %s: lease lost, outcome %s not recorded",
                claim.id,
                outcome.action,
                extra={"action": Action.LEASE_LOST},
            )
            return
        report.count(outcome.action, claim.channel)
        log.info(
            "reminder %s %s:%s %s%s",
            claim.id,
            claim.channel,
            shown_recipient(claim.recipient),
            outcome.action,
            f" ({outcome.error})" if outcome.error else "",
            extra={"action": outcome.action, "notification_id": claim.id},
        )


def _delivered_notice(item: Returned) -> bool:
    from .kinds import is_notice

    return (
        isinstance(item, Attempted)
        and item.result.delivery is Delivery.SENT
        and is_notice(item.claim.kind)
    )


def _edit_row(
    reminder_id: int, result: SendResult, started: datetime, finished: datetime
) -> dict[str, Any]:
    """The delivery_attempts row of one edit, against the reminder it corrected."""
    edited = result.delivery is Delivery.SENT
    return {
        "notification_id": reminder_id,
        "run_id": None,
        "started_at": started,
        "finished_at": finished,
        "outcome": Action.EDITED if edited else Action.EDIT_FAILED,
        "http_status": result.http_status,
        "error": None if edited else redact(result.error or "edit refused"),
        "uncertain": False,
    }


def _superseded(claim: Claim) -> NotSent:
    error = "superseded by a later reminder for the same booking"
    return NotSent(claim, Outcome.expired(error, Reason.SUPERSEDED))


Decided = tuple["Claim", Outcome, "Attempted | None"]


def _suppress_gone(
    conn: Connection, decided: list[Decided], now: datetime, run_id: int | None
) -> Moved:
    """Suppress each recipient an answer called gone; its other reminders move on or end."""
    moved = Moved()
    for claim, outcome, _ in decided:
        if outcome.suppress:
            detail = redact(outcome.error or "gone")
            done = health.suppress(conn, (claim.channel, claim.recipient), detail, now, run_id)
            moved = moved.plus(done)
    return moved


def _along_chains(conn: Connection, decided: list[Decided], now: datetime) -> list[Decided]:
    """A send that failed or expired on a chain tries its next alternative (SPEC §11)."""
    chains = [
        claim.route
        for claim, _, sent in decided
        if sent is not None and has_next(claim.route, claim.alternative)
    ]
    if not chains:
        return decided
    suppressed = health.suppressed_for(conn, chains)
    return [
        (claim, along_chain(outcome, claim.route, claim.alternative, suppressed, now), sent)
        if sent is not None
        else (claim, outcome, sent)
        for claim, outcome, sent in decided
    ]


def _apply_outcomes(conn: Connection, decided: list[Decided], now: datetime) -> set[int]:
    """Write each outcome where its lease still holds; the ids that won."""
    writes = [
        queries.FencedWrite(
            claim.id,
            claim.lease_token,
            _outcome_values(claim, outcome, sent.result if sent else None, now),
            outcome.give_back_attempt,
        )
        for claim, outcome, sent in decided
        if outcome.moved_to is None
    ]
    won = queries.record_outcomes(conn, writes)
    for claim, outcome, _ in decided:
        if outcome.moved_to is not None and _move(conn, claim, outcome, now):
            won.add(claim.id)
    return won


def _move(conn: Connection, claim: Claim, outcome: Outcome, now: datetime) -> bool:
    """The chat moved (Telegram group → supergroup): follow it, with its other reminders."""
    assert outcome.moved_to is not None
    values = _outcome_values(claim, outcome, None, now)
    route = list(alternatives(claim.route))
    route[claim.alternative] = (claim.channel, outcome.moved_to)
    if queries.route_taken(conn, claim.id, route_text(tuple(route))):
        values.update(
            status=Status.CANCELLED,
            reason=Reason.DUPLICATE,
            last_error=f"duplicate: chat moved to {outcome.moved_to}",
        )
    else:
        values.update(recipient=outcome.moved_to, route=route_text(tuple(route)))
    won = queries.record_outcome(conn, claim.id, claim.lease_token, values, give_back_attempt=True)
    if won:
        queries.retarget_recipient(conn, claim.channel, claim.recipient, outcome.moved_to, now)
        queries.remember_chat_move(conn, claim.channel, claim.recipient, outcome.moved_to, now)
    return won


def _outcome_values(
    claim: Claim, outcome: Outcome, result: SendResult | None, now: datetime
) -> dict[str, Any]:
    """The columns one outcome writes (a release touches nothing but its lease)."""
    if outcome.next_alternative is not None:
        why = f"{outcome.reason}: {outcome.error}"
        left = (claim.channel, claim.recipient)
        return health.moved_on(left, outcome.next_alternative, why, now, now)
    values: dict[str, Any] = {"status": outcome.status, "updated_at": now}
    if outcome.action not in (Action.RELEASED, Action.BAD_CREDENTIALS):
        values.update(last_error=outcome.error, reason=outcome.reason)
    if outcome.status is Status.SENT:
        values.update(
            sent_at=now,
            provider_message_id=result.provider_id if result else None,
            last_error=None,
        )
        if result is not None and result.shown_text is not None:
            values["sent_text"] = result.shown_text  # what a change notice may correct
    if outcome.due_at is not None:
        values["due_at"] = outcome.due_at
    return values


def _attempt_row(sent: Attempted, run_id: int | None, outcome: Outcome) -> dict[str, Any]:
    """The delivery_attempts row of one send (its error already redacted once more)."""
    result = sent.result
    error = redact(result.error) if result.error else None
    if outcome.next_alternative is not None:  # the history says why the alternative was left
        left = (sent.claim.channel, sent.claim.recipient)
        error = health.left_for(left, f"{outcome.reason}: {error}", outcome.next_alternative)
    return {
        "notification_id": sent.claim.id,
        "run_id": run_id,
        "started_at": sent.started,
        "finished_at": sent.finished,
        "outcome": outcome.action,
        "http_status": result.http_status,
        "error": error,
        "uncertain": result.uncertain,
        "channel": sent.claim.channel,
    }
