"""``notifyctl migrate``, schema checks, database errors and configuration precedence."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from typer.core import TyperGroup

from notifyctl import migrate as migrations
from notifyctl.cli import app
from notifyctl.db import make_engine
from notifyctl.models import SCHEMA_REVISION, Base, BookingStatus, Status
from notifyctl.runs import RUN_COUNTERS, Action, RunReport
from tests import dbstate as db
from tests.support import Cli, CliResult, stat_hours_drift

REPO = Path(__file__).resolve().parents[1]
_head = ScriptDirectory(str(REPO / "migrations")).get_current_head()
assert _head is not None
HEAD: str = _head
TABLES = {"bookings", "notifications", "delivery_attempts", "dispatch_runs", "pacing"}
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/x"
SECRET_PG = "postgresql://postgres:s3cretpw@127.0.0.1:1/x"
SOME_TIME = ("--starts-at", "2030-01-10T18:00+01:00", "--ends-at", "2030-01-10T19:00+01:00")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def revision(url: str) -> str | None:
    engine = make_engine(url, create_file=False)
    try:
        return migrations.current_revision(engine)
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    with db.connect(url) as conn:
        return set(inspect(conn).get_table_names())


def assert_clean_error(result: CliResult, exit_code: int, contains: str = "") -> None:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: "), result.stderr
    assert contains in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# --- migrate on SQLite ----------------------------------------------------------------------


def test_migrate_creates_a_private_file_in_new_private_directories(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "notifyctl.db"
    cli = Cli(f"sqlite:///{path}")

    result = cli.ok("migrate")

    assert result.stdout.strip() == f"migrated sqlite:///{path} from empty to {HEAD}"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(tmp_path / "new") == 0o700
    for sibling in path.parent.iterdir():  # -wal / -shm too
        assert mode(sibling) & 0o077 == 0, sibling
    assert revision(cli.database_url) == HEAD
    assert tables(cli.database_url) >= TABLES


def test_migrate_twice_is_a_no_op_and_keeps_data(empty_database_url: str) -> None:
    cli = Cli(empty_database_url)
    cli.ok("migrate")
    cli.ok("create", "b1", *SOME_TIME, "--to", "console:a")

    result = cli.ok("migrate")

    assert result.stdout.strip().endswith(f"is already at {HEAD}")
    assert revision(empty_database_url) == HEAD
    assert db.counts(empty_database_url) == (1, 4)


def test_migrate_check_passes_at_head_and_fails_when_behind(empty_database_url: str) -> None:
    cli = Cli(empty_database_url)
    cli.ok("migrate")

    at_head = cli("migrate", "--check")
    cli.ok("migrate", "--downgrade", "base", "--yes")
    behind = cli("migrate", "--check")

    assert at_head.exit_code == 0
    assert HEAD in at_head.stdout
    assert_clean_error(behind, 1, contains=f"head is {HEAD}")
    assert revision(empty_database_url) is None


def test_migrate_check_never_creates_the_database_and_calls_a_missing_one_behind(
    empty_database_url: str,
) -> None:
    result = Cli(empty_database_url)("migrate", "--check")

    # behind like an empty schema (exit 1), not "unreachable" (4)
    assert_clean_error(result, 1, contains="empty schema")
    assert not Path(empty_database_url.removeprefix("sqlite:///")).exists()


def test_migrate_sql_prints_the_schema_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new" / "notifyctl.db"

    result = Cli(f"sqlite:///{path}").ok("migrate", "--sql")

    assert "CREATE TABLE bookings" in result.stdout
    assert "CREATE TABLE notifications" in result.stdout
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in result.stdout
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in result.stdout
    assert not path.exists()
    assert not path.parent.exists()


def test_migrate_sql_for_postgresql_needs_no_server() -> None:
    result = Cli(UNREACHABLE_PG).ok("migrate", "--sql")

    assert "CREATE TABLE bookings" in result.stdout
    assert "TIMESTAMP WITH TIME ZONE" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["nope"], id="upgrade"),
        pytest.param(["--downgrade", "nope", "--yes"], id="downgrade"),
    ],
)
def test_migrate_to_an_unknown_revision_is_a_usage_error(
    empty_database_url: str, args: list[str]
) -> None:
    cli = Cli(empty_database_url)
    cli.ok("migrate")

    result = cli("migrate", *args)

    assert_clean_error(result, 2, contains="'nope'")
    assert revision(empty_database_url) == HEAD


# --- migrations on both dialects ---------------------------------------------------------------


def test_downgrade_to_base_and_upgrade_again(cli: Cli, database_url: str) -> None:
    cli.ok("create", "b1", *SOME_TIME, "--to", "console:a")

    cli.ok("migrate", "--downgrade", "base", "--yes")
    after_down = tables(database_url)
    cli.ok("migrate")

    assert after_down <= {"alembic_version"}
    assert tables(database_url) >= TABLES
    assert revision(database_url) == HEAD
    assert db.counts(database_url) == (0, 0)
    cli.ok("create", "b1", *SOME_TIME, "--to", "console:a")
    assert db.counts(database_url) == (1, 4)


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    engine = make_engine(database_url, create_file=False)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()

    assert diff == []


def test_schema_revision_is_the_alembic_head() -> None:
    assert SCHEMA_REVISION == HEAD
    assert migrations.head_revision() == HEAD


def constraint_values(url: str, table: str) -> set[str]:
    with db.connect(url) as conn:
        checks = inspect(conn).get_check_constraints(table)
    [status] = [c for c in checks if c["name"] == f"ck_{table}_status"]
    return set(re.findall(r"'([a-z_]+)'", status["sqltext"]))


def test_status_enums_equal_the_check_constraints(database_url: str) -> None:
    assert constraint_values(database_url, "notifications") == {s.value for s in Status}
    assert constraint_values(database_url, "bookings") == {s.value for s in BookingStatus}


def test_run_counters_are_the_action_vocabulary(database_url: str) -> None:
    """dispatch_runs columns, RunReport counters and runs.Action are one vocabulary."""
    with db.connect(database_url) as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("dispatch_runs")}
    fixed = {"id", "host", "pid", "started_at", "finished_at", "exit_code"}
    report_counters = set(RunReport().counts())
    assert columns - fixed == set(RUN_COUNTERS) == report_counters
    assert set(RUN_COUNTERS) == {"claimed", *(a.value for a in Action)}


def _insert_old_booking(conn: Connection) -> None:
    """One booking, in the columns every schema since the first has."""
    t = "'2026-06-01 12:00:00'"
    conn.execute(
        text(
            "INSERT INTO bookings (external_id, title, starts_at, ends_at, timezone, "
            f"status, created_at, updated_at) VALUES ('b', 't', {t}, "
            f"'2026-06-01 13:00:00', 'UTC', 'active', {t}, {t})"
        )
    )


def test_history_outcomes_renamed_by_the_migration(database_url: str) -> None:
    """Rows written by the first schema speak the new words after an upgrade."""
    engine = make_engine(database_url, create_file=False)
    migrations.downgrade(engine, "0001")
    with db.connect(database_url) as conn:
        _insert_old_booking(conn)
        conn.execute(
            text(
                "INSERT INTO notifications (booking_id, kind, channel, recipient, "
                "scheduled_at, not_after, due_at, status, attempts, created_at, updated_at) "
                "SELECT id, 'at_start', 'console', 'a', starts_at, ends_at, starts_at, "
                "'pending', 0, starts_at, starts_at FROM bookings"
            )
        )
        for outcome in ("retry", "lease_expired", "sent"):
            conn.execute(
                text(
                    "INSERT INTO delivery_attempts (notification_id, started_at, "
                    "finished_at, outcome, uncertain) "
                    "SELECT id, due_at, due_at, :o, false FROM notifications"
                ),
                {"o": outcome},
            )
    migrations.upgrade(engine)
    engine.dispose()
    with db.connect(database_url) as conn:
        outcomes = conn.scalars(text("SELECT outcome FROM delivery_attempts ORDER BY id")).all()
    assert outcomes == ["retried", "rescued", "sent"]


def test_routes_migration_keeps_reminders_and_their_history(database_url: str) -> None:
    """0004 rebuilds notifications on SQLite: every row and every history row survive,
    each reminder becomes a chain of one, and the partial indexes are the same."""
    engine = make_engine(database_url, create_file=False)
    indexes_before = _notification_indexes(database_url)
    migrations.downgrade(engine, "0003")
    with db.connect(database_url) as conn:
        _insert_old_booking(conn)
        for recipient in ("123", "https://example.com/hook?a=1|2"):
            channel = "webhook" if recipient.startswith("https") else "telegram"
            conn.execute(
                text(
                    "INSERT INTO notifications (booking_id, kind, channel, recipient, "
                    "scheduled_at, not_after, due_at, status, attempts, created_at, "
                    "updated_at) SELECT id, 'at_start', :c, :r, starts_at, ends_at, starts_at, "
                    "'sent', 1, starts_at, starts_at FROM bookings"
                ),
                {"c": channel, "r": recipient},
            )
        conn.execute(
            text(
                "INSERT INTO delivery_attempts (notification_id, started_at, finished_at, "
                "outcome, uncertain) SELECT id, due_at, due_at, 'sent', false FROM notifications"
            )
        )
    migrations.upgrade(engine)
    engine.dispose()
    with db.connect(database_url) as conn:
        routes = conn.execute(
            text("SELECT recipient, route, alternative FROM notifications ORDER BY id")
        ).all()
        history = conn.scalar(text("SELECT count(*) FROM delivery_attempts"))
    assert [tuple(r) for r in routes] == [
        ("123", "telegram:123", 0),
        ("https://example.com/hook?a=1|2", "webhook:https://example.com/hook?a=1%7C2", 0),
    ]
    assert history == 2
    assert _notification_indexes(database_url) == indexes_before


def test_stat_hours_migration_counts_the_history_already_there(database_url: str) -> None:
    """0005 counts what the store holds into stats' hourly tables; stats reads the same."""
    engine = make_engine(database_url, create_file=False)
    migrations.downgrade(engine, "0004")
    with db.connect(database_url) as conn:
        _insert_old_booking(conn)
        for n, (status, reason) in enumerate(
            [("sent", None), ("sent", None), ("failed", None), ("expired", "superseded"),
             ("cancelled", None), ("pending", None)]
        ):  # fmt: skip
            conn.execute(
                text(
                    "INSERT INTO notifications (booking_id, kind, channel, recipient, route, "
                    "alternative, scheduled_at, not_after, due_at, status, reason, attempts, "
                    "sent_at, created_at, updated_at) SELECT id, 'at_start', 'telegram', :r, "
                    ":route, 0, starts_at, ends_at, starts_at, :s, :why, 1, "
                    "CASE WHEN :sent THEN ends_at END, starts_at, ends_at FROM bookings"
                ),
                {
                    "r": str(n),
                    "route": f"telegram:{n}",
                    "s": status,
                    "why": reason,
                    "sent": status == "sent",
                },
            )
        conn.execute(
            text(
                "INSERT INTO delivery_attempts (notification_id, started_at, finished_at, "
                "outcome, uncertain) SELECT id, due_at, due_at, 'retried', false "
                "FROM notifications WHERE status = 'failed'"
            )
        )
    migrations.upgrade(engine)
    assert stat_hours_drift(engine) == {}
    with db.connect(database_url) as conn:
        events = conn.execute(
            text("SELECT event, count, folded FROM stat_hours ORDER BY event")
        ).all()
        lateness = conn.execute(text("SELECT lateness_ms, count FROM lateness_hours")).all()
    engine.dispose()
    assert [tuple(r) for r in events] == [
        ("cancelled", 1, True),
        ("failed", 1, True),
        ("retried", 1, True),
        ("sent", 2, True),
        ("superseded", 1, True),
    ]
    assert [tuple(r) for r in lateness] == [(3_600_000, 2)]  # sent at the end: 1 h late


def _notification_indexes(url: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """Name, columns and (partial indexes) WHERE clause of each index on notifications."""
    with db.connect(url) as conn:
        found = inspect(conn).get_indexes("notifications")
    return sorted(
        (
            i["name"] or "",
            [str(c) for c in i["column_names"]],
            {k: str(v) for k, v in i.get("dialect_options", {}).items()},
        )
        for i in found
    )


# --- database errors: exit 4 and 3 -------------------------------------------------------------

COMMANDS_NEEDING_A_STORE = [
    pytest.param(["list"], id="list"),
    pytest.param(["list", "--summary"], id="summary"),
    pytest.param(["create", "b1", *SOME_TIME, "--to", "console:a"], id="create"),
    pytest.param(["cancel", "b1"], id="cancel"),
    pytest.param(["dispatch"], id="dispatch"),
]


@pytest.mark.parametrize("args", COMMANDS_NEEDING_A_STORE)
def test_commands_on_a_missing_database_ask_for_migrate(
    empty_database_url: str, args: list[str]
) -> None:
    result = Cli(empty_database_url)(*args)

    assert_clean_error(result, 4, contains="notifyctl migrate")
    assert not Path(empty_database_url.removeprefix("sqlite:///")).exists()


def test_commands_on_an_empty_database_file_ask_for_migrate(tmp_path: Path) -> None:
    path = tmp_path / "blank.db"
    path.touch()

    result = Cli(f"sqlite:///{path}")("list")

    assert_clean_error(result, 4, contains="notifyctl migrate")


def test_commands_on_a_downgraded_database_ask_for_migrate(cli: Cli, database_url: str) -> None:
    cli.ok("migrate", "--downgrade", "base", "--yes")

    with db.collecting_leaked_connections():
        result = cli("create", "b1", *SOME_TIME, "--to", "console:a")

    assert_clean_error(result, 4, contains="notifyctl migrate")
    assert tables(database_url) <= {"alembic_version"}


def test_commands_on_a_database_at_another_revision_ask_for_migrate(
    cli: Cli, database_url: str
) -> None:
    db.execute(database_url, text("UPDATE alembic_version SET version_num = '0000'"))

    with db.collecting_leaked_connections():
        result = cli("list")

    assert_clean_error(result, 4, contains="notifyctl migrate")
    assert "0000" in result.stderr


@pytest.mark.parametrize(
    "args",
    [*COMMANDS_NEEDING_A_STORE, pytest.param(["migrate"], id="migrate")],
)
def test_unreachable_postgresql_is_exit_4_without_traceback(args: list[str]) -> None:
    result = Cli(UNREACHABLE_PG)(*args)

    assert_clean_error(result, 4, contains="unavailable")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["list"], id="list"),
        pytest.param(["migrate"], id="migrate"),
        pytest.param(["migrate", "--sql"], id="migrate-sql"),
        pytest.param(["create", "b1", *SOME_TIME, "--to", "console:a"], id="create"),
    ],
)
@pytest.mark.parametrize("url", ["mysql://root:pw@localhost/notifyctl", "not a url"])
def test_unsupported_database_url_is_a_configuration_error(args: list[str], url: str) -> None:
    result = Cli(url)(*args)

    assert_clean_error(result, 3, contains="database URL")


@pytest.mark.parametrize(
    "args",
    [
        *COMMANDS_NEEDING_A_STORE,
        pytest.param(["migrate"], id="migrate"),
        pytest.param(["migrate", "--check"], id="migrate-check"),
        pytest.param(["migrate", "--sql"], id="migrate-sql"),
    ],
)
def test_database_password_never_appears_in_output(args: list[str]) -> None:
    via_env = Cli(SECRET_PG)(*args)
    via_option = Cli(SECRET_PG)(*args, "--database-url", SECRET_PG, NOTIFYCTL_DATABASE_URL=None)

    for result in (via_env, via_option):
        assert "s3cretpw" not in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr


# --- configuration precedence (a real process, so .env loading is exercised) ----------------------


def scrubbed_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFYCTL_", "TELEGRAM_")) and k != "DATABASE_URL"
    }
    env["HOME"] = str(tmp_path / "home")
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(REPO)
    return env


def notifyctl(
    *args: str, cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "notifyctl", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert result.returncode == 0, (result.stdout, result.stderr)
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory whose .env names a database; commands run from a subdirectory."""
    root = tmp_path / "project"
    (root / "sub").mkdir(parents=True)
    (root / ".env").write_text(
        f"NOTIFYCTL_DATABASE_URL=sqlite:///{tmp_path / 'dotenv.db'}\n"
        "NOTIFYCTL_TIMEZONE=Europe/Berlin\n"
    )
    return root / "sub"


def test_environment_overrides_dotenv(project: Path, tmp_path: Path) -> None:
    env = scrubbed_env(tmp_path) | {"NOTIFYCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}"}

    notifyctl("migrate", cwd=project, env=env)

    assert (tmp_path / "env.db").exists()
    assert not (tmp_path / "dotenv.db").exists()


def test_option_overrides_environment_and_dotenv(project: Path, tmp_path: Path) -> None:
    env = scrubbed_env(tmp_path) | {"NOTIFYCTL_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}"}

    notifyctl("migrate", "--database-url", f"sqlite:///{tmp_path / 'opt.db'}", cwd=project, env=env)

    assert (tmp_path / "opt.db").exists()
    assert not (tmp_path / "env.db").exists()
    assert not (tmp_path / "dotenv.db").exists()


def test_default_database_is_private_in_the_user_data_dir(tmp_path: Path) -> None:
    cli = Cli("unused")

    cli.ok("migrate", NOTIFYCTL_DATABASE_URL=None, XDG_DATA_HOME=str(tmp_path / "xdg"))

    path = tmp_path / "xdg" / "notifyctl" / "notifyctl.db"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert revision(f"sqlite:///{path}") == HEAD


def test_database_url_is_the_fallback_variable(tmp_path: Path) -> None:
    fallback, preferred = tmp_path / "fallback.db", tmp_path / "preferred.db"
    cli = Cli("unused")

    cli.ok("migrate", NOTIFYCTL_DATABASE_URL=None, DATABASE_URL=f"sqlite:///{fallback}")
    cli.ok(
        "migrate",
        NOTIFYCTL_DATABASE_URL=f"sqlite:///{preferred}",
        DATABASE_URL=f"sqlite:///{tmp_path / 'ignored.db'}",
    )

    assert revision(f"sqlite:///{fallback}") == HEAD
    assert revision(f"sqlite:///{preferred}") == HEAD
    assert not (tmp_path / "ignored.db").exists()


def test_password_from_the_environment_stays_secret_in_a_real_process(tmp_path: Path) -> None:
    env = scrubbed_env(tmp_path) | {"NOTIFYCTL_DATABASE_URL": SECRET_PG}

    failed = notifyctl("dispatch", "-v", cwd=tmp_path, env=env, check=False)

    assert failed.returncode == 4
    assert failed.stderr.startswith("error: ")
    assert "s3cretpw" not in failed.stdout + failed.stderr


def test_whole_path_in_a_real_process_with_settings_from_dotenv(
    project: Path, tmp_path: Path
) -> None:
    env = scrubbed_env(tmp_path)

    notifyctl("migrate", cwd=project, env=env)
    created = notifyctl(
        "create",
        "b1",
        "--starts-at",
        "2030-07-10 18:00",
        "--ends-at",
        "2030-07-10 19:00",
        "--to",
        "console:a",
        "--json",
        cwd=project,
        env=env,
    )
    listed = notifyctl("list", "--format", "json", cwd=project, env=env)

    assert json.loads(created.stdout)["action"] == "created"
    rows = json.loads(listed.stdout)
    assert [(r["booking_id"], r["status"]) for r in rows] == [("b1", "pending")] * 4
    assert rows[2]["kind"] == "at_start"
    assert rows[2]["scheduled_at"] == "2030-07-10T16:00:00Z"  # NOTIFYCTL_TIMEZONE from .env
    assert listed.stderr == ""
    # the database named in .env (found from a subdirectory), not the default one
    stored = db.booking(f"sqlite:///{tmp_path / 'dotenv.db'}", "b1")
    assert stored["timezone"] == "Europe/Berlin"
    assert not (tmp_path / "xdg" / "notifyctl").exists()


# --- help ----------------------------------------------------------------------------------------


def command_paths() -> list[tuple[str, ...]]:
    """Every registered command and sub-command, as argv prefixes."""
    paths: list[tuple[str, ...]] = []

    def walk(group: TyperGroup, prefix: tuple[str, ...]) -> None:
        for name, command in sorted(group.commands.items()):
            paths.append((*prefix, name))
            if isinstance(command, TyperGroup):
                walk(command, (*prefix, name))

    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    walk(root, ())
    return paths


def command_at(path: tuple[str, ...]) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_help_exits_0_and_shows_every_environment_variable(path: tuple[str, ...]) -> None:
    result = Cli("unused").ok(*path, "--help")

    flat = " ".join(result.stdout.split())
    assert f"Usage: notifyctl {' '.join(path)}" in flat
    for param in command_at(path).params:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
        for name in names:
            assert name in flat, f"--help of {' '.join(path)} does not show {name}"


def test_every_command_is_covered_by_the_help_test() -> None:
    names = {path[0] for path in command_paths()}

    assert {"create", "cancel", "list", "dispatch", "migrate"} <= names


def test_dotenv_parse_warning_is_one_warning_line_naming_the_file(
    project: Path, tmp_path: Path
) -> None:
    dotenv = project.parent / ".env"
    dotenv.write_text(dotenv.read_text() + "this is not a setting\n")

    result = notifyctl("migrate", cwd=project, env=scrubbed_env(tmp_path))

    assert result.stderr.splitlines() == [
        f"warning: {dotenv}: python-dotenv could not parse statement starting at line 3"
    ]
    assert (tmp_path / "dotenv.db").exists()  # the lines it could parse still apply
