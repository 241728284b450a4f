"""Trade-server retcodes and server-side triggers through the real client and terminal process.

Every retcode the engine can return is produced here with `import mt5sim as mt5` against a
`python -m mt5sim serve` process; prices are driven with the control API (freeze + set_price).
"""

from __future__ import annotations

import calendar
import datetime as dt
import time

import pytest

from mt5sim.tests.conftest import next_demo_login


def utc(*args: int) -> int:
    return calendar.timegm(dt.datetime(*args).timetuple())


@pytest.fixture
def market(mt5, sim_control):
    """Frozen feed with EURUSD at 1.10000/1.10010, GBPJPY at 190.000/190.025, EURJPY at 163.000/163.017."""
    sim_control.freeze_feed()
    sim_control.set_price("EURUSD", 1.10000, 1.10010)
    sim_control.set_price("GBPJPY", 190.000, 190.025)
    sim_control.set_price("EURJPY", 163.000, 163.017)
    return sim_control


def deal(mt5, symbol="EURUSD", order_type=0, volume=0.1, **extra):
    request = {"action": mt5.TRADE_ACTION_DEAL, "symbol": symbol, "volume": volume, "type": order_type,
               "type_filling": mt5.ORDER_FILLING_FOK}
    request.update(extra)
    result = mt5.order_send(request)
    assert result is not None, mt5.last_error()
    return result


def pending(mt5, order_type, price, symbol="EURUSD", volume=0.1, **extra):
    request = {"action": mt5.TRADE_ACTION_PENDING, "symbol": symbol, "volume": volume, "type": order_type,
               "price": price, "type_filling": mt5.ORDER_FILLING_RETURN}
    request.update(extra)
    result = mt5.order_send(request)
    assert result is not None, mt5.last_error()
    return result


def test_done_and_result_shape(mt5, market):
    res = deal(mt5, magic=77, comment="client-test")
    assert type(res) is mt5.OrderSendResult and res.retcode == mt5.TRADE_RETCODE_DONE
    assert res.comment == "Request executed" and res.price == 1.1001 and res.bid == 1.1 and res.ask == 1.1001
    assert type(res.request) is mt5.TradeRequest and res.request.magic == 77 and res.request.comment == "client-test"
    (pos,) = mt5.positions_get(ticket=res.order)
    assert pos.identifier == res.order and pos.magic == 77 and pos.comment == "client-test"
    (d,) = mt5.history_deals_get(ticket=res.order)
    assert d.ticket == res.deal and d.position_id == res.order and d.entry == mt5.DEAL_ENTRY_IN
    chk = mt5.order_check({"action": 1, "symbol": "EURUSD", "volume": 0.1, "type": 0})
    assert type(chk) is mt5.OrderCheckResult and chk.retcode == 0 and chk.comment == "Done"
    assert chk.margin == pytest.approx(2 * 110.01)


@pytest.mark.parametrize(("setup", "request_fields", "retcode"), [
    (None, {"volume": 0.001}, 10014),
    (None, {"volume": 1000.0}, 10014),
    (None, {"type_filling": 2}, 10030),
    (None, {"sl": 1.2}, 10016),
    (None, {"symbol": "EURJPY", "price": 163.5, "deviation": 10}, 10004),
    (None, {"symbol": "EURJPY"}, 10015),
    (None, {"volume": 50.0}, 10019),
    (None, {"type": 5}, 10013),
    (None, {"position": 987654321, "type": 1}, 10013),
    (("set_symbol", {"symbol": "EURUSD", "trade_mode": 0}), {}, 10017),
    (("set_symbol", {"symbol": "EURUSD", "trade_mode": 1}), {"type": 1}, 10042),
    (("set_symbol", {"symbol": "EURUSD", "trade_mode": 2}), {}, 10043),
    (("set_symbol", {"symbol": "EURUSD", "trade_mode": 3}), {}, 10044),
    (("set_symbol", {"symbol": "EURUSD", "order_mode": 126}), {}, 10035),
    (("set_symbol", {"symbol": "EURUSD", "volume_limit": 0.05}), {}, 10034),
    (("set_symbol", {"symbol": "EURJPY", "trade_exemode": 0}), {"symbol": "EURJPY", "price": 163.5,
                                                                "deviation": 10}, 10020),
    (("set_account", {"trade_expert": False}), {}, 10026),
    (("set_terminal", {"trade_allowed": False}), {}, 10027),
    (("trade_server", {"connected": False}), {}, 10031),
    (("reject", {"count": 1, "retcode": 10006}), {}, 10006),
    (("reject", {"count": 1, "retcode": 10024}), {}, 10024),
    (("requote", {"count": 1}), {}, 10004),
])
def test_market_order_retcodes(mt5, market, setup, request_fields, retcode):
    if setup is not None:
        market.call(setup[0], **setup[1])
    res = deal(mt5, **request_fields)
    assert res.retcode == retcode, res
    assert res.deal == 0 and mt5.positions_total() == 0


def test_pending_retcodes(mt5, market):
    assert pending(mt5, mt5.ORDER_TYPE_BUY_LIMIT, 1.2).retcode == 10015
    assert pending(mt5, mt5.ORDER_TYPE_BUY_LIMIT, 190.000, symbol="GBPJPY").retcode == 10015   # stops level
    assert pending(mt5, mt5.ORDER_TYPE_BUY_LIMIT, 189.9, symbol="GBPJPY", sl=189.89).retcode == 10016
    past = int(time.time()) - 3600
    assert pending(mt5, mt5.ORDER_TYPE_BUY_LIMIT, 1.09, type_time=mt5.ORDER_TIME_SPECIFIED,
                   expiration=past).retcode == 10022
    assert pending(mt5, mt5.ORDER_TYPE_BUY_LIMIT, 163.0 - 0.5, symbol="EURJPY",
                   type_time=mt5.ORDER_TIME_SPECIFIED_DAY, expiration=past + 86400 * 3).retcode == 10022
    market.call("set_account", limit_orders=1)
    first = pending(mt5, mt5.ORDER_TYPE_BUY_LIMIT, 1.09)
    assert first.retcode == 10009 and first.order > 0 and first.deal == 0
    assert pending(mt5, mt5.ORDER_TYPE_BUY_LIMIT, 1.08).retcode == 10033
    modify = {"action": mt5.TRADE_ACTION_MODIFY, "order": first.order, "price": 1.09}
    assert mt5.order_send(modify).retcode == 10025
    assert mt5.order_send(dict(modify, price=1.085)).retcode == 10009
    assert mt5.orders_get(ticket=first.order)[0].price_open == 1.085
    remove = mt5.order_send({"action": mt5.TRADE_ACTION_REMOVE, "order": first.order})
    assert remove.retcode == 10009
    (hist,) = mt5.history_orders_get(ticket=first.order)
    assert hist.state == mt5.ORDER_STATE_CANCELED


def test_freeze_level_and_close_volume(mt5, market):
    pos = deal(mt5, symbol="GBPJPY", sl=189.95).order
    market.set_price("GBPJPY", 189.955, 189.980)
    assert deal(mt5, symbol="GBPJPY", order_type=1, position=pos).retcode == 10029
    market.set_price("GBPJPY", 190.0, 190.025)
    assert deal(mt5, symbol="GBPJPY", order_type=1, volume=0.5, position=pos).retcode == 10038
    sltp = {"action": mt5.TRADE_ACTION_SLTP, "position": pos, "symbol": "GBPJPY", "sl": 189.95, "tp": 0.0}
    assert mt5.order_send(sltp).retcode == 10025
    done = mt5.order_send(dict(sltp, tp=190.5))
    assert done.retcode == 10009 and done.deal == 0 and done.order == 0
    assert deal(mt5, symbol="GBPJPY", order_type=1, position=pos).retcode == 10009
    assert deal(mt5, symbol="GBPJPY", order_type=1, position=pos).retcode == 10036


def test_sl_tp_and_pending_triggers_through_control(mt5, market):
    sl_pos = deal(mt5, sl=1.095).order
    tp_pos = deal(mt5, order_type=1, tp=1.097).order
    limit = pending(mt5, mt5.ORDER_TYPE_BUY_LIMIT, 1.096).order
    market.set_price("EURUSD", 1.09600, 1.09610)
    assert mt5.positions_get(ticket=tp_pos) == ()
    tp_deal = mt5.history_deals_get(position=tp_pos)[-1]
    assert tp_deal.reason == mt5.DEAL_REASON_TP and tp_deal.comment == "[tp 1.09700]"
    assert len(mt5.orders_get(ticket=limit)) == 1      # ask 1.09610 > 1.096: not triggered yet
    market.set_price("EURUSD", 1.09490, 1.09500)
    sl_deal = mt5.history_deals_get(position=sl_pos)[-1]
    assert sl_deal.reason == mt5.DEAL_REASON_SL and sl_deal.comment == "[sl 1.09500]"
    (filled,) = mt5.positions_get(ticket=limit)
    assert filled.price_open == 1.096 and mt5.history_orders_get(ticket=limit)[0].state == mt5.ORDER_STATE_FILLED


def test_close_by_through_client(mt5, market):
    a = deal(mt5, volume=0.2).order
    b = deal(mt5, order_type=1, volume=0.1).order
    res = mt5.order_send({"action": mt5.TRADE_ACTION_CLOSE_BY, "position": a, "position_by": b})
    assert res.retcode == 10009
    assert [d.entry for d in mt5.history_deals_get(ticket=res.order)] == [mt5.DEAL_ENTRY_OUT_BY] * 2
    assert mt5.positions_get(ticket=a)[0].volume == 0.1


def test_auto_trading_api_disabled(mt5, market):
    market.call("set_terminal", tradeapi_disabled=True)
    assert mt5.order_send({"action": 1, "symbol": "EURUSD", "volume": 0.1, "type": 0}) is None
    assert mt5.last_error() == (-8, "Auto-Trading using Python API disabled in Terminal")


def test_disconnected_terminal_info(mt5, market):
    market.trade_server(False)
    assert mt5.terminal_info().connected is False
    market.trade_server(True)
    assert mt5.terminal_info().connected is True


def test_market_closed_no_prices_netting_and_stop_out(sim_factory, tmp_path):
    import mt5sim as mt5
    from mt5sim.control import Control

    config = tmp_path / "broker.yaml"
    config.write_text(
        "server: {always_open: false}\n"
        "accounts:\n"
        "  - {login: 9001, password: n, margin_mode: netting}\n"
        "  - {login: 9002, password: s, balance: 1000, margin_so_so: 50}\n"
        "symbols:\n"
        "  - {name: DEADQ, template: forex, no_prices: true, sessions: always, currency_base: ZZZ, currency_profit: USD}\n")
    server = sim_factory("rules", config=config)
    assert mt5.initialize(server.address, login=next_demo_login(), password="x")
    try:
        with Control(server.address) as ctl:
            ctl.set_clock(at=utc(2024, 3, 16, 12, 0))                       # Saturday
            assert deal(mt5).retcode == 10018
            assert deal(mt5, symbol="DEADQ").retcode == 10021
            assert deal(mt5, symbol="BTCUSD", volume=0.01).retcode == 10009
            ctl.set_clock(at=utc(2024, 3, 13, 12, 0))                       # Wednesday
            ctl.freeze_feed()
            ctl.set_price("EURUSD", 1.1, 1.1001)
            assert mt5.login(9001, password="n")
            first = deal(mt5, volume=0.2).order
            reversal = deal(mt5, order_type=1, volume=0.5)
            (pos,) = mt5.positions_get()
            assert pos.identifier == first and pos.ticket == reversal.order and pos.volume == 0.3
            assert mt5.history_deals_get(ticket=reversal.order)[0].entry == mt5.DEAL_ENTRY_INOUT
            assert mt5.login(9002, password="s")
            so_pos = deal(mt5, volume=0.8).order
            ctl.set_price("EURUSD", 1.093, 1.0931)
            assert mt5.positions_get(ticket=so_pos) == ()
            assert mt5.history_deals_get(position=so_pos)[-1].reason == mt5.DEAL_REASON_SO
    finally:
        mt5.shutdown()
