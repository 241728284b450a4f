"""Celery tasks of the order path and the worker hooks that run them at the right moments.

On a terminal's pinned worker (queue ``terminal.<name>``): ``trading.execute`` (one task id),
``trading.reconcile_terminal``, ``trading.refresh_symbol_specs``. On the maintenance worker (beat):
``trading.sweep_outbox``, ``trading.reconcile_all`` (fans out to each terminal's queue) and
``trading.purge_requests`` (request-id retention). An error of the bridge inside a task is settled on
the task by ``trading.task_errors.run_guarded`` (bounded retries).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from celery.signals import task_success, worker_ready
from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone

from bridge_project.celery import terminal_queue

from .conf import conf
from .models import Task, TaskState
from .task_errors import run_guarded

logger = logging.getLogger("bridge.trading.tasks")


@shared_task(name="trading.execute")
def execute_task(task_id: str) -> str:
    from .execution import run_task

    return run_guarded(task_id, "execute", lambda: run_task(task_id))


@shared_task(name="trading.reconcile_terminal")
def reconcile_terminal_task(startup: bool = False) -> dict:
    from workers.runtime import pinned_terminal

    from .reconciliation import reconcile_terminal

    name = pinned_terminal()
    if name is None:
        return {"skipped": "not a pinned worker"}
    return reconcile_terminal(name, startup=startup)


@shared_task(name="trading.refresh_symbol_specs")
def refresh_symbol_specs(session_id: str) -> int:
    """Publish the terminal's symbol specs, stamped with ``session_id`` (the account logged in now)."""
    from sessions.models import BridgeSession
    from workers.runtime import gateway, pinned_terminal

    from .symbols import store_specs

    session = BridgeSession.objects.select_related("terminal").filter(id=session_id).first()
    if session is None or not session.live or session.terminal.name != pinned_terminal():
        return 0
    symbols = gateway().call("symbols_get")
    return store_specs(session.terminal.name, session.id, list(symbols))


@shared_task(name="trading.sweep_outbox")
def sweep_outbox_task() -> int:
    from .outbox import sweep_outbox

    return sweep_outbox()


@shared_task(name="trading.reconcile_all")
def reconcile_all_task() -> list[str]:
    """Ask each terminal's worker to reconcile when it has dispatched/unknown tasks past the threshold,
    or tasks failed within the unowned-scan window (a tagged order that executes late is adopted)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=conf("BRIDGE_RECONCILE_AFTER"))
    recent = now - timedelta(days=conf("BRIDGE_UNOWNED_SCAN_DAYS"))
    names = sorted(set(
        Task.objects.filter(
            (Q(state__in=[TaskState.DISPATCHED, TaskState.UNKNOWN])
             & (Q(dispatched_at__lte=cutoff) | Q(dispatched_at__isnull=True)))
            | Q(state=TaskState.FAILED, sent_at__isnull=False, finished_at__gte=recent))
        .values_list("terminal__name", flat=True)
    ))
    for name in names:
        reconcile_terminal_task.apply_async(kwargs={"startup": False}, queue=terminal_queue(name),
                                            expires=conf("BRIDGE_RECONCILE_INTERVAL") * 2)
    return names


@shared_task(name="trading.purge_requests")
def purge_requests_task() -> int:
    from .retention import purge_expired_requests

    return purge_expired_requests()


@worker_ready.connect
def _reconcile_at_start(**_: object) -> None:
    """A pinned worker settles its terminal's orphaned tasks before it takes new ones."""
    from workers.runtime import pinned_terminal

    from .reconciliation import reconcile_terminal

    name = pinned_terminal()
    if not name:
        return
    try:
        reconcile_terminal(name, startup=True)
    except Exception:  # noqa: BLE001 - the periodic run retries; the worker must still start
        logger.exception("start-up reconciliation of %s failed", name)
    finally:
        close_old_connections()


@task_success.connect
def _publish_specs_after_login(sender=None, result=None, **_: object) -> None:  # noqa: ANN001
    """After a session logs in on this worker, publish that account's symbol specs for validation."""
    if getattr(sender, "name", None) != "workers.login_session" or result != "active":
        return
    args = getattr(getattr(sender, "request", None), "args", None) or []
    if not args:
        return
    try:
        refresh_symbol_specs(args[0])
    except Exception:  # noqa: BLE001 - the web tier asks again on demand
        logger.exception("publishing symbol specs after login failed")
