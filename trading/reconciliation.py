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

from django.db.models import Q
from django.utils import timezone

from bridge_project import metrics
from workers.config import get_terminal
from workers.gateway import GatewayError
from workers.models import Terminal
from workers.runtime import gateway
from workers.terminals import sync_terminals

from .conf import conf
from .execution import RECOVERABLE, recover
from .lookup import _tuple
from .models import Task, UnownedOrder
from .orders import tag_of

logger = logging.getLogger("bridge.trading.reconciliation")


def reconcile_terminal(terminal_name: str, *, startup: bool = False) -> dict[str, Any]:
    """Settle this terminal's dispatched/unknown tasks; then look for unowned tagged orders."""
    now = timezone.now()
    tasks = Task.objects.select_related("terminal", "session").filter(terminal__name=terminal_name,
                                                                       state__in=RECOVERABLE)
    if not startup:
        cutoff = now - timedelta(seconds=conf("BRIDGE_RECONCILE_AFTER"))
        tasks = tasks.filter(Q(dispatched_at__lte=cutoff) | Q(dispatched_at__isnull=True))
    outcomes: dict[str, int] = {}
    for task in tasks.order_by("created_at")[:500]:
        outcome = recover(task, "startup" if startup else "reconciliation")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        metrics.reconciliation_outcome(outcome)
    unowned = 0
    try:
        unowned = report_unowned(terminal_name)
    except (GatewayError, OSError) as exc:
        logger.warning("unowned-order scan of %s failed: %s", terminal_name, exc)
    if outcomes or unowned:
        logger.info("reconciled %s (startup=%s): %s; unowned tagged orders: %d", terminal_name, startup, outcomes,
                    unowned)
    return {"tasks": outcomes, "unowned": unowned}


def report_unowned(terminal_name: str) -> int:
    """Record every bridge-tagged order/deal/position at the terminal whose tag no task has."""
    gw = gateway()
    offset = int(get_terminal(terminal_name).utc_offset)
    now = int(time.time()) + offset
    date_from = max(1, now - int(conf("BRIDGE_UNOWNED_SCAN_DAYS") * 86400))
    found: list[tuple[str, Any]] = []
    for source, items in (
        ("orders", _tuple(gw, "orders_get")),
        ("positions", _tuple(gw, "positions_get")),
        ("history_orders", _tuple(gw, "history_orders_get", date_from, now + 86400)),
        ("history_deals", _tuple(gw, "history_deals_get", date_from, now + 86400)),
    ):
        found.extend((source, item) for item in items if tag_of(str(getattr(item, "comment", ""))))
    tags = {tag_of(str(item.comment)) for _, item in found}
    owned = set(Task.objects.filter(tag__in=tags).values_list("tag", flat=True)) if tags else set()
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
    return count
