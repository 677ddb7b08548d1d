"""Output: JSON, CSV and tables. rich is imported only to draw a table on a terminal."""

from __future__ import annotations

import csv
import io
import json
import os
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


def render_csv(rows: Iterable[Mapping[str, Any]], fields: Sequence[str], out: TextIO) -> None:
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else plain(row[k]) for k in fields})


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    text = str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def render_table(
    rows: Iterable[Mapping[str, Any]],
    fields: Sequence[str],
    output: Output,
    title: str | None = None,
) -> None:
    """A rich table on a terminal; tab-separated lines otherwise (cron, pipes)."""
    if not output.is_tty:
        buffer = io.StringIO()
        buffer.write("\t".join(fields) + "\n")
        for row in rows:
            buffer.write("\t".join(_cell(row[f]) for f in fields) + "\n")
        output.stdout.write(buffer.getvalue())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name in fields:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row[f]) for f in fields))
    Console(file=output.stdout, no_color=output.no_color).print(table)
