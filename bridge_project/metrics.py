"""Counters any bridge process can increment, kept in Redis so ``/metrics`` sees every process.

The bridge runs as many processes on several machines (web, beat, one pinned worker, reader and
poller per terminal, Windows VMs): an in-process ``prometheus_client`` counter in a worker would never
reach the web process that serves ``/metrics``. So what only happens in a process (an event
published, a reconciliation outcome, a request served) is counted here, in one Redis hash per metric;
``ops.metrics`` reads the hashes at scrape time. What can be computed from the database or
Redis (tasks by state, queue depths, latency, events published: the event fan-out stream counts its
own entries) is computed there instead and needs no call.

Calling these never raises and costs one pipelined Redis round trip: metrics must not break or slow
the caller. While Redis cannot be reached, increments are kept in the process (a few fields: bounded by
the label sets) and added with the next call that reaches Redis again; for ``HOLD_OFF_SECONDS`` after
a failure no call even tries, so an outage costs callers no connection attempts. A process that exits
during the outage loses what it held. Callers::

    from bridge_project import metrics
    metrics.reconciliation_outcome("filled")          # trading reconciliation, once per decided task
    metrics.broker_order_orphaned("sim-1")            # reconciliation, once per new unowned order
    metrics.observe("bridge_http_request_seconds", 0.012, method="GET", route="orders")
    metrics.redis_unavailable("throttle")            # a request let through unthrottled: Redis down
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import redis
from django.conf import settings

logger = logging.getLogger("bridge.metrics")

KEY_PREFIX = "bridge:metrics"
_LABEL_VALUE_RE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()  # histograms only


COUNTERS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "bridge_reconciliation_outcomes",
            "Tasks decided by reconciliation, by the state they were given (or 'unchanged')",
            ("outcome",),
        ),
        MetricSpec(
            "bridge_broker_orders_orphaned",
            "Bridge-tagged broker orders/deals found that no task owns, by terminal",
            ("terminal",),
        ),
        MetricSpec("bridge_tasks_republished", "Tasks re-published to their terminal queue, by reason", ("reason",)),
        MetricSpec(
            "bridge_redis_unavailable",
            "Times a bridge process could not reach Redis and degraded instead of failing, by where "
            "(throttle: request let through unthrottled; request: answered 503 Unavailable; publish: task "
            "left to the outbox sweeper; login: session left opening; sweeper: sweep of a terminal skipped)",
            ("where",),
        ),
    )
}

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HISTOGRAMS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "bridge_http_request_seconds",
            "Time to answer a client API request, by method and status class",
            ("method", "status"),
            LATENCY_BUCKETS,
        ),
    )
}


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def client() -> redis.Redis:
    """The Redis holding the metric hashes (the bridge's own Redis)."""
    return _client(settings.REDIS_URL)


def client_for(url: str) -> redis.Redis:
    """A short-timeout client for another Redis URL (scrape-time reads)."""
    return _client(url)


def counter_key(name: str) -> str:
    return f"{KEY_PREFIX}:c:{name}"


def histogram_key(name: str) -> str:
    return f"{KEY_PREFIX}:h:{name}"


def clean_label(value: object) -> str:
    """Label values are kept short and plain so a bad caller cannot explode cardinality or the key."""
    return _LABEL_VALUE_RE.sub("_", str(value))[:64] or "_"


def label_field(spec: MetricSpec, labels: dict[str, object]) -> str:
    """The hash field of one label set: values joined by '|' in the spec's label order."""
    unknown = set(labels) - set(spec.labels)
    if unknown:
        raise ValueError(f"{spec.name}: unknown labels {sorted(unknown)}")
    return "|".join(clean_label(labels.get(name, "")) for name in spec.labels)


# Seconds after a failed write during which no metric call tries Redis (the increments are held).
HOLD_OFF_SECONDS = 1.0

# (key, field, integer?) -> amount not yet written: the process's increments while Redis was away.
_held: dict[tuple[str, str, bool], float] = {}
_held_lock = threading.Lock()
_down_until = 0.0


def _write(increments: list[tuple[str, str, bool, float]]) -> None:
    """Apply increments (with any held ones) in one pipelined round trip; hold them on failure."""
    global _down_until
    with _held_lock:
        for key, field, integer, amount in increments:
            _held[(key, field, integer)] = _held.get((key, field, integer), 0) + amount
        if time.monotonic() < _down_until:
            return
        batch = dict(_held)
        _held.clear()
    try:
        pipe = client().pipeline(transaction=False)
        for (key, field, integer), amount in batch.items():
            if integer:
                pipe.hincrby(key, field, int(amount))
            else:
                pipe.hincrbyfloat(key, field, amount)
        pipe.execute()
    except redis.RedisError as exc:
        # A pipeline that failed mid-way may have applied part of the batch; over-counting a few
        # increments once beats losing the outage's counts.
        logger.debug("metrics held until Redis is back: %s", exc)
        with _held_lock:
            for slot, amount in batch.items():
                _held[slot] = _held.get(slot, 0) + amount
            _down_until = time.monotonic() + HOLD_OFF_SECONDS


def inc(name: str, amount: float = 1, **labels: object) -> None:
    """Add ``amount`` to counter ``name`` for these labels (never raises on Redis trouble)."""
    spec = COUNTERS[name]
    _write([(counter_key(name), label_field(spec, labels), False, amount)])


def observe(name: str, value: float, **labels: object) -> None:
    """Record one observation in histogram ``name`` (cumulative buckets, sum and count)."""
    spec = HISTOGRAMS[name]
    field = label_field(spec, labels)
    key = histogram_key(name)
    increments = [(key, f"{field}#{bound}", True, 1) for bound in spec.buckets if value <= bound]
    increments.append((key, f"{field}#count", True, 1))
    increments.append((key, f"{field}#sum", False, value))
    _write(increments)


# (key, field, integer?) -> amount: what observe_buffered kept since the last flush.
_buffer: dict[tuple[str, str, bool], float] = {}
_buffer_lock = threading.Lock()
_flusher: threading.Thread | None = None
BUFFER_SECONDS = 1.0


def observe_buffered(name: str, value: float, **labels: object) -> None:
    """``observe`` for a hot path (an event loop): added up in this process and written by a background
    thread once per ``BUFFER_SECONDS``, one round trip for every call of that second."""
    global _flusher
    spec = HISTOGRAMS[name]
    field = label_field(spec, labels)
    key = histogram_key(name)
    with _buffer_lock:
        for bound in spec.buckets:
            if value <= bound:
                slot = (key, f"{field}#{bound}", True)
                _buffer[slot] = _buffer.get(slot, 0) + 1
        slot = (key, f"{field}#count", True)
        _buffer[slot] = _buffer.get(slot, 0) + 1
        slot = (key, f"{field}#sum", False)
        _buffer[slot] = _buffer.get(slot, 0) + value
        if _flusher is None:
            _flusher = threading.Thread(target=_flush_forever, name="metrics-flush", daemon=True)
            _flusher.start()


def flush_buffered() -> None:
    """Write what ``observe_buffered`` kept (the flusher thread; tests)."""
    with _buffer_lock:
        batch = [(key, field, integer, amount) for (key, field, integer), amount in _buffer.items()]
        _buffer.clear()
    if batch:
        _write(batch)


def _flush_forever() -> None:
    while True:
        time.sleep(BUFFER_SECONDS)
        flush_buffered()


# -- the calls other parts of the bridge make ---------------------------------------------------------
def reconciliation_outcome(outcome: str) -> None:
    """Reconciliation decided a task: ``outcome`` is the state it gave it, or ``unchanged``."""
    inc("bridge_reconciliation_outcomes", 1, outcome=outcome)


def broker_order_orphaned(terminal: str, count: int = 1) -> None:
    """Reconciliation found a bridge-tagged order/deal at ``terminal`` that no task owns."""
    inc("bridge_broker_orders_orphaned", count, terminal=terminal)


def task_republished(reason: str, count: int = 1) -> None:
    """A task was published again to its terminal queue (``sweeper``, ``admin``)."""
    inc("bridge_tasks_republished", count, reason=reason)


def redis_unavailable(where: str) -> None:
    """A process met an unreachable Redis and degraded (``throttle``, ``request``, ``publish``, ``login``,
    ``sweeper``); counted once Redis is back (see the module docstring)."""
    inc("bridge_redis_unavailable", 1, where=where)


# -- reading (scrape time) ----------------------------------------------------------------------------
def read_counter(name: str) -> dict[tuple[str, ...], float]:
    """Every label set of counter ``name`` and its value (empty when Redis is unreachable)."""
    spec = COUNTERS[name]
    raw = client().hgetall(counter_key(name))
    return {_split(spec, field.decode()): float(value) for field, value in raw.items()}


def read_histogram(name: str) -> dict[tuple[str, ...], dict[str, float]]:
    """Per label set: ``{"<bound>": cumulative count, ..., "count": n, "sum": s}``."""
    spec = HISTOGRAMS[name]
    result: dict[tuple[str, ...], dict[str, float]] = {}
    for field, value in client().hgetall(histogram_key(name)).items():
        labels, _, part = field.decode().rpartition("#")
        result.setdefault(_split(spec, labels), {})[part] = float(value)
    return result


def _split(spec: MetricSpec, field: str) -> tuple[str, ...]:
    values = tuple(field.split("|"))
    return values if len(values) == len(spec.labels) else tuple("_" for _ in spec.labels)
