"""Alembic driven from code, so ``notifyctl migrate`` works from a wheel.

The migration scripts ship inside the package as ``notifyctl.migrations``
(mapped from the top-level ``migrations/`` by pyproject); from a bare
checkout the top-level directory is used directly.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine

from .errors import CheckFailed, InvalidInput


def migrations_dir() -> Path:
    spec = importlib.util.find_spec("notifyctl.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str | None = None, stdout: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=stdout) if stdout is not None else Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.attributes["url"] = url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
    return current


@dataclass(frozen=True)
class MigrateResult:
    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _run(action: str, engine: Engine, revision: str) -> MigrateResult:
    before = current_revision(engine)
    config = alembic_config()
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        try:
            getattr(command, action)(config, revision)
        except CommandError as e:
            conn.rollback()
            raise InvalidInput(f"cannot {action} to {revision!r}: {e}") from e
        conn.commit()
    return MigrateResult(before, current_revision(engine))


def upgrade(engine: Engine, revision: str = "head") -> MigrateResult:
    return _run("upgrade", engine, revision)


def downgrade(engine: Engine, revision: str) -> MigrateResult:
    return _run("downgrade", engine, revision)


def check(engine: Engine) -> str:
    """Raise ``CheckFailed`` (exit 1) when the database is behind head."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise CheckFailed(f"database is at {current or 'an empty schema'}, head is {head}")
    return head


def sql(url: str, revision: str, *, down: bool = False) -> str:
    """The SQL that upgrade to ``revision`` (or downgrade from head to it) would run."""
    buffer = io.StringIO()
    config = alembic_config(url, buffer)
    try:
        if down:  # offline, Alembic needs where to start: the SQL from head down to the target
            command.downgrade(config, f"head:{revision}", sql=True)
        else:
            command.upgrade(config, revision, sql=True)
    except CommandError as e:
        what = "a downgrade to" if down else "an upgrade to"
        raise InvalidInput(f"cannot render the SQL of {what} {revision!r}: {e}") from e
    return buffer.getvalue()
