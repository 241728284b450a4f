"""Publishing tasks to their terminal's queue: after commit, and again by the sweeper (outbox).

The task row is the outbox: a task is published once its insert committed; if that publish is lost
(a crash between commit and publish, Redis down or restarted and its queue gone) the task stays
``queued`` and the sweeper (beat, on the maintenance worker) publishes it again once it is older
than BRIDGE_OUTBOX_REPUBLISH_AFTER. A task published twice is harmless: only one delivery can
claim it (``queued → dispatched`` is conditional).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from bridge_project.celery import terminal_queue

from .conf import conf
from .models import Task, TaskState

logger = logging.getLogger("bridge.trading.outbox")

# Publishing must fail fast when Redis is away: the sweeper retries, the client is not held.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


def publish_task(task_id: str, terminal_name: str, *, stamped: bool = False) -> bool:
    """Send the task id to ``terminal.<name>``; True when the broker took it. Never raises.

    ``published_at`` is the time of the last publish (the sweeper's clock). A new task is inserted
    with it already set (``stamped``: its first publish follows its commit), which saves an UPDATE
    and a commit per write; if that publish fails it is cleared again, exactly as if never published.
    A crash between commit and publish leaves it set to the insert time: the sweeper then re-publishes
    once that is older than BRIDGE_OUTBOX_REPUBLISH_AFTER, as it would for a NULL (``created_at`` is
    the same instant).
    """
    from .tasks import execute_task

    try:
        execute_task.apply_async(args=[task_id], queue=terminal_queue(terminal_name),
                                 retry=True, retry_policy=PUBLISH_RETRY_POLICY)
    except Exception:  # noqa: BLE001 - the sweeper re-publishes; the accepted write stands
        logger.warning("publishing task %s to %s failed; the outbox sweeper will retry", task_id, terminal_name,
                       exc_info=True)
        if stamped:
            Task.objects.filter(id=task_id, state=TaskState.QUEUED).update(published_at=None)
        return False
    if not stamped:
        Task.objects.filter(id=task_id).update(published_at=timezone.now())
    return True


def sweep_outbox(now=None) -> int:  # noqa: ANN001
    """Re-publish every task still ``queued`` whose last publish is older than the deadline."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=conf("BRIDGE_OUTBOX_REPUBLISH_AFTER"))
    stale = (
        Task.objects.filter(state=TaskState.QUEUED, created_at__lte=cutoff)
        .filter(Q(published_at__isnull=True) | Q(published_at__lte=cutoff))
        .select_related("terminal")
        .order_by("created_at")
        .values_list("id", "terminal__name")[:1000]
    )
    count = 0
    for task_id, terminal_name in stale:
        if publish_task(task_id, terminal_name):
            count += 1
    if count:
        logger.info("outbox: re-published %d queued task(s)", count)
    return count
