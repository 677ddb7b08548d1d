"""Parsing of times, durations and zones; all results are aware UTC."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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


def parse_zone(name: str) -> ZoneInfo:
    """An IANA zone by name, e.g. ``Europe/Berlin``."""
    if not name or name != name.strip() or ".." in name or name.startswith("/"):
        raise InvalidInput(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        raise InvalidInput(
            f"unknown time zone {name!r}: use an IANA name like Europe/Berlin"
        ) from e


def localize(naive: datetime, zone: ZoneInfo) -> datetime:
    """Read a wall-clock time in ``zone``; reject times a DST gap skips."""
    aware = naive.replace(tzinfo=zone)
    round_trip = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if round_trip != naive:
        raise InvalidInput(
            f"{naive.isoformat(sep=' ')} does not exist in {zone.key} (skipped by a DST change)"
        )
    return aware.astimezone(UTC)


def parse_time(text: str, zone: ZoneInfo, now: datetime) -> datetime:
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
