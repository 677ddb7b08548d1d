"""``dispatch --workers N``: one run's work spread over N processes.

One dispatch process is held to one CPU core (Python runs one thread at a
time), and against a fast provider that core, not the network, limits what a
run delivers. With ``--workers N`` the command starts N-1 helper processes,
each running the dispatch the command runs itself: its own claims, leases,
``dispatch_runs`` row and send threads, under the rate limits the store's
pacing rows share between all runs. Nothing else is shared: the workers are
the overlapping runs the engine already guarantees (SPEC §5), started
together. The command waits for every helper and reports their sum.

Helpers are spawned, not forked: the command has threads and connections
open by then, and a forked copy of either is unsafe. Each helper gets the
settings and options as values over a pipe (never on a command line, where
tokens would show in ``ps``) and sends its report back the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .config import Settings, configure_logging, redact
from .errors import ExitCode, NotifyctlError
from .runs import RUN_COUNTERS, DispatchOptions, RunReport, idle_run
from .stopping import StopRequest, stop_on_signals


def run_with_helpers(
    settings: Settings,
    options: DispatchOptions,
    run_here: Callable[[], RunReport],
    stop: StopRequest,
) -> RunReport:
    """``run_here()`` while ``options.workers - 1`` helpers run beside it; the sum of all.

    A stop request made of the command is passed on to the helpers (SIGTERM);
    a second signal (KeyboardInterrupt here) kills them with the command.
    """
    import logging
    import multiprocessing

    verbose = logging.getLogger("notifyctl").isEnabledFor(logging.INFO)  # as the command's -v
    context = multiprocessing.get_context("spawn")
    single = replace(options, workers=1)
    helpers: list[tuple[Any, Any]] = []
    # helpers are deaf to Ctrl-C (the setting is inherited): a terminal sends it to the
    # whole group, and the command passes it on once, as SIGTERM (of which a helper still
    # starting dies, and a running one stops as asked)
    hearing = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for _ in range(0 if stop.requested else options.workers - 1):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_helper, args=(send, settings, single, verbose), name="notifyctl-worker"
            )
            process.start()
            send.close()
            helpers.append((process, receive))
    finally:
        signal.signal(signal.SIGINT, hearing)
    stop.add_helpers([process.pid for process, _ in helpers])
    try:
        report = run_here()
    except KeyboardInterrupt:  # insisted: no waiting for anyone's answers
        for process, _ in helpers:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)
        raise
    finally:
        reports = [_report_of(process, receive) for process, receive in helpers]
    return merged(report, reports)


def _report_of(process: Any, receive: Any) -> RunReport:
    """A helper's report once it ends; a helper that died without one is an internal error."""
    try:
        report: RunReport = receive.recv()
    except (EOFError, OSError):
        process.join()
        return RunReport(
            exit_code=ExitCode.INTERNAL,
            error=f"a dispatch worker ended without a report (exit code {process.exitcode})",
        )
    finally:
        receive.close()
    process.join()
    return report


def merged(report: RunReport, others: list[RunReport]) -> RunReport:
    """One report for the command: counts summed, the first failure's exit code, every
    distinct error once (the workers often meet the same missing token)."""
    errors = [report.error] if report.error else []
    for other in others:
        for counter in RUN_COUNTERS:
            setattr(report, counter, getattr(report, counter) + getattr(other, counter))
        for channel, counts in other.by_channel.items():
            for action, n in counts.items():
                per = report.by_channel.setdefault(channel, {})
                per[action] = per.get(action, 0) + n
        if report.exit_code == 0:
            report.exit_code = other.exit_code
        if other.error and other.error not in errors:
            errors.append(other.error)
        report.duration_seconds = max(report.duration_seconds, other.duration_seconds)
    report.error = "; ".join(errors) or None
    return report


def _helper(send: Any, settings: Settings, options: DispatchOptions, verbose: bool) -> None:
    """A helper process: one dispatch on its own connection, its report sent back.

    It hears SIGTERM from the command (a request to stop, as the command's own
    first signal is) until its report is sent; Ctrl-C it ignores, as it started.
    """
    with stop_on_signals((signal.SIGTERM,), insist=False) as stop:
        try:
            redact.add(settings.secrets())
            configure_logging(verbose)
            report = _dispatch_once(settings, options, stop)
        except NotifyctlError as e:
            report = RunReport(exit_code=int(e.exit_code), error=e.message)
        except Exception as e:  # reported by the command, as its own would be
            report = RunReport(
                exit_code=ExitCode.INTERNAL,
                error=redact(f"internal error: {type(e).__name__}: {e}"),
            )
        send.send(report)
    send.close()


def _dispatch_once(settings: Settings, options: DispatchOptions, stop: StopRequest) -> RunReport:
    from .db import open_store
    from .dispatch import Dispatcher

    store = open_store(settings.database_url)
    try:
        return (
            idle_run(store, options)
            or Dispatcher(store, settings, options, stdout=sys.stdout, stop=stop).run()
        )
    finally:
        store.close()
