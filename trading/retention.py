"""Request-id retention: a request id is remembered (replayed or refused) for
BRIDGE_REQUEST_ID_RETENTION_DAYS after its task finished; then the task, its transitions and its
receipts are purged and the id may be used again (docs/orders.md)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .models import FINAL_STATES, CallReceipt, TradeTask
from .states import tasks_purge


def purge_expired_requests(now=None) -> int:
    """Delete finished tasks (and receipts) older than the retention; returns how many tasks."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.BRIDGE_REQUEST_ID_RETENTION_DAYS)
    # A task that still has a child within retention (a modify/cancel of its order) stays.
    expired = TradeTask.objects.filter(state__in=FINAL_STATES, finished_at__lt=cutoff).exclude(
        children__finished_at__gte=cutoff).exclude(children__finished_at__isnull=True, children__isnull=False)
    purged = tasks_purge(task_ids=list(expired.values_list("id", flat=True)))
    # A close-all's receipt goes with the last of its tasks (or at the retention, when it made none).
    for receipt in CallReceipt.objects.filter(created_at__lt=cutoff).only("id", "task_ids"):
        if not TradeTask.objects.filter(id__in=receipt.task_ids).exists():
            receipt.delete()
    return purged
