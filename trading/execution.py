"""Executing a task on its terminal's pinned worker, exactly once.

The order of steps is the guarantee:

1. **claim**: ``queued → dispatched`` (attempt counted), a conditional update committed before the
   terminal is touched. A task that is not ``queued`` any more is never executed from a delivery.
2. **send mark**: ``sent_at`` is committed immediately before ``order_send``. A task found
   ``dispatched`` without it never reached the terminal and may be sent; with it, it may have.
3. **order_send**, then the result and the final state are stored in one transaction.

A task found ``dispatched`` (a redelivery after a crash, or the worker's start-up reconciliation) is
first looked up at the terminal by its tag and adopted when found. Not found and never sent: it is
sent now. Not found but sent: ``unknown`` until it shows up or BRIDGE_INFLIGHT_BOUND has passed
since it was sent (then ``failed``: it never executed). An outcome that cannot be known (IPC timeout,
``None`` without a definite error, a dropped connection) is ``unknown``, never resent blindly.

Only requote, price changed and price off are retried (MT5 executed nothing), with a fresh price
within the request's deviation, at most BRIDGE_ORDER_RETRIES times.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from django.db.models import F
from django.utils import timezone

from sessions.models import BridgeSession
from workers.config import get_terminal
from workers.gateway import GatewayError, TerminalGateway, as_dict
from workers.models import Terminal
from workers.runtime import gateway, pinned_terminal

from . import mt5const as C, orders
from .conf import conf
from .lookup import Trace, find_trace
from .models import Task, TaskKind, TaskState
from .states import claim, move

logger = logging.getLogger("bridge.trading.execution")

RECOVERABLE = (TaskState.DISPATCHED, TaskState.UNKNOWN)
# last_error codes after which order_send certainly did not reach the trade server.
NOT_SENT_CODES = {
    -2,  # invalid params (refused by the module or the terminal before trading)
    -8,  # Python API trading disabled in the terminal
    -10003,  # IPC initialize failed
    -10004,  # no IPC connection: the call never left this process
}


def crash_point(name: str) -> None:
    """Test-only: SIGKILL this worker here when BRIDGE_CRASH_AT names this point (docs/orders.md)."""
    if conf("BRIDGE_CRASH_AT") == name:
        logger.warning("BRIDGE_CRASH_AT=%s: killing the worker (pid %s)", name, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


class Rejected(Exception):
    """The bridge decided, before sending, that the broker would refuse (e.g. the position is gone)."""

    def __init__(self, retcode: int, comment: str):
        super().__init__(comment)
        self.retcode, self.comment = retcode, comment


def _utc_offset(task: Task) -> int:
    return int(get_terminal(task.terminal.name).utc_offset)


# Per-process caches of the pinned worker (one terminal, one thread): rows and specs that do not
# change between tasks, so a task costs no extra query or terminal round trip for them.
_terminal_rows: dict[str, Terminal] = {}
_margin_modes: dict[str, int] = {}
_symbol_infos: dict[tuple[str, str], tuple[float, Any]] = {}
SYMBOL_INFO_TTL = 60.0  # s: filling modes and point size change rarely (and a stale one is refused, not wrong)
CACHE_LIMIT = 1000


def _terminal_row(name: str) -> Terminal | None:
    row = _terminal_rows.get(name)
    if row is None:
        row = Terminal.objects.filter(name=name).first()
        if row is not None:
            _terminal_rows[name] = row
    return row


def run_task(task_id: str) -> str:
    """Entry point of a delivery of ``task_id`` on the pinned worker; returns what it did."""
    terminal = _terminal_row(pinned_terminal() or "")
    if terminal is not None:
        # The common case in one statement: claim (and record) a queued task of this terminal.
        claimed = claim(task_id, terminal.id)
        if claimed is not None:
            claimed.terminal = terminal
            crash_point("after_claim")
            return send(claimed)
    task = Task.objects.select_related("terminal", "session").filter(id=task_id).first()
    if task is None:
        return "missing"
    if task.terminal.name != pinned_terminal():
        logger.error("task %s of terminal %s reached the worker of %s", task_id, task.terminal.name,
                     pinned_terminal())
        return "wrong-terminal"
    if task.state == TaskState.QUEUED:
        # This terminal's row is not the one cached (it was re-created): claim with the row's id.
        _terminal_rows[task.terminal.name] = task.terminal
        claimed = claim(task_id, task.terminal_id)
        if claimed is None:
            return "not-queued"
        claimed.terminal = task.terminal
        crash_point("after_claim")
        return send(claimed)
    if task.state == TaskState.DISPATCHED:
        return recover(task, "redelivered")
    return f"skipped-{task.state}"


def recover(task: Task, reason: str) -> str:
    """Settle a ``dispatched`` or ``unknown`` task nobody is executing: adopt, send, wait or fail."""
    gw = gateway()
    try:
        trace = find_trace(gw, task, _utc_offset(task))
    except (GatewayError, OSError) as exc:
        logger.warning("lookup of task %s failed: %s", task.id, exc)
        return "lookup-failed"
    if trace is not None:
        adopt(task, trace, reason)
        return f"adopted-{trace.state}"
    if task.state == TaskState.DISPATCHED and task.sent_at is None:
        # Claimed but the send mark was never committed: nothing reached the terminal.
        resent = Task.objects.filter(id=task.id, state=TaskState.DISPATCHED, sent_at__isnull=True).update(
            attempts=F("attempts") + 1
        )
        if not resent:
            return "raced"
        task.refresh_from_db()
        logger.info("task %s (%s): claimed but never sent; sending now", task.id, reason)
        return send(task)
    sent_at = task.sent_at or task.dispatched_at or task.created_at
    age = (timezone.now() - sent_at).total_seconds()
    if age >= conf("BRIDGE_INFLIGHT_BOUND"):
        move(task.id, RECOVERABLE, TaskState.FAILED,
             detail={"reason": reason, "lookup": "not found", "sentAgo": round(age, 3)},
             result={**(task.result or {}), "error": {
                 "code": "NotExecuted",
                 "message": "sent, but not found at the terminal after the in-flight bound: it never executed"}})
        return "failed-not-found"
    if task.state == TaskState.DISPATCHED:
        move(task.id, [TaskState.DISPATCHED], TaskState.UNKNOWN,
             detail={"reason": reason, "lookup": "not found yet", "sentAgo": round(age, 3)})
    return "unknown"


def adopt(task: Task, trace: Trace, reason: str) -> Task | None:
    """Record what the terminal shows as the task's final outcome."""
    fields: dict[str, Any] = {"result": trace.result}
    for name in ("order_ticket", "deal_ticket", "position_ticket"):
        value = getattr(trace, name)
        if value:
            fields[name] = value
    return move(task.id, RECOVERABLE, trace.state, detail={"reason": reason, "adoptedFrom": trace.found_in},
                **fields)


# --- sending ---------------------------------------------------------------------------------------

def _symbol_info(gw: TerminalGateway, task: Task, symbol: str) -> Any:
    """``symbol_info`` (filling modes, point) of the session's account, cached for SYMBOL_INFO_TTL."""
    key, now = (task.session_id, symbol), time.monotonic()
    cached = _symbol_infos.get(key)
    if cached is not None and now - cached[0] < SYMBOL_INFO_TTL:
        return cached[1]
    info = gw.call("symbol_info", symbol)
    if len(_symbol_infos) >= CACHE_LIMIT:
        _symbol_infos.clear()
    _symbol_infos[key] = (now, info)
    return info


def _build(gw: TerminalGateway, task: Task) -> tuple[dict[str, Any], Any]:
    """The order_send request of the task (terminal reads included) and the symbol info used."""
    offset = _utc_offset(task)
    req = task.request
    if task.kind == TaskKind.ORDER_CREATE:
        info = _symbol_info(gw, task, req["symbol"])
        tick = None
        if req["type"] in C.MARKET_TYPES and not req.get("price"):
            tick = gw.call("symbol_info_tick", req["symbol"])
        return orders.order_create_request(req, task.tag, offset, info, tick), info
    if task.kind in (TaskKind.POSITION_CLOSE, TaskKind.POSITION_MODIFY):
        positions = tuple(gw.call("positions_get", ticket=int(task.position_ticket)))
        if not positions:
            raise Rejected(C.RETCODE_POSITION_CLOSED, "position not found at the terminal")
        position = positions[0]
        if task.kind == TaskKind.POSITION_MODIFY:
            return orders.position_modify_request(req, position), None
        info = _symbol_info(gw, task, position.symbol)
        tick = gw.call("symbol_info_tick", position.symbol)
        return orders.position_close_request(req, task.tag, position, info, tick), info
    if task.kind == TaskKind.ORDER_MODIFY:
        found = tuple(gw.call("orders_get", ticket=int(task.order_ticket)))
        if not found:
            raise Rejected(C.RETCODE_INVALID_ORDER, "the order is no longer working at the terminal")
        return orders.order_modify_request(req, found[0], offset), None
    if task.kind == TaskKind.ORDER_CANCEL:
        return orders.order_cancel_request(int(task.order_ticket)), None
    raise ValueError(f"unknown task kind {task.kind}")


def _result_dict(result: Any, retries: int) -> dict[str, Any]:
    data = as_dict(result)
    data.pop("request", None)
    data["retcodeText"] = C.retcode_text(data.get("retcode"))
    if retries:
        data["retries"] = retries
    return data


def _final_state(task: Task, retcode: int, mt5_request: dict[str, Any]) -> str:
    if task.kind == TaskKind.ORDER_CREATE and mt5_request["action"] == C.TRADE_ACTION_PENDING:
        return TaskState.PLACED if retcode in (C.RETCODE_PLACED, C.RETCODE_DONE) else TaskState.REJECTED
    if retcode == C.RETCODE_DONE:
        return TaskState.FILLED
    if retcode == C.RETCODE_DONE_PARTIAL:
        return TaskState.PARTIAL
    if retcode == C.RETCODE_PLACED:
        return TaskState.PLACED
    if retcode == C.RETCODE_NO_CHANGES and task.attempts > 1:
        return TaskState.FILLED  # a resent modification that an earlier attempt already applied
    return TaskState.REJECTED


def _mark_sent(task: Task, request: dict[str, Any]) -> bool:
    return bool(Task.objects.filter(id=task.id, state=TaskState.DISPATCHED).update(
        sent_at=timezone.now(), mt5_request=request, updated_at=timezone.now()))


def _fresh_price(gw: TerminalGateway, request: dict[str, Any]) -> float | None:
    try:
        tick = gw.call("symbol_info_tick", request["symbol"])
    except GatewayError:
        return None
    price = orders.market_price(int(request["type"]), tick)
    return price or None


def send(task: Task) -> str:
    """Build, mark sent, order_send, retry what is safe, store the outcome. Task is ``dispatched``."""
    gw = gateway()
    try:
        gw.ensure_connected()
        request, info = _build(gw, task)
    except Rejected as exc:
        move(task.id, [TaskState.DISPATCHED], TaskState.REJECTED, detail={"bridge": exc.comment},
             result={"retcode": exc.retcode, "retcodeText": C.retcode_text(exc.retcode), "comment": exc.comment,
                     "source": "bridge"})
        return "rejected"
    except (GatewayError, OSError) as exc:
        code = getattr(exc, "code", -10000)
        move(task.id, [TaskState.DISPATCHED], TaskState.FAILED, detail={"stage": "prepare"},
             result={"error": {"code": "BridgeUnavailable", "message": f"terminal unreachable before sending: {exc}",
                               "mt5": code}})
        return "failed"
    reference = float(request.get("price") or 0.0)
    retries = 0
    while True:
        if not _mark_sent(task, request):
            return "raced"
        result, error = _order_send(gw, request)
        crash_point("after_send")
        if result is None:
            return _store_unknown_or_failed(task, request, error)
        retcode = int(result.retcode)
        retryable = (request["action"] == C.TRADE_ACTION_DEAL and retcode in C.RETRYABLE_RETCODES
                     and retries < conf("BRIDGE_ORDER_RETRIES"))
        if retryable:
            fresh = _fresh_price(gw, request)
            point = float(getattr(info, "point", 0.0) or 0.0)
            if fresh is not None and orders.within_deviation(reference, fresh, int(request.get("deviation", 0)), point):
                retries += 1
                request = {**request, "price": fresh}
                Task.objects.filter(id=task.id).update(attempts=F("attempts") + 1)  # committed before resending
                task.attempts += 1
                logger.info("task %s: retcode %s, retry %d at %s", task.id, retcode, retries, fresh)
                if retcode == C.RETCODE_PRICE_OFF:
                    time.sleep(0.05)
                continue
        return _store_result(task, request, result, retries)


def _order_send(gw: TerminalGateway, request: dict[str, Any]) -> tuple[Any, tuple[int, str] | None]:
    try:
        result = gw.mt5.order_send(request)
    except Exception as exc:  # noqa: BLE001 - a dropped link mid-call: the outcome is unknown
        gw.connected = False
        return None, (-10000, f"order_send raised {type(exc).__name__}: {exc}")
    if result is None:
        code, message = gw.mt5.last_error()
        if -10005 <= code <= -10000:
            gw.connected = False
        return None, (int(code), str(message))
    return result, None


def _store_result(task: Task, request: dict[str, Any], result: Any, retries: int) -> str:
    retcode = int(result.retcode)
    state = _final_state(task, retcode, request)
    fields: dict[str, Any] = {"result": _result_dict(result, retries), "mt5_request": request}
    order_ticket, deal_ticket = int(result.order or 0), int(result.deal or 0)
    if order_ticket and task.kind in (TaskKind.ORDER_CREATE, TaskKind.POSITION_CLOSE):
        fields["order_ticket"] = order_ticket
    if deal_ticket:
        fields["deal_ticket"] = deal_ticket
    if task.kind == TaskKind.ORDER_CREATE and deal_ticket:
        fields["position_ticket"] = _position_of(task, order_ticket, deal_ticket)
    move(task.id, [TaskState.DISPATCHED], state, detail={"retcode": retcode, "retries": retries}, **fields)
    return state


def _margin_mode(session_id: str) -> int | None:
    """The session's account margin mode (set once, at login), cached per process."""
    mode = _margin_modes.get(session_id)
    if mode is None:
        broker = BridgeSession.objects.filter(id=session_id).values_list("broker", flat=True).first()
        mode = (broker or {}).get("marginMode")
        if mode is not None:
            if len(_margin_modes) >= CACHE_LIMIT:
                _margin_modes.clear()
            _margin_modes[session_id] = mode
    return mode


def _position_of(task: Task, order_ticket: int, deal_ticket: int) -> int:
    """The position a filled order opened or changed: the order ticket on hedging accounts (MT5's
    rule), else asked from the deal (netting keeps one position per symbol)."""
    if _margin_mode(task.session_id) == 2:
        return order_ticket
    try:
        deals = tuple(gateway().call("history_deals_get", ticket=order_ticket))
    except GatewayError:
        return order_ticket
    for deal in deals:
        if int(deal.ticket) == deal_ticket:
            return int(deal.position_id)
    return int(deals[0].position_id) if deals else order_ticket


def _store_unknown_or_failed(task: Task, request: dict[str, Any], error: tuple[int, str] | None) -> str:
    code, message = error or (-1, "order_send returned None")
    failure = {"error": {"code": "TerminalError", "message": message, "mt5": code}}
    if code in NOT_SENT_CODES:
        move(task.id, [TaskState.DISPATCHED], TaskState.FAILED, detail={"mt5": code, "message": message},
             result=failure, mt5_request=request)
        return "failed"
    # The request may or may not have been executed: never resend blindly; look, else reconcile later.
    failure["error"]["code"] = "OutcomeUnknown"
    unknown = move(task.id, [TaskState.DISPATCHED], TaskState.UNKNOWN, detail={"mt5": code, "message": message},
                   result=failure, mt5_request=request)
    if unknown is not None:
        unknown.terminal = task.terminal
        try:
            trace = find_trace(gateway(), unknown, _utc_offset(unknown))
        except (GatewayError, OSError):
            trace = None
        if trace is not None:
            adopt(unknown, trace, "unknown-outcome")
            return f"adopted-{trace.state}"
    return "unknown"
