"""A broker like a real one (issue #12): the symbol set, execution profiles, commissions, rollover swaps,
partial fills against the market book, retcodes 10039-10045 and maxbars, against the real Engine.

Every expected figure is computed by hand in the comment next to it. The clock is pinned and moved with
``set_clock`` (no sleeps); prices are frozen and set with ``set_price``.
"""

from __future__ import annotations

import calendar
import datetime as dt

import pytest

from mt5sim.engine import _const as C
from mt5sim.engine.fields import SYMBOL_INFO_FIELDS
from mt5sim.engine.testing import WEDNESDAY_NOON_UTC, CallFailed, Harness

DAY = 86400
C_NAME = SYMBOL_INFO_FIELDS.index("name")
FOREX_28 = [
    "EURUSD", "GBPUSD", "USDJPY", "USDCHF", "USDCAD", "AUDUSD", "NZDUSD",
    "EURGBP", "EURJPY", "EURCHF", "EURCAD", "EURAUD", "EURNZD",
    "GBPJPY", "GBPCHF", "GBPCAD", "GBPAUD", "GBPNZD",
    "AUDJPY", "AUDCHF", "AUDCAD", "AUDNZD",
    "NZDJPY", "NZDCHF", "NZDCAD",
    "CADJPY", "CADCHF",
    "CHFJPY",
]
ESFUT = {"name": "ESFUT", "trade_calc_mode": 1, "digits": 2, "trade_tick_size": 0.25, "trade_tick_value": 12.5,
         "margin_initial": 1000.0, "trade_contract_size": 50.0, "currency_base": "USD", "currency_profit": "USD",
         "currency_margin": "USD", "base_price": 5000.0, "sessions": "always", "volume_min": 1.0, "volume_step": 1.0,
         "volume_max": 100.0, "filling_mode": 3, "trade_exemode": 3, "spread_points": 25, "volatility": 0.01}


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def make(config: dict) -> Harness:
    return Harness(config)


def set_prices(h: Harness, **quotes: tuple[float, float]) -> None:
    for name, (bid, ask) in quotes.items():
        h.set_price(name, bid, ask)


def at_utc(*args: int) -> int:
    return calendar.timegm(dt.datetime(*args).timetuple())


# ================================================================ symbols
def test_default_broker_has_real_symbols(h):
    rows = h.call("symbols_get", group=None)
    names = {r[C_NAME] for r in rows}
    assert len(names) >= 60
    assert set(FOREX_28) <= names
    assert {"USDTRY", "USDZAR", "USDMXN", "XAUUSD", "XAGUSD", "XBRUSD", "XTIUSD", "US500", "DE40", "JP225",
            "BTCUSD", "ETHUSD", "AAPL", "NVDA"} <= names
    euraud = h.symbol("EURAUD")
    assert euraud["path"] == "Forex\\Minors\\EURAUD" and euraud["description"] == "Euro vs Australian Dollar"
    assert euraud["currency_base"] == "EUR" and euraud["currency_profit"] == "AUD" and euraud["digits"] == 5
    assert euraud["select"] is False and euraud["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_INSTANT
    assert euraud["swap_mode"] == C.SYMBOL_SWAP_MODE_POINTS and euraud["swap_rollover3days"] == C.DAY_OF_WEEK_WEDNESDAY
    assert euraud["swap_long"] == -10.4 and euraud["swap_short"] == 2.3
    assert h.symbol("EURUSD")["path"] == "Forex\\Majors\\EURUSD"
    assert h.symbol("USDTRY")["path"] == "Forex\\Exotics\\USDTRY"
    aapl = h.symbol("AAPL")
    assert aapl["path"] == "Stocks\\US\\AAPL" and aapl["description"] == "Apple Inc." and aapl["volume_min"] == 1.0
    assert aapl["trade_calc_mode"] == C.SYMBOL_CALC_MODE_CFD and aapl["currency_profit"] == "USD"
    us500 = h.symbol("US500")
    assert us500["swap_mode"] == C.SYMBOL_SWAP_MODE_INTEREST_CURRENT and us500["swap_rollover3days"] == 5
    # symbols that existed before keep their properties (the bridge's tests rely on them)
    eurusd = h.symbol("EURUSD")
    assert eurusd["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_MARKET and eurusd["filling_mode"] == 3
    assert eurusd["digits"] == 5 and eurusd["volume_min"] == 0.01 and eurusd["select"] is True
    assert h.symbol("USDJPY")["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_MARKET
    assert h.symbol("BTCUSD")["select"] is True and h.symbol("EURJPY")["filling_mode"] == 1


def test_cross_currency_profit_and_margin_conversion(h):
    set_prices(h, EURGBP=(0.85000, 0.85010), GBPUSD=(1.27000, 1.27010), EURUSD=(1.10000, 1.10010),
               USDJPY=(150.000, 150.020), USDCAD=(1.36000, 1.36020), CADJPY=(110.000, 110.020))
    # EURGBP profit is in GBP: 0.00100 * 100,000 = 100 GBP, times GBPUSD bid 1.27000 = 127.00 USD
    assert h.call("order_calc_profit", action=0, symbol="EURGBP", volume=1.0, price_open=0.85000,
                  price_close=0.85100) == 127.00
    # EURGBP margin is in EUR: 100,000 / leverage 100 = 1,000 EUR, times EURUSD bid 1.10000 = 1,100.00 USD
    assert h.call("order_calc_margin", action=0, symbol="EURGBP", volume=1.0, price=0.85010) == 1100.00
    # CADJPY profit in JPY through USDJPY (inverse, ask): 0.500 * 100,000 = 50,000 JPY / 150.020 = 333.2889 -> 333.29
    assert h.call("order_calc_profit", action=0, symbol="CADJPY", volume=1.0, price_open=110.000,
                  price_close=110.500) == 333.29
    # CADJPY margin in CAD through USDCAD (inverse, ask): 1,000 CAD / 1.36020 = 735.1860 -> 735.19
    assert h.call("order_calc_margin", action=0, symbol="CADJPY", volume=1.0, price=110.020) == 735.19
    # a live position: buy 1 EURGBP at ask 0.85010, bid moves to 0.85110: 100 GBP = 127.00 USD
    h.call("symbol_select", symbol="EURGBP", enable=True)
    res = h.buy("EURGBP", 1.0, price=0.85010, deviation=10)
    assert res["retcode"] == 10009
    h.set_price("EURGBP", 0.85110, 0.85120)
    (pos,) = h.positions(symbol="EURGBP")
    assert pos["profit"] == 127.00
    assert h.account()["margin"] == 1100.00 and h.account()["profit"] == 127.00


# ================================================================ execution profiles
def test_instant_profile_is_the_default(h):
    set_prices(h, EURAUD=(1.65500, 1.65524), USDJPY=(150.000, 150.012))
    # Forex symbol added by the profile: instant execution, price + deviation, RETURN accepted
    assert h.buy("EURAUD", 0.1, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10015          # no price
    requote = h.buy("EURAUD", 0.1, price=1.65400, deviation=20, type_filling=C.ORDER_FILLING_RETURN)
    assert requote["retcode"] == 10004 and requote["bid"] == 1.65500 and requote["ask"] == 1.65524
    done = h.buy("EURAUD", 0.1, price=1.65520, deviation=20, type_filling=C.ORDER_FILLING_RETURN)
    assert done["retcode"] == 10009 and done["price"] == 1.65524
    # USDJPY (the MetaQuotes example): RETURN accepted on a market order
    assert h.buy("USDJPY", 0.1, price=150.012, deviation=20, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10009
    # the symbols that predate the profiles keep market execution with FOK/IOC only
    assert h.buy("EURUSD", 0.1, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10030


def test_market_profile_refuses_return_with_10030():
    h = make({"server": {"execution": "market"}})
    try:
        set_prices(h, EURAUD=(1.65500, 1.65524), AUDCAD=(0.89100, 0.89122))
        euraud = h.symbol("EURAUD")
        assert euraud["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_MARKET and euraud["filling_mode"] == 3
        assert h.buy("EURAUD", 0.1, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10030
        assert h.sell("AUDCAD", 0.1, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10030
        fok = h.buy("EURAUD", 0.1, type_filling=C.ORDER_FILLING_FOK)          # no price needed: market execution
        assert fok["retcode"] == 10009 and fok["price"] == 1.65524
        assert h.buy("EURAUD", 0.1, type_filling=C.ORDER_FILLING_IOC)["retcode"] == 10009
        # pending orders keep RETURN
        assert h.send(action=5, symbol="EURAUD", volume=0.1, type=2, price=1.6500,
                      type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10009
    finally:
        h.close()


def test_execution_profile_per_symbol():
    h = make({"symbols": [{"name": "EURCAD", "execution": "market"}]})
    try:
        set_prices(h, EURCAD=(1.47500, 1.47522), EURNZD=(1.79300, 1.79335))
        assert h.symbol("EURCAD")["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_MARKET
        assert h.buy("EURCAD", 0.1, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10030
        assert h.symbol("EURNZD")["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_INSTANT
        assert h.buy("EURNZD", 0.1, price=1.79335, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10009
    finally:
        h.close()


# ================================================================ commissions
def test_commissions_per_lot_and_per_deal():
    h = make({"server": {"commission": {"per_lot": 1.0, "charge": "both"}},
              "symbols": [{"name": "EURUSD", "commission": {"per_lot": 3.5, "charge": "both"}},
                          {"name": "GBPUSD", "commission": {"per_deal": 1.25, "charge": "exit"}}]})
    try:
        set_prices(h, EURUSD=(1.10000, 1.10010), GBPUSD=(1.27000, 1.27010), USDCHF=(0.88500, 0.88515))
        start = h.account()["balance"]
        # EURUSD 2 lots, 3.50 per lot each way: -7.00 at entry
        res = h.buy("EURUSD", 2.0)
        (entry,) = h.deals(ticket=res["order"])
        assert entry["commission"] == -7.00 and h.account()["balance"] == start - 7.00
        h.set_price("EURUSD", 1.10110, 1.10120)
        close = h.sell("EURUSD", 2.0, position=res["order"])
        (out,) = h.deals(ticket=close["order"])
        # exit: -7.00 commission, profit (1.10110 - 1.10010) * 200,000 = 200.00
        assert out["commission"] == -7.00 and out["profit"] == 200.00
        assert h.account()["balance"] == start - 14.00 + 200.00
        # GBPUSD: 1.25 per deal, at exit only
        res = h.buy("GBPUSD", 0.3)
        assert h.deals(ticket=res["order"])[0]["commission"] == 0.0
        close = h.sell("GBPUSD", 0.3, position=res["order"])
        (out,) = h.deals(ticket=close["order"])
        # bought at ask 1.27010, sold at bid 1.27000: -0.00010 * 30,000 = -3.00
        assert out["commission"] == -1.25 and out["profit"] == -3.00
        # USDCHF has no commission of its own: the broker's 1.00 per lot -> 0.5 lot = -0.50
        res = h.buy("USDCHF", 0.5)
        assert h.deals(ticket=res["order"])[0]["commission"] == -0.50
        assert h.account()["balance"] == round(start - 14.00 + 200.00 - 3.00 - 1.25 - 0.50, 2)
    finally:
        h.close()


# ================================================================ swaps at rollover
def test_swaps_points_mode_triple_day_and_weekend(h):
    set_prices(h, EURUSD=(1.10000, 1.10010))
    long_ = h.buy("EURUSD", 1.0)["order"]
    short = h.sell("EURUSD", 1.0)["order"]
    balance = h.account()["balance"]
    # Wednesday 14:00 broker -> Thursday 14:00: the Wednesday rollover, triple (swap_rollover3days = 3)
    h.ctl("set_clock", at=WEDNESDAY_NOON_UTC + DAY)
    # points: -7.2 * 0.00001 * 100,000 = -7.20 a night, x3 = -21.60; short 2.1 -> 2.10 x3 = 6.30
    assert h.positions(ticket=long_)[0]["swap"] == -21.60
    assert h.positions(ticket=short)[0]["swap"] == 6.30
    acct = h.account()
    assert acct["balance"] == balance                      # swaps stay in the positions until they close
    # profit = swaps -21.60 + 6.30 and the spread of each leg: long (1.10000 - 1.10010) * 100,000 = -10.00,
    # short (1.10000 - 1.10010) * 100,000 = -10.00 -> -35.30
    assert acct["profit"] == -35.30
    # Thursday -> Monday: Thursday and Friday nights (x1 each), no swap for Saturday and Sunday
    h.ctl("set_clock", at=WEDNESDAY_NOON_UTC + 5 * DAY)
    assert h.positions(ticket=long_)[0]["swap"] == -21.60 - 7.20 - 7.20
    assert h.positions(ticket=short)[0]["swap"] == 10.50
    # close: the deal carries the swap and the balance receives it with the profit
    close = h.sell("EURUSD", 1.0, position=long_)
    (out,) = h.deals(ticket=close["order"])
    assert out["swap"] == -36.00 and out["profit"] == -10.00
    assert h.account()["balance"] == round(balance - 36.00 - 10.00, 2)


def test_swaps_money_interest_and_jpy_conversion():
    h = make({"symbols": [{"name": "GBPUSD", "swap_mode": 4, "swap_long": -5.0, "swap_short": -2.5}]})
    try:
        set_prices(h, GBPUSD=(1.27000, 1.27010), US500=(5200.00, 5200.50), USDJPY=(150.000, 150.020))
        gbp = h.buy("GBPUSD", 0.3)["order"]
        spx = h.buy("US500", 1.0)["order"]
        jpy = h.buy("USDJPY", 1.0)["order"]
        h.ctl("set_clock", at=WEDNESDAY_NOON_UTC + DAY)    # the Wednesday rollover
        # money in the account currency: -5.00 * 0.3 lot = -1.50 a night, x3 on Wednesday = -4.50
        assert h.positions(ticket=gbp)[0]["swap"] == -4.50
        # interest of the current price, 360-day year: 5200.00 * 1 * (-5.5 %) / 360 = -0.79444 a night;
        # indices have their triple day on Friday, so Wednesday counts once: -0.79
        assert h.positions(ticket=spx)[0]["swap"] == -0.79
        # points in JPY converted at USDJPY ask: 14.6 * 0.001 * 100,000 = 1,460 JPY x3 / 150.020 = 29.196 -> 29.20
        assert h.positions(ticket=jpy)[0]["swap"] == 29.20
    finally:
        h.close()


# ================================================================ partial fills against the book
def test_partial_fills_fok_ioc_against_book_depth(h):
    set_prices(h, EURUSD=(1.10000, 1.10010))
    h.ctl("set_symbol", symbol="EURUSD", book_volume=1.0, ticks_bookdepth=2)     # 2 levels of 1 lot: 2 lots
    h.call("market_book_add", symbol="EURUSD")
    asks = [r for r in h.book("EURUSD") if r["type"] == C.BOOK_TYPE_SELL]
    assert [r["volume"] for r in asks] == [1, 1]
    fok = h.buy("EURUSD", 3.0, type_filling=C.ORDER_FILLING_FOK)
    assert fok["retcode"] == 10006 and fok["order"] == 0 and h.positions() == []
    ioc = h.buy("EURUSD", 3.0, type_filling=C.ORDER_FILLING_IOC)
    assert ioc["retcode"] == 10010 and ioc["comment"] == "Request executed partially" and ioc["volume"] == 2.0
    (pos,) = h.positions()
    assert pos["volume"] == 2.0 and pos["ticket"] == ioc["order"]
    (order,) = h.history_orders(ticket=ioc["order"])
    assert order["state"] == C.ORDER_STATE_CANCELED and order["volume_initial"] == 3.0
    assert order["volume_current"] == 1.0
    assert h.orders() == []
    assert h.buy("EURUSD", 2.0, type_filling=C.ORDER_FILLING_FOK)["retcode"] == 10009     # within the depth


def test_partial_fill_return_leaves_the_rest_as_an_order(h):
    set_prices(h, USDJPY=(150.000, 150.012))
    h.ctl("set_symbol", symbol="USDJPY", book_volume=1.0, ticks_bookdepth=2)
    res = h.buy("USDJPY", 3.0, type_filling=C.ORDER_FILLING_RETURN)
    assert res["retcode"] == 10010 and res["volume"] == 2.0 and res["price"] == 150.012
    (rest,) = h.orders()
    assert rest["ticket"] == res["order"] and rest["state"] == C.ORDER_STATE_PARTIAL
    assert rest["volume_initial"] == 3.0 and rest["volume_current"] == 1.0
    assert h.positions()[0]["volume"] == 2.0
    # the next tick brings liquidity: the rest fills into the same position
    h.set_price("USDJPY", 150.100, 150.112)
    assert h.orders() == []
    (pos,) = h.positions()
    # volume-weighted open price: (2 * 150.012 + 1 * 150.112) / 3 = 150.04533
    assert pos["volume"] == 3.0 and pos["ticket"] == res["order"] and pos["price_open"] == pytest.approx(150.04533, abs=1e-5)
    deals = h.deals(position=res["order"])
    assert [d["volume"] for d in deals] == [2.0, 1.0] and [d["price"] for d in deals] == [150.012, 150.112]
    (order,) = h.history_orders(ticket=res["order"])
    assert order["state"] == C.ORDER_STATE_FILLED and order["volume_current"] == 0.0


def test_default_depth_fills_normal_orders_in_full(h):
    set_prices(h, EURUSD=(1.10000, 1.10010))
    res = h.buy("EURUSD", 50.0, type_filling=C.ORDER_FILLING_FOK)
    assert res["retcode"] in (10009, 10019)        # fully filled, or refused for margin: never partial
    assert h.buy("EURUSD", 5.0, type_filling=C.ORDER_FILLING_IOC)["volume"] == 5.0


# ================================================================ retcodes 10039-10045
def test_10039_close_order_already_exists(h):
    set_prices(h, EURUSD=(1.10000, 1.10010))
    pos = h.buy("EURUSD", 0.1)["order"]
    placed = h.send(action=5, symbol="EURUSD", volume=0.1, type=C.ORDER_TYPE_SELL_LIMIT, price=1.10500,
                    position=pos, type_filling=C.ORDER_FILLING_RETURN)
    assert placed["retcode"] == 10009
    res = h.sell("EURUSD", 0.1, position=pos)
    assert res["retcode"] == 10039 and res["comment"] == "Close order already exists"
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=C.ORDER_TYPE_SELL_LIMIT, price=1.10600,
                  position=pos, type_filling=C.ORDER_FILLING_RETURN)["retcode"] == 10039
    assert h.send(action=8, order=placed["order"])["retcode"] == 10009          # remove the close order
    assert h.sell("EURUSD", 0.1, position=pos)["retcode"] == 10009


def test_10040_positions_limit(h):
    set_prices(h, EURUSD=(1.10000, 1.10010))
    h.ctl("set_account", limit_positions=2)
    first = h.buy("EURUSD", 0.1)["order"]
    assert h.buy("EURUSD", 0.1)["retcode"] == 10009
    third = h.buy("EURUSD", 0.1)
    assert third["retcode"] == 10040 and third["comment"] == "Positions limit reached"
    # hedging: pending orders count with the positions
    assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.09, type_filling=2)["retcode"] == 10040
    assert h.sell("EURUSD", 0.1, position=first)["retcode"] == 10009            # closing is always allowed
    assert h.buy("EURUSD", 0.1)["retcode"] == 10009


def test_10040_positions_limit_netting():
    h = make({"accounts": [{"login": 7001, "password": "n", "margin_mode": "netting", "limit_positions": 1}]})
    try:
        assert h.call("login", login=7001, password="n", server=None, timeout=None) is True
        set_prices(h, EURUSD=(1.10000, 1.10010), GBPUSD=(1.27000, 1.27010))
        assert h.buy("EURUSD", 0.1)["retcode"] == 10009
        assert h.buy("EURUSD", 0.1)["retcode"] == 10009                 # same symbol: the one position grows
        assert h.buy("GBPUSD", 0.1)["retcode"] == 10040
    finally:
        h.close()


def test_10041_pending_activation_rejected():
    h = make({"symbols": [ESFUT]})
    try:
        h.set_price("ESFUT", 5000.00, 5000.25)
        # exchange execution: a buy stop at or below the ask activates at once; 20 contracts need
        # 20 * 1,000 = 20,000 USD of margin, the account has 10,000: the activation is rejected
        res = h.send(action=5, symbol="ESFUT", volume=20.0, type=C.ORDER_TYPE_BUY_STOP, price=4999.00,
                     type_filling=C.ORDER_FILLING_RETURN)
        assert res["retcode"] == 10041 and res["comment"] == "Pending order activation rejected"
        assert h.orders() == [] and h.positions() == []
        (order,) = h.history_orders(ticket=res["order"])
        assert order["state"] == C.ORDER_STATE_CANCELED
        ok = h.send(action=5, symbol="ESFUT", volume=2.0, type=C.ORDER_TYPE_BUY_STOP, price=4999.00,
                    type_filling=C.ORDER_FILLING_RETURN)
        assert ok["retcode"] == 10009 and ok["deal"] > 0 and ok["price"] == 5000.25
        assert h.positions()[0]["volume"] == 2.0
    finally:
        h.close()


@pytest.mark.parametrize(("trade_mode", "side", "retcode"), [(1, "sell", 10042), (2, "buy", 10043), (3, "buy", 10044)])
def test_10042_10043_10044_symbol_trade_modes(h, trade_mode, side, retcode):
    set_prices(h, EURUSD=(1.10000, 1.10010))
    held = h.buy("EURUSD", 0.1)["order"] if trade_mode != 2 else h.sell("EURUSD", 0.1)["order"]
    h.ctl("set_symbol", symbol="EURUSD", trade_mode=trade_mode)
    assert getattr(h, side)("EURUSD", 0.1)["retcode"] == retcode
    closer = h.sell if trade_mode != 2 else h.buy
    assert closer("EURUSD", 0.1, position=held)["retcode"] == 10009            # closing stays allowed


def test_10045_fifo_close(h):
    set_prices(h, EURUSD=(1.10000, 1.10010))
    h.ctl("set_account", fifo_close=True)
    older = h.buy("EURUSD", 0.1)["order"]
    h.ctl("set_clock", at=WEDNESDAY_NOON_UTC + 1)
    newer = h.buy("EURUSD", 0.1)["order"]
    res = h.sell("EURUSD", 0.1, position=newer)
    assert res["retcode"] == 10045 and res["comment"] == "FIFO close rule"
    assert h.sell("EURUSD", 0.1, position=older)["retcode"] == 10009
    assert h.sell("EURUSD", 0.1, position=newer)["retcode"] == 10009


# ================================================================ maxbars
def test_maxbars_default_refuses_an_old_range_and_unlimited_serves_it(h):
    frm, to = at_utc(2020, 1, 10), at_utc(2020, 1, 11, 13)
    assert h.terminal()["maxbars"] == 100000
    assert h.err("copy_rates_range", symbol="USDJPY", timeframe=C.TIMEFRAME_M5, date_from=frm,
                 date_to=to) == (-1, "Terminal: Call failed")
    wide = make({"terminal": {"maxbars": "unlimited"}})
    try:
        assert wide.terminal()["maxbars"] == 2147483647
        rates = wide.call("copy_rates_range", symbol="USDJPY", timeframe=C.TIMEFRAME_M5, date_from=frm, date_to=to)
        # every M5 bar from Friday 2020-01-10 00:00 to Saturday 13:00 (always_open: true): 37 h * 12 + 1 = 445
        assert len(rates) == 445 and rates["time"][0] == frm and rates["time"][-1] == to
    finally:
        wide.close()


def test_maxbars_small_limit_caps_rates():
    h = make({"terminal": {"maxbars": 5000}})
    try:
        assert len(h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=C.TIMEFRAME_M1, start_pos=0,
                          count=5000)) == 5000
        with pytest.raises(CallFailed) as failed:
            h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=C.TIMEFRAME_M1, start_pos=0, count=5001)
        assert failed.value.err == (-1, "Terminal: Call failed")
    finally:
        h.close()


def test_swaps_survive_a_restart_and_are_not_charged_twice(tmp_path):
    state = str(tmp_path / "state")
    h = Harness(None, state)
    try:
        h.set_price("EURUSD", 1.10000, 1.10010)
        ticket = h.buy("EURUSD", 1.0)["order"]
        h.ctl("set_clock", at=WEDNESDAY_NOON_UTC + 2 * DAY)       # Wednesday (x3) and Thursday nights
        assert h.positions(ticket=ticket)[0]["swap"] == -28.80    # -7.20 * 4
    finally:
        h.close()
    again = Harness(None, state, pin_at=WEDNESDAY_NOON_UTC + 2 * DAY)
    try:
        assert again.positions(ticket=ticket)[0]["swap"] == -28.80
        again.ctl("set_clock", at=WEDNESDAY_NOON_UTC + 2 * DAY + 3600)   # same broker day: nothing more
        assert again.positions(ticket=ticket)[0]["swap"] == -28.80
    finally:
        again.close()
