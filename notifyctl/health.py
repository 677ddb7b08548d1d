"""Recipient health (SPEC §11): a recipient that is gone is suppressed, and the reminders
waiting for it move on along their chains (or end).

Everything here runs inside the caller's transaction: the dispatch writer's
(the answer that said "gone"), rescue's, or ``recipients unsuppress``.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from . import queries
from .models import Reason, RecipientState, Status
from .queries import DueReminder
from .routes import (
    Address,
    Route,
    Suppressed,
    alternatives,
    first_available,
    health_key,
    health_keys,
    shown_address,
)
from .runs import Action


def suppressed_for(conn: Connection, routes: Iterable[str]) -> Suppressed:
    """The suppressed alternatives of these routes (stored texts)."""
    return suppressed_among(conn, (alternatives(route) for route in routes))


def suppressed_among(conn: Connection, routes: Iterable[Route]) -> Suppressed:
    """The suppressed alternatives of these routes."""
    return Suppressed(queries.suppressed_among(conn, health_keys(routes)))


def moved_on(
    left: Address, to: tuple[int, Address], why: str, due_at: datetime, now: datetime
) -> dict[str, Any]:
    """The columns that move a reminder from ``left`` to its chain's alternative ``to``."""
    position, (channel, recipient) = to
    return {
        "channel": channel,
        "recipient": recipient,
        "alternative": position,
        "attempts": 0,
        "due_at": due_at,
        "status": Status.PENDING,
        "reason": None,
        "last_error": f"left {shown_address(left)}: {why}",
        "updated_at": now,
    }


def left_for(left: Address, why: str, to: tuple[int, Address]) -> str:
    """What the history says of a fallback: which alternative was left, why, and for which."""
    position, address = to
    return (
        f"left {shown_address(left)}: {why}; "
        f"next: alternative {position + 1} ({shown_address(address)})"
    )


def fallback_history(
    row: DueReminder, to: tuple[int, Address], why: str, now: datetime, run_id: int | None
) -> dict[str, Any]:
    """The history row that says which alternative was left, why, and for which."""
    return {
        "notification_id": row.id,
        "run_id": run_id,
        "started_at": now,
        "finished_at": now,
        "outcome": Action.FALLBACK,
        "http_status": None,
        "error": left_for((row.channel, row.recipient), why, to),
        "uncertain": False,
        "channel": row.channel,
    }


@dataclass
class Moved:
    """What a suppression or a rescue did to the reminders it touched."""

    fallbacks: list[str] = field(default_factory=list)  # the channel each one left
    ended: int = 0  # failed or cancelled (``end``) for want of an alternative
    cancelled: int = 0  # of those, cancelled (their recipients suppressed), not failed

    def plus(self, other: Moved) -> Moved:
        return Moved(
            self.fallbacks + other.fallbacks,
            self.ended + other.ended,
            self.cancelled + other.cancelled,
        )


def move_along(
    conn: Connection,
    rows: Sequence[DueReminder],
    suppressed: Container[Address],
    why: str,
    end: dict[str, Any],
    now: datetime,
    run_id: int | None,
) -> Moved:
    """Pending reminders → their chain's next available alternative, or ``end`` (columns)."""
    moved = Moved()
    updates: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for row in rows:
        to = first_available(alternatives(row.route), suppressed, row.alternative + 1)
        if to is None:
            updates.append({"n_id": row.id, **end, "updated_at": now})
            moved.ended += 1
            if end["status"] is Status.CANCELLED:
                moved.cancelled += 1
            continue
        # a reminder not yet due keeps its time on the next alternative
        due_at = max(row.due_at, now)
        values = moved_on((row.channel, row.recipient), to, why, due_at, now)
        updates.append({"n_id": row.id, **values})
        history.append(fallback_history(row, to, why, now, run_id))
        moved.fallbacks.append(row.channel)
    queries.update_pending(conn, updates)
    queries.insert_attempts(conn, history)
    return moved


def suppress(
    conn: Connection,
    address: Address,
    detail: str | None,
    now: datetime,
    run_id: int | None = None,
) -> Moved:
    """Mark the recipient gone; its other pending reminders and notices move on or end."""
    key = health_key(address)
    queries.set_recipient_state(
        conn, *key, RecipientState.SUPPRESSED, now, Reason.RECIPIENT_GONE, detail
    )
    rows = queries.pending_of_recipient(conn, *key)
    suppressed = suppressed_for(conn, (row.route for row in rows))
    suppressed.keys.add(key)
    why = f"{Reason.SUPPRESSED}: {shown_address(key)} takes no more messages"
    return move_along(conn, rows, suppressed, why, _cancelled(why), now, run_id)


def _cancelled(why: str) -> dict[str, Any]:
    """The columns that end a reminder whose chain has no alternative left unsuppressed."""
    return {"status": Status.CANCELLED, "reason": Reason.SUPPRESSED, "last_error": why}


def after_rescue(
    conn: Connection, rescued: queries.Rescued, now: datetime, run_id: int | None
) -> Moved:
    """Requeued reminders that must not be tried again where they were: the next alternative.

    Those whose last attempt ran out with their run (spent), and those whose recipient was
    suppressed while they were out (``leave_suppressed``).
    """
    if not rescued.requeued:
        return Moved()
    rows = queries.reminders_by_id(conn, rescued.requeued)
    suppressed = suppressed_for(conn, (row.route for row in rows))
    spent = set(rescued.spent_chains)
    why = f"{Reason.GAVE_UP}: lease expired on the last attempt"
    end = {"status": Status.FAILED, "reason": Reason.GAVE_UP, "last_error": why}
    gave_up = move_along(
        conn, [row for row in rows if row.id in spent], suppressed, why, end, now, run_id
    )
    rest = [row for row in rows if row.id not in spent]
    return gave_up.plus(_off_suppressed(conn, rest, suppressed, now, run_id))


def leave_suppressed(
    conn: Connection, ids: Sequence[int], now: datetime, run_id: int | None
) -> Moved:
    """Reminders just put back to pending whose recipient is suppressed: along their chain,
    or cancelled.

    ``suppress`` moves only pending reminders. One that was out (``sending``) when its
    recipient was suppressed, by another run or by another answer of the same batch,
    comes back through rescue or its own passing failure (a retry, a 429): it must not
    wait there for a recipient that takes no more messages.
    """
    if not ids:
        return Moved()
    rows = queries.reminders_by_id(conn, ids)
    suppressed = suppressed_for(conn, (row.route for row in rows))
    return _off_suppressed(conn, rows, suppressed, now, run_id)


def _off_suppressed(
    conn: Connection,
    rows: Sequence[DueReminder],
    suppressed: Suppressed,
    now: datetime,
    run_id: int | None,
) -> Moved:
    stranded = [row for row in rows if (row.channel, row.recipient) in suppressed]
    why = f"{Reason.SUPPRESSED}: the recipient takes no more messages"
    return move_along(conn, stranded, suppressed, why, _cancelled(why), now, run_id)
