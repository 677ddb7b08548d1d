"""``create --from-file``: bookings from JSON Lines or CSV, validated line by line.

Keys are the option names (booking_id, starts_at, ends_at, to, title,
timezone, remind, locale, data). In JSON ``to`` and ``remind`` are a string
or a list and ``data`` an object; in CSV several values are separated by
spaces and ``data`` is ``k=v`` pairs (shell-quoted when a value has spaces).

Input is bounded, because it may come from a booking site's end users: a
line holds at most ``MAX_LINE_CHARS`` characters, a file at most
``MAX_FILE_CHARS``, JSON nests at most ``MAX_JSON_DEPTH`` levels; each bad
line (too long, too deep, an over-long number, a CSV or JSON error) is
reported with its number, exit 2, and nothing is written.
"""

from __future__ import annotations

import csv
import gc
import json
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TextIO

from .config import clip, redact
from .errors import InvalidInput, shown
from .service import BookingFields, BookingInput
from .times import collecting_notes

KEYS = BookingFields.names(per_line=True)
MAX_ERRORS_SHOWN = 50
#: one line (one booking) at most 64 Ki characters; a whole file at most 256 Mi
MAX_LINE_CHARS = 65_536
MAX_FILE_CHARS = 256 * 1024 * 1024
#: a booking is an object whose ``data`` may hold a little structure, no more
MAX_JSON_DEPTH = 16
#: each per-line error at most this long (it may echo a value of any size)
MAX_ERROR_CHARS = 300
_READ_CHUNK = 1 << 16


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a whole file is read and written.

    A file of 100k bookings keeps millions of objects alive until it is written,
    and every collection of the oldest generation walks them all again (a
    third of the run's time); they are freed by reference counting anyway.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_data_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings → dict; a key given twice is an error, not "the last wins"."""
    data: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"invalid data {shown(pair)}: use KEY=VALUE")
        if key in data:
            raise InvalidInput(
                f"data key {shown(key)} given twice ({shown(data[key], 40)} and "
                f"{shown(value, 40)}): give each key once"
            )
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


def _too_deep(value: Any, depth: int = 1) -> bool:
    """True when ``value`` nests more than ``MAX_JSON_DEPTH`` levels (stops early).

    A value inside a container is one level deeper than the container, whether it is
    a container itself or not; only containers are descended into.
    """
    if depth > MAX_JSON_DEPTH:
        return True
    if isinstance(value, dict):
        children: Iterable[Any] = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if depth == MAX_JSON_DEPTH:
        return bool(value)  # any child is one level too deep
    return any(_too_deep(v, depth + 1) for v in children if isinstance(v, (dict, list)))


def _json_records(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield number, f"invalid JSON: {e.msg}"
            continue
        except RecursionError:
            yield number, f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels"
            continue
        except ValueError as e:  # e.g. an integer longer than Python converts (4300 digits)
            yield number, f"invalid JSON: {str(e).partition(':')[0]}"
            continue
        if _too_deep(record):
            yield number, f"invalid JSON: nested more than {MAX_JSON_DEPTH} levels"
            continue
        yield number, record if isinstance(record, dict) else "expected a JSON object"


def _csv_records(
    stream: Iterable[str], line_number: Callable[[], int]
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(stream)
    try:
        fieldnames = reader.fieldnames or []
    except csv.Error as e:
        raise InvalidInput(f"line 1: invalid CSV header: {e}") from e
    unknown = set(fieldnames) - set(KEYS)
    if unknown:
        names = ", ".join(clip(n, 40) for n in sorted(unknown)[:10])
        raise InvalidInput(f"unknown CSV column(s): {names}")
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:  # a field over the limit, a broken quote
            # where the next record starts is unknowable now: stop reading here
            yield line_number(), f"invalid CSV: {e} (the rest of the file was not read)"
            return
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


def _to_input(record: Mapping[str, Any], defaults: BookingFields, now: datetime) -> BookingInput:
    given = BookingFields.from_record(record, _as_list).over(defaults)
    for name in given.missing():
        if name != "to":  # no recipient: validation says how to give one
            raise InvalidInput(f"{name} is missing")
    return given.validated(now)


def read_bookings(
    stream: TextIO,
    *,
    name: str,
    defaults: BookingFields,
    now: datetime,
    progress: Callable[[int], None] | None = None,
    notes: list[str] | None = None,
) -> tuple[list[BookingInput], list[int]]:
    """Every booking of a file with its line number; all invalid lines in one error.

    ``notes`` receives ``line N: …`` notes on how a line was read (an ambiguous time).
    """
    source = _BoundedLines(stream, name)
    first = next(source, "")
    is_json = first.lstrip().startswith("{") or name.endswith((".jsonl", ".ndjson", ".json"))
    if is_json:
        records = _json_records(_chain(first, source))
    else:
        records = _csv_records(_chain(first, source), lambda: source.number)
    inputs: list[BookingInput] = []
    lines: list[int] = []
    errors: list[tuple[int, str]] = []
    with collecting_notes() as found:
        for count, (number, record) in enumerate(records, 1):
            if progress is not None and count % 1000 == 0:
                progress(count)
            if isinstance(record, str):
                errors.append((number, record))
                continue
            try:
                inputs.append(_to_input(record, defaults, now))
                lines.append(number)
            except InvalidInput as e:
                errors.append((number, e.message))
            except (ValueError, RecursionError) as e:  # a value Python itself refuses
                errors.append((number, f"invalid value: {type(e).__name__}"))
            if found:
                if notes is not None and lines and lines[-1] == number:
                    notes.extend(f"line {number}: {note}" for note in found)
                found.clear()
    errors += source.errors
    if errors:
        errors.sort(key=lambda e: e[0])
        text = [_line_error(number, message) for number, message in errors[:MAX_ERRORS_SHOWN]]
        if len(errors) > MAX_ERRORS_SHOWN:
            text.append(f"… and {len(errors) - MAX_ERRORS_SHOWN} more")
        raise InvalidInput(f"{name}: {len(errors)} invalid line(s), nothing written", text)
    if not inputs:
        raise InvalidInput(f"{name}: no bookings found")
    return inputs, lines


def _line_error(number: int, message: str) -> str:
    """``line N: …``, redacted and then cut (cutting first could split a secret)."""
    return redact.clipped(f"line {number}: {message}", MAX_ERROR_CHARS)


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    if first:
        yield first
    yield from rest


class _BoundedLines:
    """The lines of a stream, each at most ``MAX_LINE_CHARS``, in all at most ``MAX_FILE_CHARS``.

    An over-long line is read to its end in chunks (never held whole), replaced
    by an empty line (so later line numbers stay right) and noted in ``errors``.
    A file over the size limit stops the whole read with one error.
    """

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self._name = name
        self.number = 0
        self._total = 0
        self.errors: list[tuple[int, str]] = []

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._stream.readline(MAX_LINE_CHARS + 1)
        if not line:
            raise StopIteration
        self.number += 1
        self._count(len(line))
        if line.endswith("\n") or len(line) <= MAX_LINE_CHARS:
            return line
        while not line.endswith("\n"):  # skip the rest of the over-long line
            line = self._stream.readline(_READ_CHUNK)
            if not line:
                break
            self._count(len(line))
        self.errors.append((self.number, f"longer than {MAX_LINE_CHARS} characters"))
        return "\n"

    def _count(self, chars: int) -> None:
        self._total += chars
        if self._total > MAX_FILE_CHARS:
            raise InvalidInput(
                f"{self._name} is larger than {MAX_FILE_CHARS // (1024 * 1024)} MiB: "
                "split it into several files"
            )
