"""Every statement notifyctl runs, named, with the dialect branches side by side.

Functions take an open ``Connection`` (the caller owns the transaction) and
``now`` from the injected clock; none reads a clock or commits. Writes that
move a row out of ``sending`` are fenced by status and lease token and say
whether they won.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    JSON,
    ColumnElement,
    Connection,
    Float,
    Integer,
    Interval,
    Select,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    extract,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.orm import aliased

from .db import UTCDateTime
from .kinds import CANCELLED as CANCELLED_NOTICE
from .kinds import NOTICE_KINDS
from .models import (
    FINAL_STATUSES,
    Booking,
    ChatMove,
    DeliveryAttempt,
    DispatchRun,
    LatenessHour,
    Notification,
    Pacing,
    Reason,
    Recipient,
    RecipientState,
    StatHour,
    Status,
)
from .runs import RUN_COUNTERS, Action

N = Notification
B = Booking
CHUNK = 500


# --- what reads return: values, not live rows ----------------------------------------


@dataclass(frozen=True, slots=True)
class BookingRow:
    """A booking as stored."""

    id: int
    external_id: str
    title: str
    starts_at: datetime
    ends_at: datetime
    timezone: str
    locale: str | None
    data: dict[str, Any] | None
    status: str
    created_at: datetime
    updated_at: datetime
    cancel_reason: str | None  # cancel --reason, shown in the cancel notice


@dataclass(frozen=True, slots=True)
class DueReminder:
    """What a run needs of a reminder it claims (or previews)."""

    id: int
    booking_id: int
    kind: str
    channel: str
    recipient: str
    scheduled_at: datetime
    not_after: datetime
    due_at: datetime
    attempts: int
    previous_starts_at: datetime | None  # a change notice's "was" (None for reminders)
    previous_ends_at: datetime | None
    route: str  # its chain of alternatives (routes.py); channel/recipient: the one in use
    alternative: int  # position of the one in use in the chain (0: the first)


@dataclass(frozen=True, slots=True)
class ReminderRow(DueReminder):
    """A reminder as stored."""

    status: str
    last_error: str | None
    lease_token: str | None
    lease_expires_at: datetime | None
    sent_at: datetime | None
    provider_message_id: str | None
    reason: str | None
    created_at: datetime
    updated_at: datetime
    corrects: list[dict[str, Any]] | None  # a notice's messages to correct in place
    sent_text: str | None  # the text as delivered (Telegram)


class ListedReminder(NamedTuple):
    """One line of ``list``: a reminder with its booking's id."""

    id: int
    booking_id: str
    kind: str
    channel: str
    recipient: str
    status: str
    scheduled_at: datetime
    not_after: datetime
    due_at: datetime
    attempts: int
    last_error: str | None
    sent_at: datetime | None
    route: str
    alternative: int  # 1 = the first alternative of the route


@dataclass(frozen=True, slots=True)
class RunRow:
    """A dispatch run as stored, its counters by ``runs.Action`` name."""

    id: int
    host: str
    pid: int
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    counts: dict[str, int]


def _columns(model: Any, row_type: Any) -> tuple[Any, ...]:
    """The model's columns named like the fields of ``row_type``, in its order."""
    return tuple(getattr(model, f.name) for f in dataclasses.fields(row_type))


BOOKING_COLUMNS = _columns(B, BookingRow)
REMINDER_COLUMNS = _columns(N, ReminderRow)


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- bookings: create / cancel -------------------------------------------------------


def _locked(stmt: Any, conn: Connection, lock: bool) -> Any:
    """``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already holds the write lock."""
    return stmt.with_for_update() if lock and conn.dialect.name == "postgresql" else stmt


def load_bookings(
    conn: Connection, external_ids: Sequence[str], *, lock: bool = False
) -> dict[str, BookingRow]:
    """Existing bookings by the caller's id (``lock``: held until the transaction ends)."""
    if not external_ids:
        return {}
    stmt = select(*BOOKING_COLUMNS).where(_one_of(conn, B.external_id, external_ids))
    rows = conn.execute(_locked(stmt.order_by(B.id), conn, lock))
    return {row.external_id: BookingRow(*row) for row in rows}


def load_notifications(
    conn: Connection, booking_ids: Sequence[int], *, lock: bool = False
) -> dict[int, list[ReminderRow]]:
    """Every reminder of the given bookings, grouped by booking.

    With ``lock`` no dispatcher can claim them (its ``SKIP LOCKED`` passes them
    over) until the caller's transaction ends: what create read is what it writes.
    """
    grouped: dict[int, list[ReminderRow]] = {b: [] for b in booking_ids}
    if not booking_ids:
        return grouped
    stmt = select(*REMINDER_COLUMNS).where(_one_of(conn, N.booking_id, booking_ids))
    for row in conn.execute(_locked(stmt.order_by(N.id), conn, lock)):
        grouped[row.booking_id].append(ReminderRow(*row))
    return grouped


def _one_of(conn: Connection, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column`` is one of ``values``, all bound as one parameter however many they are.

    A file of 100k bookings took 200 statements of 500 parameters each, and
    rendering them cost seconds: PostgreSQL takes an array (``= ANY``), SQLite a
    JSON array it reads with ``json_each``. Both search the column's index.
    """
    among: ColumnElement[bool]
    if conn.dialect.name == "postgresql":
        among = column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    else:
        each = func.json_each(bindparam(None, json.dumps(list(values)))).table_valued("value")
        among = column.in_(select(each.c.value))
    return among


def insert_bookings(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert bookings; their new ids, in the order given.

    The rows go to the driver in bulk (PostgreSQL: COPY with ids drawn from the
    sequence; SQLite: one executemany), each value through its column type once.
    """
    if not rows:
        return []
    bulk = _bulk_bookings(conn, rows)
    if bulk is None:
        result = conn.execute(insert(B).returning(B.id, sort_by_parameter_order=True), list(rows))
        return [r.id for r in result]
    columns, values = bulk
    if conn.dialect.name == "postgresql":
        drawn = conn.exec_driver_sql(
            "SELECT nextval(pg_get_serial_sequence('bookings', 'id')) "
            "FROM generate_series(1, %(n)s)",
            {"n": len(rows)},
        )
        ids = sorted(int(i) for i in drawn.scalars())
        numbered = ((booking_id, *row) for booking_id, row in zip(ids, values, strict=True))
        _copy_rows(conn, B.__tablename__, ["id", *columns], numbered)
        return ids
    return _insert_bookings_sqlite(conn, rows, columns, values)


def _insert_bookings_sqlite(
    conn: Connection,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    values: Iterable[tuple[Any, ...]],
) -> list[int]:
    """One executemany; the new ids read back by external id.

    Every id above the largest before the insert is one of these rows: the
    transaction holds SQLite's write lock (``BEGIN IMMEDIATE``) throughout.
    """
    before = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM bookings").scalar_one()
    _executemany(conn, B.__tablename__, columns, values)
    added = conn.exec_driver_sql("SELECT external_id, id FROM bookings WHERE id > ?", (before,))
    new = {external_id: booking_id for external_id, booking_id in added}
    return [new[row["external_id"]] for row in rows]


def _bulk_bookings(
    conn: Connection, rows: Sequence[Mapping[str, Any]]
) -> tuple[list[str], Iterator[tuple[Any, ...]]] | None:
    """The columns and bound values of new bookings, for COPY or executemany.

    The columns are those of the first row, plus the model's scalar defaults for the
    others (what ``insert(B)`` would add); None when another kind of default is
    missing, and the caller inserts as usual.
    """
    table = B.__table__
    given = [c for c in rows[0] if c != "id"]
    defaults: dict[str, Any] = {}
    for column in table.columns:
        if column.name == "id" or column.name in given or column.default is None:
            continue
        if not column.default.is_scalar:
            return None
        defaults[column.name] = column.default.arg
    columns = [*given, *defaults]
    extra = tuple(defaults.values())
    values = _bound(
        ((*(row[c] for c in given), *extra) for row in rows), _binders(table, columns, conn.dialect)
    )
    return columns, values


BOOKING_FIELDS = (
    "title",
    "starts_at",
    "ends_at",
    "timezone",
    "locale",
    "data",
    "status",
    "cancel_reason",
)


def update_bookings(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite the mutable fields of existing bookings (rows carry ``b_id``)."""
    if not rows:
        return
    values: dict[str, Any] = {f: bindparam(f) for f in (*BOOKING_FIELDS, "updated_at")}
    conn.execute(update(B).where(B.id == bindparam("b_id")).values(values), list(rows))


class NewReminder(NamedTuple):
    """A new reminder's values (``NEW_REMINDER_COLUMNS`` after ``booking_id``)."""

    kind: str
    channel: str
    recipient: str
    route: str
    alternative: int
    scheduled_at: datetime
    not_after: datetime
    due_at: datetime
    status: str
    attempts: int
    created_at: datetime
    updated_at: datetime


NEW_REMINDER_COLUMNS = ("booking_id", *NewReminder._fields)


def insert_notifications(conn: Connection, rows: Sequence[tuple[int, NewReminder]]) -> None:
    """Bulk insert of new reminders, each given as (booking id, its values).

    ``create --from-file`` writes hundreds of thousands of these: the rows go to
    the driver as tuples (COPY on PostgreSQL, executemany on SQLite), only the
    values whose column type has a bind processor (the times) put through it,
    instead of SQLAlchemy's per-row parameter construction, which cost more than
    the insert itself.
    """
    if not rows:
        return
    binders = _binders(N.__table__, NEW_REMINDER_COLUMNS, conn.dialect)
    values = _bound(((booking_id, *reminder) for booking_id, reminder in rows), binders)
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, N.__tablename__, NEW_REMINDER_COLUMNS, values)
        return
    _executemany(conn, N.__tablename__, NEW_REMINDER_COLUMNS, values)


#: a column's position in a row, its bind processor, and the values it already bound
#: (None for JSON, whose values are not hashable)
_Binder = tuple[int, Callable[[Any], Any], dict[Any, Any] | None]


def _binders(table: Any, columns: Sequence[str], dialect: Any) -> list[_Binder]:
    """The columns among ``columns`` whose type has a bind processor (the rest bind as is)."""
    binders: list[_Binder] = []
    for position, name in enumerate(columns):
        type_ = table.c[name].type
        process = _bulk_processor(type_, dialect)
        if process is not None:
            binders.append((position, process, None if isinstance(type_, JSON) else {}))
    return binders


def _bound(
    rows: Iterable[tuple[Any, ...]], binders: Sequence[_Binder]
) -> Iterator[tuple[Any, ...]]:
    """Each row with its values bound by the binders' processors.

    Rows share many values (every row of a create has the same ``now``, a booking's
    reminders its start and end): each distinct value is processed once.
    """
    for row in rows:
        values = list(row)
        for position, process, done in binders:
            value = values[position]
            if done is None:
                values[position] = process(value)
            elif value in done:
                values[position] = done[value]
            else:
                values[position] = done[value] = process(value)
        yield tuple(values)


def _executemany(
    conn: Connection, table: str, columns: Sequence[str], values: Iterable[Sequence[Any]]
) -> None:
    """``INSERT INTO table (columns)`` of bound value tuples, one driver executemany."""
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    markers = ", ".join([marker] * len(columns))
    conn.exec_driver_sql(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({markers})", list(values)
    )


def _bulk_processor(type_: Any, dialect: Any) -> Any:
    """A column's bind processor for COPY and executemany: JSON as its text, None as ``null``.

    (An INSERT lets the driver adapt JSON values and writes None as ``null``
    unless the type says ``none_as_null``; COPY takes the text.)
    """
    if isinstance(type_, JSON):
        dumps = getattr(dialect, "_json_serializer", None) or json.dumps
        keep_null = type_.none_as_null
        return lambda value: None if value is None and keep_null else dumps(value)
    return type_.bind_processor(dialect)


def _copy_rows(
    conn: Connection, table: str, columns: Sequence[str], values: Iterable[Sequence[Any]]
) -> None:
    """PostgreSQL: ``COPY table (columns) FROM STDIN`` on the connection's own transaction.

    A driver error comes back as SQLAlchemy's, exactly as from an INSERT, so the
    caller's error handling (and the transaction's rollback) is the same; it
    never quotes a row's values.
    """
    import psycopg
    from sqlalchemy.exc import DBAPIError

    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    raw: Any = conn.connection.driver_connection
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row in values:
                copy.write_row(row)
    except psycopg.Error as e:
        # COPY's error context quotes the refused row (a recipient): keep only the
        # primary message, as an INSERT's error with hidden parameters would show
        message = e.diag.message_primary or str(e).splitlines()[0]
        bare = type(e)(message)
        raise DBAPIError.instance(sql, None, bare, psycopg.Error, hide_parameters=True) from None


def insert_notices(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """New change notices (a few per create or cancel: no bulk path needed)."""
    if rows:
        conn.execute(insert(N), list(rows))


def update_notices(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite change notices (rows carry ``n_id``), one statement per shape of row.

    The rows were read under lock by the caller, so each update matches.
    """
    shapes: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        shapes.setdefault(tuple(sorted(k for k in row if k != "n_id")), []).append(row)
    for fields, same in shapes.items():
        values: dict[str, Any] = {f: bindparam(f) for f in fields}
        conn.execute(update(N).where(N.id == bindparam("n_id")).values(values), same)


REARM_FIELDS = (
    "channel",
    "recipient",
    "alternative",
    "scheduled_at",
    "not_after",
    "due_at",
    "status",
    "attempts",
    "last_error",
    "reason",
    "sent_at",
    "provider_message_id",
    "updated_at",
)


def rearm_notifications(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Pending again at new times (rows carry ``n_id``), whoever holds them.

    A lease is revoked: the dispatch sending one right now loses its fenced
    write (its attempt still goes to the history) and the newer schedule wins.
    The rows were read under lock by the caller, so each update matches.
    """
    if not rows:
        return
    values: dict[str, Any] = {f: bindparam(f) for f in REARM_FIELDS}
    stmt = (
        update(N)
        .where(N.id == bindparam("n_id"))
        .values({**values, "lease_token": None, "lease_expires_at": None})
    )
    conn.execute(stmt, list(rows))


def finish_unsent(
    conn: Connection,
    ids: Sequence[int],
    status: Status,
    reason: Reason,
    detail: str,
    now: datetime,
) -> int:
    """Pending or sending reminders → ``status``; a dispatch holding one then records nothing."""
    count = 0
    for part in chunks(ids):
        result = conn.execute(
            update(N)
            .where(N.id.in_(part), N.status.in_([Status.PENDING, Status.SENDING]))
            .values(
                status=status,
                reason=reason,
                last_error=detail,
                lease_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )
        count += result.rowcount
    return count


def cancel_booking_rows(conn: Connection, booking_ids: Sequence[int], now: datetime) -> int:
    """Bookings → cancelled; their pending and sending reminders too. Returns reminders.

    A cancel notice (kind ``cancelled``) is what a cancel sends: it stays, so a
    repeated cancel never withdraws the notice of the first.
    """
    count = 0
    for part in chunks(booking_ids):
        conn.execute(
            update(B)
            .where(B.id.in_(part), B.status != "cancelled")
            .values(status="cancelled", updated_at=now)
        )
        result = conn.execute(
            update(N)
            .where(
                N.booking_id.in_(part),
                N.status.in_([Status.PENDING, Status.SENDING]),
                N.kind != CANCELLED_NOTICE,
            )
            .values(
                status=Status.CANCELLED,
                reason=Reason.BOOKING_CANCELLED,
                last_error="booking cancelled",
                lease_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )
        count += result.rowcount
    return count


def set_cancel_reason(conn: Connection, booking_ids: Sequence[int], reason: str) -> None:
    """Keep ``cancel --reason`` on the bookings: their cancel notices show it."""
    for part in chunks(booking_ids):
        conn.execute(update(B).where(B.id.in_(part)).values(cancel_reason=reason))


def existing_notification_ids(conn: Connection, ids: Sequence[int]) -> set[int]:
    found: set[int] = set()
    for part in chunks(ids):
        found.update(conn.scalars(select(N.id).where(N.id.in_(part))))
    return found


# --- list / summary ---------------------------------------------------------------------


@dataclass(frozen=True)
class ListFilter:
    statuses: tuple[str, ...] = (Status.PENDING, Status.FAILED)
    booking_id: str | None = None
    kind: str | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    limit: int | None = None


_LISTED_AS = {"booking_id": B.external_id, "alternative": N.alternative + 1}
LIST_COLUMNS = tuple(
    _LISTED_AS[name].label(name) if name in _LISTED_AS else getattr(N, name)
    for name in ListedReminder._fields
)


def list_notifications(conn: Connection, where: ListFilter) -> Iterator[ListedReminder]:
    """Reminders matching the filter, soonest due first, streamed."""
    stmt = select(*LIST_COLUMNS).join(B, B.id == N.booking_id)
    if where.statuses:
        stmt = stmt.where(N.status.in_(where.statuses))
    if where.booking_id is not None:
        stmt = stmt.where(B.external_id == where.booking_id)
    if where.kind is not None:
        stmt = stmt.where(N.kind == where.kind)
    if where.due_before is not None:
        stmt = stmt.where(N.due_at < where.due_before)
    if where.due_after is not None:
        stmt = stmt.where(N.due_at >= where.due_after)
    stmt = stmt.order_by(N.due_at, N.id)
    if where.limit:
        stmt = stmt.limit(where.limit)
    for row in conn.execution_options(yield_per=1000).execute(stmt):
        yield ListedReminder(*row)


def oldest_due(conn: Connection, now: datetime) -> datetime | None:
    """The oldest ``due_at`` among pending reminders already due (via the due index)."""
    return conn.scalar(
        select(N.due_at)
        .where(N.status == Status.PENDING, N.due_at <= now)
        .order_by(N.due_at, N.id)
        .limit(1)
    )


def count_due(conn: Connection, now: datetime) -> int:
    return conn.scalar(select(func.count()).where(N.status == Status.PENDING, N.due_at <= now)) or 0


# --- dispatch: expire / rescue / claim / record ----------------------------------------


def expire_useless(conn: Connection, now: datetime) -> int:
    """Pending reminders past ``not_after`` → expired; they are never sent."""
    result = conn.execute(
        update(N)
        .where(N.status == Status.PENDING, N.not_after <= now)
        .values(
            status=Status.EXPIRED,
            reason=Reason.TOO_LATE,
            last_error="expired: not sent before it stopped being useful",
            updated_at=now,
        )
    )
    return result.rowcount


def _superseded(now: datetime | ColumnElement[datetime]) -> Any:
    """A later reminder of the same booking and recipient (or chain) is due or already sent.

    Change notices are neither superseded nor supersede: each tells something new.
    """
    later = aliased(N)
    return N.kind.not_in(NOTICE_KINDS) & exists().where(
        later.kind.not_in(NOTICE_KINDS),
        later.booking_id == N.booking_id,
        later.route == N.route,  # the same recipient, or chain, whichever alternative
        later.scheduled_at > N.scheduled_at,
        or_(
            later.status == Status.SENT,
            and_(later.status.in_([Status.PENDING, Status.SENDING]), later.due_at <= now),
        ),
    )


def superseded_among(conn: Connection, ids: Sequence[int], now: datetime) -> set[int]:
    """Those of the given (just claimed) reminders that a later one supersedes now.

    ``expire_superseded`` runs once per run; a reschedule during the run can
    re-arm several reminders of one booking at once, so each claimed batch is
    checked too (by id and booking: a few index lookups).
    """
    found: set[int] = set()
    for part in chunks(ids):
        found.update(conn.scalars(_superseded_ids(), {"ids": list(part), "now": now}))
    return found


@cache
def _superseded_ids() -> Select[int]:
    """Built once, like the other statements a dispatch run repeats per batch.

    Building a SQLAlchemy statement (``aliased``, operators, cache key) cost more
    CPU than running it: per batch, for the hot statements, it was ~5 % of a
    run's CPU against a fast provider (benchmarks/README.md).
    """
    now = bindparam("now", type_=N.due_at.type)
    return select(N.id).where(N.id.in_(bindparam("ids", expanding=True)), _superseded(now))


def expire_superseded(conn: Connection, now: datetime) -> int:
    """Due reminders superseded by a later one → expired: only the latest is sent."""
    result = conn.execute(
        update(N)
        .where(N.status == Status.PENDING, N.due_at <= now, _superseded(now))
        .values(
            status=Status.EXPIRED,
            reason=Reason.SUPERSEDED,
            last_error="superseded by a later reminder for the same booking",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


@dataclass(frozen=True)
class Rescued:
    requeued: list[int]
    failed: list[int]
    spent_chains: list[int]  # requeued on their last attempt: the chain's next alternative


def _chain_goes_on() -> ColumnElement[bool]:
    """The reminder's route has an alternative after the one in use."""
    separators = func.length(N.route) - func.length(func.replace(N.route, "|", ""))
    return N.alternative < separators


def rescue_expired_leases(conn: Connection, now: datetime, max_attempts: int) -> Rescued:
    """``sending`` rows whose lease ran out (a crashed run) → pending, or failed if spent.

    Each gets a ``rescued`` attempt, marked uncertain: the run may have sent it.
    A spent one whose chain goes on is requeued and listed in ``spent_chains``:
    the caller moves it to the next alternative.
    """
    lost = and_(N.status == Status.SENDING, N.lease_expires_at <= now)
    spent = N.attempts >= max_attempts
    cleared = {"lease_token": None, "lease_expires_at": None, "updated_at": now}
    failed = conn.scalars(
        update(N)
        .where(lost, spent, ~_chain_goes_on())
        .values(
            status=Status.FAILED,
            reason=Reason.GAVE_UP,
            last_error="lease expired on the last attempt",
            **cleared,
        )
        .returning(N.id)
    ).all()
    spent_chains = conn.scalars(select(N.id).where(lost, spent)).all()
    requeued = conn.scalars(
        update(N)
        .where(lost)
        .values(
            status=Status.PENDING,
            due_at=now,
            last_error="lease expired: the dispatch that held it stopped",
            **cleared,
        )
        .returning(N.id)
    ).all()
    insert_attempts(
        conn,
        [
            {
                "notification_id": notification_id,
                "run_id": None,
                "started_at": now,
                "finished_at": now,
                "outcome": Action.RESCUED,
                "http_status": None,
                "error": "lease expired: the dispatch holding it stopped (it may have sent it)",
                "uncertain": True,
            }
            for notification_id in (*requeued, *failed)
        ],
    )
    return Rescued(list(requeued), list(failed), list(spent_chains))


CLAIM_COLUMNS = _columns(N, DueReminder)


def claim_due(
    conn: Connection,
    now: datetime,
    limit: int,
    lease_token: str,
    lease: timedelta,
    skip_senders: Iterable[str] = (),
) -> list[DueReminder]:
    """Take up to ``limit`` due reminders, oldest ``due_at`` first, under a fresh lease.

    PostgreSQL skips rows another dispatcher has locked; SQLite relies on the
    caller's ``BEGIN IMMEDIATE``. The attempt is counted here, so a run killed
    mid-send still uses one up. The reminders of ``skip_senders`` (channels, or
    ``telegram:<bot>``) are left alone (this run cannot send on them:
    configuration missing or rejected).
    """
    stmt = _claim(conn.dialect.name, tuple(sorted(set(skip_senders))))
    params = {"now": now, "limit": limit, "token": lease_token, "expires": now + lease}
    rows = conn.execute(stmt, params).all()
    return sorted((DueReminder(*r) for r in rows), key=lambda r: (r.due_at, r.id))


@lru_cache(maxsize=64)
def _claim(dialect: str, skip_senders: tuple[str, ...]) -> Any:
    """``claim_due``'s statement, built once per dialect and set of senders left out."""
    now = bindparam("now", type_=N.due_at.type)
    due = (
        select(N.id)
        .where(N.status == Status.PENDING, N.due_at <= now, N.not_after > now)
        .where(*_not_sent_by(skip_senders))
        .order_by(N.due_at, N.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if dialect == "postgresql":
        # ``id = ANY(ARRAY(SELECT …))``: the ids are taken once (an InitPlan) and the
        # rows found by primary key. With ``id IN (SELECT …)`` PostgreSQL planned a hash
        # semi-join over a sequential scan of the whole table: a claim read every
        # reminder ever kept, and grew with the history (EXPLAIN in benchmarks/README).
        due = due.with_for_update(skip_locked=True)
        taken = N.id == any_(func.array(due.scalar_subquery()))
    else:
        taken = N.id.in_(due.scalar_subquery())
    return (
        update(N)
        .where(taken)
        .values(
            status=Status.SENDING,
            lease_token=bindparam("token", type_=N.lease_token.type),
            lease_expires_at=bindparam("expires", type_=N.lease_expires_at.type),
            attempts=N.attempts + 1,
            updated_at=now,
        )
        .returning(*CLAIM_COLUMNS)
    )


#: channels whose recipients may name their sender: ``<name>/<address>`` (Telegram bots)
NAMED_SENDER_CHANNELS = ("telegram",)


def _not_sent_by(senders: Iterable[str]) -> list[ColumnElement[bool]]:
    """Conditions that leave out the reminders of these senders (channel or ``channel:name``)."""
    terms: list[ColumnElement[bool]] = []
    whole: list[str] = []
    for name in sorted(set(senders)):
        channel, _, sub = name.partition(":")
        if sub:  # a named bot: its recipients start with "<bot>/" (stored lower-cased)
            terms.append(
                or_(N.channel != channel, ~N.recipient.startswith(f"{sub}/", autoescape=True))
            )
        elif channel in NAMED_SENDER_CHANNELS:  # the default bot: recipients without a name
            terms.append(or_(N.channel != channel, N.recipient.contains("/")))
        else:
            whole.append(channel)
    if whole:
        terms.append(N.channel.not_in(whole))
    return terms


def next_due(
    conn: Connection, after: datetime, skip_senders: Iterable[str] = ()
) -> datetime | None:
    """The next ``due_at`` after ``after`` among pending reminders (one step of the due index)."""
    stmt = select(N.due_at).where(N.status == Status.PENDING, N.due_at > after)
    stmt = stmt.where(*_not_sent_by(skip_senders))
    return conn.scalar(stmt.order_by(N.due_at, N.id).limit(1))


def due_preview(conn: Connection, now: datetime, limit: int) -> list[DueReminder]:
    """What ``claim_due`` would take, without taking it (``--dry-run``)."""
    rows = conn.execute(
        select(*CLAIM_COLUMNS)
        .where(
            N.status == Status.PENDING,
            N.due_at <= now,
            N.not_after > now,
            ~_superseded(now),
        )
        .order_by(N.due_at, N.id)
        .limit(limit)
    )
    return [DueReminder(*r) for r in rows]


def reminders_of(conn: Connection, external_id: str, kind: str | None) -> list[DueReminder]:
    """Every reminder of one booking (by the caller's id), optionally of one kind."""
    stmt = (
        select(*CLAIM_COLUMNS)
        .join(B, B.id == N.booking_id)
        .where(B.external_id == external_id)
        .order_by(N.scheduled_at, N.id)
    )
    if kind is not None:
        stmt = stmt.where(N.kind == kind)
    return [DueReminder(*r) for r in conn.execute(stmt)]


def due_senders(conn: Connection, now: datetime) -> list[str]:
    """The senders with reminders due now: channels, and ``telegram:<bot>`` per named bot.

    Called right after ``expire_useless``, so it needs no ``not_after`` term, and
    without one the planner can only walk the narrow due range of ix_notifications_due.
    """
    slash = (func.strpos if conn.dialect.name == "postgresql" else func.instr)(N.recipient, "/")
    name = case(
        (
            and_(N.channel.in_(NAMED_SENDER_CHANNELS), slash > 0),
            func.substr(N.recipient, 1, slash - 1),
        ),
        else_=literal(""),
    )
    rows = conn.execute(
        select(N.channel, name).where(N.status == Status.PENDING, N.due_at <= now).distinct()
    )
    return sorted({f"{channel}:{sub}" if sub else channel for channel, sub in rows})


def bookings_by_id(conn: Connection, ids: Iterable[int]) -> dict[int, BookingRow]:
    unique = sorted(set(ids))
    found: dict[int, BookingRow] = {}
    for part in chunks(unique):
        for row in conn.execute(_bookings_among(), {"ids": list(part)}):
            found[row.id] = BookingRow(*row)
    return found


@cache
def _bookings_among() -> Select[tuple[Any, ...]]:
    return select(*BOOKING_COLUMNS).where(B.id.in_(bindparam("ids", expanding=True)))


@lru_cache(maxsize=64)
def _fenced_update(fields: tuple[str, ...], give_back_attempt: bool) -> Any:
    """UPDATE of one reminder's ``fields`` that applies only under the given lease.

    Built once per shape: dispatch records thousands of outcomes a minute.
    """
    values: dict[str, Any] = {f: bindparam(f"v_{f}") for f in fields}
    if give_back_attempt:
        values["attempts"] = N.attempts - 1
    return (
        update(N)
        .where(
            N.id == bindparam("n_id"),
            N.status == Status.SENDING,
            N.lease_token == bindparam("n_token"),
        )
        .values({**values, "lease_token": None, "lease_expires_at": None})
    )


def record_outcome(
    conn: Connection,
    notification_id: int,
    lease_token: str,
    values: Mapping[str, Any],
    *,
    give_back_attempt: bool = False,
) -> bool:
    """Apply one outcome if this run still holds the lease; True when it did.

    ``give_back_attempt`` undoes the attempt counted at claim time (a 429, a
    moved chat, a send that never started).
    """
    stmt = _fenced_update(tuple(sorted(values)), give_back_attempt)
    params = {f"v_{k}": v for k, v in values.items()}
    result = conn.execute(stmt, {"n_id": notification_id, "n_token": lease_token, **params})
    return result.rowcount == 1


class FencedWrite(NamedTuple):
    """One outcome to apply under a lease: see ``record_outcomes``."""

    notification_id: int
    lease_token: str
    values: Mapping[str, Any]
    give_back_attempt: bool = False


def record_outcomes(conn: Connection, writes: Sequence[FencedWrite]) -> set[int]:
    """Apply many outcomes, each only where its lease is still held; the ids that won.

    The rows still held are read first (locked on PostgreSQL; SQLite's BEGIN
    IMMEDIATE already excludes other writers), then each shape of outcome goes
    to the driver as one executemany, still fenced by status and token.
    """
    if not writes:
        return set()
    pairs = [(w.notification_id, w.lease_token) for w in writes]
    held: set[int] = set()
    for part in chunks(pairs):
        held.update(conn.scalars(_held_among(), {"pairs": list(part)}))
    shapes: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
    for w in writes:
        if w.notification_id in held:
            params = {f"v_{k}": v for k, v in w.values.items()}
            params.update(n_id=w.notification_id, n_token=w.lease_token)
            shapes.setdefault((tuple(sorted(w.values)), w.give_back_attempt), []).append(params)
    for (fields, give_back), params_list in shapes.items():
        conn.execute(_fenced_update(fields, give_back), params_list)
    return held


@cache
def _held_among() -> Select[int]:
    """Of the given (id, lease token) pairs, the reminders still held (locked on PostgreSQL)."""
    pairs = tuple_(N.id, N.lease_token).in_(bindparam("pairs", expanding=True))
    return select(N.id).where(N.status == Status.SENDING, pairs).with_for_update()


def held_bookings(
    conn: Connection, lease_token: str, notification_ids: Sequence[int]
) -> dict[int, BookingRow]:
    """Reminder id → its booking as it is now, for those this lease still holds."""
    found: dict[int, BookingRow] = {}
    for part in chunks(notification_ids):
        rows = conn.execute(_held_bookings(), {"ids": list(part), "token": lease_token})
        for notification_id, *booking in rows:
            found[notification_id] = BookingRow(*booking)
    return found


@cache
def _held_bookings() -> Select[tuple[Any, ...]]:
    return (
        select(N.id, *BOOKING_COLUMNS)
        .join(B, B.id == N.booking_id)
        .where(
            N.id.in_(bindparam("ids", expanding=True)),
            N.status == Status.SENDING,
            N.lease_token == bindparam("token", type_=N.lease_token.type),
        )
    )


def notice_corrections(
    conn: Connection, notice_id: int
) -> tuple[list[dict[str, Any]], BookingRow] | None:
    """A change notice's messages to correct and its booking as it is now (after it went out)."""
    row = conn.execute(
        select(N.corrects, *BOOKING_COLUMNS).join(B, B.id == N.booking_id).where(N.id == notice_id)
    ).first()
    if row is None or not row[0]:
        return None
    return list(row[0]), BookingRow(*row[1:])


def remember_chat_move(conn: Connection, channel: str, old: str, new: str, now: datetime) -> None:
    """Keep old → new (and re-point earlier moves into ``old``) for later creates."""
    conn.execute(
        update(ChatMove)
        .where(ChatMove.channel == channel, ChatMove.new_recipient == old)
        .values(new_recipient=new, moved_at=now)
    )
    conn.execute(delete(ChatMove).where(ChatMove.channel == channel, ChatMove.old_recipient == new))
    conn.execute(delete(ChatMove).where(ChatMove.channel == channel, ChatMove.old_recipient == old))
    conn.execute(
        insert(ChatMove).values(channel=channel, old_recipient=old, new_recipient=new, moved_at=now)
    )


def chat_moves(
    conn: Connection, recipients: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, str]]:
    """(channel, old) → (channel, new) for the given recipients whose chat moved."""
    stmt = select(ChatMove.channel, ChatMove.old_recipient, ChatMove.new_recipient)
    rows = _rows_keyed_among(conn, stmt, set(recipients))
    return {(c, old): (c, new) for c, old, new in rows}


def _rows_keyed_among(
    conn: Connection, stmt: Select[*tuple[Any, ...]], wanted: set[tuple[str, str]]
) -> list[Any]:
    """The rows of ``stmt`` whose first two columns are one of the ``wanted`` pairs.

    A bulk create asks about 100k recipients: when the table (chat moves, suppressed
    recipients: rare events) has fewer rows than that, one read of it beats 200
    lookups of 500 keys each; bounded by the number of keys, it is never worse.
    """
    if len(wanted) > CHUNK:
        whole = conn.execute(stmt.limit(len(wanted))).all()
        if len(whole) < len(wanted):
            return [row for row in whole if (row[0], row[1]) in wanted]
    key = tuple_(*list(stmt.selected_columns)[:2])
    return [
        row for part in chunks(sorted(wanted)) for row in conn.execute(stmt.where(key.in_(part)))
    ]


def _route_after_move(old: str, new: str) -> ColumnElement[str]:
    """The route with the alternative ``old`` (``channel:address``) replaced by ``new``."""
    wrapped = func.replace("|" + N.route + "|", f"|{old}|", f"|{new}|")
    return func.substr(wrapped, 2, func.length(wrapped) - 2)


def retarget_recipient(conn: Connection, channel: str, old: str, new: str, now: datetime) -> int:
    """Follow a chat that moved (Telegram chat migration): its reminders name the new chat.

    Pending ones everywhere; and, of bookings that have not ended (found through their
    ``ends_at`` index, not a scan of the history), every reminder whose route goes
    through the old chat, whatever its status: a route is a reminder's identity within
    its booking, and a later create, mapped through the remembered move, must find a
    reminder that was already sent rather than arm it again. A reminder whose twin is
    already on the new route keeps the old one (pending: cancelled as a duplicate).
    """
    old_address, new_address = f"{channel}:{old}", f"{channel}:{new}"
    route = _route_after_move(old_address, new_address)
    twin = aliased(N)
    clash = exists().where(
        twin.booking_id == N.booking_id,
        twin.kind == N.kind,
        twin.id != N.id,
        twin.route == route,
    )
    here = and_(N.channel == channel, N.recipient == old)
    pending_here = and_(here, N.status == Status.PENDING)
    conn.execute(
        update(N)
        .where(pending_here, clash)
        .values(
            status=Status.CANCELLED,
            reason=Reason.DUPLICATE,
            last_error=f"duplicate after chat moved to {new}",
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    moved = conn.execute(
        update(N)
        .where(pending_here)
        .values(recipient=new, route=route, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    wrapped = "|" + N.route + "|"
    through_old = and_(
        N.booking_id.in_(select(B.id).where(B.ends_at > now)),
        wrapped.contains(f"|{old_address}|", autoescape=True),
        ~wrapped.contains(f"|{new_address}|", autoescape=True),
    )
    conn.execute(
        update(N)
        .where(through_old, ~clash)
        .values(route=route, recipient=case((here, new), else_=N.recipient))
        .execution_options(synchronize_session=False)
    )
    return moved


def route_taken(conn: Connection, notification_id: int, route: str) -> bool:
    """Does a twin of this reminder (same booking and kind) already have ``route``?"""
    twin = aliased(N)
    own = select(N.booking_id, N.kind).where(N.id == notification_id).subquery()
    return bool(
        conn.scalar(
            select(
                exists().where(
                    twin.booking_id == own.c.booking_id,
                    twin.kind == own.c.kind,
                    twin.id != notification_id,
                    twin.route == route,
                )
            )
        )
    )


# --- recipient health (SPEC §11) ------------------------------------------------------

H = Recipient


def suppressed_among(conn: Connection, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of the given (channel, suppression key) pairs that are suppressed."""
    stmt = select(H.channel, H.address).where(H.state == RecipientState.SUPPRESSED)
    return {(channel, address) for channel, address in _rows_keyed_among(conn, stmt, set(keys))}


def set_recipient_state(
    conn: Connection,
    channel: str,
    address: str,
    state: RecipientState,
    now: datetime,
    reason: Reason | None = None,
    detail: str | None = None,
) -> None:
    """Upsert one recipient's health (the primary key makes two writers one row)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    values = {"state": state, "reason": reason, "detail": detail, "since": now}
    conn.execute(
        dialect_insert(Recipient)
        .values(channel=channel, address=address, **values)
        .on_conflict_do_update(index_elements=[H.channel, H.address], set_=values)
    )


def pending_of_recipient(conn: Connection, channel: str, address: str) -> list[DueReminder]:
    """The pending reminders and notices to one recipient (a chat: in any of its topics)."""
    topic = address + "#"
    stmt = select(*CLAIM_COLUMNS).where(
        N.status == Status.PENDING,
        N.channel == channel,
        or_(N.recipient == address, func.substr(N.recipient, 1, len(topic)) == topic),
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return [DueReminder(*row) for row in conn.execute(stmt)]


def update_pending(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Rewrite reminders that are still pending (rows carry ``n_id``); how many were."""
    shapes: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        shapes.setdefault(tuple(sorted(k for k in row if k != "n_id")), []).append(row)
    count = 0
    for fields, same in shapes.items():
        values: dict[str, Any] = {f: bindparam(f"v_{f}") for f in fields}
        stmt = update(N).where(N.id == bindparam("n_id"), N.status == Status.PENDING)
        params = [{"n_id": r["n_id"], **{f"v_{f}": r[f] for f in fields}} for r in same]
        count += conn.execute(stmt.values(values), params).rowcount
    return count


def reminders_by_id(conn: Connection, ids: Sequence[int]) -> list[DueReminder]:
    found: list[DueReminder] = []
    for part in chunks(ids):
        found += [
            DueReminder(*r) for r in conn.execute(select(*CLAIM_COLUMNS).where(N.id.in_(part)))
        ]
    return found


@dataclass(frozen=True, slots=True)
class RecipientRow:
    """One line of ``recipients``."""

    channel: str
    recipient: str
    state: str
    reason: str | None
    detail: str | None
    since: datetime | None


def list_recipients(conn: Connection, *, suppressed_only: bool) -> list[RecipientRow]:
    """Every recipient with a health row, and (unless ``suppressed_only``) every one
    a reminder names; by channel and address."""
    rows = {
        (r.channel, r.address): RecipientRow(
            r.channel, r.address, r.state, r.reason, r.detail, r.since
        )
        for r in conn.execute(select(H.channel, H.address, H.state, H.reason, H.detail, H.since))
        if not suppressed_only or r.state == RecipientState.SUPPRESSED
    }
    if not suppressed_only:
        for channel, recipient in conn.execute(select(N.channel, N.recipient).distinct()):
            rows.setdefault(
                (channel, recipient),
                RecipientRow(channel, recipient, RecipientState.ACTIVE, None, None, None),
            )
    return [rows[key] for key in sorted(rows)]


def known_recipients(conn: Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of the given (channel, address) pairs that a health row or a reminder names."""
    found: set[tuple[str, str]] = set()
    for part in chunks(sorted(set(keys))):
        found.update(
            (c, a)
            for c, a in conn.execute(
                select(H.channel, H.address).where(tuple_(H.channel, H.address).in_(part))
            )
        )
        found.update(
            (c, a)
            for c, a in conn.execute(
                select(N.channel, N.recipient)
                .where(tuple_(N.channel, N.recipient).in_(part))
                .distinct()
            )
        )
    return found


def insert_attempts(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """History rows (``channel`` only where the attempt knows it: one shape for executemany)."""
    if rows:
        conn.execute(insert(DeliveryAttempt), [{"channel": None, **row} for row in rows])


def start_run(conn: Connection, host: str, pid: int, now: datetime) -> int:
    return int(
        conn.execute(
            insert(DispatchRun)
            .values(
                host=host,
                pid=pid,
                started_at=now,
                **dict.fromkeys(RUN_COUNTERS, 0),
            )
            .returning(DispatchRun.id)
        ).scalar_one()
    )


def finish_run(
    conn: Connection, run_id: int, counts: Mapping[str, int], exit_code: int, now: datetime
) -> None:
    conn.execute(
        update(DispatchRun)
        .where(DispatchRun.id == run_id)
        .values({**counts, "finished_at": now, "exit_code": exit_code})
    )


# --- pacing: one shared send-slot row per rate-limited sender ----------------------


def ensure_pacing_row(conn: Connection, key: str, now: datetime) -> None:
    """Create the pacing row of ``key`` if missing; concurrent runs may race here."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        dialect_insert(Pacing)
        .values(key=key, next_slot_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=[Pacing.key])
    )


def reserve_slots(
    conn: Connection, key: str, count: int, interval: timedelta, now: datetime
) -> datetime:
    """Reserve ``count`` consecutive send slots; returns the first slot's time.

    The row exists (``ensure_pacing_row``) and is locked here (``FOR UPDATE`` on
    PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already holds the write lock), so
    concurrent runs get disjoint slots.
    """
    row = conn.execute(
        select(Pacing.next_slot_at).where(Pacing.key == key).with_for_update()
    ).first()
    start = max(now, row.next_slot_at) if row else now
    next_free = start + interval * count
    if row is None:
        conn.execute(insert(Pacing).values(key=key, next_slot_at=next_free, updated_at=now))
    else:
        conn.execute(
            update(Pacing).where(Pacing.key == key).values(next_slot_at=next_free, updated_at=now)
        )
    return start


_RESERVE_PG = text(
    "INSERT INTO pacing (key, next_slot_at, updated_at) VALUES (:key, :now + :span, :now) "
    "ON CONFLICT (key) DO UPDATE "
    "SET next_slot_at = GREATEST(pacing.next_slot_at, :now) + :span, updated_at = :now "
    "RETURNING next_slot_at - :span"
).bindparams(bindparam("now", type_=UTCDateTime), bindparam("span", type_=Interval))


def reserve_slots_at_once(
    conn: Connection, key: str, count: int, interval: timedelta, now: datetime
) -> datetime:
    """``reserve_slots`` in one statement (PostgreSQL): the row created if missing.

    An upsert takes the row lock, moves the next free slot past the block and
    returns the block's first slot: one round trip instead of the five of
    ensure + SELECT … FOR UPDATE + UPDATE inside BEGIN/COMMIT (a fast run
    reserves a block every few dozen sends).
    """
    first = conn.execute(_RESERVE_PG, {"key": key, "now": now, "span": interval * count}).scalar()
    assert isinstance(first, datetime)
    return first.astimezone(UTC)


def pause_sender(conn: Connection, key: str, until: datetime, now: datetime) -> None:
    """No run sends under ``key`` before ``until`` (a 429's retry_after)."""
    conn.execute(
        update(Pacing)
        .where(Pacing.key == key, Pacing.next_slot_at < until)
        .values(next_slot_at=until, updated_at=now)
    )


# --- ops: stats / prune ----------------------------------------------------------------

A = DeliveryAttempt
R = DispatchRun
UNFINISHED = (Status.PENDING, Status.SENDING)


def count_with_status(conn: Connection, status: Status) -> int:
    """Reminders in one status (pending and sending read their partial indexes)."""
    return conn.scalar(select(func.count()).where(N.status == status)) or 0


# --- stats: the hourly counts kept by triggers (models.StatHour, LatenessHour) -----------

S = StatHour
L = LatenessHour
#: events of a finished reminder in stat_hours (expired by a later reminder: superseded)
SUPERSEDED = "superseded"
ATTEMPT_EVENTS = (Action.RETRIED.value, Action.FALLBACK.value)


class EventCount(NamedTuple):
    channel: str
    kind: str
    event: str
    number: int


class LateCount(NamedTuple):
    channel: str
    kind: str
    lateness_ms: int
    number: int


def ceil_hour(moment: datetime) -> datetime:
    """The first whole hour at or after ``moment`` (UTC): where the hourly counts take over."""
    floor = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(hours=1)


def lateness_ms_sql(sent: str, scheduled: str, dialect: str) -> str:
    """SQL of ``sent - scheduled`` in ms, exact below 1 s, else to 3 significant digits.

    Half away from zero, in integer arithmetic only (SQLite builds without its
    math functions must run it too). The triggers of migration 0005 and the
    reads below share this text, so that a row counts in the same bucket either way.
    """
    if dialect == "postgresql":
        ms = f"(round(extract(epoch FROM ({sent}) - ({scheduled})) * 1000)::bigint)"
    else:
        ms = f"CAST(round((julianday({sent}) - julianday({scheduled})) * 86400000.0) AS INTEGER)"
    size = f"abs({ms})"
    steps = " ".join(f"WHEN {size} < {10**d} THEN {10 ** (d - 3)}" for d in range(3, 19))
    step = f"(CASE {steps} ELSE {10**16} END)"
    return (
        f"(CASE WHEN {ms} >= 0 THEN ({ms} + {step} / 2) / {step} * {step} "
        f"ELSE -(({size} + {step} / 2) / {step} * {step}) END)"
    )


def hour_sql(moment: str, dialect: str) -> str:
    """SQL of the UTC hour a stored time falls in, stored as the column type stores times."""
    if dialect == "postgresql":
        return f"(date_trunc('hour', ({moment}) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
    return f"strftime('%Y-%m-%d %H:00:00.000000', {moment})"


def event_sql(row: str) -> str:
    """SQL of a finished reminder's ``stat_hours`` event (``row``: an alias, NEW or OLD)."""
    superseded = f"{row}.status = 'expired' AND {row}.reason = '{Reason.SUPERSEDED.value}'"
    return f"(CASE WHEN {superseded} THEN '{SUPERSEDED}' ELSE {row}.status END)"


def _whole_hours(
    conn: Connection, table: type[StatHour] | type[LatenessHour], key: Any, whole: datetime
) -> list[Any]:
    """(channel, kind, key, sum) of the hourly rows from ``whole`` on; sums of 0 left out."""
    counted = func.sum(table.count)
    columns = (table.channel, table.kind, key)
    stmt = select(*columns, counted).where(table.hour >= whole).group_by(*columns)
    return list(conn.execute(stmt.having(counted != 0)))


def stat_events(conn: Connection, since: datetime) -> list[EventCount]:
    """Reminders finished and attempts retried or fallen back at or after ``since``.

    Whole hours come from ``stat_hours``; the part of an hour before the first
    whole one (a window rarely starts on the hour) from the rows themselves, by
    the same index ranges the counts replaced.
    """
    whole = ceil_hour(since)
    rows = _whole_hours(conn, S, S.event, whole)
    if since < whole:
        event: ColumnElement[str] = literal_column(event_sql(N.__tablename__))
        rows += conn.execute(
            select(N.channel, N.kind, event, func.count())
            .where(N.updated_at >= since, N.updated_at < whole, N.status.in_(FINAL_STATUSES))
            .group_by(N.channel, N.kind, event)
        ).all()
        channel = func.coalesce(A.channel, N.channel)
        rows += conn.execute(
            select(channel, N.kind, A.outcome, func.count())
            .select_from(A)
            .join(N, N.id == A.notification_id)
            .where(A.started_at >= since, A.started_at < whole, A.outcome.in_(ATTEMPT_EVENTS))
            .group_by(channel, N.kind, A.outcome)
        ).all()
    return [EventCount(*r) for r in rows]


def _sent_with_lateness(since: datetime, until: datetime | None = None) -> ColumnElement[bool]:
    window = [N.updated_at >= since] + ([N.updated_at < until] if until is not None else [])
    return and_(*window, N.status == Status.SENT, N.sent_at.is_not(None))


def lateness_seconds(conn: Connection, since: datetime) -> list[tuple[str, str, float]]:
    """(channel, kind, ``sent_at - scheduled_at`` in s) of every reminder sent since ``since``."""
    if conn.dialect.name == "postgresql":
        seconds: ColumnElement[float] = cast(extract("epoch", N.sent_at - N.scheduled_at), Float)
    else:  # SQLite's date functions keep milliseconds
        seconds = (func.julianday(N.sent_at) - func.julianday(N.scheduled_at)) * 86400.0
    rows = conn.execute(select(N.channel, N.kind, seconds).where(_sent_with_lateness(since)))
    return [(c, k, float(s)) for c, k, s in rows]


def lateness_counts(conn: Connection, since: datetime) -> list[LateCount]:
    """Reminders sent since ``since`` per channel, kind and lateness bucket (ms)."""
    whole = ceil_hour(since)
    rows = _whole_hours(conn, L, L.lateness_ms, whole)
    if since < whole:
        table = N.__tablename__
        bucket: ColumnElement[int] = literal_column(
            lateness_ms_sql(f"{table}.sent_at", f"{table}.scheduled_at", conn.dialect.name)
        )
        rows += conn.execute(
            select(N.channel, N.kind, bucket, func.count())
            .where(_sent_with_lateness(since, whole))
            .group_by(N.channel, N.kind, bucket)
        ).all()
    return [LateCount(*r) for r in rows]


def count_by_status(conn: Connection) -> dict[str, int]:
    """Reminders per status: the live queue by its partial indexes, the history from stat_hours."""
    counted = func.sum(S.count)
    finished = conn.execute(
        select(S.event, counted).where(S.event.in_([*FINAL_STATUSES, SUPERSEDED])).group_by(S.event)
    )
    counts = {s.value: 0 for s in FINAL_STATUSES}
    for event, count in finished:
        status = Status.EXPIRED.value if event == SUPERSEDED else event
        counts[status] += int(count)
    return counts | {s.value: count_with_status(conn, s) for s in UNFINISHED}


#: the advisory lock key of a fold on PostgreSQL (any constant: only folds take it)
FOLD_LOCK = 0x6E6F7469667966

_STAT_TABLES = (
    (S, (S.hour, S.channel, S.kind, S.event)),
    (L, (L.hour, L.channel, L.kind, L.lateness_ms)),
)


def fold_stat_hours(conn: Connection) -> None:
    """Sum each hour that received rows since the last fold into one row per key.

    In the database, never through Python (a run appends thousands of rows).
    PostgreSQL: one statement deletes the hours' rows and inserts the sums of
    what it deleted, so a row another transaction commits meanwhile is summed
    or left for the next fold, never lost; an advisory lock keeps two folds
    from waiting on each other's rows. SQLite has one writer at a time: the
    rows up to the largest id are summed, then deleted. Keys summing to 0 vanish.
    """
    postgresql = conn.dialect.name == "postgresql"
    if postgresql and not conn.scalar(select(func.pg_try_advisory_xact_lock(FOLD_LOCK))):
        return  # another run is folding right now
    for table, key in _STAT_TABLES:
        name, keys = table.__tablename__, ", ".join(c.key for c in key)
        # the hours with rows appended since the last fold (ix_*_unfolded)
        touched = f"hour IN (SELECT hour FROM {name} WHERE NOT folded)"
        sums = (
            f"SELECT {keys}, sum(count), true FROM {{rows}} GROUP BY {keys} HAVING sum(count) <> 0"
        )
        into = f"INSERT INTO {name} ({keys}, count, folded) "
        if postgresql:
            gone = f"WITH gone AS (DELETE FROM {name} WHERE {touched} RETURNING {keys}, count) "
            conn.execute(text(gone + into + sums.format(rows="gone")))
            continue
        last = conn.scalar(select(func.max(table.id)))
        mine = f"{touched} AND id <= :last"
        conn.execute(text(into + sums.format(rows=f"{name} WHERE {mine}")), {"last": last})
        conn.execute(text(f"DELETE FROM {name} WHERE {mine}"), {"last": last})


def rebuild_stat_hours(conn: Connection) -> None:
    """Count the whole store into stat_hours and lateness_hours afresh (migration 0005).

    What the triggers would have written had they always been there, folded.
    """
    dialect = conn.dialect.name
    final = ", ".join(f"'{s.value}'" for s in FINAL_STATUSES)
    attempts = ", ".join(f"'{e}'" for e in ATTEMPT_EVENTS)
    hour = hour_sql("n.updated_at", dialect)
    late = lateness_ms_sql("n.sent_at", "n.scheduled_at", dialect)
    event = event_sql("n")
    true = "true" if dialect == "postgresql" else "1"
    conn.execute(delete(S))
    conn.execute(delete(L))
    conn.execute(
        text(
            "INSERT INTO stat_hours (hour, channel, kind, event, count, folded) "
            f"SELECT {hour}, n.channel, n.kind, {event}, count(*), {true} FROM notifications n "
            f"WHERE n.status IN ({final}) GROUP BY 1, 2, 3, 4"
        )
    )
    conn.execute(
        text(
            "INSERT INTO stat_hours (hour, channel, kind, event, count, folded) "
            f"SELECT {hour_sql('a.started_at', dialect)}, coalesce(a.channel, n.channel), n.kind, "
            f"a.outcome, count(*), {true} FROM delivery_attempts a "
            f"JOIN notifications n ON n.id = a.notification_id "
            f"WHERE a.outcome IN ({attempts}) GROUP BY 1, 2, 3, 4"
        )
    )
    conn.execute(
        text(
            "INSERT INTO lateness_hours (hour, channel, kind, lateness_ms, count, folded) "
            f"SELECT {hour}, n.channel, n.kind, {late}, count(*), {true} FROM notifications n "
            "WHERE n.status = 'sent' AND n.sent_at IS NOT NULL GROUP BY 1, 2, 3, 4"
        )
    )


_RUN_COLUMNS = (R.id, R.host, R.pid, R.started_at, R.finished_at, R.exit_code)


def _run_row(row: Any) -> RunRow:
    run_id, host, pid, started_at, finished_at, exit_code = row[: len(_RUN_COLUMNS)]
    counts = zip(RUN_COUNTERS, row[len(_RUN_COLUMNS) :], strict=True)
    return RunRow(
        run_id, host, pid, started_at, finished_at, exit_code, {str(k): v or 0 for k, v in counts}
    )


def _runs() -> Any:
    return select(*_RUN_COLUMNS, *(getattr(R, c) for c in RUN_COUNTERS))


def recent_runs(conn: Connection, limit: int) -> list[RunRow]:
    """The latest dispatch runs, newest first."""
    rows = conn.execute(_runs().order_by(R.started_at.desc(), R.id.desc()).limit(limit))
    return [_run_row(r) for r in rows]


def last_successful_run(conn: Connection) -> RunRow | None:
    """The latest run that exited 0 (walks the started_at index from the end)."""
    row = conn.execute(
        _runs()
        .where(R.exit_code == 0, R.finished_at.is_not(None))
        .order_by(R.started_at.desc(), R.id.desc())
        .limit(1)
    ).first()
    return _run_row(row) if row is not None else None


def bookings_ended_before(
    conn: Connection,
    cutoff: datetime,
    after: tuple[datetime, int] | None,
    limit: int,
    *,
    lock: bool = False,
) -> list[tuple[datetime, int]]:
    """(ends_at, id) of the next ``limit`` bookings that ended before ``cutoff``.

    Keyset-paged on (ends_at, id) after ``after`` over ``ix_bookings_ends_at``.
    With ``lock`` (PostgreSQL) the rows are locked, skipping those another
    transaction holds, so nobody re-arms a reminder of a booking being deleted.
    """
    stmt = select(B.ends_at, B.id).where(B.ends_at < cutoff)
    if after is not None:
        after_end, after_id = after
        stmt = stmt.where(
            B.ends_at >= after_end,
            or_(B.ends_at > after_end, B.id > after_id),
        )
    stmt = stmt.order_by(B.ends_at, B.id).limit(limit)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=B)
    return [(ends_at, booking_id) for ends_at, booking_id in conn.execute(stmt)]


def bookings_with_unfinished(conn: Connection, booking_ids: Sequence[int]) -> set[int]:
    """Those of the given bookings that still have a pending or sending reminder.

    A lookup by booking id (never an anti-join the planner could turn into a
    scan of every reminder when it expects few unfinished ones).
    """
    if not booking_ids:
        return set()
    return set(
        conn.scalars(
            select(N.booking_id)
            .where(N.booking_id.in_(booking_ids), N.status.in_(UNFINISHED))
            .distinct()
        )
    )


def _notification_ids_of(booking_ids: Sequence[int]) -> Any:
    return select(N.id).where(N.booking_id.in_(booking_ids)).scalar_subquery()


def count_booking_children(conn: Connection, booking_ids: Sequence[int]) -> tuple[int, int]:
    """(reminders, attempts) belonging to the given bookings."""
    if not booking_ids:
        return 0, 0
    reminders = conn.scalar(select(func.count()).where(N.booking_id.in_(booking_ids))) or 0
    attempts = (
        conn.scalar(
            select(func.count()).where(A.notification_id.in_(_notification_ids_of(booking_ids)))
        )
        or 0
    )
    return reminders, attempts


def delete_bookings(conn: Connection, booking_ids: Sequence[int]) -> tuple[int, int, int]:
    """Delete bookings with their attempts and reminders; (bookings, reminders, attempts).

    Children go first and explicitly, so the counts are exact and nothing
    depends on the cascade being enabled.
    """
    if not booking_ids:
        return 0, 0, 0
    attempts = conn.execute(
        delete(A).where(A.notification_id.in_(_notification_ids_of(booking_ids)))
    ).rowcount
    reminders = conn.execute(delete(N).where(N.booking_id.in_(booking_ids))).rowcount
    bookings = conn.execute(delete(B).where(B.id.in_(booking_ids))).rowcount
    return bookings, reminders, attempts


def count_runs_before(conn: Connection, cutoff: datetime) -> int:
    return conn.scalar(select(func.count()).where(R.started_at < cutoff)) or 0


def delete_runs_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` of the oldest runs started before ``cutoff``.

    Attempts that still point at them keep their rows (``run_id`` → NULL).
    """
    oldest = (
        select(R.id)
        .where(R.started_at < cutoff)
        .order_by(R.started_at, R.id)
        .limit(limit)
        .scalar_subquery()
    )
    return conn.execute(delete(R).where(R.id.in_(oldest))).rowcount
