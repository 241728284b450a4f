"""Trade-server rules (MT5_API.md §5-§6) against the real Engine, called directly (fast, no process)."""

from __future__ import annotations

import pytest

from mt5sim.engine import _const as C
from mt5sim.engine.testing import Harness

CONFIG = {
    "accounts": [
        {"login": 6001, "password": "net", "margin_mode": "netting"},
        {"login": 6002, "password": "eur", "currency": "EUR", "balance": 5000, "leverage": 30},
        {"login": 6003, "password": "lim", "limit_orders": 2},
        {"login": 6004, "password": "small", "balance": 1000, "leverage": 100, "margin_so_so": 50.0},
    ],
    "symbols": [
        {"name": "NOQUOTE", "template": "forex", "no_prices": True, "currency_base": "AAA", "currency_profit": "USD"},
        {"name": "ESFUT", "trade_calc_mode": 1, "digits": 2, "trade_tick_size": 0.25, "trade_tick_value": 12.5,
         "margin_initial": 1000.0, "trade_contract_size": 50.0, "currency_base": "USD", "currency_profit": "USD",
         "currency_margin": "USD", "base_price": 5000.0, "sessions": "always", "volume_min": 1.0, "volume_step": 1.0,
         "volume_max": 100.0, "filling_mode": 3, "trade_exemode": 3, "spread_points": 25, "volatility": 0.01},
        {"name": "EURUSDNL", "template": "forex", "trade_calc_mode": 5, "currency_base": "EUR",
         "currency_profit": "USD", "base_price": 1.0850},
    ],
}


@pytest.fixture
def h(tmp_path):
    harness = Harness(CONFIG, str(tmp_path / "state"))
    harness.set_price("EURUSD", 1.10000, 1.10010)
    yield harness
    harness.close()


def login(h: Harness, number: int, password: str) -> None:
    assert h.call("login", login=number, password=password, server=None, timeout=None) is True


# ---------------------------------------------------------------- market orders, tickets, echo
def test_market_buy_result_position_order_and_deal(h):
    res = h.buy("EURUSD", 0.1, magic=42, comment="tag-1", deviation=5)
    assert res["retcode"] == 10009 and res["comment"] == "Request executed"
    assert res["price"] == 1.10010 and res["bid"] == 1.10000 and res["ask"] == 1.10010
    assert res["volume"] == 0.1 and res["deal"] > 0 and res["order"] > 0
    assert res["request"]["symbol"] == "EURUSD" and res["request"]["magic"] == 42 and res["request"]["deviation"] == 5
    (pos,) = h.positions()
    assert pos["ticket"] == res["order"] == pos["identifier"]
    assert pos["magic"] == 42 and pos["comment"] == "tag-1" and pos["reason"] == 3 and pos["type"] == 0
    (order,) = h.history_orders(ticket=res["order"])
    assert order["state"] == C.ORDER_STATE_FILLED and order["time_setup"] == order["time_done"]
    assert order["position_id"] == pos["ticket"] and order["magic"] == 42 and order["comment"] == "tag-1"
    (deal,) = h.deals(ticket=res["order"])       # ticket= is the ORDER ticket
    assert deal["ticket"] == res["deal"] and deal["entry"] == C.DEAL_ENTRY_IN and deal["position_id"] == pos["ticket"]
    assert deal["magic"] == 42 and deal["reason"] == C.DEAL_REASON_EXPERT and deal["type"] == C.DEAL_TYPE_BUY


def test_request_id_increments_and_sell_executes_at_bid(h):
    r1 = h.buy()
    r2 = h.sell()
    assert r2["request_id"] == r1["request_id"] + 1
    assert r2["price"] == 1.10000


def test_market_execution_ignores_price(h):
    res = h.buy("EURUSD", 0.1, price=1.5)
    assert res["retcode"] == 10009 and res["price"] == 1.10010


def test_balance_deal_at_account_creation(h):
    deals = h.deals()
    assert deals[0]["type"] == C.DEAL_TYPE_BALANCE and deals[0]["symbol"] == "" and deals[0]["profit"] == 10000.0
    assert deals[0]["order"] == 0 and deals[0]["position_id"] == 0
    # a group filter still returns balance deals (empty symbol matches "*")
    assert any(d["type"] == C.DEAL_TYPE_BALANCE for d in h.deals(group="*,!*EUR*"))


# ---------------------------------------------------------------- volume rules
@pytest.mark.parametrize("volume", [0.0, 0.001, 0.015, 501.0, -1.0])
def test_invalid_volume(h, volume):
    assert h.buy("EURUSD", volume)["retcode"] == 10014


def test_volume_limit(h):
    h.set_price("GBPJPY", 190.000, 190.025)
    assert h.symbol("GBPJPY")["volume_limit"] == 50.0
    h.ctl("set_symbol", symbol="GBPJPY", volume_limit=1.0)
    assert h.buy("GBPJPY", 0.6)["retcode"] == 10009
    assert h.send(action=5, symbol="GBPJPY", volume=0.3, type=2, price=189.5, type_filling=2)["retcode"] == 10009
    assert h.buy("GBPJPY", 0.2)["retcode"] == 10034             # 0.6 + 0.3 pending + 0.2 > 1.0
    assert h.sell("GBPJPY", 0.6)["retcode"] == 10009             # the other direction has its own budget


def test_limit_orders(h):
    login(h, 6003, "lim")
    for _ in range(2):
        assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2)["retcode"] == 10009
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2)["retcode"] == 10033


# ---------------------------------------------------------------- filling modes
def test_filling_modes_market_execution(h):
    assert h.buy(type_filling=C.ORDER_FILLING_FOK)["retcode"] == 10009
    assert h.buy(type_filling=C.ORDER_FILLING_IOC)["retcode"] == 10009
    assert h.buy(type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10030
    assert h.buy(type_filling=C.ORDER_FILLING_BOC)["retcode"] == 10030
    h.ctl("set_symbol", symbol="EURUSD", filling_mode=2)      # IOC only
    assert h.buy(type_filling=C.ORDER_FILLING_FOK)["retcode"] == 10030
    assert h.buy(type_filling=C.ORDER_FILLING_IOC)["retcode"] == 10009


def test_filling_return_always_allowed_for_pending_and_exchange_market(h):
    res = h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=C.ORDER_FILLING_RETURN)
    assert res["retcode"] == 10009
    h.set_price("ESFUT", 5000.00, 5000.25)
    assert h.buy("ESFUT", 1.0, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10009


# ---------------------------------------------------------------- execution modes
def test_instant_execution_price_and_deviation(h):
    h.set_price("EURJPY", 163.000, 163.017)
    assert h.buy("EURJPY", 0.1)["retcode"] == 10015                        # price 0 in instant mode
    requote = h.buy("EURJPY", 0.1, price=163.100, deviation=10)
    assert requote["retcode"] == 10004 and requote["comment"] == "Requote"
    assert requote["bid"] == 163.000 and requote["ask"] == 163.017 and requote["deal"] == 0
    ok = h.buy("EURJPY", 0.1, price=163.010, deviation=10)
    assert ok["retcode"] == 10009 and ok["price"] == 163.017


def test_request_execution_price_changed(h):
    h.ctl("set_symbol", symbol="EURJPY", trade_exemode=C.SYMBOL_TRADE_EXECUTION_REQUEST)
    h.set_price("EURJPY", 163.000, 163.017)
    assert h.sell("EURJPY", 0.1, price=162.5, deviation=20)["retcode"] == 10020
    assert h.sell("EURJPY", 0.1, price=163.0, deviation=0)["retcode"] == 10009


# ---------------------------------------------------------------- stops / freeze levels
def test_stops_level_on_market_order(h):
    h.set_price("GBPJPY", 190.000, 190.025)         # stops level 30 points = 0.030
    assert h.buy("GBPJPY", 0.1, sl=189.980)["retcode"] == 10016
    assert h.buy("GBPJPY", 0.1, tp=190.020)["retcode"] == 10016
    assert h.buy("GBPJPY", 0.1, sl=190.100)["retcode"] == 10016            # SL above bid
    assert h.buy("GBPJPY", 0.1, sl=189.900, tp=190.200)["retcode"] == 10009
    assert h.sell("GBPJPY", 0.1, sl=190.040)["retcode"] == 10016            # SL - Ask < 30 points
    assert h.sell("GBPJPY", 0.1, sl=190.100, tp=189.900)["retcode"] == 10009


def test_sl_on_wrong_side_with_zero_stops_level(h):
    assert h.buy("EURUSD", 0.1, sl=1.10050)["retcode"] == 10016
    assert h.sell("EURUSD", 0.1, tp=1.10050)["retcode"] == 10016


def test_stops_level_on_pending_price_and_its_stops(h):
    h.set_price("GBPJPY", 190.000, 190.025)
    too_close = h.send(action=5, symbol="GBPJPY", volume=0.1, type=2, price=190.000, type_filling=2)
    assert too_close["retcode"] == 10015                                     # Ask - Open = 25 < 30
    bad_sl = h.send(action=5, symbol="GBPJPY", volume=0.1, type=2, price=189.900, sl=189.880, type_filling=2)
    assert bad_sl["retcode"] == 10016
    ok = h.send(action=5, symbol="GBPJPY", volume=0.1, type=2, price=189.900, sl=189.800, type_filling=2)
    assert ok["retcode"] == 10009 and ok["order"] > 0 and ok["deal"] == 0


def test_pending_on_wrong_side_is_invalid_price(h):
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.2, type_filling=2)["retcode"] == 10015
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=4, price=1.0, type_filling=2)["retcode"] == 10015
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=0.0, type_filling=2)["retcode"] == 10015


def test_freeze_level_on_pending_modify_and_remove(h):
    h.set_price("GBPJPY", 190.000, 190.025)
    order = h.send(action=5, symbol="GBPJPY", volume=0.1, type=2, price=189.900, type_filling=2)["order"]
    h.set_price("GBPJPY", 189.885, 189.910)          # Ask - Open = 10 points = freeze level
    assert h.send(action=8, order=order)["retcode"] == 10029
    assert h.send(action=7, order=order, price=189.800)["retcode"] == 10029
    h.set_price("GBPJPY", 190.000, 190.025)
    assert h.send(action=8, order=order)["retcode"] == 10009


def test_freeze_level_on_position_close(h):
    h.set_price("GBPJPY", 190.000, 190.025)
    pos = h.buy("GBPJPY", 0.1, sl=189.950)["order"]
    h.set_price("GBPJPY", 189.955, 189.980)          # Bid - SL = 5 points <= freeze 10
    assert h.sell("GBPJPY", 0.1, position=pos)["retcode"] == 10029
    assert h.send(action=6, position=pos, sl=189.800)["retcode"] == 10029


# ---------------------------------------------------------------- pending orders and triggers
def test_buy_limit_triggers_on_ask(h):
    res = h.send(action=5, symbol="EURUSD", volume=0.2, type=2, price=1.09500, sl=1.09000, tp=1.10500,
                 type_filling=2, magic=9, comment="limit")
    assert res["retcode"] == 10009 and res["order"] > 0
    (order,) = h.orders()
    assert order["state"] == C.ORDER_STATE_PLACED and order["price_open"] == 1.095 and order["volume_current"] == 0.2
    h.set_price("EURUSD", 1.09600, 1.09610)
    assert h.positions() == []
    h.set_price("EURUSD", 1.09490, 1.09500)
    assert h.orders() == []
    (pos,) = h.positions()
    assert pos["ticket"] == res["order"] and pos["price_open"] == 1.095 and pos["sl"] == 1.09 and pos["tp"] == 1.105
    assert pos["magic"] == 9 and pos["volume"] == 0.2
    (hist,) = h.history_orders(ticket=res["order"])
    assert hist["state"] == C.ORDER_STATE_FILLED and hist["position_id"] == res["order"]


def test_sell_stop_triggers_on_bid(h):
    res = h.send(action=5, symbol="EURUSD", volume=0.1, type=5, price=1.09800, type_filling=2)
    h.set_price("EURUSD", 1.09790, 1.09800)
    (pos,) = h.positions()
    assert pos["type"] == C.POSITION_TYPE_SELL and pos["ticket"] == res["order"] and pos["price_open"] == 1.0979


def test_buy_stop_limit_becomes_limit_then_fills(h):
    res = h.send(action=5, symbol="EURUSD", volume=0.1, type=6, price=1.10200, stoplimit=1.10100, type_filling=2)
    assert res["retcode"] == 10009
    h.set_price("EURUSD", 1.10200, 1.10210)            # stop price reached: becomes a buy limit at 1.10100
    (order,) = h.orders()
    assert order["type"] == C.ORDER_TYPE_BUY_LIMIT and order["price_open"] == 1.101
    assert h.positions() == []
    h.set_price("EURUSD", 1.10090, 1.10100)
    (pos,) = h.positions()
    assert pos["price_open"] == 1.101 and pos["ticket"] == res["order"]


def test_stop_limit_price_rules(h):
    bad = h.send(action=5, symbol="EURUSD", volume=0.1, type=6, price=1.10200, stoplimit=1.10300, type_filling=2)
    assert bad["retcode"] == 10015


def test_modify_and_remove_pending(h):
    order = h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2)["order"]
    assert h.send(action=7, order=order, price=1.09)["retcode"] == 10025
    res = h.send(action=7, order=order, price=1.085, sl=1.08, tp=1.095)
    assert res["retcode"] == 10009 and res["order"] == order
    (o,) = h.orders()
    assert (o["price_open"], o["sl"], o["tp"]) == (1.085, 1.08, 1.095)
    assert h.send(action=7, order=order, price=1.2)["retcode"] == 10015
    rem = h.send(action=8, order=order)
    assert rem["retcode"] == 10009 and rem["order"] == order
    assert h.orders() == []
    (hist,) = h.history_orders(ticket=order)
    assert hist["state"] == C.ORDER_STATE_CANCELED
    assert h.send(action=8, order=order)["retcode"] == 10013


def test_order_mode(h):
    h.ctl("set_symbol", symbol="EURUSD", order_mode=C.SYMBOL_ORDER_MARKET)
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2)["retcode"] == 10035
    assert h.buy(sl=1.09)["retcode"] == 10035                # SL not allowed
    assert h.buy()["retcode"] == 10009
    h.ctl("set_symbol", symbol="EURUSD", order_mode=126)
    assert h.buy()["retcode"] == 10035


# ---------------------------------------------------------------- expiration
def test_expiration_modes(h):
    now = h.now()
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2, type_time=2,
                  expiration=now - 10)["retcode"] == 10022
    h.ctl("set_symbol", symbol="EURUSD", expiration_mode=C.SYMBOL_EXPIRATION_GTC)
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2,
                  type_time=1)["retcode"] == 10022
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2,
                  type_time=0)["retcode"] == 10009


def test_specified_expiry_expires_with_the_clock(h):
    now = h.now()
    order = h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2, type_time=2,
                   expiration=now + 3600)["order"]
    (o,) = h.orders()
    assert o["time_expiration"] == now + 3600 and o["type_time"] == 2
    h.ctl("set_clock", at=h.engine.clock_pinned + 3601)
    assert h.orders() == []
    (hist,) = h.history_orders(ticket=order)
    assert hist["state"] == C.ORDER_STATE_EXPIRED


def test_day_order_expires_at_midnight(h):
    order = h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2, type_time=1)["order"]
    now = h.now()
    to_midnight = 86400 - now % 86400
    h.ctl("set_clock", at=h.engine.clock_pinned + to_midnight - 60)
    assert len(h.orders()) == 1
    h.ctl("set_clock", at=h.engine.clock_pinned + 61)
    assert h.history_orders(ticket=order)[0]["state"] == C.ORDER_STATE_EXPIRED


# ---------------------------------------------------------------- SL / TP on the server
def test_sl_trigger_closes_with_reason_and_comment(h):
    pos = h.buy("EURUSD", 0.1, sl=1.09500, tp=1.11000, magic=5)["order"]
    h.set_price("EURUSD", 1.09400, 1.09410)
    assert h.positions() == []
    deals = h.deals(position=pos)
    assert [d["entry"] for d in deals] == [C.DEAL_ENTRY_IN, C.DEAL_ENTRY_OUT]
    out = deals[1]
    assert out["reason"] == C.DEAL_REASON_SL and out["comment"] == "[sl 1.09500]" and out["magic"] == 5
    assert out["price"] == 1.094 and out["profit"] == round((1.094 - 1.1001) * 10000, 2)
    closing = h.history_orders(ticket=out["order"])[0]
    assert closing["reason"] == C.ORDER_REASON_SL and closing["type"] == C.ORDER_TYPE_SELL
    assert h.account()["balance"] == round(10000 + out["profit"], 2)


def test_tp_trigger_on_sell(h):
    pos = h.sell("EURUSD", 0.1, tp=1.09000)["order"]
    h.set_price("EURUSD", 1.08980, 1.08990)
    out = h.deals(position=pos)[-1]
    assert out["reason"] == C.DEAL_REASON_TP and out["comment"] == "[tp 1.09000]" and out["price"] == 1.0899


def test_sltp_modify(h):
    pos = h.buy()["order"]
    res = h.send(action=6, position=pos, symbol="EURUSD", sl=1.09, tp=1.12)
    assert res["retcode"] == 10009 and res["deal"] == 0 and res["order"] == 0
    (p,) = h.positions()
    assert (p["sl"], p["tp"]) == (1.09, 1.12)
    assert h.send(action=6, position=pos, sl=1.09, tp=1.12)["retcode"] == 10025
    assert h.send(action=6, position=pos, sl=1.2, tp=1.12)["retcode"] == 10016
    assert h.send(action=6, position=pos, sl=0.0, tp=0.0)["retcode"] == 10009       # 0 removes the levels
    assert h.positions()[0]["sl"] == 0.0


# ---------------------------------------------------------------- hedging
def test_hedging_open_partial_close_and_full_close(h):
    a = h.buy("EURUSD", 0.3)["order"]
    b = h.buy("EURUSD", 0.1)["order"]
    assert len(h.positions()) == 2
    part = h.sell("EURUSD", 0.1, position=a)
    assert part["retcode"] == 10009
    pa = h.positions(ticket=a)[0]
    assert pa["volume"] == 0.2 and pa["ticket"] == a
    assert h.deals(ticket=part["order"])[0]["entry"] == C.DEAL_ENTRY_OUT
    assert h.sell("EURUSD", 0.5, position=a)["retcode"] == 10038
    assert h.buy("EURUSD", 0.1, position=a)["retcode"] == 10013          # same direction as the position
    assert h.sell("EURUSD", 0.2, position=a)["retcode"] == 10009
    assert [p["ticket"] for p in h.positions()] == [b]
    assert h.sell("EURUSD", 0.1, position=a)["retcode"] == 10036          # already closed
    assert h.sell("EURUSD", 0.1, position=999999)["retcode"] == 10013     # never existed


def test_close_by(h):
    a = h.buy("EURUSD", 0.3)["order"]
    h.set_price("EURUSD", 1.10100, 1.10110)
    b = h.sell("EURUSD", 0.1)["order"]
    res = h.send(action=10, position=a, position_by=b)
    assert res["retcode"] == 10009
    (left,) = h.positions()
    assert left["ticket"] == a and left["volume"] == 0.2 and left["price_open"] == 1.1001
    deals = h.deals(ticket=res["order"])
    assert [d["entry"] for d in deals] == [C.DEAL_ENTRY_OUT_BY, C.DEAL_ENTRY_OUT_BY]
    assert {d["position_id"] for d in deals} == {a, b}
    assert all(d["price"] == 1.101 for d in deals)                  # offset at position_by's open price
    assert deals[0]["profit"] == round((1.101 - 1.1001) * 10000, 2) and deals[1]["profit"] == 0.0
    order = h.history_orders(ticket=res["order"])[0]
    assert order["type"] == C.ORDER_TYPE_CLOSE_BY and order["position_by_id"] == b
    assert h.send(action=10, position=a, position_by=a)["retcode"] == 10013


def test_close_by_needs_closeby_order_mode(h):
    a = h.buy()["order"]
    b = h.sell()["order"]
    h.ctl("set_symbol", symbol="EURUSD", order_mode=63)
    assert h.send(action=10, position=a, position_by=b)["retcode"] == 10035


# ---------------------------------------------------------------- netting
def test_netting_average_partial_reversal(h):
    login(h, 6001, "net")
    first = h.buy("EURUSD", 0.1)
    h.set_price("EURUSD", 1.10100, 1.10110)
    h.buy("EURUSD", 0.1)
    (pos,) = h.positions()
    assert pos["volume"] == 0.2 and pos["ticket"] == first["order"] == pos["identifier"]
    assert pos["price_open"] == pytest.approx((1.1001 + 1.1011) / 2)
    part = h.sell("EURUSD", 0.05)
    assert h.deals(ticket=part["order"])[0]["entry"] == C.DEAL_ENTRY_OUT
    assert h.positions()[0]["volume"] == 0.15
    rev = h.sell("EURUSD", 0.5)
    deal = h.deals(ticket=rev["order"])[0]
    assert deal["entry"] == C.DEAL_ENTRY_INOUT and deal["volume"] == 0.5
    (pos,) = h.positions()
    assert pos["type"] == C.POSITION_TYPE_SELL and pos["volume"] == 0.35
    assert pos["identifier"] == first["order"] and pos["ticket"] == rev["order"]
    assert deal["position_id"] == first["order"]
    close = h.buy("EURUSD", 0.35)
    assert h.deals(ticket=close["order"])[0]["entry"] == C.DEAL_ENTRY_OUT and h.positions() == []


def test_netting_close_by_is_invalid(h):
    login(h, 6001, "net")
    a = h.buy()["order"]
    assert h.send(action=10, position=a, position_by=a)["retcode"] == 10013


# ---------------------------------------------------------------- money: margin, profit, no money, stop-out
def test_calc_margin_and_profit(h):
    h.set_price("EURUSD", 1.09910, 1.09920)
    assert h.call("order_calc_margin", action=0, symbol="EURUSD", volume=0.1, price=1.0991) == 109.91
    h.set_price("USDJPY", 150.000, 150.012)
    assert h.call("order_calc_margin", action=0, symbol="USDJPY", volume=0.1, price=150.0) == 100.0
    assert h.call("order_calc_profit", action=0, symbol="EURUSD", volume=1.0, price_open=1.1,
                  price_close=1.103) == 300.0
    # USDJPY profit (JPY) converted to USD at the current rate
    assert h.call("order_calc_profit", action=0, symbol="USDJPY", volume=1.0, price_open=150.0,
                  price_close=150.5) == round(0.5 * 100000 / 150.012, 2)
    assert h.call("order_calc_profit", action=1, symbol="EURUSD", volume=1.0, price_open=1.1,
                  price_close=1.103) == -300.0


def test_margin_by_calc_mode(h):
    h.set_price("XAUUSD", 2300.00, 2300.25)
    assert h.call("order_calc_margin", action=0, symbol="XAUUSD", volume=1.0, price=2300.0) == 2300.0
    h.set_price("US500", 5000.00, 5000.50)
    assert h.call("order_calc_margin", action=0, symbol="US500", volume=1.0, price=5000.0) == 50.0   # CFD leverage
    h.set_price("DE40", 18000.0, 18001.2)                                      # CFD, EUR margin -> USD
    assert h.call("order_calc_margin", action=0, symbol="DE40", volume=1.0, price=18000.0) == round(
        18000 * 0.05 * 1.1, 2)
    h.set_price("ESFUT", 5000.00, 5000.25)
    assert h.call("order_calc_margin", action=0, symbol="ESFUT", volume=2.0, price=5000.0) == 2000.0  # futures
    assert h.call("order_calc_profit", action=0, symbol="ESFUT", volume=1.0, price_open=5000.0,
                  price_close=5001.0) == 50.0                                  # 4 ticks x 12.5
    h.set_price("EURUSDNL", 1.10000, 1.10010)
    assert h.call("order_calc_margin", action=0, symbol="EURUSDNL", volume=0.1, price=1.1) == 11000.0


def test_account_in_eur_converts(h):
    login(h, 6002, "eur")
    acct = h.account()
    assert acct["currency"] == "EUR" and acct["balance"] == 5000.0 and acct["leverage"] == 30
    # EURUSD margin is in EUR already: 0.1 lot / 30
    assert h.call("order_calc_margin", action=0, symbol="EURUSD", volume=0.1, price=1.1) == round(10000 / 30, 2)
    # USD profit converted to EUR through EURUSD (1 / ask)
    assert h.call("order_calc_profit", action=0, symbol="EURUSD", volume=1.0, price_open=1.1,
                  price_close=1.101) == round(100 / 1.1001, 2)


def test_account_figures_after_open(h):
    h.buy("EURUSD", 1.0)
    acct = h.account()
    assert acct["margin"] == 1100.1
    assert acct["profit"] == -10.0                           # spread: bid 1.10000 vs open 1.10010
    assert acct["equity"] == 9990.0 and acct["margin_free"] == round(9990 - 1100.1, 2)
    assert acct["margin_level"] == round(9990 / 1100.1 * 100, 2)
    (pos,) = h.positions()
    assert pos["profit"] == -10.0 and pos["price_current"] == 1.1


def test_no_money_and_order_check(h):
    chk = h.check(action=1, symbol="EURUSD", volume=1.0, type=0)
    assert chk["retcode"] == 0 and chk["comment"] == "Done"
    assert chk["margin"] == 1100.1 and chk["balance"] == 10000.0
    assert chk["margin_free"] == round(chk["equity"] - chk["margin"], 2)
    assert h.positions() == []                                 # order_check does not trade
    h.buy("EURUSD", 1.0)
    chk2 = h.check(action=1, symbol="EURUSD", volume=1.0, type=0)
    assert chk2["margin"] == 2200.2                            # total margin after the trade
    big = h.check(action=1, symbol="EURUSD", volume=10.0, type=0)
    assert big["retcode"] == 10019 and big["comment"] == "No money" and big["margin_free"] < 0
    assert h.buy("EURUSD", 10.0)["retcode"] == 10019
    assert h.check(action=1, symbol="EURUSD", volume=0.001, type=0)["retcode"] == 10014


def test_hedged_positions_margin(h):
    h.buy("EURUSD", 1.0)
    before = h.account()["margin"]
    h.sell("EURUSD", 1.0)
    after = h.account()["margin"]
    # margin_hedged defaults to the contract size: a hedged lot is still margined (here both legs)
    assert after == pytest.approx(before + 1100.0, abs=0.01)
    h.ctl("set_symbol", symbol="EURUSD", margin_hedged_use_leg=True)
    assert h.account()["margin"] == pytest.approx(before, abs=0.01)


def test_stop_out(h):
    login(h, 6004, "small")                                   # balance 1000, stop out at 50%
    pos = h.buy("EURUSD", 0.8)["order"]                       # margin 880.08
    h.buy("EURUSD", 0.01)
    assert len(h.positions()) == 2
    h.set_price("EURUSD", 1.09300, 1.09310)                  # loss ~575 -> level ~47.7% < 50%
    remaining = h.positions()
    assert all(p["ticket"] != pos for p in remaining)
    so = h.deals(position=pos)[-1]
    assert so["reason"] == C.DEAL_REASON_SO and so["comment"].startswith("[so ")
    acct = h.account()
    assert acct["margin"] == 0 or acct["margin_level"] >= 50.0


# ---------------------------------------------------------------- permissions, sessions, connection, faults
def test_trade_modes(h):
    h.ctl("set_symbol", symbol="EURUSD", trade_mode=C.SYMBOL_TRADE_MODE_DISABLED)
    assert h.buy()["retcode"] == 10017
    h.ctl("set_symbol", symbol="EURUSD", trade_mode=C.SYMBOL_TRADE_MODE_LONGONLY)
    assert h.sell()["retcode"] == 10042
    long_pos = h.buy()["order"]
    assert h.sell(position=long_pos)["retcode"] == 10009     # closing a long is allowed
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=3, price=1.11, type_filling=2)["retcode"] == 10042
    h.ctl("set_symbol", symbol="EURUSD", trade_mode=C.SYMBOL_TRADE_MODE_SHORTONLY)
    assert h.buy()["retcode"] == 10043
    short = h.sell()["order"]
    h.ctl("set_symbol", symbol="EURUSD", trade_mode=C.SYMBOL_TRADE_MODE_CLOSEONLY)
    assert h.sell()["retcode"] == 10044
    assert h.buy(position=short)["retcode"] == 10009


def test_account_trade_disabled(h):
    h.ctl("set_account", trade_allowed=False)
    assert h.buy()["retcode"] == 10017


def test_no_prices(h):
    assert h.buy("NOQUOTE", 0.1)["retcode"] == 10021
    assert h.buy("NOQUOTE", 0.1)["comment"] == "No prices"


def test_invalid_requests(h):
    assert h.send(action=99, symbol="EURUSD", volume=0.1)["retcode"] == 10013
    assert h.send(action=1, symbol="NOPE", volume=0.1, type=0)["retcode"] == 10013
    assert h.send(action=1, symbol="EURUSD", volume=0.1, type=2)["retcode"] == 10013
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=0, price=1.0)["retcode"] == 10035
    assert h.send(action=6, position=123456, sl=1.0)["retcode"] == 10013
    assert h.send(action=1, symbol="", volume=0.1, type=0)["retcode"] == 10013


def test_trade_server_disconnect(h):
    h.ctl("trade_server", connected=False)
    assert h.terminal()["connected"] is False
    res = h.buy()
    assert res["retcode"] == 10031 and res["comment"] == "No connection"
    assert h.check(action=1, symbol="EURUSD", volume=0.1, type=0)["retcode"] == 10031
    h.ctl("trade_server", connected=True)
    assert h.terminal()["connected"] is True and h.buy()["retcode"] == 10009


def test_reject_and_requote_faults(h):
    h.ctl("reject", count=2, retcode=10024)
    assert h.buy()["retcode"] == 10024
    assert h.buy()["retcode"] == 10024
    assert h.buy()["retcode"] == 10009
    h.ctl("requote", count=1)
    rq = h.buy()
    assert rq["retcode"] == 10004 and rq["bid"] == 1.1 and rq["ask"] == 1.1001
    assert h.buy()["retcode"] == 10009
    h.ctl("reject", count=1)
    assert h.buy()["retcode"] == 10006 and len(h.positions()) == 2     # rejected requests trade nothing


def test_autotrading_disabled_and_api_disabled(h):
    h.ctl("set_terminal", trade_allowed=False)
    res = h.buy()
    assert res["retcode"] == 10027 and res["comment"] == "AutoTrading disabled by client"
    h.ctl("set_terminal", trade_allowed=True, tradeapi_disabled=True)
    assert h.err("order_send", request={"action": 1}) == (-8, "Auto-Trading using Python API disabled in Terminal")


def test_comment_and_magic_stored_on_close(h):
    pos = h.buy(magic=11, comment="open-c")["order"]
    close = h.sell(position=pos, magic=12, comment="close-c")
    out = h.deals(ticket=close["order"])[0]
    assert out["magic"] == 12 and out["comment"] == "close-c"
    assert h.history_orders(ticket=close["order"])[0]["comment"] == "close-c"


# ---------------------------------------------------------------- history queries
def test_history_filters(h):
    a = h.buy("EURUSD")["order"]
    h.set_price("GBPUSD", 1.27, 1.2702)
    b = h.buy("GBPUSD")["order"]
    h.sell("EURUSD", position=a)
    now = h.now()
    assert len(h.history_orders(now - 10, now + 10)) == 3
    assert h.call("history_orders_total", date_from=now - 10, date_to=now + 10) == 3
    assert h.call("history_deals_total", date_from=now - 10, date_to=now + 10) == 4      # balance deal too
    assert h.history_orders(now + 100, now + 200) == []
    assert [o["symbol"] for o in h.history_orders(group="*GBP*")] == ["GBPUSD"]
    assert {d["symbol"] for d in h.deals(group="*,!*GBP*")} == {"", "EURUSD"}
    assert [o["ticket"] for o in h.history_orders(position=a)] == [a, a + 2]
    assert len(h.deals(position=a)) == 2 and len(h.deals(position=b)) == 1


def test_orders_and_positions_filters(h):
    h.set_price("GBPUSD", 1.27, 1.2702)
    h.buy("EURUSD")
    g = h.buy("GBPUSD")["order"]
    assert len(h.positions()) == 2 and h.call("positions_total") == 2
    assert [p["symbol"] for p in h.positions(group="*,!EUR*")] == ["GBPUSD"]
    assert [p["ticket"] for p in h.positions(ticket=g)] == [g]
    assert h.positions(symbol="USDJPY") == []
    assert [p["symbol"] for p in h.positions(symbol="EURUSD", ticket=g)] == ["EURUSD"]   # ticket ignored
    h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2)
    assert h.call("orders_total") == 1 and len(h.orders(group="EURUSD")) == 1 and h.orders(group="GBP*") == []

