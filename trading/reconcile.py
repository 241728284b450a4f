"""Ops entry point (admin action): ask the terminals of some tasks to reconcile now."""

from __future__ import annotations

from bridge_project.celery import terminal_queue

from .models import Task, TaskState


def request_reconciliation(task_ids: list[str]) -> str:
    """Publish ``trading.reconcile_terminal`` to the terminal of each dispatched/unknown task given."""
    from .tasks import reconcile_terminal_task

    names = sorted(set(Task.objects.filter(id__in=task_ids, state__in=[TaskState.DISPATCHED, TaskState.UNKNOWN])
                       .values_list("terminal__name", flat=True)))
    for name in names:
        # startup=True: settle every such task of the terminal now, whatever its age.
        reconcile_terminal_task.apply_async(kwargs={"startup": True}, queue=terminal_queue(name))
    return f"terminals asked: {', '.join(names) or 'none (no dispatched/unknown task selected)'}"
