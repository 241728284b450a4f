"""Errors of the bridge itself while it executes or recovers a task: settled on the task, bounded.

Errors of the bridge itself (``settle_error``): an exception that escapes a task's execution and is not
the terminal's (a ``GatewayError``/``OSError`` is handled where it happens) — a request the bridge cannot
build, a bug, the database — leaves a task that never reached the terminal ``dispatched``, and
reconciliation tries it again. That is bounded: the error is counted on the task, and at
BRIDGE_TASK_MAX_ERRORS the task ends ``failed`` with ``BridgeError`` (the exception's type and message,
credentials redacted). A task that may have reached the terminal is never failed on an error: it becomes
``unknown`` and is looked up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q

from terminals.gateway import GatewayError

from .models import TaskState, TradeTask
from .states import task_change

logger = logging.getLogger("bridge.trading.task_errors")

# Errors of the terminal or of the link to it: handled where they happen (failed before sending,
# unknown after), never counted as errors of the bridge.
TERMINAL_ERRORS = (GatewayError, OSError)
ERROR_MESSAGE_MAX = 300
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]*@")


def run_guarded(task_id: str, where: str, work: Callable[[], str]) -> str:
    """``work()`` (the execution or recovery of ``task_id``), with an error of the bridge settled on the task
    (``settle_error``) instead of escaping; the terminal's errors still propagate."""
    try:
        return work()
    except TERMINAL_ERRORS:
        raise
    except Exception as exc:  # any other error is the bridge's own: counted, bounded
        logger.exception("task %s: %s raised", task_id, where)
        try:
            return settle_error(task_id, exc, where)
        except Exception:  # e.g. the database is the failure: the next reconciliation counts it
            logger.exception("task %s: recording the error failed", task_id)
            return "error-unrecorded"
        finally:
            close_old_connections()


def _redacted(text: str) -> str:
    """An exception message fit for a client: no credentials of URLs, no configured secret, bounded."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    for secret in (settings.SECRET_KEY, getattr(settings, "BRIDGE_CREDENTIALS_KEY", ""),
                   *getattr(settings, "BRIDGE_CREDENTIALS_OLD_KEYS", [])):
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return text if len(text) <= ERROR_MESSAGE_MAX else text[:ERROR_MESSAGE_MAX - 1] + "…"


def settle_error(task_id: str, exc: BaseException, where: str) -> str:
    """Record an error of the bridge that escaped the execution of ``task_id``; returns what was done.

    ``dispatched`` and never sent (nothing reached the terminal): the error is counted on the task
    (``result.error``, code ``BridgeError``, ``errors``: how many so far) and reconciliation tries it
    again; the BRIDGE_TASK_MAX_ERRORS-th error ends it ``failed`` through ``states.move`` (transition and
    event). ``dispatched`` and sent: the order may have executed, so it becomes ``unknown`` (looked up,
    never resent). Anything else (an ``unknown`` task's lookup raised, a task already final): logged only.
    """
    task = TradeTask.objects.filter(id=task_id).only("state", "sent_at", "result").first()
    if task is None or task.state != TaskState.DISPATCHED:
        return "error"
    kind = type(exc).__name__
    message = _redacted(f"{kind}: {exc}" if str(exc) else kind)
    if task.sent_at is not None:
        task_change(task_id=task_id, from_states=[TaskState.DISPATCHED], to_state=TaskState.UNKNOWN, detail={"reason": "bridge_error", "where": where, "exception": kind}, fields={"result": {**(task.result or {}), "error": {
                 "code": "OutcomeUnknown", "message": "the bridge failed after sending; the outcome is looked up",
                 "unknownBecause": "bridge_error", "bridgeError": {"exception": kind, "message": message}}}})
        return "unknown-bridge_error"
    previous = (task.result or {}).get("error") or {}
    errors = int(previous.get("errors", 0)) + 1 if previous.get("code") == "BridgeError" else 1
    error = {"code": "BridgeError", "message": message, "exception": kind, "errors": errors}
    limit = max(1, int(settings.BRIDGE_TASK_MAX_ERRORS))
    if errors >= limit:
        moved = task_change(task_id=task_id, from_states=[TaskState.DISPATCHED], to_state=TaskState.FAILED, detail={"reason": "bridge_error", "where": where, "exception": kind, "errors": errors}, fields={"result": {"error": {**error, "message": f"{message} (error {errors} of {limit}: not retried)"},
                             "source": "bridge"}})
        if moved is not None:
            logger.error("task %s failed after %d errors of the bridge: %s", task_id, errors, message)
            return "failed-BridgeError"
        return "error"
    task_change(task_id=task_id, from_states=[TaskState.DISPATCHED], where=Q(sent_at__isnull=True),
                fields={"result": {"error": error, "source": "bridge"}},
                detail={"reason": "bridge_error", "where": where, "exception": kind, "errors": errors},
                change="bridge_error")
    logger.warning("task %s: error %d of %d of the bridge (%s); reconciliation tries it again", task_id, errors,
                   limit, message)
    return "error-retry"
