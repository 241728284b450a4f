"""What the people running the bridge look at: terminals, their workers and queues, stuck tasks.

Shared by ``/mt5/client/ops/...``, ``/metrics`` and ``manage.py bridge_status``. Queue depth is read
from the broker itself (the Celery queue ``terminal.<name>`` in Redis), not inferred from the
database: a task can be ``queued`` in the ledger with no message (lost publish, the sweeper's job)
or a message can wait for a task already cancelled; ops needs to see both sides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Min
from django.utils import timezone

from bridge_project.celery import terminal_queue
from sessions.models import LIVE_STATUSES, BridgeSession
from terminals.models import Terminal
from terminals.services import sync_terminals
from trading.models import TaskState, TradeTask

logger = logging.getLogger("bridge.ops")

# Kombu's Redis transport keeps a queue with priorities as several lists: the queue's own name for
# priority 0 and "<name>\x06\x16<step>" for the other default steps. Depth is their sum.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
IN_FLIGHT_STATES = (TaskState.QUEUED, TaskState.DISPATCHED, TaskState.UNKNOWN)


def stuck_after() -> float:
    """Seconds after which a task not yet final counts as stuck (``BRIDGE_OPS_STUCK_AFTER``)."""
    return float(getattr(settings, "BRIDGE_OPS_STUCK_AFTER", 30.0))


@lru_cache(maxsize=4)
def _broker(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def broker() -> redis.Redis:
    return _broker(settings.CELERY_BROKER_URL)


def queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}" for step in KOMBU_PRIORITY_STEPS]


def queue_depths(queues: list[str]) -> dict[str, int | None]:
    """Messages waiting in each Celery queue (None for all when the broker cannot be reached)."""
    if not queues:
        return {}
    try:
        pipe = broker().pipeline(transaction=False)
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        lengths = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("broker unreachable for queue depths: %s", exc)
        return {queue: None for queue in queues}
    steps = len(KOMBU_PRIORITY_STEPS)
    return {queue: sum(lengths[i * steps : (i + 1) * steps]) for i, queue in enumerate(queues)}


def _ts(value: datetime | None) -> float | None:
    return round(value.timestamp(), 3) if value else None


def _age(now: datetime, value: datetime | None) -> float | None:
    return round((now - value).total_seconds(), 3) if value else None


@dataclass
class TerminalStatus:
    """One terminal as ops sees it."""

    name: str
    backend: str
    address: str
    enabled: bool
    worker_alive: bool
    worker_heartbeat_at: datetime | None
    worker_heartbeat_age: float | None
    worker_hostname: str
    queue_depth: int | None
    queued_tasks: int
    oldest_queued_at: datetime | None
    oldest_queued_age: float | None
    session: dict[str, Any] | None
    lease: dict[str, Any] | None = None
    binding: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "address": self.address,
            "enabled": self.enabled,
            "worker": {
                "alive": self.worker_alive,
                "lastHeartbeat": _ts(self.worker_heartbeat_at),
                "heartbeatAge": self.worker_heartbeat_age,
                "hostname": self.worker_hostname,
            },
            "queueDepth": self.queue_depth,
            "queuedTasks": self.queued_tasks,
            "oldestQueuedTaskAge": self.oldest_queued_age,
            "oldestQueuedTaskAt": _ts(self.oldest_queued_at),
            "session": self.session,
            "lease": self.lease,
            "binding": self.binding,
        }


def _session_json(session: BridgeSession) -> dict[str, Any]:
    return {
        "sessionId": session.id,
        "status": session.status,
        "workspace": session.workspace.name,
        "accountId": session.account_id,
        "login": session.login,
        "server": session.server,
        "lastHeartbeat": _ts(session.last_heartbeat_at),
        "expiresAt": _ts(session.expires_at),
        "paused": session.paused,
        "pausedAt": _ts(session.paused_at),
    }


def terminal_statuses(now: datetime | None = None) -> list[TerminalStatus]:
    """Every known terminal with its worker, queue and bound session: three queries and one Redis
    round trip whatever the number of terminals or tasks."""
    try:
        sync_terminals()  # a fresh database knows the configured terminals before any worker beats
    except ImproperlyConfigured as exc:
        logger.warning("terminals file unreadable, showing the database's terminals: %s", exc)
    now = now or timezone.now()
    terminals = list(Terminal.objects.order_by("-enabled", "name"))
    queued = {
        row["terminal_id"]: row
        for row in TradeTask.objects.filter(state=TaskState.QUEUED)
        .values("terminal_id")
        .annotate(count=Count("id"), oldest=Min("created_at"))
        .order_by()
    }
    sessions = {
        s.terminal_id: s
        for s in BridgeSession.objects.filter(status__in=LIVE_STATUSES).select_related("workspace")
    }
    depths = queue_depths([terminal_queue(t.name) for t in terminals])
    result = []
    for t in terminals:
        q = queued.get(t.id, {})
        session = sessions.get(t.id)
        result.append(
            TerminalStatus(
                name=t.name,
                backend=t.backend,
                address=t.address,
                enabled=t.enabled,
                worker_alive=t.worker_alive(now),
                worker_heartbeat_at=t.worker_heartbeat_at,
                worker_heartbeat_age=_age(now, t.worker_heartbeat_at),
                worker_hostname=t.worker_hostname,
                queue_depth=depths.get(terminal_queue(t.name)),
                queued_tasks=q.get("count", 0),
                oldest_queued_at=q.get("oldest"),
                oldest_queued_age=_age(now, q.get("oldest")),
                session=_session_json(session) if session else None,
                lease={"holder": t.lease_holder, "token": t.lease_token, "expiresAt": _ts(t.lease_expires_at),
                       "held": bool(t.lease_expires_at and t.lease_expires_at > now)},
                binding=({"sessionId": t.bound_session_id, "login": t.bound_login, "server": t.bound_server,
                          "since": _ts(t.bound_at)} if t.bound_session_id else None),
            )
        )
    return result


# -- tasks --------------------------------------------------------------------------------------------
MAX_TASKS = 1000


def task_json(task: TradeTask, now: datetime, stuck_seconds: float) -> dict[str, Any]:
    age = (now - task.created_at).total_seconds()
    return {
        "taskId": task.id,
        "requestId": task.request_id,
        "sessionId": task.session_id,
        "workspace": task.workspace.name,
        "terminal": task.terminal.name,
        "kind": task.kind,
        "state": task.state,
        "stuck": task.state in IN_FLIGHT_STATES and age > stuck_seconds,
        "ageSeconds": round(age, 3),
        "attempts": task.attempts,
        "orderTicket": task.order_ticket,
        "createdAt": _ts(task.created_at),
        "updatedAt": _ts(task.updated_at),
        "publishedAt": _ts(task.published_at),
        "dispatchedAt": _ts(task.dispatched_at),
        "finishedAt": _ts(task.finished_at),
    }


def tasks_for_ops(
    *,
    states: list[str] | None = None,
    older_than: float | None = None,
    terminal: str | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Tasks across every session: the in-flight ones first, oldest first (the stuck lead the list),
    then final ones, newest first. Without ``states``: in-flight tasks only (queued, dispatched,
    unknown), which is what ops looks for. Each half is one index range scan on (state, created_at).
    """
    now = now or timezone.now()
    limit = max(1, min(limit, MAX_TASKS))
    states = list(states) if states else [s.value for s in IN_FLIGHT_STATES]
    base = TradeTask.objects.select_related("workspace", "terminal")
    if older_than is not None:
        base = base.filter(created_at__lte=now - timedelta(seconds=older_than))
    if terminal:
        base = base.filter(terminal__name=terminal)
    in_flight = [s for s in states if s in IN_FLIGHT_STATES]
    final = [s for s in states if s not in IN_FLIGHT_STATES]
    rows: list[TradeTask] = []
    if in_flight:
        rows += list(base.filter(state__in=in_flight).order_by("created_at", "id")[:limit])
    if final and len(rows) < limit:
        rows += list(base.filter(state__in=final).order_by("-created_at", "-id")[: limit - len(rows)])
    stuck_seconds = stuck_after()
    return {
        "tasks": [task_json(t, now, stuck_seconds) for t in rows],
        "stuckAfter": stuck_seconds,
        "asOf": _ts(now),
    }


TASK_STATES = [s.value for s in TaskState]
