"""What a run would send, rendered, without sending or writing anything.

``dispatch --dry-run`` and ``templates preview``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from . import queries
from .channels import shown_recipient
from .config import Settings, redact
from .db import Store
from .errors import NotFound
from .message import load_templates, render_for
from .queries import BookingRow, DueReminder


@dataclass(frozen=True)
class Preview:
    id: int
    channel: str
    recipient: str
    kind: str
    text: str
    #: the reminder's status (templates preview; None in a dispatch dry run, all pending)
    status: str | None = None
    #: the subject and HTML part, for channels that send them (email)
    subject: str | None = None
    html: str | None = None


def _channel_parts(channel: str) -> tuple[frozenset[str], Callable[[Any], str] | None]:
    """The optional parts a channel sends (``subject``, ``html``) and its subject rule."""
    from .channels import CHANNELS, capabilities, channel_module

    parts = capabilities(channel).parts if channel in CHANNELS else frozenset()
    if "subject" not in parts:
        return parts, None
    return parts, getattr(channel_module(channel), "subject_for", None)


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
        where = queries.ListFilter(statuses=(), booking_id=booking_id, kind=kind)
        statuses = {r.id: r.status for r in queries.list_notifications(conn, where)}
    previews = _previews(
        rows, bookings, lambda row: max(now, row.due_at), load_templates(settings), parts=True
    )
    return [replace(p, status=statuses.get(p.id)) for p in previews]


def _previews(
    rows: list[DueReminder],
    bookings: dict[int, BookingRow],
    when: Callable[[DueReminder], datetime],
    templates: Any,
    *,
    parts: bool = False,
) -> list[Preview]:
    previews = []
    for row in rows:
        wanted, subject_rule = _channel_parts(row.channel) if parts else (frozenset(), None)
        subject = html = None
        try:
            rendered, _ = render_for(
                bookings[row.booking_id],
                row.kind,
                row.channel,
                row.recipient,
                when(row),
                templates,
                parts=wanted,
            )
            text = rendered.text
            if "subject" in wanted:  # what the channel sends, its default included
                subject = subject_rule(rendered) if subject_rule else rendered.subject
            if "html" in wanted:
                html = rendered.html
        except Exception as e:  # show the failure the run would record
            text = redact(f"<template error: {type(e).__name__}: {e}>")
        previews.append(
            Preview(
                row.id,
                row.channel,
                shown_recipient(row.recipient),
                row.kind,
                text,
                subject=subject,
                html=html,
            )
        )
    return previews
