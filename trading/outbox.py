"""Publishing tasks to their terminal's queue: after commit, and again by the sweeper (outbox).

The task row is the outbox: a task is published once its insert committed; if that publish is lost
(a crash between commit and publish, Redis down or restarted and its queue gone) the task stays
``queued`` and the sweeper (beat, on the maintenance worker) publishes it again once it is older
than BRIDGE_OUTBOX_REPUBLISH_AFTER. A task published twice is harmless: only one delivery can
claim it (``queued → dispatched`` is conditional).

The sweeper re-publishes only where it helps (docs/operations.md "Outbox sweeper"):

* only to a terminal whose pinned worker is alive (``Terminal.worker_alive``): a dead worker's queue
  would just pile up copies that all arrive at once when it comes back; the task is re-published
  at the first sweep after its worker is alive again (if its message is gone by then);
* only when the terminal's queue does not already hold a message for the task: the Celery queue in
  the broker (``terminal.<name>`` and kombu's priority lists) and kombu's ``unacked`` hash
  (delivered to a worker, not yet acknowledged) are read in one MULTI/EXEC and every
  ``trading.execute`` message is decoded for its task id. An unacked delivery counts as held only
  while it is younger than BRIDGE_OUTBOX_DELIVERY_GRACE (kombu's ``unacked_index`` has its time): a
  live pinned worker claims a task within milliseconds of receiving it (prefetch 1), so a task still
  ``queued`` behind an older delivery was received by a worker that died before its claim, and
  waiting for kombu to restore it after the visibility timeout (300 s) would hold a market order for
  minutes (found by bench/chaos.py). The broker is read, never trusted from the ledger: a Redis restart without persistence loses
  the queue and everything in it is re-published.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from bridge_project import metrics
from bridge_project.celery import app, terminal_queue

from .models import TaskState, TradeTask
from .states import task_change

logger = logging.getLogger("bridge.trading.outbox")

# Publishing must fail fast when Redis is away: the sweeper retries, the client is not held.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}

EXECUTE_TASK_NAME = "trading.execute"  # workers.tasks.execute_task: sent by name (no import of the task module)
# kombu's Redis transport: a queue with priorities is the queue's own list (priority 0) plus
# "<queue>\x06\x16<step>" lists; delivered-but-unacked messages wait in one hash for every queue.
KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_UNACKED_KEY = "unacked"
KOMBU_UNACKED_INDEX_KEY = "unacked_index"  # delivery tag -> unix time of the delivery


# -- the lean publish ---------------------------------------------------------------------------------
# ``app.send_task`` costs more than the rest of an accepted POST /orders together (amqp message build,
# producer pool, queue declare, kombu channel): the web tier writes the very message it would write
# (Celery protocol 2, kombu's Redis envelope, priority 0: the queue's own list) with one LPUSH, and all
# the tasks of a batch in one pipelined round trip. A broker other than Redis takes the kombu path.
PUBLISH_ATTEMPTS = 3  # the fail-fast retry of PUBLISH_RETRY_POLICY: 3 tries within about half a second
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def execute_message(task_id: str, queue: str) -> bytes:
    """The broker entry of ``send_task("trading.execute", args=[task_id], queue=queue)``: the same JSON
    envelope, headers and properties kombu writes (checked by tests/orders/test_lean_publish.py)."""
    message_id = str(uuid.uuid4())
    body = json.dumps([[task_id], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": EXECUTE_TASK_NAME, "id": message_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
            "root_id": message_id, "parent_id": None, "argsrepr": repr([task_id]), "kwargsrepr": "{}",
            "origin": _ORIGIN, "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": message_id, "reply_to": str(app.thread_oid), "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


def _lpush_all(client: redis.Redis, tasks: list[tuple[str, str]]) -> None:
    """One pipelined round trip: each task's message pushed to its terminal's queue (fail fast, retried
    as PUBLISH_RETRY_POLICY retries the kombu publish)."""
    for attempt in range(PUBLISH_ATTEMPTS):
        pipe = client.pipeline(transaction=False)
        for task_id, terminal_name in tasks:
            queue = terminal_queue(terminal_name)
            pipe.lpush(queue, execute_message(task_id, queue))
        try:
            pipe.execute()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if attempt == PUBLISH_ATTEMPTS - 1:
                raise
            time.sleep(PUBLISH_RETRY_POLICY["interval_start"] + attempt * PUBLISH_RETRY_POLICY["interval_step"])


def _send(tasks: list[tuple[str, str]]) -> None:
    client = broker_client()
    if client is None:  # not a Redis broker: kombu's own publish
        for task_id, terminal_name in tasks:
            app.send_task(EXECUTE_TASK_NAME, args=[task_id], queue=terminal_queue(terminal_name),
                          retry=True, retry_policy=PUBLISH_RETRY_POLICY)
        return
    _lpush_all(client, tasks)


def publish_tasks(tasks: Iterable[tuple[str, str]]) -> bool:
    """Publish new tasks (``(task_id, terminal_name)``, ``published_at`` stamped at insert) after their
    commit, in one round trip; True when the broker took them. Never raises: on failure each one's
    ``published_at`` is cleared, exactly as ``publish_task(..., stamped=True)`` does, for the sweeper."""
    tasks = list(tasks)
    if not tasks:
        return True
    try:
        _send(tasks)
    except Exception:  # the sweeper re-publishes; the accepted writes stand
        logger.warning("publishing %d task(s) failed; the outbox sweeper will retry", len(tasks), exc_info=True)
        metrics.redis_unavailable("publish")
        for task_id, _ in tasks:
            try:
                task_change(task_id=task_id, from_states=[TaskState.QUEUED], fields={"published_at": None},
                            change="publish_failed")
            except Exception:  # the insert time then stands as the last publish: swept later
                logger.exception("clearing published_at of task %s failed", task_id)
        return False
    return True


def publish_task(task_id: str, terminal_name: str, *, stamped: bool = False) -> bool:
    """Send the task id to ``terminal.<name>``; True when the broker took it. Never raises.

    ``published_at`` is the time of the last publish (the sweeper's clock). A new task is inserted
    with it already set (``stamped``: its first publish follows its commit), which saves an UPDATE
    and a commit per write; if that publish fails it is cleared again, exactly as if never published.
    A crash between commit and publish leaves it set to the insert time: the sweeper then re-publishes
    once that is older than BRIDGE_OUTBOX_REPUBLISH_AFTER, as it would for a NULL (``created_at`` is
    the same instant).
    """
    try:
        _send([(task_id, terminal_name)])
    except Exception:  # the sweeper re-publishes; the accepted write stands
        logger.warning("publishing task %s to %s failed; the outbox sweeper will retry", task_id, terminal_name,
                       exc_info=True)
        metrics.redis_unavailable("publish")
        try:
            if stamped:
                task_change(task_id=task_id, from_states=[TaskState.QUEUED], fields={"published_at": None},
                            change="publish_failed")
        except Exception:  # the insert time then stands as the last publish: swept later
            logger.exception("clearing published_at of task %s failed", task_id)
        return False
    if not stamped:
        try:
            task_change(task_id=task_id, from_states=[TaskState.QUEUED], fields={"published_at": timezone.now()},
                        change="published")
        except Exception:  # the insert time then stands as the last publish: swept later
            logger.exception("stamping published_at of task %s failed", task_id)
    return True


# -- what the broker holds ------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _broker_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1)


def broker_client() -> redis.Redis | None:
    """A Redis client on the Celery broker (where the messages really are); None for another broker."""
    url = str(app.conf.broker_url or "").split(";")[0]
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return _broker_client(url)


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of one Celery queue (kombu's default priority steps)."""
    return [queue if step == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{step}" for step in KOMBU_PRIORITY_STEPS]


def _args_of(message: dict[str, Any]) -> list[Any] | None:
    """The positional args of a ``trading.execute`` Celery message (protocol 2 or 1), else None."""
    headers = message.get("headers") or {}
    body = message.get("body")
    if isinstance(body, str) and (message.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    decoded = json.loads(body) if isinstance(body, bytes | str) else body
    if headers.get("task") == EXECUTE_TASK_NAME:  # protocol 2: body = [args, kwargs, embed]
        return list(decoded[0]) if isinstance(decoded, list) and decoded else None
    if isinstance(decoded, dict) and decoded.get("task") == EXECUTE_TASK_NAME:  # protocol 1
        return list(decoded.get("args") or [])
    return None


def task_id_of(raw: bytes | str) -> str | None:
    """The ledger task id a queued Celery message (kombu's JSON envelope) carries, if it is one."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an ``unacked`` entry: [message, exchange, routing_key]
            message = message[0]
        args = _args_of(message)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return str(args[0]) if args else None


def held_task_ids(terminal_names: list[str], fresh_seconds: float | None = None) -> dict[str, set[str]]:
    """Task ids with a message in each terminal's queue, or delivered (unacked) within the last
    ``fresh_seconds`` (default BRIDGE_OUTBOX_DELIVERY_GRACE), in one atomic read.

    Raises ``redis.RedisError`` when the broker cannot be read.
    """
    client = broker_client()
    if client is None:
        return {name: set() for name in terminal_names}
    fresh = settings.BRIDGE_OUTBOX_DELIVERY_GRACE if fresh_seconds is None else fresh_seconds
    pipe = client.pipeline(transaction=True)
    for name in terminal_names:
        for key in queue_keys(terminal_queue(name)):
            pipe.lrange(key, 0, -1)
    pipe.time()
    pipe.zrangebyscore(KOMBU_UNACKED_INDEX_KEY, "-inf", "+inf", withscores=True)
    pipe.hgetall(KOMBU_UNACKED_KEY)
    replies = pipe.execute()
    seconds, micros = replies[-3]
    since = seconds + micros / 1e6 - fresh  # kombu stamps deliveries with the worker's clock: allow it
    recent = {tag for tag, at in replies[-2] if at >= since}
    unacked = {task_id for tag, message in replies[-1].items() if tag in recent
               for task_id in [task_id_of(message)] if task_id}
    replies = replies[:-3]
    steps = len(KOMBU_PRIORITY_STEPS)
    held: dict[str, set[str]] = {}
    for i, name in enumerate(terminal_names):
        ids = {task_id for reply in replies[i * steps:(i + 1) * steps] for task_id in map(task_id_of, reply)}
        held[name] = {task_id for task_id in ids if task_id} | unacked
    return held


# -- the sweeper -----------------------------------------------------------------------------------------
def sweep_outbox(now=None) -> int:
    """Re-publish stale ``queued`` tasks whose message is gone, to terminals with a live worker.

    Stale: still ``queued`` and last published (or created) more than BRIDGE_OUTBOX_REPUBLISH_AFTER
    before ``now``; not of a paused session (its tasks wait; the resume publishes them). Worker liveness is judged at the real current time. Returns how many were
    re-published; never raises on a broker outage (that terminal's sweep is skipped and logged).
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BRIDGE_OUTBOX_REPUBLISH_AFTER)
    stale = list(
        TradeTask.objects.filter(state=TaskState.QUEUED, created_at__lte=cutoff)
        .filter(Q(published_at__isnull=True) | Q(published_at__lte=cutoff))
        .exclude(session__paused_at__isnull=False)  # waiting for the resume, which publishes them
        .select_related("terminal")
        .only("id", "terminal__name", "terminal__worker_heartbeat_at")
        .order_by("created_at")[:1000]
    )
    by_terminal: dict[str, list[str]] = defaultdict(list)
    dead: set[str] = set()
    alive_at = timezone.now()
    for task in stale:
        name = task.terminal.name
        if name in dead:
            continue
        if name not in by_terminal and not task.terminal.worker_alive(alive_at):
            dead.add(name)
            continue
        by_terminal[name].append(task.id)
    if dead:
        logger.info("outbox: not re-publishing to terminal(s) whose pinned worker is down: %s",
                    ", ".join(sorted(dead)))
    if not by_terminal:
        return 0
    try:
        held = held_task_ids(sorted(by_terminal))
    except redis.RedisError as exc:
        logger.warning("outbox: the broker cannot be read (%s); nothing re-published this sweep", exc)
        metrics.redis_unavailable("sweeper")
        return 0
    count = skipped = 0
    for name, task_ids in by_terminal.items():
        for task_id in task_ids:
            if task_id in held[name]:
                skipped += 1
            elif publish_task(task_id, name):
                count += 1
    if count:
        logger.info("outbox: re-published %d queued task(s)", count)
        metrics.task_republished("sweeper", count)
    if skipped:
        logger.debug("outbox: %d stale queued task(s) still have their message in the broker", skipped)
    return count
