"""``create --from-file``: bookings from JSON Lines or CSV, validated line by line.

Keys are the option names (booking_id, starts_at, ends_at, to, title,
timezone, remind, locale, data). In JSON ``to`` and ``remind`` are a string
or a list and ``data`` an object; in CSV several values are separated by
spaces and ``data`` is ``k=v`` pairs (shell-quoted when a value has spaces).
"""

from __future__ import annotations

import csv
import json
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TextIO

from .errors import InvalidInput
from .service import BookingInput, booking_input

KEYS = ("booking_id", "starts_at", "ends_at", "to", "title", "timezone", "remind", "locale", "data")
MAX_ERRORS_SHOWN = 50


def parse_data_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings → dict."""
    data: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"invalid data {pair!r}: use KEY=VALUE")
        data[key] = value
    return data


def _as_list(value: Any) -> list[str]:
    """A list of strings, or one string of space-separated values."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise InvalidInput("lists must hold strings")
        return value
    if isinstance(value, str):
        return value.split()
    raise InvalidInput(f"expected a string or a list, got {type(value).__name__}")


def _json_records(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield number, f"invalid JSON: {e.msg}"
            continue
        yield number, record if isinstance(record, dict) else "expected a JSON object"


def _csv_records(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(stream)
    unknown = set(reader.fieldnames or []) - set(KEYS)
    if unknown:
        raise InvalidInput(f"unknown CSV column(s): {', '.join(sorted(unknown))}")
    for row in reader:
        record: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "")}
        if None in row:
            yield reader.line_num, "more values than columns"
            continue
        if "data" in record:
            try:
                record["data"] = parse_data_pairs(shlex.split(record["data"]))
            except (InvalidInput, ValueError) as e:
                yield reader.line_num, str(e)
                continue
        yield reader.line_num, record


def _to_input(
    record: Mapping[str, Any], defaults: Mapping[str, Any], now: datetime
) -> BookingInput:
    unknown = set(record) - set(KEYS)
    if unknown:
        raise InvalidInput(f"unknown key(s): {', '.join(sorted(unknown))}")
    merged = {**{k: v for k, v in defaults.items() if v not in (None, [], ())}, **record}
    if "booking_id" not in merged:
        raise InvalidInput("booking_id is missing")
    for key in ("starts_at", "ends_at"):
        if key not in merged:
            raise InvalidInput(f"{key} is missing")
    data = merged.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidInput("data must be an object")
    for key in ("booking_id", "starts_at", "ends_at", "title", "timezone", "locale"):
        if key in merged and not isinstance(merged[key], str):
            raise InvalidInput(f"{key} must be a string")
    return booking_input(
        merged["booking_id"],
        starts_at=merged["starts_at"],
        ends_at=merged["ends_at"],
        to=_as_list(merged.get("to")),
        title=merged.get("title"),
        timezone=merged.get("timezone") or "UTC",
        remind=_as_list(merged.get("remind")),
        locale=merged.get("locale"),
        data=data,
        reactivate=bool(defaults.get("reactivate")),
        now=now,
    )


def read_bookings(
    stream: TextIO,
    *,
    name: str,
    defaults: Mapping[str, Any],
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[BookingInput], list[int]]:
    """Every booking of a file with its line number; all invalid lines in one error."""
    first = stream.readline()
    is_json = first.lstrip().startswith("{") or name.endswith((".jsonl", ".ndjson", ".json"))
    if is_json:
        records = _json_records(_chain(first, stream))
    else:
        records = _csv_records(_Rewound(first, stream))  # type: ignore[arg-type]
    inputs: list[BookingInput] = []
    lines: list[int] = []
    errors: list[str] = []
    for count, (number, record) in enumerate(records, 1):
        if progress is not None and count % 1000 == 0:
            progress(count)
        if isinstance(record, str):
            errors.append(f"line {number}: {record}")
            continue
        try:
            inputs.append(_to_input(record, defaults, now))
            lines.append(number)
        except InvalidInput as e:
            errors.append(f"line {number}: {e.message}")
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        if len(errors) > MAX_ERRORS_SHOWN:
            shown.append(f"… and {len(errors) - MAX_ERRORS_SHOWN} more")
        raise InvalidInput(f"{name}: {len(errors)} invalid line(s), nothing written", shown)
    if not inputs:
        raise InvalidInput(f"{name}: no bookings found")
    return inputs, lines


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


class _Rewound:
    """A text stream whose first line was already read (csv needs an iterator)."""

    def __init__(self, first: str, rest: TextIO) -> None:
        self._lines = _chain(first, rest)

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def __next__(self) -> str:
        return next(self._lines)
