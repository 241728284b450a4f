"""The 32 functions against a real terminal process: return types, failure values, last_error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from mt5sim.structs import RATES_DTYPE, TICKS_DTYPE
from mt5sim.tests.conftest import next_demo_login

SUCCESS = (1, "Success")
NOT_FOUND = (-4, "Terminal: Not found")


def market_request(mt5, symbol="EURUSD", order_type=None, volume=0.1, **extra):
    tick = mt5.symbol_info_tick(symbol)
    assert tick is not None, mt5.last_error()
    order_type = mt5.ORDER_TYPE_BUY if order_type is None else order_type
    request = {
        "action": mt5.TRADE_ACTION_DEAL, "symbol": symbol, "volume": volume, "type": order_type,
        "price": tick.ask if order_type == mt5.ORDER_TYPE_BUY else tick.bid, "deviation": 20,
        "magic": 234000, "comment": "surface test", "type_time": mt5.ORDER_TIME_GTC,
        "type_filling": mt5.ORDER_FILLING_IOC,
    }
    request.update(extra)
    return request


def test_version_and_terminal_info(mt5):
    version = mt5.version()
    assert type(version) is tuple and len(version) == 3
    assert version[0] == 500 and isinstance(version[1], int) and isinstance(version[2], str)
    info = mt5.terminal_info()
    assert type(info) is mt5.TerminalInfo
    assert info.connected is True and isinstance(info.build, int)
    assert mt5.last_error() == SUCCESS


def test_account_info_of_a_new_demo_login(mt5):
    account = mt5.account_info()
    assert type(account) is mt5.AccountInfo
    assert account.balance == 10000.0 and account.leverage == 100 and account.currency == "USD"
    assert account.margin_mode == mt5.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
    assert account.trade_mode == mt5.ACCOUNT_TRADE_MODE_DEMO
    assert isinstance(account.trade_allowed, bool)


def test_symbols(mt5, sim_control):
    sim_control.freeze_feed()  # prices must not move between the two symbols_get calls compared below
    total = mt5.symbols_total()
    assert isinstance(total, int) and total > 0
    every = mt5.symbols_get()
    assert type(every) is tuple and len(every) == total
    assert all(type(s) is mt5.SymbolInfo for s in every)
    usd = mt5.symbols_get("*USD*")
    assert usd and all("USD" in s.name for s in usd)
    assert mt5.symbols_get(group="*,!*USD*") == tuple(s for s in every if "USD" not in s.name)
    assert mt5.symbols_get("NOSUCH*") == ()
    info = mt5.symbol_info("EURUSD")
    assert type(info) is mt5.SymbolInfo and info.name == "EURUSD" and info.point > 0
    assert mt5.last_error() == SUCCESS


def test_unknown_symbol_is_not_found_and_the_next_call_resets_the_error(mt5):
    assert mt5.symbol_info("NOPE") is None
    assert mt5.last_error() == NOT_FOUND
    assert mt5.symbol_info_tick("NOPE") is None
    assert mt5.last_error() == NOT_FOUND
    assert mt5.version() is not None
    assert mt5.last_error() == SUCCESS


def test_tick_and_symbol_select(mt5):
    tick = mt5.symbol_info_tick("EURUSD")
    assert type(tick) is mt5.Tick
    assert 0 < tick.bid < tick.ask and isinstance(tick.time_msc, int) and tick.time_msc // 1000 == tick.time
    hidden = [s.name for s in mt5.symbols_get() if not s.select]
    if not hidden:
        pytest.skip("the default configuration hides no symbol")
    name = hidden[0]
    assert mt5.symbol_info_tick(name) is None and mt5.last_error() == NOT_FOUND
    assert mt5.symbol_select(name, True) is True
    assert mt5.symbol_info_tick(name) is not None
    assert mt5.symbol_info(name).select is True
    assert mt5.symbol_select(name, False) is True


def test_market_book(mt5):
    assert mt5.market_book_add("EURUSD") is True
    book = mt5.market_book_get("EURUSD")
    assert type(book) is tuple and book and all(type(row) is mt5.BookInfo for row in book)
    assert mt5.market_book_release("EURUSD") is True
    assert mt5.market_book_add("NOPE") is False


def test_rates_and_ticks_are_numpy_arrays_with_the_real_dtypes(mt5):
    rates = mt5.copy_rates_from_pos("EURUSD", mt5.TIMEFRAME_M1, 0, 10)
    assert isinstance(rates, np.ndarray) and rates.dtype == RATES_DTYPE and len(rates) == 10
    assert list(rates["time"]) == sorted(rates["time"]) and rates.flags.owndata and rates.flags.writeable
    now = datetime.now(UTC)
    assert len(mt5.copy_rates_from("EURUSD", mt5.TIMEFRAME_H1, now, 5)) == 5
    ranged = mt5.copy_rates_range("EURUSD", mt5.TIMEFRAME_M5, now - timedelta(hours=2), now)
    assert ranged.dtype == RATES_DTYPE and len(ranged) > 0
    ticks = mt5.copy_ticks_from("EURUSD", now - timedelta(minutes=30), 50, mt5.COPY_TICKS_ALL)
    assert isinstance(ticks, np.ndarray) and ticks.dtype == TICKS_DTYPE and len(ticks) > 0
    ticks = mt5.copy_ticks_range("EURUSD", now - timedelta(minutes=30), now, mt5.COPY_TICKS_INFO)
    assert ticks.dtype == TICKS_DTYPE
    assert mt5.last_error() == SUCCESS


def test_history_data_failures(mt5):
    now = datetime.now(UTC)
    assert mt5.copy_rates_from("NOPE", mt5.TIMEFRAME_M1, now, 10) is None
    assert mt5.last_error() == (-1, "Terminal: Call failed")
    assert mt5.copy_ticks_range("NOPE", now - timedelta(hours=1), now, mt5.COPY_TICKS_ALL) is None
    assert mt5.last_error() == NOT_FOUND


def test_calculations(mt5):
    margin = mt5.order_calc_margin(mt5.ORDER_TYPE_BUY, "EURUSD", 0.1, 1.1)
    assert isinstance(margin, float) and margin == pytest.approx(110.0, rel=0.01)
    profit = mt5.order_calc_profit(mt5.ORDER_TYPE_BUY, "EURUSD", 1.0, 1.1, 1.103)
    assert profit == pytest.approx(300.0, abs=0.01)
    assert mt5.order_calc_profit(mt5.ORDER_TYPE_SELL, "EURUSD", 1, 1.1, 1.103) == pytest.approx(-300.0, abs=0.01)


def test_order_check(mt5):
    request = market_request(mt5)
    result = mt5.order_check(request)
    assert type(result) is mt5.OrderCheckResult
    assert result.retcode == 0 and result.comment == "Done"
    assert type(result.request) is mt5.TradeRequest and result.request.symbol == "EURUSD"
    assert result.request.volume == 0.1 and result.request.magic == 234000
    assert mt5.order_check(**request).retcode == 0


def test_open_and_close_a_position_in_both_call_forms(mt5):
    opened = mt5.order_send(market_request(mt5))
    assert type(opened) is mt5.OrderSendResult, mt5.last_error()
    assert opened.retcode == mt5.TRADE_RETCODE_DONE, opened
    assert opened.deal > 0 and opened.order > 0 and opened.volume == 0.1
    assert type(opened.request) is mt5.TradeRequest and opened.request.comment == "surface test"
    positions = mt5.positions_get(ticket=opened.order)
    assert len(positions) == 1 and type(positions[0]) is mt5.TradePosition
    position = positions[0]
    assert position.identifier == opened.order and position.magic == 234000
    assert position.reason == mt5.POSITION_REASON_EXPERT
    assert mt5.positions_total() >= 1
    assert opened.order in [p.ticket for p in mt5.positions_get(symbol="EURUSD")]
    assert opened.order in [p.ticket for p in mt5.positions_get(group="*EUR*", unknown_keyword=1)]

    closed = mt5.order_send(**market_request(mt5, order_type=mt5.ORDER_TYPE_SELL, position=opened.order))
    assert closed.retcode == mt5.TRADE_RETCODE_DONE, closed
    assert mt5.positions_get(ticket=opened.order) == ()
    deals = mt5.history_deals_get(position=opened.order)
    assert [d.entry for d in deals] == [mt5.DEAL_ENTRY_IN, mt5.DEAL_ENTRY_OUT]
    assert all(type(d) is mt5.TradeDeal for d in deals)
    assert mt5.history_deals_get(ticket=opened.order)[0].ticket == opened.deal
    orders = mt5.history_orders_get(position=opened.order)
    assert len(orders) == 2 and all(type(o) is mt5.TradeOrder for o in orders)
    day_ago = datetime.now(UTC) - timedelta(days=1)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert mt5.history_deals_total(day_ago, tomorrow) >= 2
    assert mt5.history_orders_total(day_ago, tomorrow) >= 2
    in_window = mt5.history_deals_get(day_ago, tomorrow, group="*EUR*")
    assert {opened.deal, closed.deal} <= {d.ticket for d in in_window}
    assert mt5.history_orders_get(day_ago, tomorrow)


def test_int_volume_is_refused_by_the_module(mt5):
    request = market_request(mt5, volume=1)
    assert mt5.order_send(request) is None
    assert mt5.last_error() == (-2, 'Invalid "volume" argument')
    assert mt5.order_check(request) is None


def test_pending_order_lifecycle(mt5):
    tick = mt5.symbol_info_tick("EURUSD")
    request = {"action": mt5.TRADE_ACTION_PENDING, "symbol": "EURUSD", "volume": 0.1,
               "type": mt5.ORDER_TYPE_BUY_LIMIT, "price": round(tick.ask - 0.01, 5),
               "type_time": mt5.ORDER_TIME_GTC, "type_filling": mt5.ORDER_FILLING_RETURN, "comment": "pending"}
    placed = mt5.order_send(request)
    assert placed.retcode == mt5.TRADE_RETCODE_DONE, placed
    orders = mt5.orders_get(ticket=placed.order)
    assert len(orders) == 1 and type(orders[0]) is mt5.TradeOrder and orders[0].comment == "pending"
    assert mt5.orders_total() >= 1
    removed = mt5.order_send({"action": mt5.TRADE_ACTION_REMOVE, "order": placed.order})
    assert removed.retcode == mt5.TRADE_RETCODE_DONE, removed
    assert mt5.orders_get(ticket=placed.order) == ()
    assert mt5.history_orders_get(ticket=placed.order)[0].state == mt5.ORDER_STATE_CANCELED


def test_buy_sell_close_helpers(mt5):
    bought = mt5.Buy("EURUSD", 0.1)
    assert bought.retcode == mt5.TRADE_RETCODE_DONE, bought
    assert bought.request.type_filling == mt5.ORDER_FILLING_FOK and bought.request.deviation == 10
    sold = mt5.Sell("EURUSD", 0.2, comment="helper")
    assert sold.retcode == mt5.TRADE_RETCODE_DONE, sold
    assert mt5.Close("EURUSD", ticket=bought.order) is True
    assert mt5.positions_get(ticket=bought.order) == ()
    assert mt5.Close("EURUSD") is True
    assert mt5.positions_get(symbol="EURUSD") == ()
    assert mt5.Close("EURUSD") is False  # nothing left to close


def test_requote_fault_and_helper_retry(mt5, sim_control):
    sim_control.requote(1)
    result = mt5.order_send(market_request(mt5))
    assert result.retcode == mt5.TRADE_RETCODE_REQUOTE
    sim_control.requote(2)
    retried = mt5.Buy("EURUSD", 0.1)  # retries at the fresh ask while requoted
    assert retried.retcode == mt5.TRADE_RETCODE_DONE
    mt5.Close("EURUSD", ticket=retried.order)


def test_set_price_through_control(mt5, sim_control):
    sim_control.freeze_feed("EURUSD")
    sim_control.set_price("EURUSD", 1.2345, 1.2347)
    tick = mt5.symbol_info_tick("EURUSD")
    assert (tick.bid, tick.ask) == (1.2345, 1.2347)
    assert mt5.symbol_info("EURUSD").bid == 1.2345


def test_trade_server_disconnect(mt5, sim_control):
    sim_control.trade_server(connected=False)
    try:
        assert mt5.terminal_info().connected is False
        result = mt5.order_send(market_request(mt5))
        assert result.retcode == mt5.TRADE_RETCODE_CONNECTION
    finally:
        sim_control.trade_server(connected=True)
    assert mt5.terminal_info().connected is True


def test_login_switches_account_and_wrong_password_is_refused(mt5, sim_server):
    other = next_demo_login()
    assert mt5.login(other, password="second", server="MT5Sim-Demo") is True
    assert mt5.account_info().login == other
    mt5.shutdown()
    assert mt5.initialize(sim_server, login=other, password="not-the-same") is False
    assert mt5.last_error() == (-6, "Terminal: Authorization failed")
    assert mt5.version() is None and mt5.last_error() == (-10004, "No IPC connection")
    assert mt5.initialize(sim_server, login=other, password="second") is True
    assert mt5.account_info().login == other


def test_initialize_with_a_terminal_path_uses_the_environment_address(mt5, sim_server, monkeypatch):
    mt5.shutdown()
    monkeypatch.setenv("MT5SIM_ADDRESS", sim_server)
    assert mt5.initialize(r"C:\Program Files\MetaTrader 5\terminal64.exe") is True
    assert mt5.terminal_info() is not None
    mt5.shutdown()
    assert mt5.initialize() is True
    assert mt5.version() is not None


def test_shutdown_then_calls_fail(mt5):
    assert mt5.shutdown() is True
    assert mt5.account_info() is None
    assert mt5.last_error() == (-10004, "No IPC connection")
    assert mt5.positions_get() is None


def test_repeated_round_trips_on_one_connection(mt5):
    # Speed is measured by bench/mt5sim_bench.py, not asserted here.
    ticks = [mt5.symbol_info_tick("EURUSD") for _ in range(500)]
    assert all(t is not None and t.ask > t.bid for t in ticks)
    assert mt5.last_error() == SUCCESS
