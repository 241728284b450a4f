"""Every Celery task of the bridge: thin entry points that call the services that own the rule.

Tasks are sent by name (``app.send_task("trading.execute", ...)``), so no module below imports this
one. On a terminal's pinned worker (queue ``terminal.<name>``): ``workers.login_session``,
``trading.execute``, ``trading.reconcile_terminal``, ``trading.refresh_symbol_specs``. On the
maintenance worker (beat, ``bridge_project/settings.py``): ``sessions.expire_sessions``,
``sessions.redrive_logins``, ``trading.sweep_outbox``, ``trading.reconcile_all`` (fans out to each
terminal's queue), ``trading.purge_requests`` and ``ops.sample_dashboard`` (the dashboard's samples).
An error of the bridge inside a trading task is settled on the task by ``trading.task_errors.run_guarded``
(bounded retries).
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import task_success, worker_ready
from django.db import close_old_connections

from ops.sampling import take_sample
from sessions.services import session_log_in, sessions_expire_due, sessions_redrive_logins
from terminals.runtime import pinned_terminal, start_heartbeat
from trading.execution import run_task
from trading.outbox import sweep_outbox
from trading.reconciliation import reconcile_terminal, reconciliation_fan_out
from trading.retention import purge_expired_requests
from trading.symbol_specs import symbol_specs_refresh
from trading.task_errors import run_guarded

logger = logging.getLogger("bridge.workers.tasks")

LOGIN_TASK = "workers.login_session"


# --- on a terminal's pinned worker -------------------------------------------------------------------

@shared_task(name=LOGIN_TASK)
def login_session(session_id: str) -> str:
    return session_log_in(session_id=session_id)


@shared_task(name="trading.execute")
def execute_task(task_id: str) -> str:
    return run_guarded(task_id, "execute", lambda: run_task(task_id))


@shared_task(name="trading.reconcile_terminal")
def reconcile_terminal_task(startup: bool = False) -> dict:
    name = pinned_terminal()
    if name is None:
        return {"skipped": "not a pinned worker"}
    return reconcile_terminal(name, startup=startup)


@shared_task(name="trading.refresh_symbol_specs")
def refresh_symbol_specs_task(session_id: str) -> int:
    return symbol_specs_refresh(session_id=session_id)


# --- on the maintenance worker (beat) -----------------------------------------------------------------

@shared_task(name="sessions.expire_sessions")
def expire_sessions_task() -> int:
    return sessions_expire_due()


@shared_task(name="sessions.redrive_logins")
def redrive_logins_task() -> dict[str, int]:
    return sessions_redrive_logins()


@shared_task(name="trading.sweep_outbox")
def sweep_outbox_task() -> int:
    return sweep_outbox()


@shared_task(name="trading.reconcile_all")
def reconcile_all_task() -> list[str]:
    return reconciliation_fan_out()


@shared_task(name="trading.purge_requests")
def purge_requests_task() -> int:
    return purge_expired_requests()


@shared_task(name="ops.sample_dashboard")
def sample_dashboard_task() -> dict:
    return take_sample()


# --- worker hooks ---------------------------------------------------------------------------------------

@worker_ready.connect
def _on_worker_ready(**_: object) -> None:
    """A pinned worker beats its heartbeat and settles its terminal's orphaned tasks before new ones."""
    name = pinned_terminal()
    if not name:
        return
    start_heartbeat()
    try:
        reconcile_terminal(name, startup=True)
    except Exception:  # the periodic run retries; the worker must still start
        logger.exception("start-up reconciliation of %s failed", name)
    finally:
        close_old_connections()
    logger.info("pinned worker for terminal %s ready", name)


@task_success.connect
def _publish_specs_after_login(sender=None, result=None, **_: object) -> None:
    """After a session logs in on this worker, publish that account's symbol specs for validation."""
    if getattr(sender, "name", None) != LOGIN_TASK or result != "active":
        return
    args = getattr(getattr(sender, "request", None), "args", None) or []
    if not args:
        return
    try:
        symbol_specs_refresh(session_id=args[0])
    except Exception:  # the web tier asks again on demand
        logger.exception("publishing symbol specs after login failed")
