"""The write operations of the API: each validates, then inserts (or replays) a task.

Views call these with the live session and the request id; nothing here talks to a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from bridge_project.errors import BridgeError, Conflict, NotFound, ValidationFailed
from sessions.models import BridgeSession
from terminals import constants as C
from trading.ledger import (
    CallOutcome,
    Outcome,
    call_receipt_find,
    call_receipt_record,
    find_previous,
    find_previous_many,
    fingerprint,
    insert_or_replay,
    previous_outcome,
    record_receipt,
    tasks_insert_batch,
)
from trading.models import TaskKind, TaskState, TradeTask
from trading.money import LEVELS, money_level
from trading.orders import check_expiration, check_prices, check_volume, new_tag, validate_order_create
from trading.outbox import publish_task, publish_tasks
from trading.reads import selectors as terminal_reads
from trading.states import task_change
from trading.symbol_specs import get_spec


def _new_task(session: BridgeSession, request_id: str, fp: str, kind: str, payload: dict[str, Any],
              **fields: Any) -> Outcome:
    """Insert the task (publishing it after commit) or replay the earlier answer to this request id."""
    for _ in range(3):
        task = TradeTask(
            workspace_id=session.workspace_id, session=session, terminal_id=session.terminal_id,
            request_id=request_id, fingerprint=fp, kind=kind, request=payload, tag=new_tag(),
            published_at=timezone.now(), **fields,
        )

        def after_insert(t: TradeTask) -> None:
            transaction.on_commit(lambda: publish_task(t.id, session.terminal.name, stamped=True))

        try:
            return insert_or_replay(task, after_insert)
        except IntegrityError:
            continue  # a tag collision: try again with a new tag
    raise IntegrityError("could not insert the task")


def _account(session: BridgeSession) -> str:
    """The account a write is for, as the fingerprint includes it."""
    return f"{session.login}@{session.server}"


def _previous(session: BridgeSession, request_id: str, fp: str, fresh_id: bool) -> Outcome | None:
    """The earlier answer to this request id; none to look for when the bridge just made the id
    (the client sent none: a fresh random id cannot have been used, and the unique index would
    still arbitrate)."""
    return None if fresh_id else find_previous(session.workspace_id, request_id, fp)


def order_place(*, session: BridgeSession, request_id: str, data: dict[str, Any], fresh_id: bool = False) -> Outcome:
    """POST /orders → an ``order.create`` task, validated against the symbol's spec first."""
    fp = fingerprint("order.create", "", data, account=_account(session))
    previous = _previous(session, request_id, fp, fresh_id)
    if previous is not None:
        return previous
    spec = get_spec(session.terminal.name, session.id, data["symbol"])
    validate_order_create(data, spec)
    return _new_task(session, request_id, fp, TaskKind.ORDER_CREATE, data)


@dataclass(frozen=True)
class SessionAccount:
    """What a write needs of its session besides the checks the caller made (active, this workspace):
    fields a session never changes, so the hot write path keeps them per process."""

    session_id: str
    workspace_id: int
    terminal_id: int
    terminal_name: str
    login: int
    server: str


def session_account(*, session_id: str) -> SessionAccount | None:
    row = (BridgeSession.objects.filter(id=session_id)
           .values_list("workspace_id", "terminal_id", "terminal__name", "login", "server").first())
    return None if row is None or row[1] is None else SessionAccount(session_id, *row)


@dataclass
class OrderWrite:
    """One ``POST /orders`` of a batch: its session, request id and body (already validated against the
    body rules and the symbol's spec by the caller)."""

    account: SessionAccount
    request_id: str
    data: dict[str, Any]
    fresh_id: bool = False


def orders_place_batch(*, writes: list[OrderWrite],
                       after_commit: Callable[[Callable[[], None]], Any] | None = None
                       ) -> list[Outcome | BridgeError | None]:
    """``order_place`` for many orders in ONE transaction (one commit, one INSERT of the tasks and one of
    their transitions, one broker round trip for all the publishes): per write its Outcome (new or
    replayed), its BridgeError (409 TaskConflict), or None when it must be answered by ``order_place``
    itself (its insert lost a race with another process: the full path replays it from the ledger).

    The rules are order_place's: fingerprint with the account, the earlier answer to a request id first
    (a second write of a request id in the same batch is the first one's replay, or its conflict), the
    unique index as the arbiter, ``ledger.tasks_insert_batch`` the insert, the publish after commit with
    ``published_at`` stamped (the outbox). Used by the hot write path (``trading.hotwrites``), from one
    writer thread, so the web process holds the database's write lock once per batch instead of per order.
    Everything but the insert is done before the transaction (the lookup too: the unique index arbitrates
    a request id inserted meanwhile), so the lock is held for two statements. The batch's ``order`` events
    are published right after the commit, in the committing thread (the pinned worker claims queued tasks
    in batches, also ones whose message it has not received: a later event of a task must not overtake its
    first). ``after_commit``: where the batch's broker messages are then pushed (a single thread's
    ``submit``: the writer is free for the next batch meanwhile); default: in the committing thread."""
    results: list[Outcome | BridgeError | None] = [None] * len(writes)
    fps = [fingerprint("order.create", "", w.data, account=f"{w.account.login}@{w.account.server}") for w in writes]
    by_workspace: dict[int, list[str]] = {}
    for w in writes:
        if not w.fresh_id:
            by_workspace.setdefault(w.account.workspace_id, []).append(w.request_id)
    previous: dict[tuple[int, str], TradeTask] = {}
    for workspace_id, request_ids in by_workspace.items():
        for request_id, task in find_previous_many(workspace_id, request_ids).items():
            previous[(workspace_id, request_id)] = task
    first, new = _plan_batch(writes, fps, previous, results)
    with transaction.atomic():
        created = {task.id for task in tasks_insert_batch(tasks=list(new.values()))}
        published = []
        for i, task in new.items():
            if task.id in created:  # else its request id (or tag) was taken meanwhile: None, the full path
                results[i] = Outcome(task, task.status_code, False)
                published.append((task.id, writes[i].account.terminal_name))
        for i, (w, fp) in enumerate(zip(writes, fps, strict=True)):
            j = first.get((w.account.workspace_id, w.request_id))
            if j is not None and j != i and j in new and new[j].id in created:
                results[i] = _answer_previous(w.request_id, fp, _as_previous(new[j]))
        if published:
            transaction.on_commit(lambda: _run(after_commit, lambda: publish_tasks(published)))
    return results


def _plan_batch(writes: list[OrderWrite], fps: list[str], previous: dict[tuple[int, str], TradeTask],
                results: list[Outcome | BridgeError | None]) -> tuple[dict[tuple[int, str], int], dict[int, TradeTask]]:
    """Answer the writes whose request id the ledger already holds (into ``results``); the new task of
    each other request id (the first write of it in the batch): request id -> write index, index -> task."""
    first: dict[tuple[int, str], int] = {}
    new: dict[int, TradeTask] = {}
    for i, (w, fp) in enumerate(zip(writes, fps, strict=True)):
        key = (w.account.workspace_id, w.request_id)
        earlier = previous.get(key)
        if earlier is not None:
            results[i] = _answer_previous(w.request_id, fp, earlier)
        elif key not in first:
            first[key] = i
            new[i] = TradeTask(
                workspace_id=w.account.workspace_id, session_id=w.account.session_id,
                terminal_id=w.account.terminal_id, request_id=w.request_id, fingerprint=fp,
                kind=TaskKind.ORDER_CREATE, request=w.data, tag=new_tag(), published_at=timezone.now(),
            )
    return first, new


def _run(after_commit: Callable[[Callable[[], None]], Any] | None, work: Callable[[], None]) -> None:
    if after_commit is None:
        work()
    else:
        after_commit(work)


def _answer_previous(request_id: str, fp: str, earlier: TradeTask) -> Outcome | BridgeError:
    try:
        return previous_outcome(request_id, fp, earlier)
    except BridgeError as exc:
        return exc


def _as_previous(task: TradeTask) -> TradeTask:
    """A task inserted in this batch, as ``find_previous_many`` gives one."""
    task.previous_fingerprint, task.previous_status = task.fingerprint, task.status_code
    return task


def _in_place(session: BridgeSession, request_id: str, fp: str,
              edit: Callable[[], Outcome | None]) -> Outcome | None:
    """Run an in-place edit of a queued task in one transaction with its receipt; a concurrent
    identical request that won the receipt is replayed instead."""
    try:
        with transaction.atomic():
            return edit()
    except IntegrityError:
        previous = find_previous(session.workspace_id, request_id, fp)
        if previous is None:
            raise
        return previous


def _order_task(session: BridgeSession, task_id: str) -> TradeTask:
    task = TradeTask.objects.filter(id=task_id, workspace_id=session.workspace_id).select_related("terminal").first()
    if task is None:
        raise NotFound("unknown task", {"taskId": task_id})
    if task.kind != TaskKind.ORDER_CREATE:
        raise Conflict(f"task {task_id} is a {task.kind} task, not an order", {"taskId": task_id})
    return task


def _working_pending(task: TradeTask) -> bool:
    """A pending order this task placed at the broker (it may have triggered or expired since)."""
    return task.state == TaskState.PLACED and task.order_ticket is not None


PENDING_MODIFIABLE = {"price", "stoplimit", "sl", "tp", "expiration", "type_time"}


def order_patch(*, session: BridgeSession, request_id: str, task_id: str, changes: dict[str, Any],
        fresh_id: bool = False) -> Outcome:
    """PATCH /orders/{taskId}: edit a queued task in place (200), or modify the working pending order
    at the broker through a new ``order.modify`` task (202); 409 otherwise."""
    fp = fingerprint("order.patch", task_id, changes, account=_account(session))
    previous = _previous(session, request_id, fp, fresh_id)
    if previous is not None:
        return previous
    task = _order_task(session, task_id)
    if task.state == TaskState.QUEUED:
        spec = get_spec(session.terminal.name, session.id, task.request["symbol"])

        def edit_in_place() -> Outcome | None:
            locked = TradeTask.objects.select_for_update().get(id=task.id)
            if locked.state != TaskState.QUEUED:
                return None
            merged = {**locked.request, **changes}
            validate_order_create(merged, spec)
            edited = task_change(task_id=task.id, from_states=[TaskState.QUEUED], fields={"request": merged},
                                 detail={"by": "client", "requestId": request_id}, change="edited")
            return record_receipt(session.workspace_id, request_id, fp, edited, 200)

        outcome = _in_place(session, request_id, fp, edit_in_place)
        if outcome is not None:
            return outcome
        task.refresh_from_db()
    if _working_pending(task) and task.request["type"] not in C.MARKET_TYPES:
        not_modifiable = sorted(set(changes) - PENDING_MODIFIABLE - {"deviation"})
        if not_modifiable:
            raise ValidationFailed(
                "a working pending order's volume and comment cannot change",
                {name: ["cannot change on an order at the broker"] for name in not_modifiable},
            )
        errors: dict[str, list[str]] = {}
        spec = get_spec(session.terminal.name, session.id, task.request["symbol"])
        if spec is not None:
            check_prices(changes, spec, errors)
        check_expiration(changes.get("type_time", task.request.get("type_time")),
                         changes.get("expiration", task.request.get("expiration")), errors)
        if task.request["type"] not in C.STOP_LIMIT_TYPES and changes.get("stoplimit"):
            errors.setdefault("stoplimit", []).append("only for BUY_STOP_LIMIT and SELL_STOP_LIMIT orders")
        if errors:
            raise ValidationFailed("order modification failed validation", errors)
        payload = {k: v for k, v in changes.items() if k in PENDING_MODIFIABLE}
        return _new_task(session, request_id, fp, TaskKind.ORDER_MODIFY, payload, parent=task,
                         order_ticket=task.order_ticket)
    raise Conflict(f"task {task.id} is {task.state}: it can no longer be changed", {"taskId": task.id,
                                                                                   "state": task.state})


def order_cancel(*, session: BridgeSession, request_id: str, task_id: str,
        fresh_id: bool = False) -> Outcome:
    """DELETE /orders/{taskId}: cancel a queued task (200), or remove the working pending order at the
    broker through a new ``order.cancel`` task (202); 409 otherwise."""
    fp = fingerprint("order.delete", task_id, {}, account=_account(session))
    previous = _previous(session, request_id, fp, fresh_id)
    if previous is not None:
        return previous
    task = _order_task(session, task_id)
    if task.state == TaskState.QUEUED:

        def cancel_in_place() -> Outcome | None:
            cancelled = task_change(task_id=task.id, from_states=[TaskState.QUEUED], to_state=TaskState.CANCELLED, detail={"by": "client"})
            if cancelled is None:
                return None
            return record_receipt(session.workspace_id, request_id, fp, cancelled, 200)

        outcome = _in_place(session, request_id, fp, cancel_in_place)
        if outcome is not None:
            return outcome
        task.refresh_from_db()
    if _working_pending(task) and task.request["type"] not in C.MARKET_TYPES:
        return _new_task(session, request_id, fp, TaskKind.ORDER_CANCEL, {}, parent=task,
                         order_ticket=task.order_ticket)
    raise Conflict(f"task {task.id} is {task.state}: it can no longer be cancelled", {"taskId": task.id,
                                                                                     "state": task.state})


def _position_symbol(session: BridgeSession, ticket: int) -> str | None:
    """The symbol of a position this bridge opened (from the ledger), if known."""
    row = (
        TradeTask.objects.filter(workspace_id=session.workspace_id, terminal_id=session.terminal_id,
                            position_ticket=ticket, kind=TaskKind.ORDER_CREATE)
        .values_list("request", flat=True)
        .first()
    )
    return row.get("symbol") if row else None


def position_close(*, session: BridgeSession, request_id: str, ticket: int, data: dict[str, Any],
        fresh_id: bool = False) -> Outcome:
    """POST /positions/{ticket}/close → a ``position.close`` task (partial when volume is given)."""
    fp = fingerprint("position.close", str(ticket), data, account=_account(session))
    previous = _previous(session, request_id, fp, fresh_id)
    if previous is not None:
        return previous
    if "volume" in data:
        symbol = _position_symbol(session, ticket)
        spec = get_spec(session.terminal.name, session.id, symbol) if symbol else None
        if spec is not None:
            errors: dict[str, list[str]] = {}
            check_volume(data["volume"], spec, errors)
            if errors:
                raise ValidationFailed("close volume failed validation", errors)
    return _new_task(session, request_id, fp, TaskKind.POSITION_CLOSE, data, position_ticket=ticket)


def position_modify(*, session: BridgeSession, request_id: str, ticket: int, data: dict[str, Any],
        fresh_id: bool = False) -> Outcome:
    """PATCH /positions/{ticket} → a ``position.modify`` task (SL/TP). ``slMoney``/``tpMoney`` become
    prices now, from the position and its symbol as the terminal shows them (``_money_payload``); the
    fingerprint is of the body as sent, so a replay is the same task whatever the prices did since."""
    fp = fingerprint("position.modify", str(ticket), data, account=_account(session))
    previous = _previous(session, request_id, fp, fresh_id)
    if previous is not None:
        return previous
    if any(field in data for field in LEVELS.values()):
        payload, symbol = _money_payload(session, ticket, data)
    else:
        payload, symbol = data, _position_symbol(session, ticket)
    spec = get_spec(session.terminal.name, session.id, symbol) if symbol else None
    if spec is not None:
        errors: dict[str, list[str]] = {}
        check_prices({name: data[name] for name in LEVELS if name in data}, spec, errors)
        if errors:
            raise ValidationFailed("stop levels failed validation", errors)
    return _new_task(session, request_id, fp, TaskKind.POSITION_MODIFY, payload, position_ticket=ticket)


def _money_payload(session: BridgeSession, ticket: int, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The task's request for a body with money levels: the prices given or computed (``sl``/``tp``, what
    the worker sends) and ``moneyLevels`` (per level: the sum asked, the price, the sum that price really
    means, and what it was computed from); and the position's symbol. 404 when the terminal has no such
    open position (as GET /positions/{ticket})."""
    position = terminal_reads.position(session, ticket)
    info = terminal_reads.symbol_info(session, position["symbol"])
    payload = {name: data[name] for name in LEVELS if name in data}
    levels = {}
    for level, field in LEVELS.items():
        if field in data:
            levels[level] = money_level(level=level, money=data[field], position=position, info=info)
            payload[level] = levels[level]["price"]
    payload["moneyLevels"] = levels
    return payload, position["symbol"]


# A request id made for each task of a close-all: ``<call's request id>/<ticket>``. The call's own id
# must leave room for the longest ticket (19 digits) within the 128 characters of a request id.
DERIVED_SEPARATOR = "/"
MAX_CALL_REQUEST_ID = 128 - len(DERIVED_SEPARATOR) - len(str(2**63 - 1))
SIDES = {"BUY": C.POSITION_TYPE_BUY, "SELL": 1}  # POSITION_TYPE_BUY, POSITION_TYPE_SELL


def derived_request_id(request_id: str, ticket: int) -> str:
    return f"{request_id}{DERIVED_SEPARATOR}{ticket}"


def _matches(position: dict[str, Any], filters: dict[str, Any]) -> bool:
    return (("symbol" not in filters or str(position.get("symbol", "")).lower() == filters["symbol"].lower())
            and ("side" not in filters or int(position["type"]) == SIDES[filters["side"]])
            and ("magic" not in filters or int(position.get("magic", -1)) == filters["magic"]))


def positions_close_all(*, session: BridgeSession, request_id: str, data: dict[str, Any],
        fresh_id: bool = False) -> CallOutcome:
    """POST /positions/close: one ``position.close`` task per open position of the session's account that
    matches the filters (``symbol``, ``side``, ``magic``), each under ``<request id>/<ticket>``, recorded
    with the call's fingerprint in a ``CallReceipt`` (in the transaction of the tasks). A replay answers
    the receipt's tasks without reading the terminal (their positions may be closed by then); another
    body under the request id, or an id another write holds: 409. No match: no task, 200 (recorded too,
    so a replay answers the same empty list even if positions opened since)."""
    fp = fingerprint("positions.close_all", "", data, account=_account(session))
    if not fresh_id:
        previous = call_receipt_find(session.workspace_id, request_id, fp)
        if previous is not None:
            return previous
        find_previous(session.workspace_id, request_id, fp)  # another write's id: 409 (never a replay)
    if len(request_id) > MAX_CALL_REQUEST_ID:
        raise ValidationFailed(
            f"the request id of a close-all is at most {MAX_CALL_REQUEST_ID} characters: each task's id is "
            f"'<request id>/<ticket>' within 128",
            {"x-request-id": [f"at most {MAX_CALL_REQUEST_ID} characters for this call"]})
    positions = sorted((p for p in terminal_reads.positions(session)["positions"] if _matches(p, data)),
                       key=lambda p: int(p["ticket"]))
    payload = {"deviation": data["deviation"]} if "deviation" in data else {}
    account = _account(session)
    try:
        with transaction.atomic():
            outcomes = [
                _new_task(session, derived_request_id(request_id, int(p["ticket"])),
                          fingerprint("positions.close_all", str(int(p["ticket"])), data, account=account),
                          TaskKind.POSITION_CLOSE, payload, position_ticket=int(p["ticket"]))
                for p in positions
            ]
            status_code = 202 if outcomes else 200
            call_receipt_record(workspace_id=session.workspace_id, request_id=request_id, fp=fp,
                                task_ids=[o.task.id for o in outcomes], status_code=status_code)
    except IntegrityError:
        # A concurrent call under this request id committed first: answer it (or 409 if it differs).
        previous = call_receipt_find(session.workspace_id, request_id, fp)
        if previous is None:
            raise
        return previous
    return CallOutcome([o.task for o in outcomes], status_code, False)


def tasks_cancel_of_ended_session(*, session_id: str, reason: str) -> int:
    """A session ended: its tasks still ``queued`` end ``cancelled`` (``SessionEnded``), each with its
    transition and ``order`` event. Tasks already claimed by the worker finish there (the worker's
    ownership check refuses to send one whose session is no longer the terminal's owner)."""
    cancelled = 0
    queued = TradeTask.objects.filter(session_id=session_id, state=TaskState.QUEUED).values_list("id", flat=True)
    for task_id in list(queued):
        if task_change(task_id=task_id, from_states=[TaskState.QUEUED], to_state=TaskState.CANCELLED, detail={"by": "session", "reason": reason}, fields={"result": {"error": {"code": "SessionEnded", "message": f"the session ended ({reason}) before the "
                                  "task ran: nothing was sent"}, "source": "bridge"}}):
            cancelled += 1
    return cancelled


def on_session_ended(sender: object, *, session: BridgeSession, reason: str, **_: object) -> None:
    """Receiver of ``sessions.signals.session_ended`` (connected in ``TradingConfig.ready``)."""
    tasks_cancel_of_ended_session(session_id=session.id, reason=reason)
