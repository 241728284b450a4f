"""Stop levels given in money: the price of a stop loss or take profit worth a sum in the account currency.

A position of ``volume`` lots moves ``volume × tick_value`` account-currency units per tick of
``tick_size``, so a sum ``money`` is ``money / (volume × tick_value)`` ticks away from the open price.
The terminal gives ``trade_tick_value_loss`` and ``trade_tick_value_profit`` apart (they differ when the
profit currency is converted at bid or ask); the loss one prices a stop loss, the profit one a take
profit, ``trade_tick_value`` when the terminal gives 0 for them.

The price lands on the tick grid, rounded on the safe side of the sum asked for: a stop loss toward the
open price (the loss at it never exceeds ``slMoney``), a take profit away from it (the profit at it is at
least ``tpMoney``). Both within one tick of the sum. Decimal arithmetic: the grid is exact.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from bridge_project.errors import ValidationFailed
from terminals import constants as C

# A float sum or price that lands within this fraction of a tick of a grid line is on it (the float's
# last bits are noise, never a reason to give a tick more or less).
GRID_SLACK = Decimal("1e-9")
LEVELS = {"sl": "slMoney", "tp": "tpMoney"}
MAX_PRICE = 1e12  # serializers.MAX_PRICE: the largest price a body may carry


def _dec(value: Any) -> Decimal:
    return Decimal(repr(float(value)))


def _tick_value(info: dict[str, Any], level: str) -> Decimal:
    own = info.get("trade_tick_value_loss" if level == "sl" else "trade_tick_value_profit") or 0.0
    return _dec(own or info.get("trade_tick_value") or 0.0)


def money_level(*, level: str, money: float, position: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The price of ``level`` ("sl" or "tp") worth ``money`` for ``position`` (its ``price_open``,
    ``volume``, ``type``) and its symbol's ``info`` (SymbolInfo fields): ``{asked, price, money,
    priceOpen, volume, tickValue, tickSize}``. 400 naming ``slMoney``/``tpMoney`` when no such price
    exists (less than a tick's worth, a price at or below 0, no tick value or size at the terminal)."""
    field = LEVELS[level]
    tick_size = _dec(info.get("trade_tick_size") or 0.0)
    tick_value = _tick_value(info, level)
    volume, open_price = _dec(position["volume"]), _dec(position["price_open"])
    if tick_size <= 0 or tick_value <= 0 or volume <= 0:
        raise ValidationFailed(f"{field} cannot be converted: the terminal gives no tick value or size for "
                               f"{position.get('symbol')}", {field: ["no tick value or tick size at the terminal"]})
    per_tick = volume * tick_value  # account currency per tick of the whole position
    exact = _dec(money) / per_tick
    # SL: the loss at most the sum (whole ticks, down); TP: the profit at least the sum (whole ticks, up).
    ticks = (exact + GRID_SLACK).to_integral_value(ROUND_FLOOR) if level == "sl" else \
        (exact - GRID_SLACK).to_integral_value(ROUND_CEILING)
    if ticks < 1:
        raise ValidationFailed(f"{field} {money} is less than one tick's worth ({float(per_tick)} for "
                               f"{float(volume)} lots): the stop would be at the open price",
                               {field: [f"less than one tick's worth ({float(per_tick)})"]})
    buy = int(position["type"]) == C.POSITION_TYPE_BUY
    below = (level == "sl") == buy  # a BUY's SL and a SELL's TP lie below the open price
    # On the grid from the open price (off the grid, as a broker may fill: the nearest line on the safe side).
    raw = open_price - ticks * tick_size if below else open_price + ticks * tick_size
    toward_open = level == "sl"
    up = below == toward_open  # below the open and toward it, or above it and away from it: round up
    lines = (raw / tick_size - (GRID_SLACK if up else -GRID_SLACK)).to_integral_value(ROUND_CEILING if up else ROUND_FLOOR)
    price = lines * tick_size
    digits = int(info.get("digits") or 0)
    price = price.quantize(Decimal(1).scaleb(-digits)) if digits >= 0 else price
    if price <= 0 or price > MAX_PRICE:
        raise ValidationFailed(f"{field} {money} would put the {'stop loss' if level == 'sl' else 'take profit'} "
                               f"at {float(price)}: a price must be above 0 and at most {MAX_PRICE:g}",
                               {field: [f"the price would be {float(price)} (not above 0, or over {MAX_PRICE:g})"]})
    meant = abs(price - open_price) / tick_size * per_tick
    return {"asked": float(money), "price": float(price), "money": round(float(meant), 8),
            "priceOpen": float(open_price), "volume": float(volume), "tickValue": float(tick_value),
            "tickSize": float(tick_size)}
