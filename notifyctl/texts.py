"""Message texts: built-in English texts, rendered with Jinja2 in a sandbox.

Every value that reaches a template is escaped for the channel (HTML for
Telegram), so booking data cannot inject markup. Relative words ("today",
"tomorrow", "in 40 minutes") are computed from ``now`` at send time, in the
booking's own time zone.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from .kinds import Kind, parse_kind

ELLIPSIS = "…"

# One text per anchor and tense covers every kind, offsets included.
BUILTIN_TEXT = (
    "{% if anchor == 'start' %}"
    "{% if minutes_to_start < -1 %}"
    '"{{ title }}" started at {{ start_time }} ({{ timezone }}) and ends at {{ end_time }}.'
    "{% elif minutes_to_start <= 1 %}"
    '"{{ title }}" starts now ({{ start_time }} {{ timezone }}).'
    "{% else %}"
    'Reminder: "{{ title }}" starts {{ starts_relative }} ({{ timezone }}).'
    "{% endif %}"
    "{% else %}"
    '"{{ title }}" ends {{ ends_relative }} ({{ timezone }}).'
    "{% endif %}"
)
BUILTIN_SUBJECT = (
    "Reminder: {{ title }} "
    "{% if anchor == 'start' %}starts {{ starts_relative }}{% else %}ends {{ ends_relative }}"
    "{% endif %}"
)


def relative(when: datetime, now: datetime) -> str:
    """Words for ``when`` seen from ``now`` (both in the booking's zone)."""
    clock = when.strftime("%H:%M")
    minutes = round((when - now).total_seconds() / 60)
    if minutes <= 0:
        return f"now, at {clock}" if minutes > -1 else f"at {clock}"
    if minutes < 90:
        unit = "minute" if minutes == 1 else "minutes"
        return f"in {minutes} {unit}, at {clock}"
    days = (when.date() - now.date()).days
    if days == 0:
        return f"today at {clock}"
    if days == 1:
        return f"tomorrow at {clock}"
    if days < 7:
        return f"on {when.strftime('%A')} at {clock}"
    return f"on {when.day} {when.strftime('%B %Y')} at {clock}"


@dataclass(frozen=True)
class Booking:
    """What a text may show of a booking (no database types)."""

    booking_id: str
    title: str
    starts_at: datetime
    ends_at: datetime
    timezone: str
    locale: str | None
    data: dict[str, Any]


def context(
    booking: Booking, kind: str, recipient: str, channel: str, now: datetime
) -> dict[str, Any]:
    """The variables every template sees."""
    zone = ZoneInfo(booking.timezone)
    start = booking.starts_at.astimezone(zone)
    end = booking.ends_at.astimezone(zone)
    local_now = now.astimezone(zone)
    parsed: Kind = parse_kind(kind)
    return {
        "title": booking.title,
        "booking_id": booking.booking_id,
        "data": dict(booking.data),
        "kind": kind,
        "anchor": parsed.anchor,
        "timezone": booking.timezone,
        "locale": booking.locale or "",
        "recipient": recipient,
        "channel": channel,
        "start": start,
        "end": end,
        "start_time": start.strftime("%H:%M"),
        "end_time": end.strftime("%H:%M"),
        "start_date": start.strftime("%Y-%m-%d"),
        "end_date": end.strftime("%Y-%m-%d"),
        "starts_relative": relative(start, local_now),
        "ends_relative": relative(end, local_now),
        "minutes_to_start": (start - local_now).total_seconds() / 60,
        "minutes_to_end": (end - local_now).total_seconds() / 60,
        "now": local_now,
    }


@cache
def _environment(autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
    env.globals["relative"] = relative
    return env


@cache
def _compile(source: str, autoescape: bool) -> Any:
    return _environment(autoescape).from_string(source)


def render(source: str, variables: dict[str, Any], *, html_escape: bool) -> str:
    """Render one template; Jinja2 errors propagate (the caller fails the reminder)."""
    return str(_compile(source, html_escape).render(variables)).strip()


_TAG = re.compile(r"<[^>]*>")


def visible_length(text: str, text_format: str) -> int:
    """Length as Telegram counts it: after entity parsing, in UTF-16 code units."""
    shown = html.unescape(_TAG.sub("", text)) if text_format == "html" else text
    return len(shown.encode("utf-16-le")) // 2


def truncate(text: str, limit: int) -> str:
    """Cut plain text to ``limit`` UTF-16 units, ending with "…", on a code-point boundary."""
    if visible_length(text, "plain") <= limit:
        return text
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit - 1:
            return text[:index] + ELLIPSIS
    return text  # pragma: no cover - unreachable: the text was longer than the limit


@dataclass(frozen=True)
class Rendered:
    text: str
    text_format: str
    subject: str


def render_reminder(
    variables: dict[str, Any],
    *,
    text_format: str,
    max_length: int | None,
    text_source: str = BUILTIN_TEXT,
    subject_source: str = BUILTIN_SUBJECT,
) -> Rendered:
    """The text for one channel; too long for the channel → plain text cut with "…"."""
    text = render(text_source, variables, html_escape=text_format == "html")
    subject = render(subject_source, variables, html_escape=False)
    if max_length is not None and visible_length(text, text_format) > max_length:
        # in the escaped HTML every "<" left is the template's own markup
        plain = html.unescape(_TAG.sub("", text)) if text_format == "html" else text
        return Rendered(truncate(plain, max_length), "plain", subject)
    return Rendered(text, text_format, subject)
