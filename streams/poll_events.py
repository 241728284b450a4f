"""Turning a terminal's successive snapshots into events: the terminal poller calls this every cycle.

The poller (``workers/poller.py``, one process per terminal, never the order worker) calls::

    symbols = watched_symbols(terminal_name)     # which symbols' ticks (and ``symbols.depth``: books) to read
    ...read the terminal...
    after_poll(terminal_name, previous, current)  # previous is None on the first cycle

``current.live`` (optional part, a ``LiveFeed``; or the ``live`` argument): what the poller read of the terminal's tick stream and bars this cycle
(``workers.tick_stream``): ``ticks`` ``{symbol: [every new tick, oldest first]}`` and ``candles``
``{(symbol, timeframe): [bars, oldest first, each with "closed"]}``, times real UTC. A symbol in
``live.ticks`` gets one ``quote:X`` per tick; a watched symbol not in it falls back to comparing the
snapshots' sampled ticks.

A snapshot may be an object or a mapping; each part is optional (a missing part is simply not
compared). Parts, in the shape the ``MetaTrader5`` functions return them (structs or their dicts):

==================  =====================================================================================
``account``         ``account_info()``
``positions``       ``positions_get()`` (a list, or a dict by ticket)
``orders``          ``orders_get()``: pending orders
``ticks``           ``{symbol: symbol_info_tick(symbol)}`` for the watched symbols
``books``           ``{symbol: market_book_get(symbol)}`` for ``watched_symbols(...).depth``
``deals``           recent ``history_deals_get(...)`` (at least those since the previous snapshot): the
                    closing deal of a vanished position gives its reason (sl, tp, stop-out, client)
``history_orders``  optional, recent ``history_orders_get(...)``: the final state of a vanished pending
                    order; without it: ``filled`` when a deal of the order is seen, ``expired`` when its
                    expiration has passed, else ``cancelled``
``session_id``      optional: the session the snapshot was taken for (else the terminal's active one)
``times_utc``       optional, default True (``workers.poller`` converts): False for raw broker times
==================  =====================================================================================

A position that vanishes before its closing deal is seen waits up to ``CLOSE_DEAL_WAIT`` seconds for
it (deals of the last cycles are remembered), then is published with ``reason: "unknown"``.

Which events come out, to the session that is active on the terminal (and only when the terminal's
account is that session's login, so a terminal still logged in to a previous account never leaks it):

* ``quote:X`` for every tick of a watched symbol (``live.ticks``; else when its sampled tick changed);
  ``depth:X`` when its book changed; ``candle:X:TF`` for every bar of ``live.candles`` (the forming bar
  when it changed, ``closed: true`` once when it completed);
* ``deal`` for every deal of ``deals`` (new since the previous cycle: each deal once), with its MT5 fields
  (commission, swap, profit, fee, reason, ...), so a client can keep its ledger from the stream;
* ``position`` opened / modified (sl, tp, volume: a partial close carries its reason) / closed with
  ``reason`` from the closing deal: ``client`` (client, mobile, web or expert/API), ``sl``, ``tp``,
  ``stop-out``, else ``other``; ``unknown`` when the snapshot holds no closing deal;
* ``order`` with ``source: "terminal"`` and ``taskId: null`` for pending orders that appear, change or go
  away at the broker (``filled``, ``cancelled``, ``expired``, ``rejected``), including orders made outside
  the bridge. Task changes are not made here: ``trading.events`` publishes them on the same ``order``
  channel, without a ``source`` key (``taskId``, ``requestId``, ``kind``, ``state``, ``result``, ...);
* ``account`` at once when balance, credit or margin change, else (equity drift) at most once per
  ``BRIDGE_EVENTS_ACCOUNT_INTERVAL``; ``profit`` (per position and total) at most once per
  ``BRIDGE_EVENTS_PROFIT_INTERVAL``. Both compare with what was last published, so the last value of a
  throttled burst is still published on a later cycle.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections

from sessions.models import BridgeSession, SessionStatus
from terminals.config import get_terminal

from . import conf
from .publisher import publish_session_events, sync_redis
from .subscriptions import WatchedSymbols, watched

QUOTE_FIELDS = ("bid", "ask", "last", "volume", "time_msc")
DEAL_FIELDS = ("ticket", "order", "position_id", "symbol", "type", "entry", "volume", "price", "commission",
               "swap", "profit", "fee", "magic", "comment", "reason", "time", "time_msc", "external_id")
ACCOUNT_FIELDS = ("balance", "credit", "equity", "margin", "margin_free", "margin_level", "profit")
ACCOUNT_TRADE_FIELDS = ("balance", "credit", "margin")
POSITION_FIELDS = ("ticket", "symbol", "type", "volume", "price_open", "sl", "tp", "price_current", "profit",
                   "swap", "magic", "comment", "identifier", "reason", "time_msc", "time_update_msc")
POSITION_CHANGES = ("sl", "tp", "volume", "price_open")
ORDER_FIELDS = ("ticket", "symbol", "type", "state", "volume_initial", "volume_current", "price_open", "sl", "tp",
                "price_stoplimit", "type_time", "time_expiration", "magic", "comment", "time_setup_msc",
                "time_done_msc")
ORDER_CHANGES = ("price_open", "sl", "tp", "price_stoplimit", "time_expiration", "volume_current")
TIME_S_FIELDS = ("time", "time_update", "time_setup", "time_done", "time_expiration")
TIME_MS_FIELDS = ("time_msc", "time_update_msc", "time_setup_msc", "time_done_msc")

DEAL_ENTRY_OUT, DEAL_ENTRY_INOUT, DEAL_ENTRY_OUT_BY = 1, 2, 3
CLOSE_REASONS = {0: "client", 1: "client", 2: "client", 3: "client", 4: "sl", 5: "tp", 6: "stop-out"}
ORDER_FINAL_STATES = {2: "cancelled", 3: "partial", 4: "filled", 5: "rejected", 6: "expired"}
CLOSE_DEAL_WAIT = 3.0
RECENT_DEALS = 1000


@dataclass
class LiveFeed:
    """A poll cycle's reads of the tick stream and bars (``workers.tick_stream``), times real UTC."""

    ticks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    candles: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)


def watched_symbols(terminal_name: str) -> WatchedSymbols:
    """Symbols that open sockets of the terminal's session watch (a set); ``.depth``: those needing books."""
    return watched(sync_redis(), terminal_name)


# -- snapshot access -------------------------------------------------------------------------------------
def _part(snapshot: Any, name: str, default: Any = None) -> Any:
    if snapshot is None:
        return default
    if isinstance(snapshot, dict):
        return snapshot.get(name, default)
    return getattr(snapshot, name, default)


_SCALARS = frozenset({str, int, float, bool, type(None)})  # exact types: a numpy float64 still goes to .item()


def _plain(value: Any) -> Any:
    # Scalars first: a poll cycle walks every field of every position several times, and hasattr() on a
    # number raises and catches an AttributeError each time (most of after_poll's CPU with many positions).
    if type(value) in _SCALARS:
        return value
    if isinstance(value, dict):
        return {k: v if type(v) in _SCALARS else _plain(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):  # a named tuple (before the tuple case)
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    return value


def _by_ticket(items: Any) -> dict[int, dict]:
    if items is None:
        return {}
    if isinstance(items, dict):
        return {int(k): _plain(v) for k, v in items.items()}
    return {int(item["ticket"]): item for item in (_plain(x) for x in items)}


def _to_utc(item: dict, offset: int) -> dict:
    """Broker (trade server) times of one MT5 record as real UTC, in place."""
    if not offset:
        return item
    for name in TIME_S_FIELDS:
        if item.get(name):
            item[name] = item[name] - offset
    for name in TIME_MS_FIELDS:
        if item.get(name):
            item[name] = item[name] - offset * 1000
    return item


# -- state per terminal ----------------------------------------------------------------------------------
@dataclass
class _TerminalState:
    session_id: str | None = None
    account: dict[str, Any] | None = None
    account_at: float = 0.0
    profit: dict[str, Any] | None = None
    profit_at: float = 0.0
    books: dict[str, Any] = field(default_factory=dict)
    recent_deals: deque = field(default_factory=lambda: deque(maxlen=RECENT_DEALS))
    pending_closes: dict[int, tuple[dict, float]] = field(default_factory=dict)  # ticket -> (position, since)


_states: dict[str, _TerminalState] = {}


def _active_session(terminal_name: str) -> tuple[str, int] | None:
    """(session id, login) of the terminal's active session, read every cycle (one indexed query) and
    never cached: a cached id could send a new session's first events to the one that just closed."""
    close_old_connections()
    return (BridgeSession.objects.filter(terminal__name=terminal_name, status=SessionStatus.ACTIVE)
            .values_list("id", "login").first())


def _utc_offset(terminal_name: str, snapshot: Any) -> int:
    if _part(snapshot, "times_utc", True):
        return 0
    return get_terminal(terminal_name).utc_offset


# -- the diff --------------------------------------------------------------------------------------------
Event = tuple[str, dict[str, Any], int | None]


def after_poll(terminal_name: str, previous: Any, current: Any, live: LiveFeed | None = None) -> int:
    """Publish the events that ``current`` shows against ``previous`` (and ``live``'s ticks and bars);
    returns how many were published."""
    session = _active_session(terminal_name)
    state = _states.setdefault(terminal_name, _TerminalState())
    if session is None:
        _states[terminal_name] = _TerminalState()
        return 0
    session_id, login = session
    given = _part(current, "session_id")
    if given is not None and given != session_id:
        return 0
    account = _plain(_part(current, "account"))
    if account is not None and account.get("login") not in (None, login):
        return 0  # the terminal is still (or again) on another account: nothing of it may leak
    if state.session_id != session_id:
        # A new session on this terminal. Against a previous snapshot of the same account, the diff is
        # still right (what changed since then happened now); of another account it is meaningless.
        _states[terminal_name] = state = _TerminalState(session_id=session_id)
        before = _plain(_part(previous, "account"))
        if before is None or before.get("login") != login:
            previous = None
    offset = _utc_offset(terminal_name, current)
    live = live if live is not None else _part(current, "live")
    now = time.monotonic()
    events: list[Event] = []
    watched = watched_symbols(terminal_name)
    quoted = getattr(watched, "quotes", watched)
    streamed = live.ticks if live is not None else {}
    ticks = {s: t for s, t in (_part(current, "ticks") or {}).items() if s in quoted and s not in streamed}
    events += quote_events(_part(previous, "ticks") or {}, ticks, offset)
    events += tick_events({s: t for s, t in streamed.items() if s in quoted})
    if live is not None:
        events += candle_events(live.candles, getattr(watched, "candles", frozenset()))
    books = {s: b for s, b in (_part(current, "books") or {}).items() if s in watched.depth}
    events += depth_events(state, books)
    new_deals = [_to_utc(d, offset) for d in (_plain(_part(current, "deals")) or [])]
    state.recent_deals.extend(new_deals)
    events += deal_events(new_deals)
    if previous is not None:
        events += position_events(state, previous, current, offset, now)
        events += order_events(state, previous, current, offset)
    if account is not None:
        events += account_events(state, account, now)
    if _part(current, "positions") is not None:
        events += profit_events(state, _by_ticket(_part(current, "positions")), now)
    if events:
        publish_session_events(session_id, events)
    return len(events)


def quote_events(previous: dict, current: dict, offset: int) -> list[Event]:
    events: list[Event] = []
    for symbol, tick in current.items():
        tick = _plain(tick)
        if tick is None:
            continue
        before = _plain(previous.get(symbol))
        if before is not None and all(before.get(f) == tick.get(f) for f in QUOTE_FIELDS):
            continue
        time_msc = int(tick.get("time_msc") or int(tick.get("time", 0)) * 1000) - offset * 1000
        data = {"symbol": symbol, "bid": tick.get("bid"), "ask": tick.get("ask"), "last": tick.get("last"),
                "volume": tick.get("volume"), "time_msc": time_msc}
        events.append((f"quote:{symbol}", data, time_msc))
    return events


def tick_events(streams: dict[str, list[dict]]) -> list[Event]:
    """One ``quote:X`` per tick of the terminal's tick stream, in order (times already real UTC)."""
    events: list[Event] = []
    for symbol, ticks in streams.items():
        channel = f"quote:{symbol}"
        for tick in ticks:
            time_msc = int(tick["time_msc"])
            data = {"symbol": symbol, "bid": tick.get("bid"), "ask": tick.get("ask"), "last": tick.get("last"),
                    "volume": tick.get("volume"), "time_msc": time_msc, "flags": tick.get("flags")}
            events.append((channel, data, time_msc))
    return events


def candle_events(candles: dict[tuple[str, str], list[dict]], watched: frozenset[tuple[str, str]]) -> list[Event]:
    """``candle:X:TF`` per bar handed on: the forming bar (``closed: false``) or a completed one."""
    events: list[Event] = []
    for (symbol, timeframe), bars in candles.items():
        if (symbol, timeframe) not in watched:
            continue
        for bar in bars:
            events.append((f"candle:{symbol}:{timeframe}", dict(bar), None))
    return events


def deal_events(deals: list[dict]) -> list[Event]:
    """One ``deal`` per deal new this cycle (the poller hands each deal on once), oldest first."""
    ordered = sorted(deals, key=lambda d: (d.get("time_msc") or 0, d.get("ticket") or 0))
    return [("deal", {k: d[k] for k in DEAL_FIELDS if k in d}, d.get("time_msc")) for d in ordered]


def depth_events(state: _TerminalState, books: dict) -> list[Event]:
    events: list[Event] = []
    for symbol, book in books.items():
        entries = _plain(book)
        if entries is None or state.books.get(symbol) == entries:
            continue
        state.books[symbol] = entries
        events.append((f"depth:{symbol}", {"symbol": symbol, "book": entries}, None))
    return events


def _closing_deal(deals: list[dict], position: int) -> dict | None:
    closing = [d for d in deals if d.get("position_id") == position
               and d.get("entry") in (DEAL_ENTRY_OUT, DEAL_ENTRY_INOUT, DEAL_ENTRY_OUT_BY)]
    return max(closing, key=lambda d: (d.get("time_msc", 0), d.get("ticket", 0))) if closing else None


def _position_data(position: dict) -> dict:
    return {k: position.get(k) for k in POSITION_FIELDS if k in position}


def position_events(state: _TerminalState, previous: Any, current: Any, offset: int, now: float) -> list[Event]:
    if _part(previous, "positions") is None or _part(current, "positions") is None:
        return []
    before = _by_ticket(_part(previous, "positions"))
    after = _by_ticket(_part(current, "positions"))
    deals = list(state.recent_deals)
    events: list[Event] = []
    for ticket, position in after.items():
        position = _to_utc(dict(position), offset)
        old = before.get(ticket)
        if old is None:
            events.append(("position", {"event": "opened", **_position_data(position)},
                           position.get("time_msc")))
            continue
        old = _to_utc(dict(old), offset)
        changes = {k: [old.get(k), position.get(k)] for k in POSITION_CHANGES if old.get(k) != position.get(k)}
        if changes:
            data = {"event": "modified", "changes": changes, **_position_data(position)}
            if "volume" in changes and (position.get("volume") or 0) < (old.get("volume") or 0):
                deal = _closing_deal(deals, ticket)
                data["reason"] = CLOSE_REASONS.get(deal.get("reason"), "other") if deal else "unknown"
                if deal:
                    data["deal"] = deal
            events.append(("position", data, position.get("time_update_msc")))
    for ticket, old in before.items():
        if ticket not in after and ticket not in state.pending_closes:
            state.pending_closes[ticket] = (_to_utc(dict(old), offset), now)
    for ticket, (old, since) in list(state.pending_closes.items()):
        deal = _closing_deal(deals, ticket)
        if deal is None and now - since < CLOSE_DEAL_WAIT:
            continue  # its closing deal may show up in history a cycle later
        del state.pending_closes[ticket]
        data = {"event": "closed", **_position_data(old)}
        if deal is not None:
            data.update(reason=CLOSE_REASONS.get(deal.get("reason"), "other"), deal=deal,
                        price_close=deal.get("price"), profit=deal.get("profit"))
        else:
            data["reason"] = "unknown"
        events.append(("position", data, deal.get("time_msc") if deal else None))
    return events


def _order_data(event: str, order: dict) -> dict:
    return {"source": "terminal", "event": event, "state": event, "taskId": None,
            **{k: order.get(k) for k in ORDER_FIELDS if k in order}}


def order_events(state: _TerminalState, previous: Any, current: Any, offset: int) -> list[Event]:
    if _part(previous, "orders") is None or _part(current, "orders") is None:
        return []
    before = _by_ticket(_part(previous, "orders"))
    after = _by_ticket(_part(current, "orders"))
    history = _by_ticket(_part(current, "history_orders"))
    events: list[Event] = []
    for ticket, order in after.items():
        order = _to_utc(dict(order), offset)
        old = before.get(ticket)
        if old is None:
            events.append(("order", _order_data("placed", order), order.get("time_setup_msc")))
            continue
        old = _to_utc(dict(old), offset)
        changes = {k: [old.get(k), order.get(k)] for k in ORDER_CHANGES if old.get(k) != order.get(k)}
        if changes:
            events.append(("order", {**_order_data("modified", order), "changes": changes}, None))
    for ticket, old in before.items():
        if ticket in after:
            continue
        done = history.get(ticket)
        if done is not None:
            done = _to_utc(dict(done), offset)
            event = ORDER_FINAL_STATES.get(done.get("state"), "removed")
            events.append(("order", _order_data(event, done), done.get("time_done_msc")))
            continue
        old = _to_utc(dict(old), offset)
        deal = next((d for d in state.recent_deals if d.get("order") == ticket), None)
        expiry = old.get("time_expiration") or 0
        if deal is not None:
            event = "filled"
        elif expiry and expiry <= time.time():
            event = "expired"
        else:
            event = "cancelled"
        data = _order_data(event, old)
        if deal is not None:
            data["deal"] = deal
        events.append(("order", data, deal.get("time_msc") if deal else None))
    return events


def account_events(state: _TerminalState, account: dict, now: float) -> list[Event]:
    data = {k: account.get(k) for k in ACCOUNT_FIELDS if k in account}
    if "currency" in account:
        data["currency"] = account["currency"]
    last = state.account
    if last == data:
        return []
    trade_change = last is None or any(last.get(k) != data.get(k) for k in ACCOUNT_TRADE_FIELDS)
    if not trade_change and now - state.account_at < conf.account_equity_interval():
        return []
    state.account, state.account_at = data, now
    return [("account", data, None)]


def profit_events(state: _TerminalState, positions: dict[int, dict], now: float) -> list[Event]:
    per_position = [{"ticket": t, "symbol": p.get("symbol"), "profit": p.get("profit")}
                    for t, p in sorted(positions.items())]
    data = {"positions": per_position, "total": round(sum(p.get("profit") or 0 for p in positions.values()), 2)}
    if state.profit == data:
        return []
    tickets_changed = state.profit is None or (
        [p["ticket"] for p in state.profit["positions"]] != [p["ticket"] for p in per_position])
    if not tickets_changed and now - state.profit_at < conf.profit_interval():
        return []
    state.profit, state.profit_at = data, now
    return [("profit", data, None)]
