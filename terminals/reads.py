"""What each read does at a terminal, given that process's gateway (used by the reader and the poller).

Every value leaves here as plain JSON-able data with real-UTC times; every failure as a ReadError
whose ``kind`` the web tier maps to a status: ``invalid`` 400, ``not_found`` 404, ``unavailable`` 502.
Only read functions of the MetaTrader5 API are ever called from here (``READ_FUNCTIONS``): the read
process and the poller must never trade.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from django.conf import settings

from terminals import constants as C
from terminals.gateway import GatewayError, TerminalGateway, as_dict
from terminals.symbols import resolve_symbol_name
from terminals.timeutil import array_to_records, broker_seconds, record_to_utc, records_to_utc

READ_FUNCTIONS = frozenset(
    {
        "account_info", "terminal_info", "symbols_total", "symbols_get", "symbol_info", "symbol_info_tick",
        "symbol_select", "market_book_add", "market_book_get", "market_book_release", "copy_rates_from",
        "copy_rates_from_pos", "copy_rates_range", "copy_ticks_from", "copy_ticks_range", "orders_total",
        "orders_get", "positions_total", "positions_get", "history_orders_total", "history_orders_get",
        "history_deals_total", "history_deals_get", "order_calc_margin", "order_calc_profit",
    }
)

TIMEFRAME_SECONDS = {
    "M1": 60, "M2": 120, "M3": 180, "M4": 240, "M5": 300, "M6": 360, "M10": 600, "M12": 720, "M15": 900,
    "M20": 1200, "M30": 1800, "H1": 3600, "H2": 7200, "H3": 10800, "H4": 14400, "H6": 21600, "H8": 28800,
    "H12": 43200, "D1": 86400, "W1": 604800, "MN1": 2678400,
}
TICK_FLAGS = {"ALL": "COPY_TICKS_ALL", "INFO": "COPY_TICKS_INFO", "TRADE": "COPY_TICKS_TRADE"}
BOOK_SIDES = {1: "sell", 2: "buy", 3: "sell_market", 4: "buy_market"}
SYMBOL_SUMMARY_FIELDS = (
    "name", "description", "path", "digits", "point", "trade_tick_size", "trade_contract_size", "volume_min",
    "volume_max", "volume_step", "volume_limit", "trade_mode", "trade_exemode", "filling_mode", "order_mode",
    "expiration_mode", "currency_base", "currency_profit", "currency_margin", "spread", "select", "visible",
)
SYMBOL_TRADE_MODE_DISABLED = 0
NAMES_TTL = 60.0  # seconds the symbol name list is trusted for name resolution
RESOLVED_TTL = 10.0  # seconds a resolved, selected symbol is trusted (skips symbol_info on hot paths)
TERMINAL_INFO_TTL = 30.0
FORWARD_SLACK = 7 * 86400  # closed sessions and weekends inside a forward bar window
TICKS_LOOKBACK_MAX = 31 * 86400  # how far back "the last N ticks" / "N ticks before" looks


class ReadError(Exception):
    """A read that cannot be answered: ``kind`` is invalid | not_found | unavailable."""

    def __init__(self, kind: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind, self.message, self.details = kind, message, details or {}

    def as_reply(self) -> dict[str, Any]:
        return {"ok": False, "kind": self.kind, "message": self.message, "details": self.details}


class TerminalReads:
    """Reads of one terminal through one process's gateway (single-threaded, like the gateway)."""

    def __init__(self, gateway: TerminalGateway, suffix_max: int | None = None):
        self.gw = gateway
        self.offset = gateway.terminal.utc_offset
        self.suffix_max = settings.BRIDGE_SYMBOL_SUFFIX_MAX if suffix_max is None else suffix_max
        self._names: list[str] = []
        self._names_at = 0.0
        self._info: dict[str, Any] = {}
        self._info_at = 0.0
        self.books: set[str] = set()
        self._resolved: dict[str, tuple[str, float]] = {}

    # -- plumbing ------------------------------------------------------------------------------
    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """One read function; an IPC failure is ``unavailable`` (502), others raise GatewayError."""
        if name not in READ_FUNCTIONS:
            raise RuntimeError(f"{name} is not a read function: the read path never trades")
        try:
            return self.gw.call(name, *args, **kwargs)
        except GatewayError as exc:
            if exc.ipc_failure or exc.call == "initialize":
                raise ReadError("unavailable", f"terminal cannot be reached: {exc.message}",
                                {"code": exc.code, "reason": "terminal_down"}) from exc
            raise

    def now_broker(self) -> int:
        return broker_seconds(time.time(), self.offset)

    def terminal_info(self, fresh: bool = False) -> dict[str, Any]:
        if fresh or not self._info or time.monotonic() - self._info_at > TERMINAL_INFO_TTL:
            self._info = as_dict(self.call("terminal_info"))
            self._info_at = time.monotonic()
        return self._info

    def maxbars(self) -> int:
        return int(self.terminal_info().get("maxbars") or 100_000)

    def probe(self) -> dict[str, Any]:
        """Terminal reachable and broker connected? (the reader's heartbeat reports it)."""
        info = self.terminal_info(fresh=True)
        return {"terminal_ok": True, "broker_connected": bool(info.get("connected")), "maxbars": info.get("maxbars")}

    # -- symbols -------------------------------------------------------------------------------
    def _symbol_names(self, refresh: bool = False) -> list[str]:
        if refresh or not self._names or time.monotonic() - self._names_at > NAMES_TTL:
            self._names = [s.name for s in self.call("symbols_get")]
            self._names_at = time.monotonic()
        return self._names

    def resolve(self, requested: str) -> dict[str, Any]:
        """The broker's symbol for ``requested`` (exact name, then case, then suffix), as symbol_info."""
        try:
            return as_dict(self.call("symbol_info", requested))
        except GatewayError as exc:
            if exc.code != -4:
                raise
        name, candidates = resolve_symbol_name(requested, self._symbol_names(refresh=True), self.suffix_max)
        if name is None:
            details: dict[str, Any] = {"symbol": requested}
            if candidates:
                details["candidates"] = candidates
                raise ReadError("not_found", f"symbol {requested!r} is ambiguous at this broker", details)
            raise ReadError("not_found", f"unknown symbol {requested!r}", details)
        return as_dict(self.call("symbol_info", name))

    def selected(self, requested: str) -> dict[str, Any]:
        """symbol_info of the resolved symbol, selected into Market Watch first if it was not."""
        info = self.resolve(requested)
        if not info.get("select"):
            if not self.call("symbol_select", info["name"], True):
                code, message = self.gw.last_error()
                raise ReadError("unavailable", f"could not select {info['name']} in Market Watch: {message}",
                                {"symbol": info["name"], "code": code})
            info = as_dict(self.call("symbol_info", info["name"]))
        return info

    def name_of(self, requested: str) -> str:
        """The broker's name of a symbol known to be selected (cached briefly: bars, ticks, quotes, depth)."""
        cached = self._resolved.get(requested)
        if cached is not None and time.monotonic() - cached[1] < RESOLVED_TTL:
            return cached[0]
        name = self.selected(requested)["name"]
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[requested] = (name, time.monotonic())
        return name

    def forget_symbol(self, requested: str) -> None:
        self._resolved.pop(requested, None)

    def symbols(self, group: str | None = None) -> list[dict[str, Any]]:
        found = self.call("symbols_get", group) if group else self.call("symbols_get")
        result = []
        for symbol in found:
            if symbol.trade_mode == SYMBOL_TRADE_MODE_DISABLED:
                continue
            item = {name: getattr(symbol, name) for name in SYMBOL_SUMMARY_FIELDS}
            result.append(item)
        return result

    def symbol(self, symbol: str) -> dict[str, Any]:
        return record_to_utc(self.selected(symbol), self.offset)

    def tick(self, symbol: str) -> dict[str, Any]:
        name = self.name_of(symbol)
        try:
            tick = as_dict(self.call("symbol_info_tick", name))
        except GatewayError:
            self.forget_symbol(symbol)  # taken out of Market Watch meanwhile? select it again, once
            name = self.name_of(symbol)
            try:
                tick = as_dict(self.call("symbol_info_tick", name))
            except GatewayError as exc:
                raise ReadError("unavailable", f"no tick for {name}: {exc.message}", {"symbol": name}) from exc
        return {"symbol": name, **record_to_utc(tick, self.offset)}

    def depth(self, symbol: str) -> dict[str, Any]:
        name = self.name_of(symbol)
        return {"symbol": name, "book": self.book(name)}

    def book(self, name: str) -> list[dict[str, Any]]:
        """The market book of an exact symbol name (subscribing once per connection)."""
        for attempt in (1, 2):
            if name not in self.books:
                if not self.call("market_book_add", name):
                    code, message = self.gw.last_error()
                    raise ReadError("unavailable", f"market book of {name} unavailable: {message}",
                                    {"symbol": name, "code": code})
                self.books.add(name)
            try:
                entries = self.call("market_book_get", name)
                break
            except GatewayError as exc:
                # A reconnected terminal connection has lost its subscriptions: subscribe again once.
                self.books.discard(name)
                if attempt == 2:
                    raise ReadError("unavailable", f"market book of {name} unavailable: {exc.message}",
                                    {"symbol": name, "code": exc.code}) from exc
        return [{**as_dict(e), "side": BOOK_SIDES.get(e.type, str(e.type))} for e in entries]

    # -- bars ----------------------------------------------------------------------------------
    def rates(self, symbol: str, timeframe: str, count: int | None = None, date_from: float | None = None,
              date_to: float | None = None, limit: int | None = None) -> dict[str, Any]:
        """Bars by the signed count model (see docs/reads.md); times are real UTC."""
        name = self.name_of(symbol)
        tf = getattr(C, f"TIMEFRAME_{timeframe}")
        seconds = TIMEFRAME_SECONDS[timeframe]
        maxbars = self.maxbars()
        if count is not None and abs(count) > maxbars:
            raise ReadError("invalid", f"count {count} is over this terminal's max bars ({maxbars}); "
                            "ask for fewer, or page with from/to", {"count": [f"|count| must be <= {maxbars}"],
                                                                     "maxbars": maxbars})
        page = min(limit or maxbars, maxbars)
        result: dict[str, Any] = {"symbol": name, "timeframe": timeframe, "next": None}
        if date_from is None:
            array = self._copy_rates("copy_rates_from_pos", name, tf, 0, abs(count))
        elif count is not None and count < 0:
            array = self._copy_rates("copy_rates_from", name, tf, broker_seconds(date_from, self.offset), -count)
        elif count is not None:
            array = self._rates_forward(name, tf, seconds, date_from, count)
        else:
            b_from = broker_seconds(math.ceil(date_from), self.offset)
            b_to = broker_seconds(date_to, self.offset) if date_to is not None else self.now_broker()
            self._check_depth(name, tf, seconds, b_from)
            array = self._copy_rates("copy_rates_range", name, tf, b_from, b_to)
            if len(array) > page:
                result["next"] = {"from": int(array[page]["time"]) - self.offset}
                array = array[:page]
        result["bars"] = array_to_records(array, self.offset)
        result["count"] = len(result["bars"])
        return result

    def _copy_rates(self, function: str, *args: Any) -> np.ndarray:
        try:
            return self.call(function, *args)
        except GatewayError as exc:
            if exc.code in (-1, -2):
                raise ReadError("invalid", "no bars for this request: it reaches beyond the terminal's history "
                                f"or its max bars ({self.maxbars()})", {"code": exc.code, "maxbars": self.maxbars()}
                                ) from exc
            raise

    def _check_depth(self, name: str, tf: int, seconds: int, b_from: int) -> None:
        """Refuse a range that starts before the oldest bar the terminal keeps (its maxbars).

        A terminal may answer such a range with only the bars it has (silently short at the old end);
        the bridge says so instead. Only ranges old enough to possibly reach that far pay the extra call.
        """
        maxbars = self.maxbars()
        if b_from >= self.now_broker() - maxbars * seconds:
            return
        try:
            oldest = self.call("copy_rates_from_pos", name, tf, maxbars - 1, 1)
        except GatewayError:
            oldest = None
        if oldest is None or not len(oldest) or b_from < int(oldest[0]["time"]):
            details: dict[str, Any] = {"from": ["before the oldest bar the terminal keeps"], "maxbars": maxbars}
            if oldest is not None and len(oldest):
                details["oldest"] = int(oldest[0]["time"]) - self.offset
            raise ReadError("invalid", f"the range starts before the terminal's oldest {name} bar "
                            f"(it keeps {maxbars} bars); start later", details)

    def _rates_forward(self, name: str, tf: int, seconds: int, date_from: float, count: int) -> np.ndarray:
        """``count`` bars opening at or after ``date_from``: widen a range until it holds enough."""
        start = broker_seconds(math.ceil(date_from), self.offset)
        now = self.now_broker()
        self._check_depth(name, tf, seconds, start)
        span = count * seconds * 2 + FORWARD_SLACK
        while True:
            end = min(start + span, now + seconds)
            array = self._copy_rates("copy_rates_range", name, tf, start, max(end, start))
            if len(array) >= count or end >= now:
                return array[:count]
            span *= 4

    # -- ticks ---------------------------------------------------------------------------------
    def ticks(self, symbol: str, flags: str = "ALL", count: int | None = None, date_from: float | None = None,
              date_to: float | None = None, limit: int | None = None) -> dict[str, Any]:
        """Ticks by the signed count model; a from/to range pages at ``limit`` (never splits a millisecond)."""
        name = self.name_of(symbol)
        flag = getattr(C, TICK_FLAGS[flags])
        max_ticks = settings.BRIDGE_READ_MAX_TICKS
        if count is not None and abs(count) > max_ticks:
            raise ReadError("invalid", f"count {count} is over the bridge's max ticks per request ({max_ticks}); "
                            "page with from/to", {"count": [f"|count| must be <= {max_ticks}"]})
        page = min(limit or max_ticks, max_ticks)
        result: dict[str, Any] = {"symbol": name, "flags": flags, "next": None}
        off_ms = self.offset * 1000
        if date_from is None:
            array = self._ticks_backward(name, flag, time.time(), abs(count))
        elif count is not None and count < 0:
            array = self._ticks_backward(name, flag, date_from, -count)
        elif count is not None:
            from_ms = round(date_from * 1000) + off_ms
            array = self._copy_ticks("copy_ticks_from", name, broker_seconds(date_from, self.offset),
                                     count + 1000, flag)
            array = array[array["time_msc"] >= from_ms][:count]
        else:
            end = date_to if date_to is not None else time.time()
            from_ms, to_ms = round(date_from * 1000) + off_ms, round(end * 1000) + off_ms
            array = self._copy_ticks("copy_ticks_range", name, broker_seconds(date_from, self.offset),
                                     broker_seconds(math.ceil(end), self.offset), flag)
            array = array[(array["time_msc"] >= from_ms) & (array["time_msc"] <= to_ms)]
            if len(array) > page:
                boundary = array[page]["time_msc"]
                cut = int(np.searchsorted(array["time_msc"], boundary, side="left"))
                if cut == 0:  # more than a page of ticks in one millisecond: no clean cut exists
                    cut = page
                result["next"] = {"from": (int(array[cut]["time_msc"]) - off_ms) / 1000}
                array = array[:cut]
        result["ticks"] = array_to_records(array, self.offset)
        result["count"] = len(result["ticks"])
        return result

    def _copy_ticks(self, function: str, *args: Any) -> np.ndarray:
        try:
            return self.call(function, *args)
        except GatewayError as exc:
            if exc.code == -4:
                raise ReadError("not_found", f"no ticks for {args[0]}", {"symbol": args[0]}) from exc
            if exc.code in (-1, -2):
                raise ReadError("invalid", "no ticks for this request: it reaches beyond the terminal's history",
                                {"code": exc.code}) from exc
            raise

    def _ticks_backward(self, name: str, flag: int, until: float, count: int) -> np.ndarray:
        """The last ``count`` ticks at or before ``until`` (real UTC), widening the window back."""
        until_ms = round(until * 1000) + self.offset * 1000
        b_until = broker_seconds(math.ceil(until), self.offset)
        window = max(60, count * 5)
        while True:
            b_start = max(b_until - window, 1)
            array = self._copy_ticks("copy_ticks_range", name, b_start, b_until, flag)
            array = array[array["time_msc"] <= until_ms]
            if len(array) >= count or window >= TICKS_LOOKBACK_MAX or b_start == 1:
                return array[-count:] if count else array[:0]
            window = min(window * 4, TICKS_LOOKBACK_MAX)

    # -- live trading state (the poller's, and the fallback of snapshot reads) ---------------------
    def account(self) -> dict[str, Any]:
        return as_dict(self.call("account_info"))

    def positions(self, symbol: str | None = None) -> list[dict[str, Any]]:
        found = self.call("positions_get", symbol=symbol) if symbol else self.call("positions_get")
        return records_to_utc(as_dict(found), self.offset)

    def orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        found = self.call("orders_get", symbol=symbol) if symbol else self.call("orders_get")
        return records_to_utc(as_dict(found), self.offset)

    def trading_state(self) -> dict[str, Any]:
        """Account, positions and pending orders, read now (snapshot fallback)."""
        return {"account": self.account(), "positions": self.positions(), "orders": self.orders(),
                "asOf": time.time()}

    # -- history -------------------------------------------------------------------------------
    def history_page(self, kind: str, date_from: float | None = None, date_to: float | None = None,
                     symbol: str | None = None, position: int | None = None) -> dict[str, Any]:
        """The /history/{orders,deals} answer: ``{kind: [...], count, from, to}``."""
        items = self.history(kind, date_from, date_to, symbol, position)
        return {kind: items, "count": len(items), "from": date_from, "to": date_to}

    def history(self, kind: str, date_from: float | None = None, date_to: float | None = None,
                symbol: str | None = None, position: int | None = None) -> list[dict[str, Any]]:
        """History orders or deals (``kind`` orders|deals) in [from, to], of a symbol and/or a position."""
        function = {"orders": "history_orders_get", "deals": "history_deals_get"}[kind]
        try:
            if position is not None:
                found = self.call(function, position=position)
            else:
                b_from = broker_seconds(date_from, self.offset)
                b_to = broker_seconds(math.ceil(date_to), self.offset)
                found = self.call(function, b_from, b_to, group=symbol) if symbol else self.call(
                    function, b_from, b_to)
        except GatewayError as exc:
            if exc.code in (1, -4):  # "no history" is an empty answer, not an error
                return []
            raise
        items = records_to_utc(as_dict(found), self.offset)
        if position is not None and symbol:
            items = [i for i in items if i.get("symbol", "").lower() == symbol.lower()]
        # The terminal filters by whole seconds; from/to may carry milliseconds. Orders are in a window by
        # when they entered history (time_done), deals by their time.
        msc_field = "time_msc" if kind == "deals" else "time_done_msc"
        if date_from is not None:
            items = [i for i in items if i[msc_field] >= round(date_from * 1000)]
        if date_to is not None:
            items = [i for i in items if i[msc_field] <= round(date_to * 1000)]
        return items

    def new_deals_since(self, seen: dict[int, int], window: int = 120) -> list[dict[str, Any]]:
        """Deals of the last ``window`` seconds whose ticket is not in ``seen`` (ticket -> broker time).

        ``seen`` is updated in place and pruned to the window, so it stays small.
        """
        now = self.now_broker()
        try:
            found = self.call("history_deals_get", max(now - window, 1), now + 86400)
        except GatewayError as exc:
            if exc.code not in (1, -4):
                raise
            found = ()
        fresh = []
        for deal in found:
            if deal.ticket not in seen:
                seen[deal.ticket] = deal.time
                fresh.append(record_to_utc(as_dict(deal), self.offset))
        for ticket in [t for t, at in seen.items() if at < now - 2 * window]:
            del seen[ticket]
        return fresh
