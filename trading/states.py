"""Task state changes: conditional, recorded in TaskTransition, published after commit.

Every state change of a task goes through ``move``: an ``UPDATE ... WHERE state IN (expected)`` so
two actors (the pinned worker, a PATCH/DELETE, reconciliation) can never both win a transition, the
``TaskTransition`` row in the same transaction, and the ``order`` event once it is committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from .events import publish_task_state
from .models import FINAL_STATES, Task, TaskState, TaskTransition


def move(
    task_id: str,
    from_states: Iterable[str],
    to_state: str,
    *,
    detail: dict[str, Any] | None = None,
    **fields: Any,
) -> Task | None:
    """Move a task from one of ``from_states`` to ``to_state`` (setting ``fields``; a callable value
    gets the locked row); None if it was no longer in one of them (someone else moved it first)."""
    from_states = list(from_states)
    now = timezone.now()
    if to_state in FINAL_STATES:
        fields.setdefault("finished_at", now)
    with transaction.atomic():
        task = Task.objects.select_for_update().filter(id=task_id, state__in=from_states).first()
        if task is None:
            return None
        previous = task.state
        for name, value in fields.items():
            setattr(task, name, value(task) if callable(value) else value)
        task.state = to_state
        task.save(update_fields=[*fields, "state", "updated_at"])
        TaskTransition.objects.create(task=task, from_state=previous, to_state=to_state, detail=detail or {})
        transaction.on_commit(lambda: publish_task_state(task))
    return task


def record_created(task: Task) -> None:
    """The first transition ('' → queued) of a task just inserted (call inside its transaction)."""
    TaskTransition.objects.create(task=task, from_state="", to_state=TaskState.QUEUED, detail={})
    transaction.on_commit(lambda: publish_task_state(task))
