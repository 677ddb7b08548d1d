"""Alembic environment: used by ``notifyctl migrate`` and by ``alembic`` in a checkout.

``notifyctl migrate`` hands over a connection (or, for ``--sql``, a URL) in
``config.attributes``; plain ``alembic upgrade head`` reads the URL from
NOTIFYCTL_DATABASE_URL / DATABASE_URL or the default SQLite file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from alembic import context
from sqlalchemy import Connection

from notifyctl.config import default_database_url
from notifyctl.db import make_engine, normalise_url
from notifyctl.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    return os.environ.get(
        "NOTIFYCTL_DATABASE_URL", os.environ.get("DATABASE_URL", default_database_url())
    )


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_offline() -> None:
    _configure(url=normalise_url(_url()), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    _configure(connection=connection)
    with _foreign_keys_off(connection), context.begin_transaction():
        context.run_migrations()


@contextlib.contextmanager
def _foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite changes a constraint by copying a table and dropping the old one: with
    foreign keys on, the drop would delete every row that references it (the history).

    The switch only works outside a transaction, hence the driver's own connection.
    """
    if connection.dialect.name != "sqlite" or connection.in_transaction():
        yield
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        _run_with(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
