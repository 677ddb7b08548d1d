"""Issue 13 (everyday use), through the real CLI: readable tables, honest checks,
read-only stores, metrics after early failures, options that mean what they say."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifyctl.db import Store
from notifyctl.service import create_booking
from tests.dbstate import assert_usage_error
from tests.ops_support import dispatch, frozen_cli, minutes
from tests.support import Cli, FrozenClock, clean_env, on_terminal


def book(store: Store, booking_id: str, start: timedelta, *to: str, **kw: object) -> None:
    now = store.clock()
    create_booking(
        store,
        booking_id,
        starts_at=now + start,
        ends_at=now + start + timedelta(hours=1),
        to=list(to),
        **kw,  # type: ignore[arg-type]
    )


# --- item 1: tables -------------------------------------------------------------------


def test_list_on_an_80_column_terminal_keeps_one_line_per_reminder_in_local_time(
    database_url: str, cli: Cli
) -> None:
    cli.ok(
        "create",
        "a-rather-long-booking-identifier-that-cannot-fit",
        "--starts-at",
        "+3h",
        "--ends-at",
        "+4h",
        "--to",
        "console:somebody-with-a-long-name",
        "--to",
        "email:ann.longname@example.com",
        "--remind",
        "hour_before",
    )
    [first, _] = json.loads(cli.ok("list", "--format", "json").stdout)
    due = datetime.fromisoformat(first["due_at"]).astimezone(ZoneInfo("Asia/Kolkata"))

    code, screen = on_terminal(database_url, "list", "--timezone", "Asia/Kolkata")

    assert code == 0, screen
    lines = [line for line in screen.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines), screen
    assert "times in Asia/Kolkata" in screen
    header = next(line for line in lines if line.lstrip().startswith("id"))
    assert header.split() == [
        "id",
        "booking",
        "kind",
        "recipient",
        "status",
        "due",
        "tries",
        "error",
    ]
    rows = [line for line in lines if "hour_before" in line]
    assert len(rows) == 2, screen  # one line each: nothing wrapped
    for row in rows:
        assert f"{due:%m-%d %H:%M} (in 1 h)" in row, screen
        assert "pending" in row


def test_list_json_and_csv_keep_every_field_in_utc(cli: Cli, store: Store) -> None:
    book(store, "b1", timedelta(hours=3), "console:a", remind=["hour_before"])

    [row] = json.loads(cli.ok("list", "--format", "json", "--timezone", "Asia/Tokyo").stdout)
    header = cli.ok("list", "--format", "csv").stdout.splitlines()[0]

    assert row["due_at"].endswith("Z")
    assert header.split(",") == list(row)
    assert {"scheduled_at", "not_after", "due_at", "last_error", "sent_at"} <= set(row)


def test_stats_counts_superseded_apart_and_summary_uses_the_same_names(
    database_url: str, store: Store, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a booking made 30 min before its start: day_before and hour_before are due at once
    t0 = clock()
    create_booking(
        store,
        "late",
        starts_at=t0 + minutes(30),
        ends_at=t0 + minutes(90),
        to=["console:a"],
        remind=["day_before", "hour_before"],
    )
    dispatch(store, clock, database_url)
    cli = frozen_cli(monkeypatch, database_url, clock)

    stats = json.loads(cli.ok("stats", "--format", "json").stdout)
    summary = json.loads(cli.ok("list", "--summary", "--format", "json").stdout)

    [day_before] = [g for g in stats["by_channel_kind"] if g["kind"] == "day_before"]
    assert (day_before["superseded"], day_before["expired"]) == (1, 0)
    assert day_before["delivery_rate"] is None  # not "0.0 %": it was never meant to go
    assert stats["total"]["delivery_rate"] == 1.0
    assert set(summary) == {"counts", "due", "oldest_due_age_seconds", "failed_last_24h"}
    assert summary["due"] == stats["queue"]["due"]
    assert summary["oldest_due_age_seconds"] == stats["queue"]["oldest_due_age_seconds"]


@pytest.mark.parametrize("sqlite_only", ["sqlite"])
def test_stats_table_collapses_idle_runs_and_shows_human_durations(
    tmp_path: Path, sqlite_only: str
) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    cli = Cli(url)
    cli.ok("migrate")
    for _ in range(3):
        cli.ok("dispatch")  # nothing due: idle runs
    cli.ok("create", "b1", "--starts-at", "+79m", "--ends-at", "+139m", "--to", "console:a")

    code, screen = on_terminal(url, "stats")
    lines = cli.ok("list", "--summary").stdout.splitlines()

    assert code == 0, screen
    assert "3 idle runs" in screen
    assert screen.count("idle runs") == 1
    assert "superseded" in screen
    assert "due now: 1" in lines  # the day_before reminder, due for 22 h 41 min
    assert "oldest due: 22 h 41 min overdue" in lines


def test_list_summary_honours_status_and_rejects_filters_it_would_ignore(
    cli: Cli, store: Store
) -> None:
    book(store, "b1", timedelta(hours=3), "console:a")

    body = json.loads(cli.ok("list", "--summary", "--status", "pending", "--format", "json").stdout)
    csv_out = cli.ok("list", "--summary", "--format", "csv").stdout.splitlines()
    refused = cli("list", "--summary", "--booking", "b1")

    assert body["counts"] == {"pending": 4}
    assert csv_out[0].split(",")[:2] == ["pending", "sending"]
    assert "\t" not in csv_out[1]
    assert_usage_error(refused, contains="--booking")


# --- item 2: templates check ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("<blink>{{ title }}</blink>", "<blink> is not supported"),
        ("<b>{{ title }}", "<b> is never closed"),
        ("<b><i>{{ title }}</b></i>", "does not match"),
        ("{{ title }} &nbsp;", "&nbsp;"),
        ('<span class="x">{{ title }}</span>', "tg-spoiler"),
        ("{% if false %}x{% endif %}", "empty"),
    ],
)
def test_templates_check_rejects_what_telegram_would_refuse(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f"[kinds.hour_before.telegram]\ntext = '{text}'\n", encoding="utf-8")

    result = Cli("sqlite:///unused")("templates", "check", "--templates", str(path))

    assert_usage_error(result, contains="template error")
    assert complaint in result.stderr
    assert result.stdout == ""


def test_templates_check_passes_every_tag_telegram_accepts(tmp_path: Path) -> None:
    text = (
        "<b>{{ title }}</b> <i>i</i> <u>u</u> <s>s</s> <tg-spoiler>x</tg-spoiler> "
        '<span class="tg-spoiler">y</span> <a href="https://e.example/?a=1&amp;b=2">l</a> '
        '<code>c</code> <pre><code class="language-python">p</code></pre> '
        "<blockquote expandable>q</blockquote> &lt;&gt;&quot;&#39;&#x1F600;"
    )
    path = tmp_path / "t.toml"
    path.write_text(f"[kinds.hour_before.telegram]\ntext = '{text}'\n", encoding="utf-8")

    result = Cli("sqlite:///unused").ok("templates", "check", "--templates", str(path))

    assert "OK" in result.stdout


def test_a_templates_file_that_is_not_utf8_is_a_check_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_bytes('[default]\ntext = "Caf\u00e9"\n'.encode("latin-1"))

    result = Cli("sqlite:///unused")("templates", "check", "--templates", str(path))

    assert_usage_error(result, contains="not UTF-8")


# --- item 3: metrics after an early failure ---------------------------------------------


def test_metrics_file_is_written_when_dispatch_fails_before_the_run(
    empty_database_url: str, tmp_path: Path
) -> None:
    prom = tmp_path / "notifyctl.prom"
    prom.write_text(
        "# TYPE notifyctl_dispatch_last_success_timestamp_seconds gauge\n"
        "notifyctl_dispatch_last_success_timestamp_seconds 1700000000.0\n",
        encoding="utf-8",
    )

    result = Cli(empty_database_url)("dispatch", "--metrics-file", str(prom))

    assert result.exit_code == 4, result.stderr
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(prom.read_text(encoding="utf-8"))
        for s in family.samples
    }
    assert values["notifyctl_dispatch_exit_code"] == 4
    assert values["notifyctl_dispatch_last_run_timestamp_seconds"] > 1700000000
    assert values["notifyctl_dispatch_last_success_timestamp_seconds"] == 1700000000.0
    assert "notifyctl_queue_pending" not in values  # unknown, not a made-up 0


# --- item 4: read-only stores -------------------------------------------------------------


def test_read_only_commands_work_on_a_store_the_user_cannot_write(tmp_path: Path) -> None:
    source = tmp_path / "n.db"
    cli = Cli(f"sqlite:///{source}")
    cli.ok("migrate")
    cli.ok("create", "b1", "--starts-at", "+3h", "--ends-at", "+4h", "--to", "console:a")
    cli.ok("dispatch")  # leaves WAL files behind, as a live store has
    shared = tmp_path / "backup"
    shared.mkdir()
    copy = shared / "n.db"
    subprocess.run(["sqlite3", str(source), f".backup {copy}"], check=True)
    # a read-only mount: nobody, root included, may write the file or its directory
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(shared)], check=True)
        url = f"sqlite:///{copy}"
        commands = [
            ["list"],
            ["list", "--summary"],
            ["stats"],
            ["templates", "preview", "b1"],
            ["migrate", "--check"],
        ]
        for args in commands:
            done = subprocess.run(
                [sys.executable, "-m", "notifyctl", *args],
                env=clean_env(url, HOME=str(shared)),
                capture_output=True,
                text=True,
                timeout=60,
                cwd=shared,
            )
            assert done.returncode == 0, (args, done.stderr)
            assert "readonly" not in done.stderr
        assert sorted(p.name for p in shared.iterdir()) == ["n.db"]  # nothing written
    finally:
        subprocess.run(["umount", str(shared)], check=True)


# --- item 6: options that contradict each other --------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["migrate", "--check", "--sql"], "--check only checks"),
        (["migrate", "--downgrade", "base", "0001"], "not both"),
        (["migrate", "--downgrade", "base"], "--yes"),
        (["dispatch", "--rate-limit", "100000"], "10000"),
        (["dispatch", "--ping-url", "notaurl"], "http(s) URL"),
    ],
)
def test_contradictory_or_invalid_options_are_refused_and_nothing_changes(
    cli: Cli, store: Store, args: list[str], message: str
) -> None:
    book(store, "b1", timedelta(hours=3), "console:a")

    result = cli(*args)

    assert_usage_error(result, contains=message)
    assert len(json.loads(cli.ok("list", "--format", "json").stdout)) == 4  # tables intact


def test_migrate_downgrade_sql_needs_no_from_to_syntax() -> None:
    result = Cli("postgresql://u@db.invalid/n").ok("migrate", "--downgrade", "base", "--sql")

    assert "DROP TABLE notifications" in result.stdout


def test_list_json_into_a_closed_pipe_ends_quietly(database_url: str, store: Store) -> None:
    for n in range(300):
        book(store, f"b{n}", timedelta(hours=3), "console:a")
    env = clean_env(database_url)
    command = f"{sys.executable} -m notifyctl list --format json | head -c 100 >/dev/null"

    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# --- item 8: conventions ------------------------------------------------------------------


def test_version_bare_command_and_help_placeholders(tmp_path: Path) -> None:
    cli = Cli(f"sqlite:///{tmp_path / 'n.db'}")

    version = cli.ok("--version")
    bare = cli()
    helps = {c: cli.ok(*c.split(), "--help").stdout for c in ("create", "list", "migrate")}
    preview = cli.ok("templates", "preview", "--help").stdout

    assert version.stdout.startswith("notifyctl 0.")
    assert "Usage: notifyctl" in bare.stdout
    assert "error" not in bare.stdout + bare.stderr
    assert "--from-file PATH" in helps["create"]
    assert "--to R" in helps["create"]
    assert "--timezone ZONE" in helps["create"]
    assert "--reactivate " in helps["create"]
    assert "--no-reactivate" not in helps["create"]
    assert "--limit N" in helps["list"]
    assert "--summary " in helps["list"]
    assert "--check " in helps["migrate"]
    assert "no-check" not in helps["migrate"]
    assert "BOOKING_ID" in preview
    assert "{" not in preview
    assert all("<str>" not in h and "<int>" not in h for h in helps.values())
