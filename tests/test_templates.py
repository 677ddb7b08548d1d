"""Operator templates (SPEC §7): lookup, escaping, sandbox, `templates check|preview`, dispatch.

Unit tests load ``TemplateSet`` from real TOML files; dispatch tests drive an
in-process ``Dispatcher`` with the frozen clock on SQLite and PostgreSQL;
CLI tests go through the in-process runner.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from sqlalchemy import select, update

from notifyctl.config import Settings
from notifyctl.dispatch import Dispatcher, DispatchOptions, RunReport
from notifyctl.models import Booking, Notification, Status
from notifyctl.service import Store, create_booking
from notifyctl.texts import (
    BUILTIN,
    TemplateFileError,
    TemplateSet,
    context,
    render,
    sample_booking,
)
from tests.fakes.http_receiver import HttpReceiver
from tests.fakes.smtp import running_smtp
from tests.fakes.telegram import FakeTelegram
from tests.support import Cli, CliResult, FrozenClock

N = Notification
TOKEN = "555000111:AAF-templates_Test_SECRET_k3"


# --- helpers --------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "templates.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def loopback_webhooks_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receivers listen on loopback, which webhooks reach only when allowed."""
    monkeypatch.setenv("NOTIFYCTL_WEBHOOK_ALLOW", "127.0.0.1")


@pytest.fixture
def nodb_cli(tmp_path: Path) -> Cli:
    """The CLI for commands that need no database (`templates check`)."""
    return Cli(f"sqlite:///{tmp_path / 'unused.db'}")


def fake_monotonic(clock: FrozenClock) -> Callable[[], float]:
    epoch = clock()
    return lambda: (clock() - epoch).total_seconds()


@dataclass
class Run:
    report: RunReport
    stdout: str


def dispatch(store: Store, clock: FrozenClock, templates: Path | None, **settings: Any) -> Run:
    """One in-process dispatch run with the frozen clock; console output captured."""
    out = io.StringIO()
    report = Dispatcher(
        store,
        Settings(
            database_url="sqlite://",
            templates_path=str(templates) if templates else None,
            webhook_allow="127.0.0.1",  # the receivers listen on loopback
            **settings,
        ),
        DispatchOptions(wait=False),
        stdout=out,
        rng=random.Random(1),
        sleep=clock.sleep,
        monotonic=fake_monotonic(clock),
    ).run()
    return Run(report, out.getvalue())


def remind(
    store: Store,
    booking_id: str,
    *to: str,
    starts_in: timedelta = timedelta(minutes=30),
    kinds: tuple[str, ...] = ("hour_before",),
    **fields: Any,
) -> None:
    start = store.clock() + starts_in
    create_booking(
        store,
        booking_id,
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=list(to),
        remind=list(kinds),
        timezone=fields.pop("timezone", "Europe/Berlin"),
        **fields,
    )


def reminders(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    """(booking id, recipient) → reminder row."""
    with store.reader() as conn:
        rows = conn.execute(
            select(N, Booking.external_id).join(Booking, Booking.id == N.booking_id)
        )
        return {(r.external_id, r.recipient): r._asdict() for r in rows}


def listed(cli: Cli) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        cli.ok("list", "--status", "all", "--format", "json").stdout
    )
    return rows


def one_line_error(result: CliResult, code: int = 2) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


# --- lookup order ------------------------------------------------------------------------

LAYERED = """\
[default]
text = "default"
subject = "default subject"

[default.email]
text = "default+email"

[kinds.day_before]
text = "kind"
subject = "kind subject"

[kinds.day_before.telegram]
text = "kind+telegram"

[locales.pt.kinds.day_before]
text = "pt+kind"

[locales.pt.kinds.day_before.telegram]
text = "pt+kind+telegram"
html = "<p>pt html</p>"

[locales."pt-BR".kinds.day_before.telegram]
text = "pt-BR+kind+telegram"

[locales.de.kinds.day_before.webhook]
text = "de+kind+webhook"
"""


@pytest.mark.parametrize(
    ("locale", "kind", "channel", "text", "subject", "html"),
    [
        (
            "pt-BR",
            "day_before",
            "telegram",
            "pt-BR+kind+telegram",
            "kind subject",
            "<p>pt html</p>",
        ),
        (
            "pt-br",
            "day_before",
            "telegram",
            "pt-BR+kind+telegram",
            "kind subject",
            "<p>pt html</p>",
        ),
        ("pt-BR", "day_before", "console", "pt+kind", "kind subject", None),
        ("pt", "day_before", "telegram", "pt+kind+telegram", "kind subject", "<p>pt html</p>"),
        ("de", "day_before", "webhook", "de+kind+webhook", "kind subject", None),
        ("de", "day_before", "telegram", "kind+telegram", "kind subject", None),
        ("de", "day_before", "console", "kind", "kind subject", None),
        (None, "day_before", "telegram", "kind+telegram", "kind subject", None),
        (None, "day_before", "email", "kind", "kind subject", None),
        (None, "hour_before", "email", "default+email", "default subject", None),
        ("fr", "at_start", "console", "default", "default subject", None),
    ],
)
def test_lookup_goes_from_most_to_least_specific_field_by_field(
    tmp_path: Path,
    locale: str | None,
    kind: str,
    channel: str,
    text: str,
    subject: str,
    html: str | None,
) -> None:
    templates = TemplateSet.load(str(write(tmp_path, LAYERED)))

    found = templates.lookup(locale, kind, channel)

    assert (found.text, found.subject, found.html) == (text, subject, html)


def test_lookup_falls_back_to_the_builtin_text(tmp_path: Path) -> None:
    templates = TemplateSet.load(str(write(tmp_path, '[kinds.day_before]\ntext = "x"\n')))

    assert templates.lookup("de", "hour_before", "telegram") == BUILTIN
    # a field the file leaves out comes from the built-in texts
    assert templates.lookup(None, "day_before", "email").subject == BUILTIN.subject


def test_a_posix_style_locale_table_matches_the_booking_locale(tmp_path: Path) -> None:
    templates = TemplateSet.load(
        str(write(tmp_path, '[locales.pt_BR.kinds.day_before]\ntext = "ola"\n'))
    )

    assert templates.lookup("pt-BR", "day_before", "console").text == "ola"


def test_offset_kind_keys_are_canonical_kind_names(tmp_path: Path) -> None:
    text = '[kinds."start-30m"]\ntext = "a"\n[kinds."START-60m"]\ntext = "b"\n'
    templates = TemplateSet.load(str(write(tmp_path, text)))

    assert templates.lookup(None, "start-30m", "console").text == "a"
    assert templates.lookup(None, "start-1h", "console").text == "b"
    assert templates.lookup(None, "hour_before", "console") == BUILTIN


def test_offset_kinds_get_their_own_text_when_dispatched(
    store: Store, clock: FrozenClock, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        '[default]\ntext = "default {{ kind }}"\n'
        '[kinds."start-30m"]\ntext = "thirty {{ kind }} {{ starts_relative }}"\n'
        '[kinds."start-60m"]\ntext = "sixty {{ kind }} {{ starts_relative }}"\n',
    )
    start = clock() + timedelta(hours=2)
    remind(
        store, "b1", "console:desk", starts_in=timedelta(hours=2), kinds=("start-30m", "start-1h")
    )

    clock.set(start - timedelta(minutes=60))
    first = dispatch(store, clock, path)
    clock.set(start - timedelta(minutes=30))
    second = dispatch(store, clock, path)

    assert first.stdout == "[console:desk] sixty start-1h in 60 minutes, at 16:00\n"
    assert second.stdout == "[console:desk] thirty start-30m in 30 minutes, at 16:00\n"


def test_fields_come_from_different_levels_at_dispatch(
    store: Store, clock: FrozenClock, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        """\
[kinds.hour_before]
subject = "Subject from the kind: {{ title }}"
text = "text from the kind"

[kinds.hour_before.email]
text = "Text from kind+email: {{ title }}"

[kinds.hour_before.telegram]
text = "<b>{{ title }}</b> from kind+telegram"

[locales.de.kinds.hour_before]
html = "<p>HTML from de+kind: {{ title }}</p>"
""",
    )
    remind(store, "b1", "email:anna@example.org", "12345", title="Yoga", locale="de")
    with FakeTelegram(token=TOKEN) as tg, running_smtp() as smtp:
        run = dispatch(
            store,
            clock,
            path,
            telegram_token=TOKEN,
            telegram_api_url=tg.api_url,
            smtp_url=smtp.url(),
            email_from="reminders@example.com",
        )
        [message] = tg.messages
        [mail] = [m.parsed() for m in smtp.messages]

    assert run.report.sent == 2
    assert message.text == "<b>Yoga</b> from kind+telegram"
    assert mail["Subject"] == "Subject from the kind: Yoga"
    plain, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == "Text from kind+email: Yoga"
    assert html.get_content().strip() == "<p>HTML from de+kind: Yoga</p>"


# --- escaping ----------------------------------------------------------------------------

TITLE = "<b>Bold</b> & Co </a><script>alert(1)</script>"
NOTE = "<i>A1</i> & more"
TITLE_ESCAPED = "&lt;b&gt;Bold&lt;/b&gt; &amp; Co &lt;/a&gt;&lt;script&gt;alert(1)&lt;/script&gt;"
NOTE_ESCAPED = "&lt;i&gt;A1&lt;/i&gt; &amp; more"
ESCAPING = """\
[kinds.hour_before]
text = "{{ title }} | {{ data.note }}"
subject = "S: {{ title }}"
html = "<p>{{ title }}</p><p>{{ data.note }}</p>"

[kinds.hour_before.telegram]
text = "<b>{{ title }}</b> | {{ data.note }}"
"""


def test_values_are_escaped_for_html_channels_and_plain_elsewhere(
    store: Store, clock: FrozenClock, tmp_path: Path
) -> None:
    path = write(tmp_path, ESCAPING)
    with FakeTelegram(token=TOKEN) as tg, HttpReceiver() as rx, running_smtp() as smtp:
        remind(
            store,
            "b1",
            "12345",
            f"webhook:{rx.url('/hook')}",
            "email:anna@example.org",
            "console:desk",
            title=TITLE,
            data={"note": NOTE},
        )
        run = dispatch(
            store,
            clock,
            path,
            telegram_token=TOKEN,
            telegram_api_url=tg.api_url,
            smtp_url=smtp.url(),
            email_from="reminders@example.com",
        )
        [telegram] = tg.messages
        [hook] = rx.requests
        [mail] = [m.parsed() for m in smtp.messages]

    assert run.report.sent == 4
    plain_text = f"{TITLE} | {NOTE}"
    # Telegram (HTML parse mode): the template's markup stays, the values are escaped
    assert telegram.parse_mode == "HTML"
    assert telegram.text == f"<b>{TITLE_ESCAPED}</b> | {NOTE_ESCAPED}"
    # plain-text channels get the values as they are
    assert run.stdout == f"[console:desk] {plain_text}\n"
    body = hook.json()
    assert (body["text"], body["title"], body["data"]) == (plain_text, TITLE, {"note": NOTE})
    assert mail["Subject"] == f"S: {TITLE}"
    plain, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == plain_text
    # the email's HTML part is escaped like Telegram
    assert html.get_content().strip() == f"<p>{TITLE_ESCAPED}</p><p>{NOTE_ESCAPED}</p>"


def test_check_renders_the_html_part_escaped(tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    variables = context(sample_booking(now), "day_before", "r", "email", now)

    assert render("<p>{{ title }}</p>", variables, html_escape=True) == (
        "<p>Yoga &lt;for&gt; beginners &amp; friends</p>"
    )
    assert render("{{ title }}", variables, html_escape=False) == "Yoga <for> beginners & friends"


# --- sandbox and strict undefined ------------------------------------------------------

UNSAFE = [
    "{{ ''.__class__.__mro__ }}",
    "{{ relative.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ now.__class__.__base__.__subclasses__() }}",
    "{% for c in data.__class__.__mro__ %}{{ c }}{% endfor %}",
]


@pytest.fixture
def variables() -> dict[str, Any]:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    return context(sample_booking(now), "day_before", "r", "console", now)


@pytest.mark.parametrize("source", UNSAFE)
def test_the_sandbox_refuses_dunder_access(source: str, variables: dict[str, Any]) -> None:
    with pytest.raises(SecurityError, match="unsafe"):
        render(source, variables, html_escape=False)


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{{ nme }}", UndefinedError),
        ("{{ data.room }}", UndefinedError),
        ("{% if data.room %}x{% endif %}", UndefinedError),
        ("{{ title.nope }}", UndefinedError),
        ("{{ title ", TemplateSyntaxError),
    ],
)
def test_undefined_names_are_errors_not_blanks(
    source: str, error: type[Exception], variables: dict[str, Any]
) -> None:
    with pytest.raises(error):
        render(source, variables, html_escape=False)


def test_every_documented_variable_renders(variables: dict[str, Any]) -> None:
    source = (
        "{{ title }}|{{ booking_id }}|{{ kind }}|{{ timezone }}|{{ recipient }}|{{ channel }}|"
        "{{ start_time }}|{{ end_time }}|{{ start_date }}|{{ starts_relative }}|"
        "{{ ends_relative }}|{{ days_to_start }}|{{ relative(end, now) }}"
    )

    assert render(source, variables, html_escape=False) == (
        "Yoga <for> beginners & friends|sample-1|day_before|Europe/Berlin|r|console|"
        "16:00|17:00|2026-06-02|tomorrow at 16:00|tomorrow at 17:00|1|tomorrow at 17:00"
    )


# --- templates check ----------------------------------------------------------------------

GOOD = """\
[default]
text = "{{ title }} {{ starts_relative }}"

[kinds."start-30m"]
text = "{{ title }} in {{ minutes_to_start | round | int }} min"

[kinds.hour_before.telegram]
text = "<b>{{ title }}</b> {{ starts_relative }}"

[locales.de.kinds.day_before]
text = "{{ title }} beginnt {{ start_date }} um {{ start_time }}"
subject = "Morgen: {{ title }}"
html = "<p>{{ title }}</p>"
"""

BROKEN = """\
[kinds.day_before]
text = "Hi {{ nme }}"

[kinds.day_before.telegram]
subject = "{{ ''.__class__.__mro__ }}"

[locales.de.kinds.hour_before.email]
html = "<p>{{ data.room }}</p>"

[kinds.at_start]
text = "{{ title "
"""
DETAIL = re.compile(r"  (?P<path>.+?): \[(?P<key>[^\]]+)\] (?P<field>\w+) \((?P<where>[^)]*)\): ")


def test_check_passes_the_builtin_texts(nodb_cli: Cli) -> None:
    result = nodb_cli.ok("templates", "check")

    assert re.fullmatch(r"\d+ template renderings OK \(built-in texts\)\n", result.stdout)
    assert result.stderr == ""


def test_check_passes_a_good_file_from_the_option_or_the_environment(
    nodb_cli: Cli, tmp_path: Path
) -> None:
    path = str(write(tmp_path, GOOD))

    by_option = nodb_cli.ok("templates", "check", "--templates", path)
    by_env = nodb_cli.ok("templates", "check", NOTIFYCTL_TEMPLATES=path)

    assert re.fullmatch(r"\d+ template renderings OK\n", by_option.stdout)
    assert by_env.stdout == by_option.stdout


def test_check_names_the_file_entry_and_field_of_every_error(nodb_cli: Cli, tmp_path: Path) -> None:
    path = str(write(tmp_path, BROKEN))

    result = nodb_cli("templates", "check", "--templates", path)

    assert result.exit_code == 2
    assert result.stdout == ""
    first, *details = result.stderr.splitlines()
    assert re.fullmatch(r"error: \d+ template error\(s\)", first)
    assert int(first.split()[1]) == len(details)
    found = set()
    for line in details:
        match = DETAIL.match(line)
        assert match, line
        assert match["path"] == path
        found.add((match["key"], match["field"]))
    assert found == {
        ("kinds.day_before", "text"),
        ("kinds.day_before.telegram", "subject"),
        ("locales.de.kinds.hour_before.email", "html"),
        ("kinds.at_start", "text"),
    }
    assert "UndefinedError" in result.stderr
    assert "SecurityError" in result.stderr
    assert "TemplateSyntaxError" in result.stderr


def test_check_with_sample_data_passes_a_data_template(nodb_cli: Cli, tmp_path: Path) -> None:
    path = str(write(tmp_path, '[kinds.hour_before]\ntext = "Room {{ data.room }}"\n'))

    without = nodb_cli("templates", "check", "--templates", path)
    with_data = nodb_cli("templates", "check", "--templates", path, "--data", "room=A1")

    assert without.exit_code == 2
    assert "[kinds.hour_before] text" in without.stderr
    assert "room" in without.stderr
    assert with_data.exit_code == 0, with_data.stderr
    assert "OK" in with_data.stdout


def test_check_reports_bad_toml_in_one_line(nodb_cli: Cli, tmp_path: Path) -> None:
    path = str(write(tmp_path, '[kinds.day_before\ntext = "x"\n'))

    line = one_line_error(nodb_cli("templates", "check", "--templates", path))

    assert path in line
    assert "TOML" in line
    assert "line 1" in line


def test_check_reports_a_missing_file(nodb_cli: Cli, tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")

    line = one_line_error(nodb_cli("templates", "check", "--templates", path))

    assert path in line


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[kinds_typo.day_before]\ntext = "x"\n', "kinds_typo"),
        ("[kinds.day_before]\ntext = 3\n", "kinds.day_before.text"),
        ('[kinds.day_before]\nsubject = ["a"]\n', "kinds.day_before.subject"),
        ('[kinds.weekly]\ntext = "x"\n', "weekly"),
        ('[kinds."start-30x"]\ntext = "x"\n', "start-30x"),
        ('kinds = "x"\n', "kinds"),
        ("[locales.de.kinds.hour_before.telegram]\ntext = 1\n", "telegram.text"),
        pytest.param(
            '[kinds.day_before.telgram]\ntext = "x"\n',
            "telgram",
        ),
        pytest.param(
            '[kinds.day_before.telegram]\ntxt = "x"\n',
            "txt",
        ),
        pytest.param(
            '[locales.de.kind.day_before]\ntext = "x"\n',
            "kind",
        ),
    ],
    ids=[
        "unknown-section",
        "number-field",
        "list-field",
        "unknown-kind",
        "bad-offset",
        "kinds-not-a-table",
        "locale-channel-field",
        "misspelt-channel",
        "misspelt-field",
        "misspelt-locale-section",
    ],
)
def test_check_rejects_a_malformed_file(
    nodb_cli: Cli, tmp_path: Path, text: str, names: str
) -> None:
    path = str(write(tmp_path, text))

    line = one_line_error(nodb_cli("templates", "check", "--templates", path))

    assert path in line
    assert names in line


def test_loading_a_malformed_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateFileError) as info:
        TemplateSet.load(str(write(tmp_path, '[kinds.weekly]\ntext = "x"\n')))
    assert info.value.exit_code == 3


# --- templates preview ---------------------------------------------------------------

PREVIEW = """\
[kinds.hour_before]
text = "EN {{ title }} room {{ data.get('room', '?') }}"

[locales.de.kinds.hour_before]
text = "DE {{ title }} in Raum {{ data.room }} ({{ locale }})"

[locales.pt.kinds.hour_before]
text = "PT {{ title }} na sala {{ data.room }}"

[kinds.day_before]
text = "{{ title }} starts {{ starts_relative }}"
"""


def create(cli: Cli, booking: str, *args: str, to: tuple[str, ...] = ("console:desk",)) -> None:
    recipients = [a for r in to for a in ("--to", r)]
    cli.ok(
        "create",
        booking,
        "--starts-at",
        "+3d",
        "--ends-at",
        "+3d1h",
        "--title",
        "Yoga",
        "--timezone",
        "UTC",
        *recipients,
        *args,
    )


def test_preview_renders_create_locale_and_data(cli: Cli, tmp_path: Path) -> None:
    path = str(write(tmp_path, PREVIEW))
    create(cli, "b-de", "--locale", "de", "--data", "room=A1", to=("console:desk", "12345"))
    create(cli, "b-pt", "--locale", "pt-BR", "--data", "room=B2")
    create(cli, "b-en", "--data", "room=C3")

    de = cli.ok("templates", "preview", "b-de", "--kind", "hour_before", "--templates", path)
    pt = cli.ok("templates", "preview", "b-pt", "--kind", "hour_before", NOTIFYCTL_TEMPLATES=path)
    en = cli.ok("templates", "preview", "b-en", "--kind", "hour_before", NOTIFYCTL_TEMPLATES=path)

    ids = {
        (r["booking_id"], r["recipient"]): r["id"]
        for r in listed(cli)
        if r["kind"] == "hour_before"
    }
    assert de.stdout == (
        f"#{ids[('b-de', 'desk')]} hour_before → console:desk (pending)\n"
        "  DE Yoga in Raum A1 (de)\n"
        f"#{ids[('b-de', '12345')]} hour_before → telegram:12345 (pending)\n"
        "  DE Yoga in Raum A1 (de)\n"
    )
    assert pt.stdout.endswith("\n  PT Yoga na sala B2\n")
    assert en.stdout.endswith("\n  EN Yoga room C3\n")


def test_preview_shows_every_reminder_as_of_when_it_is_due_and_as_json(
    cli: Cli, tmp_path: Path
) -> None:
    path = str(write(tmp_path, PREVIEW))
    create(cli, "b1", "--data", "room=A1", to=("console:desk", "console:front"))

    everything = cli.ok("templates", "preview", "b1", NOTIFYCTL_TEMPLATES=path)
    day_before = cli.ok(
        "templates", "preview", "b1", "--kind", "day_before", "--json", NOTIFYCTL_TEMPLATES=path
    )

    headers = [line for line in everything.stdout.splitlines() if line.startswith("#")]
    assert len(headers) == 8  # four default kinds, two recipients each
    assert {h.split()[1] for h in headers} == {
        "day_before",
        "hour_before",
        "at_start",
        "before_end",
    }
    items = json.loads(day_before.stdout)
    assert [(i["kind"], i["channel"], i["recipient"]) for i in items] == [
        ("day_before", "console", "desk"),
        ("day_before", "console", "front"),
    ]
    # rendered as of when it will be sent (a day before), not as of now (three days before)
    assert all(re.fullmatch(r"Yoga starts tomorrow at \d\d:\d\d", i["text"]) for i in items)
    assert {i["id"] for i in items} == {r["id"] for r in listed(cli) if r["kind"] == "day_before"}


EMAIL_PREVIEW = """\
[kinds.hour_before]
text = "{{ title }} in an hour"
subject = "Soon: {{ title }}"
html = "<p>{{ title }} <b>in an hour</b></p>"
"""


def test_preview_shows_email_subject_and_html_and_each_status(cli: Cli, tmp_path: Path) -> None:
    path = str(write(tmp_path, EMAIL_PREVIEW))
    create(cli, "b1", "--remind", "hour_before", to=("email:ann@example.com", "console:desk"))
    cli.ok("cancel", "b1")

    text = cli.ok("templates", "preview", "b1", NOTIFYCTL_TEMPLATES=path)
    items = json.loads(
        cli.ok("templates", "preview", "b1", "--json", NOTIFYCTL_TEMPLATES=path).stdout
    )

    ids = {r["recipient"]: r["id"] for r in listed(cli)}
    assert text.stdout == (
        f"#{ids['ann@example.com']} hour_before → email:ann@example.com (cancelled)\n"
        "  subject: Soon: Yoga\n"
        "  Yoga in an hour\n"
        "  html: <p>Yoga <b>in an hour</b></p>\n"
        f"#{ids['desk']} hour_before → console:desk (cancelled)\n"
        "  Yoga in an hour\n"
    )
    by_channel = {i["channel"]: i for i in items}
    assert (by_channel["email"]["subject"], by_channel["email"]["status"]) == (
        "Soon: Yoga",
        "cancelled",
    )
    assert by_channel["email"]["html"] == "<p>Yoga <b>in an hour</b></p>"
    assert (by_channel["console"]["subject"], by_channel["console"]["html"]) == (None, None)


def test_preview_of_an_unknown_booking_or_kind_exits_2(cli: Cli) -> None:
    create(cli, "b1")

    unknown = one_line_error(cli("templates", "preview", "nope"))
    bad_kind = one_line_error(cli("templates", "preview", "b1", "--kind", "weekly"))

    assert "nope" in unknown
    assert "weekly" in bad_kind


def test_preview_with_a_bad_templates_file_is_a_configuration_error(
    cli: Cli, tmp_path: Path
) -> None:
    create(cli, "b1")
    path = str(write(tmp_path, "[kinds.day_before\n"))

    line = one_line_error(cli("templates", "preview", "b1", NOTIFYCTL_TEMPLATES=path), code=3)

    assert path in line


# --- templates at dispatch ------------------------------------------------------------


def _create_due(cli: Cli, booking: str, *args: str) -> None:
    cli.ok(
        "create",
        booking,
        "--starts-at",
        "+30m",
        "--ends-at",
        "+90m",
        "--remind",
        "hour_before",
        "--title",
        "Yoga",
        *args,
    )


def test_a_template_that_fails_fails_only_its_reminder(cli: Cli, tmp_path: Path) -> None:
    path = str(write(tmp_path, '[kinds.hour_before]\ntext = "{{ title }} in {{ data.room }}"\n'))
    _create_due(cli, "with-room", "--to", "console:a", "--data", "room=A1")
    _create_due(cli, "no-room", "--to", "console:b")
    _create_due(cli, "also-room", "--to", "console:c", "--data", "room=C3")

    preview = cli.ok("templates", "preview", "no-room", NOTIFYCTL_TEMPLATES=path)
    result = cli("dispatch", NOTIFYCTL_TEMPLATES=path)
    again = cli("dispatch", NOTIFYCTL_TEMPLATES=path)

    assert "<template error: UndefinedError" in preview.stdout
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines[:2]) == ["[console:a] Yoga in A1", "[console:c] Yoga in C3"]
    assert re.fullmatch(r"dispatch: 2 sent, 1 failed in \d+\.\ds", lines[2])
    assert len(lines) == 3
    rows = {r["booking_id"]: r for r in listed(cli)}
    assert (rows["with-room"]["status"], rows["also-room"]["status"]) == ("sent", "sent")
    failed = rows["no-room"]
    assert failed["status"] == "failed"
    assert "template" in failed["last_error"]
    assert "room" in failed["last_error"]
    assert (again.exit_code, again.stdout) == (0, "")  # a template error is not retried


@pytest.mark.parametrize("source", UNSAFE[:2])
def test_a_sandbox_violation_at_dispatch_fails_the_reminder(
    store: Store, clock: FrozenClock, tmp_path: Path, source: str
) -> None:
    path = write(tmp_path, f"[kinds.hour_before.console]\ntext = {json.dumps(source)}\n")
    remind(store, "b1", "console:desk", title="Yoga")

    run = dispatch(store, clock, path)

    assert (run.report.failed, run.report.sent, run.report.exit_code) == (1, 0, 0)
    assert run.stdout == ""
    [row] = reminders(store).values()
    assert row["status"] == Status.FAILED
    assert row["last_error"].startswith("template error: SecurityError")


@pytest.mark.parametrize("field", ["html", "subject"])
def test_a_field_the_channel_never_uses_cannot_fail_its_reminder(
    store: Store, clock: FrozenClock, tmp_path: Path, field: str
) -> None:
    path = write(
        tmp_path,
        f'[kinds.hour_before]\ntext = "{{{{ title }}}}"\n{field} = "{{{{ data.room }}}}"\n',
    )
    remind(store, "b1", "console:desk", title="Yoga")

    run = dispatch(store, clock, path)

    assert run.stdout == "[console:desk] Yoga\n"
    assert run.report.sent == 1


@pytest.mark.parametrize(
    "content",
    [
        b"[kinds.hour_before\n",
        b'[kinds.weekly]\ntext = "x"\n',
        None,
        '[kinds.hour_before]\ntext = "Caf\u00e9 {{ title }}"\n'.encode("latin-1"),
    ],
    ids=["bad-toml", "unknown-kind", "missing-file", "not-utf8"],
)
def test_a_bad_templates_file_stops_dispatch_before_claiming_with_exit_3(
    cli: Cli, tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "templates.toml"
    if content is not None:
        path.write_bytes(content)
    _create_due(cli, "b1", "--to", "console:a", "--to", "console:b")

    result = cli("dispatch", NOTIFYCTL_TEMPLATES=str(path))

    line = one_line_error(result, code=3)
    assert str(path) in line
    rows = listed(cli)
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0), ("pending", 0)]
    assert cli.ok("dispatch").stdout.startswith("[console:")  # the built-in texts still work


def test_an_unknown_channel_in_the_store_fails_that_reminder_and_the_run_goes_on(
    store: Store, clock: FrozenClock
) -> None:
    remind(store, "b1", "console:a", "console:b", title="Yoga")
    with store.transaction() as conn:
        conn.execute(update(N).where(N.recipient == "b").values(channel="pigeon"))

    run = dispatch(store, clock, None)

    assert (run.report.sent, run.report.failed, run.report.exit_code) == (1, 1, 0)
    assert run.stdout.startswith("[console:a] ")
    rows = reminders(store)
    assert rows[("b1", "a")]["status"] == Status.SENT
    pigeon = rows[("b1", "b")]
    assert pigeon["status"] == Status.FAILED
    assert "unknown channel 'pigeon'" in pigeon["last_error"]


# --- relative words are true when sent ---------------------------------------------------

RELATIVE = (
    '[kinds.day_before]\ntext = "{{ title }}: {{ starts_relative }} / {{ days_to_start }} / '
    'ends {{ relative(end, now) }}"\n'
)


@pytest.mark.parametrize(
    ("sent_at", "words"),
    [
        # Europe/Berlin is UTC+2 in June; the booking is 3 June 18:00-19:00 local
        (datetime(2026, 6, 2, 16, 0, tzinfo=UTC), "tomorrow at 18:00 / 1 / ends tomorrow at 19:00"),
        (
            datetime(2026, 6, 2, 21, 59, tzinfo=UTC),
            "tomorrow at 18:00 / 1 / ends tomorrow at 19:00",
        ),
        # 00:30 local on the day itself, while it is still 2 June in UTC
        (datetime(2026, 6, 2, 22, 30, tzinfo=UTC), "today at 18:00 / 0 / ends today at 19:00"),
        (datetime(2026, 6, 3, 7, 0, tzinfo=UTC), "today at 18:00 / 0 / ends today at 19:00"),
        (
            datetime(2026, 6, 3, 15, 15, tzinfo=UTC),
            "in 45 minutes, at 18:00 / 0 / ends today at 19:00",
        ),
    ],
    ids=["on-time", "late-evening-before", "just-after-midnight", "morning-of", "45-min-before"],
)
def test_day_before_text_is_true_when_it_is_sent(
    store: Store, clock: FrozenClock, tmp_path: Path, sent_at: datetime, words: str
) -> None:
    path = write(tmp_path, RELATIVE)
    create_booking(
        store,
        "b1",
        starts_at="2026-06-03 18:00",
        ends_at="2026-06-03 19:00",
        to=["console:desk"],
        remind=["day_before"],
        timezone="Europe/Berlin",
        title="Yoga",
    )
    clock.set(sent_at)

    run = dispatch(store, clock, path)

    assert run.stdout == f"[console:desk] Yoga: {words}\n"
