"""What the staff dashboard (``/ops/``) shows: each terminal now, and the last hour in charts.

One call, ``dashboard_data``, answers the page's poll (``/ops/data``), so it must stay cheap on a ledger
of millions of tasks. Every query is bounded by an index range:

* terminals: ``ops.selectors.terminal_statuses`` (queued tasks on ``(state, created_at)``, the live
  sessions, one broker round trip) plus the ``unknown`` tasks per terminal (``(state, created_at)``);
* latency and outcomes: tasks finished in the last hour (``finished_at``, index ``task_finished``),
  grouped per minute in the database. On PostgreSQL the p50/p99 are exact (``percentile_cont``) and
  computed there; elsewhere (the embedded SQLite) the hour's rows are read and the same
  interpolated percentile is computed here;
* queue depth and events/s: the samples of ``ops.sampling`` (one Redis read).

Latency is accept → final: ``finished_at - created_at`` of every task that reached a final state in the
minute, the same figure as the ``bridge_task_accept_to_final_seconds`` histogram of ``/metrics``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Aggregate, Count, DurationField, ExpressionWrapper, F, FloatField, QuerySet
from django.db.models.functions import TruncMinute
from django.utils import timezone

from ops import sampling, selectors as ops
from trading.models import FINAL_STATES, TaskState, TradeTask

MINUTES = 60
FINAL_STATE_NAMES = [s.value for s in FINAL_STATES]


def refresh_seconds() -> float:
    """How often the page polls ``/ops/data`` (``BRIDGE_OPS_DASHBOARD_REFRESH``)."""
    return float(getattr(settings, "BRIDGE_OPS_DASHBOARD_REFRESH", 5.0))


class _Percentile(Aggregate):
    """PostgreSQL's ``percentile_cont(f) WITHIN GROUP (ORDER BY seconds)``: linear interpolation."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM %(expressions)s))"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float) -> None:
        super().__init__(expression, fraction=repr(float(fraction)))


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The interpolated percentile of ascending values, as ``percentile_cont`` computes it."""
    position = fraction * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def _finished_in(start: datetime, now: datetime) -> QuerySet[TradeTask]:
    return TradeTask.objects.filter(finished_at__gte=start, finished_at__lte=now, state__in=FINAL_STATES)


def _latency_and_outcomes_sql(start: datetime, now: datetime) -> tuple[dict, dict]:
    """Per minute: (count, p50, p99) and {state: count}, aggregated by PostgreSQL."""
    latency = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    window = _finished_in(start, now).annotate(minute=TruncMinute("finished_at"), latency=latency)
    quantiles = {
        row["minute"]: (row["n"], row["p50"], row["p99"])
        for row in window.values("minute").annotate(
            n=Count("id"), p50=_Percentile("latency", 0.5), p99=_Percentile("latency", 0.99)
        ).order_by()
    }
    outcomes: dict[datetime, dict[str, int]] = {}
    for row in window.values("minute", "state").annotate(n=Count("id")).order_by():
        outcomes.setdefault(row["minute"], {})[row["state"]] = row["n"]
    return quantiles, outcomes


def latency_and_outcomes_python(start: datetime, now: datetime) -> tuple[dict, dict]:
    """The same figures from the hour's rows (databases without ``percentile_cont``)."""
    latencies: dict[datetime, list[float]] = {}
    outcomes: dict[datetime, dict[str, int]] = {}
    for finished, created, state in _finished_in(start, now).values_list("finished_at", "created_at", "state"):
        minute = _minute(finished)
        latencies.setdefault(minute, []).append((finished - created).total_seconds())
        outcomes.setdefault(minute, {})
        outcomes[minute][state] = outcomes[minute].get(state, 0) + 1
    quantiles = {}
    for minute, values in latencies.items():
        values.sort()
        quantiles[minute] = (len(values), percentile(values, 0.5), percentile(values, 0.99))
    return quantiles, outcomes


def task_series(now: datetime) -> dict[str, Any]:
    """The last hour of finished tasks, per minute (the current, partial minute last)."""
    first = _minute(now) - timedelta(minutes=MINUTES - 1)
    if connection.vendor == "postgresql":
        quantiles, outcomes = _latency_and_outcomes_sql(first, now)
    else:
        quantiles, outcomes = latency_and_outcomes_python(first, now)
    minutes = [first + timedelta(minutes=i) for i in range(MINUTES)]
    p50, p99 = [], []
    for minute in minutes:
        if minute in quantiles:
            _, q50, q99 = quantiles[minute]
            t = minute.timestamp()
            p50.append([t, round(q50, 4)])
            p99.append([t, round(q99, 4)])
    by_state = {state: [outcomes.get(m, {}).get(state, 0) for m in minutes] for state in FINAL_STATE_NAMES}
    return {
        "minutes": [m.timestamp() for m in minutes],
        "latency": {"p50": p50, "p99": p99},
        "finalStates": {state: counts for state, counts in by_state.items() if any(counts)},
    }


def _terminal_json(status: ops.TerminalStatus, unknown: int) -> dict[str, Any]:
    session = status.session
    return {
        "name": status.name,
        "backend": status.backend,
        "enabled": status.enabled,
        "workerAlive": status.worker_alive,
        "heartbeatAge": status.worker_heartbeat_age,
        "account": (
            {key: session[key] for key in ("accountId", "login", "server", "workspace", "status", "paused")}
            if session else None
        ),
        "boundLogin": status.binding["login"] if status.binding else None,
        "queueDepth": status.queue_depth,
        "queuedTasks": status.queued_tasks,
        "oldestQueuedTaskAge": status.oldest_queued_age,
        "unknownTasks": unknown,
    }


def _unknown_per_terminal() -> QuerySet:
    """``unknown`` tasks counted per terminal name (an index range on ``state``: few rows)."""
    return (TradeTask.objects.filter(state=TaskState.UNKNOWN)
            .values("terminal__name").annotate(n=Count("id")).order_by())


def terminals(now: datetime) -> list[dict[str, Any]]:
    """Each terminal's row of the table: worker, account, queue, oldest queued task, unknown tasks."""
    unknown = {row["terminal__name"]: row["n"] for row in _unknown_per_terminal()}
    return [_terminal_json(s, unknown.get(s.name, 0)) for s in ops.terminal_statuses(now)]


def dashboard_data(now: datetime | None = None) -> dict[str, Any]:
    """Everything the page draws, as of ``now``."""
    now = now or timezone.now()
    since = now.timestamp() - sampling.WINDOW_SECONDS
    samples = sampling.recent_samples(since)
    last_sample = samples[-1]["t"] if samples else None
    return {
        "asOf": round(now.timestamp(), 3),
        "windowSeconds": sampling.WINDOW_SECONDS,
        "refreshSeconds": refresh_seconds(),
        "terminals": terminals(now),
        "tasks": task_series(now),
        "queueDepth": sampling.queue_depth_series(samples),
        "eventsPerSecond": sampling.events_rate_series(samples),
        "sampling": {
            "intervalSeconds": sampling.sample_interval(),
            "samples": len(samples),
            "lastSampleAge": round(now.timestamp() - last_sample, 3) if last_sample is not None else None,
        },
    }
