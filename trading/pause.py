"""What a pause and a resume of a session do to its tasks (docs/sessions.md, "Pause and resume").

``sessions`` sits below ``trading``: it announces a pause and a resume with signals (``sessions.signals``)
and these receivers, connected in ``TradingConfig.ready``, do the tasks' part:

* while paused, the pinned worker claims none of the session's queued tasks (``states.task_claim`` and
  ``states.tasks_claim_batch`` skip them; a delivery of one answers ``paused``) and the outbox sweeper
  does not re-publish them: they wait, ``queued``;
* a pause with ``cancelQueued`` ends them ``cancelled`` in the pause's transaction, each through
  ``task_change`` (its transition and its ``order`` event);
* a resume publishes them again after its commit, oldest first, in one broker round trip (a lost publish
  is the sweeper's, as for any queued task);
* a write with a request id the ledger already holds is a replay: ``require_active_session`` lets it through
  to the ledger's answer even while the session is paused.
"""

from __future__ import annotations

import logging

from django.apps import apps
from django.db import models, transaction

from sessions.models import BridgeSession

from .models import TaskState, TradeTask
from .outbox import publish_tasks
from .states import task_change

logger = logging.getLogger("bridge.trading.pause")


def tasks_cancel_queued_of_paused_session(*, session_id: str) -> int:
    """The session's tasks still ``queued`` end ``cancelled`` (``SessionPaused``), each with its transition
    and ``order`` event; how many. A task the worker already claimed is not queued: it finishes."""
    cancelled = 0
    queued = TradeTask.objects.filter(session_id=session_id, state=TaskState.QUEUED).order_by("created_at")
    for task_id in list(queued.values_list("id", flat=True)):
        if task_change(task_id=task_id, from_states=[TaskState.QUEUED], to_state=TaskState.CANCELLED,
                       detail={"by": "session", "reason": "paused"},
                       fields={"result": {"error": {"code": "SessionPaused", "message": "the session was paused with "
                                                    "cancelQueued before the task ran: nothing was sent"},
                                          "source": "bridge"}}):
            cancelled += 1
    if cancelled:
        logger.info("session %s paused: %d queued task(s) cancelled", session_id, cancelled)
    return cancelled


def tasks_republish_of_session(*, session_id: str) -> int:
    """Publish the session's queued tasks to its terminal's queue, oldest first (after a resume); how many.
    Never raises: a failed publish leaves them to the outbox sweeper."""
    tasks = list(TradeTask.objects.filter(session_id=session_id, state=TaskState.QUEUED)
                 .order_by("created_at").values_list("id", "terminal__name"))
    if tasks and publish_tasks(tasks):
        logger.info("session %s resumed: %d queued task(s) published", session_id, len(tasks))
    return len(tasks)


def on_session_paused(sender: object, *, session: BridgeSession, cancel_queued: bool, **_: object) -> None:
    """Receiver of ``sessions.signals.session_paused`` (inside the pause's transaction)."""
    if cancel_queued:
        tasks_cancel_queued_of_paused_session(session_id=session.id)


def on_session_resumed(sender: object, *, session: BridgeSession, **_: object) -> None:
    """Receiver of ``sessions.signals.session_resumed`` (inside the resume's transaction): publish after it."""
    session_id = session.id
    transaction.on_commit(lambda: tasks_republish_of_session(session_id=session_id))


def _ledger_tables() -> list[type[models.Model]]:
    """Every table of the ledger that keeps a workspace's request ids: the tasks and the receipts (of an
    in-place edit, of a call that made several tasks), whichever the trading app has, so a new receipt
    table is covered without a change here."""
    return [model for model in apps.get_app_config("trading").get_models()
            if {"workspace", "request_id"} <= {field.name for field in model._meta.get_fields()}]


def on_paused_write_replay(sender: object, *, workspace_id: int, request_id: str, **_: object) -> bool:
    """Receiver of ``sessions.signals.paused_write_replay``: does the ledger hold this request id?"""
    return any(model.objects.filter(workspace_id=workspace_id, request_id=request_id).exists()
               for model in _ledger_tables())
