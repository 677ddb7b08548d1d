"""What a run would send, rendered, without sending or writing anything.

``dispatch --dry-run`` and ``templates preview``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from . import queries
from .channels import shown_recipient
from .config import Settings, redact
from .db import Store
from .errors import NotFound
from .message import load_templates, render_for


@dataclass(frozen=True)
class Preview:
    id: int
    channel: str
    recipient: str
    kind: str
    text: str


def preview(store: Store, settings: Settings, limit: int = 1000) -> list[Preview]:
    """What a run would send now, rendered; nothing is written."""
    now = store.clock()
    with store.reader() as conn:
        rows = queries.due_preview(conn, now, limit)
        bookings = queries.bookings_by_id(conn, (r.booking_id for r in rows))
    return _previews(rows, bookings, lambda _row: now, load_templates(settings))


def preview_booking(
    store: Store, settings: Settings, booking_id: str, kind: str | None = None
) -> list[Preview]:
    """The text each recipient of a booking would get, rendered as of when it is due."""
    now = store.clock()
    with store.reader() as conn:
        rows = queries.reminders_of(conn, booking_id, kind)
        if not rows:
            raise NotFound(
                f"no reminders for booking {booking_id!r}" + (f" of kind {kind}" if kind else "")
            )
        bookings = queries.bookings_by_id(conn, (r.booking_id for r in rows))
    return _previews(rows, bookings, lambda row: max(now, row.due_at), load_templates(settings))


def _previews(
    rows: list[Row[Any]],
    bookings: dict[int, Row[Any]],
    when: Callable[[Row[Any]], datetime],
    templates: Any,
) -> list[Preview]:
    previews = []
    for row in rows:
        try:
            rendered, _ = render_for(
                bookings[row.booking_id],
                row.kind,
                row.channel,
                row.recipient,
                when(row),
                templates,
            )
            text = rendered.text
        except Exception as e:  # show the failure the run would record
            text = redact(f"<template error: {type(e).__name__}: {e}>")
        previews.append(
            Preview(row.id, row.channel, shown_recipient(row.recipient), row.kind, text)
        )
    return previews
