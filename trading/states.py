"""The one writer of task rows: every change of a task's state or fields, its history and its event.

``task_change`` is the only function that updates a ``TradeTask`` row (the state, and fields such as
``attempts``, the sent mark, an in-place edit, the outbox's ``published_at``): a conditional update
(``WHERE state IN from_states`` plus any condition the caller adds, e.g. the lease's fencing token)
so two actors (the pinned worker, a PATCH/DELETE, reconciliation, the sweeper) can never both win,
the ``TaskTransition`` row in the same statement, and the ``order`` event once it is committed. A
change of fields without a change of state is a transition too (``from_state == to_state``, its
``change`` in the detail): the history and the event stream hold every change, in order.
``task_create`` is the insert with its first transition, ``tasks_purge`` the retention's delete.

On PostgreSQL a change is ONE statement built by ``_change_statement``: a data-modifying CTE locks
the row if it still matches, updates it and inserts its transition (both or neither: a statement is
atomic), and returns the row; the conditions are compiled by the ORM from a ``Q``. That is one round
trip and one commit on the order path instead of five (BEGIN, SELECT ... FOR UPDATE, UPDATE, INSERT,
COMMIT). Other databases (SQLite in development) take the same steps through the ORM in a transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from sessions.models import BridgeSession, SessionStatus
from streams.publisher import publish_events
from terminals import runtime
from terminals.lease import Lease, fence_condition
from terminals.models import Terminal

from .events import order_event, publish_task_change
from .models import FINAL_STATES, RequestReceipt, TaskState, TaskTransition, TradeTask
from .reads.readqueue import redis_client
from .reads.snapshots import note_terminal_changed

logger = logging.getLogger("bridge.trading.states")
# States a task reaches once the terminal acted on it (or may have): reads must show what it did.
EXECUTED_STATES = (TaskState.FILLED, TaskState.PARTIAL, TaskState.PLACED)


class Increment:
    """A field value for ``task_change``: add ``by`` to the column in the same update (e.g. attempts)."""

    def __init__(self, by: int = 1):
        self.by = by


def _json(value: dict[str, Any]) -> Any:
    return TaskTransition._meta.get_field("detail").get_db_prep_save(value, connection)


def _change_statement(task_id: str, from_states: list[str], to_state: str | None, fields: dict[str, Any],
                      where: Q, detail: dict[str, Any], detail_columns: dict[str, str]) -> tuple[str, list[Any]]:
    """The single statement of a change (PostgreSQL): lock the row if it matches, update it, record
    the transition; returns the updated row with its previous state as ``previous_state``."""
    quote = connection.ops.quote_name
    table = quote(TradeTask._meta.db_table)
    matching = TradeTask.objects.filter(Q(id=task_id, state__in=from_states) & where).values("id", "state")
    match_sql, match_params = matching.query.sql_with_params()
    sets, set_params = [], []
    values = {**fields, "updated_at": timezone.now()}
    if to_state is not None:
        values["state"] = to_state
    for name, value in values.items():
        field = TradeTask._meta.get_field(name)
        column = quote(field.column)
        if isinstance(value, Increment):
            sets.append(f"{column} = t.{column} + %s")
            set_params.append(value.by)
        else:
            sets.append(f"{column} = %s")
            set_params.append(field.get_db_prep_save(value, connection))
    detail_sql = "%s::jsonb" + "".join(f" || jsonb_build_object(%s, {quote(TradeTask._meta.get_field(column).column)})"
                                       for column in detail_columns.values())
    detail_params = [_json(detail), *detail_columns.keys()]
    transitions = quote(TaskTransition._meta.db_table)
    sql = (
        f"WITH matched AS ({match_sql} FOR UPDATE), "
        f"changed AS (UPDATE {table} t SET {', '.join(sets)} FROM matched WHERE t.id = matched.id "
        "RETURNING t.*, matched.state AS previous_state), "
        f"recorded AS (INSERT INTO {transitions} (task_id, from_state, to_state, at, detail) "
        f"SELECT id, previous_state, state, %s, {detail_sql} FROM changed) "
        "SELECT * FROM changed"
    )
    return sql, [*match_params, *set_params, timezone.now(), *detail_params]


def _task_of_row(row: dict[str, Any]) -> TradeTask:
    """A TradeTask from a ``RETURNING`` row (column name → value), JSON columns decoded as the ORM does."""
    fields = TradeTask._meta.concrete_fields
    values = []
    for field in fields:
        value = row[field.column]
        if hasattr(field, "from_db_value"):
            value = field.from_db_value(value, None, connection)
        values.append(value)
    return TradeTask.from_db(connection.alias, [field.attname for field in fields], values)


def task_change(
    *,
    task_id: str,
    from_states: Iterable[str],
    to_state: str | None = None,
    fields: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
    change: str = "",
    where: Q | None = None,
    detail_columns: dict[str, str] | None = None,
) -> TradeTask | None:
    """Change a task still in one of ``from_states`` (and matching ``where``): move it to ``to_state``
    (None: the state stays) and set ``fields`` (an ``Increment`` adds to the column). Writes the
    transition (``detail``, plus ``change`` when given, plus ``detail_columns``: detail key → column,
    read after the update) and publishes the ``order`` event after commit. None if the task no longer
    matched: someone else changed it first, or the caller's condition (a fence) failed."""
    flush_deferred_events()  # committed earlier: they go out before this change's event
    from_states = list(from_states)
    fields = dict(fields or {})
    detail = {**(detail or {}), **({"change": change} if change else {})}
    if to_state in FINAL_STATES:
        fields.setdefault("finished_at", timezone.now())
    where = where if where is not None else Q()
    detail_columns = detail_columns or {}
    _note_settled_at_terminal(from_states, to_state)
    if connection.vendor != "postgresql":
        return _change_in_transaction(task_id, from_states, to_state, fields, where, detail, detail_columns)
    sql, params = _change_statement(task_id, from_states, to_state, fields, where, detail, detail_columns)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        if row is None:
            return None
        columns = [column.name for column in cursor.description]
    values = dict(zip(columns, row, strict=True))
    task = _task_of_row(values)
    previous = values["previous_state"]
    transaction.on_commit(lambda: publish_task_change(task, previous=previous, change=change))
    return task


def _note_settled_at_terminal(from_states: list[str], to_state: str | None) -> None:
    """Read-your-writes: before a task that reached the terminal settles (so before any client can see
    it settled), mark the pinned terminal changed; snapshot reads older than the mark wait for the next
    poll or ask the terminal (trading/reads/selectors.py)."""
    sent = bool({TaskState.DISPATCHED, TaskState.UNKNOWN} & set(from_states))
    if to_state not in FINAL_STATES or not (sent or to_state in EXECUTED_STATES):
        return
    terminal = runtime.pinned_terminal()
    if not terminal:
        return
    try:
        note_terminal_changed(redis_client(), terminal)
    except Exception:  # Redis away: the snapshots cannot be read either; the ledger stays the truth
        logger.warning("marking terminal %s changed failed", terminal, exc_info=True)


def _change_in_transaction(task_id: str, from_states: list[str], to_state: str | None, fields: dict[str, Any],
                           where: Q, detail: dict[str, Any], detail_columns: dict[str, str]) -> TradeTask | None:
    """The same change through the ORM (databases other than PostgreSQL): lock, check, update, record."""
    with transaction.atomic():
        task = TradeTask.objects.select_for_update().filter(Q(id=task_id, state__in=from_states) & where).first()
        if task is None:
            return None
        previous = task.state
        for name, value in fields.items():
            setattr(task, name, getattr(task, name) + value.by if isinstance(value, Increment) else value)
        if to_state is not None:
            task.state = to_state
        task.save(update_fields=[*fields, "state", "updated_at"])
        detail = {**detail, **{key: getattr(task, column) for key, column in detail_columns.items()}}
        TaskTransition.objects.create(task=task, from_state=previous, to_state=task.state, detail=detail)
        change = detail.get("change", "")
        transaction.on_commit(lambda: publish_task_change(task, previous=previous, change=change))
    return task


def task_claim(*, task_id: str, lease: Lease) -> TradeTask | None:
    """The pinned worker's claim: ``queued → dispatched`` for a task of the terminal whose ``lease``
    it holds, fenced by the lease's token (a stale worker's claim is refused), one attempt counted,
    the transition's detail ``{"attempt": n}``; committed when this returns (call it outside any
    transaction). None when the task is not queued, belongs to another terminal, its session is paused
    (it waits for the resume) or the lease moved."""
    return task_change(
        task_id=task_id, from_states=[TaskState.QUEUED], to_state=TaskState.DISPATCHED,
        fields={"attempts": Increment(), "dispatched_at": timezone.now()},
        where=Q(terminal_id=lease.terminal_id) & Q(fence_condition(lease)) & ~Q(Exists(
            BridgeSession.objects.filter(id=OuterRef("session_id"), paused_at__isnull=False))),
        detail_columns={"attempt": "attempts"},
    )


def task_create(*, task: TradeTask) -> None:
    """Insert a new (queued) task with its first transition ('' → queued), both or neither; its
    event after commit.

    Outside a transaction this commits. On PostgreSQL it is one statement (a CTE inserting the task
    and its transition). A unique violation (request id, tag) raises IntegrityError with nothing
    written, as the ORM path does.
    """
    if connection.vendor != "postgresql":
        with transaction.atomic():
            task.save(force_insert=True)
            TaskTransition.objects.create(task=task, from_state="", to_state=TaskState.QUEUED, detail={})
    else:
        fields = list(TradeTask._meta.concrete_fields)
        values = [f.get_db_prep_save(f.pre_save(task, True), connection) for f in fields]
        quote = connection.ops.quote_name
        sql = (
            f"WITH created AS (INSERT INTO {quote(TradeTask._meta.db_table)} "
            f"({', '.join(quote(f.column) for f in fields)}) VALUES ({', '.join(['%s'] * len(fields))}) RETURNING id), "
            f"recorded AS (INSERT INTO {quote(TaskTransition._meta.db_table)} (task_id, from_state, to_state, at, detail) "
            "SELECT id, '', %s, %s, %s FROM created) SELECT id FROM created"
        )
        params = [*values, TaskState.QUEUED, timezone.now(), _json({})]
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
            cursor.execute(sql, params)
        task._state.adding = False
    transaction.on_commit(lambda: publish_task_change(task, previous="", change=""))


def tasks_purge(*, task_ids: list[str]) -> int:
    """Delete these tasks with their transitions and receipts (request-id retention); how many tasks."""
    with transaction.atomic():
        RequestReceipt.objects.filter(task_id__in=task_ids).delete()
        _, per_model = TradeTask.objects.filter(id__in=task_ids).delete()
    return per_model.get(TradeTask._meta.label, 0)


# --- batches of the pinned worker ------------------------------------------------------------------
# The pinned worker executes the queued tasks of its terminal in batches (trading/execution.py): one
# transaction claims up to ``limit`` of them, one commits their send marks, one stores their outcomes.
# Each change of each task is still its own conditional UPDATE, its own transition row and its own
# ``order`` event; only the commits and the Redis round trips are shared. The statements are plain SQL
# that PostgreSQL and SQLite (3.35+: RETURNING) both run, so the embedded default does not pay for the
# ORM's query compilation per change. The events of a batch go out in one Redis pipeline after commit.

def _prep(model: type, name: str, value: Any) -> Any:
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def _record(cursor: Any, rows: list[tuple[str, str, str, dict[str, Any]]], at: Any) -> None:
    """Insert the transitions ``(task_id, from_state, to_state, detail)`` of a batch, all at ``at``: one
    statement."""
    if rows:
        table = connection.ops.quote_name(TaskTransition._meta.db_table)
        when = _prep(TaskTransition, "at", at)
        cursor.execute(f"INSERT INTO {table} (task_id, from_state, to_state, at, detail) VALUES "
                       + ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows)),
                       [value for task_id, before, after, detail in rows
                        for value in (task_id, before, after, when, _json(detail))])


def _update_many(cursor: Any, rows: list[tuple[str, dict[str, Any]]], same: dict[str, Any], where: str = "",
                 where_params: list[Any] | None = None) -> set[str]:
    """One UPDATE of many ``dispatched`` tasks: each row ``(task_id, {field: value})`` from a VALUES list
    (a field a row does not set keeps its value), ``same`` set on all of them, ``where`` (SQL over the
    task table) added to the condition. The ids it updated."""
    if not rows:
        return set()
    quote = connection.ops.quote_name
    table = quote(TradeTask._meta.db_table)
    names = list(dict.fromkeys(name for _, values in rows for name in values))
    fields = [TradeTask._meta.get_field(name) for name in names]
    postgres = connection.vendor == "postgresql"
    sets = []
    for index, field in enumerate(fields):
        value = f"v.c{index}"
        if postgres:  # VALUES literals are typed by their text; SQLite stores what it is given
            value = f"CAST({value} AS {field.db_type(connection)})"
        if any(field.name not in values for _, values in rows):
            value = f"COALESCE({value}, {table}.{quote(field.column)})"
        sets.append(f"{quote(field.column)} = {value}")
    sets += [f"{quote(TradeTask._meta.get_field(name).column)} = %s" for name in same]
    columns = ", ".join(["id", *(f"c{index}" for index in range(len(fields)))])
    placeholders = "(" + ", ".join(["%s"] * (len(fields) + 1)) + ")"
    params: list[Any] = []
    for task_id, values in rows:
        params.append(task_id)
        params += [field.get_db_prep_save(values[field.name], connection) if field.name in values else None
                   for field in fields]
    params += [_prep(TradeTask, name, value) for name, value in same.items()]
    cursor.execute(
        f"WITH v({columns}) AS (VALUES {', '.join([placeholders] * len(rows))}) "
        f"UPDATE {table} SET {', '.join(sets)} FROM v WHERE {table}.id = v.id AND {table}.state = %s "
        f"{('AND ' + where) if where else ''} RETURNING {table}.id",
        [*params, TaskState.DISPATCHED, *(where_params or [])])
    return {row[0] for row in cursor.fetchall()}


# Events of a claim that the worker publishes together with its send marks' (one Redis call less per
# batch): committed, waiting; any later publish of this process sends them first, so order is kept.
_deferred: list[tuple[str, dict[str, Any]]] = []


def _publish_now(events: list[tuple[str, dict[str, Any]]]) -> None:
    events = [*_deferred, *events]
    _deferred.clear()
    if not events:
        return
    try:
        publish_events([(session_id, "order", body, None) for session_id, body in events])
    except Exception:  # the ledger already holds the changes; the stream is best effort
        logger.exception("publishing %d order events failed", len(events))


def flush_deferred_events() -> None:
    """Publish the committed events still held back (``tasks_claim_batch(defer_events=True)``)."""
    if _deferred:
        _publish_now([])


def _publish_batch(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Publish ``(session_id, order event body)`` pairs after commit, in order, in one round trip (after
    any held back)."""
    if events or _deferred:
        transaction.on_commit(lambda: _publish_now(events))


def tasks_claim_batch(*, lease: Lease, task_id: str, limit: int, defer_events: bool = False,
                      others_created_before: Any = None) -> list[TradeTask]:
    """The pinned worker's claim of a batch: ``queued → dispatched`` (one attempt counted each, the
    transition's detail ``{"attempt": n}``) for ``task_id`` and the ``limit`` oldest queued tasks of the
    lease's terminal (``limit`` + 1 at most), fenced by the lease's token; committed when this returns
    (call it outside any transaction). A task of a paused session is not claimed (it waits for the resume). The claimed tasks in created order; [] when none was queued or the
    lease moved. ``defer_events``: their events wait for this process's next publish (the send marks').
    ``others_created_before``: the other tasks only if created before then (default: now)."""
    quote = connection.ops.quote_name
    table, terminals = quote(TradeTask._meta.db_table), quote(Terminal._meta.db_table)
    sessions = quote(BridgeSession._meta.db_table)
    now = timezone.now()
    paused = f"EXISTS (SELECT 1 FROM {sessions} s WHERE s.id = {{}}.session_id AND s.paused_at IS NOT NULL)"
    sql = (f"UPDATE {table} SET state = %s, attempts = attempts + 1, dispatched_at = %s, updated_at = %s "
           f"WHERE state = %s AND terminal_id = %s AND (id = %s OR id IN (SELECT q.id FROM {table} q "
           f"WHERE q.terminal_id = %s AND q.state = %s AND q.created_at <= %s AND NOT {paused.format('q')} "
           f"ORDER BY q.created_at LIMIT %s)) AND NOT {paused.format(table)} "
           f"AND EXISTS (SELECT 1 FROM {terminals} WHERE id = %s AND lease_token = %s) RETURNING "
           + ", ".join(quote(field.column) for field in TradeTask._meta.concrete_fields))
    stamp = _prep(TradeTask, "dispatched_at", now)
    before = _prep(TradeTask, "created_at", others_created_before or now)
    params = [TaskState.DISPATCHED, stamp, stamp, TaskState.QUEUED, lease.terminal_id, task_id, lease.terminal_id,
              TaskState.QUEUED, before, limit, lease.terminal_id, lease.token]
    with transaction.atomic():
        # The claimed rows as the ORM reads them (its converters), from the UPDATE itself.
        tasks = sorted(TradeTask.objects.raw(sql, params), key=lambda task: (task.created_at, task.id))
        if not tasks:
            return []
        with connection.cursor() as cursor:
            _record(cursor, [(task.id, TaskState.QUEUED, TaskState.DISPATCHED, {"attempt": task.attempts})
                             for task in tasks], now)
        events = [(task.session_id, order_event(task, previous=TaskState.QUEUED)) for task in tasks]
        if defer_events:
            transaction.on_commit(lambda: _deferred.extend(events))
        else:
            _publish_batch(events)
    return tasks


def tasks_mark_sent_batch(*, lease: Lease, marks: list[tuple[TradeTask, dict[str, Any]]]) -> list[bool]:
    """Commit the send marks (``sent_at``, ``mt5_request``) of ``dispatched`` tasks in one transaction,
    each only while this worker holds the lease (fence) and the task's session is ``active`` and the
    terminal's bound owner (as ``execution._mark_sent``). Per task: whether its mark was written (the
    task objects are updated in place)."""
    quote = connection.ops.quote_name
    table = quote(TradeTask._meta.db_table)
    terminals, sessions = quote(Terminal._meta.db_table), quote(BridgeSession._meta.db_table)
    now = timezone.now()
    owned = (f"EXISTS (SELECT 1 FROM {terminals} tm WHERE tm.id = {table}.terminal_id AND tm.lease_token = %s "
             f"AND tm.bound_session_id = {table}.session_id) "
             f"AND EXISTS (SELECT 1 FROM {sessions} s WHERE s.id = {table}.session_id AND s.status = %s)")
    with transaction.atomic(), connection.cursor() as cursor:
        updated = _update_many(cursor, [(task.id, {"mt5_request": request}) for task, request in marks],
                               {"sent_at": now, "updated_at": now}, owned, [lease.token, SessionStatus.ACTIVE])
        done = [task.id in updated for task, _ in marks]
        marked = [task for (task, _), ok in zip(marks, done, strict=True) if ok]
        for (task, request), ok in zip(marks, done, strict=True):
            if ok:
                task.sent_at, task.mt5_request, task.updated_at = now, request, now
        _record(cursor, [(task.id, TaskState.DISPATCHED, TaskState.DISPATCHED, {"change": "sent"}) for task in marked],
                now)
        _publish_batch([(task.session_id, order_event(task, previous=TaskState.DISPATCHED, change="sent"))
                        for task in marked])
    return done


def tasks_settle_batch(*, outcomes: list[tuple[TradeTask, str, dict[str, Any], dict[str, Any]]]) -> list[bool]:
    """Store the outcomes ``(task, to_state, fields, detail)`` of ``dispatched`` tasks in one transaction
    (each a conditional UPDATE from ``dispatched`` with its transition and its event). Per task: whether
    it was still ``dispatched`` (the task objects are updated in place)."""
    if not outcomes:
        return []
    _note_settled_at_terminal([TaskState.DISPATCHED], TaskState.FILLED)  # read-your-writes, before any commit
    now = timezone.now()
    rows = []
    for task, to_state, fields, _ in outcomes:
        values = {**fields, "state": to_state}
        if to_state in FINAL_STATES:
            values.setdefault("finished_at", now)
        rows.append((task.id, values))
    with transaction.atomic(), connection.cursor() as cursor:
        updated = _update_many(cursor, rows, {"updated_at": now})
        done = [task.id in updated for task, _, _, _ in outcomes]
        for (task, _, _, _), (_, values), ok in zip(outcomes, rows, done, strict=True):
            if ok:
                for name, value in {**values, "updated_at": now}.items():
                    setattr(task, name, value)
        settled = [(task, detail) for (task, _, _, detail), ok in zip(outcomes, done, strict=True) if ok]
        _record(cursor, [(task.id, TaskState.DISPATCHED, task.state, detail) for task, detail in settled], now)
        _publish_batch([(task.session_id, order_event(task, previous=TaskState.DISPATCHED)) for task, _ in settled])
    return done
