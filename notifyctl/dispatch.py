"""One dispatch run: expire, rescue, then claim → send → record until done.

Sends happen outside any transaction, in a thread pool; the calling thread
records each outcome as soon as it returns, in its own short transaction,
fenced by the lease token. Decisions (``decide``, ``decide_retry``,
``backoff_seconds``) are pure functions of values and ``now``.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import Row

from . import queries
from .channels import CHANNELS, channel_module, shown_recipient
from .channels.base import Channel, ChannelContext, Delivery, Message, SendResult
from .config import Settings, redact
from .errors import ConfigError, ExitCode, NotFound
from .models import Status
from .runs import BACKOFF_CAP, DispatchOptions, RunReport

__all__ = ["DispatchOptions", "Dispatcher", "RunReport", "decide", "decide_retry"]
from .service import Store

if TYPE_CHECKING:
    from .texts import Rendered, TemplateSet, TextFormat

log = logging.getLogger("notifyctl.dispatch")

JITTER = 0.2


# --- pure decisions -------------------------------------------------------------------


def backoff_seconds(attempt: int, base: float, cap: float = BACKOFF_CAP) -> float:
    """Exact schedule: base, 2*base, 4*base … capped (attempt counts from 1)."""
    return float(min(cap, base * 2 ** min(max(0, attempt - 1), 62)))


def jittered(seconds: float, rng: random.Random) -> float:
    """±20 % so that a burst of failures does not retry in lockstep."""
    return seconds * rng.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class Outcome:
    """What one attempt does to its reminder; built only by the constructors below."""

    status: Status
    action: str  # the attempt's outcome label (history, logs, counters)
    due_at: datetime | None = None
    error: str | None = None
    give_back_attempt: bool = False
    moved_to: str | None = None

    @classmethod
    def sent(cls) -> Outcome:
        return cls(Status.SENT, "sent")

    @classmethod
    def retry(cls, at: datetime, error: str | None) -> Outcome:
        return cls(Status.PENDING, "retry", due_at=at, error=error)

    @classmethod
    def rate_limited(cls, at: datetime, error: str | None) -> Outcome:
        return cls(Status.PENDING, "rate_limited", due_at=at, error=error, give_back_attempt=True)

    @classmethod
    def chat_moved(cls, new_chat: str, now: datetime, error: str | None) -> Outcome:
        return cls(
            Status.PENDING,
            "moved",
            due_at=now,
            error=error,
            give_back_attempt=True,
            moved_to=new_chat,
        )

    @classmethod
    def failed(cls, error: str | None) -> Outcome:
        return cls(Status.FAILED, "failed", error=error)

    @classmethod
    def expired(cls, error: str) -> Outcome:
        return cls(Status.EXPIRED, "expired", error=error)


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
        return Outcome.failed(f"gave up after {attempts} attempts: {error}")
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
    """SendResult → Outcome (SPEC §5 Outcomes). BAD_CREDENTIALS is handled by the run."""
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
    return Outcome.failed(result.error)


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


@dataclass
class Sent:
    claim: Claim
    result: SendResult | None  # None: not sent (the run stopped first)
    started: datetime
    finished: datetime
    outcome: Outcome | None = None  # decided without sending (template error, too late)
    due_again: datetime | None = None  # not sent, given back due then (its turn came late)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        options: DispatchOptions,
        *,
        stdout: TextIO,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        http_session: Any = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.options = options.validate()
        self.clock = store.clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.monotonic = monotonic
        self.context = ChannelContext(settings=settings, stdout=stdout, http_session=http_session)
        self._channels: dict[str, Channel] = {}
        self._stop = threading.Event()
        self._stop_error: str | None = None
        self._pacer: Any = None
        self.templates = load_templates(settings)

    # -- maintenance -------------------------------------------------------------------

    def _maintain(self, report: RunReport) -> None:
        now = self.clock()
        with self.store.transaction() as conn:
            report.expired += queries.expire_useless(conn, now)
            report.expired += queries.expire_superseded(conn, now)
            rescued = queries.rescue_expired_leases(conn, now, self.options.max_attempts)
            report.rescued += len(rescued.requeued)
            report.failed += len(rescued.failed)
            due_channels = queries.due_channels(conn, now)
            report.run_id = queries.start_run(conn, socket.gethostname(), os.getpid(), now)
        for name in due_channels:
            if name in CHANNELS:
                channel_module(name).check_config(self.settings)

    # -- the run -----------------------------------------------------------------------

    def run(self) -> RunReport:
        started = self.monotonic()
        report = RunReport()
        try:
            self._maintain(report)
            self._loop(report, started)
        except ConfigError as e:
            report.exit_code, report.error = e.exit_code, e.message
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

    def _loop(self, report: RunReport, started: float) -> None:
        from .pacing import Pacer

        self._pacer = Pacer(self.store.engine, self.options.rate_limit, self.clock, self.sleep)
        lease = timedelta(seconds=self.options.lease_seconds)
        # a send must start well before the lease runs out, or a rescuer may resend it
        lease_s = self.options.lease_seconds
        margin = timedelta(seconds=min(lease_s / 2, lease_s * 0.2 + self.context.read_timeout))
        with ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="send") as pool:
            while self.monotonic() - started < self.options.max_seconds:
                now = self.clock()
                token = str(uuid.uuid4())
                with self.store.transaction() as conn:
                    rows = queries.claim_due(conn, now, self.options.batch_size, token, lease)
                    bookings = queries.bookings_by_id(conn, (r.booking_id for r in rows))
                if not rows:
                    return
                report.claimed += len(rows)
                self._send_batch(pool, rows, token, bookings, report, now + lease - margin)
                if self._stop.is_set():
                    raise ConfigError(self._stop_error or "bad credentials")

    def _send_batch(
        self,
        pool: ThreadPoolExecutor,
        rows: list[Row[Any]],
        token: str,
        bookings: dict[int, Row[Any]],
        report: RunReport,
        send_by: datetime,
    ) -> None:
        ready: list[tuple[Claim, Channel, Message]] = []
        unsent: list[Sent] = []  # decided without sending (template error, unknown channel)
        for row in rows:
            claim = Claim(
                row.id,
                token,
                row.channel,
                row.recipient,
                row.kind,
                row.attempts,
                row.not_after,
                send_by,
            )
            prepared = self._prepare(claim, bookings[row.booking_id])
            if isinstance(prepared, Sent):
                unsent.append(prepared)
            else:
                ready.append((claim, *prepared))
        # announce the whole batch first, so shared send slots are reserved in one block
        for key, count in Counter(c.pacing_key for _, c, _ in ready).items():
            self._pacer.expect(key, count)
        futures = {pool.submit(self._send, claim, c, message) for claim, c, message in ready}
        if unsent:
            self._record(unsent, report)
        for group in _completed(futures):
            self._record(group, report)

    def _prepare(self, claim: Claim, booking: Row[Any]) -> tuple[Channel, Message] | Sent:
        """The channel and rendered message, or an outcome decided without sending."""
        now = self.clock()
        if claim.channel not in CHANNELS:
            return Sent(
                claim,
                None,
                now,
                now,
                Outcome.failed(
                    f"unknown channel {claim.channel!r} (written by a newer notifyctl?)"
                ),
            )
        try:
            channel = self._channel(claim.channel)
        except ConfigError as e:
            self._stop_run(e.message)
            return Sent(claim, None, now, now)
        try:
            message = build_message(claim, booking, channel, now, self.templates)
        except Exception as e:  # any template failure fails this reminder, not the run
            return Sent(
                claim,
                None,
                now,
                now,
                Outcome.failed(redact(f"template error: {type(e).__name__}: {e}")),
            )
        return channel, message

    def _channel(self, name: str) -> Channel:
        if name not in self._channels:
            self._channels[name] = channel_module(name).open_channel(self.context)
        return self._channels[name]

    def _send(self, claim: Claim, channel: Channel, message: Message) -> Sent:
        if self._stop.is_set():
            now = self.clock()
            return Sent(claim, None, now, now)
        late_turn = self._pacer.wait_turn(channel.pacing_key, claim.recipient, claim.send_by)
        if late_turn is not None:  # its turn comes too late for this lease: give it back
            now = self.clock()
            return Sent(claim, None, now, now, due_again=late_turn)
        started = self.clock()
        if self._stop.is_set():
            return Sent(claim, None, started, started)
        if started >= claim.not_after:
            return Sent(
                claim,
                None,
                started,
                started,
                Outcome.expired("not sent before it stopped being useful"),
            )
        try:
            result = channel.send(message)
        except Exception as e:  # a channel bug must not lose the claim
            result = SendResult.retry(redact(f"{type(e).__name__}: {e}"))
        finished = self.clock()
        if result.delivery is Delivery.RETRY_AFTER:
            self._pacer.pause(channel.pacing_key, result.retry_after or 1.0)
        if result.delivery is Delivery.BAD_CREDENTIALS:
            self._stop_run(f"{claim.channel}: credentials rejected ({result.error})")
        return Sent(claim, result, started, finished)

    def _stop_run(self, error: str) -> None:
        if not self._stop.is_set():
            self._stop_error = error
            self._stop.set()

    # -- recording ---------------------------------------------------------------------

    def _record(self, group: list[Sent], report: RunReport) -> None:
        """Record the outcomes that have returned, together: one short transaction.

        Every write is still fenced by its own lease token (``queries.record_outcomes``);
        grouping saves a BEGIN/COMMIT, a disk flush and a statement per reminder.
        """
        now = self.clock()
        attempts: list[dict[str, Any]] = []
        decided: list[tuple[Claim, Outcome]] = []
        writes: list[queries.FencedWrite] = []
        released: list[int] = []
        moved: list[tuple[Claim, Outcome]] = []
        for sent in group:
            claim, result = sent.claim, sent.result
            if (result is None and sent.outcome is None) or (
                result is not None and result.delivery is Delivery.BAD_CREDENTIALS
            ):
                # never sent, or sent with credentials the provider refused: give it back
                if result is not None:
                    attempts.append(_attempt_row(sent, report.run_id, "bad_credentials"))
                give_back = {"status": Status.PENDING, "updated_at": now}
                if sent.due_again is not None:
                    give_back["due_at"] = sent.due_again
                writes.append(queries.FencedWrite(claim.id, claim.lease_token, give_back, True))
                released.append(claim.id)
                continue
            if sent.outcome is not None:
                outcome = sent.outcome
            else:
                assert result is not None  # a Sent without outcome was sent
                outcome = decide(
                    result, claim.attempts, now, claim.not_after, self.options, self.rng
                )
            if result is not None:
                attempts.append(_attempt_row(sent, report.run_id, outcome.action))
            if outcome.moved_to is not None:
                moved.append((claim, outcome))
                continue
            writes.append(
                queries.FencedWrite(
                    claim.id,
                    claim.lease_token,
                    _outcome_values(outcome, result, now),
                    outcome.give_back_attempt,
                )
            )
            decided.append((claim, outcome))
        with self.store.transaction() as conn:
            won = queries.record_outcomes(conn, writes)
            won.update(
                claim.id for claim, outcome in moved if self._move(conn, claim, outcome, now)
            )
            queries.insert_attempts(conn, attempts)
        report.released += sum(1 for notification_id in released if notification_id in won)
        for claim, outcome in [*decided, *moved]:
            self._report(claim, outcome, claim.id in won, report)

    @staticmethod
    def _move(conn: Any, claim: Claim, outcome: Outcome, now: datetime) -> bool:
        """The chat moved (Telegram group → supergroup): follow it, with its other reminders."""
        assert outcome.moved_to is not None
        values = _outcome_values(outcome, None, now)
        if queries.recipient_taken(conn, claim.id, outcome.moved_to):
            values.update(
                status=Status.CANCELLED, last_error=f"duplicate: chat moved to {outcome.moved_to}"
            )
        else:
            values["recipient"] = outcome.moved_to
        won = queries.record_outcome(
            conn, claim.id, claim.lease_token, values, give_back_attempt=True
        )
        if won:
            queries.retarget_recipient(conn, claim.channel, claim.recipient, outcome.moved_to, now)
        return won

    @staticmethod
    def _report(claim: Claim, outcome: Outcome, won: bool, report: RunReport) -> None:
        """Count and log one outcome, once, after it was committed."""
        if not won:
            report.lost_lease += 1
            log.warning(
                "reminder %s: lease lost, outcome %s not recorded",
                claim.id,
                outcome.action,
                extra={"action": "lease_lost"},
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


def _outcome_values(outcome: Outcome, result: SendResult | None, now: datetime) -> dict[str, Any]:
    """The columns one outcome writes."""
    values: dict[str, Any] = {
        "status": outcome.status,
        "updated_at": now,
        "last_error": outcome.error,
    }
    if outcome.status is Status.SENT:
        values.update(
            sent_at=now,
            provider_message_id=result.provider_id if result else None,
            last_error=None,
        )
    if outcome.due_at is not None:
        values["due_at"] = outcome.due_at
    return values


def _completed(futures: set[Future[Sent]]) -> Iterator[list[Sent]]:
    """The sends that have returned, in groups: whatever finished since the last look."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield [future.result() for future in done]


def _attempt_row(sent: Sent, run_id: int | None, outcome: str) -> dict[str, Any]:
    """The delivery_attempts row of one send (its error already redacted once more)."""
    result = sent.result
    assert result is not None
    return {
        "notification_id": sent.claim.id,
        "run_id": run_id,
        "started_at": sent.started,
        "finished_at": sent.finished,
        "outcome": outcome,
        "http_status": result.http_status,
        "error": redact(result.error) if result.error else None,
        "uncertain": result.uncertain,
    }


def booking_view(row: Row[Any]) -> Any:
    from .texts import Booking

    return Booking(
        booking_id=row.external_id,
        title=row.title,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        timezone=row.timezone,
        locale=row.locale,
        data=dict(row.data or {}),
    )


def load_templates(settings: Settings) -> TemplateSet | None:
    """The operator's templates (``NOTIFYCTL_TEMPLATES``), or None for the built-in texts."""
    if not settings.templates_path:
        return None
    from .texts import TemplateSet

    return TemplateSet.load(settings.templates_path)


def render_for(
    booking: Row[Any],
    kind: str,
    channel: str,
    recipient: str,
    now: datetime,
    templates: TemplateSet | None,
    *,
    text_format: TextFormat = "plain",
    max_length: int | None = None,
    parts: frozenset[str] = frozenset(),
) -> tuple[Rendered, dict[str, Any]]:
    """The rendered text of one reminder, true at ``now``, and the variables it saw."""
    from .texts import BUILTIN, context, render_template

    view = booking_view(booking)
    variables = context(view, kind, recipient, channel, now)
    template = templates.lookup(view.locale, kind, channel) if templates else BUILTIN
    rendered = render_template(
        template, variables, text_format=text_format, max_length=max_length, parts=parts
    )
    return rendered, variables


def build_message(
    claim: Claim,
    booking: Row[Any],
    channel: Channel,
    now: datetime,
    templates: TemplateSet | None = None,
) -> Message:
    """The message for one claimed reminder, rendered for its channel."""
    rendered, variables = render_for(
        booking,
        claim.kind,
        claim.channel,
        claim.recipient,
        now,
        templates,
        text_format=channel.text_format,
        max_length=channel.max_text_length,
        parts=channel.parts,
    )
    view = booking_view(booking)
    payload = {
        "notification_id": claim.id,
        "booking_id": view.booking_id,
        "kind": claim.kind,
        "recipient": claim.recipient,
        "title": view.title,
        "starts_at": view.starts_at.isoformat(),
        "ends_at": view.ends_at.isoformat(),
        "starts_at_local": variables["start"].isoformat(),
        "ends_at_local": variables["end"].isoformat(),
        "timezone": view.timezone,
        "data": view.data,
    }
    return Message(
        notification_id=claim.id,
        booking_id=view.booking_id,
        kind=claim.kind,
        recipient=claim.recipient,
        text=rendered.text,
        text_format=rendered.text_format,
        subject=rendered.subject,
        html=rendered.html,
        payload=payload,
    )


# --- dry run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    id: int
    channel: str
    recipient: str
    kind: str
    text: str


def preview(store: Store, settings: Settings, limit: int = 1000) -> list[Preview]:
    """What a run would send now, rendered; nothing is written."""
    now = store.clock()
    with store.reader() as conn:
        rows = queries.due_preview(conn, now, limit)
        bookings = queries.bookings_by_id(conn, (r.booking_id for r in rows))
    return _previews(rows, bookings, lambda _row: now, load_templates(settings))


def preview_booking(
    store: Store, settings: Settings, booking_id: str, kind: str | None = None
) -> list[Preview]:
    """The text each recipient of a booking would get, rendered as of when it is due."""
    now = store.clock()
    with store.reader() as conn:
        rows = queries.reminders_of(conn, booking_id, kind)
        if not rows:
            raise NotFound(
                f"no reminders for booking {booking_id!r}" + (f" of kind {kind}" if kind else "")
            )
        bookings = queries.bookings_by_id(conn, (r.booking_id for r in rows))
    return _previews(rows, bookings, lambda row: max(now, row.due_at), load_templates(settings))


def _previews(
    rows: list[Row[Any]],
    bookings: dict[int, Row[Any]],
    when: Callable[[Row[Any]], datetime],
    templates: Any,
) -> list[Preview]:
    previews = []
    for row in rows:
        try:
            rendered, _ = render_for(
                bookings[row.booking_id],
                row.kind,
                row.channel,
                row.recipient,
                when(row),
                templates,
            )
            text = rendered.text
        except Exception as e:  # show the failure the run would record
            text = redact(f"<template error: {type(e).__name__}: {e}>")
        previews.append(
            Preview(row.id, row.channel, shown_recipient(row.recipient), row.kind, text)
        )
    return previews
