"""The reminder-kind table: when each kind is due and until when it is useful.

A new kind is one entry in ``KINDS``. Offsets such as ``start-30m`` or
``end-10m`` are kinds too, parsed by ``parse_kind``. Change notices
(``NOTICE_KINDS``, SPEC §10) are kinds of message but not of reminder: no
``--remind`` asks for them, ``create`` and ``cancel`` queue them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .errors import InvalidInput, shown
from .times import format_duration, parse_duration

Anchor = Literal["start", "end"]


@dataclass(frozen=True)
class Kind:
    name: str
    anchor: Anchor
    offset: timedelta
    valid_until: Anchor

    def scheduled_at(self, starts_at: datetime, ends_at: datetime) -> datetime:
        return (starts_at if self.anchor == "start" else ends_at) + self.offset

    def not_after(self, starts_at: datetime, ends_at: datetime) -> datetime:
        return starts_at if self.valid_until == "start" else ends_at


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("day_before", "start", -timedelta(hours=24), "start"),
        Kind("hour_before", "start", -timedelta(hours=1), "start"),
        Kind("at_start", "start", timedelta(0), "end"),
        Kind("before_end", "end", -timedelta(minutes=5), "end"),
    )
}
DEFAULT_KINDS = tuple(KINDS)

RESCHEDULED = "rescheduled"
CANCELLED = "cancelled"
#: change notices: queued when a booking moves or is cancelled, never superseded
NOTICE_KINDS = (RESCHEDULED, CANCELLED)


def is_notice(kind: str) -> bool:
    return kind in NOTICE_KINDS


def kind_name(text: str) -> str:
    """The canonical name of a kind of message: a reminder kind or offset, or a notice kind."""
    raw = text.strip().lower()
    return raw if raw in NOTICE_KINDS else parse_kind(text).name


def anchor_of(kind: str) -> Anchor:
    """What a kind's text is about: the start (notices and start reminders) or the end."""
    return "start" if is_notice(kind) else parse_kind(kind).anchor


_OFFSET = re.compile(r"(start|end)([+-])(\w+)")


def parse_kind(text: str) -> Kind:
    """A kind name from ``KINDS`` or an offset like ``start-30m`` / ``end-10m``."""
    raw = text.strip().lower()
    if raw in KINDS:
        return KINDS[raw]
    match = _OFFSET.fullmatch(raw)
    if raw in NOTICE_KINDS:
        raise InvalidInput(
            f"{raw} is a change notice, not a reminder kind: create and cancel queue it "
            "when a booking moves or is cancelled (--no-notices turns them off)"
        )
    if not match:
        raise InvalidInput(
            f"unknown reminder kind {shown(text)}: use {', '.join(KINDS)} "
            "or an offset like start-30m, start-2d, end-10m"
        )
    anchor, sign, amount = match.groups()
    try:
        delta = parse_duration(amount)
    except InvalidInput as e:
        raise InvalidInput(f"invalid reminder offset {shown(text)}: {e.message}") from e
    offset = -delta if sign == "-" else delta
    valid_until: Anchor = "start" if anchor == "start" and sign == "-" else "end"
    # canonical name: start-60m and start-1h are one kind, and names fit their column
    name = f"{anchor}{sign}{format_duration(delta)}"
    return Kind(name, anchor, offset, valid_until)  # type: ignore[arg-type]


def parse_kinds(values: list[str] | None) -> list[Kind]:
    """Kinds from ``--remind`` values (each may hold several, comma or space separated).

    An offset after the end (``end+5m``) is refused: it could never be sent.
    """
    names = [n for v in values or [] for n in re.split(r"[,\s]+", v) if n]
    if not names:
        return [KINDS[k] for k in DEFAULT_KINDS]
    kinds: dict[str, Kind] = {}
    for name in names:
        kind = parse_kind(name)
        if kind.anchor == "end" and kind.offset > timedelta(0):
            # parse_kind reads any offset (templates and --kind filters name kinds), but a
            # reminder to ask for must be able to fire: one after the end never can
            raise InvalidInput(
                f"invalid reminder offset {shown(name)}: a reminder after the booking ends is "
                "never useful; use end-10m, at_start or start+… instead"
            )
        kinds.setdefault(kind.name, kind)
    return list(kinds.values())
