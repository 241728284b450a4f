"""Orders, positions and deals as they live on the trade server.

Each class has the fields of its MT5 structure (same names, same order, see fields.py) plus a
few server-side extras (the owning login, the margin held). `row()` gives the wire value: the
list of field values in fields.json order.
"""

from __future__ import annotations

from operator import attrgetter

from .fields import TRADE_DEAL_FIELDS, TRADE_ORDER_FIELDS, TRADE_POSITION_FIELDS


class Order:
    __slots__ = TRADE_ORDER_FIELDS + ("login", "expire_at")
    _get = attrgetter(*TRADE_ORDER_FIELDS)

    def __init__(self, **kw):
        for name in TRADE_ORDER_FIELDS:
            setattr(self, name, kw.get(name, _ORDER_DEFAULTS[name]))
        self.login = kw.get("login", 0)
        self.expire_at = kw.get("expire_at", 0)

    def row(self) -> list:
        return list(Order._get(self))

    def dump(self) -> list:
        return [self.login, self.expire_at, *Order._get(self)]

    @classmethod
    def load(cls, data: list) -> Order:
        o = cls.__new__(cls)
        o.login, o.expire_at = data[0], data[1]
        for name, value in zip(TRADE_ORDER_FIELDS, data[2:], strict=True):
            setattr(o, name, value)
        return o


class Position:
    __slots__ = TRADE_POSITION_FIELDS + ("login", "margin")
    _get = attrgetter(*TRADE_POSITION_FIELDS)

    def __init__(self, **kw):
        for name in TRADE_POSITION_FIELDS:
            setattr(self, name, kw.get(name, _POSITION_DEFAULTS[name]))
        self.login = kw.get("login", 0)
        self.margin = kw.get("margin", 0.0)

    def row(self) -> list:
        return list(Position._get(self))

    def dump(self) -> list:
        return [self.login, self.margin, *Position._get(self)]

    @classmethod
    def load(cls, data: list) -> Position:
        p = cls.__new__(cls)
        p.login, p.margin = data[0], data[1]
        for name, value in zip(TRADE_POSITION_FIELDS, data[2:], strict=True):
            setattr(p, name, value)
        return p


class Deal:
    __slots__ = TRADE_DEAL_FIELDS + ("login",)
    _get = attrgetter(*TRADE_DEAL_FIELDS)

    def __init__(self, **kw):
        for name in TRADE_DEAL_FIELDS:
            setattr(self, name, kw.get(name, _DEAL_DEFAULTS[name]))
        self.login = kw.get("login", 0)

    def row(self) -> list:
        return list(Deal._get(self))

    def dump(self) -> list:
        return [self.login, *Deal._get(self)]

    @classmethod
    def load(cls, data: list) -> Deal:
        d = cls.__new__(cls)
        d.login = data[0]
        for name, value in zip(TRADE_DEAL_FIELDS, data[1:], strict=True):
            setattr(d, name, value)
        return d


def _defaults(fields: tuple[str, ...], floats: set[str], strings: set[str]) -> dict:
    return {f: (0.0 if f in floats else "" if f in strings else 0) for f in fields}


_ORDER_DEFAULTS = _defaults(
    TRADE_ORDER_FIELDS,
    {"volume_initial", "volume_current", "price_open", "sl", "tp", "price_current", "price_stoplimit"},
    {"symbol", "comment", "external_id"})
_POSITION_DEFAULTS = _defaults(
    TRADE_POSITION_FIELDS,
    {"volume", "price_open", "sl", "tp", "price_current", "swap", "profit"},
    {"symbol", "comment", "external_id"})
_DEAL_DEFAULTS = _defaults(
    TRADE_DEAL_FIELDS,
    {"volume", "price", "commission", "swap", "profit", "fee"},
    {"symbol", "comment", "external_id"})
