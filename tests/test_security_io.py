"""Untrusted input and output (SPEC §14, issue 19 items 6-8, issue 11 items 7 and 9).

Booking ids, titles, data and recipients come from a booking site's end
users: whatever they hold is shown as inert text, cannot start a spreadsheet
formula, cannot make a command slow or its errors huge, and a secret given on
the command line draws a warning. Everything runs through the real CLI; the
table on a terminal through a real pseudo-terminal.
"""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import pytest

from notifyctl import bookfile
from tests import dbstate as db
from tests.dbstate import assert_usage_error
from tests.support import Cli, CliResult, on_terminal

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ESC = "\x1b"
RED = f"{ESC}[31mred"
TIMES = ("--starts-at", "+2d", "--ends-at", "+3d")


def create(cli: Cli, booking_id: str, *args: str, to: str = "console:a") -> None:
    cli.ok("create", *TIMES, "--to", to, "--remind", "day_before", *args, "--", booking_id)


def from_file(cli: Cli, tmp_path: Path, text: str, name: str = "bookings.jsonl") -> CliResult:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return cli("create", "--from-file", str(path))


def jsonl(*records: dict[str, object]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def booking(booking_id: str, **fields: object) -> dict[str, object]:
    return {"booking_id": booking_id, "starts_at": "+2d", "ends_at": "+3d", "to": "console:a"} | (
        fields
    )


def error_lines(result: CliResult) -> list[str]:
    assert_usage_error(result)
    return result.stderr.splitlines()


# --- item 7: output is inert -------------------------------------------------------------


@sqlite_only
def test_list_on_a_terminal_shows_markup_and_escapes_as_text(cli: Cli, database_url: str) -> None:
    create(cli, "[/x]")
    create(cli, "[link=https://evil.example]click me[/link]")
    db.set_reminder(database_url, "[/x]", "day_before", last_error=f"boom {RED}\rX")

    code, screen = on_terminal(database_url, "list", columns=250, term="xterm")

    assert code == 0, screen
    assert "[/x]" in screen
    assert "[link=https://evil.example]click me[/link]" in screen
    assert ESC not in screen.replace(f"{ESC}[1m", "").replace(f"{ESC}[0m", "")  # rich's own bold
    assert "\\x1b[31mred\\x0dX" in screen


@sqlite_only
def test_stats_and_summary_on_a_terminal_render(cli: Cli, database_url: str) -> None:
    create(cli, "[/b]")

    for args in (["stats"], ["list", "--summary"]):
        code, screen = on_terminal(database_url, *args, columns=250, term="xterm")
        assert code == 0, screen
        assert "pending" in screen


@sqlite_only
def test_list_in_a_pipe_keeps_one_row_per_line(cli: Cli, database_url: str) -> None:
    create(cli, "b1")
    db.set_reminder(database_url, "b1", "day_before", last_error=f"a\tb\nc {RED}")

    result = cli.ok("list")

    header, row = result.stdout.splitlines()
    assert len(row.split("\t")) == len(header.split("\t"))
    assert row.split("\t")[10] == "a\\x09b\\x0ac \\x1b[31mred"


def test_csv_cells_cannot_start_a_formula_but_numbers_stay(cli: Cli, database_url: str) -> None:
    create(cli, '=HYPERLINK("https://evil.example","x")', to="telegram:-100123")
    create(cli, "+SUM(A1)", to="console:@ops")
    create(cli, "-2+3", to="console:a")
    create(cli, "@cmd", to="console:a")
    create(cli, "plain", to="console:a")
    db.set_reminder(database_url, "plain", "day_before", last_error="\t=1+1")

    rows = list(csv.DictReader(io.StringIO(cli.ok("list", "--format", "csv").stdout)))

    by_id = {r["booking_id"]: r for r in rows}
    assert set(by_id) == {
        '\'=HYPERLINK("https://evil.example","x")',
        "'+SUM(A1)",
        "'-2+3",
        "'@cmd",
        "plain",
    }
    assert by_id['\'=HYPERLINK("https://evil.example","x")']["recipient"] == "-100123"
    assert by_id["plain"]["last_error"] == "'\t=1+1"
    assert by_id["plain"]["attempts"] == "0"
    json_ids = {r["booking_id"] for r in json.loads(cli.ok("list", "--format", "json").stdout)}
    assert '=HYPERLINK("https://evil.example","x")' in json_ids  # JSON is unchanged


def test_a_stored_template_error_holds_no_control_characters(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    templates = tmp_path / "templates.toml"
    templates.write_text('[kinds.hour_before]\ntext = "{{ {}[data.key] }}"\n', encoding="utf-8")
    cli.ok(
        "create",
        "b1",
        "--starts-at",
        "+30m",
        "--ends-at",
        "+90m",
        "--remind",
        "hour_before",
        "--to",
        "console:a",
        "--data",
        f"key={RED}",
    )

    result = cli("dispatch", NOTIFYCTL_TEMPLATES=str(templates))

    assert result.exit_code == 0, result.stderr
    [row] = db.reminders(database_url, "b1")
    assert row["status"] == "failed"
    assert "\\x1b[31mred" in row["last_error"]
    assert ESC not in row["last_error"]


# --- item 6 and issue 11 item 7: secrets ---------------------------------------------------


def test_a_token_on_the_command_line_draws_a_warning(cli: Cli) -> None:
    result = cli("dispatch", "--telegram-token", "123456:AAE-secret-token-here")

    assert result.exit_code == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "--telegram-token" in warning
    assert "TELEGRAM_BOT_TOKEN" in warning
    assert "AAE-secret" not in result.stderr


def test_a_database_password_on_the_command_line_draws_a_warning(tmp_path: Path) -> None:
    secret = "postgresql://u:s3cretpw@127.0.0.1/db"
    plain = f"sqlite:///{tmp_path / 'x.db'}"

    with_password = Cli(plain)("migrate", "--sql", "--database-url", secret)
    query_password = Cli(plain)("migrate", "--sql", f"--database-url={secret}?password=pw2")
    without = Cli(plain)("migrate", "--sql", "--database-url", plain)
    from_env = Cli(secret)("migrate", "--sql")

    for result in (with_password, query_password):
        assert result.exit_code == 0, result.stderr
        [warning] = result.stderr.splitlines()
        assert warning.startswith("warning: --database-url on the command line")
        assert "NOTIFYCTL_DATABASE_URL" in warning
    assert "warning" not in without.stderr + from_env.stderr


def test_a_ping_url_with_its_key_on_the_command_line_draws_a_warning(cli: Cli) -> None:
    url = f"http://127.0.0.1:{closed_port()}/ping/5b0c64ee-7c48-4a8b-8d6f-3c1e2f9a0b7d"

    result = cli("dispatch", "--ping-url", url)

    assert result.exit_code == 0
    assert "warning: --ping-url on the command line" in result.stderr.splitlines()[0]


def test_a_password_query_parameter_never_shows(cli: Cli, database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("psycopg reads password= from the query; SQLite has no password")
    url = f"{database_url}?password=qu3ryS3cret"
    unreachable = "postgresql://postgres@127.0.0.1:1/x?password=qu3ryS3cret&sslmode=disable"

    migrated = cli("migrate", NOTIFYCTL_DATABASE_URL=url)
    failed = cli("list", NOTIFYCTL_DATABASE_URL=unreachable)
    failed_migrate = cli("migrate", NOTIFYCTL_DATABASE_URL=unreachable)

    assert migrated.exit_code == 0, migrated.stderr
    assert "password=***" in migrated.stdout
    assert (failed.exit_code, failed_migrate.exit_code) == (4, 4)
    for result in (migrated, failed, failed_migrate):
        assert "qu3ryS3cret" not in result.stdout + result.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_short_ping_path_does_not_mangle_the_warning(cli: Cli) -> None:
    result = cli("dispatch", "--ping-url", f"http://127.0.0.1:{closed_port()}/x")

    assert result.exit_code == 0
    warning = next(line for line in result.stderr.splitlines() if line.startswith("ping "))
    assert "/*** (start) failed: ConnectionError" in warning
    assert "exceeded" in warning
    assert "Connection refused" in warning
    assert "/x/start" not in warning


# --- item 8: bad input that costs minutes ----------------------------------------------------


@sqlite_only
def test_huge_bad_values_give_short_errors(cli: Cli, database_url: str, tmp_path: Path) -> None:
    huge = "a" * 60_000
    lines = jsonl(
        booking(huge),
        booking("b2", **{huge: 1}),
        booking("b3", to=f"webhook:https://{huge}"),
        booking("b4", to=f"apprise://user:{huge}"),
    )
    result = from_file(cli, tmp_path, lines)

    errors = error_lines(result)
    assert errors[0] == "error: bookings.jsonl: 4 invalid line(s), nothing written"
    assert [e.split(":")[0] for e in errors[1:]] == [f"  line {n}" for n in (1, 2, 3, 4)]
    assert all(len(e) <= 2 + bookfile.MAX_ERROR_CHARS for e in errors)
    assert db.counts(database_url) == (0, 0)


@sqlite_only
def test_a_huge_bad_option_value_gives_a_short_error(cli: Cli) -> None:
    result = cli("create", "b1", *TIMES, "--to", "console:a", "--data", "x" * 120_000)

    [line] = error_lines(result)
    assert line.startswith("error: invalid data 'xxxx")
    assert len(line) < 200


@sqlite_only
def test_overlong_lines_are_errors_by_number_and_nothing_is_written(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    lines = jsonl(booking("b1")) + '{"x": "' + "y" * 1_000_000 + '"}\n' + jsonl(booking("b3"))

    errors = error_lines(from_file(cli, tmp_path, lines))

    assert errors[1:] == [f"  line 2: longer than {bookfile.MAX_LINE_CHARS} characters"]
    assert db.counts(database_url) == (0, 0)


@sqlite_only
def test_a_file_over_the_size_limit_is_refused(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bookfile, "MAX_FILE_CHARS", 2_000)

    result = from_file(cli, tmp_path, jsonl(*(booking(f"b{n}") for n in range(40))))

    [line] = error_lines(result)
    assert "larger than" in line


@sqlite_only
def test_json_that_python_refuses_is_a_per_line_error(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    good = json.dumps(booking("ok"))
    deep = good[:-1] + ', "data": {"n": ' + "[" * 100_00 + "]" * 100_00 + "}}"
    nested = good[:-1] + ', "data": {"n": ' + "[" * 30 + "]" * 30 + "}}"
    long_int = good[:-1] + ', "data": {"n": ' + "7" * 5_000 + "}}"
    text = "\n".join([good, deep, nested, long_int, json.dumps(booking("ok2"))]) + "\n"

    errors = error_lines(from_file(cli, tmp_path, text))

    assert errors[0] == "error: bookings.jsonl: 3 invalid line(s), nothing written"
    assert errors[1].startswith("  line 2: invalid JSON: nested more than")
    assert errors[2].startswith("  line 3: invalid JSON: nested more than")
    assert errors[3].startswith("  line 4: invalid JSON: Exceeds the limit (4300 digits)")
    assert db.counts(database_url) == (0, 0)


def test_nan_and_infinity_in_data_are_rejected_by_line(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    good = json.dumps(booking("ok"))
    text = "\n".join(
        [
            good,
            good[:-1] + ', "data": {"n": NaN}}',
            good[:-1] + ', "data": {"n": -Infinity}}',
            good[:-1] + ', "data": {"n": 1e999}}',
        ]
    )

    errors = error_lines(from_file(cli, tmp_path, text + "\n"))

    assert [e.split(":")[0] for e in errors[1:]] == ["  line 2", "  line 3", "  line 4"]
    assert all("NaN or Infinity" in e for e in errors[1:])
    assert db.counts(database_url) == (0, 0)


@sqlite_only
def test_csv_errors_are_per_line_exit_2(cli: Cli, database_url: str, tmp_path: Path) -> None:
    big_field = '"' + ("x" * 60_000 + "\n") * 3 + '"'
    text = (
        "booking_id,starts_at,ends_at,to,title\n"
        "b1,+2d,+3d,console:a,ok\n"
        f"b2,+2d,+3d,console:a,{big_field}\n"
        "b3,+2d,+3d,console:a,ok\n"
    )

    errors = error_lines(from_file(cli, tmp_path, text, name="bookings.csv"))

    assert errors[1].startswith("  line 5: invalid CSV: field larger than field limit")
    assert db.counts(database_url) == (0, 0)


@sqlite_only
def test_csv_with_a_nul_byte_is_an_error_by_line(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    text = "booking_id,starts_at,ends_at,to\nb1,+2d,+3d,console:a\nb\x002,+2d,+3d,console:a\n"

    errors = error_lines(from_file(cli, tmp_path, text, name="bookings.csv"))

    assert errors[1].startswith("  line 3: ")
    assert db.counts(database_url) == (0, 0)


# --- item 8: operator templates are bounded ---------------------------------------------------

SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE = "{{ 'x' * 10**9 }}"
NESTED_OUTPUT = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
WIDE = "{{ 'x'|center(10**9) }}"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (SLOW, "took longer than"),
        (HUGE, "over the template limit"),
        (NESTED_OUTPUT, "over the template limit"),
        (WIDE, "over the template limit"),
        ("{% for i in range(10**9) %}x{% endfor %}", "over the template limit"),
    ],
    ids=["slow", "huge", "output", "wide", "range"],
)
def test_templates_check_fails_fast_on_runaway_templates(
    tmp_path: Path, source: str, reason: str
) -> None:
    path = tmp_path / "templates.toml"
    path.write_text(f"[kinds.day_before.console]\ntext = {json.dumps(source)}\n", encoding="utf-8")

    result = Cli(f"sqlite:///{tmp_path / 'unused.db'}")(
        "templates", "check", "--templates", str(path)
    )

    errors = error_lines(result)
    assert errors[0] == "error: 1 template error(s)"
    assert "TemplateLimitError" in errors[1]
    assert reason in errors[1]


def test_a_runaway_template_fails_its_reminder_and_the_run_goes_on(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "templates.toml"
    path.write_text(
        f"[locales.de.kinds.hour_before]\ntext = {json.dumps(SLOW)}\n"
        f"[locales.fr.kinds.hour_before]\ntext = {json.dumps(HUGE)}\n",
        encoding="utf-8",
    )
    for booking_id, locale in (("slow", "de"), ("huge", "fr"), ("fine", "en")):
        cli.ok(
            "create",
            booking_id,
            "--starts-at",
            "+30m",
            "--ends-at",
            "+90m",
            "--remind",
            "hour_before",
            "--title",
            "Yoga",
            "--locale",
            locale,
            "--to",
            f"console:{booking_id}",
        )

    result = cli("dispatch", NOTIFYCTL_TEMPLATES=str(path))

    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("[console:fine] ")
    status = {r["external_id"]: (r["status"], r["last_error"]) for r in db.reminders(database_url)}
    assert status["fine"] == ("sent", None)
    assert status["slow"][0] == status["huge"][0] == "failed"
    assert "TemplateLimitError" in status["slow"][1]
    assert "longer than" in status["slow"][1]
    assert "TemplateLimitError" in status["huge"][1]
