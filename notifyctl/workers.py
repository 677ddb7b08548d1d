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
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from .config import Settings, configure_logging, redact
from .errors import ExitCode, NotifyctlError
from .runs import RUN_COUNTERS, DispatchOptions, RunReport, idle_run


def run_with_helpers(
    settings: Settings,
    options: DispatchOptions,
    run_here: Callable[[], RunReport],
) -> RunReport:
    """``run_here()`` while ``options.workers - 1`` helpers run beside it; the sum of all."""
    import logging
    import multiprocessing

    verbose = logging.getLogger("notifyctl").isEnabledFor(logging.INFO)  # as the command's -v
    context = multiprocessing.get_context("spawn")
    single = replace(options, workers=1)
    helpers: list[tuple[Any, Any]] = []
    # helpers start deaf to Ctrl-C (the setting is inherited), so that one arriving while
    # they import cannot print a traceback; they listen once running, and the command
    # passes any interrupt on to them as SIGTERM (which a helper still starting dies of)
    hearing = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for _ in range(options.workers - 1):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_helper, args=(send, settings, single, verbose), name="notifyctl-worker"
            )
            process.start()
            send.close()
            helpers.append((process, receive))
    finally:
        signal.signal(signal.SIGINT, hearing)
    try:
        report = run_here()
    except KeyboardInterrupt:
        for process, _ in helpers:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGTERM)
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
    """A helper process: one dispatch on its own connection, its report sent back."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with sigterm_interrupts():
            redact.add(settings.secrets())
            configure_logging(verbose)
            report = _dispatch_once(settings, options)
    except KeyboardInterrupt:
        report = RunReport(exit_code=ExitCode.INTERRUPTED, error="interrupted")
    except NotifyctlError as e:
        report = RunReport(exit_code=int(e.exit_code), error=e.message)
    except Exception as e:  # reported by the command, as its own would be
        report = RunReport(
            exit_code=ExitCode.INTERNAL, error=redact(f"internal error: {type(e).__name__}: {e}")
        )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # too late to interrupt: the run is over
    send.send(report)
    send.close()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside: SIGTERM (``kill``, ``timeout``, a stopping service) stops the run as
    Ctrl-C does - recorded as interrupted, helpers stopped - instead of killing the
    process with its run unrecorded. Only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _dispatch_once(settings: Settings, options: DispatchOptions) -> RunReport:
    from .db import open_store
    from .dispatch import Dispatcher

    store = open_store(settings.database_url)
    try:
        return (
            idle_run(store, options)
            or Dispatcher(store, settings, options, stdout=sys.stdout).run()
        )
    finally:
        store.close()
