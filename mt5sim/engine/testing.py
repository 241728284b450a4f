"""A thin harness over a real Engine for fast rule tests (no process, no socket, no mock).

It speaks the Engine API exactly as the server does and turns the wire lists back into dicts
keyed by fields.json names, so a test reads `res["retcode"]` instead of an index.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

from .engine import Engine
from .fields import (
    ACCOUNT_INFO_FIELDS,
    BOOK_INFO_FIELDS,
    ORDER_CHECK_RESULT_FIELDS,
    ORDER_SEND_RESULT_FIELDS,
    SYMBOL_INFO_FIELDS,
    TERMINAL_INFO_FIELDS,
    TICK_FIELDS,
    TRADE_DEAL_FIELDS,
    TRADE_ORDER_FIELDS,
    TRADE_POSITION_FIELDS,
    TRADE_REQUEST_FIELDS,
)

# A Wednesday, mid-session everywhere (UTC); tests pin the clock here for reproducible prices.
WEDNESDAY_NOON_UTC = calendar.timegm(dt.datetime(2024, 3, 13, 12, 0, 0).timetuple())


class CallFailed(Exception):
    def __init__(self, err: tuple[int, str]):
        super().__init__(err)
        self.err = tuple(err)


def as_dict(fields: tuple[str, ...], row: list) -> dict:
    return dict(zip(fields, row, strict=True))


def request(**fields: Any) -> dict:
    """A zero-filled 17-field TradeRequest dict, as the client sends it."""
    req = {name: ("" if name in ("symbol", "comment") else 0) for name in TRADE_REQUEST_FIELDS}
    for key in ("volume", "price", "stoplimit", "sl", "tp"):
        req[key] = 0.0
    for key, value in fields.items():
        if key not in req:
            raise KeyError(key)
        req[key] = float(value) if key in ("volume", "price", "stoplimit", "sl", "tp") else value
    return req


class Harness:
    """One engine + one attached, initialized session."""

    def __init__(self, config: dict | None = None, state_dir: str | None = None, seed: int = 7,
                 login: int | None = 5550001, password: str = "pw", pin_at: float | None = WEDNESDAY_NOON_UTC,
                 freeze: bool = True, engine: Engine | None = None):
        self.engine = engine or Engine(config, state_dir, seed, background=False)
        self.sess = self.engine.attach()
        if pin_at is not None:
            self.ctl("set_clock", at=pin_at)
        if freeze:
            self.ctl("freeze_feed", frozen=True)
        if login is not None:
            self.call("initialize", path=None, login=login, password=password, server=None, timeout=None,
                      portable=None)

    # ---------------------------------------------------------------- raw access
    def call(self, method: str, **kwargs: Any) -> Any:
        status, value = self.engine.call(self.sess, method, kwargs)
        if status != "ok":
            raise CallFailed(value)
        return value

    def err(self, method: str, **kwargs: Any) -> tuple[int, str]:
        status, value = self.engine.call(self.sess, method, kwargs)
        assert status == "err", f"{method} should fail, got {value!r}"
        return tuple(value)

    def ctl(self, name: str, **kwargs: Any) -> Any:
        status, value = self.engine.control(name, kwargs)
        if status != "ok":
            raise CallFailed(value)
        return value

    def close(self) -> None:
        self.engine.close()

    # ---------------------------------------------------------------- typed views
    def send(self, **fields: Any) -> dict:
        res = as_dict(ORDER_SEND_RESULT_FIELDS, self.call("order_send", request=request(**fields)))
        res["request"] = as_dict(TRADE_REQUEST_FIELDS, res["request"])
        return res

    def check(self, **fields: Any) -> dict:
        res = as_dict(ORDER_CHECK_RESULT_FIELDS, self.call("order_check", request=request(**fields)))
        res["request"] = as_dict(TRADE_REQUEST_FIELDS, res["request"])
        return res

    def buy(self, symbol: str = "EURUSD", volume: float = 0.1, **extra: Any) -> dict:
        return self.send(action=1, symbol=symbol, volume=volume, type=0, **extra)

    def sell(self, symbol: str = "EURUSD", volume: float = 0.1, **extra: Any) -> dict:
        return self.send(action=1, symbol=symbol, volume=volume, type=1, **extra)

    def account(self) -> dict:
        return as_dict(ACCOUNT_INFO_FIELDS, self.call("account_info"))

    def terminal(self) -> dict:
        return as_dict(TERMINAL_INFO_FIELDS, self.call("terminal_info"))

    def symbol(self, name: str) -> dict:
        return as_dict(SYMBOL_INFO_FIELDS, self.call("symbol_info", symbol=name))

    def tick(self, name: str) -> dict:
        return as_dict(TICK_FIELDS, self.call("symbol_info_tick", symbol=name))

    def book(self, name: str) -> list[dict]:
        return [as_dict(BOOK_INFO_FIELDS, r) for r in self.call("market_book_get", symbol=name)]

    def positions(self, symbol: str | None = None, group: str | None = None, ticket: int | None = None) -> list[dict]:
        rows = self.call("positions_get", symbol=symbol, group=group, ticket=ticket)
        return [as_dict(TRADE_POSITION_FIELDS, r) for r in rows]

    def orders(self, symbol: str | None = None, group: str | None = None, ticket: int | None = None) -> list[dict]:
        rows = self.call("orders_get", symbol=symbol, group=group, ticket=ticket)
        return [as_dict(TRADE_ORDER_FIELDS, r) for r in rows]

    def history_orders(self, date_from: int | None = 1, date_to: int | None = 2**31 - 1, group: str | None = None,
                       ticket: int | None = None, position: int | None = None) -> list[dict]:
        if ticket is not None or position is not None:
            date_from = date_to = None
        rows = self.call("history_orders_get", date_from=date_from, date_to=date_to, group=group, ticket=ticket,
                         position=position)
        return [as_dict(TRADE_ORDER_FIELDS, r) for r in rows]

    def deals(self, date_from: int | None = 1, date_to: int | None = 2**31 - 1, group: str | None = None,
              ticket: int | None = None, position: int | None = None) -> list[dict]:
        if ticket is not None or position is not None:
            date_from = date_to = None
        rows = self.call("history_deals_get", date_from=date_from, date_to=date_to, group=group, ticket=ticket,
                         position=position)
        return [as_dict(TRADE_DEAL_FIELDS, r) for r in rows]

    def set_price(self, symbol: str, bid: float, ask: float | None = None) -> dict:
        """A tick at bid (and ask; by default bid + the symbol's configured spread)."""
        spec = self.engine.symbols[symbol]
        if ask is None:
            ask = round(bid + spec["spread_points"] * spec["point"], spec["digits"])
        return as_dict(TICK_FIELDS, self.ctl("set_price", symbol=symbol, bid=bid, ask=ask))

    def now(self) -> int:
        return self.engine.now_ms() // 1000
