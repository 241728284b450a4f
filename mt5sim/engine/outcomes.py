"""Faults for "honest outcomes": answers that do not tell what really happened at the broker.

A mixin of Engine, placed before TradeServer so that it can watch what enters history. It owns
the state of five controls (docs/mt5sim.md, "Control API"):

* ``comment_fault``: the broker cuts or rewrites the comment of what it creates from a request;
* ``history_delay``: history calls do not show orders/deals that are younger than N real seconds;
* ``retcode_fault``: order_send answers a given retcode with order=0/deal=0, executed or not;
* ``slow_execution``: order_send fails now (IPC timeout or 10012) and the request executes later,
  shown meanwhile as an ORDER_STATE_STARTED order or not at all;
* ``switch_account``: the terminal logs into another account by itself (a person at the window).

Deferred executions and in-flight orders live in memory only: a terminal that stops before they
are due drops them (nothing of them is journaled).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from . import _const as C
from .model import Order

_ANSWERS = ("ipc_timeout", "timeout")
_COMMENT_MODES = ("cut", "rewrite")
# How far back (real seconds) the entry times of history records are remembered when history_delay
# is off, so that a delay set just after a trade still hides it.
_HISTORY_MEMORY_S = 10.0
# Actions whose request becomes an order (the ones a terminal shows while the server processes them).
_ORDER_ACTIONS = (C.TRADE_ACTION_DEAL, C.TRADE_ACTION_PENDING, C.TRADE_ACTION_CLOSE_BY)
_COMMENTED_ACTIONS = (C.TRADE_ACTION_DEAL, C.TRADE_ACTION_PENDING)


class IpcTimeoutAnswer(Exception):
    """The call answers ``(-10005, 'IPC timeout')``: Engine.call turns it into the "ipc_timeout" status."""


class Deferred:
    """One order_send accepted by ``slow_execution``: executed by the engine when ``due`` (monotonic) comes."""

    __slots__ = ("due", "login", "request", "order")

    def __init__(self, due: float, login: int, request: dict, order: Order | None) -> None:
        self.due = due
        self.login = login
        self.request = request
        self.order = order


def _count(value: Any) -> int:
    count = int(value)
    if count < 0:
        raise ValueError("count must be >= 0")
    return count


def _seconds(value: Any) -> float:
    seconds = float(value)
    if not seconds >= 0:  # also refuses NaN
        raise ValueError("seconds must be >= 0")
    return seconds


class OutcomeFaults:
    """Fault state and hooks; the engine calls them from order_send, history and its event loop."""

    # ================================================================ state
    def _reset_outcome_state(self) -> None:
        """Everything, faults and in-flight work (engine start and full reset)."""
        self._born: deque[tuple[float, str, int]] = deque()
        self._inflight: dict[int, Order] = {}
        self._deferred: list[Deferred] = []
        self._preset_order_ticket: int | None = None
        self._reset_outcome_faults()

    def _reset_outcome_faults(self) -> None:
        """Faults back to off; due executions not yet run are dropped with their in-flight orders."""
        self.fault_comment: dict | None = None
        self.history_delay = 0.0
        self.fault_retcode: dict | None = None
        self.fault_slow: dict | None = None
        self._deferred = []
        self._inflight = {}
        self.slow_results: list[dict] = []

    def _outcome_state(self) -> dict:
        return {
            "comment": dict(self.fault_comment) if self.fault_comment else None,
            "history_delay": self.history_delay,
            "retcode": dict(self.fault_retcode) if self.fault_retcode else None,
            "slow_execution": dict(self.fault_slow) if self.fault_slow else None,
            "slow_pending": [{"in_seconds": round(max(0.0, d.due - time.monotonic()), 3), "login": d.login,
                              "order": d.order.ticket if d.order is not None else 0,
                              "comment": d.request.get("comment", "")} for d in self._deferred],
            "slow_results": list(self.slow_results),
        }

    # ================================================================ comment_fault
    def _rewrite_comment(self, req: dict) -> dict:
        """The request as the broker stores it (called once per order_send by TradeServer._process)."""
        fault = self.fault_comment
        if fault is None:
            return req
        if fault["remaining"] is not None:
            fault["remaining"] -= 1
            if fault["remaining"] <= 0:
                self.fault_comment = None
        if req.get("action") not in _COMMENTED_ACTIONS:
            return req
        comment = req.get("comment") or ""
        new = comment[:fault["length"]] if fault["mode"] == "cut" else fault["text"]
        return dict(req, comment=new)

    # ================================================================ history_delay
    def _order_to_history(self, order: Order) -> None:
        super()._order_to_history(order)  # type: ignore[misc]
        self._note_born("o", order.ticket)

    def _deal_add(self, deal: Any) -> None:
        super()._deal_add(deal)  # type: ignore[misc]
        self._note_born("d", deal.ticket)

    def _note_born(self, kind: str, ticket: int) -> None:
        now = time.monotonic()
        born = self._born
        born.append((now, kind, ticket))
        horizon = now - max(self.history_delay, _HISTORY_MEMORY_S)
        while born and born[0][0] < horizon:
            born.popleft()

    def _history_hidden(self, kind: str) -> set[int] | None:
        """Tickets of history orders ("o") or deals ("d") still too young to show; None: none."""
        if self.history_delay <= 0 or not self._born:
            return None
        cutoff = time.monotonic() - self.history_delay
        hidden = set()
        for born, k, ticket in reversed(self._born):
            if born <= cutoff:
                break
            if k == kind:
                hidden.add(ticket)
        return hidden or None

    def _visible_history(self, items: list, kind: str) -> list:
        hidden = self._history_hidden(kind)
        if hidden is None:
            return items
        return [x for x in items if x.ticket not in hidden]

    # ================================================================ order_send faults
    def _fault_answer(self, retcode: int, req: dict, request_id: int) -> list:
        comment = C.RETCODE_COMMENTS.get(retcode, "")
        return [retcode, 0, 0, 0.0, 0.0, 0.0, 0.0, comment, request_id, 0,
                self._request_tuple(req)]  # type: ignore[attr-defined]

    def _outcome_fault_send(self, req: dict) -> list | None:
        """An order_send taken by retcode_fault or slow_execution: its answer; None: a normal call."""
        fault = self.fault_retcode
        if fault is not None:
            fault["remaining"] -= 1
            if fault["remaining"] <= 0:
                self.fault_retcode = None
            if fault["execute"]:
                result = self.order_send(dict(req))  # type: ignore[attr-defined]
                request_id = result[8]
            else:
                self.request_id += 1
                request_id = self.request_id
            return self._fault_answer(fault["retcode"], req, request_id)
        slow = self.fault_slow
        if slow is not None:
            slow["remaining"] -= 1
            if slow["remaining"] <= 0:
                self.fault_slow = None
            self._defer(req, slow["seconds"], slow["visible"])
            if slow["answer"] == "ipc_timeout":
                raise IpcTimeoutAnswer()
            self.request_id += 1
            return self._fault_answer(C.TRADE_RETCODE_TIMEOUT, req, self.request_id)
        return None

    def _defer(self, req: dict, seconds: float, visible: bool) -> None:
        login = self.current_login
        order = None
        if visible and req.get("action") in _ORDER_ACTIONS:
            order = self._started_order(req, login)
            self._inflight[order.ticket] = order
        self._deferred.append(Deferred(time.monotonic() + seconds, login, dict(req), order))

    def _started_order(self, req: dict, login: int) -> Order:
        """The order a terminal shows while the server processes the request (ORDER_STATE_STARTED)."""
        now = self.now_ms()  # type: ignore[attr-defined]
        action = req.get("action")
        symbol = req.get("symbol") or ""
        if not symbol and req.get("position"):
            pos = self.positions.get(req["position"])  # type: ignore[attr-defined]
            symbol = pos.symbol if pos is not None else ""
        otype = C.ORDER_TYPE_CLOSE_BY if action == C.TRADE_ACTION_CLOSE_BY else int(req.get("type", 0))
        volume = float(req.get("volume", 0.0))
        price_current = 0.0
        tick = self._tick(symbol) if symbol else None  # type: ignore[attr-defined]
        if tick is not None:
            price_current = tick[2] if otype in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_BUY_STOP,
                                                 C.ORDER_TYPE_BUY_STOP_LIMIT) else tick[1]
        return Order(ticket=self._new_order_ticket(), time_setup=now // 1000,  # type: ignore[attr-defined]
                     time_setup_msc=now, type=otype, type_filling=int(req.get("type_filling", 0)),
                     type_time=int(req.get("type_time", 0)),
                     time_expiration=int(req.get("expiration", 0)) if action == C.TRADE_ACTION_PENDING else 0,
                     state=C.ORDER_STATE_STARTED, magic=int(req.get("magic", 0)), reason=C.ORDER_REASON_EXPERT,
                     position_id=int(req.get("position", 0)), position_by_id=int(req.get("position_by", 0)),
                     volume_initial=volume, volume_current=volume, price_open=float(req.get("price", 0.0)),
                     sl=float(req.get("sl", 0.0)), tp=float(req.get("tp", 0.0)), price_current=price_current,
                     price_stoplimit=float(req.get("stoplimit", 0.0)), symbol=symbol,
                     comment=req.get("comment") or "", login=login)

    def _inflight_orders(self, login: int | None) -> list[Order]:
        if not self._inflight:
            return []
        return [o for o in self._inflight.values() if o.login == login]

    def _run_deferred(self) -> None:
        """Execute the slow requests that are due, oldest first, through the normal trade rules."""
        if not self._deferred:
            return
        now = time.monotonic()
        due = [d for d in self._deferred if d.due <= now]
        if not due:
            return
        self._deferred = [d for d in self._deferred if d.due > now]
        for item in sorted(due, key=lambda d: d.due):
            if item.order is not None:
                self._inflight.pop(item.order.ticket, None)
                self._preset_order_ticket = item.order.ticket
            try:
                if item.login not in self.accounts:  # type: ignore[attr-defined]
                    continue
                result = self._process(item.request, check=False, login=item.login)  # type: ignore[attr-defined]
            finally:
                self._preset_order_ticket = None
            self.slow_results.append({"retcode": result[0], "deal": result[1], "order": result[2],
                                      "comment": item.request.get("comment", ""), "login": item.login})
            del self.slow_results[:-20]

    # ================================================================ controls
    def _ctl_comment_fault(self, mode=None, length=0, text="", count=0):
        if mode is None:
            self.fault_comment = None
            return None
        if mode not in _COMMENT_MODES:
            raise ValueError(f"mode must be one of {_COMMENT_MODES} or None, got {mode!r}")
        length = int(length)
        if length < 0:
            raise ValueError("length must be >= 0")
        count = _count(count)
        self.fault_comment = {"mode": mode, "length": length, "text": str(text or ""),
                              "remaining": count or None}
        return dict(self.fault_comment)

    def _ctl_history_delay(self, seconds=0.0):
        self.history_delay = _seconds(seconds)
        return self.history_delay

    def _ctl_retcode_fault(self, retcode=C.TRADE_RETCODE_ERROR, count=1, execute=False):
        count = _count(count)
        retcode = int(retcode)
        self.fault_retcode = {"retcode": retcode, "remaining": count, "execute": bool(execute)} if count else None
        return dict(self.fault_retcode) if self.fault_retcode else None

    def _ctl_slow_execution(self, seconds=0.0, count=1, visible=True, answer="ipc_timeout"):
        seconds = _seconds(seconds)
        count = _count(count)
        if answer not in _ANSWERS:
            raise ValueError(f"answer must be one of {_ANSWERS}, got {answer!r}")
        self.fault_slow = ({"seconds": seconds, "remaining": count, "visible": bool(visible), "answer": answer}
                           if count else None)
        return dict(self.fault_slow) if self.fault_slow else None

    def _ctl_switch_account(self, login=None, password=None, server=None):
        """The terminal logs into ``login`` by itself (as by hand in its window): every client sees it."""
        if login is None:
            raise ValueError("login is required")
        login = int(login)
        created = login not in self.accounts  # type: ignore[attr-defined]
        acct = self._authenticate(login, None if password is None else str(password),  # type: ignore[attr-defined]
                                  None if server is None else str(server))
        self._switch_account(acct["login"])  # type: ignore[attr-defined]
        return {"login": acct["login"], "server": acct["server"], "created": created}
