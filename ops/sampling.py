"""The dashboard's samples: what the ledger cannot say about the past hour, recorded every few seconds.

Latency and outcomes over time come from the ledger itself (``TradeTask.created_at/finished_at``), but
a queue's depth a quarter of an hour ago and the event rate are gone once they changed: nothing keeps
them. So the maintenance worker's beat (``ops.sample_dashboard``, every ``BRIDGE_OPS_SAMPLE_INTERVAL``
seconds) records one sample: the time, each enabled terminal's queue depth read from the broker, and
the number of events ever added to the event fan-out stream (Redis counts them itself, trimming or
not). Samples go to one capped Redis list (newest first, ``SAMPLES_KEPT`` of them: an hour and a bit
at the default interval), so storing and reading them costs one round trip each and never grows.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.utils import timezone

from bridge_project import metrics as counters
from bridge_project.celery import terminal_queue
from ops import selectors as ops
from streams import conf as streams_conf
from streams.keys import FANOUT_STREAM
from terminals.models import Terminal

logger = logging.getLogger("bridge.ops.sampling")

SAMPLES_KEY = f"{counters.KEY_PREFIX}:dashboard:samples"
WINDOW_SECONDS = 3600


def sample_interval() -> float:
    """Seconds between two samples (``BRIDGE_OPS_SAMPLE_INTERVAL``, the beat entry's schedule)."""
    return float(getattr(settings, "BRIDGE_OPS_SAMPLE_INTERVAL", 10.0))


def samples_kept() -> int:
    """An hour of samples at the configured interval, plus a few so the window's left edge has one."""
    return int(WINDOW_SECONDS / max(sample_interval(), 1.0)) + 6


def events_published() -> int | None:
    """Events ever added to the fan-out stream (0 before the first one; None if Redis is unreachable)."""
    try:
        info = counters.client_for(streams_conf.redis_url()).xinfo_stream(FANOUT_STREAM)
    except redis.ResponseError:
        return 0  # no event published yet: the stream does not exist
    except redis.RedisError as exc:
        logger.warning("event count unavailable: %s", exc)
        return None
    return int(info.get("entries-added", info.get("length", 0)))


def take_sample(now: datetime | None = None) -> dict[str, Any]:
    """Record one sample (returned): queue depth per enabled terminal and the events counter."""
    now = now or timezone.now()
    names = list(Terminal.objects.filter(enabled=True).order_by("name").values_list("name", flat=True))
    depths = ops.queue_depths([terminal_queue(name) for name in names])
    sample = {
        "t": round(now.timestamp(), 3),
        "depth": {name: depths.get(terminal_queue(name)) for name in names},
        "events": events_published(),
    }
    try:
        pipe = counters.client().pipeline(transaction=True)
        pipe.lpush(SAMPLES_KEY, json.dumps(sample, separators=(",", ":")))
        pipe.ltrim(SAMPLES_KEY, 0, samples_kept() - 1)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("dashboard sample not stored: %s", exc)
    return sample


def recent_samples(since: float) -> list[dict[str, Any]]:
    """Stored samples taken at or after ``since`` (a UNIX time), oldest first (empty if Redis is down)."""
    try:
        raw = counters.client().lrange(SAMPLES_KEY, 0, samples_kept() - 1)
    except redis.RedisError as exc:
        logger.warning("dashboard samples unavailable: %s", exc)
        return []
    samples = []
    for item in raw:
        try:
            sample = json.loads(item)
        except ValueError:
            continue
        if isinstance(sample, dict) and isinstance(sample.get("t"), int | float) and sample["t"] >= since:
            samples.append(sample)
    samples.sort(key=lambda s: s["t"])
    return samples


def queue_depth_series(samples: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """Per terminal, ``[[t, depth], ...]`` (samples where the broker could not be read are left out)."""
    series: dict[str, list[list[float]]] = {}
    for sample in samples:
        for name, depth in (sample.get("depth") or {}).items():
            if isinstance(depth, int):
                series.setdefault(name, []).append([sample["t"], depth])
    return dict(sorted(series.items()))


def events_rate_series(samples: list[dict[str, Any]]) -> list[list[float]]:
    """``[[t, events per second since the previous sample], ...]``. A counter that went down (Redis
    restarted empty, the stream was deleted) starts a new run: that step is left out, not negative."""
    points: list[list[float]] = []
    previous = None
    for sample in samples:
        events = sample.get("events")
        if not isinstance(events, int):
            previous = None
            continue
        if previous is not None:
            elapsed = sample["t"] - previous["t"]
            added = events - previous["events"]
            if elapsed > 0 and added >= 0:
                points.append([sample["t"], round(added / elapsed, 3)])
        previous = sample
    return points
