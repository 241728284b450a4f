"""Task state changes: conditional, recorded in TaskTransition, published after commit.

Every state change of a task goes through ``move`` (or ``claim``, the worker's ``queued →
dispatched``): an ``UPDATE ... WHERE state = expected`` so two actors (the pinned worker, a
PATCH/DELETE, reconciliation) can never both win a transition, the ``TaskTransition`` row in the
same transaction, and the ``order`` event once it is committed.

On PostgreSQL a move from one state is ONE statement: a data-modifying CTE updates the row and
inserts its transition (both or neither: a statement is atomic), and returns the row. That is one
round trip and one commit instead of five (BEGIN, SELECT ... FOR UPDATE, UPDATE, INSERT, COMMIT) on
the order path. The conditional ``WHERE state = %s`` re-checked under the row lock is what
``SELECT ... FOR UPDATE`` + a check in Python gave. Moves from several states (recovery) and other
databases (SQLite in development) take the ORM path.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from terminals.lease import Lease
from terminals.models import Terminal

from .events import publish_task_state
from .models import FINAL_STATES, TaskState, TaskTransition, TradeTask


class Increment:
    """A field value for ``move``: add ``by`` to the column in the same update (e.g. attempts)."""

    def __init__(self, by: int = 1):
        self.by = by


def _one_statement_move(task_id: str, from_state: str, to_state: str, detail_sql: str, detail_params: list[Any],
                        fields: dict[str, Any], extra_where: dict[str, Any], fence: Lease | None = None) -> TradeTask | None:
    """UPDATE the task from ``from_state`` and INSERT its transition in one statement (PostgreSQL)."""
    opts = TradeTask._meta
    sets, params = [], []
    for name, value in {**fields, "state": to_state, "updated_at": timezone.now()}.items():
        field = opts.get_field(name)
        column = connection.ops.quote_name(field.column)
        if isinstance(value, Increment):
            sets.append(f"{column} = {column} + %s")
            params.append(value.by)
        else:
            sets.append(f"{column} = %s")
            params.append(field.get_db_prep_save(value, connection))
    where = [f"{connection.ops.quote_name(opts.pk.column)} = %s", "state = %s"]
    params += [task_id, from_state]
    for name, value in extra_where.items():
        field = opts.get_field(name)
        where.append(f"{connection.ops.quote_name(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    if fence is not None:
        where.append(f"EXISTS (SELECT 1 FROM {connection.ops.quote_name(Terminal._meta.db_table)} lease "
                     "WHERE lease.id = %s AND lease.lease_token = %s)")
        params += [fence.terminal_id, fence.token]
    transitions = connection.ops.quote_name(TaskTransition._meta.db_table)
    sql = (
        f"WITH moved AS (UPDATE {connection.ops.quote_name(opts.db_table)} SET {', '.join(sets)} "
        f"WHERE {' AND '.join(where)} RETURNING *), "
        f"recorded AS (INSERT INTO {transitions} (task_id, from_state, to_state, at, detail) "
        f"SELECT id, %s, %s, %s, {detail_sql} FROM moved) "
        "SELECT * FROM moved"
    )
    params += [from_state, to_state, timezone.now(), *detail_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        if row is None:
            return None
        columns = [column.name for column in cursor.description]
    task = _task_of_row(dict(zip(columns, row, strict=True)))
    transaction.on_commit(lambda: publish_task_state(task))
    return task


def _task_of_row(row: dict[str, Any]) -> TradeTask:
    """A TradeTask from a ``RETURNING *`` row (column name → value), JSON columns decoded as the ORM does."""
    fields = TradeTask._meta.concrete_fields
    values = []
    for field in fields:
        value = row[field.column]
        if hasattr(field, "from_db_value"):
            value = field.from_db_value(value, None, connection)
        values.append(value)
    return TradeTask.from_db(connection.alias, [field.attname for field in fields], values)


def _json(value: dict[str, Any]) -> Any:
    return TaskTransition._meta.get_field("detail").get_db_prep_save(value, connection)


def move(
    task_id: str,
    from_states: Iterable[str],
    to_state: str,
    *,
    detail: dict[str, Any] | None = None,
    **fields: Any,
) -> TradeTask | None:
    """Move a task from one of ``from_states`` to ``to_state`` (setting ``fields``; an ``Increment``
    adds to the column); None if it was no longer in one of them (someone else moved it first)."""
    from_states = list(from_states)
    now = timezone.now()
    if to_state in FINAL_STATES:
        fields.setdefault("finished_at", now)
    if len(from_states) == 1 and connection.vendor == "postgresql":
        return _one_statement_move(task_id, from_states[0], to_state, "%s", [_json(detail or {})], fields, {})
    return _locked_move(task_id, from_states, to_state, detail, fields)


def _locked_move(task_id: str, from_states: list[str], to_state: str, detail: dict[str, Any] | None,
                 fields: dict[str, Any], fence: Lease | None = None) -> TradeTask | None:
    """The portable move: lock the row, check its state (and the fence), update it, record the transition."""
    with transaction.atomic():
        task = TradeTask.objects.select_for_update().filter(id=task_id, state__in=from_states).first()
        if task is None:
            return None
        if fence is not None and not Terminal.objects.filter(id=fence.terminal_id, lease_token=fence.token).exists():
            return None
        previous = task.state
        for name, value in fields.items():
            setattr(task, name, getattr(task, name) + value.by if isinstance(value, Increment) else value)
        task.state = to_state
        task.save(update_fields=[*fields, "state", "updated_at"])
        TaskTransition.objects.create(task=task, from_state=previous, to_state=to_state, detail=detail or {})
        transaction.on_commit(lambda: publish_task_state(task))
    return task


def claim(task_id: str, lease: Lease) -> TradeTask | None:
    """The pinned worker's claim: ``queued → dispatched`` for a task of the terminal whose ``lease``
    it holds, fenced by the lease's token (a stale worker's claim is refused), one attempt counted,
    the transition's detail ``{"attempt": n}``; committed when this returns (call it outside any
    transaction). None when the task is not queued, belongs to another terminal or the lease moved."""
    if connection.vendor == "postgresql":
        return _one_statement_move(task_id, TaskState.QUEUED, TaskState.DISPATCHED,
                                   "jsonb_build_object('attempt', attempts)", [],
                                   {"attempts": Increment(), "dispatched_at": timezone.now()},
                                   {"terminal_id": lease.terminal_id}, fence=lease)
    task = TradeTask.objects.filter(id=task_id, terminal_id=lease.terminal_id).only("attempts").first()
    if task is None:
        return None
    return _locked_move(task_id, [TaskState.QUEUED], TaskState.DISPATCHED, {"attempt": task.attempts + 1},
                        {"attempts": Increment(), "dispatched_at": timezone.now()}, fence=lease)


def record_created(task: TradeTask) -> None:
    """The first transition ('' → queued) of a task just inserted (call inside its transaction)."""
    TaskTransition.objects.create(task=task, from_state="", to_state=TaskState.QUEUED, detail={})
    transaction.on_commit(lambda: publish_task_state(task))


def create(task: TradeTask) -> None:
    """Insert a new (queued) task with its first transition, both or neither; its event after commit.

    Outside a transaction this commits. On PostgreSQL it is one statement (a CTE inserting the task
    and its transition): no BEGIN/COMMIT round trips, no ORM compilation on the write path. A unique
    violation (request id, tag) raises IntegrityError with nothing written, as the ORM path does.
    """
    if connection.vendor != "postgresql":
        with transaction.atomic():
            task.save(force_insert=True)
            record_created(task)
        return
    fields = list(TradeTask._meta.concrete_fields)
    values = [f.get_db_prep_save(f.pre_save(task, True), connection) for f in fields]
    quote = connection.ops.quote_name
    sql = (
        f"WITH created AS (INSERT INTO {quote(TradeTask._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING id), "
        f"recorded AS (INSERT INTO {quote(TaskTransition._meta.db_table)} (task_id, from_state, to_state, at, detail) "
        "SELECT id, '', %s, %s, %s FROM created) SELECT id FROM created"
    )
    params = [*values, TaskState.QUEUED, timezone.now(), _json({})]
    with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
        cursor.execute(sql, params)
    task._state.adding = False
    transaction.on_commit(lambda: publish_task_state(task))
