"""Use cases: create (upsert), cancel, list. The CLI and the Python API call these.

No Typer, rich or os.environ here: callers pass a ``Store`` (engine + clock)
and plain values; each use case is one transaction.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import re
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, tzinfo
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from . import health, queries
from .channels import parse_recipient, shown_recipient
from .config import clip
from .db import Store as Store
from .db import open_store as open_store
from .errors import InvalidInput, NotFound, shown
from .kinds import Kind, is_notice, parse_kinds
from .models import BookingStatus, Reason, RecipientState, Status
from .notices import Change, NoticePlan, plan_notices
from .queries import BookingRow, ListedReminder, NewReminder, ReminderRow
from .routes import (
    Address,
    Route,
    alternatives,
    first_available,
    parse_route,
    route_text,
    shown_address,
    shown_route,
)
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
    recipients: tuple[Route, ...]  # each one recipient, or a chain of alternatives
    kinds: tuple[Kind, ...]
    title: str
    timezone: str
    locale: str | None = None
    data: Mapping[str, Any] | None = None
    reactivate: bool = False
    zone_implied: bool = False  # not given: taken from the times' UTC offset (or UTC)


_TEXT, _LIST, _OBJECT, _FLAG = "text", "list", "object", "flag"
_DEFAULT_KINDS = tuple(parse_kinds([]))


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
        return tuple(name for name, shape, _ in _specs() if not per_line or shape != _FLAG)

    def missing(self) -> list[str]:
        """Required fields not given."""
        return [name for name, _, required in _specs() if required and not getattr(self, name)]

    def over(self, defaults: BookingFields) -> BookingFields:
        """These fields, with ``defaults``' values for those not given."""
        merged = {
            name: getattr(defaults, name) if (value := getattr(self, name)) is None else value
            for name, _, _ in _specs()
        }
        return BookingFields(**merged)

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], as_list: Callable[[Any], list[str]]
    ) -> BookingFields:
        """One file line's values, each checked for its shape (``as_list`` reads lists)."""
        unknown = record.keys() - _line_names()
        if unknown:
            names = ", ".join(clip(n, 40) for n in sorted(unknown)[:10])
            raise InvalidInput(f"unknown key(s): {names}")
        values: dict[str, Any] = {}
        for name, shape, _ in _specs():
            if name not in record:
                continue
            value = record[name]
            if shape == _TEXT and not isinstance(value, str):
                raise InvalidInput(f"{name} must be a string")
            if shape == _OBJECT and not isinstance(value, dict):
                raise InvalidInput(f"{name} must be an object")
            values[name] = as_list(value) if shape == _LIST else value
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
        recipients = tuple(dict.fromkeys(parse_route(r) for r in self.to))
        _refuse_shared_alternatives(recipients)
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
            kinds=tuple(parse_kinds(list(self.remind))) if self.remind else _DEFAULT_KINDS,
            title=title if title is not None else booking_id,
            timezone=zone_name(zone),
            locale=locale.replace("_", "-") if locale else None,
            data=check_data(self.data),
            reactivate=bool(self.reactivate),
            zone_implied=not self.timezone,
        )


@cache
def _specs() -> tuple[tuple[str, str, bool], ...]:
    """(name, shape, required) of each ``BookingFields`` field, read once: a file of 100k
    lines asks for them on every line."""
    return tuple(
        (f.name, f.metadata["shape"], f.metadata["required"]) for f in fields(BookingFields)
    )


@cache
def _line_names() -> frozenset[str]:
    return frozenset(BookingFields.names(per_line=True))


def _refuse_shared_alternatives(routes: tuple[Route, ...]) -> None:
    """One recipient in two ``--to`` values would get each reminder twice (or never)."""
    seen: set[Address] = set()
    for route in routes:
        for address in route:
            if address in seen:
                raise InvalidInput(f"recipient {shown_address(address)} appears in two --to values")
            seen.add(address)


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
    notices: int = 0  # change notices queued (SPEC §10)
    notices_withdrawn: int = 0  # pending ones cancelled: moved back, or booked again
    suppressed: list[str] = field(default_factory=list)  # recipients left out (SPEC §11)

    def as_dict(self) -> dict[str, Any]:
        return {
            "booking_id": self.booking_id,
            "action": self.action,
            "added": self.added,
            "rescheduled": self.rescheduled,
            "cancelled": self.cancelled,
            "notices": self.notices,
            "notices_withdrawn": self.notices_withdrawn,
            "skipped": [s.__dict__ for s in self.skipped],
            "suppressed": self.suppressed,
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
    # cancelled: back when the booking is booked again, the recipient/kind returns or
    # its recipient is no longer suppressed
    comes_back = reason in (Reason.REMOVED, Reason.SUPPRESSED)
    return Fate.REARM if reactivating or comes_back else Fate.KEEP


@dataclass
class _Plan:
    """Every write of one create call, gathered so they run as bulk statements."""

    new_bookings: list[dict[str, Any]] = field(default_factory=list)
    new_reminders: list[list[NewReminder]] = field(default_factory=list)  # per new booking
    booking_updates: list[dict[str, Any]] = field(default_factory=list)
    reminder_inserts: list[tuple[int, NewReminder]] = field(default_factory=list)
    rearms: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)
    expires: list[int] = field(default_factory=list)
    notices: NoticePlan = field(default_factory=NoticePlan)


def _useless_reason(kind: Kind, scheduled: datetime, not_after: datetime, now: datetime) -> str:
    if scheduled >= not_after:
        return f"{kind.name} would fall after the booking {kind.valid_until}s"
    return f"too late: the booking {kind.valid_until}s at {not_after.isoformat()}"


Key = tuple[str, str]  # (kind, route text): a reminder's identity within its booking


@dataclass(frozen=True)
class Wanted:
    """What create asks of one booking's reminders, given which recipients are suppressed."""

    times: dict[Key, Times]  # useful reminders
    useless: set[Key]  # asked for, but too late to be of use
    skipped: list[Skipped]
    start: dict[str, tuple[int, Address]]  # route text → the first alternative to try
    suppressed: set[str]  # route texts whose every alternative is suppressed


def _wanted(inp: BookingInput, now: datetime, suppressed: Container[Address]) -> Wanted:
    """Useful reminders with their times; the keys skipped as useless, and why."""
    wanted = Wanted({}, set(), [], {}, set())
    for route in inp.recipients:
        text = route_text(route)
        start = first_available(route, suppressed)
        if start is None:
            wanted.suppressed.add(text)
        else:
            wanted.start[text] = start
    for kind in inp.kinds:
        scheduled = kind.scheduled_at(inp.starts_at, inp.ends_at)
        not_after = kind.not_after(inp.starts_at, inp.ends_at)
        if not_after > now and scheduled < not_after:
            times = (scheduled, not_after)
            for text in wanted.start:
                wanted.times[(kind.name, text)] = times
            continue
        reason = _useless_reason(kind, scheduled, not_after, now)
        for text, (_, (channel, recipient)) in wanted.start.items():
            wanted.skipped.append(Skipped(kind.name, channel, shown_recipient(recipient), reason))
            wanted.useless.add((kind.name, text))
    return wanted


def _on_alternative(start: tuple[int, Address]) -> dict[str, Any]:
    position, (channel, recipient) = start
    return {"channel": channel, "recipient": recipient, "alternative": position}


_PENDING = Status.PENDING.value


def _new_reminder(key: Key, start: tuple[int, Address], times: Times, now: datetime) -> NewReminder:
    kind, route = key
    position, (channel, recipient) = start
    scheduled, not_after = times
    return NewReminder(
        kind, channel, recipient, route, position, scheduled, not_after, scheduled,
        _PENDING, 0, now, now,
    )  # fmt: skip


def _rearm(
    row: ReminderRow, start: tuple[int, Address], times: Times, now: datetime
) -> dict[str, Any]:
    """Pending again at its (new) time, from the first alternative that is not suppressed."""
    scheduled, not_after = times
    return {
        "n_id": row.id,
        **_on_alternative(start),
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
        "cancel_reason": None,  # booked (again): a cancel's reason no longer applies
    }


def _result(inp: BookingInput, action: str, wanted: Wanted) -> BookingResult:
    return BookingResult(
        inp.booking_id,
        action,
        skipped=wanted.skipped,
        timezone=inp.timezone if inp.zone_implied else None,
        suppressed=[
            shown_route(route) for route in inp.recipients if route_text(route) in wanted.suppressed
        ]
        if wanted.suppressed
        else [],
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


def _plan_new(
    inp: BookingInput, now: datetime, plan: _Plan, suppressed: Container[Address]
) -> BookingResult:
    wanted = _wanted(inp, now, suppressed)
    plan.new_bookings.append(
        {
            "external_id": inp.booking_id,
            **_booking_values(inp, "active"),
            "created_at": now,
            "updated_at": now,
        }
    )
    plan.new_reminders.append(
        [_new_reminder(k, wanted.start[k[1]], t, now) for k, t in wanted.times.items()]
    )
    result = _result(inp, "created", wanted)
    result.added = len(wanted.times)
    return result


def _plan_existing(
    inp: BookingInput,
    booking: BookingRow,
    rows: list[ReminderRow],
    now: datetime,
    plan: _Plan,
    suppressed: Container[Address],
    notices: bool = True,
) -> BookingResult:
    reactivating = booking.status == BookingStatus.CANCELLED
    if reactivating and not inp.reactivate:
        raise InvalidInput(
            f"booking {inp.booking_id!r} is cancelled: pass --reactivate to book it again"
        )
    wanted = _wanted(inp, now, suppressed)
    result = _result(inp, "unchanged", wanted)
    # notices: plan_notices; a suppressed recipient's reminders stay as they are
    reminders = [
        row for row in rows if not is_notice(row.kind) and row.route not in wanted.suppressed
    ]
    for row in reminders:
        key = (row.kind, row.route)
        times = wanted.times.pop(key, None)
        fate = reconcile(
            Status(row.status),
            Reason(row.reason) if row.reason else None,
            (row.scheduled_at, row.not_after),
            times,
            useless=key in wanted.useless,
            reactivating=reactivating,
            now=now,
        )
        if fate is Fate.REARM:
            assert times is not None
            plan.rearms.append(_rearm(row, wanted.start[row.route], times, now))
            if row.status == Status.CANCELLED:
                result.added += 1
            else:
                result.rescheduled += 1
        elif fate is not Fate.KEEP:
            (plan.expires if fate is Fate.EXPIRE else plan.cancels).append(row.id)
            result.cancelled += 1
    for key, times in wanted.times.items():
        reminder = _new_reminder(key, wanted.start[key[1]], times, now)
        plan.reminder_inserts.append((booking.id, reminder))
        result.added += 1

    values = _booking_values(inp, "active")
    changed = any(getattr(booking, k) != v for k, v in values.items())
    if changed:
        plan.booking_updates.append({"b_id": booking.id, **values, "updated_at": now})
    before = (booking.starts_at, booking.ends_at)
    times_changed = before != (inp.starts_at, inp.ends_at)
    if notices and (reactivating or times_changed):
        change = (
            Change("rebooked", before)
            if reactivating
            else Change("moved", before, (inp.starts_at, inp.ends_at))
        )
        counted = plan_notices(booking.id, change, rows, now, plan.notices, suppressed)
        result.notices, result.notices_withdrawn = counted
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
        (booking_id, reminder)
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
    plan.notices.apply(conn, now)


def _follow_moves(conn: Connection, inputs: Sequence[BookingInput]) -> list[BookingInput]:
    """Recipients whose chat moved (Telegram group → supergroup) become the new chat."""
    moves = queries.chat_moves(conn, {a for inp in inputs for r in inp.recipients for a in r})
    if not moves:
        return list(inputs)
    return [
        replace(
            inp,
            recipients=tuple(
                dict.fromkeys(tuple(moves.get(a, a) for a in route) for route in inp.recipients)
            ),
        )
        for inp in inputs
    ]


def create_bookings(
    store: Store,
    inputs: Sequence[BookingInput],
    *,
    lines: Sequence[int] | None = None,
    refuse_ended: bool = False,
    notices: bool = True,
) -> list[BookingResult]:
    """Upsert bookings and their reminders in one transaction.

    ``notices``: a booking moved after a reminder went out queues change
    notices for the recipients who got one (SPEC §10), in the same transaction.

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
        # the recipients asked for, and those already reminded: a change notice goes to
        # whoever received a reminder, whether or not the booking still names them
        told = {alternatives(r.route) for rows in reminders.values() for r in rows}
        suppressed = health.suppressed_among(
            conn, itertools.chain((r for i in inputs for r in i.recipients), told)
        )
        plan = _Plan()
        results: list[BookingResult] = []
        for index, inp in enumerate(inputs):
            booking = existing.get(inp.booking_id)
            try:
                if booking is None:
                    if refuse_ended:
                        refuse_past(inp, now)
                    results.append(_plan_new(inp, now, plan, suppressed))
                else:
                    rows = reminders[booking.id]
                    result = _plan_existing(inp, booking, rows, now, plan, suppressed, notices)
                    results.append(result)
            except InvalidInput as e:
                errors.append(f"{label(index)}: {e.message}")
        if errors:
            if lines is None and len(errors) == 1:
                raise InvalidInput(errors[0].split(": ", 1)[1])
            what = "line(s)" if lines is not None else "input(s)"
            raise InvalidInput(f"{len(errors)} invalid {what}, nothing written", errors)
        _apply(conn, plan, now)
    return results


def create_booking(
    store: Store, booking_id: str, *, notices: bool = True, **fields: Any
) -> BookingResult:
    """Python API: create or update one booking (same arguments as ``booking_input``).

    ``notices=False`` is ``create --no-notices``: a move tells nobody.
    """
    inp = booking_input(booking_id, now=store.clock(), **fields)
    return create_bookings(store, [inp], notices=notices)[0]


# --- cancel -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelResult:
    bookings: int
    reminders: int
    missing: tuple[str, ...]
    notices: int = 0  # change notices queued (SPEC §10)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bookings": self.bookings,
            "reminders": self.reminders,
            "notices": self.notices,
            "missing": list(self.missing),
        }


MAX_REASON = 500


def check_reason(reason: str | None) -> str | None:
    """``cancel --reason``: one line of at most 500 characters (shown in the notice)."""
    if reason is None:
        return None
    text = " ".join(reason.split())
    if not text or len(text) > MAX_REASON or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidInput(
            f"invalid --reason: 1-{MAX_REASON} characters of text, without control characters"
        )
    return text


def cancel(
    store: Store,
    booking_ids: Sequence[str] = (),
    *,
    notification_ids: Sequence[int] = (),
    missing_ok: bool = False,
    reason: str | None = None,
    notices: bool = True,
) -> CancelResult:
    """Cancel bookings (and their unsent reminders) or single reminders. Idempotent.

    A booking cancelled now queues a ``cancelled`` notice for each recipient
    that already received something of it (``notices``), showing ``reason``.
    """
    reason = check_reason(reason)
    now = store.clock()
    with store.transaction() as conn:
        found = queries.load_bookings(conn, list(booking_ids), lock=True)
        known = queries.existing_notification_ids(conn, list(notification_ids))
        missing = [b for b in booking_ids if b not in found]
        missing += [str(n) for n in notification_ids if n not in known]
        if missing and not missing_ok:
            raise NotFound(f"not found: {', '.join(missing)} (use --missing-ok to ignore)")
        active = [b for b in found.values() if b.status == BookingStatus.ACTIVE]
        plan = NoticePlan()
        queued = 0
        if notices and active:
            rows = queries.load_notifications(conn, [b.id for b in active], lock=True)
            suppressed = health.suppressed_for(conn, {r.route for b in active for r in rows[b.id]})
            for b in active:
                change = Change("cancelled", (b.starts_at, b.ends_at))
                queued += plan_notices(b.id, change, rows[b.id], now, plan, suppressed).queued
        # a pending move notice is replaced first, so the cancel below does not count it
        plan.apply_withdrawals(conn, now)
        if reason is not None:
            queries.set_cancel_reason(conn, [b.id for b in active], reason)
        reminders = queries.cancel_booking_rows(conn, [b.id for b in found.values()], now)
        reminders += queries.finish_unsent(
            conn, sorted(known), Status.CANCELLED, Reason.CANCELLED, DETAIL[Reason.CANCELLED], now
        )
        plan.apply(conn, now)
    return CancelResult(len(found), reminders, tuple(missing), queued)


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
    fields["route"] = shown_route(alternatives(fields["route"]))
    return fields


def summary(store: Store, statuses: tuple[str, ...] = ()) -> QueueSummary:
    """Python API: the queue now, the same figures as ``list --summary``."""
    from .stats import queue_summary

    return queue_summary(store, statuses)


# --- recipients (SPEC §11) ----------------------------------------------------------------

RECIPIENT_FIELDS = ("channel", "recipient", "state", "reason", "detail", "since")


def list_recipients(store: Store, *, suppressed_only: bool = False) -> list[dict[str, Any]]:
    """Recipients and their health: every suppressed one, and (unless ``suppressed_only``)
    every recipient a reminder names."""
    with store.reader() as conn:
        rows = queries.list_recipients(conn, suppressed_only=suppressed_only)
    return [
        {**dataclasses.asdict(row), "recipient": shown_recipient(row.recipient)} for row in rows
    ]


@dataclass(frozen=True)
class UnsuppressResult:
    unsuppressed: tuple[str, ...]
    already_active: tuple[str, ...]
    missing: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "unsuppressed": list(self.unsuppressed),
            "already_active": list(self.already_active),
            "missing": list(self.missing),
        }


def unsuppress(
    store: Store, recipients: Sequence[str], *, missing_ok: bool = False
) -> UnsuppressResult:
    """Make suppressed recipients active again: a later ``create`` arms their reminders.

    Recipients are written as ``--to`` takes them and compared in their
    canonical form. Unknown ones are an error (exit 2) unless ``missing_ok``.
    """
    from .routes import health_key

    keys = {raw: health_key(parse_recipient(raw)) for raw in recipients}
    now = store.clock()
    with store.transaction() as conn:
        suppressed = queries.suppressed_among(conn, keys.values())
        known = queries.known_recipients(conn, list(keys.values()))
        missing = [raw for raw, key in keys.items() if key not in known]
        if missing and not missing_ok:
            unknown = ", ".join(shown_address(keys[raw]) for raw in missing)
            raise NotFound(f"unknown recipient(s): {unknown} (use --missing-ok to ignore)")
        for key in sorted(suppressed):
            queries.set_recipient_state(conn, *key, RecipientState.ACTIVE, now)
    shown_keys = {raw: shown_address(key) for raw, key in keys.items()}
    return UnsuppressResult(
        tuple(dict.fromkeys(shown_keys[r] for r, k in keys.items() if k in suppressed)),
        tuple(
            dict.fromkeys(
                shown_keys[r] for r, k in keys.items() if k in known and k not in suppressed
            )
        ),
        tuple(dict.fromkeys(shown_keys[r] for r in missing)),
    )
