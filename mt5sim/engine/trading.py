"""The trade server: request validation (MT5_API.md §6), execution, margin and profit, and the
server-side events driven by ticks (pending triggers, SL/TP, stop-out, expiry).

A mixin of Engine: it works on the engine's state (accounts, orders, positions, history, feeds).
Every rejection returns the retcode a real trade server returns; order_check runs the same
checks without changing anything.
"""

from __future__ import annotations

import math

import numpy as np

from . import _const as C
from .model import Deal, Order, Position

_BUY_TYPES = {C.ORDER_TYPE_BUY, C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_BUY_STOP, C.ORDER_TYPE_BUY_STOP_LIMIT}
_PENDING_TYPES = {C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_SELL_LIMIT, C.ORDER_TYPE_BUY_STOP, C.ORDER_TYPE_SELL_STOP,
                  C.ORDER_TYPE_BUY_STOP_LIMIT, C.ORDER_TYPE_SELL_STOP_LIMIT}
_ORDER_MODE_BIT = {
    C.ORDER_TYPE_BUY: C.SYMBOL_ORDER_MARKET, C.ORDER_TYPE_SELL: C.SYMBOL_ORDER_MARKET,
    C.ORDER_TYPE_BUY_LIMIT: C.SYMBOL_ORDER_LIMIT, C.ORDER_TYPE_SELL_LIMIT: C.SYMBOL_ORDER_LIMIT,
    C.ORDER_TYPE_BUY_STOP: C.SYMBOL_ORDER_STOP, C.ORDER_TYPE_SELL_STOP: C.SYMBOL_ORDER_STOP,
    C.ORDER_TYPE_BUY_STOP_LIMIT: C.SYMBOL_ORDER_STOP_LIMIT, C.ORDER_TYPE_SELL_STOP_LIMIT: C.SYMBOL_ORDER_STOP_LIMIT,
}
_EXPIRATION_BIT = {C.ORDER_TIME_GTC: C.SYMBOL_EXPIRATION_GTC, C.ORDER_TIME_DAY: C.SYMBOL_EXPIRATION_DAY,
                   C.ORDER_TIME_SPECIFIED: C.SYMBOL_EXPIRATION_SPECIFIED,
                   C.ORDER_TIME_SPECIFIED_DAY: C.SYMBOL_EXPIRATION_SPECIFIED_DAY}
_FUTURES_MODES = {C.SYMBOL_CALC_MODE_FUTURES, C.SYMBOL_CALC_MODE_EXCH_FUTURES, C.SYMBOL_CALC_MODE_EXCH_FUTURES_FORTS}
_DAY_MS = 86_400_000
_AGG_LEN = 7   # [Vbuy, VOb, Vsell, VOs, Mbuy, Msell, swaps] per (login, symbol)
_WEEKEND_SESSIONS = ("crypto", "always")
_REQUEST_KEYS = ("action", "magic", "order", "symbol", "volume", "price", "stoplimit", "sl", "tp", "deviation",
                 "type", "type_filling", "type_time", "expiration", "comment", "position", "position_by")


class Reject(Exception):
    """A trade request refused with a retcode."""

    def __init__(self, retcode: int):
        super().__init__(retcode)
        self.retcode = retcode


def is_buy(order_type: int) -> bool:
    return order_type in _BUY_TYPES


def _points(diff: float, point: float) -> float:
    return round(diff / point, 6)


def _on_grid(value: float, step: float) -> bool:
    if step <= 0:
        return True
    q = value / step
    return abs(q - round(q)) < 1e-6


class TradeServer:
    """Trade-server behaviour; mixed into Engine."""

    # ================================================================ money
    def _profit_factor(self, spec: dict) -> float:
        if spec["trade_calc_mode"] in _FUTURES_MODES or spec["trade_calc_mode"] == C.SYMBOL_CALC_MODE_CFDINDEX:
            tv = spec.get("tick_value_cfg") or 0.0
            if tv and spec["trade_tick_size"]:
                return tv / spec["trade_tick_size"]
        if spec["trade_calc_mode"] == C.SYMBOL_CALC_MODE_EXCH_BONDS:
            return spec["trade_contract_size"] * (spec.get("trade_face_value") or 100.0) / 100.0
        return spec["trade_contract_size"]

    def _conv(self, ccy_from: str, ccy_to: str, via: tuple[str, float] | None = None) -> float:
        """Rate to convert an amount in ccy_from into ccy_to, from current quotes.

        `via` = (symbol, price) uses that price when the symbol itself is the conversion pair
        (order_calc_margin at a given price)."""
        if ccy_from == ccy_to:
            return 1.0
        route = self._conv_routes.get((ccy_from, ccy_to))
        if route is None:
            route = self._find_route(ccy_from, ccy_to)
            self._conv_routes[(ccy_from, ccy_to)] = route
        rate = 1.0
        for sym, inverse in route:
            if via is not None and via[0] == sym and via[1] > 0:
                px_bid = px_ask = via[1]
            else:
                tick = self._tick(sym)
                if tick is None:
                    continue
                px_bid, px_ask = tick[1], tick[2]
            rate = rate / px_ask if inverse else rate * px_bid
        return rate

    def _find_route(self, a: str, b: str) -> list[tuple[str, bool]]:
        def direct(x: str, y: str):
            for name, s in self.symbols.items():
                if s["currency_base"] == x and s["currency_profit"] == y and not s["no_prices"]:
                    return [(name, False)]
            for name, s in self.symbols.items():
                if s["currency_base"] == y and s["currency_profit"] == x and not s["no_prices"]:
                    return [(name, True)]
            return None

        r = direct(a, b)
        if r is not None:
            return r
        for pivot in ("USD", "EUR"):
            if pivot in (a, b):
                continue
            r1, r2 = direct(a, pivot), direct(pivot, b)
            if r1 is not None and r2 is not None:
                return r1 + r2
        return []

    def _margin_raw(self, spec: dict, volume: float, price: float, leverage: int) -> float:
        """Margin in the symbol's margin currency (MQL5 formulas by trade_calc_mode)."""
        mode = spec["trade_calc_mode"]
        cs = spec["trade_contract_size"]
        rate = spec["margin_rate"] or 1.0
        lev = max(1, leverage)
        if mode == C.SYMBOL_CALC_MODE_FOREX:
            return volume * cs * rate / lev
        if mode == C.SYMBOL_CALC_MODE_FOREX_NO_LEVERAGE:
            return volume * cs * rate
        if mode in (C.SYMBOL_CALC_MODE_CFD, C.SYMBOL_CALC_MODE_EXCH_STOCKS, C.SYMBOL_CALC_MODE_EXCH_STOCKS_MOEX):
            return volume * cs * price * rate
        if mode == C.SYMBOL_CALC_MODE_CFDLEVERAGE:
            return volume * cs * price * rate / lev
        if mode == C.SYMBOL_CALC_MODE_CFDINDEX:
            return volume * cs * price * rate
        if mode in _FUTURES_MODES:
            return volume * (spec["margin_initial"] or 0.0) * rate
        if mode in (C.SYMBOL_CALC_MODE_EXCH_BONDS, C.SYMBOL_CALC_MODE_EXCH_BONDS_MOEX):
            return volume * cs * price * (spec.get("trade_face_value") or 100.0) / 100.0 * rate
        return 0.0

    def _margin(self, acct: dict, spec: dict, volume: float, price: float) -> float:
        """Margin in the account currency for `volume` lots at `price`."""
        raw = self._margin_raw(spec, volume, price, acct["leverage"])
        return raw * self._conv(spec["currency_margin"], acct["currency"], via=(spec["name"], price))

    @staticmethod
    def _symbol_margin(spec: dict, a: list) -> float:
        """Margin of all positions on one symbol: [Vb, VOb, Vs, VOs, Mb, Ms] with hedged volume rules."""
        vb, vs, mb, ms = a[0], a[2], a[4], a[5]
        if vb <= 1e-12 or vs <= 1e-12:
            return mb + ms
        if spec["margin_hedged_use_leg"]:
            return max(mb, ms)
        hedged = min(vb, vs)
        ratio = spec["margin_hedged"] / spec["trade_contract_size"] if spec["trade_contract_size"] else 1.0
        if vb >= vs:
            uncovered = mb * (vb - hedged) / vb
        else:
            uncovered = ms * (vs - hedged) / vs
        return uncovered + (mb * hedged / vb + ms * hedged / vs) * ratio

    def _account_figures(self, login: int, override: tuple[str, list] | None = None,
                         realized: float = 0.0) -> dict:
        """balance/profit/equity/margin/free/level now (optionally with one symbol's aggregate replaced)."""
        acct = self.accounts[login]
        aggs = self._agg.get(login, {})
        profit = 0.0
        margin = 0.0
        names = set(aggs)
        if override is not None:
            names.add(override[0])
        for name in names:
            a = override[1] if override is not None and override[0] == name else aggs[name]
            spec = self.symbols[name]
            margin += self._symbol_margin(spec, a)
            if a[0] > 1e-12 or a[2] > 1e-12:
                tick = self._tick(name)
                if tick is not None:
                    pf = self._profit_factor(spec) * self._conv(spec["currency_profit"], acct["currency"])
                    profit += pf * ((tick[1] * a[0] - a[1]) + (a[3] - tick[2] * a[2]))
            profit += a[6]          # swaps of the open positions count in profit and equity
        digits = acct["currency_digits"]
        balance = round(acct["balance"] + realized, digits)
        profit = round(profit - realized, digits)
        equity = round(balance + acct["credit"] + profit, digits)
        margin = round(margin, digits)
        free = round(equity - margin, digits)
        level = round(equity / margin * 100.0, 2) if margin > 0 else 0.0
        return {"balance": balance, "profit": profit, "equity": equity, "margin": margin, "margin_free": free,
                "margin_level": level}

    def _position_profit(self, pos: Position, tick: tuple | None) -> tuple[float, float]:
        """(price_current, profit in account currency) of a position."""
        if tick is None:
            return pos.price_open, 0.0
        spec = self.symbols[pos.symbol]
        acct = self.accounts[pos.login]
        pf = self._profit_factor(spec) * self._conv(spec["currency_profit"], acct["currency"])
        if pos.type == C.POSITION_TYPE_BUY:
            cur = tick[1]
            profit = (cur - pos.price_open) * pos.volume * pf
        else:
            cur = tick[2]
            profit = (pos.price_open - cur) * pos.volume * pf
        return cur, round(profit, acct["currency_digits"])

    def _deal_profit(self, acct: dict, spec: dict, pos_type: int, open_price: float, close_price: float,
                     volume: float) -> float:
        pf = self._profit_factor(spec) * self._conv(spec["currency_profit"], acct["currency"])
        diff = close_price - open_price if pos_type == C.POSITION_TYPE_BUY else open_price - close_price
        return round(diff * volume * pf, acct["currency_digits"])

    # ================================================================ commissions and swaps
    @staticmethod
    def _commission(spec: dict, volume: float, entry: bool) -> float:
        """Commission (<= 0, account currency) of a deal leg of `volume` lots entering or exiting the market."""
        if volume <= 0:
            return 0.0
        com = spec["commission"]
        if com["charge"] != "both" and (com["charge"] == "entry") != entry:
            return 0.0
        return -(com["per_lot"] * volume + com["per_deal"])

    @staticmethod
    def _swap_share(pos: Position, volume: float, digits: int) -> float:
        """The part of a position's accumulated swap that a deal closing `volume` lots realizes."""
        if not pos.swap or pos.volume <= 0:
            return 0.0
        if volume >= pos.volume - 1e-9:
            return pos.swap
        return round(pos.swap * volume / pos.volume, digits)

    def _swap_day(self, acct: dict, spec: dict, pos: Position) -> float:
        """One night of swap for a position, in the account currency (SYMBOL_SWAP_MODE_*)."""
        mode = spec["swap_mode"]
        rate = spec["swap_long"] if pos.type == C.POSITION_TYPE_BUY else spec["swap_short"]
        if not rate or mode == C.SYMBOL_SWAP_MODE_DISABLED:
            return 0.0
        ccy = acct["currency"]
        if mode == C.SYMBOL_SWAP_MODE_POINTS:
            amount, frm = rate * spec["point"] * self._profit_factor(spec) * pos.volume, spec["currency_profit"]
        elif mode == C.SYMBOL_SWAP_MODE_CURRENCY_SYMBOL:
            amount, frm = rate * pos.volume, spec["currency_base"]
        elif mode == C.SYMBOL_SWAP_MODE_CURRENCY_MARGIN:
            amount, frm = rate * pos.volume, spec["currency_margin"]
        elif mode == C.SYMBOL_SWAP_MODE_CURRENCY_DEPOSIT:
            amount, frm = rate * pos.volume, ccy
        elif mode in (C.SYMBOL_SWAP_MODE_INTEREST_CURRENT, C.SYMBOL_SWAP_MODE_INTEREST_OPEN):
            price = pos.price_open
            if mode == C.SYMBOL_SWAP_MODE_INTEREST_CURRENT:
                tick = self._tick(pos.symbol)
                if tick is not None:
                    price = tick[1] if pos.type == C.POSITION_TYPE_BUY else tick[2]
            amount = price * self._profit_factor(spec) * pos.volume * rate / 100.0 / 360.0
            frm = spec["currency_profit"]
        else:   # REOPEN modes are not emulated (docs/mt5sim.md, "What is and is not emulated")
            return 0.0
        return amount * self._conv(frm, ccy)

    def _run_rollovers(self, now_ms: int) -> None:
        """Charge swaps at each broker midnight passed since the last call (the rollover of the day before)."""
        day = now_ms // _DAY_MS
        last = getattr(self, "_rollover_day", None)
        if last is None or day <= last:
            self._rollover_day = day
            return
        for d in range(max(last + 1, day - 366), day + 1):
            self._rollover(d - 1)
        self._rollover_day = day

    def _rollover(self, trading_day: int) -> None:
        """The rollover at the end of broker day `trading_day` (epoch days): a night of swap for every open
        position, three nights on the symbol's swap_rollover3days; none after Saturday and Sunday unless the
        symbol trades all week (crypto), which has no triple day."""
        weekday = (trading_day + 3) % 7                 # 0 = Monday (1970-01-01 was a Thursday)
        mt5_day = (weekday + 1) % 7                     # ENUM_DAY_OF_WEEK: 0 = Sunday
        for pos in list(self.positions.values()):
            spec = self.symbols.get(pos.symbol)
            acct = self.accounts.get(pos.login)
            if spec is None or acct is None:
                continue
            all_week = spec["sessions"] in _WEEKEND_SESSIONS
            if weekday >= 5 and not all_week:
                continue
            nights = 3 if (not all_week and mt5_day == spec["swap_rollover3days"]) else 1
            amount = round(self._swap_day(acct, spec, pos) * nights, acct["currency_digits"])
            if amount:
                self._pos_begin(pos)
                pos.swap = round(pos.swap + amount, acct["currency_digits"])
                self._pos_end(pos)

    # ================================================================ aggregates
    def _agg_apply(self, pos: Position, sign: float) -> None:
        a = self._agg.setdefault(pos.login, {}).setdefault(pos.symbol, [0.0] * _AGG_LEN)
        if pos.type == C.POSITION_TYPE_BUY:
            a[0] += sign * pos.volume
            a[1] += sign * pos.volume * pos.price_open
            a[4] += sign * pos.margin
        else:
            a[2] += sign * pos.volume
            a[3] += sign * pos.volume * pos.price_open
            a[5] += sign * pos.margin
        a[6] += sign * pos.swap
        if abs(a[0]) < 1e-9 and abs(a[2]) < 1e-9:
            del self._agg[pos.login][pos.symbol]

    def _hypothetical_agg(self, login: int, symbol: str, changes: list[tuple[int, float, float, float]]) -> list:
        """The symbol aggregate after adding (type, volume, price, margin) legs (negative volume = reduce)."""
        a = list(self._agg.get(login, {}).get(symbol, [0.0] * _AGG_LEN))
        for ptype, vol, price, margin in changes:
            if ptype == C.POSITION_TYPE_BUY:
                a[0] += vol
                a[1] += vol * price
                a[4] += margin
            else:
                a[2] += vol
                a[3] += vol * price
                a[5] += margin
        return a

    # ================================================================ position bookkeeping
    def _pos_insert(self, pos: Position) -> None:
        self.positions[pos.ticket] = pos
        self._pos_by_login.setdefault(pos.login, {})[pos.ticket] = pos
        self._agg_apply(pos, 1.0)
        if pos.sl or pos.tp:
            self._watch_pos.setdefault(pos.symbol, set()).add(pos.ticket)
        self._log("P", pos.dump())

    def _pos_delete(self, pos: Position) -> None:
        self._agg_apply(pos, -1.0)
        self.positions.pop(pos.ticket, None)
        self._pos_by_login.get(pos.login, {}).pop(pos.ticket, None)
        self._watch_pos.get(pos.symbol, set()).discard(pos.ticket)
        self.closed_ids.add(pos.identifier)
        self._log("X", [pos.ticket, pos.identifier])

    def _pos_begin(self, pos: Position) -> None:
        self._agg_apply(pos, -1.0)

    def _pos_end(self, pos: Position) -> None:
        self._agg_apply(pos, 1.0)
        if pos.sl or pos.tp:
            self._watch_pos.setdefault(pos.symbol, set()).add(pos.ticket)
        else:
            self._watch_pos.get(pos.symbol, set()).discard(pos.ticket)
        self._log("P", pos.dump())

    def _netting_position(self, login: int, symbol: str) -> Position | None:
        for pos in self._pos_by_login.get(login, {}).values():
            if pos.symbol == symbol:
                return pos
        return None

    def _order_add(self, order: Order) -> None:
        self.orders[order.ticket] = order
        self._orders_by_login.setdefault(order.login, {})[order.ticket] = order
        self._watch_orders.setdefault(order.symbol, set()).add(order.ticket)
        self._log("O", order.dump())

    def _order_to_history(self, order: Order) -> None:
        """A finished order (filled, canceled, expired, rejected) enters history."""
        if self.orders.pop(order.ticket, None) is not None:
            self._orders_by_login.get(order.login, {}).pop(order.ticket, None)
            self._watch_orders.get(order.symbol, set()).discard(order.ticket)
        self.hist_orders[order.ticket] = order
        self._hist_by_login.setdefault(order.login, []).append(order)
        self._log("H", order.dump())

    def _deal_add(self, deal: Deal) -> None:
        self._deals_by_login.setdefault(deal.login, []).append(deal)
        self._log("D", deal.dump())

    def _new_order_ticket(self) -> int:
        preset = self._preset_order_ticket
        if preset:  # a slow request executes under the ticket its in-flight order showed
            self._preset_order_ticket = None
            return preset
        self.next_order += 1
        return self.next_order

    def _new_deal_ticket(self) -> int:
        self.next_deal += 1
        return self.next_deal

    # ================================================================ request entry points
    def _request_tuple(self, req: dict) -> list:
        return [req.get(k, "" if k in ("symbol", "comment") else 0) for k in _REQUEST_KEYS]

    def order_send(self, req: dict) -> list:
        return self._process(req, check=False)

    def order_check(self, req: dict) -> list:
        return self._process(req, check=True)

    def _rewrite_comment(self, req: dict) -> dict:
        """The request as the broker stores it (Engine overrides it for ctl.comment_fault)."""
        return req

    def _process(self, req: dict, check: bool, login: int | None = None) -> list:
        """Check or execute one request for ``login`` (default: the account the terminal is logged into)."""
        echo = self._request_tuple(req)
        if login is None:
            login = self.current_login
        request_id = 0
        if not check:
            self.request_id += 1
            request_id = self.request_id
            req = self._rewrite_comment(req)
        try:
            if not self.connected:
                raise Reject(C.TRADE_RETCODE_CONNECTION)
            if not self.terminal["trade_allowed"]:
                raise Reject(C.TRADE_RETCODE_CLIENT_DISABLES_AT)
            if not check and self.fault_reject[0] > 0:
                self.fault_reject[0] -= 1
                raise Reject(self.fault_reject[1])
            action = req.get("action", 0)
            handler = {
                C.TRADE_ACTION_DEAL: self._do_deal,
                C.TRADE_ACTION_PENDING: self._do_pending,
                C.TRADE_ACTION_SLTP: self._do_sltp,
                C.TRADE_ACTION_MODIFY: self._do_modify,
                C.TRADE_ACTION_REMOVE: self._do_remove,
                C.TRADE_ACTION_CLOSE_BY: self._do_close_by,
            }.get(action)
            if handler is None or login is None:
                raise Reject(C.TRADE_RETCODE_INVALID)
            acct = self.accounts[login]
            out = handler(acct, req, check)
        except Reject as rej:
            return self._reject_result(rej.retcode, req, echo, request_id, check, login)
        if check:
            figures = out
            return [0, figures["balance"], figures["equity"], figures["profit"], figures["margin"],
                    figures["margin_free"], figures["margin_level"], "Done", echo]
        retcode, deal, order, volume, price, bid, ask = out
        return [retcode, deal, order, volume, price, bid, ask, C.RETCODE_COMMENTS[retcode], request_id, 0, echo]

    def _reject_result(self, retcode: int, req: dict, echo: list, request_id: int, check: bool,
                       login: int | None) -> list:
        comment = C.RETCODE_COMMENTS.get(retcode, "Request rejected")
        if check:
            if login is None:
                f = {"balance": 0.0, "equity": 0.0, "profit": 0.0, "margin": 0.0, "margin_free": 0.0,
                     "margin_level": 0.0}
            else:
                f = self._last_check_figures or self._account_figures(login)
            self._last_check_figures = None
            return [retcode, f["balance"], f["equity"], f["profit"], f["margin"], f["margin_free"],
                    f["margin_level"], comment, echo]
        bid = ask = 0.0
        if retcode in (C.TRADE_RETCODE_REQUOTE, C.TRADE_RETCODE_PRICE_CHANGED):
            tick = self._tick(req.get("symbol", ""))
            if tick is not None:
                bid, ask = tick[1], tick[2]
        return [retcode, 0, 0, 0.0, 0.0, bid, ask, comment, request_id, 0, echo]

    # ================================================================ common checks
    def _symbol_for(self, req: dict, fallback: str | None = None) -> dict:
        name = req.get("symbol") or fallback
        if not name:
            raise Reject(C.TRADE_RETCODE_INVALID)
        spec = self.symbols.get(name)
        if spec is None:
            raise Reject(C.TRADE_RETCODE_INVALID)
        return spec

    def _check_permissions(self, acct: dict, spec: dict) -> None:
        if not acct["trade_allowed"] or spec["trade_mode"] == C.SYMBOL_TRADE_MODE_DISABLED:
            raise Reject(C.TRADE_RETCODE_TRADE_DISABLED)
        if not acct["trade_expert"]:
            raise Reject(C.TRADE_RETCODE_SERVER_DISABLES_AT)

    def _check_market(self, spec: dict) -> tuple:
        tick = self._tick(spec["name"])
        if tick is None or spec["no_prices"]:
            raise Reject(C.TRADE_RETCODE_PRICE_OFF)
        if not self.feeds[spec["name"]].is_open_at(self.now_ms()):
            raise Reject(C.TRADE_RETCODE_MARKET_CLOSED)
        return tick

    @staticmethod
    def _check_volume(spec: dict, volume: float) -> None:
        if not (volume > 0) or math.isnan(volume):
            raise Reject(C.TRADE_RETCODE_INVALID_VOLUME)
        if volume < spec["volume_min"] - 1e-9 or volume > spec["volume_max"] + 1e-9:
            raise Reject(C.TRADE_RETCODE_INVALID_VOLUME)
        if not _on_grid(volume, spec["volume_step"]):
            raise Reject(C.TRADE_RETCODE_INVALID_VOLUME)

    @staticmethod
    def _check_filling(spec: dict, order_type: int, filling: int) -> None:
        flags = spec["filling_mode"]
        exe = spec["trade_exemode"]
        if order_type in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):
            if exe in (C.SYMBOL_TRADE_EXECUTION_REQUEST, C.SYMBOL_TRADE_EXECUTION_INSTANT):
                ok = filling in (C.ORDER_FILLING_FOK, C.ORDER_FILLING_IOC, C.ORDER_FILLING_RETURN)
            elif filling == C.ORDER_FILLING_FOK:
                ok = bool(flags & C.SYMBOL_FILLING_FOK)
            elif filling == C.ORDER_FILLING_IOC:
                ok = bool(flags & C.SYMBOL_FILLING_IOC)
            elif filling == C.ORDER_FILLING_RETURN:
                ok = exe == C.SYMBOL_TRADE_EXECUTION_EXCHANGE or bool(spec.get("market_return", False))
            else:
                ok = False
        else:
            if filling == C.ORDER_FILLING_RETURN:
                ok = True
            elif filling == C.ORDER_FILLING_FOK:
                ok = bool(flags & C.SYMBOL_FILLING_FOK)
            elif filling == C.ORDER_FILLING_IOC:
                ok = bool(flags & C.SYMBOL_FILLING_IOC)
            elif filling == C.ORDER_FILLING_BOC:
                ok = bool(flags & C.SYMBOL_FILLING_BOC) and order_type in (
                    C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_SELL_LIMIT, C.ORDER_TYPE_BUY_STOP_LIMIT,
                    C.ORDER_TYPE_SELL_STOP_LIMIT)
            else:
                ok = False
        if not ok:
            raise Reject(C.TRADE_RETCODE_INVALID_FILL)

    @staticmethod
    def _check_order_mode(spec: dict, order_type: int, sl: float, tp: float) -> None:
        mode = spec["order_mode"]
        bit = _ORDER_MODE_BIT.get(order_type)
        if bit is None or not (mode & bit):
            raise Reject(C.TRADE_RETCODE_INVALID_ORDER)
        if (sl and not (mode & C.SYMBOL_ORDER_SL)) or (tp and not (mode & C.SYMBOL_ORDER_TP)):
            raise Reject(C.TRADE_RETCODE_INVALID_ORDER)

    @staticmethod
    def _check_stops_position(spec: dict, pos_type: int, sl: float, tp: float, bid: float, ask: float) -> None:
        """SL/TP of a position against the current close price and the stops level (10016)."""
        point, level = spec["point"], spec["trade_stops_level"]
        for value in (sl, tp):
            if value and (value < 0 or not _on_grid(value, spec["trade_tick_size"])):
                raise Reject(C.TRADE_RETCODE_INVALID_STOPS)
        if pos_type == C.POSITION_TYPE_BUY:
            dists = [(_points(bid - sl, point)) if sl else None, (_points(tp - bid, point)) if tp else None]
        else:
            dists = [(_points(sl - ask, point)) if sl else None, (_points(ask - tp, point)) if tp else None]
        for d in dists:
            if d is not None and (d < level or d <= 0):
                raise Reject(C.TRADE_RETCODE_INVALID_STOPS)

    @staticmethod
    def _check_freeze_position(spec: dict, pos: Position, bid: float, ask: float) -> None:
        level = spec["trade_freeze_level"]
        if level <= 0:
            return
        point = spec["point"]
        if pos.type == C.POSITION_TYPE_BUY:
            dists = [_points(bid - pos.sl, point) if pos.sl else None, _points(pos.tp - bid, point) if pos.tp else None]
        else:
            dists = [_points(pos.sl - ask, point) if pos.sl else None, _points(ask - pos.tp, point) if pos.tp else None]
        for d in dists:
            if d is not None and d <= level:
                raise Reject(C.TRADE_RETCODE_FROZEN)

    @staticmethod
    def _check_pending_prices(spec: dict, order_type: int, price: float, stoplimit: float, sl: float, tp: float,
                              bid: float, ask: float) -> None:
        point, level, ts = spec["point"], spec["trade_stops_level"], spec["trade_tick_size"]
        if not (price > 0) or not _on_grid(price, ts):
            raise Reject(C.TRADE_RETCODE_INVALID_PRICE)
        if order_type == C.ORDER_TYPE_BUY_LIMIT:
            d = _points(ask - price, point)
        elif order_type == C.ORDER_TYPE_SELL_LIMIT:
            d = _points(price - bid, point)
        elif order_type in (C.ORDER_TYPE_BUY_STOP, C.ORDER_TYPE_BUY_STOP_LIMIT):
            d = _points(price - ask, point)
        else:
            d = _points(bid - price, point)
        if d < level or d <= 0:
            raise Reject(C.TRADE_RETCODE_INVALID_PRICE)
        open_price = price
        if order_type in (C.ORDER_TYPE_BUY_STOP_LIMIT, C.ORDER_TYPE_SELL_STOP_LIMIT):
            if not (stoplimit > 0) or not _on_grid(stoplimit, ts):
                raise Reject(C.TRADE_RETCODE_INVALID_PRICE)
            if order_type == C.ORDER_TYPE_BUY_STOP_LIMIT and not stoplimit < price:
                raise Reject(C.TRADE_RETCODE_INVALID_PRICE)
            if order_type == C.ORDER_TYPE_SELL_STOP_LIMIT and not stoplimit > price:
                raise Reject(C.TRADE_RETCODE_INVALID_PRICE)
            open_price = stoplimit
        for value in (sl, tp):
            if value and (value < 0 or not _on_grid(value, ts)):
                raise Reject(C.TRADE_RETCODE_INVALID_STOPS)
        if is_buy(order_type):
            dists = [_points(open_price - sl, point) if sl else None, _points(tp - open_price, point) if tp else None]
        else:
            dists = [_points(sl - open_price, point) if sl else None, _points(open_price - tp, point) if tp else None]
        for dd in dists:
            if dd is not None and (dd < level or dd <= 0):
                raise Reject(C.TRADE_RETCODE_INVALID_STOPS)

    @staticmethod
    def _check_freeze_order(spec: dict, order: Order, bid: float, ask: float) -> None:
        level = spec["trade_freeze_level"]
        if level <= 0:
            return
        point = spec["point"]
        t, p = order.type, order.price_open
        if t == C.ORDER_TYPE_BUY_LIMIT:
            d = _points(ask - p, point)
        elif t == C.ORDER_TYPE_SELL_LIMIT:
            d = _points(p - bid, point)
        elif t in (C.ORDER_TYPE_BUY_STOP, C.ORDER_TYPE_BUY_STOP_LIMIT):
            d = _points(p - ask, point)
        else:
            d = _points(bid - p, point)
        if d <= level:
            raise Reject(C.TRADE_RETCODE_FROZEN)

    def _expiry(self, spec: dict, type_time: int, expiration: int) -> int:
        """Validated expiry instant (broker seconds, 0 = none) for a pending order, else 10022."""
        bit = _EXPIRATION_BIT.get(type_time)
        if bit is None or not (spec["expiration_mode"] & bit):
            raise Reject(C.TRADE_RETCODE_INVALID_EXPIRATION)
        now_s = self.now_ms() // 1000
        if type_time == C.ORDER_TIME_GTC:
            return 0
        if type_time == C.ORDER_TIME_DAY:
            return (now_s // 86400 + 1) * 86400
        if type_time == C.ORDER_TIME_SPECIFIED:
            if expiration <= now_s:
                raise Reject(C.TRADE_RETCODE_INVALID_EXPIRATION)
            return int(expiration)
        if expiration <= 0 or expiration // 86400 < now_s // 86400:
            raise Reject(C.TRADE_RETCODE_INVALID_EXPIRATION)
        return (expiration // 86400 + 1) * 86400

    def _check_direction(self, spec: dict, opens_buy: bool, opens_sell: bool) -> None:
        mode = spec["trade_mode"]
        if mode == C.SYMBOL_TRADE_MODE_CLOSEONLY and (opens_buy or opens_sell):
            raise Reject(C.TRADE_RETCODE_CLOSE_ONLY)
        if mode == C.SYMBOL_TRADE_MODE_LONGONLY and opens_sell:
            raise Reject(C.TRADE_RETCODE_LONG_ONLY)
        if mode == C.SYMBOL_TRADE_MODE_SHORTONLY and opens_buy:
            raise Reject(C.TRADE_RETCODE_SHORT_ONLY)

    def _check_volume_limit(self, acct: dict, spec: dict, buy: bool, added: float) -> None:
        limit = spec["volume_limit"]
        if limit <= 0 or added <= 0:
            return
        login, name = acct["login"], spec["name"]
        total = added
        want = C.POSITION_TYPE_BUY if buy else C.POSITION_TYPE_SELL
        for pos in self._pos_by_login.get(login, {}).values():
            if pos.symbol == name and pos.type == want:
                total += pos.volume
        for order in self._orders_by_login.get(login, {}).values():
            if order.symbol == name and is_buy(order.type) == buy:
                total += order.volume_current
        if total > limit + 1e-9:
            raise Reject(C.TRADE_RETCODE_LIMIT_VOLUME)

    @staticmethod
    def _fillable(spec: dict, volume: float) -> float:
        """The volume the market book can fill now: all of it unless the symbol has a `book_volume`, then the
        visible depth (ticks_bookdepth levels of book_volume lots), on the volume step."""
        per_level = spec["book_volume"]
        if per_level <= 0:
            return volume
        depth = per_level * max(1, int(spec["ticks_bookdepth"] or 1))
        if volume <= depth + 1e-9:
            return volume
        step = spec["volume_step"] or 0.01
        return round(math.floor(depth / step + 1e-9) * step, 8)

    def _close_orders_volume(self, login: int, identifier: int) -> float:
        return sum(o.volume_current for o in self._orders_by_login.get(login, {}).values()
                   if o.position_id == identifier)

    def _check_close_orders(self, acct: dict, target: Position, volume: float) -> None:
        """Hedging: close orders of a position (pending orders with `position`) may not exceed its volume (10039)."""
        waiting = self._close_orders_volume(acct["login"], target.identifier)
        if waiting > 0 and waiting + volume > target.volume + 1e-9:
            raise Reject(C.TRADE_RETCODE_CLOSE_ORDER_EXIST)

    def _check_fifo(self, acct: dict, target: Position) -> None:
        """ACCOUNT_FIFO_CLOSE: only the oldest position of a symbol may be closed (10045)."""
        if not acct.get("fifo_close"):
            return
        for p in self._pos_by_login.get(acct["login"], {}).values():
            if p.symbol == target.symbol and (p.time_msc, p.ticket) < (target.time_msc, target.ticket):
                raise Reject(C.TRADE_RETCODE_FIFO_CLOSE)

    def _check_positions_limit(self, acct: dict, symbol: str, pending: bool) -> None:
        """The account's limit of open positions (10040). Hedging: pending orders count with positions; netting:
        a request that could add a position on a symbol without one is refused once the limit is reached."""
        limit = int(acct.get("limit_positions", 0) or 0)
        if limit <= 0:
            return
        login = acct["login"]
        positions = self._pos_by_login.get(login, {})
        orders = self._orders_by_login.get(login, {}).values()
        if acct["margin_mode"] == C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING:
            count = len(positions) + sum(1 for o in orders if not o.position_id)
        else:
            held = {p.symbol for p in positions.values()}
            if symbol in held:
                return
            count = len(held | {o.symbol for o in orders})
            if pending and symbol in {o.symbol for o in orders}:
                return
        if count >= limit:
            raise Reject(C.TRADE_RETCODE_LIMIT_POSITIONS)

    def _find_position(self, acct: dict, ticket: int) -> Position:
        pos = self.positions.get(ticket)
        if pos is None or pos.login != acct["login"]:
            # netting reversal changes the ticket but keeps the identifier
            for p in self._pos_by_login.get(acct["login"], {}).values():
                if p.identifier == ticket:
                    return p
            if ticket in self.closed_ids:
                raise Reject(C.TRADE_RETCODE_POSITION_CLOSED)
            raise Reject(C.TRADE_RETCODE_INVALID)
        return pos

    # ================================================================ TRADE_ACTION_DEAL
    def _do_deal(self, acct: dict, req: dict, check: bool):
        otype = req.get("type", 0)
        if otype not in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):
            raise Reject(C.TRADE_RETCODE_INVALID)
        login = acct["login"]
        hedging = acct["margin_mode"] == C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
        target = None
        if req.get("position"):
            target = self._find_position(acct, req["position"])
            if req.get("symbol") and req["symbol"] != target.symbol:
                raise Reject(C.TRADE_RETCODE_INVALID)
        spec = self._symbol_for(req, target.symbol if target else None)
        self._check_permissions(acct, spec)
        tick = self._check_market(spec)
        volume = float(req.get("volume", 0.0))
        self._check_volume(spec, volume)
        self._check_order_mode(spec, otype, 0.0, 0.0)
        self._check_filling(spec, otype, req.get("type_filling", 0))
        buy = otype == C.ORDER_TYPE_BUY
        bid, ask = tick[1], tick[2]
        price = ask if buy else bid
        if not hedging and target is None:
            target = self._netting_position(login, spec["name"])
        # what the deal does to positions
        close_vol = 0.0
        open_vol = volume
        if target is not None:
            if (target.type == C.POSITION_TYPE_BUY) == buy:
                if hedging:
                    raise Reject(C.TRADE_RETCODE_INVALID)
                close_vol = 0.0          # netting increase
            else:
                if hedging and volume > target.volume + 1e-9:
                    raise Reject(C.TRADE_RETCODE_INVALID_CLOSE_VOLUME)
                close_vol = min(volume, target.volume)
                open_vol = round(volume - close_vol, 8)
                if hedging:
                    self._check_close_orders(acct, target, volume)
                    self._check_fifo(acct, target)
        self._check_direction(spec, buy and open_vol > 0, (not buy) and open_vol > 0)
        if open_vol > 0 and (target is None or (not hedging and close_vol > 0)):
            self._check_positions_limit(acct, spec["name"], pending=False)
        sl, tp = float(req.get("sl", 0.0)), float(req.get("tp", 0.0))
        if open_vol > 0 and (sl or tp):
            if not (spec["order_mode"] & C.SYMBOL_ORDER_SL) and sl or not (spec["order_mode"] & C.SYMBOL_ORDER_TP) and tp:
                raise Reject(C.TRADE_RETCODE_INVALID_ORDER)
            self._check_stops_position(spec, C.POSITION_TYPE_BUY if buy else C.POSITION_TYPE_SELL, sl, tp, bid, ask)
        if close_vol > 0:
            self._check_freeze_position(spec, target, bid, ask)
        self._check_volume_limit(acct, spec, buy, open_vol)
        # margin after the deal
        ptype = C.POSITION_TYPE_BUY if buy else C.POSITION_TYPE_SELL
        changes = []
        realized = 0.0
        if close_vol > 0:
            share = close_vol / target.volume
            changes.append((target.type, -close_vol, target.price_open, -target.margin * share))
            realized = self._deal_profit(acct, spec, target.type, target.price_open, price, close_vol)
        new_margin = self._margin(acct, spec, open_vol, price) if open_vol > 0 else 0.0
        if open_vol > 0:
            changes.append((ptype, open_vol, price, new_margin))
        after = self._account_figures(login, (spec["name"], self._hypothetical_agg(login, spec["name"], changes)),
                                      realized)
        if open_vol > 0 and after["margin_free"] < 0:
            before = self._account_figures(login)
            if after["margin"] > before["margin"] + 1e-9:
                self._last_check_figures = after
                raise Reject(C.TRADE_RETCODE_NO_MONEY)
        if check:
            return after
        # instant / request execution: the requested price and the deviation
        exe = spec["trade_exemode"]
        if exe in (C.SYMBOL_TRADE_EXECUTION_INSTANT, C.SYMBOL_TRADE_EXECUTION_REQUEST):
            req_price = float(req.get("price", 0.0))
            if not (req_price > 0):
                raise Reject(C.TRADE_RETCODE_INVALID_PRICE)
            dev_points = abs(_points(req_price - price, spec["point"]))
            if dev_points > max(0, int(req.get("deviation", 0))):
                raise Reject(C.TRADE_RETCODE_REQUOTE if exe == C.SYMBOL_TRADE_EXECUTION_INSTANT
                             else C.TRADE_RETCODE_PRICE_CHANGED)
        if self.fault_requote > 0:
            self.fault_requote -= 1
            raise Reject(C.TRADE_RETCODE_REQUOTE)
        # the market book's depth: FOK needs all of it, IOC fills what is there, RETURN keeps the rest as an order
        filling = req.get("type_filling", 0)
        filled = self._fillable(spec, volume)
        if filled < volume - 1e-9 and (filling == C.ORDER_FILLING_FOK or filled <= 0
                                       or exe in (C.SYMBOL_TRADE_EXECUTION_INSTANT, C.SYMBOL_TRADE_EXECUTION_REQUEST)):
            raise Reject(C.TRADE_RETCODE_REJECT)
        rest = round(volume - filled, 8)
        if rest > 0:
            close_vol = min(close_vol, filled)
            open_vol = round(filled - close_vol, 8)
        now = self.now_ms()
        order = Order(ticket=self._new_order_ticket(), time_setup=now // 1000, time_setup_msc=now,
                      time_done=now // 1000, time_done_msc=now, type=otype, type_filling=filling,
                      type_time=req.get("type_time", 0), state=C.ORDER_STATE_FILLED, magic=req.get("magic", 0),
                      reason=C.ORDER_REASON_EXPERT, volume_initial=volume, volume_current=0.0, price_open=price,
                      sl=sl, tp=tp, price_current=price, symbol=spec["name"], comment=req.get("comment", ""),
                      login=login)
        if rest > 0:
            order.volume_current = rest
            order.state = C.ORDER_STATE_CANCELED if filling == C.ORDER_FILLING_IOC else C.ORDER_STATE_PARTIAL
        deal = self._execute(acct, spec, order, buy, filled, price, target, close_vol, open_vol, sl, tp,
                             C.DEAL_REASON_EXPERT, order.comment, order.magic, now)
        self._after_trade(login)
        retcode = C.TRADE_RETCODE_DONE_PARTIAL if rest > 0 else C.TRADE_RETCODE_DONE
        return (retcode, deal.ticket, order.ticket, filled, price, bid, ask)

    def _execute(self, acct: dict, spec: dict, order: Order, buy: bool, volume: float, price: float,
                 target: Position | None, close_vol: float, open_vol: float, sl: float, tp: float,
                 reason: int, comment: str, magic: int, now: int) -> Deal:
        """Apply a filled order: one deal, and the position opened, increased, reduced, closed or reversed."""
        login = acct["login"]
        ptype = C.POSITION_TYPE_BUY if buy else C.POSITION_TYPE_SELL
        deal = Deal(ticket=self._new_deal_ticket(), order=order.ticket, time=now // 1000, time_msc=now,
                    type=C.DEAL_TYPE_BUY if buy else C.DEAL_TYPE_SELL, magic=magic, reason=reason, volume=volume,
                    price=price, symbol=spec["name"], comment=comment, login=login)
        digits = acct["currency_digits"]
        deal.commission = round(self._commission(spec, open_vol, True) + self._commission(spec, close_vol, False), digits)
        if deal.commission:
            acct["balance"] = round(acct["balance"] + deal.commission, digits)
            self._log("A", self._account_dump(acct))
        if target is None:
            pos = Position(ticket=order.ticket, time=now // 1000, time_msc=now, time_update=now // 1000,
                           time_update_msc=now, type=ptype, magic=magic, identifier=order.ticket,
                           reason=C.POSITION_REASON_EXPERT if reason == C.DEAL_REASON_EXPERT else reason,
                           volume=volume, price_open=price, sl=sl, tp=tp, price_current=price,
                           symbol=spec["name"], comment=comment, login=login,
                           margin=self._margin(acct, spec, volume, price))
            deal.entry = C.DEAL_ENTRY_IN
            deal.position_id = pos.identifier
            order.position_id = pos.identifier
            self._pos_insert(pos)
        elif close_vol <= 0:
            # netting: same direction, the position grows at the volume-weighted price
            self._pos_begin(target)
            total = target.volume + volume
            target.price_open = round((target.price_open * target.volume + price * volume) / total, spec["digits"] + 3)
            target.volume = round(total, 8)
            target.margin = self._margin(acct, spec, target.volume, target.price_open)
            if sl or tp:
                target.sl, target.tp = sl, tp
            target.time_update, target.time_update_msc = now // 1000, now
            target.price_current = price
            self._pos_end(target)
            deal.entry = C.DEAL_ENTRY_IN
            deal.position_id = target.identifier
            order.position_id = target.identifier
        else:
            profit = self._deal_profit(acct, spec, target.type, target.price_open, price, close_vol)
            deal.profit = profit
            deal.swap = self._swap_share(target, close_vol, digits)
            deal.position_id = target.identifier
            order.position_id = target.identifier
            acct["balance"] = round(acct["balance"] + profit + deal.swap, digits)
            self._log("A", self._account_dump(acct))
            if close_vol < target.volume - 1e-9:
                deal.entry = C.DEAL_ENTRY_OUT
                self._pos_begin(target)
                share = close_vol / target.volume
                target.margin -= target.margin * share
                target.swap = round(target.swap - deal.swap, digits)
                target.volume = round(target.volume - close_vol, 8)
                target.time_update, target.time_update_msc = now // 1000, now
                self._pos_end(target)
            elif open_vol <= 0:
                deal.entry = C.DEAL_ENTRY_OUT
                self._pos_delete(target)
            else:
                # netting reversal: same identifier, the ticket becomes this order's ticket
                deal.entry = C.DEAL_ENTRY_INOUT
                identifier = target.identifier
                self._pos_delete(target)
                self.closed_ids.discard(identifier)
                pos = Position(ticket=order.ticket, time=now // 1000, time_msc=now, time_update=now // 1000,
                               time_update_msc=now, type=ptype, magic=magic, identifier=identifier,
                               reason=C.POSITION_REASON_EXPERT if reason == C.DEAL_REASON_EXPERT else reason,
                               volume=open_vol, price_open=price, sl=sl, tp=tp, price_current=price,
                               symbol=spec["name"], comment=comment, login=login,
                               margin=self._margin(acct, spec, open_vol, price))
                self._pos_insert(pos)
        if order.state == C.ORDER_STATE_PARTIAL:
            if order.ticket in self.orders:
                self._log("O", order.dump())
            else:
                self._order_add(order)          # the rest of a RETURN market order waits for liquidity
        else:
            self._order_to_history(order)
        self._deal_add(deal)
        return deal

    # ================================================================ TRADE_ACTION_PENDING
    def _do_pending(self, acct: dict, req: dict, check: bool):
        otype = req.get("type", 0)
        if otype not in _PENDING_TYPES:
            raise Reject(C.TRADE_RETCODE_INVALID_ORDER)
        spec = self._symbol_for(req)
        self._check_permissions(acct, spec)
        tick = self._check_market(spec)
        volume = float(req.get("volume", 0.0))
        self._check_volume(spec, volume)
        price, stoplimit = float(req.get("price", 0.0)), float(req.get("stoplimit", 0.0))
        sl, tp = float(req.get("sl", 0.0)), float(req.get("tp", 0.0))
        self._check_order_mode(spec, otype, sl, tp)
        self._check_filling(spec, otype, req.get("type_filling", 0))
        expire_at = self._expiry(spec, req.get("type_time", 0), req.get("expiration", 0))
        buy = is_buy(otype)
        closes = False
        if req.get("position") and acct["margin_mode"] == C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING:
            target = self._find_position(acct, req["position"])
            closes = (target.type == C.POSITION_TYPE_BUY) != buy
            if closes:
                self._check_close_orders(acct, target, volume)
                self._check_fifo(acct, target)
        self._check_direction(spec, buy and not closes, (not buy) and not closes)
        if not closes:
            self._check_positions_limit(acct, spec["name"], pending=True)
        # exchange execution: a stop order whose price is already reached is accepted and activated at once
        reached = (spec["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_EXCHANGE and price > 0
                   and ((otype == C.ORDER_TYPE_BUY_STOP and tick[2] >= price)
                        or (otype == C.ORDER_TYPE_SELL_STOP and tick[1] <= price)))
        if reached:
            if not _on_grid(price, spec["trade_tick_size"]):
                raise Reject(C.TRADE_RETCODE_INVALID_PRICE)
        else:
            self._check_pending_prices(spec, otype, price, stoplimit, sl, tp, tick[1], tick[2])
        limit = acct["limit_orders"]
        if limit > 0 and len(self._orders_by_login.get(acct["login"], {})) >= limit:
            raise Reject(C.TRADE_RETCODE_LIMIT_ORDERS)
        self._check_volume_limit(acct, spec, buy, volume)
        if check:
            return self._account_figures(acct["login"])
        now = self.now_ms()
        type_time = req.get("type_time", 0)
        order = Order(ticket=self._new_order_ticket(), time_setup=now // 1000, time_setup_msc=now,
                      time_expiration=(req.get("expiration", 0) if type_time == C.ORDER_TIME_SPECIFIED
                                       else expire_at if type_time == C.ORDER_TIME_SPECIFIED_DAY else 0),
                      type=otype, type_time=type_time, type_filling=req.get("type_filling", 0),
                      state=C.ORDER_STATE_PLACED, magic=req.get("magic", 0), reason=C.ORDER_REASON_EXPERT,
                      position_id=req.get("position", 0) if closes else 0,
                      volume_initial=volume, volume_current=volume, price_open=price, sl=sl, tp=tp,
                      price_current=tick[2] if buy else tick[1], price_stoplimit=stoplimit, symbol=spec["name"],
                      comment=req.get("comment", ""), login=acct["login"], expire_at=expire_at)
        self._order_add(order)
        if reached:
            if not self._trigger_order(order, tick[1], tick[2], now):
                # the activation needs margin the account does not have: the order is canceled
                return (C.TRADE_RETCODE_REJECT_CANCEL, 0, order.ticket, volume, 0.0, tick[1], tick[2])
            deal = self._deals_by_login[acct["login"]][-1]
            self._after_trade(acct["login"])
            return (C.TRADE_RETCODE_DONE, deal.ticket, order.ticket, volume, deal.price, tick[1], tick[2])
        return (C.TRADE_RETCODE_DONE, 0, order.ticket, volume, 0.0, 0.0, 0.0)

    # ================================================================ TRADE_ACTION_SLTP
    def _do_sltp(self, acct: dict, req: dict, check: bool):
        login = acct["login"]
        if req.get("position"):
            pos = self._find_position(acct, req["position"])
            if req.get("symbol") and req["symbol"] != pos.symbol:
                raise Reject(C.TRADE_RETCODE_INVALID)
        else:
            name = req.get("symbol")
            cands = [p for p in self._pos_by_login.get(login, {}).values() if p.symbol == name]
            if len(cands) != 1:
                raise Reject(C.TRADE_RETCODE_INVALID)
            pos = cands[0]
        spec = self.symbols[pos.symbol]
        self._check_permissions(acct, spec)
        tick = self._check_market(spec)
        sl, tp = float(req.get("sl", 0.0)), float(req.get("tp", 0.0))
        if sl == pos.sl and tp == pos.tp:
            raise Reject(C.TRADE_RETCODE_NO_CHANGES)
        if (sl and not (spec["order_mode"] & C.SYMBOL_ORDER_SL)) or (tp and not (spec["order_mode"] & C.SYMBOL_ORDER_TP)):
            raise Reject(C.TRADE_RETCODE_INVALID_ORDER)
        self._check_stops_position(spec, pos.type, sl, tp, tick[1], tick[2])
        self._check_freeze_position(spec, pos, tick[1], tick[2])
        if check:
            return self._account_figures(login)
        now = self.now_ms()
        self._pos_begin(pos)
        pos.sl, pos.tp = sl, tp
        pos.time_update, pos.time_update_msc = now // 1000, now
        self._pos_end(pos)
        return (C.TRADE_RETCODE_DONE, 0, 0, 0.0, 0.0, tick[1], tick[2])

    # ================================================================ TRADE_ACTION_MODIFY / REMOVE
    def _active_order(self, acct: dict, ticket: int) -> Order:
        order = self.orders.get(ticket)
        if order is None or order.login != acct["login"]:
            raise Reject(C.TRADE_RETCODE_INVALID)
        return order

    def _do_modify(self, acct: dict, req: dict, check: bool):
        order = self._active_order(acct, req.get("order", 0))
        spec = self.symbols[order.symbol]
        self._check_permissions(acct, spec)
        tick = self._check_market(spec)
        price = float(req.get("price", 0.0))
        sl, tp = float(req.get("sl", 0.0)), float(req.get("tp", 0.0))
        stoplimit = float(req.get("stoplimit", 0.0))
        if order.type not in (C.ORDER_TYPE_BUY_STOP_LIMIT, C.ORDER_TYPE_SELL_STOP_LIMIT):
            stoplimit = order.price_stoplimit
        type_time = req.get("type_time", 0)
        expiration = req.get("expiration", 0)
        same_exp = type_time == order.type_time and (
            type_time in (C.ORDER_TIME_GTC, C.ORDER_TIME_DAY) or expiration == order.time_expiration
            or (type_time == C.ORDER_TIME_SPECIFIED_DAY and expiration // 86400 + 1 == order.expire_at // 86400))
        if (price == order.price_open and sl == order.sl and tp == order.tp and stoplimit == order.price_stoplimit
                and same_exp):
            raise Reject(C.TRADE_RETCODE_NO_CHANGES)
        self._check_freeze_order(spec, order, tick[1], tick[2])
        if (sl and not (spec["order_mode"] & C.SYMBOL_ORDER_SL)) or (tp and not (spec["order_mode"] & C.SYMBOL_ORDER_TP)):
            raise Reject(C.TRADE_RETCODE_INVALID_ORDER)
        self._check_pending_prices(spec, order.type, price, stoplimit, sl, tp, tick[1], tick[2])
        expire_at = order.expire_at if same_exp else self._expiry(spec, type_time, expiration)
        if check:
            return self._account_figures(acct["login"])
        order.price_open, order.sl, order.tp, order.price_stoplimit = price, sl, tp, stoplimit
        if not same_exp:
            order.type_time = type_time
            order.expire_at = expire_at
            order.time_expiration = (expiration if type_time == C.ORDER_TIME_SPECIFIED
                                     else expire_at if type_time == C.ORDER_TIME_SPECIFIED_DAY else 0)
        self._log("O", order.dump())
        return (C.TRADE_RETCODE_DONE, 0, order.ticket, order.volume_current, 0.0, 0.0, 0.0)

    def _do_remove(self, acct: dict, req: dict, check: bool):
        order = self._active_order(acct, req.get("order", 0))
        spec = self.symbols[order.symbol]
        self._check_permissions(acct, spec)
        tick = self._check_market(spec)
        self._check_freeze_order(spec, order, tick[1], tick[2])
        if check:
            return self._account_figures(acct["login"])
        now = self.now_ms()
        order.state = C.ORDER_STATE_CANCELED
        order.time_done, order.time_done_msc = now // 1000, now
        order.price_current = tick[2] if is_buy(order.type) else tick[1]
        self._order_to_history(order)
        return (C.TRADE_RETCODE_DONE, 0, order.ticket, order.volume_current, 0.0, 0.0, 0.0)

    # ================================================================ TRADE_ACTION_CLOSE_BY
    def _do_close_by(self, acct: dict, req: dict, check: bool):
        if acct["margin_mode"] != C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING:
            raise Reject(C.TRADE_RETCODE_INVALID)
        if not req.get("position") or not req.get("position_by"):
            raise Reject(C.TRADE_RETCODE_INVALID)
        pos = self._find_position(acct, req["position"])
        by = self._find_position(acct, req["position_by"])
        if pos.ticket == by.ticket or pos.symbol != by.symbol or pos.type == by.type:
            raise Reject(C.TRADE_RETCODE_INVALID)
        if req.get("symbol") and req["symbol"] != pos.symbol:
            raise Reject(C.TRADE_RETCODE_INVALID)
        spec = self.symbols[pos.symbol]
        self._check_permissions(acct, spec)
        if not (spec["order_mode"] & C.SYMBOL_ORDER_CLOSEBY):
            raise Reject(C.TRADE_RETCODE_INVALID_ORDER)
        tick = self._check_market(spec)
        self._check_freeze_position(spec, pos, tick[1], tick[2])
        self._check_freeze_position(spec, by, tick[1], tick[2])
        volume = min(pos.volume, by.volume)
        price = by.price_open
        profit = self._deal_profit(acct, spec, pos.type, pos.price_open, price, volume)
        if check:
            return self._account_figures(acct["login"])
        now = self.now_ms()
        login = acct["login"]
        comment = f"#{pos.ticket} by #{by.ticket}"
        order = Order(ticket=self._new_order_ticket(), time_setup=now // 1000, time_setup_msc=now,
                      time_done=now // 1000, time_done_msc=now, type=C.ORDER_TYPE_CLOSE_BY,
                      type_filling=C.ORDER_FILLING_FOK, state=C.ORDER_STATE_FILLED, magic=req.get("magic", 0),
                      position_id=pos.identifier, position_by_id=by.identifier, reason=C.ORDER_REASON_EXPERT,
                      volume_initial=volume, volume_current=0.0, price_open=price, price_current=price,
                      symbol=pos.symbol, comment=comment, login=login)
        deals = []
        digits = acct["currency_digits"]
        charged = 0.0
        for p, pnl in ((pos, profit), (by, 0.0)):
            deal = Deal(ticket=self._new_deal_ticket(), order=order.ticket, time=now // 1000, time_msc=now,
                        type=C.DEAL_TYPE_SELL if p.type == C.POSITION_TYPE_BUY else C.DEAL_TYPE_BUY,
                        entry=C.DEAL_ENTRY_OUT_BY, magic=req.get("magic", 0), position_id=p.identifier,
                        reason=C.DEAL_REASON_EXPERT, volume=volume, price=price, profit=pnl, symbol=p.symbol,
                        comment=comment, login=login)
            deal.swap = self._swap_share(p, volume, digits)
            deal.commission = round(self._commission(spec, volume, False), digits)
            charged += deal.swap + deal.commission
            deals.append(deal)
            if p.volume <= volume + 1e-9:
                self._pos_delete(p)
            else:
                self._pos_begin(p)
                p.margin -= p.margin * volume / p.volume
                p.swap = round(p.swap - deal.swap, digits)
                p.volume = round(p.volume - volume, 8)
                p.time_update, p.time_update_msc = now // 1000, now
                self._pos_end(p)
        acct["balance"] = round(acct["balance"] + profit + charged, digits)
        self._log("A", self._account_dump(acct))
        self._order_to_history(order)
        for d in deals:
            self._deal_add(d)
        self._after_trade(login)
        return (C.TRADE_RETCODE_DONE, deals[0].ticket, order.ticket, volume, price, tick[1], tick[2])

    def _after_trade(self, login: int) -> None:
        """Hook after a state change (the engine overrides it to track accounts under watch)."""

    # ================================================================ calc functions
    def calc_margin(self, action: int, symbol: str, volume: float, price: float) -> float:
        acct = self.accounts[self.current_login]
        spec = self.symbols[symbol]
        return round(self._margin(acct, spec, float(volume), float(price)), acct["currency_digits"])

    def calc_profit(self, action: int, symbol: str, volume: float, price_open: float, price_close: float) -> float:
        acct = self.accounts[self.current_login]
        spec = self.symbols[symbol]
        ptype = C.POSITION_TYPE_BUY if action == C.ORDER_TYPE_BUY else C.POSITION_TYPE_SELL
        return self._deal_profit(acct, spec, ptype, float(price_open), float(price_close), float(volume))

    # ================================================================ server-side events
    def _process_symbol_ticks(self, name: str, ticks: np.ndarray) -> bool:
        """Pending triggers and SL/TP over new ticks of one symbol (oldest first). True if anything fired."""
        fired = False
        start = 0
        n = len(ticks)
        guard = 0
        market_fills: dict[int, int] = {}
        while start < n and guard < 10000:
            guard += 1
            bids, asks = ticks["bid"][start:], ticks["ask"][start:]
            best_i, best_kind, best_obj = None, None, None
            for ticket in list(self._watch_orders.get(name, ())):
                order = self.orders.get(ticket)
                if order is None:
                    continue
                if ticket in market_fills:      # a waiting market order fills at most once per tick
                    i = market_fills[ticket] + 1 - start
                    i = i if i < n - start else None
                else:
                    i = self._first_trigger_order(order, bids, asks)
                if i is not None and (best_i is None or i < best_i):
                    best_i, best_kind, best_obj = i, "order", order
            for ticket in list(self._watch_pos.get(name, ())):
                pos = self.positions.get(ticket)
                if pos is None:
                    continue
                i, kind = self._first_trigger_position(pos, bids, asks)
                if i is not None and (best_i is None or i < best_i):
                    best_i, best_kind, best_obj = i, kind, pos
            if best_i is None:
                break
            tick = ticks[start + best_i]
            t_ms = int(tick["time_msc"])
            if best_kind == "order":
                if best_obj.type in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):
                    market_fills[best_obj.ticket] = start + best_i
                self._trigger_order(best_obj, float(tick["bid"]), float(tick["ask"]), t_ms)
            else:
                self._close_by_stop(best_obj, best_kind, float(tick["bid"]), float(tick["ask"]), t_ms)
            fired = True
            start += best_i
        return fired

    @staticmethod
    def _first_trigger_order(order: Order, bids: np.ndarray, asks: np.ndarray) -> int | None:
        t, p = order.type, order.price_open
        if t in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL):
            return 0                            # a market order waiting for liquidity: any new tick
        if t == C.ORDER_TYPE_BUY_LIMIT:
            cond = asks <= p
        elif t == C.ORDER_TYPE_SELL_LIMIT:
            cond = bids >= p
        elif t in (C.ORDER_TYPE_BUY_STOP, C.ORDER_TYPE_BUY_STOP_LIMIT):
            cond = asks >= p
        else:
            cond = bids <= p
        if len(cond) == 1:
            return 0 if cond[0] else None
        i = int(np.argmax(cond))
        return i if cond[i] else None

    @staticmethod
    def _first_trigger_position(pos: Position, bids: np.ndarray, asks: np.ndarray) -> tuple[int | None, str]:
        if pos.type == C.POSITION_TYPE_BUY:
            sl_c = bids <= pos.sl if pos.sl else None
            tp_c = bids >= pos.tp if pos.tp else None
        else:
            sl_c = asks >= pos.sl if pos.sl else None
            tp_c = asks <= pos.tp if pos.tp else None
        best, kind = None, "sl"
        for cond, k in ((sl_c, "sl"), (tp_c, "tp")):
            if cond is None:
                continue
            i = int(np.argmax(cond))
            if cond[i] and (best is None or i < best):
                best, kind = i, k
        return best, kind

    def _trigger_order(self, order: Order, bid: float, ask: float, t_ms: int) -> bool:
        """A pending order reached its price: a stop-limit becomes a limit, others are filled.

        False when the activation is rejected (no margin for it) and the order canceled."""
        spec = self.symbols[order.symbol]
        acct = self.accounts[order.login]
        if order.type in (C.ORDER_TYPE_BUY_STOP_LIMIT, C.ORDER_TYPE_SELL_STOP_LIMIT):
            order.type = C.ORDER_TYPE_BUY_LIMIT if order.type == C.ORDER_TYPE_BUY_STOP_LIMIT else C.ORDER_TYPE_SELL_LIMIT
            order.price_open = order.price_stoplimit
            order.price_stoplimit = 0.0
            self._log("O", order.dump())
            return True
        buy = is_buy(order.type)
        market = order.type in (C.ORDER_TYPE_BUY, C.ORDER_TYPE_SELL)
        if order.type in (C.ORDER_TYPE_BUY_LIMIT, C.ORDER_TYPE_SELL_LIMIT):
            price = order.price_open
        else:
            price = ask if buy else bid
        volume = order.volume_current
        rest = 0.0
        if market:
            volume = self._fillable(spec, volume)
            rest = round(order.volume_current - volume, 8)
            if volume <= 0:
                return True
        hedging = acct["margin_mode"] == C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
        target = None
        if order.position_id and hedging:
            target = self.positions.get(order.position_id)
        elif not hedging:
            target = self._netting_position(order.login, order.symbol)
        close_vol, open_vol = 0.0, volume
        if target is not None and (target.type == C.POSITION_TYPE_BUY) != buy:
            close_vol = min(volume, target.volume)
            open_vol = round(volume - close_vol, 8)
        elif target is not None and hedging and not (market and target.identifier == order.ticket):
            target = None
        if open_vol > 0:
            ptype = C.POSITION_TYPE_BUY if buy else C.POSITION_TYPE_SELL
            changes = [(ptype, open_vol, price, self._margin(acct, spec, open_vol, price))]
            after = self._account_figures(order.login, (spec["name"], self._hypothetical_agg(
                order.login, spec["name"], changes)))
            if after["margin_free"] < 0:
                order.state = C.ORDER_STATE_CANCELED
                order.time_done, order.time_done_msc = t_ms // 1000, t_ms
                order.comment = "[no money]"
                self._order_to_history(order)
                return False
        order.state = C.ORDER_STATE_PARTIAL if rest > 0 else C.ORDER_STATE_FILLED
        order.time_done, order.time_done_msc = t_ms // 1000, t_ms
        order.volume_current = rest
        order.price_current = price
        self._execute(acct, spec, order, buy, volume, price, target, close_vol, open_vol, order.sl, order.tp,
                      C.DEAL_REASON_EXPERT, order.comment, order.magic, t_ms)
        return True

    def _close_by_stop(self, pos: Position, kind: str, bid: float, ask: float, t_ms: int,
                       comment: str | None = None) -> None:
        """Close a whole position on the server (SL, TP or stop-out) with its deal reason."""
        spec = self.symbols[pos.symbol]
        acct = self.accounts[pos.login]
        buy = pos.type == C.POSITION_TYPE_SELL
        price = ask if buy else bid
        reason = {"sl": C.DEAL_REASON_SL, "tp": C.DEAL_REASON_TP, "so": C.DEAL_REASON_SO}[kind]
        if comment is None:
            level = pos.sl if kind == "sl" else pos.tp
            comment = f"[{kind} {level:.{spec['digits']}f}]"
        order = Order(ticket=self._new_order_ticket(), time_setup=t_ms // 1000, time_setup_msc=t_ms,
                      time_done=t_ms // 1000, time_done_msc=t_ms,
                      type=C.ORDER_TYPE_BUY if buy else C.ORDER_TYPE_SELL, type_filling=C.ORDER_FILLING_FOK,
                      state=C.ORDER_STATE_FILLED, magic=pos.magic, reason=reason, volume_initial=pos.volume,
                      price_open=price, price_current=price, sl=pos.sl, tp=pos.tp, symbol=pos.symbol,
                      comment=comment, login=pos.login)
        self._execute(acct, spec, order, buy, pos.volume, price, pos, pos.volume, 0.0, 0.0, 0.0, reason,
                      comment, pos.magic, t_ms)

    def _check_stop_out(self, login: int) -> None:
        """Close the most losing positions while the margin level is below margin_so_so."""
        acct = self.accounts[login]
        for _ in range(1000):
            f = self._account_figures(login)
            if f["margin"] <= 0:
                return
            if acct["margin_so_mode"] == C.ACCOUNT_STOPOUT_MODE_PERCENT:
                below = f["margin_level"] < acct["margin_so_so"]
            else:
                below = f["equity"] < acct["margin_so_so"]
            if not below:
                return
            worst, worst_profit = None, None
            for pos in self._pos_by_login.get(login, {}).values():
                _, profit = self._position_profit(pos, self._tick(pos.symbol))
                if worst is None or profit < worst_profit:
                    worst, worst_profit = pos, profit
            if worst is None:
                return
            tick = self._tick(worst.symbol)
            if tick is None:
                return
            comment = f"[so {f['margin_level']:.2f}%/{f['equity']:.2f}/{f['margin']:.2f}]"
            self._close_by_stop(worst, "so", tick[1], tick[2], self.now_ms(), comment=comment)

    def _expire_orders(self, now_ms: int) -> bool:
        """Time-driven server events: the rollovers (swaps) passed, then pending orders that expired."""
        self._run_rollovers(now_ms)
        now_s = now_ms // 1000
        expired = [o for o in self.orders.values() if o.expire_at and o.expire_at <= now_s]
        for order in expired:
            order.state = C.ORDER_STATE_EXPIRED
            order.time_done, order.time_done_msc = order.expire_at, order.expire_at * 1000
            self._order_to_history(order)
        return bool(expired)
