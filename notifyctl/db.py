"""Engine factory and dialect quirks.

SQLite: WAL, a busy timeout, foreign keys on, and SQLAlchemy (not pysqlite)
in charge of BEGIN, so that write transactions start with ``BEGIN
IMMEDIATE`` and two dispatchers can never both read the same due rows before
either writes. Read-only work passes ``execution_options(readonly=True)``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Dialect,
    Engine,
    TypeDecorator,
    create_engine,
    event,
    exc,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL

from . import rawstore
from .config import redact_url
from .errors import ConfigError, DatabaseError, InvalidInput, SchemaNotCurrent
from .rawstore import PG_CONNECT_TIMEOUT, sqlite_pragmas
from .rawstore import SCHEMA_REVISION as SCHEMA_REVISION
from .times import Clock, utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC; returns aware UTC datetimes (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    # SQLite stores text: format and parse it directly, in the exact format of
    # SQLAlchemy's own SQLite DATETIME ("2026-06-01 12:00:00.000000", fixed width,
    # so text order is time order). Bulk inserts bind hundreds of thousands of
    # these; the generic chain (astimezone, replace, strftime) tripled their cost.

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_text(value: datetime | None) -> str | None:
            return None if value is None else _sqlite_text(value)

        return to_text

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def from_text(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)

        return from_text


@lru_cache(maxsize=4096)  # a bulk create repeats the same few times on every row
def _sqlite_text(value: datetime) -> str:
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("naive datetime given to a UTC column")
    if offset:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def normalise_url(raw: str) -> URL:
    """Parse a database URL; ``postgresql://`` always means psycopg 3."""
    try:
        url = make_url(raw)
    except exc.ArgumentError as e:
        raise ConfigError(f"invalid database URL {redact_url(raw)!r}") from e
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        return url.set(drivername="sqlite")
    raise ConfigError(
        f"unsupported database URL scheme {url.drivername!r}: use sqlite:/// or postgresql://"
    )


def ensure_private_sqlite_file(path: Path) -> None:
    """Create the SQLite file 0600 in a 0700 directory: it holds chat ids and addresses."""
    if path.exists():
        return
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        for directory in reversed(missing):
            directory.mkdir(mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as e:
        raise DatabaseError(f"cannot create database file {path}: {e.strerror}") from e


def _no_wal_possible(path: Path) -> bool:
    """No ``-shm`` beside the file, and its directory is not writable (a backup, a mount)."""
    shm = path.with_name(path.name + "-shm")
    return not shm.exists() and not os.access(path.parent, os.W_OK)


def make_engine(raw_url: str, *, create_file: bool = True, read_only: bool = False) -> Engine:
    """An engine for ``raw_url``; ``read_only`` opens a SQLite file read-only (``mode=ro``),
    so commands that only read work on a store they cannot write (a backup, another user's)."""
    url = normalise_url(raw_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, create_file=create_file and not read_only, read_only=read_only)
    return create_engine(
        url, hide_parameters=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT}
    )


def _sqlite_engine(url: URL, *, create_file: bool, read_only: bool = False) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database).expanduser()
        if create_file:
            ensure_private_sqlite_file(path)
        elif not path.exists():
            raise SchemaNotCurrent(f"database file {path} does not exist: run `notifyctl migrate`")
        url = url.set(database=str(path))
        if read_only:
            from urllib.parse import quote

            uri = f"file:{quote(str(path.absolute()))}"
            query = {**url.query, "mode": "ro", "uri": "true"}
            if _no_wal_possible(path):
                # nobody has the store open in WAL mode (no -shm) and nobody can (read-only
                # directory): SQLite may read it as a file that cannot change
                query["immutable"] = "1"
            url = url.set(database=uri, query=query)
    engine = create_engine(
        url, hide_parameters=True, connect_args={"timeout": rawstore.SQLITE_BUSY_TIMEOUT_MS / 1000}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas(read_only):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = read_only or conn.get_execution_options().get("readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn driver errors that a user can cause into exit-4 errors."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError) as e:
        reason = str(e.orig).strip().splitlines()[0] if e.orig else str(e)
        raise DatabaseError(f"database {redact_url(url)} is unavailable: {reason}") from e
    except exc.DataError as e:  # a value the column cannot hold: bad input, not a bug
        reason = str(e.orig).strip().splitlines()[0] if e.orig else "invalid value"
        raise InvalidInput(f"the database rejected a value: {reason}") from e
    except exc.ProgrammingError as e:
        if "does not exist" in str(e.orig) or "no such table" in str(e.orig):
            raise SchemaNotCurrent(
                f"database {redact_url(url)} is not initialised: run `notifyctl migrate`"
            ) from e
        raise


def check_schema(engine: Engine, expected: str) -> None:
    """Exit 4 unless the database is migrated to exactly ``expected``."""
    url = engine.url.render_as_string(hide_password=True)
    with engine.connect().execution_options(readonly=True) as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except (exc.OperationalError, exc.ProgrammingError) as e:
            if "alembic_version" not in str(e.orig):
                raise
            row = None
        conn.rollback()
    if row is None:
        raise SchemaNotCurrent(f"database {url} is not initialised: run `notifyctl migrate`")
    if row[0] != expected:
        raise SchemaNotCurrent(
            f"database {url} is at schema {row[0]}, this notifyctl needs {expected}: "
            "run `notifyctl migrate`"
        )


@dataclass
class Store:
    """An open store: the engine plus the clock every use case reads."""

    engine: Engine
    clock: Clock = utcnow
    _writer: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._write_turn(), translate_errors(self.url), self.engine.begin() as conn:
            yield conn

    def _write_turn(self) -> AbstractContextManager[object]:
        """SQLite: the threads of one process take turns to write.

        SQLite has one writer at a time anyway (``BEGIN IMMEDIATE``); a thread
        finding the write lock taken polls it from SQLite's busy handler, which
        sleeps 1-100 ms between tries. Queued on a lock, the next writer starts
        the moment the last one commits (a dispatch run records, claims and
        reserves send slots from several threads). Other processes still meet
        the busy timeout.
        """
        if self.engine.dialect.name == "sqlite":
            return self._writer
        return nullcontext()

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        with (
            translate_errors(self.url),
            self.engine.connect().execution_options(readonly=True) as conn,
        ):
            try:
                yield conn
            finally:
                conn.rollback()

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()


def open_store(
    database_url: str, *, clock: Clock = utcnow, check: bool = True, read_only: bool = False
) -> Store:
    """Connect to a migrated store; exit-4 errors when unreachable or not at head.

    ``read_only``: for commands that only read (``list``, ``stats``, previews).
    """
    engine = make_engine(database_url, create_file=False, read_only=read_only)
    if check:
        try:
            with translate_errors(database_url):
                check_schema(engine, SCHEMA_REVISION)
        except BaseException:
            engine.dispose()
            raise
    return Store(engine, clock)
