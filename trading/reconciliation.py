"""Reconciliation: settle ``dispatched``/``unknown`` tasks from the terminal's own state and history,
and report bridge-tagged orders that no task owns.

It runs on the terminal's pinned worker (it reads the terminal, and runs between orders, never beside
one): at worker start for every such task (any ``dispatched`` task is then an orphan of the previous
process), and periodically (beat fans out ``trading.reconcile_terminal`` to each terminal's queue)
for tasks older than BRIDGE_RECONCILE_AFTER.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from bridge_project import metrics
from bridge_project.celery import app, terminal_queue
from terminals.config import get_terminal
from terminals.gateway import GatewayError
from terminals.models import Terminal
from terminals.runtime import gateway
from terminals.services import sync_terminals

from .execution import RECOVERABLE, adopt, recover
from .lookup import _tuple, find_trace
from .models import TaskState, TradeTask, UnownedOrder
from .orders import tag_of
from .task_errors import run_guarded

# Settled states a tagged order that surfaces later corrects (e.g. an execution later than the
# in-flight bound): the task is adopted whatever it was, with its transition and event.
LATE_ADOPTABLE = (TaskState.FAILED, TaskState.CANCELLED, TaskState.REJECTED)
EXECUTED_STATES = (TaskState.FILLED, TaskState.PARTIAL, TaskState.PLACED)

logger = logging.getLogger("bridge.trading.reconciliation")


def reconcile_terminal(terminal_name: str, *, startup: bool = False) -> dict[str, Any]:
    """Settle this terminal's dispatched/unknown tasks; then look for unowned tagged orders."""
    now = timezone.now()
    tasks = TradeTask.objects.select_related("terminal", "session").filter(terminal__name=terminal_name,
                                                                       state__in=RECOVERABLE)
    if not startup:
        cutoff = now - timedelta(seconds=settings.BRIDGE_RECONCILE_AFTER)
        tasks = tasks.filter(Q(dispatched_at__lte=cutoff) | Q(dispatched_at__isnull=True))
    outcomes: dict[str, int] = {}
    reason = "startup" if startup else "reconciliation"
    for task in tasks.order_by("created_at")[:500]:
        # An error of the bridge on one task is settled on that task (bounded: trading.task_errors.run_guarded)
        # and does not stop the others' reconciliation.
        outcome = run_guarded(task.id, reason, lambda task=task: recover(task, reason))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        metrics.reconciliation_outcome(outcome)
    unowned = adopted = 0
    try:
        unowned, adopted = report_unowned(terminal_name)
    except (GatewayError, OSError) as exc:
        logger.warning("unowned-order scan of %s failed: %s", terminal_name, exc)
    if outcomes or unowned or adopted:
        logger.info("reconciled %s (startup=%s): %s; late adoptions: %d; unowned tagged orders: %d", terminal_name,
                    startup, outcomes, adopted, unowned)
    return {"tasks": outcomes, "unowned": unowned, "lateAdopted": adopted}


def adopt_late(tasks: list[TradeTask]) -> int:
    """Adopt the tagged orders of settled tasks that the terminal shows executed after all."""
    gw, count = gateway(), 0
    for task in tasks:
        trace = find_trace(gw, task, int(get_terminal(task.terminal.name).utc_offset))
        if trace is None or trace.state not in EXECUTED_STATES:
            continue
        if adopt(task, trace, "late-execution", from_states=LATE_ADOPTABLE) is not None:
            count += 1
            metrics.reconciliation_outcome("late-adopted")
            logger.error("task %s was %s but its order %s executed at the terminal: adopted as %s", task.id,
                         task.state, trace.order_ticket, trace.state)
    return count


def report_unowned(terminal_name: str) -> tuple[int, int]:
    """Record every bridge-tagged order/deal/position at the terminal whose tag no task has, and adopt
    those whose task was settled as not executed. Returns (unowned, adopted late)."""
    gw = gateway()
    offset = int(get_terminal(terminal_name).utc_offset)
    now = int(time.time()) + offset
    date_from = max(1, now - int(settings.BRIDGE_UNOWNED_SCAN_DAYS * 86400))
    found: list[tuple[str, Any]] = []
    for source, items in (
        ("orders", _tuple(gw, "orders_get")),
        ("positions", _tuple(gw, "positions_get")),
        ("history_orders", _tuple(gw, "history_orders_get", date_from, now + 86400)),
        ("history_deals", _tuple(gw, "history_deals_get", date_from, now + 86400)),
    ):
        found.extend((source, item) for item in items if tag_of(str(getattr(item, "comment", ""))))
    tags = {tag_of(str(item.comment)) for _, item in found}
    owned = set(TradeTask.objects.filter(tag__in=tags).values_list("tag", flat=True)) if tags else set()
    settled = list(TradeTask.objects.select_related("terminal").filter(tag__in=owned, state__in=LATE_ADOPTABLE)
                   .exclude(kind__in=["order.modify", "order.cancel", "position.modify"])) if owned else []
    adopted = adopt_late(settled) if settled else 0
    if found and tags - owned and not Terminal.objects.filter(name=terminal_name).exists():
        sync_terminals(force=True)  # a fresh database: the worker may start before the row exists
    terminal = Terminal.objects.filter(name=terminal_name).first()
    count = 0
    for source, item in found:
        tag = tag_of(str(item.comment))
        if tag in owned or terminal is None:
            continue
        count += 1
        _, created = UnownedOrder.objects.update_or_create(
            terminal=terminal, source=source, ticket=int(item.ticket),
            defaults={"tag": tag, "comment": str(item.comment)[:64], "symbol": str(getattr(item, "symbol", ""))[:64],
                      "detail": {"volume": float(getattr(item, "volume", 0.0) or getattr(item, "volume_initial", 0.0)),
                                 "magic": int(getattr(item, "magic", 0))}},
        )
        if created:
            metrics.broker_order_orphaned(terminal_name)
            logger.error("terminal %s: %s ticket %s carries bridge tag %s but no task owns it", terminal_name, source,
                         item.ticket, tag)
    return count, adopted


RECONCILE_TERMINAL_TASK = "trading.reconcile_terminal"  # sent by name: workers.tasks runs it


def reconciliation_fan_out() -> list[str]:
    """Ask each terminal's worker to reconcile when it has dispatched/unknown tasks past the threshold,
    or tasks failed within the unowned-scan window (a tagged order that executes late is adopted)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.BRIDGE_RECONCILE_AFTER)
    recent = now - timedelta(days=settings.BRIDGE_UNOWNED_SCAN_DAYS)
    names = sorted(set(
        TradeTask.objects.filter(
            (Q(state__in=[TaskState.DISPATCHED, TaskState.UNKNOWN])
             & (Q(dispatched_at__lte=cutoff) | Q(dispatched_at__isnull=True)))
            | Q(state=TaskState.FAILED, sent_at__isnull=False, finished_at__gte=recent))
        .values_list("terminal__name", flat=True)
    ))
    for name in names:
        app.send_task(RECONCILE_TERMINAL_TASK, kwargs={"startup": False}, queue=terminal_queue(name),
                      expires=settings.BRIDGE_RECONCILE_INTERVAL * 2)
    return names


def reconciliation_request(*, task_ids: list[str]) -> list[str]:
    """Ask the terminals of these tasks (those dispatched/unknown) to reconcile now: every such task of
    each terminal is settled, whatever its age (an operator's "reconcile now"). Returns the terminals."""
    names = sorted(set(TradeTask.objects.filter(id__in=task_ids, state__in=RECOVERABLE)
                       .values_list("terminal__name", flat=True)))
    for name in names:
        app.send_task(RECONCILE_TERMINAL_TASK, kwargs={"startup": True}, queue=terminal_queue(name))
    return names
