"""On time to the second under cron (SPEC §13): a run waits for what falls due within its budget.

The Dispatcher runs with the frozen clock; its ``sleep`` advances the clock and
is recorded, so each wake-up is visible and costs no real time.
"""

from __future__ import annotations

import io
import random
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from notifyctl.config import Settings
from notifyctl.dispatch import Dispatcher
from notifyctl.models import Notification, Status
from notifyctl.runs import DispatchOptions, has_work, idle_run
from notifyctl.service import Store, create_booking
from tests.support import Cli, FrozenClock

N = Notification


def due_in(store: Store, booking_id: str, seconds: float) -> None:
    """A console reminder (at_start) falling due ``seconds`` from now."""
    start = store.clock() + timedelta(seconds=seconds)
    create_booking(
        store,
        booking_id,
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        to=["console:desk"],
        remind=["at_start"],
    )


class Sleeps:
    """The run's sleep: advances the frozen clock, and remembers each wait."""

    def __init__(self, clock: FrozenClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(round(seconds, 3))
        self.clock.advance(seconds)


def run(store: Store, clock: FrozenClock, **options: Any) -> tuple[Any, Sleeps, str]:
    sleeps = Sleeps(clock)
    epoch = clock()
    out = io.StringIO()
    report = Dispatcher(
        store,
        Settings(database_url=str(store.engine.url)),
        DispatchOptions(**options),
        stdout=out,
        rng=random.Random(1),
        sleep=sleeps,
        monotonic=lambda: (clock() - epoch).total_seconds(),
    ).run()
    return report, sleeps, out.getvalue()


def rows(store: Store) -> dict[str, Any]:
    """Each booking's one reminder, by the caller's booking id."""
    from notifyctl.models import Booking

    with store.reader() as conn:
        stmt = select(Booking.external_id, N.status, N.sent_at, N.scheduled_at).join(
            Booking, Booking.id == N.booking_id
        )
        return {r.external_id: r for r in conn.execute(stmt)}


def test_a_run_waits_for_what_falls_due_in_its_budget_and_sends_it_on_its_second(
    store: Store, clock: FrozenClock
) -> None:
    due_in(store, "now", 0)
    due_in(store, "soon", 20)
    due_in(store, "also-soon", 20)
    due_in(store, "later", 45)

    report, sleeps, out = run(store, clock)

    assert report.sent == 4
    assert sleeps.waits == [20.0, 25.0]  # one wake-up per due second, no polling
    for row in rows(store).values():
        assert row.status == Status.SENT
        assert row.sent_at == row.scheduled_at  # lateness 0 s
    assert out.count("[console:desk]") == 4


def test_a_run_never_waits_past_its_budget(store: Store, clock: FrozenClock) -> None:
    due_in(store, "now", 0)
    due_in(store, "edge", 57.5)  # inside --max-seconds 58, but not a second before its end
    due_in(store, "next-minute", 70)

    report, sleeps, _ = run(store, clock)

    assert report.sent == 1
    assert sleeps.waits == []
    statuses = {k: r.status for k, r in rows(store).items()}
    assert statuses == {"now": "sent", "edge": "pending", "next-minute": "pending"}


def test_no_wait_sends_what_is_due_and_exits(store: Store, clock: FrozenClock) -> None:
    due_in(store, "now", 0)
    due_in(store, "soon", 20)

    report, sleeps, _ = run(store, clock, wait=False)

    assert (report.sent, sleeps.waits) == (1, [])


def test_idle_probe_counts_what_falls_due_within_the_budget(
    store: Store, clock: FrozenClock
) -> None:
    due_in(store, "soon", 30)
    options = DispatchOptions()

    with store.reader() as conn:
        assert not has_work(conn, clock())
        assert has_work(conn, clock(), options.wait_horizon)
    assert idle_run(store, DispatchOptions(wait=False)) is not None  # idle: exits at once
    assert idle_run(store, options) is None  # work within the budget: the run waits for it


def test_cli_dispatch_is_idle_when_nothing_falls_due_within_its_budget(
    cli: Cli, store: Store
) -> None:
    start = "+3m"  # at_start due in 3 minutes: beyond one run's budget
    cli.ok(
        "create",
        "b1",
        "--starts-at",
        start,
        "--ends-at",
        "+1h",
        "--to",
        "console:a",
        "--remind",
        "at_start",
    )

    result = cli("dispatch", "--max-seconds", "5", NOTIFYCTL_NO_WAIT=None)

    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
