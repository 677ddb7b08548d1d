"""Building the message of one reminder for its channel, from the booking as stored.

Sits between the run (and previews) and ``texts``: the run hands over a
booking row, a claim and a channel; this renders the text true at ``now``
and assembles what the channel sends. Jinja2 is imported on first use.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from .channels.base import Channel, Message, TextFormat
from .config import Settings

if TYPE_CHECKING:
    from .queries import BookingRow
    from .texts import Booking, Rendered, TemplateSet


class Addressed(Protocol):
    """What a message needs to know of its reminder."""

    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def recipient(self) -> str: ...


def booking_view(row: BookingRow) -> Booking:
    from .texts import Booking

    return Booking(
        booking_id=row.external_id,
        title=row.title,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        timezone=row.timezone,
        locale=row.locale,
        data=dict(row.data or {}),
    )


def load_templates(settings: Settings) -> TemplateSet | None:
    """The operator's templates (``NOTIFYCTL_TEMPLATES``), or None for the built-in texts."""
    if not settings.templates_path:
        return None
    from .texts import TemplateSet

    return TemplateSet.load(settings.templates_path)


def render_for(
    booking: BookingRow,
    kind: str,
    channel: str,
    recipient: str,
    now: datetime,
    templates: TemplateSet | None,
    *,
    text_format: TextFormat = "plain",
    max_length: int | None = None,
    parts: frozenset[str] = frozenset(),
) -> tuple[Rendered, dict[str, Any]]:
    """The rendered text of one reminder, true at ``now``, and the variables it saw."""
    from .texts import BUILTIN, context, render_template

    view = booking_view(booking)
    variables = context(view, kind, recipient, channel, now)
    template = templates.lookup(view.locale, kind, channel) if templates else BUILTIN
    rendered = render_template(
        template, variables, text_format=text_format, max_length=max_length, parts=parts
    )
    return rendered, variables


def build_message(
    claim: Addressed,
    booking: BookingRow,
    channel: Channel,
    now: datetime,
    templates: TemplateSet | None = None,
) -> Message:
    """The message for one claimed reminder, rendered for its channel."""
    rendered, variables = render_for(
        booking,
        claim.kind,
        claim.channel,
        claim.recipient,
        now,
        templates,
        text_format=channel.text_format,
        max_length=channel.max_text_length,
        parts=channel.parts,
    )
    view = booking_view(booking)
    payload = {
        "notification_id": claim.id,
        "booking_id": view.booking_id,
        "kind": claim.kind,
        "recipient": claim.recipient,
        "title": view.title,
        "starts_at": view.starts_at.isoformat(),
        "ends_at": view.ends_at.isoformat(),
        "starts_at_local": variables["start"].isoformat(),
        "ends_at_local": variables["end"].isoformat(),
        "timezone": view.timezone,
        "data": view.data,
    }
    return Message(
        notification_id=claim.id,
        booking_id=view.booking_id,
        kind=claim.kind,
        recipient=claim.recipient,
        text=rendered.text,
        text_format=rendered.text_format,
        subject=rendered.subject,
        html=rendered.html,
        payload=payload,
    )
