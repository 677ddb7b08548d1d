"""Use cases: create (upsert), cancel, list. The CLI and the Python API call these.

No Typer, rich or os.environ here: callers pass a ``Store`` (engine + clock)
and plain values; each use case is one transaction.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from . import queries
from .channels import parse_recipient, shown_recipient
from .config import clip
from .db import Store as Store
from .db import open_store as open_store
from .errors import InvalidInput, NotFound, shown
from .kinds import Kind, parse_kinds
from .models import BookingStatus, Reason, Status
from .queries import BookingRow, ListedReminder, ReminderRow
from .times import implied_zone, parse_time, parse_zone, zone_name

if TYPE_CHECKING:
    from .stats import QueueSummary

#: the human-readable detail stored beside each reason value
DETAIL = {
    Reason.REMOVED: "removed from the booking",
    Reason.USELESS: "rescheduled to a time when it is no longer useful",
    Reason.CANCELLED: "cancelled",
}
_BOOKING_ID = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_TITLE = re.compile(r"(?=.*\S)[^\x00-\x1f\x7f]{1,512}")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_DATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


# --- create -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BookingInput:
    """One validated booking, as create needs it."""

    booking_id: str
    starts_at: datetime
    ends_at: datetime
    recipients: tuple[tuple[str, str], ...]
    kinds: tuple[Kind, ...]
    title: str
    timezone: str
    locale: str | None = None
    data: Mapping[str, Any] | None = None
    reactivate: bool = False
    zone_implied: bool = False  # not given: taken from the times' UTC offset (or UTC)


_TEXT, _LIST, _OBJECT, _FLAG = "text", "list", "object", "flag"


def _shape(shape: str, required: bool = False) -> dict[str, Any]:
    """How a ``BookingFields`` field is given in a file line, and whether it must be."""
    return {"shape": shape, "required": required}


@dataclass(frozen=True)
class BookingFields:
    """A booking as given, before validation: the one declaration of a booking's fields.

    The CLI's options, each line of ``create --from-file`` and the Python API all
    build one of these; ``validated`` turns it into a ``BookingInput``. None means
    "not given" (a file line then takes the command line's value).
    """

    booking_id: str | None = field(default=None, metadata=_shape(_TEXT, required=True))
    starts_at: str | datetime | None = field(default=None, metadata=_shape(_TEXT, required=True))
    ends_at: str | datetime | None = field(default=None, metadata=_shape(_TEXT, required=True))
    to: Sequence[str] | None = field(default=None, metadata=_shape(_LIST, required=True))
    title: str | None = field(default=None, metadata=_shape(_TEXT))
    timezone: str | None = field(default=None, metadata=_shape(_TEXT))
    remind: Sequence[str] | None = field(default=None, metadata=_shape(_LIST))
    locale: str | None = field(default=None, metadata=_shape(_TEXT))
    data: Mapping[str, Any] | None = field(default=None, metadata=_shape(_OBJECT))
    #: a switch of the whole command, not of one file line
    reactivate: bool | None = field(default=None, metadata=_shape(_FLAG))

    @classmethod
    def names(cls, *, per_line: bool = False) -> tuple[str, ...]:
        """Field names (``per_line``: those a file line may give)."""
        return tuple(f.name for f in fields(cls) if not per_line or f.metadata["shape"] != _FLAG)

    def missing(self) -> list[str]:
        """Required fields not given."""
        return [
            f.name for f in fields(self) if f.metadata["required"] and not getattr(self, f.name)
        ]

    def over(self, defaults: BookingFields) -> BookingFields:
        """These fields, with ``defaults``' values for those not given."""
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(
            defaults, **{name: value for name, value in given.items() if value is not None}
        )

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], as_list: Callable[[Any], list[str]]
    ) -> BookingFields:
        """One file line's values, each checked for its shape (``as_list`` reads lists)."""
        unknown = set(record) - set(cls.names(per_line=True))
        if unknown:
            names = ", ".join(clip(n, 40) for n in sorted(unknown)[:10])
            raise InvalidInput(f"unknown key(s): {names}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in record:
                continue
            value, shape = record[f.name], f.metadata["shape"]
            if shape == _TEXT and not isinstance(value, str):
                raise InvalidInput(f"{f.name} must be a string")
            if shape == _OBJECT and not isinstance(value, dict):
                raise InvalidInput(f"{f.name} must be an object")
            values[f.name] = as_list(value) if shape == _LIST else value
        return cls(**values)

    def validated(self, now: datetime) -> BookingInput:
        """Validate the values (strings as the CLI and files give them) into a BookingInput."""
        booking_id = self.booking_id or ""
        if not _BOOKING_ID.fullmatch(booking_id) or booking_id != booking_id.strip():
            raise InvalidInput(
                f"invalid booking id {shown(booking_id)}: 1-128 printable characters"
            )
        if self.starts_at is None or self.ends_at is None:
            raise InvalidInput(f"{'starts_at' if self.starts_at is None else 'ends_at'} is missing")
        zone = (
            parse_zone(self.timezone)
            if self.timezone
            else implied_zone(self.starts_at, self.ends_at)
        )
        if zone is None:
            zone = parse_zone("UTC")
        starts = _aware(self.starts_at, zone, now)
        ends = _aware(self.ends_at, zone, now)
        if ends <= starts:
            raise InvalidInput("ends_at must be after starts_at")
        if not self.to:
            raise InvalidInput("at least one recipient (--to) is needed")
        recipients = tuple(dict.fromkeys(parse_recipient(r) for r in self.to))
        title, locale = self.title, self.locale
        if title is not None and not _TITLE.fullmatch(title):
            raise InvalidInput("title must be 1-512 characters, without control characters")
        if locale is not None and (len(locale) > 35 or not _LOCALE.fullmatch(locale)):
            raise InvalidInput(f"invalid locale {locale!r}: use e.g. en, de, pt-BR")
        return BookingInput(
            booking_id=booking_id,
            starts_at=starts,
            ends_at=ends,
            recipients=recipients,
            kinds=tuple(parse_kinds(list(self.remind or []))),
            title=title if title is not None else booking_id,
            timezone=zone_name(zone),
            locale=locale.replace("_", "-") if locale else None,
            data=check_data(self.data),
            reactivate=bool(self.reactivate),
            zone_implied=not self.timezone,
        )


def _aware(value: str | datetime, zone: tzinfo, now: datetime) -> datetime:
    moment = value if isinstance(value, datetime) else parse_time(value, zone, now)
    if moment.tzinfo is None:
        raise InvalidInput("starts_at and ends_at must be timezone-aware")
    return moment


def booking_input(booking_id: str, *, now: datetime, **given: Any) -> BookingInput:
    """Python API: validate one booking's fields (the names of ``BookingFields``)."""
    return BookingFields(booking_id=booking_id, **given).validated(now)


def check_data(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Template data: identifier keys, JSON values, at most 16 kB."""
    if not data:
        return None
    for key in data:
        if not _DATA_KEY.fullmatch(str(key)):
            raise InvalidInput(f"invalid data key {key!r}: use letters, digits and _")
    try:
        # NaN/Infinity: SQLite would store them, PostgreSQL's json type refuses them
        encoded = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        if "Out of range float values" not in str(e):
            raise InvalidInput(f"data is not JSON-serialisable: {e}") from e
        raise InvalidInput("data holds NaN or Infinity: use numbers, strings or null") from e
    except TypeError as e:
        raise InvalidInput(f"data is not JSON-serialisable: {e}") from e
    if len(encoded) > 16_384:
        raise InvalidInput("data is larger than 16 kB")
    return dict(data)


@dataclass(frozen=True)
class Skipped:
    kind: str
    channel: str
    recipient: str
    reason: str


@dataclass
class BookingResult:
    booking_id: str
    action: str = "unchanged"  # created | reactivated | rescheduled | updated | unchanged
    added: int = 0
    rescheduled: int = 0
    cancelled: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    timezone: str | None = None  # set when the zone was not given but implied

    def as_dict(self) -> dict[str, Any]:
        return {
            "booking_id": self.booking_id,
            "action": self.action,
            "added": self.added,
            "rescheduled": self.rescheduled,
            "cancelled": self.cancelled,
            "skipped": [s.__dict__ for s in self.skipped],
            **({"timezone": self.timezone} if self.timezone else {}),
        }


# --- reconcile: what create does to one existing reminder ------------------------------


class Fate(enum.Enum):
    KEEP = "keep"  # nothing to write
    REARM = "rearm"  # pending again at its (new) time, attempts reset; revokes a lease
    CANCEL = "cancel"  # its recipient or kind left the booking
    EXPIRE = "expire"  # rescheduled to a time when it is no longer useful


Times = tuple[datetime, datetime]  # (scheduled_at, not_after)


def reconcile(
    status: Status,
    reason: Reason | None,
    current: Times,
    wanted: Times | None,
    *,
    useless: bool,
    reactivating: bool,
    now: datetime,
) -> Fate:
    """The fate of one existing reminder when its booking is written again (pure).

    ``wanted`` is None when the new booking no longer asks for it (``useless``
    when it does, but at a time that is too late to be of use). A reminder
    being sent right now (``sending``) follows the same rules as a pending one:
    the newer intent wins, the in-flight outcome lands only in the history.
    """
    unsent = status in (Status.PENDING, Status.SENDING)
    if wanted is None:
        if not unsent:
            return Fate.KEEP
        return Fate.EXPIRE if useless else Fate.CANCEL
    retimed = current != wanted
    if unsent or status in (Status.FAILED, Status.EXPIRED):
        return Fate.REARM if retimed else Fate.KEEP
    if status == Status.SENT:
        return Fate.REARM if retimed and wanted[0] > now else Fate.KEEP
    # cancelled: back when the booking is booked again or the recipient/kind returns
    return Fate.REARM if reactivating or reason == Reason.REMOVED else Fate.KEEP


@dataclass
class _Plan:
    """Every write of one create call, gathered so they run as bulk statements."""

    new_bookings: list[dict[str, Any]] = field(default_factory=list)
    new_reminders: list[list[dict[str, Any]]] = field(default_factory=list)
    booking_updates: list[dict[str, Any]] = field(default_factory=list)
    reminder_inserts: list[dict[str, Any]] = field(default_factory=list)
    rearms: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)
    expires: list[int] = field(default_factory=list)


def _useless_reason(kind: Kind, scheduled: datetime, not_after: datetime, now: datetime) -> str:
    if scheduled >= not_after:
        return f"{kind.name} would fall after the booking {kind.valid_until}s"
    return f"too late: the booking {kind.valid_until}s at {not_after.isoformat()}"


Key = tuple[str, str, str]  # (kind, channel, recipient)


def _wanted(inp: BookingInput, now: datetime) -> tuple[dict[Key, Times], set[Key], list[Skipped]]:
    """Useful reminders with their times; the keys skipped as useless, and why."""
    wanted: dict[Key, Times] = {}
    useless: set[Key] = set()
    skipped: list[Skipped] = []
    for kind in inp.kinds:
        scheduled = kind.scheduled_at(inp.starts_at, inp.ends_at)
        not_after = kind.not_after(inp.starts_at, inp.ends_at)
        for channel, recipient in inp.recipients:
            if not_after <= now or scheduled >= not_after:
                reason = _useless_reason(kind, scheduled, not_after, now)
                skipped.append(Skipped(kind.name, channel, shown_recipient(recipient), reason))
                useless.add((kind.name, channel, recipient))
            else:
                wanted[(kind.name, channel, recipient)] = (scheduled, not_after)
    return wanted, useless, skipped


def _new_reminder(key: Key, times: Times, now: datetime) -> dict[str, Any]:
    kind, channel, recipient = key
    scheduled, not_after = times
    return {
        "kind": kind,
        "channel": channel,
        "recipient": recipient,
        "scheduled_at": scheduled,
        "not_after": not_after,
        "due_at": scheduled,
        "status": Status.PENDING.value,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def _rearm(row: ReminderRow, times: Times, now: datetime) -> dict[str, Any]:
    scheduled, not_after = times
    return {
        "n_id": row.id,
        "scheduled_at": scheduled,
        "not_after": not_after,
        "due_at": scheduled,
        "status": Status.PENDING.value,
        "attempts": 0,
        "last_error": None,
        "reason": None,
        "sent_at": None,
        "provider_message_id": None,
        "updated_at": now,
    }


def _booking_values(inp: BookingInput, status: str) -> dict[str, Any]:
    return {
        "title": inp.title,
        "starts_at": inp.starts_at,
        "ends_at": inp.ends_at,
        "timezone": inp.timezone,
        "locale": inp.locale,
        "data": dict(inp.data) if inp.data else None,
        "status": status,
    }


def _result(inp: BookingInput, action: str, skipped: list[Skipped]) -> BookingResult:
    return BookingResult(
        inp.booking_id,
        action,
        skipped=skipped,
        timezone=inp.timezone if inp.zone_implied else None,
    )


def refuse_past(inp: BookingInput, now: datetime) -> None:
    """Refuse a booking none of whose reminders can still be of use, as ``at`` refuses the past.

    A reminder that is merely late but still useful (``at_start`` of a booking that
    started ten minutes ago) keeps the booking; only when every reminder asked for is
    past its useful time (the booking ended, or only ``day_before`` for a booking that
    started) is it refused. Only a new booking: replaying one that exists (a nightly
    re-sync of a file that still holds it) stays "unchanged".
    """
    late = [k for k in inp.kinds if k.not_after(inp.starts_at, inp.ends_at) <= now]
    if inp.kinds and len(late) == len(inp.kinds):
        zone = parse_zone(inp.timezone)
        if inp.ends_at <= now:
            when = inp.ends_at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
            raise InvalidInput(
                f"booking {shown(inp.booking_id)} already ended ({when} {inp.timezone}): "
                "no reminder can be sent; give a future --ends-at"
            )
        when = inp.starts_at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        raise InvalidInput(
            f"booking {shown(inp.booking_id)} started at {when} {inp.timezone}: every reminder "
            f"asked for ({', '.join(k.name for k in inp.kinds)}) is too late; "
            "ask for at_start or before_end"
        )


def _plan_new(inp: BookingInput, now: datetime, plan: _Plan) -> BookingResult:
    wanted, _, skipped = _wanted(inp, now)
    plan.new_bookings.append(
        {
            "external_id": inp.booking_id,
            **_booking_values(inp, "active"),
            "created_at": now,
            "updated_at": now,
        }
    )
    plan.new_reminders.append([_new_reminder(k, t, now) for k, t in wanted.items()])
    result = _result(inp, "created", skipped)
    result.added = len(wanted)
    return result


def _plan_existing(
    inp: BookingInput,
    booking: BookingRow,
    reminders: list[ReminderRow],
    now: datetime,
    plan: _Plan,
) -> BookingResult:
    reactivating = booking.status == BookingStatus.CANCELLED
    if reactivating and not inp.reactivate:
        raise InvalidInput(
            f"booking {inp.booking_id!r} is cancelled: pass --reactivate to book it again"
        )
    wanted, useless, skipped = _wanted(inp, now)
    result = _result(inp, "unchanged", skipped)
    for row in reminders:
        key = (row.kind, row.channel, row.recipient)
        times = wanted.pop(key, None)
        fate = reconcile(
            Status(row.status),
            Reason(row.reason) if row.reason else None,
            (row.scheduled_at, row.not_after),
            times,
            useless=key in useless,
            reactivating=reactivating,
            now=now,
        )
        if fate is Fate.REARM:
            assert times is not None
            plan.rearms.append(_rearm(row, times, now))
            if row.status == Status.CANCELLED:
                result.added += 1
            else:
                result.rescheduled += 1
        elif fate is not Fate.KEEP:
            (plan.expires if fate is Fate.EXPIRE else plan.cancels).append(row.id)
            result.cancelled += 1
    for key, times in wanted.items():
        plan.reminder_inserts.append({"booking_id": booking.id, **_new_reminder(key, times, now)})
        result.added += 1

    values = _booking_values(inp, "active")
    changed = any(getattr(booking, k) != v for k, v in values.items())
    if changed:
        plan.booking_updates.append({"b_id": booking.id, **values, "updated_at": now})
    times_changed = (booking.starts_at, booking.ends_at) != (inp.starts_at, inp.ends_at)
    if reactivating:
        result.action = "reactivated"
    elif times_changed:
        result.action = "rescheduled"
    elif changed or result.added or result.cancelled or result.rescheduled:
        result.action = "updated"
    return result


def _apply(conn: Connection, plan: _Plan, now: datetime) -> None:
    ids = queries.insert_bookings(conn, plan.new_bookings)
    inserts = [
        {"booking_id": booking_id, **reminder}
        for booking_id, reminders in zip(ids, plan.new_reminders, strict=True)
        for reminder in reminders
    ]
    queries.update_bookings(conn, plan.booking_updates)
    queries.insert_notifications(conn, inserts + plan.reminder_inserts)
    queries.rearm_notifications(conn, plan.rearms)
    for ids_, status, reason in (
        (plan.cancels, Status.CANCELLED, Reason.REMOVED),
        (plan.expires, Status.EXPIRED, Reason.USELESS),
    ):
        queries.finish_unsent(conn, ids_, status, reason, DETAIL[reason], now)


def _follow_moves(conn: Connection, inputs: Sequence[BookingInput]) -> list[BookingInput]:
    """Recipients whose chat moved (Telegram group → supergroup) become the new chat."""
    moves = queries.chat_moves(conn, {r for inp in inputs for r in inp.recipients})
    if not moves:
        return list(inputs)
    return [
        replace(inp, recipients=tuple(dict.fromkeys(moves.get(r, r) for r in inp.recipients)))
        for inp in inputs
    ]


def create_bookings(
    store: Store,
    inputs: Sequence[BookingInput],
    *,
    lines: Sequence[int] | None = None,
    refuse_ended: bool = False,
) -> list[BookingResult]:
    """Upsert bookings and their reminders in one transaction.

    ``refuse_ended`` (the CLI's rule) rejects a new booking none of whose
    reminders can still be of use (``refuse_past``).

    ``lines`` numbers the inputs (for files): every failing input is then
    reported by its line, and nothing is written. The rows read are locked
    (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` holds the write
    lock), so what is reported is what is written: no claim slips in between.
    """
    now = store.clock()
    seen: dict[str, int] = {}
    errors: list[str] = []
    label = (
        (lambda i: f"line {lines[i]}") if lines is not None else (lambda i: inputs[i].booking_id)
    )
    for index, inp in enumerate(inputs):
        if inp.booking_id in seen:
            errors.append(
                f"{label(index)}: booking {inp.booking_id!r} appears twice "
                f"(first at {label(seen[inp.booking_id])})"
            )
        seen.setdefault(inp.booking_id, index)
    if errors:
        raise InvalidInput(f"{len(errors)} invalid input(s), nothing written", errors)
    with store.transaction() as conn:
        inputs = _follow_moves(conn, inputs)
        existing = queries.load_bookings(conn, [i.booking_id for i in inputs], lock=True)
        reminders = queries.load_notifications(conn, [b.id for b in existing.values()], lock=True)
        plan = _Plan()
        results: list[BookingResult] = []
        for index, inp in enumerate(inputs):
            booking = existing.get(inp.booking_id)
            try:
                if booking is None:
                    if refuse_ended:
                        refuse_past(inp, now)
                    results.append(_plan_new(inp, now, plan))
                else:
                    results.append(_plan_existing(inp, booking, reminders[booking.id], now, plan))
            except InvalidInput as e:
                errors.append(f"{label(index)}: {e.message}")
        if errors:
            if lines is None and len(errors) == 1:
                raise InvalidInput(errors[0].split(": ", 1)[1])
            what = "line(s)" if lines is not None else "input(s)"
            raise InvalidInput(f"{len(errors)} invalid {what}, nothing written", errors)
        _apply(conn, plan, now)
    return results


def create_booking(store: Store, booking_id: str, **fields: Any) -> BookingResult:
    """Python API: create or update one booking (same arguments as ``booking_input``)."""
    return create_bookings(store, [booking_input(booking_id, now=store.clock(), **fields)])[0]


# --- cancel -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelResult:
    bookings: int
    reminders: int
    missing: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "bookings": self.bookings,
            "reminders": self.reminders,
            "missing": list(self.missing),
        }


def cancel(
    store: Store,
    booking_ids: Sequence[str] = (),
    *,
    notification_ids: Sequence[int] = (),
    missing_ok: bool = False,
) -> CancelResult:
    """Cancel bookings (and their unsent reminders) or single reminders. Idempotent."""
    now = store.clock()
    with store.transaction() as conn:
        found = queries.load_bookings(conn, list(booking_ids))
        known = queries.existing_notification_ids(conn, list(notification_ids))
        missing = [b for b in booking_ids if b not in found]
        missing += [str(n) for n in notification_ids if n not in known]
        if missing and not missing_ok:
            raise NotFound(f"not found: {', '.join(missing)} (use --missing-ok to ignore)")
        reminders = queries.cancel_booking_rows(conn, [b.id for b in found.values()], now)
        reminders += queries.finish_unsent(
            conn, sorted(known), Status.CANCELLED, Reason.CANCELLED, DETAIL[Reason.CANCELLED], now
        )
    return CancelResult(len(found), reminders, tuple(missing))


# --- list -------------------------------------------------------------------------------

LIST_FIELDS = queries.ListedReminder._fields


@contextmanager
def list_notifications(
    store: Store, where: queries.ListFilter | None = None
) -> Iterator[Iterator[dict[str, Any]]]:
    """Matching reminders as dicts with ``LIST_FIELDS``, streamed inside a read."""
    with store.reader() as conn:
        rows = queries.list_notifications(conn, where or queries.ListFilter())
        yield (_listed(row) for row in rows)


def _listed(row: ListedReminder) -> dict[str, Any]:
    fields = row._asdict()
    fields["recipient"] = shown_recipient(fields["recipient"])
    return fields


def summary(store: Store, statuses: tuple[str, ...] = ()) -> QueueSummary:
    """Python API: the queue now, the same figures as ``list --summary``."""
    from .stats import queue_summary

    return queue_summary(store, statuses)
