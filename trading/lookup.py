"""Finding what a task did at the terminal, from the terminal's own state and history.

Used before a redelivered task is sent again and by reconciliation. ``order.create`` and
``position.close`` orders carry the task's tag at the start of their comment, so they are found in
open orders, positions, history orders and history deals. Modifications and cancellations leave no
order of their own; for those the question is whether the change is already in effect.

Brokers may rewrite or cut comments. When the tag is not found, an order is matched by what the
task sent (``mt5_request``: symbol, type, volume, magic; position for a close) among the orders set
up since the send that no task owns; it is adopted only when exactly one matches and no other
unsettled task of the terminal could claim it (otherwise the task stays ``unknown`` for ops).

A market order the terminal shows as still being processed (an in-flight order in ``orders_get``)
is ``INFLIGHT``: not an outcome yet, never a reason to fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from terminals import constants as C
from terminals.gateway import GatewayError, TerminalGateway

from .models import TaskKind, TradeTask
from .orders import tag_of

DAY = 86400
INFLIGHT = "inflight"  # a Trace state: the terminal shows the request still being processed
AMBIGUOUS = "ambiguous"  # a Trace state: orders without the tag match the request, but not exactly one
NOT_AN_OUTCOME = (INFLIGHT, AMBIGUOUS)
SEND_SLACK_MSC = 5000  # an order matched without its tag was set up at most this long before the send mark
IN_FLIGHT_ORDER_STATES = (C.ORDER_STATE_STARTED, C.ORDER_STATE_REQUEST_ADD)


@dataclass
class Trace:
    """What the terminal shows of a task: the final state it implies and the result to record."""

    state: str
    result: dict[str, Any]
    order_ticket: int | None = None
    deal_ticket: int | None = None
    position_ticket: int | None = None
    found_in: list[str] = field(default_factory=list)


def _tuple(gw: TerminalGateway, name: str, *args: Any, **kwargs: Any) -> tuple:
    """A *_get call where "nothing" may come back as () or as None with (-4, Not found)/(1, Success)."""
    try:
        return tuple(gw.call(name, *args, **kwargs))
    except GatewayError as exc:
        if exc.code in (-4, 1):
            return ()
        raise


def history_window(task: TradeTask, utc_offset: int) -> tuple[int, int]:
    """A generous [from, to] in trade-server seconds around the task's life."""
    start = int(task.created_at.timestamp()) + utc_offset - DAY
    return max(start, 1), int(time.time()) + utc_offset + DAY


def _tagged(items: tuple, tag: str) -> list[Any]:
    return [item for item in items if str(getattr(item, "comment", "")).startswith(tag)]


def _result(retcode: int, *, order: Any = None, deals: list[Any] | None = None, comment: str = "") -> dict[str, Any]:
    deals = deals or []
    volume = sum(float(d.volume) for d in deals) if deals else float(getattr(order, "volume_initial", 0.0) or 0.0)
    price = float(deals[0].price) if deals else float(getattr(order, "price_open", 0.0) or 0.0)
    return {
        "retcode": retcode,
        "retcodeText": C.retcode_text(retcode),
        "order": int(order.ticket) if order is not None else 0,
        "deal": int(deals[0].ticket) if deals else 0,
        "volume": volume,
        "price": price,
        "comment": comment,
        "adopted": True,
    }


def _market_trace(order: Any, deals: list[Any], requested_volume: float, source: str) -> Trace:
    filled = sum(float(d.volume) for d in deals)
    state_code = int(order.state)
    if deals and filled + 1e-9 >= requested_volume:
        state, retcode = "filled", C.RETCODE_DONE
    elif deals:
        state, retcode = "partial", C.RETCODE_DONE_PARTIAL
    elif state_code in (C.ORDER_STATE_FILLED,):
        state, retcode = "filled", C.RETCODE_DONE
    elif state_code in (C.ORDER_STATE_CANCELED, C.ORDER_STATE_REJECTED, C.ORDER_STATE_EXPIRED):
        state, retcode = "rejected", 10006
    else:
        state, retcode = "filled", C.RETCODE_DONE
    position_id = int(deals[0].position_id) if deals else int(getattr(order, "position_id", 0) or 0)
    return Trace(state, _result(retcode, order=order, deals=deals, comment="found at the terminal"),
                 order_ticket=int(order.ticket), deal_ticket=int(deals[0].ticket) if deals else None,
                 position_ticket=position_id or None, found_in=[source])


def find_order_create(gw: TerminalGateway, task: TradeTask, utc_offset: int) -> Trace | None:
    tag = task.tag
    pending = task.request["type"] not in C.MARKET_TYPES
    active = _tagged(_tuple(gw, "orders_get"), tag)
    if active:
        order = active[0]
        if not pending or int(order.state) in IN_FLIGHT_ORDER_STATES:
            # A market order (or a pending one being accepted) still in the server's hands.
            return Trace(INFLIGHT, {}, order_ticket=int(order.ticket), found_in=["orders:in-flight"])
        return Trace("placed", _result(C.RETCODE_DONE, order=order, comment="found working at the terminal"),
                     order_ticket=int(order.ticket), found_in=["orders"])
    date_from, date_to = history_window(task, utc_offset)
    history = _tagged(_tuple(gw, "history_orders_get", date_from, date_to), tag)
    if history:
        order = history[0]
        deals = list(_tuple(gw, "history_deals_get", ticket=int(order.ticket)))
        if pending:
            # The task placed the order; what happened to it since (fill, expiry) is the order's life.
            return Trace("placed", _result(C.RETCODE_DONE, order=order, comment="found in terminal history"),
                         order_ticket=int(order.ticket), found_in=["history_orders"])
        return _market_trace(order, deals, float(task.request["volume"]), "history_orders")
    positions = _tagged(_tuple(gw, "positions_get"), tag)
    if positions:
        position = positions[0]
        return Trace("filled", {**_result(C.RETCODE_DONE, comment="found as an open position"),
                                "order": int(position.ticket), "volume": float(position.volume),
                                "price": float(position.price_open)},
                     order_ticket=int(position.ticket), position_ticket=int(position.ticket), found_in=["positions"])
    deals = _tagged(_tuple(gw, "history_deals_get", date_from, date_to), tag)
    if deals:
        deal = deals[0]
        return Trace("filled", {**_result(C.RETCODE_DONE, deals=deals, comment="found in deal history"),
                                "order": int(deal.order)},
                     order_ticket=int(deal.order), deal_ticket=int(deal.ticket),
                     position_ticket=int(deal.position_id) or None, found_in=["history_deals"])
    return find_untagged(gw, task, utc_offset)


def find_position_close(gw: TerminalGateway, task: TradeTask, utc_offset: int) -> Trace | None:
    ticket = int(task.position_ticket or 0)
    orders = _tagged(_tuple(gw, "history_orders_get", position=ticket), task.tag)
    deals = _tagged(_tuple(gw, "history_deals_get", position=ticket), task.tag)
    if not orders and not deals:
        date_from, date_to = history_window(task, utc_offset)
        orders = _tagged(_tuple(gw, "history_orders_get", date_from, date_to), task.tag)
        deals = _tagged(_tuple(gw, "history_deals_get", date_from, date_to), task.tag)
    if orders:
        order = orders[0]
        order_deals = [d for d in deals if int(d.order) == int(order.ticket)] or deals
        requested = float(task.request.get("volume") or order.volume_initial)
        trace = _market_trace(order, order_deals, requested, "history_orders")
        trace.position_ticket = ticket
        return trace
    if deals:
        deal = deals[0]
        return Trace("filled", {**_result(C.RETCODE_DONE, deals=deals, comment="found in deal history"),
                                "order": int(deal.order)},
                     order_ticket=int(deal.order), deal_ticket=int(deal.ticket), position_ticket=ticket,
                     found_in=["history_deals"])
    return find_untagged(gw, task, utc_offset)


def _close(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) < 1e-9


def find_position_modify(gw: TerminalGateway, task: TradeTask) -> Trace | None:
    positions = _tuple(gw, "positions_get", ticket=int(task.position_ticket or 0))
    if not positions:
        return None
    position = positions[0]
    wanted = task.request
    if all(_close(getattr(position, name), wanted[name]) for name in ("sl", "tp") if name in wanted):
        return Trace("filled", _result(C.RETCODE_DONE, comment="the stops are in effect at the terminal"),
                     position_ticket=int(position.ticket), found_in=["positions"])
    return None


def find_order_modify(gw: TerminalGateway, task: TradeTask) -> Trace | None:
    orders = _tuple(gw, "orders_get", ticket=int(task.order_ticket or 0))
    if not orders:
        return None
    order = orders[0]
    fields = {"price": "price_open", "stoplimit": "price_stoplimit", "sl": "sl", "tp": "tp"}
    if all(_close(getattr(order, attr), task.request[name]) for name, attr in fields.items() if name in task.request):
        return Trace("filled", _result(C.RETCODE_DONE, order=order, comment="the change is in effect at the terminal"),
                     order_ticket=int(order.ticket), found_in=["orders"])
    return None


def find_order_cancel(gw: TerminalGateway, task: TradeTask) -> Trace | None:
    ticket = int(task.order_ticket or 0)
    if _tuple(gw, "orders_get", ticket=ticket):
        return None
    history = _tuple(gw, "history_orders_get", ticket=ticket)
    if history and int(history[0].state) == C.ORDER_STATE_CANCELED:
        return Trace("filled", _result(C.RETCODE_DONE, order=history[0], comment="the order is cancelled at the terminal"),
                     order_ticket=ticket, found_in=["history_orders"])
    return None


def find_trace(gw: TerminalGateway, task: TradeTask, utc_offset: int) -> Trace | None:
    """What the terminal shows of ``task``, or None when it shows nothing of it (yet)."""
    if task.kind == TaskKind.ORDER_CREATE:
        return find_order_create(gw, task, utc_offset)
    if task.kind == TaskKind.POSITION_CLOSE:
        return find_position_close(gw, task, utc_offset)
    if task.kind == TaskKind.POSITION_MODIFY:
        return find_position_modify(gw, task)
    if task.kind == TaskKind.ORDER_MODIFY:
        return find_order_modify(gw, task)
    if task.kind == TaskKind.ORDER_CANCEL:
        return find_order_cancel(gw, task)
    return None


# --- orders whose comment the broker rewrote ----------------------------------------------------------

def _sent_msc(task: TradeTask, utc_offset: int) -> int:
    """The send mark in trade-server milliseconds, less the slack of clocks and of MT5's setup time."""
    sent = task.sent_at or task.dispatched_at or task.created_at
    return int((sent.timestamp() + utc_offset) * 1000) - SEND_SLACK_MSC


def _matches(order: Any, request: dict[str, Any]) -> bool:
    return (str(order.symbol) == str(request.get("symbol"))
            and int(order.type) == int(request.get("type", -1))
            and abs(float(order.volume_initial) - float(request.get("volume", -1))) < 1e-9
            and int(order.magic) == int(request.get("magic", 0))
            and (not request.get("position") or int(order.position_id) == int(request["position"])))


def _rival_tasks(task: TradeTask) -> int:
    """Other unsettled tasks of the terminal that sent the same kind of request (they could own a match)."""
    request = task.mt5_request or {}
    rivals = TradeTask.objects.filter(terminal_id=task.terminal_id, state__in=["dispatched", "unknown"],
                                 mt5_request__symbol=request.get("symbol"), mt5_request__type=request.get("type"),
                                 sent_at__isnull=False).exclude(id=task.id)
    return rivals.count()


def find_untagged(gw: TerminalGateway, task: TradeTask, utc_offset: int) -> Trace | None:
    """The task's order when its comment no longer carries the tag (a broker rewrote or cut it): the
    one order set up since the send that matches the request and that no task owns, else None."""
    request = task.mt5_request
    if not request or task.sent_at is None or request.get("action") not in (C.TRADE_ACTION_DEAL, C.TRADE_ACTION_PENDING):
        return None
    since = _sent_msc(task, utc_offset)
    date_from, date_to = history_window(task, utc_offset)
    candidates = [o for o in (*_tuple(gw, "orders_get"), *_tuple(gw, "history_orders_get", date_from, date_to))
                  if int(o.time_setup_msc) >= since and _matches(o, request) and not tag_of(str(o.comment))]
    if not candidates:
        return None
    owned = set(TradeTask.objects.filter(order_ticket__in=[int(o.ticket) for o in candidates])
                .values_list("order_ticket", flat=True))
    free = {int(o.ticket): o for o in candidates if int(o.ticket) not in owned}
    if not free:
        return None
    if len(free) > 1 or _rival_tasks(task):
        # Something like it executed, but which task's it is cannot be told: never guess, never fail.
        return Trace(AMBIGUOUS, {}, found_in=[f"matched:{len(free)}"])
    order = next(iter(free.values()))
    if int(order.state) in IN_FLIGHT_ORDER_STATES:
        return Trace(INFLIGHT, {}, order_ticket=int(order.ticket), found_in=["orders:in-flight:matched"])
    deals = [d for d in _tuple(gw, "history_deals_get", ticket=int(order.ticket))]
    if request["action"] == C.TRADE_ACTION_PENDING and not deals:
        return Trace("placed", _result(C.RETCODE_DONE, order=order, comment="matched at the terminal (comment "
                                       "rewritten by the broker)"), order_ticket=int(order.ticket),
                     found_in=["orders:matched"])
    trace = _market_trace(order, deals, float(request["volume"]), "history_orders:matched")
    trace.result["comment"] = "matched at the terminal (comment rewritten by the broker)"
    if request.get("position"):
        trace.position_ticket = int(request["position"])
    return trace


# --- is the history complete? -------------------------------------------------------------------------

def history_synced(gw: TerminalGateway, task: TradeTask, utc_offset: int) -> bool:
    """Does the terminal's history cover the time since the task's send? Every position opened since
    then has its entry deal in history, and a position a close task targets, if gone, has its exit
    deal there. A terminal still loading history after a (re)connect fails this, so a negative
    lookup is not taken as proof that the order never executed."""
    since = _sent_msc(task, utc_offset)
    for position in _tuple(gw, "positions_get"):
        if int(position.time_msc) >= since and not _tuple(gw, "history_deals_get", position=int(position.ticket)):
            return False
    if task.kind == TaskKind.POSITION_CLOSE and task.position_ticket:
        ticket = int(task.position_ticket)
        if not _tuple(gw, "positions_get", ticket=ticket):
            exits = [d for d in _tuple(gw, "history_deals_get", position=ticket)
                     if int(d.entry) in (C.DEAL_ENTRY_OUT, C.DEAL_ENTRY_INOUT, C.DEAL_ENTRY_OUT_BY)]
            if not exits:
                return False
    return True
