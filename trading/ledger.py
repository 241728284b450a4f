"""The idempotency ledger: fingerprints, insert-or-replay, and the request-id lookups.

A request id maps to at most one write per workspace: ``unique(workspace, request_id)`` on TradeTask (and
on RequestReceipt for in-place edits, which create no task). The fingerprint is SHA-256 of the
canonical JSON of the operation, its target, the validated payload and the account: the same request id with the
same fingerprint is a replay (the same task, the same status code, ``Idempotent-Replayed: true``);
with another one it is ``409 TaskConflict``. Concurrent identical requests race on the unique index:
the database picks one inserter, the others find its row and replay it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from bridge_project.errors import Conflict
from streams.publisher import publish_events

from .events import order_event
from .models import CallReceipt, RequestReceipt, TaskState, TaskTransition, TradeTask
from .states import task_create

logger = logging.getLogger("bridge.trading.ledger")


def fingerprint(operation: str, target: str, payload: dict[str, Any], *, account: str) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of operation, target, payload and the
    account (``login@server``): the same request id and body under a session of another account is a
    conflict, never a replay of the first account's task."""
    canonical = json.dumps({"op": operation, "target": target, "payload": payload, "account": account},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Outcome:
    """What a write answers: the task, its status code, and whether this was a replay."""

    task: TradeTask
    status_code: int
    replayed: bool


def _conflict(request_id: str, task_id: str) -> Conflict:
    return Conflict(f"request id {request_id!r} was used with a different payload", {"taskId": task_id})


def _previous_sql() -> str:
    """One query for every place a request id can live: its task, else the receipt of an in-place
    edit (with the edited task), else a close-all's receipt. Raw SQL: this runs on every write, and the ORM's compilation of two
    queries cost more than the database did."""
    task, receipt, call = TradeTask._meta.db_table, RequestReceipt._meta.db_table, CallReceipt._meta.db_table
    return (
        f"SELECT t.*, 0 AS previous_source, t.fingerprint AS previous_fingerprint, t.status_code AS previous_status "
        f"FROM {task} t WHERE t.workspace_id = %s AND t.request_id = %s "
        f"UNION ALL SELECT t.*, 1, r.fingerprint, r.status_code "
        f"FROM {receipt} r JOIN {task} t ON t.id = r.task_id WHERE r.workspace_id = %s AND r.request_id = %s "
        f"{_call_branch(call, task, '= %s')} "
        "ORDER BY previous_source LIMIT 1"
    )


def _call_branch(call: str, task: str, match: str, request_id: str = "") -> str:
    """The request ids a close-all holds (``CallReceipt``): a row without a task (its columns NULL),
    source 2. Its fingerprint is of another operation than any single write's: always a conflict."""
    return (f"UNION ALL SELECT t.*, 2, {request_id}c.fingerprint, c.status_code "
            f"FROM {call} c LEFT JOIN {task} t ON 1 = 0 WHERE c.workspace_id = %s AND c.request_id {match}")


def find_previous(workspace_id: int, request_id: str, fp: str) -> Outcome | None:
    """The earlier answer to this request id (a replay), None if unused; 409 if used differently."""
    rows = list(TradeTask.objects.raw(_previous_sql(), [workspace_id, request_id] * 3))
    if not rows:
        return None
    return previous_outcome(request_id, fp, rows[0])


def find_previous_many(workspace_id: int, request_ids: list[str]) -> dict[str, TradeTask]:
    """``find_previous`` for many request ids of one workspace in one query: request id -> its task
    (or the edited task of its receipt), with ``previous_fingerprint`` and ``previous_status`` set;
    the caller compares fingerprints (a replay, or a conflict)."""
    if not request_ids:
        return {}
    task, receipt, call = TradeTask._meta.db_table, RequestReceipt._meta.db_table, CallReceipt._meta.db_table
    marks = ", ".join(["%s"] * len(request_ids))
    sql = (
        f"SELECT t.*, 0 AS previous_source, t.request_id AS previous_request_id, "
        f"t.fingerprint AS previous_fingerprint, t.status_code AS previous_status "
        f"FROM {task} t WHERE t.workspace_id = %s AND t.request_id IN ({marks}) "
        f"UNION ALL SELECT t.*, 1, r.request_id, r.fingerprint, r.status_code "
        f"FROM {receipt} r JOIN {task} t ON t.id = r.task_id WHERE r.workspace_id = %s AND r.request_id IN ({marks}) "
        f"{_call_branch(call, task, f'IN ({marks})', 'c.request_id, ')} "
        "ORDER BY previous_source"
    )
    found: dict[str, TradeTask] = {}
    for row in TradeTask.objects.raw(sql, [workspace_id, *request_ids] * 3):
        found.setdefault(row.previous_request_id, row)  # a task's own id first, as find_previous
    return found


def previous_outcome(request_id: str, fp: str, previous: TradeTask) -> Outcome:
    """The answer to a request id found by ``find_previous_many``: its replay, or 409 TaskConflict."""
    if previous.previous_fingerprint != fp:
        if previous.id is None:  # a close-all's request id (``_call_branch``)
            raise Conflict(f"request id {request_id!r} was used by a close-all (POST /positions/close)",
                           {"requestId": request_id})
        raise _conflict(request_id, previous.id)
    return Outcome(previous, int(previous.previous_status), True)


def insert_or_replay(task: TradeTask, after_insert: Callable[[TradeTask], None]) -> Outcome:
    """Insert ``task`` (request_id and fingerprint set) or replay/refuse the earlier one.

    The task and its first transition are inserted together (``states.create``); ``after_insert``
    then registers what must follow the commit (the publish to the terminal's queue).
    Callers look the request id up first (``find_previous``) so a replay is answered before any
    validation; here the insert itself is the arbiter, and a lost race is answered from the winner.
    """
    try:
        task_create(task=task)
    except IntegrityError:
        # Lost the race on (workspace, request_id) to a concurrent identical (or not) request; a
        # tag collision (2^-50) also lands here and is answered by a retry with a new tag.
        previous = find_previous(task.workspace_id, task.request_id, task.fingerprint)
        if previous is not None:
            return previous
        raise
    after_insert(task)
    return Outcome(task, task.status_code, False)


def record_receipt(workspace_id: int, request_id: str, fp: str, task: TradeTask, status_code: int) -> Outcome:
    """Keep the request id of an in-place edit (call inside the edit's transaction)."""
    with transaction.atomic():
        RequestReceipt.objects.create(
            workspace_id=workspace_id, request_id=request_id, fingerprint=fp, task=task, status_code=status_code
        )
    return Outcome(task, status_code, False)


@dataclass
class CallOutcome:
    """What a call that makes several tasks answers (``POST /positions/close``): its tasks in order, the
    status code, and whether this was a replay."""

    tasks: list[TradeTask]
    status_code: int
    replayed: bool


def call_receipt_find(workspace_id: int, request_id: str, fp: str) -> CallOutcome | None:
    """The earlier answer of a call under this request id (a replay: the tasks it made, as they are now),
    None if the id holds no call; 409 TaskConflict when the call had another fingerprint."""
    receipt = CallReceipt.objects.filter(workspace_id=workspace_id, request_id=request_id).first()
    if receipt is None:
        return None
    if receipt.fingerprint != fp:
        raise Conflict(f"request id {request_id!r} was used with a different payload",
                       {"taskIds": list(receipt.task_ids)})
    found = TradeTask.objects.in_bulk(receipt.task_ids)
    return CallOutcome([found[i] for i in receipt.task_ids if i in found], receipt.status_code, True)


def call_receipt_record(*, workspace_id: int, request_id: str, fp: str, task_ids: list[str],
                        status_code: int) -> None:
    """Keep the request id of a call with the tasks it made (inside the call's transaction, with them:
    a concurrent identical call waits on the unique index and then replays this one)."""
    with transaction.atomic():
        CallReceipt.objects.create(workspace_id=workspace_id, request_id=request_id, fingerprint=fp,
                                   task_ids=task_ids, status_code=status_code)


def tasks_insert_batch(*, tasks: list[TradeTask],
                       after_commit: Callable[[Callable[[], None]], Any] | None = None) -> list[TradeTask]:
    """``states.task_create`` for a batch of new (queued) tasks, in the caller's transaction: one INSERT of
    the tasks, one of their first transitions ('' → queued), their ``order`` events in one round trip after
    commit. A task whose request id or tag is taken (by another process, or an earlier row of the batch) is
    skipped (``ON CONFLICT DO NOTHING``), not raised: the tasks inserted are returned, the caller answers
    the others from the ledger. Plain SQL that PostgreSQL and SQLite (3.35+) both run. It lives beside
    ``insert_or_replay`` (the hot write path's insert, ``services.orders_place_batch``); every later
    change of these tasks goes through ``states.task_change`` as for any other. ``after_commit``: where the
    events' publish runs after the commit (e.g. a single thread's ``submit``, which keeps their order);
    default: in the committing thread."""
    if not tasks:
        return []
    quote = connection.ops.quote_name
    fields = list(TradeTask._meta.concrete_fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [f.get_db_prep_save(f.pre_save(task, True), connection) for task in tasks for f in fields]
    at = TaskTransition._meta.get_field("at").get_db_prep_save(timezone.now(), connection)
    detail = TaskTransition._meta.get_field("detail").get_db_prep_save({}, connection)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(TradeTask._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
            f"VALUES {', '.join([row] * len(tasks))} ON CONFLICT DO NOTHING RETURNING {quote('id')}", params)
        inserted = {found for (found,) in cursor.fetchall()}
        created = [task for task in tasks if task.id in inserted]
        if created:
            cursor.execute(
                f"INSERT INTO {quote(TaskTransition._meta.db_table)} (task_id, from_state, to_state, at, detail) "
                "VALUES " + ", ".join(["(%s, %s, %s, %s, %s)"] * len(created)),
                [value for task in created for value in (task.id, "", TaskState.QUEUED, at, detail)])
    for task in created:
        task._state.adding = False
    events = [(task.session_id, "order", order_event(task, previous="", change=""), None) for task in created]
    if events:
        transaction.on_commit(lambda: _publish(events) if after_commit is None else after_commit(lambda: _publish(events)))
    return created


def _publish(events: list) -> None:
    try:
        publish_events(events)
    except Exception:  # the ledger already holds the tasks; the stream is best effort
        logger.exception("publishing %d order events failed", len(events))
