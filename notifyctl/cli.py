"""The command line: parse, call one use case, render. No SQL, no HTTP.

``NotifyctlGroup.main`` is the one error chokepoint: expected errors become
``error: …`` on stderr and their exit code; anything else exits 1 with a
traceback only under ``-v`` / ``NOTIFYCTL_DEBUG``.
"""

from __future__ import annotations

import enum
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from typer.core import TyperGroup

try:  # typer >= 0.24 vendors its own copy of click
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click  # type: ignore[no-redef]

from .config import (
    DEFAULT_TELEGRAM_API_URL,
    Settings,
    configure_logging,
    default_database_url,
    load_dotenv_file,
    redact,
    redact_url,
    url_passwords,
)
from .errors import ConfigError, ExitCode, InvalidInput, NotifyctlError, RunFailed
from .render import Output, inert, render_csv, render_json, render_json_rows, render_table
from .times import utcnow, zone_name

if TYPE_CHECKING:  # loaded where a command needs them, so an idle dispatch stays cheap
    from .db import Store
    from .pings import Healthcheck
    from .runs import DispatchOptions, RunReport
    from .service import BookingFields, BookingInput, BookingResult
    from .stats import RunInfo, Stats
    from .stopping import StopRequest

__all__ = ["app", "main"]


class NotifyctlGroup(TyperGroup):
    """Runs a command and turns every error into one line and an exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        warn_secret_options(argv)
        conventional_help(self)
        code = run_guarded(
            lambda: super(NotifyctlGroup, self).main(
                argv, prog_name or "notifyctl", complete_var, standalone_mode=False, **extra
            ),
            debug="-v" in argv or "--verbose" in argv or bool(os.environ.get("NOTIFYCTL_DEBUG")),
        )
        if standalone_mode:
            sys.exit(code)
        return code


#: each line of an error at most this long, after redaction (a bad value can be huge)
MAX_ERROR_LINE = 1000


def _error(message: str, details: Sequence[str] = ()) -> None:
    print(redact.clipped(f"error: {message}", MAX_ERROR_LINE), file=sys.stderr)
    for line in details:
        print(redact.clipped(f"  {line}", MAX_ERROR_LINE), file=sys.stderr)


_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{16,}")


def _has_password(value: str) -> bool:
    return bool(url_passwords(value))


def _has_secret_part(url: str) -> bool:
    return _has_password(url) or any(
        _TOKEN_LIKE.fullmatch(s) for s in url.partition("?")[0].split("/")[3:]
    )


#: options that carry a secret (always, or when the value holds one), and their variable
SECRET_OPTIONS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "--telegram-token": ("TELEGRAM_BOT_TOKEN", bool),
    "--database-url": ("NOTIFYCTL_DATABASE_URL", _has_password),
    "--telegram-api-url": ("TELEGRAM_API_URL", _has_password),
    "--ping-url": ("NOTIFYCTL_PING_URL", _has_secret_part),
}


def warn_secret_options(argv: Sequence[str]) -> None:
    """One warning line per secret given as an option: every local user sees it in ``ps``."""
    warned: set[str] = set()
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name not in SECRET_OPTIONS or name in warned:
            continue
        if not eq:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        variable, is_secret = SECRET_OPTIONS[name]
        if value and is_secret(value):
            warned.add(name)
            print(
                f"warning: {name} on the command line is visible to every local user "
                f"(ps, /proc); set {variable} in the environment or in a .env file "
                "readable only by you",
                file=sys.stderr,
            )


#: one placeholder style in --help: what a value is, in capitals
METAVARS = {
    "--starts-at": "T",
    "--ends-at": "T",
    "--due-before": "T",
    "--due-after": "T",
    "--to": "R",
    "--title": "TEXT",
    "--reason": "TEXT",
    "--timezone": "ZONE",
    "--remind": "KIND",
    "--kind": "KIND",
    "--locale": "LOCALE",
    "--data": "KEY=VALUE",
    "--from-file": "PATH",
    "--metrics-file": "PATH",
    "--templates": "PATH",
    "--database-url": "URL",
    "--telegram-api-url": "URL",
    "--ping-url": "URL",
    "--telegram-token": "TOKEN",
    "--notification": "ID",
    "--booking": "ID",
    "--status": "STATUS",
    "--since": "DURATION",
    "--older-than": "DURATION",
    "--downgrade": "REV",
}


def conventional_help(command: Any) -> None:
    """Every command's --help in one style: ``--to R``, ``--limit N``, ``BOOKING_ID``,
    flags shown as flags (``--dry-run``, not ``--dry-run / --no-dry-run [default: …]``)."""
    for param in getattr(command, "params", []):
        if param.param_type_name == "option":
            if param.is_flag and param.secondary_opts:
                if not param.default:  # an on-by-default switch keeps its --no-… form
                    param.secondary_opts = []
                param.show_default = False
            elif not param.is_flag and param.metavar is None:
                long_name = max(param.opts, key=len)
                kind = getattr(param.type, "name", "")
                numbers = ("int", "integer", "float", "int range", "float range", "integer range")
                fallback = "N" if kind in numbers else "TEXT"
                param.metavar = METAVARS.get(long_name, fallback)
        elif param.param_type_name == "argument" and param.metavar is None:
            name = (param.name or "arg").upper()
            name = f"{name}..." if param.nargs == -1 else name
            shown = name if param.required else f"[{name}]"
            param.metavar = shown
            param.make_metavar = lambda *_args, _shown=shown, **_kwargs: _shown
    for sub in getattr(command, "commands", {}).values():
        conventional_help(sub)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"notifyctl {__version__}")
        raise typer.Exit()


def _reader_gone() -> int:
    """The reader of stdout went away (``| head``): not an error, and nothing more to say.

    stdout is pointed at /dev/null so that the interpreter's final flush stays quiet.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests)
        pass
    return ExitCode.OK


def run_guarded(call: Any, *, debug: bool) -> int:
    try:
        result = call()
    except typer.Exit as e:
        return e.exit_code
    except click.NoArgsIsHelpError as e:  # bare `notifyctl`: the help, not an error
        try:
            print(e.ctx.get_help() if e.ctx else e.format_message())
        except BrokenPipeError:
            return _reader_gone()
        return ExitCode.USAGE
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        _error(f"{e.format_message()}{hint}")
        return ExitCode.USAGE
    except click.ClickException as e:
        _error(e.format_message())
        return e.exit_code
    except typer.Abort:
        _error("aborted")
        return ExitCode.INTERRUPTED
    except NotifyctlError as e:
        _error(e.message, e.details)
        return int(e.exit_code)
    except KeyboardInterrupt:
        _error("interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return _reader_gone()
    except SystemExit as e:  # click turns a closed pipe into a silent exit 1
        if isinstance(e.__context__, BrokenPipeError):
            return _reader_gone()
        raise
    except Exception as e:  # the chokepoint: anything unexpected is a bug
        if debug:
            print(redact(traceback.format_exc()), file=sys.stderr, end="")
        _error(f"internal error: {type(e).__name__}: {e} (run with -v for a traceback)")
        return ExitCode.INTERNAL
    return result if isinstance(result, int) else ExitCode.OK


app = typer.Typer(
    cls=NotifyctlGroup,
    name="notifyctl",
    help="Booking reminders from cron: create, dispatch, cancel - no daemon.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Booking reminders from cron: create, dispatch, cancel - no daemon."""


# --- option bundles, defined once ------------------------------------------------------

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar=["NOTIFYCTL_DATABASE_URL", "DATABASE_URL"],
        help="SQLAlchemy URL (sqlite:///PATH or postgresql://…); "
        "default: notifyctl.db in the user's data dir.",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="More detail on stderr.")]
TimezoneOpt = Annotated[
    str,
    typer.Option(
        "--timezone", envvar="NOTIFYCTL_TIMEZONE", help="IANA zone for naive times and display."
    ),
]
CreateTimezoneOpt = Annotated[
    str | None,
    typer.Option(
        "--timezone",
        envvar="NOTIFYCTL_TIMEZONE",
        help="IANA zone of the booking (naive times are read in it; texts show it). "
        "Default: the UTC offset the times carry (e.g. UTC+01:00), else UTC.",
    ),
]


NoticesOpt = Annotated[
    bool,
    typer.Option(
        "--notices/--no-notices",
        envvar="NOTIFYCTL_NOTICES",
        help="Tell the recipients who already got a reminder when the booking moves or is "
        "cancelled (change notices; NOTIFYCTL_NOTICES=off turns them off by default).",
    ),
]


def _settings(database_url: str | None, *, channels: bool = False, **given: Any) -> Settings:
    """Settings from options (``given``); ``channels``: also the channels' environment."""
    url = database_url or default_database_url()
    settings = (
        Settings.from_environ(os.environ, database_url=url, **given)
        if channels
        else Settings(database_url=url, **given)
    )
    redact.add(settings.secrets())
    return settings


def _open(database_url: str | None, read_only: bool = False) -> Store:
    from .db import open_store

    url = _settings(database_url).database_url
    return open_store(url, read_only=True) if read_only else open_store(url)


@contextmanager
def _store(database_url: str | None, *, read_only: bool = False) -> Iterator[Store]:
    """The store; ``read_only`` for commands that only read (works on a store they cannot write)."""
    store = _open(database_url, read_only)
    try:
        yield store
    finally:
        store.close()


def _output() -> Output:
    return Output.from_env()


# --- create -----------------------------------------------------------------------------


@app.command()
def create(
    booking_id: Annotated[
        str | None, typer.Argument(help="Your booking id (upsert key). Omit with --from-file.")
    ] = None,
    starts_at: Annotated[
        str | None,
        typer.Option(
            help="Start: ISO 8601 (2026-03-01T18:00+01:00), local (2026-03-01 18:00) "
            "or relative (+2h)."
        ),
    ] = None,
    ends_at: Annotated[str | None, typer.Option(help="End, same forms as --starts-at.")] = None,
    to: Annotated[
        list[str] | None,
        typer.Option(
            "--to",
            help="Recipient (repeatable): 123456789, -100…, @channel, "
            "telegram:…, console:NAME, webhook:URL, email:ADDR, apprise:URL. "
            "telegram:BOT/CHAT is sent by the bot in TELEGRAM_BOT_TOKEN_BOT (a bot whose "
            "token is not set yet is accepted here; dispatch needs it); "
            "telegram:CHAT#TOPIC (or BOT/CHAT#TOPIC) posts into a forum topic. "
            "Commas separate several (123,@news) in a value without a scheme or one "
            "of Telegram ids/@names only; a URL keeps its commas. "
            "| chains alternatives, tried in turn when one fails for good: "
            "'123456789|email:ann@example.com' (a literal | in a URL: %7C).",
        ),
    ] = None,
    title: Annotated[str | None, typer.Option(help="What the booking is, e.g. Yoga.")] = None,
    timezone: CreateTimezoneOpt = None,
    remind: Annotated[
        list[str] | None,
        typer.Option(
            help="Kinds (repeatable): day_before, hour_before, at_start, before_end, "
            "or offsets like start-30m, end-10m. Default: the four kinds."
        ),
    ] = None,
    locale: Annotated[str | None, typer.Option(help="Language for templates, e.g. de.")] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", help="KEY=VALUE for templates (repeatable).")
    ] = None,
    reactivate: Annotated[bool, typer.Option(help="Book a cancelled booking again.")] = False,
    from_file: Annotated[
        str | None,
        typer.Option(
            "--from-file",
            help="JSON Lines or CSV file (or - for stdin), one booking "
            "per line, all in one transaction; options above are defaults.",
        ),
    ] = None,
    notices: NoticesOpt = True,
    json_out: JsonFlag = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Create or update a booking's reminders (upsert by BOOKING_ID)."""
    from .bookfile import parse_data_pairs, paused_gc
    from .service import BookingFields, create_bookings
    from .times import collecting_notes

    output = _output()
    given = BookingFields(
        booking_id=booking_id,
        starts_at=starts_at,
        ends_at=ends_at,
        to=split_recipients(to) if to else None,
        title=title,
        timezone=timezone,
        remind=remind or None,
        locale=locale,
        data=parse_data_pairs(data or []) or None,
        reactivate=reactivate,
    )
    notes: list[str] = []
    with _store(database_url) as store, collecting_notes() as time_notes:
        if from_file is not None:
            if booking_id is not None:
                raise InvalidInput("give either BOOKING_ID or --from-file, not both")
            with paused_gc():
                with _open_input(from_file) as (stream, name):
                    inputs, lines = _read_with_progress(
                        stream, name, given, store.clock(), output, notes
                    )
                results = create_bookings(
                    store, inputs, lines=lines, refuse_ended=True, notices=notices
                )
        else:
            if booking_id is None:
                raise InvalidInput("missing BOOKING_ID (or --from-file)")
            if given.missing():
                raise InvalidInput(f"missing {', '.join(_option(n) for n in given.missing())}")
            inp = given.validated(store.clock())
            notes += time_notes
            results = create_bookings(store, [inp], refuse_ended=True, notices=notices)
    for note in dict.fromkeys(notes):  # how a time was read (ambiguous at a DST change)
        print(inert(f"note: {note}"), file=sys.stderr)
    if json_out:
        body: Any = (
            results[0].as_dict()
            if from_file is None
            else {"bookings": [r.as_dict() for r in results]}
        )
        output.line(render_json(body))
        return
    if from_file is not None and len(results) > 20:
        actions: dict[str, int] = {}
        for r in results:
            actions[r.action] = actions.get(r.action, 0) + 1
        added = sum(r.added for r in results)
        skipped = sum(len(r.skipped) for r in results)
        queued = sum(r.notices for r in results)
        suppressed = sum(len(r.suppressed) for r in results)
        counts = ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
        output.line(
            f"{len(results)} bookings: {counts}; {added} reminders added, {skipped} skipped"
            + (f", {queued} change notice(s) queued" if queued else "")
            + (f", {suppressed} suppressed recipient(s) left out" if suppressed else "")
        )
        return
    for r in results:
        output.line(inert(f"{r.action} {r.booking_id}: {_counts_text(r)}"))
        if r.timezone:
            output.line(inert(f"  time zone {r.timezone} (none given: --timezone sets it)"))
        for s in r.skipped:
            output.line(inert(f"  skipped {s.kind} for {s.channel}:{s.recipient}: {s.reason}"))
        for who in r.suppressed:
            output.line(
                inert(f"  suppressed {who}: nothing armed (notifyctl recipients unsuppress)")
            )


def _counts_text(result: BookingResult) -> str:
    """What changed, only the counts that are not zero: a booking whose recipients
    changed reads "4 added, 3 cancelled", never "0 rescheduled" beside "updated"."""
    counts = [
        f"{n} {what}"
        for n, what in (
            (result.added, "added"),
            (result.rescheduled, "rescheduled"),
            (result.cancelled, "cancelled"),
            (len(result.skipped), "skipped"),
            (result.notices, "change notice(s) queued"),
            (result.notices_withdrawn, "change notice(s) withdrawn"),
            (len(result.suppressed), "recipient(s) suppressed"),
        )
        if n
    ]
    return ", ".join(counts) or "no reminder changed"


#: values that hold only Telegram chats: ids (123, -100…) and @names, maybe telegram:-prefixed
_TELEGRAM_LIST = re.compile(
    r"\s*(?:telegram:)?(?:-?\d+|@\w+)\s*(?:,\s*(?:telegram:)?(?:-?\d+|@\w+)\s*)*,?\s*"
)


def split_recipients(values: Sequence[str]) -> list[str]:
    """``--to`` values, commas separating several as in ``--remind``.

    A value is split when it has no ``scheme:`` part (bare Telegram ids and
    @names hold no comma) or is a list of Telegram ids/@names; any other value
    (``webhook:https://…/a,b``, ``apprise:…``) is one recipient, commas and all.
    """
    split: list[str] = []
    for value in values:
        if ":" not in value or _TELEGRAM_LIST.fullmatch(value):
            split += [part.strip() for part in value.split(",") if part.strip()]
        else:
            split.append(value)
    return split


@contextmanager
def _open_input(path: str) -> Iterator[tuple[TextIO, str]]:
    if path == "-":
        yield sys.stdin, "<stdin>"
        return
    try:
        stream = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from e
    with stream:
        try:
            yield stream, Path(path).name
        except UnicodeDecodeError as e:
            raise InvalidInput(f"{path} is not UTF-8 text") from e


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _read_with_progress(
    stream: TextIO,
    name: str,
    defaults: BookingFields,
    now: datetime,
    output: Output,
    notes: list[str],
) -> tuple[list[BookingInput], list[int]]:
    from .bookfile import read_bookings

    if not sys.stderr.isatty():
        return read_bookings(stream, name=name, defaults=defaults, now=now, notes=notes)
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), transient=True, console=None
    ) as progress:
        task = progress.add_task(f"reading {name}", total=None)
        return read_bookings(
            stream,
            name=name,
            defaults=defaults,
            now=now,
            progress=lambda n: progress.update(task, description=f"{name}: {n} lines"),
            notes=notes,
        )


# --- cancel -----------------------------------------------------------------------------


@app.command()
def cancel(
    booking_ids: Annotated[list[str] | None, typer.Argument(help="Booking ids to cancel.")] = None,
    notification: Annotated[
        list[int] | None, typer.Option("--notification", help="Cancel one reminder by id.")
    ] = None,
    missing_ok: Annotated[bool, typer.Option(help="Unknown ids are not an error.")] = False,
    reason: Annotated[
        str | None,
        typer.Option(help="Why (one line, up to 500 characters): shown in the cancel notice."),
    ] = None,
    notices: NoticesOpt = True,
    json_out: JsonFlag = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Cancel bookings and their unsent reminders (idempotent); tell who got a reminder."""
    from .service import cancel as cancel_use_case

    if not booking_ids and not notification:
        raise InvalidInput("give at least one BOOKING_ID or --notification ID")
    with _store(database_url) as store:
        result = cancel_use_case(
            store,
            booking_ids or [],
            notification_ids=notification or [],
            missing_ok=missing_ok,
            reason=reason,
            notices=notices,
        )
    output = _output()
    if json_out:
        output.line(render_json(result.as_dict()))
    else:
        queued = f", {result.notices} change notice(s) queued" if result.notices else ""
        output.line(
            f"cancelled {result.bookings} booking(s), {result.reminders} reminder(s){queued}"
        )


# --- list -------------------------------------------------------------------------------


class ListFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


STATUS_CHOICES = ["pending", "sending", "sent", "failed", "cancelled", "expired", "all"]


@app.command("list")
def list_(
    status: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Statuses to show (repeatable): {', '.join(STATUS_CHOICES)}. "
            "Default: pending and failed."
        ),
    ] = None,
    booking: Annotated[str | None, typer.Option(help="Only this booking id.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    due_before: Annotated[str | None, typer.Option(help="Due before T (ISO or +2h).")] = None,
    due_after: Annotated[str | None, typer.Option(help="Due at or after T.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N rows.")] = None,
    fmt: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
    summary: Annotated[
        bool, typer.Option(help="Counts per status, queue lag, failures in the last 24 h.")
    ] = False,
    timezone: TimezoneOpt = "UTC",
    database_url: DatabaseUrl = None,
) -> None:
    """Show the reminder queue, soonest due first."""
    from .kinds import kind_name
    from .queries import ListFilter
    from .service import LIST_FIELDS, list_notifications
    from .times import parse_time, parse_zone

    output = _output()
    statuses = _statuses(status)
    zone = parse_zone(timezone)
    if summary:
        ignored = [
            name
            for name, value in (
                ("--booking", booking),
                ("--kind", kind),
                ("--due-before", due_before),
                ("--due-after", due_after),
                ("--limit", limit),
            )
            if value is not None
        ]
        if ignored:
            raise InvalidInput(
                f"--summary counts the whole queue: {', '.join(ignored)} cannot be combined "
                "with it (--status can)"
            )
        _list_summary(database_url, fmt, statuses if status else (), output)
        return
    with _store(database_url, read_only=True) as store:
        now = store.clock()
        where = ListFilter(
            statuses=statuses,
            booking_id=booking,
            kind=kind_name(kind) if kind else None,
            due_before=parse_time(due_before, zone, now) if due_before else None,
            due_after=parse_time(due_after, zone, now) if due_after else None,
            limit=limit,
        )
        with list_notifications(store, where) as rows:
            if fmt == "json":
                render_json_rows(rows, output.stdout)
            elif fmt == "csv":
                render_csv(rows, LIST_FIELDS, output.stdout)
            elif not output.is_tty:  # a pipe: every field, one line each, times in --timezone
                render_table(({**r, **_zoned(r, zone)} for r in rows), LIST_FIELDS, output)
            else:
                render_table(
                    (_list_row(row, zone, now) for row in rows),
                    LIST_TABLE,
                    output,
                    title=f"times in {zone_name(zone)}",
                    numeric=("id", "tries"),
                    cut={"booking": 6, "recipient": 6, "due": 11, "error": 6},
                    cut_last=("due",),
                )


#: the columns a person reads; --format json/csv carry every field
LIST_TABLE = ("id", "booking", "kind", "recipient", "status", "due", "tries", "error")
ERROR_WIDTH = 40


LIST_TIMES = ("scheduled_at", "not_after", "due_at", "sent_at")


def _zoned(row: dict[str, Any], zone: tzinfo) -> dict[str, Any]:
    """The row's times in ``zone`` as ISO 8601 with their offset (``Z`` for UTC)."""
    return {
        f: row[f].astimezone(zone).isoformat(" ", "seconds").replace("+00:00", "Z")
        for f in LIST_TIMES
        if row[f] is not None
    }


def _list_row(row: dict[str, Any], zone: tzinfo, now: datetime) -> dict[str, Any]:
    """One reminder as the table shows it: local due time and how far off, a short error."""
    from .times import local_text, relative_time

    due = row["due_at"]
    error = row["last_error"] or ""
    return {
        "id": row["id"],
        "booking": row["booking_id"],
        "kind": row["kind"],
        "recipient": _in_use(row),
        "status": row["status"],
        "due": f"{local_text(due, zone, now)} ({relative_time(due, now)})" if due else "",
        "tries": row["attempts"],
        "error": error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…",
    }


def _in_use(row: dict[str, Any]) -> str:
    """The alternative in use, and where it stands in its chain when there is one."""
    shown = f"{row['channel']}:{row['recipient']}"
    length = row["route"].count("|") + 1
    return shown if length == 1 else f"{shown} ({row['alternative']} of {length})"


def _statuses(values: list[str] | None) -> tuple[str, ...]:
    if not values:
        return ("pending", "failed")
    chosen = [s.strip().lower() for v in values for s in v.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STATUS_CHOICES]
    if unknown:
        raise InvalidInput(f"unknown status {unknown[0]!r}: use {', '.join(STATUS_CHOICES)}")
    return () if "all" in chosen else tuple(dict.fromkeys(chosen))


def _list_summary(
    database_url: str | None, fmt: ListFormat, statuses: tuple[str, ...], output: Output
) -> None:
    from .stats import queue_summary
    from .times import human_duration

    with _store(database_url, read_only=True) as store:
        result = queue_summary(store, statuses)
    if fmt == ListFormat.json:
        output.line(render_json(result.as_dict()))
        return
    if fmt == ListFormat.csv:
        flat = result.flat()
        render_csv([flat], list(flat), output.stdout)
        return
    rows = [{"status": k, "count": v} for k, v in result.counts.items()]
    render_table(rows, ["status", "count"], output, numeric=("count",))
    lag = result.oldest_due_age_seconds
    output.line(f"due now: {result.due}")
    output.line(f"oldest due: {'-' if lag is None else human_duration(lag) + ' overdue'}")
    output.line(f"failed in the last 24 h: {result.failed_last_24h}")


# --- dispatch ---------------------------------------------------------------------------


def _env_option(name: str, help_text: str, **kwargs: Any) -> Any:
    return typer.Option(envvar=f"NOTIFYCTL_{name}", help=help_text, **kwargs)


@app.command(
    epilog="Channels are configured from the environment: NOTIFYCTL_WEBHOOK_SECRET "
    "(webhook signatures), NOTIFYCTL_SMTP_URL and NOTIFYCTL_EMAIL_FROM (email), "
    "NOTIFYCTL_TEMPLATES (message templates), NOTIFYCTL_WEBHOOK_ALLOW (internal webhook "
    "hosts/CIDRs), NOTIFYCTL_APPRISE_SCHEMES (Apprise services accepted), "
    "NOTIFYCTL_SEND_DEADLINE (seconds per send, default 30). Exit codes: 0 ok, 2 bad options, "
    "3 missing or rejected credentials, 4 database unavailable or not migrated."
)
def dispatch(
    batch_size: Annotated[int, _env_option("BATCH_SIZE", "Reminders claimed per batch.")] = 50,
    max_seconds: Annotated[
        float,
        _env_option(
            "MAX_SECONDS",
            "Budget: send what is due and, until 1 s before this, wait for what falls due "
            "and send it on its second; then exit.",
        ),
    ] = 58.0,
    concurrency: Annotated[int, _env_option("CONCURRENCY", "Sends in parallel, per worker.")] = 8,
    workers: Annotated[
        int,
        _env_option(
            "WORKERS",
            "Processes that claim and send side by side, sharing the rate limits: one "
            "process uses one CPU core, so a large backlog goes out faster with more.",
        ),
    ] = 1,
    lease_seconds: Annotated[
        float, _env_option("LEASE_SECONDS", "A crashed run's claims are rescued after this.")
    ] = 300.0,
    max_attempts: Annotated[
        int, _env_option("MAX_ATTEMPTS", "Attempts before a reminder fails.")
    ] = 10,
    backoff_base: Annotated[
        float, _env_option("BACKOFF_BASE", "First retry delay in seconds (doubles, max 1 h).")
    ] = 30.0,
    rate_limit: Annotated[
        float,
        _env_option(
            "RATE_LIMIT",
            "Messages/s per bot, across all runs sharing the store (at most 10000).",
            max=10_000,
        ),
    ] = 25.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; change nothing.")
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            envvar="NOTIFYCTL_NO_WAIT",
            help="Exit once nothing is due now, instead of waiting within --max-seconds "
            "for what falls due.",
        ),
    ] = False,
    telegram_token: Annotated[
        str | None,
        typer.Option(
            "--telegram-token",
            envvar="TELEGRAM_BOT_TOKEN",
            show_default=False,
            help="Bot token (prefer the environment: options show in ps).",
        ),
    ] = None,
    telegram_api_url: Annotated[
        str,
        typer.Option(
            "--telegram-api-url",
            envvar="TELEGRAM_API_URL",
            help="Bot API base URL (a local Bot API server).",
        ),
    ] = DEFAULT_TELEGRAM_API_URL,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            envvar="NOTIFYCTL_METRICS_FILE",
            show_default=False,
            help="Write Prometheus metrics here after each run (node_exporter textfile "
            "collector; name it *.prom).",
        ),
    ] = None,
    ping_url: Annotated[
        str | None,
        typer.Option(
            "--ping-url",
            envvar="NOTIFYCTL_PING_URL",
            show_default=False,
            help="healthchecks.io-style URL: pinged at start, on success, or with the exit code.",
        ),
    ] = None,
    json_out: JsonFlag = False,
    verbose: Verbose = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Deliver what is due, retry what failed for a passing reason, and exit (run from cron).

    Ctrl-C or SIGTERM stops the run: nothing more is claimed, what has not gone
    out is given back at once, the answers of sends already out are recorded,
    and it exits 130. A second signal stops it at once.
    """
    from . import metrics, pings
    from .runs import DispatchOptions
    from .stopping import stop_on_signals

    options = DispatchOptions(
        batch_size=batch_size,
        max_seconds=max_seconds,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        backoff_base=backoff_base,
        rate_limit=rate_limit,
        dry_run=dry_run,
        wait=not no_wait,
        workers=workers,
    ).validate()
    settings = _settings(
        database_url,
        channels=True,
        telegram_token=telegram_token,
        telegram_api_url=telegram_api_url,
    )
    configure_logging(verbose)
    output = _output()
    if ping_url:
        pings.check_ping_url(ping_url)
    health = pings.Healthcheck(None if dry_run else ping_url)
    started = time.monotonic()
    try:
        with stop_on_signals() as stop:
            report = _dispatch_under(
                health, settings, options, output, metrics_file, json_out, stop
            )
    except Exception as e:  # the run failed early: the metrics file still tells
        if metrics_file is not None and not dry_run:
            code = int(e.exit_code) if isinstance(e, NotifyctlError) else int(ExitCode.INTERNAL)
            metrics.export_failed_run(metrics_file, code, time.monotonic() - started, utcnow())
        raise
    if report is None:
        return
    if json_out:
        output.line(render_json(report.as_dict()))
    elif not report.idle:
        output.line(report.summary_line())
    if report.exit_code == ExitCode.INTERRUPTED:
        raise KeyboardInterrupt
    if report.error:
        raise RunFailed(report.error, report.exit_code or ExitCode.CONFIG)


def _dispatch_under(
    health: Healthcheck,
    settings: Settings,
    options: DispatchOptions,
    output: Output,
    metrics_file: Path | None,
    json_out: bool,
    stop: StopRequest,
) -> RunReport | None:
    """One run (or a dry run: None) inside its healthcheck pings."""
    from .runs import quick_idle_run

    with health:
        if not options.dry_run and metrics_file is None:  # metrics are read through the ORM
            report = quick_idle_run(settings.database_url, options, utcnow)
            if report is not None:  # nothing to do: recorded without loading SQLAlchemy
                health.finish(report)
                return report
        report = _dispatch_in_store(settings, options, output, metrics_file, json_out, stop)
        if report is not None:
            health.finish(report)
        return report


def _dispatch_in_store(
    settings: Settings,
    options: DispatchOptions,
    output: Output,
    metrics_file: Path | None,
    json_out: bool,
    stop: StopRequest,
) -> RunReport | None:
    """The run (or dry run) on the store, once the plain idle check did not decide it."""
    from . import metrics
    from .runs import idle_run

    dry_run = options.dry_run
    with _store(settings.database_url) as store:
        if dry_run:
            from .channels import config_problems, sender
            from .preview import preview

            items = preview(store, settings)
            if json_out:
                output.line(render_json([item.__dict__ for item in items]))
            for item in [] if json_out else items:
                output.line(
                    inert(
                        f"would send #{item.id} {item.kind} to "
                        f"{item.channel}:{item.recipient}: {item.text}"
                    )
                )
            problems = config_problems(
                settings, (sender(item.channel, item.recipient) for item in items)
            )
            if problems:
                raise ConfigError(
                    "; ".join(problems.values())
                    + " (a run would give these reminders back and send the rest)"
                )
            return None
        report = idle_run(store, options) or _run_dispatch(store, settings, options, output, stop)
        if metrics_file is not None:
            metrics.export_metrics(store, metrics_file, report)
    return report


def _run_dispatch(
    store: Store, settings: Settings, options: DispatchOptions, output: Output, stop: StopRequest
) -> RunReport:
    """The dispatch engine, loaded only when there is work (an idle run stays cheap)."""
    from .dispatch import Dispatcher

    def run_here() -> RunReport:
        return Dispatcher(store, settings, options, stdout=output.stdout, stop=stop).run()

    if options.workers == 1:
        return run_here()
    from .workers import run_with_helpers

    return run_with_helpers(settings, options, run_here, stop)


# --- recipients -------------------------------------------------------------------------

recipients_app = typer.Typer(
    cls=NotifyctlGroup,
    help="Recipients and their health: who is suppressed, and why; unsuppress.",
    invoke_without_command=True,
    rich_markup_mode=None,
)
app.add_typer(recipients_app, name="recipients")


@recipients_app.callback()
def recipients(
    ctx: typer.Context,
    suppressed: Annotated[bool, typer.Option(help="Only the suppressed ones.")] = False,
    fmt: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
    database_url: DatabaseUrl = None,
) -> None:
    """List recipients with their state (active or suppressed), reason and since.

    A recipient is suppressed when its provider said it takes no more messages
    (Telegram: bot blocked, user deactivated, bot kicked, chat not found; email:
    550/551/553 for the mailbox; webhook: 410 Gone). Nothing is sent to it, and
    create arms nothing for it, until `notifyctl recipients unsuppress`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from .service import RECIPIENT_FIELDS, list_recipients

    with _store(database_url, read_only=True) as store:
        rows = list_recipients(store, suppressed_only=suppressed)
    output = _output()
    if fmt == ListFormat.json:
        render_json_rows(iter(rows), output.stdout)
    elif fmt == ListFormat.csv:
        render_csv(rows, RECIPIENT_FIELDS, output.stdout)
    else:
        render_table(rows, RECIPIENT_FIELDS, output, cut={"recipient": 6, "detail": 6})


@recipients_app.command("unsuppress")
def unsuppress(
    recipients: Annotated[
        list[str], typer.Argument(help="Recipients, written as --to takes them.")
    ],
    missing_ok: Annotated[bool, typer.Option(help="Unknown recipients are not an error.")] = False,
    json_out: JsonFlag = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Make suppressed recipients active again: the next create arms their reminders."""
    from .service import unsuppress as unsuppress_use_case

    with _store(database_url) as store:
        result = unsuppress_use_case(store, recipients, missing_ok=missing_ok)
    output = _output()
    if json_out:
        output.line(render_json(result.as_dict()))
        return
    for who in result.unsuppressed:
        output.line(inert(f"unsuppressed {who}"))
    for who in result.already_active:
        output.line(inert(f"already active {who}"))
    for who in result.missing:
        output.line(inert(f"unknown {who} (ignored)"))


# --- templates ----------------------------------------------------------------------

templates_app = typer.Typer(
    cls=NotifyctlGroup,
    help="Check and preview message templates.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(templates_app, name="templates")

TemplatesPath = Annotated[
    str | None,
    typer.Option(
        "--templates",
        envvar="NOTIFYCTL_TEMPLATES",
        metavar="FILE",
        help="TOML file of templates (default: the built-in texts).",
    ),
]


@templates_app.command("check")
def templates_check(
    templates: TemplatesPath = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", metavar="KEY=VALUE", help="Sample booking data (repeatable)."),
    ] = None,
) -> None:
    """Render every template against a sample booking; exit 2 on any error."""
    from .bookfile import parse_data_pairs
    from .texts import TemplateError, TemplateFileError, TemplateSet, check_templates
    from .times import utcnow

    try:
        template_set = TemplateSet.load(templates) if templates else TemplateSet.builtin()
    except TemplateFileError as e:  # a check reports what it found: exit 2, as for a render
        raise TemplateError(e.message, e.details) from e
    count, errors = check_templates(template_set, utcnow(), parse_data_pairs(data or []))
    if errors:
        raise TemplateError(f"{len(errors)} template error(s)", errors)
    _output().line(f"{count} template renderings OK" + ("" if templates else " (built-in texts)"))


@templates_app.command("preview")
def templates_preview(
    booking_id: Annotated[str, typer.Argument(help="The booking whose messages to show.")],
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    templates: TemplatesPath = None,
    json_out: JsonFlag = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Show what each recipient of a booking would get (subject and HTML part where the
    channel sends them) and each reminder's status."""
    from .kinds import kind_name
    from .preview import preview_booking

    settings = _settings(database_url, templates_path=templates)
    with _store(settings.database_url, read_only=True) as store:
        items = preview_booking(store, settings, booking_id, kind_name(kind) if kind else None)
    output = _output()
    if json_out:
        output.line(render_json([item.__dict__ for item in items]))
        return
    for item in items:
        head = inert(f"#{item.id} {item.kind} → {item.channel}:{item.recipient} ({item.status})")
        lines = [head]
        if item.subject is not None:
            lines.append(inert(f"  subject: {item.subject}"))
        lines.append(f"  {inert(item.text, keep=chr(10))}")
        if item.html is not None:
            lines.append(f"  html: {inert(item.html, keep=chr(10))}")
        output.line("\n".join(lines))


# --- stats / prune ----------------------------------------------------------------------


class StatsFormat(enum.StrEnum):
    table = "table"
    json = "json"


@app.command()
def stats(
    since: Annotated[
        str,
        typer.Option("--since", metavar="DURATION", help="Window to report on, e.g. 1h, 24h, 7d."),
    ] = "24h",
    fmt: Annotated[
        StatsFormat, typer.Option("--format", help="Output format.")
    ] = StatsFormat.table,
    timezone: TimezoneOpt = "UTC",
    database_url: DatabaseUrl = None,
) -> None:
    """Outcomes per channel and kind, lateness, the queue now and the last dispatch runs."""
    from .stats import stats as stats_use_case
    from .times import parse_duration, parse_zone

    window = parse_duration(since)
    zone = parse_zone(timezone)
    with _store(database_url, read_only=True) as store:
        result = stats_use_case(store, window)
    output = _output()
    if fmt == StatsFormat.json:
        output.line(render_json(result.as_dict()))
    else:
        _render_stats(result, since, zone, output)


STATS_FIELDS = (
    "channel",
    "kind",
    "sent",
    "failed",
    "expired",
    "superseded",
    "cancelled",
    "retries",
)
DELIVERY_FIELDS = ("channel", "kind", "rate", "late_p50", "late_p95", "late_max")
RUN_FIELDS = (
    "started",
    "took",
    "sent",
    "retried",
    "rate_limited",
    "failed",
    "expired",
    "rescued",
    "exit_code",
)
RUN_HEADERS = {"rate_limited": "limited", "exit_code": "exit"}
KEEP_NAMES = {"channel": 7, "kind": 10}


def _duration_text(value: float | None) -> str:
    """A duration for people: ``0.4 s`` below a minute, else ``1 h 19 min``."""
    from .times import human_duration

    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 60 else human_duration(value)


def _render_stats(result: Stats, since: str, zone: tzinfo, output: Output) -> None:
    from .times import local_text, relative_time

    groups = (*result.groups, result.total)
    render_table(
        [{f: getattr(g, f) for f in STATS_FIELDS} for g in groups],
        STATS_FIELDS,
        output,
        title=f"outcomes, last {since}",
        numeric=STATS_FIELDS[2:],
        cut=KEEP_NAMES,
    )
    output.line()
    rows = [
        {
            "channel": g.channel,
            "kind": g.kind,
            "rate": "-" if g.delivery_rate is None else f"{g.delivery_rate:.1%}",
            "late_p50": _duration_text(g.lateness_p50),
            "late_p95": _duration_text(g.lateness_p95),
            "late_max": _duration_text(g.lateness_max),
        }
        for g in groups
    ]
    render_table(
        rows,
        DELIVERY_FIELDS,
        output,
        title="delivery rate and lateness of sent reminders",
        numeric=DELIVERY_FIELDS[2:],
        cut=KEEP_NAMES,
    )
    queue = result.queue
    lag = queue.oldest_due_age_seconds
    output.line()
    output.line(
        f"queue: {queue.pending} pending, {queue.sending} sending, {queue.due} due"
        + ("" if lag is None else f", oldest due {_duration_text(lag)} overdue")
    )
    last = result.last_success_at
    output.line(
        "last successful run: never"
        if last is None
        else f"last successful run: {local_text(last, zone, result.now)} {zone_name(zone)} "
        f"({relative_time(last, result.now)})"
    )
    output.line()
    render_table(
        _collapsed_runs(result.runs, result.now),
        RUN_FIELDS,
        output,
        title="recent dispatch runs",
        headers=RUN_HEADERS,
        numeric=RUN_FIELDS[1:],
        cut={"started": 9},
    )


def _collapsed_runs(runs: Sequence[RunInfo], now: datetime) -> list[dict[str, Any]]:
    """Runs newest first, each stretch of idle runs as one row ("5 idle, 1 min-5 min ago")."""
    from .times import relative_time

    shown: list[dict[str, Any]] = []
    stretch: list[RunInfo] = []

    def flush() -> None:
        if len(stretch) == 1:
            shown.append(_run_row(stretch[0], now))
        elif stretch:
            newest = relative_time(stretch[0].started_at, now)
            oldest = relative_time(stretch[-1].started_at, now)
            shown.append(
                {f: "" for f in RUN_FIELDS}
                | {"started": f"{len(stretch)} idle runs, {oldest} to {newest}", "exit_code": 0}
            )
        stretch.clear()

    for run in runs:
        if run.idle:
            stretch.append(run)
            continue
        flush()
        shown.append(_run_row(run, now))
    flush()
    return shown


def _run_row(run: RunInfo, now: datetime) -> dict[str, Any]:
    from .times import relative_time

    row: dict[str, Any] = run.as_dict()
    row["started"] = relative_time(run.started_at, now)
    row["took"] = _duration_text(run.duration_seconds)
    return row


@app.command()
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            show_default=False,
            help="Age cutoff in hours, days or weeks (30d, 720h, 2w; not minutes): bookings "
            "that ended and runs that started before now minus this go.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")
    ] = False,
    json_out: JsonFlag = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete finished bookings (with their reminders and attempts) and old dispatch runs.

    Works in short transactions of well under 0.2 s each, so a dispatch running at the
    same time barely waits; --json also reports how many and the longest.
    """
    from .prune import parse_age
    from .prune import prune as prune_use_case

    age = parse_age(older_than)
    with _store(database_url) as store:
        result = prune_use_case(store, age, dry_run)
    output = _output()
    if json_out:
        output.line(render_json(result.as_dict()))
    elif dry_run or not result.nothing:  # quiet for cron when nothing went
        output.line(result.summary_line())


# --- migrate ----------------------------------------------------------------------------


@app.command()
def migrate(
    revision: Annotated[
        str | None, typer.Argument(metavar="[REVISION]", help="Target revision (default: head).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 if the database is behind head; change nothing.")
    ] = False,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
    downgrade: Annotated[
        str | None,
        typer.Option(
            "--downgrade", metavar="REV", help="Downgrade to REV (e.g. base: drops every table)."
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Downgrade without asking (scripts).")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Create or upgrade the database schema (safe to run twice)."""
    from . import migrate as migrations
    from .db import make_engine, translate_errors

    _migrate_usage(revision, check=check, sql=sql, downgrade=downgrade)
    settings = _settings(database_url)
    output = _output()
    if sql:
        target = downgrade if downgrade is not None else revision or "head"
        output.stdout.write(
            migrations.sql(settings.database_url, target, down=downgrade is not None)
        )
        return
    if check:
        with translate_errors(settings.database_url):
            head = _migrate_check(settings.database_url)
        output.line(f"database is at head ({head})")
        return
    if downgrade is not None and not yes:
        _confirm_downgrade(downgrade, redact_url(settings.database_url))
    engine = make_engine(settings.database_url)
    try:
        with translate_errors(settings.database_url):
            if downgrade is not None:
                result = migrations.downgrade(engine, downgrade)
            else:
                result = migrations.upgrade(engine, revision or "head")
    finally:
        engine.dispose()
    where = redact_url(engine.url.render_as_string(hide_password=True))
    if result.changed:
        output.line(f"migrated {where} from {result.before or 'empty'} to {result.after or 'base'}")
    else:
        output.line(f"{where} is already at {result.after or 'base'}")


def _migrate_usage(revision: str | None, *, check: bool, sql: bool, downgrade: str | None) -> None:
    """Options that contradict each other are an error, never silently ignored."""
    if check and (sql or downgrade is not None or revision is not None):
        raise InvalidInput("--check only checks: give it no REVISION, --sql or --downgrade")
    if downgrade is not None and revision is not None:
        raise InvalidInput(
            f"give the target once: --downgrade {downgrade} or REVISION {revision}, not both"
        )


def _migrate_check(url: str) -> str:
    """The head revision, or CheckFailed (exit 1) when behind; a missing file is behind too."""
    from . import migrate as migrations
    from .db import make_engine
    from .errors import CheckFailed, SchemaNotCurrent

    try:
        engine = make_engine(url, create_file=False, read_only=True)
    except SchemaNotCurrent as e:  # no file yet: an empty schema, as behind as can be
        raise CheckFailed(
            f"database is at an empty schema (no file yet), head is {migrations.head_revision()}"
        ) from e
    try:
        return migrations.check(engine)
    finally:
        engine.dispose()


def _confirm_downgrade(target: str, where: str) -> None:
    what = "drops every table and all data" if target == "base" else f"goes back to {target}"
    if not sys.stdin.isatty():
        raise InvalidInput(
            f"--downgrade {target} {what} of {where}: add --yes to do it without a terminal"
        )
    if not typer.confirm(f"Downgrade {where}? This {what}.", default=False, err=True):
        raise InvalidInput("downgrade not confirmed: nothing changed")


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    load_dotenv_file()
    command = typer.main.get_command(app)
    return int(command.main(argv, prog_name="notifyctl", standalone_mode=False))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
