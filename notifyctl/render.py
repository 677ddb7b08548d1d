"""Output: JSON, CSV and tables. rich is imported only to draw a table on a terminal."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from .times import iso_utc


@dataclass(frozen=True)
class Output:
    """Where data and diagnostics go, and whether a human is watching."""

    stdout: TextIO
    stderr: TextIO
    is_tty: bool
    no_color: bool

    @classmethod
    def from_env(cls) -> Output:
        return cls(
            stdout=sys.stdout,
            stderr=sys.stderr,
            is_tty=sys.stdout.isatty(),
            no_color="NO_COLOR" in os.environ,
        )

    def line(self, text: str = "") -> None:
        print(text, file=self.stdout)


def plain(value: Any) -> Any:
    """A JSON/CSV-friendly value: times as ISO 8601 UTC."""
    if isinstance(value, datetime):
        return iso_utc(value)
    return value


def render_json(value: Any) -> str:
    return json.dumps(value, default=plain, ensure_ascii=False, indent=2)


def render_json_rows(rows: Iterable[Mapping[str, Any]], out: TextIO) -> None:
    """A JSON array written row by row, so a long list never sits in memory."""
    out.write("[")
    for index, row in enumerate(rows):
        out.write(",\n  " if index else "\n  ")
        out.write(json.dumps({k: plain(v) for k, v in row.items()}, ensure_ascii=False))
    out.write("\n]\n")


#: what a spreadsheet reads as the start of a formula (OWASP "CSV injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
#: control characters (C0, DEL, C1) and the bidirectional overrides that reorder text
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: str, keep: str = "") -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), except ``keep``.

    What booking data holds is shown, never obeyed: no terminal escape
    sequences, carriage returns, tabs or bidirectional overrides reach a screen.
    """
    if not keep:
        return _UNSAFE.sub(_escaped, text)
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escaped(m), text)


def csv_cell(value: Any) -> Any:
    """A CSV value a spreadsheet shows as text: a formula-like cell gets a leading ``'``.

    Plain numbers (a Telegram group id ``-100123``) stay as they are.
    """
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    return value if _NUMBER.fullmatch(value) else "'" + value


def render_csv(rows: Iterable[Mapping[str, Any]], fields: Sequence[str], out: TextIO) -> None:
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else csv_cell(plain(row[k])) for k in fields})


def _cell(value: Any) -> str:
    """One table cell as plain, inert text (never markup), at most 60 characters."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    text = inert(str(value)[:240])
    return text if len(text) <= 60 else text[:59] + "…"


#: a column that may be cut keeps at least this many characters (unless told otherwise)
MIN_CUT_WIDTH = 6


def fit_widths(
    natural: Sequence[int], floors: Sequence[int | None], room: int, last: Sequence[bool] = ()
) -> list[int]:
    """Column widths that fit ``room``: the widest column that may be cut gives way first.

    A column whose floor is None keeps its natural width; the others shrink,
    widest first, down to their floor (those marked ``last`` only when the
    rest are at theirs), and never wrap.
    """
    widths = list(natural)
    late = list(last) or [False] * len(widths)
    while sum(widths) > room:
        open_ = [i for i, floor in enumerate(floors) if floor is not None and widths[i] > floor]
        candidates = [i for i in open_ if not late[i]] or open_
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def render_table(
    rows: Iterable[Mapping[str, Any]],
    fields: Sequence[str],
    output: Output,
    title: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    numeric: Sequence[str] = (),
    cut: Mapping[str, int] | Sequence[str] = (),
    cut_last: Sequence[str] = (),
) -> None:
    """A rich table on a terminal; tab-separated lines otherwise (cron, pipes).

    On a terminal no cell wraps: when the screen is too narrow, the ``cut``
    columns are shortened with "…" (``--format json`` has every value whole);
    ``numeric`` columns are right-aligned. ``headers`` renames columns for people.
    """
    names = [(headers or {}).get(f, f) for f in fields]
    if not output.is_tty:
        buffer = io.StringIO()
        buffer.write("\t".join(names) + "\n")
        for row in rows:
            buffer.write("\t".join(_cell(row[f]) for f in fields) + "\n")
        output.stdout.write(buffer.getvalue())
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=output.stdout, no_color=output.no_color, emoji=False, markup=False)
    cells = [[_cell(row[f]) for f in fields] for row in rows]
    natural = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    gaps = 2 * (len(fields) - 1)
    floors = [  # a header is never cut
        max(cut[f] if isinstance(cut, Mapping) else MIN_CUT_WIDTH, len(n)) if f in cut else None
        for f, n in zip(fields, names, strict=True)
    ]
    widths = fit_widths(natural, floors, console.width - gaps, [f in cut_last for f in fields])
    # Text cells are never parsed as markup: "[/x]" or "[link=…]" in a booking id is shown
    table = Table(
        title=Text(title) if title else None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for field, name, width in zip(fields, names, widths, strict=True):
        table.add_column(
            Text(name),
            justify="right" if field in numeric else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width=width,
            max_width=width,
        )
    for row_cells in cells:
        table.add_row(*(Text(c) for c in row_cells))
    console.print(table)
