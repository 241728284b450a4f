"""``/metrics``: Prometheus text computed at scrape time from the ledger, the broker and Redis.

Several processes on several machines make up the bridge, so nothing here lives in the memory of the
web process: tasks by state and kind, in-flight ages and queue depths are read from PostgreSQL and
the broker on each scrape; counters that only a process can know (events published, reconciliation
outcomes, ...) are read from the Redis hashes of ``bridge_project.metrics``.

The accept-to-final latency histogram is folded incrementally: each scrape adds the tasks that
became final since the last fold (``TradeTask.finished_at``, the time of the final ``TaskTransition``,
index ``task_finished``) to cumulative buckets kept in Redis, so a scrape never rescans a million
tasks. Tasks are folded once their ``finished_at`` is ``BRIDGE_METRICS_SETTLE_SECONDS`` old, so a
transaction still committing (or a worker clock slightly behind) is not skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bridge_project import metrics as counters
from ops import selectors as ops
from sessions.models import BridgeSession
from streams import conf as streams_conf
from streams.keys import FANOUT_STREAM
from trading.models import TradeTask, UnownedOrder

logger = logging.getLogger("bridge.ops.metrics")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LATENCY_KEY = f"{counters.KEY_PREFIX}:latency"
LATENCY_LOCK = f"{counters.KEY_PREFIX}:latency:lock"
FINISHED_FIELD = "finished"  # "finished#<state>#<kind>": tasks that reached that final state (counter)


def settle_seconds() -> float:
    return float(getattr(settings, "BRIDGE_METRICS_SETTLE_SECONDS", 10.0))


def fold_latency(now: datetime | None = None) -> bool:
    """Add tasks finished since the last fold to the Redis histogram; False if another scrape holds
    the fold (it will be folded there) or Redis is unreachable."""
    r = counters.client()
    now = now or timezone.now()
    try:
        if not r.set(LATENCY_LOCK, "1", nx=True, ex=60):
            return False
        try:
            raw = r.hget(LATENCY_KEY, "watermark")
            since = datetime.fromtimestamp(float(raw), tz=UTC) if raw else None
            until = now - timedelta(seconds=settle_seconds())
            if since is not None and until <= since:
                return True
            window = TradeTask.objects.filter(finished_at__isnull=False, finished_at__lte=until)
            if since is not None:
                window = window.filter(finished_at__gt=since)
            latency = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
            buckets = {
                f"le{i}": Count("id", filter=Q(latency__lte=timedelta(seconds=b)))
                for i, b in enumerate(LATENCY_BUCKETS)
            }
            rows = (
                window.annotate(latency=latency)
                .values("kind", "state")
                .annotate(n=Count("id"), total=Sum("latency"), **buckets)
                .order_by()
            )
            pipe = r.pipeline(transaction=True)
            for row in rows:
                kind = row["kind"]
                for i, bound in enumerate(LATENCY_BUCKETS):
                    if row[f"le{i}"]:
                        pipe.hincrby(LATENCY_KEY, f"{kind}#{bound}", row[f"le{i}"])
                pipe.hincrby(LATENCY_KEY, f"{kind}#count", row["n"])
                pipe.hincrby(LATENCY_KEY, f"{FINISHED_FIELD}#{row['state']}#{kind}", row["n"])
                total = row["total"]
                seconds = total.total_seconds() if isinstance(total, timedelta) else float(total or 0) / 1e6
                pipe.hincrbyfloat(LATENCY_KEY, f"{kind}#sum", seconds)
            pipe.hset(LATENCY_KEY, "watermark", repr(until.timestamp()))
            pipe.execute()
            return True
        finally:
            r.delete(LATENCY_LOCK)
    except redis.RedisError as exc:
        logger.warning("latency histogram not folded: %s", exc)
        return False


def _histogram_family(
    name: str, doc: str, label_names: list[str], data: dict[tuple[str, ...], dict[str, float]],
    bounds: tuple[float, ...],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=label_names)
    for labels, parts in sorted(data.items()):
        cumulative = [(_bound(b), parts.get(repr(b), parts.get(str(b), 0.0))) for b in bounds]
        cumulative.append(("+Inf", parts.get("count", 0.0)))
        family.add_metric(list(labels), cumulative, parts.get("sum", 0.0))
    return family


def _bound(value: float) -> str:
    return repr(float(value))


class BridgeCollector(Collector):
    """Everything ``/metrics`` shows, computed at scrape time."""

    def collect(self) -> Iterator:
        now = timezone.now()
        yield from self._tasks()
        yield from self._terminals(now)
        yield from self._sessions()
        yield from self._orphans()
        yield from self._latency(now)
        yield from self._events()
        yield from self._counters()

    def _tasks(self) -> Iterator:
        """In-flight tasks by state and kind (a gauge: one index range on (state, created_at), small).
        Final states only grow, so they are a counter folded with the latency histogram below instead
        of a GROUP BY over the whole ledger at every scrape."""
        family = GaugeMetricFamily("bridge_tasks", "Tasks not yet final, by state and kind", labels=["state", "kind"])
        rows = (TradeTask.objects.filter(state__in=ops.IN_FLIGHT_STATES).values("state", "kind")
                .annotate(n=Count("id")).order_by("state", "kind"))
        for row in rows:
            family.add_metric([row["state"], row["kind"]], row["n"])
        yield family

    def _terminals(self, now: datetime) -> Iterator:
        statuses = ops.terminal_statuses(now)
        up = GaugeMetricFamily("bridge_worker_up", "1 when the terminal's pinned worker heartbeats", labels=["terminal"])
        age = GaugeMetricFamily(
            "bridge_worker_heartbeat_age_seconds", "Seconds since the pinned worker's last heartbeat",
            labels=["terminal"],
        )
        depth = GaugeMetricFamily(
            "bridge_queue_depth", "Messages waiting in the terminal's Celery queue (broker)", labels=["terminal"]
        )
        queued = GaugeMetricFamily("bridge_queued_tasks", "Tasks queued in the ledger", labels=["terminal"])
        oldest = GaugeMetricFamily(
            "bridge_oldest_queued_task_age_seconds", "Age of the oldest queued task (0 when none)",
            labels=["terminal"],
        )
        bound = GaugeMetricFamily("bridge_terminal_session_bound", "1 when a live session holds the terminal",
                                  labels=["terminal"])
        for s in statuses:
            if not s.enabled:
                continue
            up.add_metric([s.name], 1 if s.worker_alive else 0)
            if s.worker_heartbeat_age is not None:
                age.add_metric([s.name], s.worker_heartbeat_age)
            if s.queue_depth is not None:
                depth.add_metric([s.name], s.queue_depth)
            queued.add_metric([s.name], s.queued_tasks)
            oldest.add_metric([s.name], s.oldest_queued_age or 0.0)
            bound.add_metric([s.name], 1 if s.session else 0)
        yield from (up, age, depth, queued, oldest, bound)

    def _sessions(self) -> Iterator:
        family = GaugeMetricFamily("bridge_sessions", "Bridge sessions by status", labels=["status"])
        for row in BridgeSession.objects.values("status").annotate(n=Count("id")).order_by("status"):
            family.add_metric([row["status"]], row["n"])
        yield family

    def _orphans(self) -> Iterator:
        """Bridge-tagged broker orders no task owns, as recorded by reconciliation."""
        family = GaugeMetricFamily(
            "bridge_orphan_broker_orders", "Bridge-tagged orders/deals at a terminal that no task owns",
            labels=["terminal"],
        )
        for row in UnownedOrder.objects.values("terminal__name").annotate(n=Count("id")).order_by():
            family.add_metric([row["terminal__name"]], row["n"])
        yield family

    def _latency(self, now: datetime) -> Iterator:
        fold_latency(now)
        data: dict[tuple[str, ...], dict[str, float]] = {}
        try:
            raw = counters.client().hgetall(LATENCY_KEY)
        except redis.RedisError:
            return
        finished = CounterMetricFamily(
            "bridge_tasks_finished", "Tasks that reached a final state, by state and kind", labels=["state", "kind"]
        )
        for field, value in sorted(raw.items()):
            key = field.decode()
            if key == "watermark":
                continue
            if key.startswith(f"{FINISHED_FIELD}#"):
                _, state, kind = key.split("#", 2)
                finished.add_metric([state, kind], float(value))
                continue
            kind, _, part = key.rpartition("#")
            data.setdefault((kind,), {})[part] = float(value)
        yield finished
        yield _histogram_family(
            "bridge_task_accept_to_final_seconds",
            "Seconds from a task's acceptance to its final state (from the ledger's transitions)",
            ["kind"], data, LATENCY_BUCKETS,
        )

    def _events(self) -> Iterator:
        """Every event handed to the /events stream goes through one Redis stream (the fan-out the relays
        read); Redis counts the entries ever added to it, trimming or not: no publisher call needed."""
        family = CounterMetricFamily("bridge_events_published", "Events published to session streams (all channels)")
        try:
            info = counters.client_for(streams_conf.redis_url()).xinfo_stream(FANOUT_STREAM)
            family.add_metric([], float(info.get("entries-added", info.get("length", 0))))
        except redis.ResponseError:
            family.add_metric([], 0.0)  # no event published yet: the stream does not exist
        except redis.RedisError as exc:
            logger.warning("event count unavailable: %s", exc)
            return
        yield family

    def _counters(self) -> Iterator:
        try:
            for name, spec in counters.COUNTERS.items():
                family = CounterMetricFamily(name, spec.help, labels=list(spec.labels))
                for labels, value in sorted(counters.read_counter(name).items()):
                    family.add_metric(list(labels), value)
                yield family
            for name, spec in counters.HISTOGRAMS.items():
                yield _histogram_family(name, spec.help, list(spec.labels), counters.read_histogram(name), spec.buckets)
        except redis.RedisError as exc:
            logger.warning("process counters unavailable: %s", exc)


_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    global _registry
    if _registry is None:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(BridgeCollector())
        _registry = reg
    return _registry


def render() -> bytes:
    """The Prometheus text exposition of everything above."""
    return generate_latest(registry())

