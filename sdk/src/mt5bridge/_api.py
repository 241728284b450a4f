"""The endpoints, defined once for both clients.

Each method builds a :class:`Call` and hands it to ``self._call``: the sync session runs it and returns the
value, the async session returns a coroutine of it (so ``await s.account()``). Writes carry a request id
(made here when the caller gives none) and are retried by the transport with that same id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._core import clean, new_request_id, order_body, time_param
from .models import (
    Account,
    Bars,
    Deal,
    Depth,
    Order,
    Position,
    Positions,
    Quote,
    SessionInfo,
    Stats,
    Symbol,
    Task,
    TaskPage,
    Ticks,
)

DEFAULT_WAIT = 30.0


@dataclass
class Call:
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    request_id: str | None = None
    """set on writes: sent as ``x-request-id`` on every attempt"""
    parse: Callable[[Any], Any] | None = None
    task: bool = False
    """the answer is a task (``Idempotent-Replayed`` is read into ``Task.replayed``)"""
    tasks: bool = False
    """the answer is ``{"tasks": [...]}``"""
    wait: float | None = None
    """wait this long for the task(s) to be final before returning"""
    session: bool = True
    """send ``x-session-id``"""
    replay_safe: bool = True
    """may be sent again after a connection dropped once the request was sent (writes with a request id,
    reads); False: only a request that never reached the bridge is sent again"""


def _wait_of(wait: bool | float) -> float | None:
    if wait is True:
        return DEFAULT_WAIT
    if wait is False or wait is None:
        return None
    return float(wait)


def _list_of(cls: Any, key: str) -> Callable[[Any], Any]:
    return lambda body: [cls.from_dict(item) for item in (body or {}).get(key, [])]


class SessionAPI:
    """Reads and writes under one session (mixed into ``Session`` and ``AsyncSession``)."""

    session_id: str

    def _init_session(self, client: Any, *, login: int, password: str, server: str, account_id: str,
                      terminal: str | None, wait: float, heartbeat: bool) -> None:
        """What a session handle holds before it is opened, the same under both clients."""
        self.client = client
        self._open_body = {"accountId": account_id, "server": server, "login": login, "password": password,
                           **({"terminal": terminal} if terminal else {})}
        self._open_wait = wait
        self._heartbeat_enabled = heartbeat
        self.session_id = ""
        self.opened: SessionInfo | None = None
        self.heartbeat_interval = 30.0
        self.ended = False

    def _call(self, call: Call) -> Any:  # pragma: no cover - provided by the session classes
        raise NotImplementedError

    def _write(self, method: str, path: str, body: dict[str, Any] | None, request_id: str | None,
               wait: bool | float = False, *, tasks: bool = False) -> Any:
        return self._call(Call(method, path, json=body, request_id=request_id or new_request_id(),
                               task=not tasks, tasks=tasks, wait=_wait_of(wait)))

    # -- writes -----------------------------------------------------------------------------------
    def place_order(self, symbol: str, type: str, volume: float, *, price: float | None = None,
                    stoplimit: float | None = None, sl: float | None = None, tp: float | None = None,
                    deviation: int | None = None, magic: int | None = None, comment: str | None = None,
                    type_filling: str | None = None, type_time: str | None = None,
                    expiration: int | float | None = None, request_id: str | None = None,
                    wait: bool | float = False) -> Task:
        """``POST /orders``: any order type (``BUY SELL BUY_LIMIT SELL_LIMIT BUY_STOP SELL_STOP
        BUY_STOP_LIMIT SELL_STOP_LIMIT``). ``wait=True`` (or seconds) returns the task once final."""
        body = order_body(symbol, type, volume, price=price, stoplimit=stoplimit, sl=sl, tp=tp, deviation=deviation,
                          magic=magic, comment=comment, type_filling=type_filling, type_time=type_time,
                          expiration=expiration)
        return self._write("POST", "/orders", body, request_id, wait)

    def buy(self, symbol: str, volume: float, *, sl: float | None = None, tp: float | None = None,
            request_id: str | None = None, wait: bool | float = False, **fields: Any) -> Task:
        """A market buy (``place_order(symbol, "BUY", volume, ...)``)."""
        return self.place_order(symbol, "BUY", volume, sl=sl, tp=tp, request_id=request_id, wait=wait, **fields)

    def sell(self, symbol: str, volume: float, *, sl: float | None = None, tp: float | None = None,
             request_id: str | None = None, wait: bool | float = False, **fields: Any) -> Task:
        """A market sell."""
        return self.place_order(symbol, "SELL", volume, sl=sl, tp=tp, request_id=request_id, wait=wait, **fields)

    def modify_order(self, task_id: str, *, price: float | None = None, stoplimit: float | None = None,
                     sl: float | None = None, tp: float | None = None, volume: float | None = None,
                     expiration: int | float | None = None, type_time: str | None = None,
                     deviation: int | None = None, comment: str | None = None, request_id: str | None = None,
                     wait: bool | float = False) -> Task:
        """``PATCH /orders/{taskId}``: a queued task is changed in place (the same task); a pending order
        working at the broker gets a new ``order.modify`` task."""
        body = clean({"price": price, "stoplimit": stoplimit, "sl": sl, "tp": tp, "volume": volume,
                      "expiration": expiration, "type_time": type_time.upper() if type_time else None,
                      "deviation": deviation, "comment": comment})
        return self._write("PATCH", f"/orders/{task_id}", body, request_id, wait)

    def cancel_order(self, task_id: str, *, request_id: str | None = None, wait: bool | float = False) -> Task:
        """``DELETE /orders/{taskId}``: a queued task ends ``cancelled``; a pending order at the broker gets
        an ``order.cancel`` task."""
        return self._write("DELETE", f"/orders/{task_id}", None, request_id, wait)

    def close_position(self, ticket: int, volume: float | None = None, *, deviation: int | None = None,
                       request_id: str | None = None, wait: bool | float = False) -> Task:
        """``POST /positions/{ticket}/close`` (a ``volume`` below the position's closes part of it)."""
        return self._write("POST", f"/positions/{ticket}/close", clean({"volume": volume, "deviation": deviation}),
                           request_id, wait)

    def modify_position(self, ticket: int, *, sl: float | None = None, tp: float | None = None,
                        sl_money: float | None = None, tp_money: float | None = None,
                        request_id: str | None = None, wait: bool | float = False) -> Task:
        """``PATCH /positions/{ticket}``: ``sl``/``tp`` as prices (0 removes a level), or ``sl_money``/
        ``tp_money`` as amounts of the account's currency (the bridge turns them into prices)."""
        body = clean({"sl": sl, "tp": tp, "slMoney": sl_money, "tpMoney": tp_money})
        return self._write("PATCH", f"/positions/{ticket}", body, request_id, wait)

    def close_all(self, *, symbol: str | None = None, side: str | None = None, magic: int | None = None,
                  deviation: int | None = None, request_id: str | None = None,
                  wait: bool | float = False) -> list[Task]:
        """``POST /positions/close``: one ``position.close`` task per open position matching every filter
        given (``side``: ``BUY`` or ``SELL``); none matches: ``[]``. The tasks' request ids are
        ``<request_id>/<ticket>`` (so ``request_id`` is at most 108 characters)."""
        body = clean({"symbol": symbol, "side": side.upper() if side else None, "magic": magic,
                      "deviation": deviation})
        return self._write("POST", "/positions/close", body, request_id, wait, tasks=True)

    def pause(self, cancel_queued: bool = False, *, request_id: str | None = None) -> SessionInfo:
        """``POST /session/{id}/pause``: writes are refused (``SessionPaused``) until :meth:`resume`;
        ``cancel_queued`` also cancels the tasks still queued."""
        return self._call(Call("POST", f"/session/{self.session_id}/pause", json={"cancelQueued": cancel_queued},
                               request_id=request_id or new_request_id(), parse=SessionInfo.from_dict))

    def resume(self, *, request_id: str | None = None) -> SessionInfo:
        """``POST /session/{id}/resume``."""
        return self._call(Call("POST", f"/session/{self.session_id}/resume",
                               request_id=request_id or new_request_id(), parse=SessionInfo.from_dict))

    # -- reads ------------------------------------------------------------------------------------
    def _get(self, path: str, parse: Callable[[Any], Any], **params: Any) -> Any:
        return self._call(Call("GET", path, params=clean(params) or None, parse=parse))

    def info(self) -> SessionInfo:
        """``GET /session/{id}``: status, broker metadata, last heartbeat, expiry."""
        return self._get(f"/session/{self.session_id}", SessionInfo.from_dict)

    def account(self) -> Account:
        return self._get("/account", Account.from_dict)

    def positions(self, symbol: str | None = None) -> list[Position]:
        return self._get("/positions", _list_of(Position, "positions"), symbol=symbol)

    def positions_and_orders(self, symbol: str | None = None) -> Positions:
        """``GET /positions`` whole: positions, pending orders and the snapshot's ``as_of``."""
        return self._get("/positions", Positions.from_dict, symbol=symbol)

    def position(self, ticket: int) -> Position:
        return self._get(f"/positions/{ticket}", Position.from_dict)

    def orders(self, symbol: str | None = None) -> list[Order]:
        """Pending orders working at the broker."""
        return self._get("/orders", _list_of(Order, "orders"), symbol=symbol)

    def symbols(self, group: str | None = None) -> list[Symbol]:
        return self._get("/symbols", _list_of(Symbol, "symbols"), group=group)

    def symbol(self, name: str) -> Symbol:
        return self._get(f"/symbols/{name}", Symbol.from_dict)

    def quote(self, symbol: str) -> Quote:
        return self._get(f"/quotes/{symbol}", Quote.from_dict)

    def bars(self, symbol: str, timeframe: str, *, count: int | None = None, from_: Any = None,
             to: Any = None) -> Bars:
        """``GET /quotes/history``: ``count`` alone (the last N), ``count`` with ``from_`` (signed: forward
        or backward from it), or ``from_`` + ``to``."""
        return self._get("/quotes/history", Bars.from_dict, symbol=symbol, timeframe=timeframe.upper(), count=count,
                         **{"from": time_param(from_), "to": time_param(to)})

    def ticks(self, symbol: str, *, count: int | None = None, from_: Any = None, to: Any = None,
              flags: str | None = None) -> Ticks:
        return self._get(f"/ticks/{symbol}", Ticks.from_dict, count=count, flags=flags,
                         **{"from": time_param(from_), "to": time_param(to)})

    def depth(self, symbol: str) -> Depth:
        return self._get(f"/depth/{symbol}", Depth.from_dict)

    def history_orders(self, *, from_: Any = None, to: Any = None, symbol: str | None = None,
                       position: int | None = None) -> list[Order]:
        return self._get("/history/orders", _list_of(Order, "orders"), symbol=symbol, position=position,
                         **{"from": time_param(from_), "to": time_param(to)})

    def history_deals(self, *, from_: Any = None, to: Any = None, symbol: str | None = None,
                      position: int | None = None) -> list[Deal]:
        return self._get("/history/deals", _list_of(Deal, "deals"), symbol=symbol, position=position,
                         **{"from": time_param(from_), "to": time_param(to)})

    def stats(self, *, from_: Any = None, to: Any = None, symbol: str | None = None,
              magic: int | None = None) -> Stats:
        """``GET /stats``: trades, wins, losses, win rate, profit factor, expectancy, drawdown, ... of the
        session's account over the period (``.raw`` keeps the whole answer)."""
        return self._get("/stats", Stats.from_dict, symbol=symbol, magic=magic,
                         **{"from": time_param(from_), "to": time_param(to)})


class TasksAPI:
    """``s.tasks``: the session's tasks (``GET /tasks``), one task by id, and reconcile."""

    NOT_FINAL = "queued,dispatched,unknown"

    def __init__(self, session: Any) -> None:
        self._session = session

    def get(self, task_id: str) -> Task:
        """``GET /tasks/{id}`` (works after the session ended too)."""
        return self._session._call(Call("GET", f"/tasks/{task_id}", parse=Task.from_dict))

    def list(self, *, state: str | list[str] | None = None, kind: str | list[str] | None = None,
             request_id: str | None = None, since: float | None = None, limit: int | None = None,
             cursor: str | None = None) -> TaskPage:
        """One page of the session's tasks, newest first; the next page with ``cursor=page.next_cursor``."""
        params = clean({"state": ",".join(state) if isinstance(state, list) else state,
                        "kind": ",".join(kind) if isinstance(kind, list) else kind,
                        "requestId": request_id, "since": since, "limit": limit, "cursor": cursor})
        return self._session._call(Call("GET", "/tasks", params=params or None, parse=TaskPage.from_dict))
