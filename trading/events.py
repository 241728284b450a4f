"""Hands every task state change to the event stream (``order`` channel) through the publisher seam.

The stream itself (seq, replay, fan-out) is ``streams``'s; this module only builds the event body
and makes sure a publishing failure never undoes or blocks the ledger, which is the truth.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from streams.publisher import publish_session_event

if TYPE_CHECKING:
    from .models import TradeTask

logger = logging.getLogger("bridge.trading.events")


def order_event(task: TradeTask, *, previous: str = "", change: str = "") -> dict[str, Any]:
    """The ``order`` event body of API.md: taskId, requestId, kind, state, result, attempts; ``from``
    (the state before this change, "" for a new task) and, for a change of fields without a change
    of state, ``change`` (``sent``, ``attempt``, ``edited``, ``published``, ...)."""
    body = {
        "taskId": task.id,
        "requestId": task.request_id,
        "kind": task.kind,
        "state": task.state,
        "from": previous,
        "result": task.result,
        "attempts": task.attempts,
    }
    if change:
        body["change"] = change
    return body


def publish_task_change(task: TradeTask, *, previous: str, change: str) -> None:
    """Publish one change of the task to its session's stream; failures are logged, not raised."""
    try:
        publish_session_event(task.session_id, "order", order_event(task, previous=previous, change=change))
    except Exception:  # the ledger already holds the change; the stream is best effort
        logger.exception("publishing the order event of task %s failed", task.id)
