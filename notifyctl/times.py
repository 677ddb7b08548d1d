"""Parsing of times, durations and zones; all results are aware UTC."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_DURATION_WHOLE = re.compile(r"(?:\d{1,9}[smhdw])+")
MAX_DURATION = timedelta(days=3650)
MIN_YEAR, MAX_YEAR = 1970, 9000  # far from datetime's limits, so zone arithmetic never overflows


def format_duration(delta: timedelta) -> str:
    """The canonical spelling of a duration: largest units first (``1h30m``, ``2d``)."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_duration(text: str) -> timedelta:
    """``90m``, ``2h30m``, ``1d``, ``2w`` → timedelta (positive, at most ten years)."""
    raw = text.strip().lower()
    if not _DURATION_WHOLE.fullmatch(raw):
        raise InvalidInput(f"invalid duration {text!r}: use e.g. 30m, 2h, 1d, 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(raw))
    if seconds <= 0 or seconds > MAX_DURATION.total_seconds():
        raise InvalidInput(f"invalid duration {text!r}: must be between 1s and 3650d")
    return timedelta(seconds=seconds)


_FIXED_ZONE = re.compile(r"UTC([+-])(\d{2}):(\d{2})")


def fixed_zone(offset: timedelta) -> tzinfo:
    """A fixed UTC offset as a zone named ``UTC+01:00`` (never silently plain UTC)."""
    if not offset:
        return ZoneInfo("UTC")
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return timezone(offset, f"UTC{sign}{hours:02d}:{rest:02d}")


def zone_name(zone: tzinfo) -> str:
    """The name a zone is stored under: the IANA key, or ``UTC+01:00`` for a fixed offset."""
    return getattr(zone, "key", None) or zone.tzname(None) or "UTC"


@lru_cache(maxsize=256)  # a file of bookings names the same few zones on every line
def parse_zone(name: str) -> tzinfo:
    """An IANA zone by name (``Europe/Berlin``), or a fixed offset (``UTC+01:00``)."""
    fixed = _FIXED_ZONE.fullmatch(name or "")
    if fixed:
        sign, hours, minutes = fixed.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        if offset >= timedelta(hours=24) or int(minutes) >= 60:
            raise InvalidInput(f"unknown time zone {name!r}")
        return fixed_zone(-offset if sign == "-" else offset)
    if not name or name != name.strip() or ".." in name or name.startswith("/"):
        raise InvalidInput(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        raise InvalidInput(
            f"unknown time zone {name!r}: use an IANA name like Europe/Berlin"
        ) from e


def implied_zone(*texts: str | datetime) -> tzinfo | None:
    """The zone that times given with a UTC offset imply (the first one's offset), if any."""
    for text in texts:
        value = text if isinstance(text, datetime) else _offset_time(text)
        if value is not None and getattr(value.tzinfo, "key", None):
            return value.tzinfo  # an aware datetime from the Python API keeps its own zone
        if value is not None and value.utcoffset() is not None:
            offset = value.utcoffset()
            assert offset is not None
            return fixed_zone(offset)
    return None


def _offset_time(text: str) -> datetime | None:
    raw = text.strip()
    if raw.startswith("+"):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


#: notes about how a time was read (an ambiguous wall-clock time), for the caller to show
_notes: ContextVar[list[str] | None] = ContextVar("notifyctl_time_notes", default=None)


@contextmanager
def collecting_notes() -> Iterator[list[str]]:
    """Collect the notes ``localize`` makes while the block runs (e.g. ambiguous times)."""
    notes: list[str] = []
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


def _offset_text(offset: timedelta | None) -> str:
    minutes = int((offset or timedelta(0)).total_seconds()) // 60
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{'-' if minutes < 0 else '+'}{hours:02d}:{rest:02d}"


def localize(naive: datetime, zone: tzinfo) -> datetime:
    """Read a wall-clock time in ``zone``; reject times a DST gap skips.

    A time a DST change repeats (fall back) is taken the first time it occurs
    (``fold=0``), and a note saying so goes to any ``collecting_notes`` block.
    """
    aware = naive.replace(tzinfo=zone, fold=0)
    round_trip = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if round_trip != naive.replace(fold=0):
        raise InvalidInput(
            f"{naive.isoformat(sep=' ')} does not exist in {zone_name(zone)} "
            "(skipped by a DST change)"
        )
    second = naive.replace(tzinfo=zone, fold=1).utcoffset()
    if second != aware.utcoffset():
        notes = _notes.get()
        if notes is not None:
            first, later = _offset_text(aware.utcoffset()), _offset_text(second)
            spec = "seconds" if naive.second else "minutes"
            notes.append(
                f"{naive.isoformat(sep=' ', timespec=spec)} is ambiguous in {zone_name(zone)}; "
                f"took the first ({first}), write "
                f"{naive.replace(fold=0).isoformat(timespec=spec)}{later[3:]} for the second"
            )
    return aware.astimezone(UTC)


def parse_time(text: str, zone: tzinfo, now: datetime) -> datetime:
    """ISO 8601 with offset, naive (read in ``zone``), or relative (``+2h``) → aware UTC."""
    raw = text.strip()
    if raw.startswith("+"):
        return now + parse_duration(raw[1:])
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError as e:
        raise InvalidInput(
            f"invalid time {text!r}: use ISO 8601 (2026-03-01T18:00+01:00), "
            "a local time (2026-03-01 18:00) or a relative one (+2h)"
        ) from e
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise InvalidInput(f"invalid time {text!r}: the year must be {MIN_YEAR}-{MAX_YEAR}")
    if parsed.tzinfo is None:
        return localize(parsed, zone)
    return parsed.astimezone(UTC)


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, as lists and JSON show times."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The real clock; everything below the CLI takes a ``Clock`` instead."""
    return datetime.now(UTC)


def human_duration(seconds: float) -> str:
    """A duration as people read it: ``45 s``, ``12 min``, ``1 h 19 min``, ``3 d 4 h``."""
    whole = round(abs(seconds))
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative_time(when: datetime, now: datetime) -> str:
    """``in 12 min``, ``3 h ago``, ``in 2 d`` (one unit, rounded down) or ``now``."""
    seconds = (when - now).total_seconds()
    whole = int(abs(seconds))
    if whole < 1:
        return "now"
    for size, unit in ((86400 * 2, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if whole >= size:
            count = whole // (86400 if unit == "d" else size)
            break
    text = f"{count} {unit}"
    return f"in {text}" if seconds > 0 else f"{text} ago"


def local_text(value: datetime, zone: tzinfo, now: datetime | None = None) -> str:
    """A time in ``zone`` to the minute: ``2026-06-01 14:00``, or ``06-01 14:00`` this year."""
    local = value.astimezone(zone)
    if now is not None and now.astimezone(zone).year == local.year:
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%Y-%m-%d %H:%M")
