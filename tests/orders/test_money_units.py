"""trading.money without a terminal: which tick value prices which level, the safe-side rounding on the grid
(also from an open price off the grid), and the sums that have no price. The stack tests
(test_money_and_close_all.py) check the same against mt5sim, whose loss and profit tick values are equal."""

from __future__ import annotations

import pytest

from bridge_project.errors import ValidationFailed
from trading.money import money_level

EURUSD = {"trade_tick_size": 0.00001, "trade_tick_value": 1.0, "trade_tick_value_loss": 1.0,
          "trade_tick_value_profit": 1.0, "digits": 5}
BUY, SELL = 0, 1


def _position(kind: int, price_open: float = 1.10010, volume: float = 0.3) -> dict:
    return {"symbol": "EURUSD", "type": kind, "price_open": price_open, "volume": volume}


@pytest.mark.parametrize(("kind", "level", "price", "money"), [
    (BUY, "sl", 1.09844, 49.8),  # 166 ticks of 0.3 each: 49.8 <= 50 < 50.1
    (BUY, "tp", 1.10177, 50.1),  # 167 ticks: 50.1 >= 50 > 49.8
    (SELL, "sl", 1.10176, 49.8),
    (SELL, "tp", 1.09843, 50.1),
])
def test_the_safe_side_of_the_sum_on_the_grid(kind: int, level: str, price: float, money: float) -> None:
    found = money_level(level=level, money=50.0, position=_position(kind), info=EURUSD)
    assert found["price"] == price and found["money"] == pytest.approx(money)


def test_a_sum_of_whole_ticks_is_met_exactly_whatever_the_float_noise() -> None:
    # 0.1 lots × 1.0 = 0.1 per tick: 0.3 is exactly 3 ticks, though 0.3 / 0.1 is 2.9999999999999996 in floats.
    for level, price in (("sl", 1.10007), ("tp", 1.10013)):
        found = money_level(level=level, money=0.3, position=_position(BUY, volume=0.1), info=EURUSD)
        assert found["price"] == price and found["money"] == pytest.approx(0.3)


def test_the_loss_tick_value_prices_the_sl_and_the_profit_one_the_tp() -> None:
    info = {**EURUSD, "trade_tick_value_loss": 2.0, "trade_tick_value_profit": 0.5}
    sl = money_level(level="sl", money=10.0, position=_position(BUY, volume=1.0), info=info)
    tp = money_level(level="tp", money=10.0, position=_position(BUY, volume=1.0), info=info)
    assert (sl["price"], sl["tickValue"]) == (1.10005, 2.0)  # 5 ticks of 2.0
    assert (tp["price"], tp["tickValue"]) == (1.10030, 0.5)  # 20 ticks of 0.5
    # Without them (0), trade_tick_value prices both.
    plain = {**EURUSD, "trade_tick_value": 4.0, "trade_tick_value_loss": 0.0, "trade_tick_value_profit": 0.0}
    assert money_level(level="sl", money=10.0, position=_position(BUY, volume=1.0), info=plain)["price"] == 1.10008


def test_an_open_price_off_the_grid_rounds_to_the_grid_on_the_safe_side() -> None:
    info = {**EURUSD, "trade_tick_size": 0.00005}  # a 5-point grid (1.0 per tick and lot); 1.10012 is off it
    position = _position(BUY, price_open=1.10012, volume=1.0)
    sl = money_level(level="sl", money=10.0, position=position, info=info)  # 10 ticks: 1.09962, up to the grid
    tp = money_level(level="tp", money=10.0, position=position, info=info)  # 10 ticks: 1.10062, up to the grid
    assert sl["price"] == 1.09965 and sl["money"] == pytest.approx(9.4)
    assert tp["price"] == 1.10065 and tp["money"] == pytest.approx(10.6)


@pytest.mark.parametrize(("level", "money", "kind", "info"), [
    ("sl", 0.29, BUY, EURUSD),  # less than one tick's worth (0.3)
    ("sl", 1_000_000.0, BUY, EURUSD),  # below 0
    ("tp", 1_000_000.0, SELL, EURUSD),  # below 0
    ("tp", 5.0, BUY, {**EURUSD, "trade_tick_value": 0.0, "trade_tick_value_profit": 0.0}),  # no tick value
    ("sl", 5.0, BUY, {**EURUSD, "trade_tick_size": 0.0}),  # no tick size
])
def test_a_sum_without_a_price_is_a_400_naming_the_field(level: str, money: float, kind: int, info: dict) -> None:
    with pytest.raises(ValidationFailed) as raised:
        money_level(level=level, money=money, position=_position(kind), info=info)
    assert set(raised.value.details) == {f"{level}Money"}
