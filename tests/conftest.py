"""Shared fixtures: a migrated store on SQLite and on the real PostgreSQL, a clock, the CLI.

PostgreSQL is required: tests fail (never skip) when it cannot be reached.
Each test session migrates one template database; every test gets a fresh
copy of it (``CREATE DATABASE … TEMPLATE``) and drops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from notifyctl.db import make_engine
from notifyctl.migrate import upgrade
from notifyctl.service import Store
from tests.support import Cli, FrozenClock

PG_ADMIN_URL = os.environ.get("NOTIFYCTL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# Tests must never pick up the developer's own configuration (test knobs such as
# NOTIFYCTL_TEST_PG and NOTIFYCTL_MODEL_EXAMPLES are kept).
for _name in list(os.environ):
    scrub = _name.startswith(("NOTIFYCTL_", "TELEGRAM_")) or _name == "DATABASE_URL"
    if scrub and _name != "NOTIFYCTL_TEST_PG" and not _name.startswith("NOTIFYCTL_MODEL_"):
        del os.environ[_name]


def _pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def _admin(sql: str) -> None:
    with psycopg.connect(
        PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql"), autocommit=True
    ) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database used as the template of every test database."""
    name = f"notifyctl_tpl_{uuid.uuid4().hex[:8]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as e:  # fail, never skip
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_URL}: {e}")
    engine = make_engine(_pg_url(name))
    upgrade(engine)
    engine.dispose()
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A fresh, migrated store on each dialect."""
    if request.param == "sqlite":
        path = tmp_path / "notifyctl.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("pg_template")
    name = f"notifyctl_t_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield _pg_url(name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(tmp_path: Path) -> str:
    """An unmigrated store (a SQLite file that does not exist yet)."""
    return f"sqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def store(database_url: str, clock: FrozenClock) -> Iterator[Store]:
    store = Store(make_engine(database_url, create_file=False), clock)
    yield store
    store.close()


@pytest.fixture
def cli(database_url: str) -> Cli:
    return Cli(database_url)
