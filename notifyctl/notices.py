"""Change notices (SPEC §10): who is told when a booking moves or is cancelled.

The one place notices are decided and planned: ``notice_for`` is pure (a
booking's change, what one recipient was told, ``now``); ``plan_notices``
turns the reminders ``create`` or ``cancel`` read under lock into the rows to
write, in the caller's transaction. A notice is a row of ``notifications``
(kind ``rescheduled`` or ``cancelled``), due at once, sent by ``dispatch``
like any reminder; at most one per booking, kind and recipient (the table's
unique key), so a notice that went out is armed again for the next change.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from sqlalchemy import Connection

from . import queries
from .kinds import CANCELLED, NOTICE_KINDS, RESCHEDULED, is_notice
from .models import Reason, Status
from .queries import ReminderRow
from .routes import Address, alternatives, first_available

Span = tuple[datetime, datetime]  # (starts_at, ends_at)
Who = str  # a route (routes.py): the recipient, or the chain of alternatives, told

#: Telegram lets a bot edit its messages for about this long
EDITABLE_FOR = timedelta(hours=48)
#: channels whose sent messages a notice corrects in place
EDITING_CHANNELS = ("telegram",)

DETAIL = {
    Reason.MOVED_BACK: "the booking went back to the times the recipient was told",
    Reason.REPLACED: "the booking was cancelled: a cancel notice replaces this one",
    Reason.REBOOKED: "the booking was booked again before the notice went out",
}


class Step(enum.Enum):
    NONE = "none"  # nothing to tell
    QUEUE = "queue"  # a new notice, due now (a row that already went out is armed again)
    UPDATE = "update"  # the pending notice stays, with its earliest "was" and a new not_after
    WITHDRAW = "withdraw"  # the pending notice is cancelled: nothing is left to tell


@dataclass(frozen=True)
class Change:
    """What happened to a booking: ``before`` are its times as they were."""

    event: Literal["moved", "cancelled", "rebooked"]
    before: Span
    after: Span | None = None  # the new times of a move


@dataclass(frozen=True)
class Told:
    """What one recipient has of a booking, before the change is written."""

    received: bool  # a reminder or notice went out to it (or a notice is going out now)
    pending_move: Span | None = None  # the "was" of its pending ``rescheduled`` notice
    pending_cancel: bool = False  # a ``cancelled`` notice is pending


@dataclass(frozen=True)
class Decision:
    step: Step
    kind: str | None = None
    was: Span | None = None  # the times the recipient was told
    not_after: datetime | None = None
    withdraw_reason: Reason | None = None


NOTHING = Decision(Step.NONE)


def notice_for(change: Change, told: Told, now: datetime) -> Decision:
    """The notice one recipient gets for one change of a booking (pure).

    A move after a reminder went out queues ``rescheduled`` (useless after the
    old or the new start, whichever is later); a second move before it went out
    updates it, keeping the earliest "was"; a move back to that "was" withdraws
    it. A cancel queues ``cancelled`` (useless after the start the recipient
    knows) and replaces a pending ``rescheduled``; booking it again withdraws a
    pending ``cancelled``. Recipients who received nothing get nothing.
    """
    if change.event == "rebooked":
        if told.pending_cancel:
            return Decision(Step.WITHDRAW, CANCELLED, withdraw_reason=Reason.REBOOKED)
        return NOTHING
    if change.event == "cancelled":
        if not told.received:
            return NOTHING
        was = told.pending_move or change.before
        not_after = max(was[0], change.before[0])
        if not_after <= now:
            return NOTHING
        return Decision(Step.QUEUE, CANCELLED, was, not_after)
    assert change.after is not None
    if told.pending_move is not None:
        if told.pending_move == change.after:
            return Decision(Step.WITHDRAW, RESCHEDULED, withdraw_reason=Reason.MOVED_BACK)
        not_after = max(told.pending_move[0], change.after[0])
        return Decision(Step.UPDATE, RESCHEDULED, told.pending_move, not_after)
    if not told.received:
        return NOTHING
    not_after = max(change.before[0], change.after[0])
    if not_after <= now:
        return NOTHING
    return Decision(Step.QUEUE, RESCHEDULED, change.before, not_after)


# --- planning: the rows to write -------------------------------------------------------


@dataclass
class NoticePlan:
    """Every notice write of one create or cancel call."""

    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # rows carry ``n_id``
    withdrawals: dict[Reason, list[int]] = field(default_factory=dict)

    def apply_withdrawals(self, conn: Connection, now: datetime) -> None:
        for reason, ids in self.withdrawals.items():
            queries.finish_unsent(conn, ids, Status.CANCELLED, reason, DETAIL[reason], now)
        self.withdrawals = {}

    def apply(self, conn: Connection, now: datetime) -> None:
        self.apply_withdrawals(conn, now)
        queries.insert_notices(conn, self.inserts)
        queries.update_notices(conn, self.updates)


def _told(rows: Sequence[ReminderRow]) -> dict[Who, Told]:
    """Per route: what it received and which notices are pending (rows before the change)."""
    received: set[Who] = set()
    moves: dict[Who, Span] = {}
    cancels: set[Who] = set()
    recipients: set[Who] = set()
    for row in rows:
        who = row.route
        recipients.add(who)
        # a notice being sent may already be out: the next change is told again
        if row.status == Status.SENT or (is_notice(row.kind) and row.status == Status.SENDING):
            received.add(who)
        elif row.status == Status.PENDING and row.kind == RESCHEDULED:
            assert row.previous_starts_at is not None
            assert row.previous_ends_at is not None
            moves[who] = (row.previous_starts_at, row.previous_ends_at)
        elif row.status == Status.PENDING and row.kind == CANCELLED:
            cancels.add(who)
    return {
        who: Told(who in received or who in moves, moves.get(who), who in cancels)
        for who in recipients
    }


def _reached_on(rows: Sequence[ReminderRow], who: Who) -> int:
    """The alternative of the chain that delivered its latest reminder (0 if none did)."""
    sent = [r for r in rows if r.route == who and r.status == Status.SENT and r.sent_at]
    return max(sent, key=lambda r: (r.sent_at, r.id)).alternative if sent else 0


def _corrects(rows: Sequence[ReminderRow], to: Address, now: datetime) -> list[dict[str, Any]]:
    """The messages to this address a notice corrects in place: sent reminders that can
    still be edited, and those its earlier notices corrected (one entry per message)."""
    if to[0] not in EDITING_CHANNELS:
        return []
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        if (row.channel, row.recipient) != to:
            continue
        if is_notice(row.kind):
            for entry in row.corrects or []:
                found.setdefault(str(entry["message_id"]), entry)
        elif row.status == Status.SENT and row.provider_message_id and row.sent_text:
            assert row.sent_at is not None
            found[row.provider_message_id] = {
                "id": row.id,
                "message_id": row.provider_message_id,
                "text": row.sent_text,
                "sent_at": row.sent_at.isoformat(),
            }
    fresh = [e for e in found.values() if datetime.fromisoformat(e["sent_at"]) > now - EDITABLE_FOR]
    return sorted(fresh, key=lambda e: e["sent_at"])


class Counted(NamedTuple):
    queued: int  # notices that will tell this change (new, armed again or updated)
    withdrawn: int  # pending notices cancelled: nothing is left to tell


def plan_notices(
    booking_id: int,
    change: Change,
    rows: Sequence[ReminderRow],
    now: datetime,
    plan: NoticePlan,
    suppressed: Container[Address] = (),
) -> Counted:
    """Add the notices of one booking's change to ``plan``; what it queues and withdraws.

    ``rows`` are every reminder and notice of the booking, read under lock
    before any other write of the change (a reschedule re-arms sent reminders).
    A notice follows its reminders' chain: it starts on the alternative that
    delivered the latest of them (skipping ``suppressed`` ones) and falls back
    along the rest like a reminder.
    """
    existing = {(r.kind, r.route): r for r in rows if is_notice(r.kind)}
    queued = withdrawn = 0
    for who, told in sorted(_told(rows).items()):
        decision = notice_for(change, told, now)
        if decision.step is Step.NONE:
            continue
        assert decision.kind is not None
        row = existing.get((decision.kind, who))
        if decision.step is Step.WITHDRAW:
            assert row is not None
            assert decision.withdraw_reason is not None
            plan.withdrawals.setdefault(decision.withdraw_reason, []).append(row.id)
            withdrawn += 1
            continue
        if change.event == "cancelled" and told.pending_move is not None:
            pending = existing[(RESCHEDULED, who)]
            plan.withdrawals.setdefault(Reason.REPLACED, []).append(pending.id)
        assert decision.was is not None
        assert decision.not_after is not None
        chain = alternatives(who)
        start = first_available(chain, suppressed, _reached_on(rows, who)) or first_available(
            chain, suppressed
        )
        if start is None:  # every alternative is suppressed: nobody to tell
            continue
        position, to = start
        values = {
            "previous_starts_at": decision.was[0],
            "previous_ends_at": decision.was[1],
            "not_after": decision.not_after,
            "corrects": _corrects(rows, to, now) or None,
            "channel": to[0],
            "recipient": to[1],
            "alternative": position,
            "updated_at": now,
        }
        queued += 1
        if decision.step is Step.UPDATE:
            assert row is not None
            plan.updates.append({"n_id": row.id, **values})
            continue
        armed = {
            **values,
            "scheduled_at": now,
            "due_at": now,
            "status": Status.PENDING.value,
            "attempts": 0,
        }
        if row is None:
            plan.inserts.append(
                {
                    "booking_id": booking_id,
                    "kind": decision.kind,
                    "route": who,
                    "created_at": now,
                    **armed,
                }
            )
        else:  # it went out for an earlier change (or is going out): armed for this one
            plan.updates.append(
                {
                    "n_id": row.id,
                    **armed,
                    "last_error": None,
                    "reason": None,
                    "sent_at": None,
                    "provider_message_id": None,
                    "sent_text": None,
                    "lease_token": None,  # one being sent now: its outcome goes to history only
                    "lease_expires_at": None,
                }
            )
    return Counted(queued, withdrawn)


__all__ = ["NOTICE_KINDS", "Change", "Decision", "NoticePlan", "Step", "Told", "notice_for"]
