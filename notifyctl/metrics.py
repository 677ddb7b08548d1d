"""The Prometheus metrics file dispatch writes after each run (node_exporter textfile).

``prometheus_client`` is imported only when the file is written.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .config import redact

if TYPE_CHECKING:
    from .db import Store
    from .runs import RunReport
    from .stats import QueueState

log = logging.getLogger("notifyctl.metrics")

OUTCOMES_TOTAL = "notifyctl_dispatch_outcomes"
LAST_SUCCESS = "notifyctl_dispatch_last_success_timestamp_seconds"


def _previous_outcomes(path: Path) -> dict[tuple[str, str], float]:
    """The outcome counters of the file being replaced (a missing or bad file: none)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict[tuple[str, str], float] = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name != OUTCOMES_TOTAL:
                continue
            for sample in family.samples:
                if sample.name == f"{OUTCOMES_TOTAL}_total":
                    key = (sample.labels.get("channel", ""), sample.labels.get("outcome", ""))
                    found[key] = float(sample.value)
    except (ValueError, TypeError, KeyError):
        return {}
    return found


def _previous_gauge(path: Path, name: str) -> float | None:
    """One gauge of the file being replaced (a missing or bad file: None)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return None
    return None


def write_metrics_file(
    path: Path, report: RunReport, queue: QueueState | None, now: datetime
) -> None:
    """Prometheus text format for node_exporter's textfile collector, replaced atomically.

    ``notifyctl_dispatch_outcomes_total`` counts outcomes per channel across
    runs (this run's counts are added to the previous file's, so ``increase()``
    works; a lost file is a counter reset); ``notifyctl_dispatch_last_run_outcomes``
    holds this run's counts alone. The rest are gauges; without ``queue`` (the
    run failed before it could read the store) the queue gauges are left out
    and the last success is the previous file's.
    """
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    totals = _previous_outcomes(path)
    for channel, outcomes in report.by_channel.items():
        for outcome, count in outcomes.items():
            totals[(channel, outcome)] = totals.get((channel, outcome), 0.0) + count
    last_success: float | None
    if report.exit_code == 0:
        last_success = now.timestamp()
    elif queue is not None:
        last_success = queue.last_success_at.timestamp() if queue.last_success_at else None
    else:
        last_success = _previous_gauge(path, LAST_SUCCESS)

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    outcomes_total = CounterMetricFamily(
        OUTCOMES_TOTAL,
        "Delivery outcomes per channel, summed over the dispatch runs writing this file.",
        labels=["channel", "outcome"],
    )
    for (channel, outcome), value in sorted(totals.items()):
        outcomes_total.add_metric([channel, outcome], value)
    last_run = GaugeMetricFamily(
        "notifyctl_dispatch_last_run_outcomes",
        "Delivery outcomes per channel in the last dispatch run.",
        labels=["channel", "outcome"],
    )
    for channel, outcomes in sorted(report.by_channel.items()):
        for outcome, count in sorted(outcomes.items()):
            last_run.add_metric([channel, outcome], count)
    families: list[Metric] = [outcomes_total, last_run]
    if queue is not None:
        families += [
            gauge("notifyctl_queue_pending", "Reminders waiting to be sent.", queue.pending),
            gauge("notifyctl_queue_due", "Pending reminders already due.", queue.due),
            gauge(
                "notifyctl_queue_oldest_due_age_seconds",
                "How long the oldest due reminder has waited (0: nothing due).",
                queue.oldest_due_age_seconds or 0.0,
            ),
        ]
    families += [
        gauge(
            "notifyctl_dispatch_duration_seconds",
            "Duration of the last dispatch run.",
            report.duration_seconds,
        ),
        gauge(
            "notifyctl_dispatch_last_run_timestamp_seconds",
            "When the last dispatch run finished (unix time).",
            now.timestamp(),
        ),
        gauge(
            LAST_SUCCESS,
            "When a dispatch run last succeeded (unix time; 0: never).",
            last_success or 0.0,
        ),
        gauge(
            "notifyctl_dispatch_exit_code",
            "Exit code of the last dispatch run.",
            report.exit_code,
        ),
    ]

    class _Families:
        def collect(self) -> list[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    write_to_textfile(str(path), registry)


def export_metrics(store: Store, path: Path, report: RunReport) -> bool:
    """Read the queue and write the metrics file; a failure is a warning, never the run's."""
    from .stats import queue_state

    try:
        write_metrics_file(path, report, queue_state(store), store.clock())
    except Exception as e:  # metrics must never fail the run
        log.warning(
            "metrics file %s not written: %s",
            path,
            redact(f"{type(e).__name__}: {e}"),
            extra={"action": "metrics_failed"},
        )
        return False
    return True


def export_failed_run(path: Path, exit_code: int, duration: float, now: datetime) -> bool:
    """The metrics of a run that failed before it had a report (store down, not migrated)."""
    from .runs import RunReport

    report = RunReport(exit_code=exit_code, duration_seconds=duration)
    try:
        write_metrics_file(path, report, None, now)
    except Exception as e:  # metrics must never hide the run's own error
        log.warning(
            "metrics file %s not written: %s",
            path,
            redact(f"{type(e).__name__}: {e}"),
            extra={"action": "metrics_failed"},
        )
        return False
    return True
