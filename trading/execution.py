"""Executing a task on its terminal's pinned worker, exactly once.

The order of steps is the guarantee:

1. **claim**: ``queued → dispatched`` (attempt counted), a conditional update committed before the
   terminal is touched. A task that is not ``queued`` any more is never executed from a delivery; a task
   of a paused session is not claimed (its delivery answers ``paused``; the resume publishes it again).
2. **send mark**: ``sent_at`` is committed immediately before ``order_send``. A task found
   ``dispatched`` without it never reached the terminal and may be sent; with it, it may have.
3. **order_send**, then the result and the final state are stored in one transaction.

Ownership (docs/orders.md "Terminal ownership"): the claim and the send mark are fenced by the
worker's lease token (a stale second worker's writes are refused), the send mark also requires that
the task's session is ``active`` and is the terminal's bound owner, and before the first terminal
call the terminal must show the session's account (``account_info``: login and server). A task that
fails these ends ``cancelled`` with a bridge reason code (``SessionEnded``, ``TerminalNotBound``,
``AccountMismatch``) and nothing sent.

A task found ``dispatched`` (a redelivery after a crash, or the worker's start-up reconciliation) is
first looked up at the terminal by its tag and adopted when found. Not found and never sent: it is
sent now. Not found but sent: ``unknown``. It becomes ``failed`` only with evidence that it never
executed (``_never_executed``): BRIDGE_INFLIGHT_BOUND has passed since the send, the terminal is
connected, on the task's account, and its history is synced (every position opened since the send
has its deal in history). Otherwise it stays ``unknown`` (ops and metrics show it). An outcome that
cannot be known (IPC timeout, ``None`` without a definite error, a dropped connection, retcodes
10010/10011/10012, or 10008 for a market order) is ``unknown`` and looked up, never resent blindly.

Only requote, price changed and price off are retried (MT5 executed nothing), with a fresh price
within the request's deviation, at most BRIDGE_ORDER_RETRIES times.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from sessions.models import BridgeSession, SessionStatus
from terminals import constants as C
from terminals.config import get_terminal
from terminals.gateway import GatewayError, TerminalGateway, as_dict
from terminals.lease import Lease, fence_condition
from terminals.models import Terminal
from terminals.runtime import gateway, held_lease, pinned_terminal, refresh_lease

from . import orders
from .lookup import AMBIGUOUS, NOT_AN_OUTCOME, Trace, find_trace, history_synced
from .models import TaskKind, TaskState, TradeTask
from .states import (
    Increment,
    flush_deferred_events,
    task_change,
    task_claim,
    tasks_claim_batch,
    tasks_mark_sent_batch,
    tasks_settle_batch,
)
from .task_errors import run_guarded

logger = logging.getLogger("bridge.trading.execution")

RECOVERABLE = (TaskState.DISPATCHED, TaskState.UNKNOWN)
# Answers after which the order may have executed although the retcode does not say so: the task
# goes through the lookup instead of being final from the retcode alone.
AMBIGUOUS_RETCODES = {
    C.RETCODE_DONE_PARTIAL,  # 10010: part filled; the rest may still work or fill
    10011,  # TRADE_RETCODE_ERROR: request processing error (it may have executed)
    10012,  # TRADE_RETCODE_TIMEOUT: the request timed out at the trade server
}
# last_error codes after which order_send certainly did not reach the trade server.
NOT_SENT_CODES = {
    -2,  # invalid params (refused by the module or the terminal before trading)
    -8,  # Python API trading disabled in the terminal
    -10003,  # IPC initialize failed
    -10004,  # no IPC connection: the call never left this process
}


def crash_point(name: str) -> None:
    """Test-only: SIGKILL this worker here when BRIDGE_CRASH_AT names this point (docs/orders.md), in
    test mode only (BRIDGE_TEST_MODE: the test run sets it; production refuses both at start-up)."""
    if settings.BRIDGE_CRASH_AT != name:
        return
    if not settings.BRIDGE_TEST_MODE:
        logger.error("BRIDGE_CRASH_AT=%s ignored: crash points act only in test mode", name)
        return
    logger.warning("BRIDGE_CRASH_AT=%s: killing the worker (pid %s)", name, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


class Rejected(Exception):
    """The bridge decided, before sending, that the broker would refuse (e.g. the position is gone)."""

    def __init__(self, retcode: int, comment: str):
        super().__init__(comment)
        self.retcode, self.comment = retcode, comment


def _utc_offset(task: TradeTask) -> int:
    return int(get_terminal(task.terminal.name).utc_offset)


# Per-process caches of the pinned worker (one terminal, one thread): rows and specs that do not
# change between tasks, so a task costs no extra query or terminal round trip for them.
_terminal_rows: dict[str, Terminal] = {}
_margin_modes: dict[str, int] = {}
_symbol_infos: dict[tuple[str, str], tuple[float, Any]] = {}
_session_accounts: dict[str, tuple[int, str]] = {}
SYMBOL_INFO_TTL = 60.0  # s: filling modes and point size change rarely (and a stale one is refused, not wrong)
CACHE_LIMIT = 1000


def _terminal_row(name: str) -> Terminal | None:
    row = _terminal_rows.get(name)
    if row is None:
        row = Terminal.objects.filter(name=name).first()
        if row is not None:
            _terminal_rows[name] = row
    return row


# Batches (docs/orders.md "Batches"): a delivery claims its task and the terminal's other queued tasks,
# oldest first, up to BATCH_SIZE, in one transaction; commits their send marks in one; sends them one by
# one; stores the outcomes in one; and claims the next batch while batches come full, for at most
# BATCH_BUDGET seconds (then the Celery message returns, so a login or a reconciliation on the same queue
# waits at most that long). The messages of tasks a batch already executed are then no-ops answered from
# _executed, without a database round trip (this process is the terminal's only executor, fenced by its
# lease, and a claimed task never becomes queued again).
BATCH_SIZE = 64
BATCH_BUDGET = 1.0  # s
# Another task joins a batch only once it is this old: the web process publishes a new task's ``queued``
# event right after its commit, and the batch's ``dispatched`` event must not overtake it (a task claimed
# through its own message is safe: the message is sent after that event).
BATCH_GRACE = timedelta(seconds=0.5)
# A marked task is sent at most this long after its mark was committed: when a batch's sends are slower,
# the rest is marked again (fenced by the lease token) first. Recovery counts BRIDGE_INFLIGHT_BOUND from a
# task's send mark, so a task is never sent long after the mark recovery goes by, and a worker that lost
# its lease (paused past it) cannot mark again and sends nothing more.
SEND_WINDOW = 5.0  # s (well inside BRIDGE_INFLIGHT_BOUND)
# The batch checks the terminal's account once before its sends, and again before a send when this long
# has passed since the last check: an account switched in the terminal mid-batch (by hand) stops the batch,
# and its unsent tasks are cancelled (AccountMismatch), as a single task would be. MetaTrader5 has no
# "send on account X": between a check and a send there is always a window; this bounds it to about
# ACCOUNT_RECHECK plus one send, as the single task's path (check, mark commit, send) did.
ACCOUNT_RECHECK = 0.02  # s
EXECUTED_LIMIT = 100_000
_executed: OrderedDict[str, str] = OrderedDict()
# The last batches stopped at BATCH_BUDGET with a full batch: more tasks may be queued, and their own
# messages may sit behind no-op messages of settled tasks, so the next message (even a no-op) claims on.
_more_queued = False


def _remember(task_id: str, outcome: str) -> None:
    """This process executed ``task_id`` (it claimed it; it never becomes ``queued`` again): a later
    delivery of its message is a no-op. A task it left ``dispatched`` or ``unknown`` is reconciliation's."""
    _executed[task_id] = outcome
    if len(_executed) > EXECUTED_LIMIT:
        _executed.popitem(last=False)


def run_task(task_id: str) -> str:
    """Entry point of a delivery of ``task_id`` on the pinned worker; returns what it did."""
    done = _executed.get(task_id)
    if done is not None and not _more_queued:
        return f"skipped-{done}"  # executed by an earlier batch of this process: no database round trip
    terminal = _terminal_row(pinned_terminal() or "")
    lease = held_lease()
    if done is not None:
        if terminal is not None and terminal.id == lease.terminal_id:
            run_batches("", terminal, lease)  # go on with the queued tasks behind this no-op message
        return f"skipped-{done}"
    if terminal is not None and terminal.id != lease.terminal_id:
        _terminal_rows.pop(terminal.name, None)  # the row was re-created since it was cached
        terminal = _terminal_row(terminal.name)
    if terminal is not None and terminal.id == lease.terminal_id:
        # The common case: claim (and record) this queued task of this terminal with the terminal's other
        # queued tasks, fenced by this worker's lease token, and execute them as batches.
        outcome = run_batches(task_id, terminal, lease)
        if outcome is not None:
            return outcome
    task = TradeTask.objects.select_related("terminal", "session").filter(id=task_id).first()
    if task is None:
        return "missing"
    if task.terminal.name != pinned_terminal():
        logger.error("task %s of terminal %s reached the worker of %s", task_id, task.terminal.name,
                     pinned_terminal())
        return "wrong-terminal"
    if task.state == TaskState.QUEUED and task.session.paused:
        # Its session is paused: the task waits, queued (the claims skip it; the resume re-publishes it).
        return "paused"
    if task.state == TaskState.QUEUED:
        # This terminal's row is not the one cached (it was re-created): claim with the row's id.
        _terminal_rows[task.terminal.name] = task.terminal
        claimed = task_claim(task_id=task_id, lease=lease)
        if claimed is None:
            # The fence refused it: the lease row was re-created or moved. Renew or retake it (a worker
            # whose lease another holds exits here), then claim once more.
            claimed = task_claim(task_id=task_id, lease=refresh_lease())
        if claimed is None:
            return "not-queued"
        claimed.terminal = task.terminal
        crash_point("after_claim")
        outcome = send(claimed)
        _remember(claimed.id, outcome)
        return outcome
    if task.state == TaskState.DISPATCHED:
        return recover(task, "redelivered")
    return f"skipped-{task.state}"


def run_batches(task_id: str, terminal: Terminal, lease: Lease) -> str | None:
    """Execute ``task_id`` with the terminal's other queued tasks, batch after batch while they come full
    (within BATCH_BUDGET). What happened to ``task_id``, or None when it was not claimed (not queued, or
    the fence refused: the caller looks at the row)."""
    global _more_queued
    _more_queued = False
    try:
        return _run_batches(task_id, terminal, lease)
    finally:
        flush_deferred_events()  # the claims' events, if no send mark took them along


def _run_batches(task_id: str, terminal: Terminal, lease: Lease) -> str | None:
    global _more_queued
    deadline = time.monotonic() + BATCH_BUDGET
    outcome: str | None = None
    first = task_id
    while True:
        batch = tasks_claim_batch(lease=lease, task_id=first, limit=BATCH_SIZE, defer_events=True,
                                  others_created_before=timezone.now() - BATCH_GRACE)
        if not batch:
            break
        for task in batch:
            task.terminal = terminal
        crash_point("after_claim")
        outcomes = send_batch(batch, lease)
        outcome = outcomes.get(task_id, outcome)
        first = ""
        if len(batch) < BATCH_SIZE:  # the terminal's queue is drained
            break
        if time.monotonic() > deadline:
            _more_queued = True
            break
    return outcome


def _session_account(session_id: str) -> tuple[int, str] | None:
    """(login, server) of the account the session logged in to (server as the terminal reported it)."""
    account = _session_accounts.get(session_id)
    if account is None:
        row = BridgeSession.objects.filter(id=session_id).values_list("login", "broker").first()
        if row is None or not (row[1] or {}).get("server"):
            return None  # never logged in: no account of it can be at the terminal
        account = (int(row[0]), str(row[1]["server"]))
        if len(_session_accounts) >= CACHE_LIMIT:
            _session_accounts.clear()
        _session_accounts[session_id] = account
    return account


def _account_refusal(gw: TerminalGateway, task: TradeTask) -> str | None:
    """None when the terminal shows the task's account now; else why not (nothing may be sent)."""
    expected = _session_account(task.session_id)
    if expected is None:
        return "the task's session never logged in"
    shown = gw.account_info()
    if (shown.get("login"), str(shown.get("server") or "")) != expected:
        return (f"the terminal is logged in to {shown.get('login')}@{shown.get('server')}, not the session's "
                f"{expected[0]}@{expected[1]}")
    return None


def _account_switched(gw: TerminalGateway, shown: dict[str, Any]) -> str | None:
    """None when the terminal still shows the account ``shown`` at the batch's start; else what it shows."""
    try:
        now = gw.account_info()
    except (GatewayError, OSError) as exc:
        return f"the terminal's account cannot be read mid-batch: {exc}"
    if (now.get("login"), str(now.get("server") or "")) != (shown.get("login"), str(shown.get("server") or "")):
        return (f"the terminal's account changed mid-batch, from {shown.get('login')}@{shown.get('server')} to "
                f"{now.get('login')}@{now.get('server')}")
    return None


def _cancel_unsent(task: TradeTask, code: str, message: str) -> str:
    """End a task that was never sent (ownership refused it): ``cancelled`` with the bridge reason."""
    task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], to_state=TaskState.CANCELLED, detail={"reason": code, "bridge": message}, fields={"result": {"error": {"code": code, "message": message}, "source": "bridge"}})
    logger.warning("task %s not sent: %s (%s)", task.id, code, message)
    return f"cancelled-{code}"


def _ownership_refusal(task: TradeTask, lease: Lease) -> tuple[str, str] | None:
    """Why the task's session may not use the terminal now (the send mark was refused), or None."""
    terminal = Terminal.objects.filter(id=task.terminal_id).values("lease_token", "bound_session_id").first()
    if terminal is None or terminal["lease_token"] != lease.token:
        return ("LeaseLost", "this worker no longer holds the terminal's lease")
    status = BridgeSession.objects.filter(id=task.session_id).values_list("status", flat=True).first()
    if status != SessionStatus.ACTIVE:
        return ("SessionEnded", f"the task's session is {status}")
    if terminal["bound_session_id"] != task.session_id:
        return ("TerminalNotBound", "the terminal is not logged in for the task's session")
    return None


def _never_executed(gw: TerminalGateway, task: TradeTask) -> str | None:
    """None when the terminal proves a sent task never executed; else what is missing for that proof."""
    if not bool(gw.terminal_info().get("connected")):
        return "terminal_disconnected"
    if _account_refusal(gw, task) is not None:
        return "account_mismatch"
    if not history_synced(gw, task, _utc_offset(task)):
        return "history_not_synced"
    return None


def recover(task: TradeTask, reason: str) -> str:
    """Settle a ``dispatched`` or ``unknown`` task nobody is executing: adopt, send, wait or fail."""
    gw = gateway()
    lease = held_lease()
    try:
        gw.ensure_connected()
        if task.state == TaskState.DISPATCHED and task.sent_at is None:
            # Claimed but the send mark was never committed: nothing reached the terminal. Send it now
            # if its session still owns the terminal (fenced: only the lease holder counts an attempt).
            refusal = _ownership_refusal(task, lease)
            if refusal is not None:
                if refusal[0] == "LeaseLost":
                    return "lease-lost"
                return _cancel_unsent(task, *refusal)
            resent = task_change(task_id=task.id, from_states=[TaskState.DISPATCHED],
                                 where=Q(sent_at__isnull=True) & Q(fence_condition(lease)),
                                 fields={"attempts": Increment()}, detail={"reason": reason}, change="attempt")
            if resent is None:
                return "raced"
            task.refresh_from_db()
            logger.info("task %s (%s): claimed but never sent; sending now", task.id, reason)
            return send(task)
        if _account_refusal(gw, task) is not None:
            # Another account is logged in: its history says nothing of this task. Wait for the task's
            # account to be back (a new session of it) rather than guess.
            _keep_unknown(task, reason, "account_mismatch", 0.0)
            return "unknown-account_mismatch"
        trace = find_trace(gw, task, _utc_offset(task))
    except (GatewayError, OSError) as exc:
        logger.warning("lookup of task %s failed: %s", task.id, exc)
        return "lookup-failed"
    if trace is not None and trace.state not in NOT_AN_OUTCOME:
        adopt(task, trace, reason)
        return f"adopted-{trace.state}"
    sent_at = task.sent_at or task.dispatched_at or task.created_at
    age = (timezone.now() - sent_at).total_seconds()
    missing = None
    if trace is not None:
        missing = "ambiguous_match" if trace.state == AMBIGUOUS else "in_flight_at_terminal"
    if missing is None and age < settings.BRIDGE_INFLIGHT_BOUND:
        missing = "within_inflight_bound"
    if missing is None:
        try:
            missing = _never_executed(gw, task)
        except (GatewayError, OSError) as exc:
            missing = f"terminal_unreachable: {exc}"
    if missing is None:
        task_change(task_id=task.id, from_states=RECOVERABLE, to_state=TaskState.FAILED, detail={"reason": reason, "lookup": "not found", "sentAgo": round(age, 3)}, fields={"result": {**(task.result or {}), "error": {
                 "code": "NotExecuted",
                 "message": "sent, but not found at the terminal after the in-flight bound, with the terminal "
                            "connected on the task's account and its history synced: it never executed"}}})
        return "failed-not-found"
    _keep_unknown(task, reason, missing, age)
    return f"unknown-{missing.split(':')[0]}"


def _keep_unknown(task: TradeTask, reason: str, missing: str, age: float) -> None:
    """Record why the task is (still) ``unknown`` in its result (``error.unknownBecause``, for clients
    and ops): the first time as the move from ``dispatched``, later as an update of the reason."""
    error = {"code": "OutcomeUnknown", "message": "the outcome at the terminal is not known yet",
             **((task.result or {}).get("error") or {}), "unknownBecause": missing}
    result = {**(task.result or {}), "error": error}
    if task.state == TaskState.DISPATCHED:
        task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], to_state=TaskState.UNKNOWN, detail={"reason": reason, "lookup": missing, "sentAgo": round(age, 3)}, fields={"result": result})
    else:
        task_change(task_id=task.id, from_states=[TaskState.UNKNOWN], fields={"result": result},
                    detail={"reason": reason, "lookup": missing}, change="reason")


def adopt(task: TradeTask, trace: Trace, reason: str, from_states: tuple[str, ...] = RECOVERABLE) -> TradeTask | None:
    """Record what the terminal shows as the task's outcome (from ``from_states``: late adoption of a
    tagged order that surfaced after the task was settled passes the final states it may correct)."""
    fields: dict[str, Any] = {"result": trace.result}
    for name in ("order_ticket", "deal_ticket", "position_ticket"):
        value = getattr(trace, name)
        if value:
            fields[name] = value
    return task_change(task_id=task.id, from_states=from_states, to_state=trace.state, detail={"reason": reason, "adoptedFrom": trace.found_in}, fields=fields)


# --- sending ---------------------------------------------------------------------------------------

def _symbol_info(gw: TerminalGateway, task: TradeTask, symbol: str) -> Any:
    """``symbol_info`` (filling modes, point) of the session's account, cached for SYMBOL_INFO_TTL."""
    key, now = (task.session_id, symbol), time.monotonic()
    cached = _symbol_infos.get(key)
    if cached is not None and now - cached[0] < SYMBOL_INFO_TTL:
        return cached[1]
    info = gw.symbol_info(symbol)
    if len(_symbol_infos) >= CACHE_LIMIT:
        _symbol_infos.clear()
    _symbol_infos[key] = (now, info)
    return info


def _tick(gw: TerminalGateway, symbol: str, ticks: dict[str, Any] | None) -> Any:
    """The symbol's current tick; within a batch (``ticks``) read once per symbol, right before the
    batch's send marks (a price that moved since is what requote retries are for)."""
    if ticks is None:
        return gw.symbol_info_tick(symbol)
    if symbol not in ticks:
        ticks[symbol] = gw.symbol_info_tick(symbol)
    return ticks[symbol]


def _build(gw: TerminalGateway, task: TradeTask, ticks: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """The order_send request of the task (terminal reads included) and the symbol info used."""
    offset = _utc_offset(task)
    req = task.request
    if task.kind == TaskKind.ORDER_CREATE:
        info = _symbol_info(gw, task, req["symbol"])
        tick = None
        if req["type"] in C.MARKET_TYPES and not req.get("price"):
            tick = _tick(gw, req["symbol"], ticks)
        return orders.order_create_request(req, task.tag, offset, info, tick), info
    if task.kind in (TaskKind.POSITION_CLOSE, TaskKind.POSITION_MODIFY):
        positions = gw.positions_get(ticket=int(task.position_ticket))
        if not positions:
            raise Rejected(C.RETCODE_POSITION_CLOSED, "position not found at the terminal")
        position = positions[0]
        if task.kind == TaskKind.POSITION_MODIFY:
            return orders.position_modify_request(req, position), None
        info = _symbol_info(gw, task, position.symbol)
        tick = _tick(gw, position.symbol, ticks)
        return orders.position_close_request(req, task.tag, position, info, tick), info
    if task.kind == TaskKind.ORDER_MODIFY:
        found = gw.orders_get(ticket=int(task.order_ticket))
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


def _final_state(task: TradeTask, retcode: int, mt5_request: dict[str, Any]) -> str:
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


def _mark_sent(task: TradeTask, request: dict[str, Any], lease: Lease) -> bool:
    """Commit the send mark: only while this worker holds the lease (fence) and the task's session is
    ``active`` and the terminal's bound owner. One statement, right before ``order_send``."""
    owner = Exists(Terminal.objects.filter(id=OuterRef("terminal_id"), lease_token=lease.token,
                                           bound_session_id=OuterRef("session_id")))
    active = Exists(BridgeSession.objects.filter(id=OuterRef("session_id"), status=SessionStatus.ACTIVE))
    sent = task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], where=Q(owner) & Q(active),
                       fields={"sent_at": timezone.now(), "mt5_request": request}, change="sent")
    return sent is not None


def _fresh_price(gw: TerminalGateway, request: dict[str, Any]) -> float | None:
    try:
        tick = gw.symbol_info_tick(request["symbol"])
    except GatewayError:
        return None
    price = orders.market_price(int(request["type"]), tick)
    return price or None


def send(task: TradeTask) -> str:
    """Build, mark sent, order_send, retry what is safe, store the outcome. The task is ``dispatched``."""
    gw = gateway()
    lease = held_lease()
    prepared = _prepare(gw, task)
    if isinstance(prepared, str):
        return prepared
    request, info = prepared
    return _send_prepared(gw, task, request, info, lease)


def _prepare(gw: TerminalGateway, task: TradeTask, account_checked: bool = False,
             ticks: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any] | str:
    """The order_send request of a ``dispatched`` task and the symbol info used; or, when the task ended
    here without being sent (account refused, rejected by the bridge, terminal unreachable), its state."""
    try:
        gw.ensure_connected()
        if not account_checked:
            refusal = _account_refusal(gw, task)
            if refusal is not None:
                return _cancel_unsent(task, "AccountMismatch", refusal)
        return _build(gw, task, ticks)
    except Rejected as exc:
        task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], to_state=TaskState.REJECTED, detail={"bridge": exc.comment}, fields={"result": {"retcode": exc.retcode, "retcodeText": C.retcode_text(exc.retcode), "comment": exc.comment,
                     "source": "bridge"}})
        return "rejected"
    except (GatewayError, OSError) as exc:
        code = getattr(exc, "code", -10000)
        task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], to_state=TaskState.FAILED, detail={"stage": "prepare"}, fields={"result": {"error": {"code": "BridgeUnavailable", "message": f"terminal unreachable before sending: {exc}",
                               "mt5": code}}})
        return "failed"


def _refused_mark(task: TradeTask, lease: Lease) -> str:
    """The send mark of ``task`` was refused: say why, ending the task ``cancelled`` when its session
    may not use the terminal."""
    refusal = _ownership_refusal(task, lease)
    if refusal is None:
        return "raced"
    if refusal[0] == "LeaseLost":
        return "lease-lost"
    return _cancel_unsent(task, *refusal)


def _send_prepared(gw: TerminalGateway, task: TradeTask, request: dict[str, Any], info: Any, lease: Lease,
                   sent: tuple[Any, tuple[int, str] | None] | None = None) -> str:
    """Mark sent, order_send, retry what is safe, store the outcome. ``sent``: the task's send mark is
    committed and this was the answer of its first order_send (a batch sent it)."""
    reference = float(request.get("price") or 0.0)
    retries = 0
    while True:
        if sent is not None:
            (result, error), sent = sent, None
        else:
            if not _mark_sent(task, request, lease):
                return _refused_mark(task, lease)
            result, error = gw.order_send(request)
            crash_point("after_send")
        if result is None:
            return _store_unknown_or_failed(task, request, error)
        retcode = int(result.retcode)
        retryable = (request["action"] == C.TRADE_ACTION_DEAL and retcode in C.RETRYABLE_RETCODES
                     and retries < settings.BRIDGE_ORDER_RETRIES)
        if retryable:
            fresh = _fresh_price(gw, request)
            point = float(getattr(info, "point", 0.0) or 0.0)
            if fresh is not None and orders.within_deviation(reference, fresh, int(request.get("deviation", 0)), point):
                retries += 1
                request = {**request, "price": fresh}
                task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], fields={"attempts": Increment()},
                            detail={"retcode": retcode, "price": fresh}, change="attempt")  # committed before resending
                task.attempts += 1
                logger.info("task %s: retcode %s, retry %d at %s", task.id, retcode, retries, fresh)
                if retcode == C.RETCODE_PRICE_OFF:
                    time.sleep(0.05)
                continue
        if _ambiguous(request, retcode):
            return _store_unknown_or_failed(task, request, None, result=_result_dict(result, retries))
        return _store_result(task, request, result, retries)


def _ambiguous(request: dict[str, Any], retcode: int) -> bool:
    return retcode in AMBIGUOUS_RETCODES or (retcode == C.RETCODE_PLACED and request["action"] == C.TRADE_ACTION_DEAL)


def send_batch(tasks: list[TradeTask], lease: Lease) -> dict[str, str]:
    """Execute claimed (``dispatched``) tasks of this terminal as one batch: the account checked once,
    every request built, the send marks committed in one transaction, then each ``order_send`` in turn,
    the definite outcomes stored in one transaction. Anything else (a refusal, a retry, an outcome that
    is not definite) takes the single task's path from where it stands. What happened to each task."""
    gw = gateway()
    outcomes: dict[str, str] = {}
    try:
        gw.ensure_connected()
        shown = gw.account_info()
    except (GatewayError, OSError):
        shown = None  # each task's own path records the failure
    ready: list[tuple[TradeTask, dict[str, Any], Any]] = []
    ticks: dict[str, Any] = {}
    for task in tasks:
        checked = False
        if shown is not None:
            expected = _session_account(task.session_id)
            if expected is None:
                outcomes[task.id] = _cancel_unsent(task, "AccountMismatch", "the task's session never logged in")
                continue
            if (shown.get("login"), str(shown.get("server") or "")) != expected:
                outcomes[task.id] = _cancel_unsent(
                    task, "AccountMismatch", f"the terminal is logged in to {shown.get('login')}@{shown.get('server')}, "
                    f"not the session's {expected[0]}@{expected[1]}")
                continue
            checked = True
        # An error of the bridge on one task (run_guarded: counted on it, bounded) leaves the others be.
        prepared = run_guarded(task.id, "execute",
                               lambda t=task, c=checked: _prepare(gw, t, account_checked=c, ticks=ticks))
        if isinstance(prepared, str):
            outcomes[task.id] = prepared
            continue
        ready.append((task, *prepared))
    pending = _marked(ready, lease, outcomes)
    marked_at = checked_at = time.monotonic()
    definite: list[tuple[TradeTask, str, dict[str, Any], dict[str, Any]]] = []
    for index, (task, request, info) in enumerate(pending):
        if task.id in outcomes:
            continue  # its fresh mark was refused
        if shown is not None and time.monotonic() - checked_at > ACCOUNT_RECHECK:
            switched = _account_switched(gw, shown)
            checked_at = time.monotonic()
            if switched is not None:
                for rest, _, _ in pending[index:]:
                    if rest.id not in outcomes:  # marked, never sent (this loop is the only sender)
                        outcomes[rest.id] = _cancel_unsent(rest, "AccountMismatch", switched)
                break
        if time.monotonic() - marked_at > SEND_WINDOW:
            # Slow sends: mark the rest again (fenced), so that none is sent long after its mark.
            _marked([p for p in pending[index:] if p[0].id not in outcomes], lease, outcomes)
            marked_at = time.monotonic()
            if task.id in outcomes:
                continue
        result, error = gw.order_send(request)
        crash_point("after_send")
        crash_point(f"batch_send_{index + 1}")
        outcomes[task.id] = run_guarded(task.id, "execute", lambda t=task, r=request, i=info, a=(result, error): (
            _after_batch_send(gw, t, r, i, lease, a, definite)))
    for (task, state, _, _), ok in zip(definite, tasks_settle_batch(outcomes=definite), strict=True):
        outcomes[task.id] = state if ok else "raced"
    for task in tasks:
        _remember(task.id, outcomes.get(task.id, "batched"))
    return outcomes


def _after_batch_send(gw: TerminalGateway, task: TradeTask, request: dict[str, Any], info: Any, lease: Lease,
                     answer: tuple[Any, tuple[int, str] | None],
                     definite: list[tuple[TradeTask, str, dict[str, Any], dict[str, Any]]]) -> str:
    """A definite answer joins the batch's outcomes (stored together); any other takes the task's own path."""
    result = answer[0]
    if result is not None and not _ambiguous(request, int(result.retcode)) and not (
            request["action"] == C.TRADE_ACTION_DEAL and int(result.retcode) in C.RETRYABLE_RETCODES):
        state, fields, detail = _result_change(task, request, result, 0)
        fields.pop("mt5_request")  # the send mark stored this very request
        definite.append((task, state, fields, detail))
        return state
    return _send_prepared(gw, task, request, info, lease, sent=answer)


def _marked(ready: list[tuple[TradeTask, dict[str, Any], Any]], lease: Lease,
            outcomes: dict[str, str]) -> list[tuple[TradeTask, dict[str, Any], Any]]:
    """Commit the send marks of ``ready`` in one transaction; a task whose mark is refused gets its
    outcome (``_refused_mark``). The tasks that may be sent now."""
    marked = tasks_mark_sent_batch(lease=lease, marks=[(task, request) for task, request, _ in ready])
    for (task, _, _), ok in zip(ready, marked, strict=True):
        if not ok:
            outcomes[task.id] = _refused_mark(task, lease)
    return [entry for entry, ok in zip(ready, marked, strict=True) if ok]


def _result_change(task: TradeTask, request: dict[str, Any], result: Any, retries: int
                   ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The final state, fields and transition detail of a definite ``order_send`` answer."""
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
    return state, fields, {"retcode": retcode, "retries": retries}


def _store_result(task: TradeTask, request: dict[str, Any], result: Any, retries: int) -> str:
    state, fields, detail = _result_change(task, request, result, retries)
    task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], to_state=state, detail=detail, fields=fields)
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


def _position_of(task: TradeTask, order_ticket: int, deal_ticket: int) -> int:
    """The position a filled order opened or changed: the order ticket on hedging accounts (MT5's
    rule), else asked from the deal (netting keeps one position per symbol)."""
    if _margin_mode(task.session_id) == 2:
        return order_ticket
    try:
        deals = gateway().history_deals_get(ticket=order_ticket)
    except GatewayError:
        return order_ticket
    for deal in deals:
        if int(deal.ticket) == deal_ticket:
            return int(deal.position_id)
    return int(deals[0].position_id) if deals else order_ticket


def _store_unknown_or_failed(task: TradeTask, request: dict[str, Any], error: tuple[int, str] | None,
                             result: dict[str, Any] | None = None) -> str:
    """order_send gave no definite outcome (``error``: it returned None; ``result``: an ambiguous
    retcode): ``failed`` when the call certainly never reached the trade server, else ``unknown``
    and looked up at once (adopted when the terminal already shows what it did)."""
    if result is not None:
        code, message = int(result["retcode"]), f"retcode {result['retcode']}: {result.get('retcodeText', '')}"
        failure: dict[str, Any] = {**result, "error": {"code": "OutcomeUnknown", "message": message, "mt5": code}}
    else:
        code, message = error or (-1, "order_send returned None")
        failure = {"error": {"code": "TerminalError", "message": message, "mt5": code}}
    if result is None and code in NOT_SENT_CODES:
        task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], to_state=TaskState.FAILED, detail={"mt5": code, "message": message}, fields={"result": failure, "mt5_request": request})
        return "failed"
    # The request may or may not have been executed: never resend blindly; look, else reconcile later.
    failure["error"]["code"] = "OutcomeUnknown"
    unknown = task_change(task_id=task.id, from_states=[TaskState.DISPATCHED], to_state=TaskState.UNKNOWN, detail={"mt5": code, "message": message}, fields={"result": failure, "mt5_request": request})
    if unknown is not None:
        unknown.terminal = task.terminal
        try:
            trace = find_trace(gateway(), unknown, _utc_offset(unknown))
        except (GatewayError, OSError):
            trace = None
        if trace is not None and trace.state not in NOT_AN_OUTCOME:
            adopt(unknown, trace, "unknown-outcome")
            return f"adopted-{trace.state}"
    return "unknown"
