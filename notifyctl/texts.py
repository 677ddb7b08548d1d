"""Message texts: built-in English texts and operator templates (Jinja2, sandboxed).

Every value that reaches a template is escaped for the channel (HTML for
Telegram and email HTML parts), so booking data cannot inject markup.
Relative words ("today", "tomorrow", "in 40 minutes") are computed from
``now`` at send time, in the booking's own time zone.

Operator templates come from a TOML file (``NOTIFYCTL_TEMPLATES``)::

    [kinds.day_before]                 # per kind
    text = "Reminder: {{ title }} starts {{ starts_relative }}."
    subject = "Tomorrow: {{ title }}"  # email subject
    html = "<p>{{ title }}</p>"        # email HTML part

    [kinds.day_before.telegram]        # per kind and channel
    text = "<b>{{ title }}</b> starts {{ starts_relative }}"

    [locales.de.kinds.day_before]      # per locale (and .CHANNEL below it)
    text = "Erinnerung: {{ title }} beginnt um {{ start_time }} Uhr."

    [default]                          # any kind without its own entry
    text = "…"

Lookup takes the booking's language first: locale + kind + channel, locale +
kind, locale default + channel, locale default; then the same for the base
language (``pt-BR`` → ``pt``) and for no locale; then the built-in text.
"""

from __future__ import annotations

import functools
import html
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import TemplateRuntimeError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from .channels.base import TextFormat
from .errors import ConfigError, InvalidInput
from .kinds import Kind, parse_kind
from .times import parse_zone

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


def _minutes_between(earlier: datetime, later: datetime) -> float:
    """Elapsed minutes; in UTC, because two times in one zone subtract as wall clocks."""
    return (later.astimezone(UTC) - earlier.astimezone(UTC)).total_seconds() / 60


def relative(when: datetime, now: datetime) -> str:
    """Words for ``when`` seen from ``now`` (both in the booking's zone)."""
    clock = when.strftime("%H:%M")
    minutes = round(_minutes_between(now, when))
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
    zone = parse_zone(booking.timezone)
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
        "minutes_to_start": _minutes_between(now, booking.starts_at),
        "minutes_to_end": _minutes_between(now, booking.ends_at),
        "days_to_start": (start.date() - local_now.date()).days,
        "days_to_end": (end.date() - local_now.date()).days,
        "now": local_now,
    }


# --- limits: an operator's template must fail fast, never stall a run or fill memory ----

#: wall-clock seconds one rendering may take
RENDER_SECONDS = 1.0
#: characters one rendering may produce, and the largest value an operator may build
MAX_OUTPUT_CHARS = 100_000
#: a ``%`` conversion with a width or precision of six digits or more
_WIDE_FORMAT = re.compile(r"%[-#0 +]*(?:\d{6,}|\d*\.\d{6,})")
#: the largest integer an operator's arithmetic may build
_MAX_INT_BITS = 4096
#: how many loop iterations pass between two clock readings
_TICK_EVERY = 64
_limits = threading.local()


class TemplateLimitError(TemplateRuntimeError):
    """A template ran too long or built too much (the reminder fails, the run goes on)."""


def _tick() -> None:
    """Raise when the rendering under way on this thread is past its deadline."""
    deadline: float | None = getattr(_limits, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimitError(f"template took longer than {RENDER_SECONDS:g} s to render")


def _too_big(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"{what} is over the template limit ({MAX_OUTPUT_CHARS} characters)")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | bytes) else 0


def _check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """No width, count or repeat larger than the output may be (``center(10**9)``)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > MAX_OUTPUT_CHARS:
            raise _too_big(f"an argument of {value.bit_length()} bits")


def _check_amplifiers(name: str, subject: Any, args: tuple[Any, ...]) -> None:
    """Operations whose result outgrows their inputs: replace, join, indent."""
    if name == "replace" and isinstance(subject, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = len(subject) + 1 if not old else subject.count(old)
        if len(subject) + hits * max(len(new) - len(old), 0) > MAX_OUTPUT_CHARS:
            raise _too_big("replace")
    elif name == "join" and args:
        items, glue = (subject, args[0]) if not isinstance(subject, str) else (args[0], subject)
        if _size(items) * _size(glue) > MAX_OUTPUT_CHARS:
            raise _too_big("join")
    elif name == "indent" and isinstance(subject, str) and args:
        lines = subject.count("\n") + 1
        if lines * max(_size(args[0]), 1) > MAX_OUTPUT_CHARS:
            raise _too_big("indent")


def _guard_filter(name: str, function: Any) -> Any:
    skip = 1 if getattr(function, "jinja_pass_arg", None) else 0  # context, eval context, env

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        values = args[skip:]
        _check_arguments(values[1:], kwargs)
        if values:
            _check_amplifiers(name, values[0], values[1:])
        return function(*args, **kwargs)

    return guarded


def _loop_guard(iterable: Any) -> Any:
    """Every ``{% for %}`` iterates through this: it reads the clock now and then."""
    for index, item in enumerate(iterable):
        if index % _TICK_EVERY == 0:
            _tick()
        yield item


class _LimitedEnvironment(SandboxedEnvironment):
    """The Jinja2 sandbox with a render deadline and bounded values.

    The deadline is read on every call, attribute or item access, operator,
    filter, loop iteration (each ``for`` is rewritten to iterate through
    ``_loop_guard``) and piece of output, so no template construct runs long
    between two readings; ``*``, ``**``, ``+``, ``%`` and the widening
    filters and methods refuse results over ``MAX_OUTPUT_CHARS``.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.globals["_notifyctl_loop"] = _loop_guard

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            guard = nodes.Name("_notifyctl_loop", "load", lineno=loop.lineno)
            loop.iter = nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.lineno)
        tree.set_environment(self)
        return tree

    def call(self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_arguments(args, kwargs)
        name = getattr(__obj, "__name__", "")
        _check_amplifiers(name, getattr(__obj, "__self__", None), args)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        both_ints = isinstance(left, int) and isinstance(right, int)
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if _size(seq) and isinstance(times, int) and _size(seq) * times > MAX_OUTPUT_CHARS:
                    raise _too_big("repeating a value")
            if both_ints and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise _too_big("a product")
        elif operator == "**":
            if both_ints and abs(left) > 1 and right * math.log2(abs(left)) > _MAX_INT_BITS:
                raise _too_big("a power")
        elif operator == "+":
            if _size(left) + _size(right) > MAX_OUTPUT_CHARS:
                raise _too_big("joining two values")
        elif operator == "%" and isinstance(left, str):
            values = right if isinstance(right, tuple) else (right,)
            _check_arguments(values, {})
            if _WIDE_FORMAT.search(left):
                raise _too_big("a format width")
        return super().call_binop(context, operator, left, right)


@cache
def _environment(autoescape: bool) -> SandboxedEnvironment:
    env = _LimitedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
    env.globals["relative"] = relative
    return env


@cache
def _compile(source: str, autoescape: bool) -> Any:
    return _environment(autoescape).from_string(source)


def render(source: str, variables: dict[str, Any], *, html_escape: bool) -> str:
    """Render one template within ``RENDER_SECONDS`` and ``MAX_OUTPUT_CHARS``.

    Jinja2 errors propagate, limits as ``TemplateLimitError`` (the caller fails
    the reminder, or ``templates check`` reports it).
    """
    template = _compile(source, html_escape)
    outer = getattr(_limits, "deadline", None)
    _limits.deadline = time.monotonic() + RENDER_SECONDS
    try:
        pieces: list[str] = []
        size = 0
        for piece in template.generate(variables):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise _too_big("the rendered text")
            _tick()
            pieces.append(piece)
        return "".join(pieces).strip()
    finally:
        _limits.deadline = outer


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
    text_format: TextFormat
    subject: str | None = None
    html: str | None = None


def render_reminder(
    variables: dict[str, Any],
    *,
    text_format: TextFormat,
    max_length: int | None,
    text_source: str = BUILTIN_TEXT,
) -> Rendered:
    """The text for one channel; too long for the channel → plain text cut with "…"."""
    text = render(text_source, variables, html_escape=text_format == "html")
    if max_length is not None and visible_length(text, text_format) > max_length:
        # in the escaped HTML every "<" left is the template's own markup
        plain = html.unescape(_TAG.sub("", text)) if text_format == "html" else text
        return Rendered(truncate(plain, max_length), "plain")
    return Rendered(text, text_format)


# --- operator templates ---------------------------------------------------------------


class TemplateError(InvalidInput):
    """Templates that do not render (``templates check``: exit 2)."""


class TemplateFileError(ConfigError):
    """A templates file that cannot be read (not UTF-8), parsed (TOML) or understood.

    Configuration (exit 3) where a run loads it; ``templates check`` reports it
    as a check failure (exit 2).
    """


@dataclass(frozen=True)
class Template:
    text: str = BUILTIN_TEXT
    subject: str = BUILTIN_SUBJECT
    html: str | None = None


BUILTIN = Template()
_FIELDS = ("text", "subject", "html")
Key = tuple[str | None, str | None, str | None]  # locale, kind, channel


class TemplateSet:
    """Templates by (locale, kind, channel); ``lookup`` falls back to the built-in text."""

    def __init__(
        self, entries: dict[Key, dict[str, str]] | None = None, path: str = "<built-in>"
    ) -> None:
        self.entries = entries or {}
        self.path = path

    @classmethod
    def builtin(cls) -> TemplateSet:
        """The built-in texts as a set, so they pass the same checks."""
        return cls({(None, None, None): {"text": BUILTIN_TEXT, "subject": BUILTIN_SUBJECT}})

    @classmethod
    def load(cls, path: str) -> TemplateSet:
        import tomllib

        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as e:
            raise TemplateFileError(f"cannot read templates file {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise TemplateFileError(
                f"templates file {path} is not UTF-8 text (byte {e.start}: {e.reason})"
            ) from e
        except tomllib.TOMLDecodeError as e:
            raise TemplateFileError(f"templates file {path} is not valid TOML: {e}") from e
        entries: dict[Key, dict[str, str]] = {}
        _collect(document, None, entries, path)
        for locale, table in _table(document.get("locales", {}), "locales", path).items():
            # bookings store pt-BR for --locale pt_BR: match either spelling here too
            name = locale.replace("_", "-").lower()
            _collect(_table(table, f"locales.{locale}", path), name, entries, path)
        return cls(entries, path)

    def lookup(self, locale: str | None, kind: str, channel: str) -> Template:
        fields: dict[str, str] = {}
        for key in reversed(_candidates(locale, kind, channel)):
            fields.update(self.entries.get(key, {}))
        return Template(**fields) if fields else BUILTIN

    def specific_keys(self) -> list[Key]:
        return sorted(self.entries, key=lambda k: tuple(p or "" for p in k))


def _candidates(locale: str | None, kind: str, channel: str) -> list[Key]:
    """Most specific first; the booking's language outranks a kind-specific text in another."""
    locales: list[str | None] = []
    if locale:
        locales.append(locale.lower())
        if "-" in locale:
            locales.append(locale.split("-")[0].lower())
    locales.append(None)
    keys: list[Key] = []
    for loc in locales:
        keys += [(loc, kind, channel), (loc, kind, None), (loc, None, channel), (loc, None, None)]
    return keys


def _table(value: Any, where: str, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TemplateFileError(f"{path}: [{where}] must be a table")
    return value


def _entry(
    table: dict[str, Any], key: Key, where: str, path: str, out: dict[Key, dict[str, str]]
) -> None:
    """One entry's fields, and below it (when it has no channel yet) per-channel entries."""
    from .channels import CHANNELS

    locale, kind, channel = key
    fields: dict[str, str] = {}
    for name, value in table.items():
        if name in _FIELDS:
            if not isinstance(value, str):
                raise TemplateFileError(f"{path}: {where}.{name} must be a string")
            fields[name] = value
        elif channel is None and name in CHANNELS:
            sub = f"{where}.{name}"
            _entry(_table(value, sub, path), (locale, kind, name), sub, path, out)
        else:
            expected = ", ".join(_FIELDS) + ("" if channel else " or a channel name")
            raise TemplateFileError(f"{path}: [{where}] unknown key {name!r} (expected {expected})")
    out[key] = fields


def _collect(
    document: dict[str, Any], locale: str | None, out: dict[Key, dict[str, str]], path: str
) -> None:
    prefix = f"locales.{locale}." if locale else ""
    allowed = {"default", "kinds"} if locale else {"default", "kinds", "locales"}
    unknown = set(document) - allowed
    if unknown:
        where = f" in [locales.{locale}]" if locale else ""
        raise TemplateFileError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}{where}")
    if "default" in document:
        where = f"{prefix}default"
        _entry(_table(document["default"], where, path), (locale, None, None), where, path, out)
    for kind, table in _table(document.get("kinds", {}), f"{prefix}kinds", path).items():
        where = f"{prefix}kinds.{kind}"
        try:
            name = parse_kind(kind).name
        except InvalidInput as e:
            raise TemplateFileError(f"{path}: [{where}]: {e.message}") from e
        _entry(_table(table, where, path), (locale, name, None), where, path, out)


def render_template(
    template: Template,
    variables: dict[str, Any],
    *,
    text_format: TextFormat,
    max_length: int | None,
    parts: frozenset[str] = frozenset(),
) -> Rendered:
    """The text, and the parts the channel sends (subject, HTML part), for one message.

    Only what the channel uses is rendered: an email-only HTML part that fails
    must not fail the Telegram reminder.
    """
    rendered = render_reminder(
        variables, text_format=text_format, max_length=max_length, text_source=template.text
    )
    subject = render(template.subject, variables, html_escape=False) if "subject" in parts else None
    html_part = None
    if "html" in parts and template.html:
        html_part = render(template.html, variables, html_escape=True)
    return Rendered(rendered.text, rendered.text_format, subject, html_part)


def sample_booking(now: datetime, data: dict[str, Any] | None = None) -> Booking:
    """The booking ``templates check`` renders against (markup in the title on purpose)."""
    from datetime import timedelta

    return Booking(
        booking_id="sample-1",
        title="Yoga <for> beginners & friends",
        starts_at=now + timedelta(hours=26),
        ends_at=now + timedelta(hours=27),
        timezone="Europe/Berlin",
        locale=None,
        data=dict(data or {}),
    )


def toml_key(key: Key) -> str:
    """Where an entry sits in the templates file, e.g. ``locales.de.kinds.day_before.telegram``."""
    locale, kind, channel = key
    parts = [f"locales.{locale}"] if locale else []
    parts.append(f"kinds.{kind}" if kind else "default")
    if channel:
        parts.append(channel)
    return ".".join(parts)


def check_templates(
    templates: TemplateSet, now: datetime, data: dict[str, Any] | None = None
) -> tuple[int, list[str]]:
    """Render every field of every entry for each kind and channel it applies to.

    Returns (renderings, errors); each error names the file, the entry and the field.
    """
    from .channels import CHANNELS, capabilities
    from .kinds import DEFAULT_KINDS

    channels = {name: capabilities(name) for name in CHANNELS}
    booking = sample_booking(now, data)
    errors: list[str] = []
    rendered = 0
    for key in templates.specific_keys():
        _, kind, channel = key
        scope = [channel] if channel else list(channels)
        for field_name, source in templates.entries[key].items():
            # each field against the channels that send it (an unused one still once)
            users = [c for c in scope if field_name == "text" or field_name in channels[c].parts]
            for kind_name in [kind] if kind else list(DEFAULT_KINDS):
                for channel_name in users or scope[:1]:
                    variables = context(booking, kind_name, "sample-recipient", channel_name, now)
                    escape = field_name == "html" or (
                        field_name == "text" and channels[channel_name].text_format == "html"
                    )
                    where = (
                        f"{templates.path}: [{toml_key(key)}] {field_name} "
                        f"({kind_name}, {channel_name})"
                    )
                    try:
                        text = render(source, variables, html_escape=escape)
                    except Exception as e:  # report every failure, keep checking
                        errors.append(f"{where}: {type(e).__name__}: {e}")
                        continue
                    problem = _rendered_problem(text, field_name, escape and field_name == "text")
                    if problem:
                        errors.append(f"{where}: {problem}")
                    else:
                        rendered += 1
    return rendered, errors


def _rendered_problem(text: str, field_name: str, telegram_html: bool) -> str | None:
    """Why a rendered text would fail at send time: empty, or HTML Telegram refuses."""
    if field_name != "html" and not text.strip():
        return f"the rendered {field_name} is empty"
    if telegram_html:
        return telegram_html_problem(text)
    return None


# --- Telegram's HTML parse mode ------------------------------------------------------------
# https://core.telegram.org/bots/api#html-style: only these tags (and attributes), only
# the named entities &lt; &gt; &amp; &quot; (numeric ones all), every other < > & escaped,
# and tags properly nested and closed; anything else is a 400 "can't parse entities".

TELEGRAM_TAGS: dict[str, frozenset[str]] = {
    **{t: frozenset() for t in ("b", "strong", "i", "em", "u", "ins", "s", "strike", "del")},
    "tg-spoiler": frozenset(),
    "span": frozenset({"class"}),  # only class="tg-spoiler"
    "a": frozenset({"href"}),
    "tg-emoji": frozenset({"emoji-id"}),
    "code": frozenset({"class"}),  # class="language-…" inside <pre>
    "pre": frozenset(),
    "blockquote": frozenset({"expandable"}),
}
TELEGRAM_ENTITIES = frozenset({"lt", "gt", "amp", "quot"})
_MARKUP = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)((?:\s[^<>]*)?)\s*(/?)>|<|>|&")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|([A-Za-z][A-Za-z0-9]*));")
_ATTRIBUTE = re.compile(
    r"""\s*([A-Za-z][\w-]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?"""
)


def telegram_html_problem(text: str) -> str | None:
    """What Telegram's HTML parse mode would reject in ``text``, or None."""
    open_tags: list[str] = []
    position = 0
    for match in _MARKUP.finditer(text):
        token = match.group()
        if token == "&":
            entity = _ENTITY.match(text, match.start())
            if entity is None:
                return f"a bare & at character {match.start()} (write &amp;)"
            if entity.group(1) and entity.group(1) not in TELEGRAM_ENTITIES:
                return f"entity {entity.group()} is not supported (only &lt; &gt; &amp; &quot;)"
            continue
        if token in ("<", ">"):
            if match.start() < position:
                continue
            return f"a bare {token} at character {match.start()} (write &lt; or &gt;)"
        position = match.end()
        closing, name, attributes, self_closing = match.groups()
        name = name.lower()
        if name not in TELEGRAM_TAGS:
            return f"tag <{name}> is not supported by Telegram"
        if self_closing:
            return f"<{name}/> is not supported by Telegram: close it with </{name}>"
        if closing:
            if not open_tags or open_tags[-1] != name:
                expected = f"</{open_tags[-1]}>" if open_tags else "no closing tag"
                return f"</{name}> does not match (expected {expected})"
            open_tags.pop()
            continue
        problem = _attribute_problem(name, attributes or "")
        if problem:
            return problem
        open_tags.append(name)
    if open_tags:
        return f"<{open_tags[-1]}> is never closed"
    return None


def _attribute_problem(name: str, raw: str) -> str | None:
    allowed = TELEGRAM_TAGS[name]
    seen: dict[str, str] = {}
    rest = raw
    while rest.strip():
        attribute = _ATTRIBUTE.match(rest)
        if attribute is None or not attribute.group():
            return f"<{name}> has malformed attributes"
        key = attribute.group(1).lower()
        if key not in allowed:
            return f"<{name}> does not take the attribute {key!r} in Telegram"
        seen[key] = next((g for g in attribute.groups()[1:] if g is not None), "")
        rest = rest[attribute.end() :]
    if name == "a" and not seen.get("href"):
        return "<a> needs an href"
    if name == "span" and seen.get("class") != "tg-spoiler":
        return '<span> is only supported as <span class="tg-spoiler">'
    if name == "tg-emoji" and not seen.get("emoji-id"):
        return "<tg-emoji> needs an emoji-id"
    if name == "code" and "class" in seen and not seen["class"].startswith("language-"):
        return '<code class> must be "language-…"'
    return None
