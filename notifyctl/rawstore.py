"""The store through the plain driver (``sqlite3`` / ``psycopg``), without SQLAlchemy.

Only for the idle dispatch run (``runs.quick_idle_run``): most cron runs find
nothing to do, and loading SQLAlchemy costs more than the whole question.
What the engine of ``db`` and this module share lives here, so that both
connect alike: the schema revision the code expects and SQLite's connection
settings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: the Alembic head this code expects; commands check it without importing Alembic
SCHEMA_REVISION = "0005"

SQLITE_BUSY_TIMEOUT_MS = 10_000
#: connect timeout of PostgreSQL connections, in seconds
PG_CONNECT_TIMEOUT = 10
#: how SQLAlchemy stores a UTC ``DateTime`` on SQLite (fixed width: text order is time order)
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def sqlite_pragmas(read_only: bool) -> list[str]:
    """The settings of every SQLite connection (a read-only one cannot switch to WAL)."""
    return [
        f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}",
        *([] if read_only else ["PRAGMA journal_mode = WAL"]),
        "PRAGMA synchronous = NORMAL",
        "PRAGMA foreign_keys = ON",
    ]


def plain_target(database_url: str) -> tuple[str, str] | None:
    """``("sqlite", path)`` or ``("postgresql", libpq URI)``; None when the URL is unusual.

    Only plain forms are taken (an existing SQLite file without URL options);
    anything else goes through SQLAlchemy, which owns the full URL grammar.
    """
    for scheme in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(scheme):
            return "postgresql", "postgresql://" + database_url.removeprefix(scheme)
    if database_url.startswith(("sqlite:///", "sqlite+pysqlite:///")):
        database = database_url.split(":///", 1)[1]
        if not database or re.search(r"[?%]", database) or database.startswith(("file:", ":")):
            return None
        path = Path(database).expanduser()
        return ("sqlite", str(path.absolute())) if path.is_file() else None
    return None


def connect_sqlite(path: str) -> Any:
    """A connection to an existing SQLite file (never creates one), as ``db`` sets it up."""
    import sqlite3
    from urllib.parse import quote

    conn = sqlite3.connect(
        f"file:{quote(path)}?mode=rw",
        uri=True,
        timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,  # BEGIN is ours, as in db
    )
    for pragma in sqlite_pragmas(read_only=False):
        conn.execute(pragma)
    return conn


def connect_postgresql(uri: str) -> Any:
    import psycopg

    return psycopg.connect(uri, connect_timeout=PG_CONNECT_TIMEOUT)


def pg_params(sql: str) -> str:
    """``:name`` placeholders (SQLAlchemy ``text``, sqlite3) as psycopg's ``%(name)s``."""
    return re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)
