"""Engine: accounts and login, Market Watch, symbols, market book, price feed, persistence, control."""

from __future__ import annotations

import calendar
import datetime as dt
import time

import numpy as np
import pytest

from mt5sim.engine import Engine, _const as C
from mt5sim.engine.fields import SYMBOL_INFO_FIELDS
from mt5sim.engine.journal import StateDirLocked
from mt5sim.engine.testing import WEDNESDAY_NOON_UTC, CallFailed, Harness, request

OFFSET = 7200   # default server offset (2 h)


def utc(*args: int) -> int:
    return calendar.timegm(dt.datetime(*args).timetuple())


@pytest.fixture
def h(tmp_path):
    harness = Harness(None, str(tmp_path / "state"))
    yield harness
    harness.close()


# ================================================================ accounts and login
def test_new_demo_account_defaults(h):
    acct = h.account()
    assert acct["login"] == 5550001 and acct["currency"] == "USD" and acct["balance"] == 10000.0
    assert acct["leverage"] == 100 and acct["margin_mode"] == C.ACCOUNT_MARGIN_MODE_RETAIL_HEDGING
    assert acct["margin_so_call"] == 50.0 and acct["margin_so_so"] == 30.0 and acct["trade_mode"] == 0
    assert acct["equity"] == 10000.0 and acct["margin"] == 0.0 and acct["margin_level"] == 0.0
    assert acct["trade_allowed"] is True and acct["server"] == "MT5Sim-Demo"


def test_password_is_remembered(h):
    assert h.err("login", login=5550001, password="wrong", server=None, timeout=None) == (
        -6, "Terminal: Authorization failed")
    assert h.call("login", login=5550001, password="pw", server=None, timeout=None) is True
    assert h.call("login", login=5550001, password=None, server=None, timeout=None) is True  # saved password
    assert h.call("login", login=777, password="x", server="Any-Server", timeout=None) is True
    assert h.account()["login"] == 777 and h.account()["server"] == "Any-Server"


def test_calls_before_initialize_and_after_shutdown(h):
    other = h.engine.attach()
    assert h.engine.call(other, "account_info", {}) == ("err", (-10004, "No IPC connection"))
    assert h.call("shutdown") is True
    assert h.engine.call(h.sess, "positions_total", {}) == ("err", (-10004, "No IPC connection"))


def test_sessions_share_the_logged_in_account(h):
    s2 = h.engine.attach()
    assert h.engine.call(s2, "initialize", {"login": None}) == ("ok", True)
    assert h.engine.call(s2, "account_info", {})[1][0] == 5550001      # same terminal, same account
    assert h.engine.call(s2, "login", {"login": 4242, "password": "p"}) == ("ok", True)
    assert h.account()["login"] == 4242
    h.engine.detach(s2)
    assert h.account()["login"] == 4242                                # detaching loses nothing


def test_initialize_without_login_uses_default_account(tmp_path):
    h = Harness(None, None, login=None)
    try:
        assert h.call("initialize", login=None) is True
        assert h.account()["login"] == 10000000
    finally:
        h.close()


def test_configured_accounts_servers_and_unknown_logins():
    cfg = {
        "server": {"allow_unknown_logins": False, "servers": ["Broker-Live", "Broker-Demo"]},
        "accounts": [{"login": 81, "password": "s3", "margin_mode": "netting", "currency": "EUR", "balance": 2500,
                      "leverage": 50, "name": "Jane"}],
    }
    h = Harness(cfg, None, login=None)
    try:
        assert h.err("initialize", login=99, password="x", server="Broker-Demo") == (-6, "Terminal: Authorization failed")
        assert h.err("initialize", login=81, password="s3", server="Elsewhere")[0] == -6
        assert h.err("initialize", login=81, password="bad", server="Broker-Demo")[0] == -6
        assert h.call("initialize", login=81, password="s3", server="Broker-Demo") is True
        acct = h.account()
        assert (acct["currency"], acct["balance"], acct["leverage"], acct["margin_mode"], acct["name"]) == (
            "EUR", 2500.0, 50, C.ACCOUNT_MARGIN_MODE_RETAIL_NETTING, "Jane")
    finally:
        h.close()


def test_version_and_terminal_info():
    h = Harness({"terminal": {"maxbars": 5000, "company": "ACME", "name": "ACME MT5"}}, None)
    try:
        ver = h.call("version")
        assert ver[0] == 500 and isinstance(ver[1], int) and isinstance(ver[2], str)
        t = h.terminal()
        assert t["maxbars"] == 5000 and t["company"] == "ACME" and t["name"] == "ACME MT5"
        assert t["connected"] is True and t["trade_allowed"] is True and t["tradeapi_disabled"] is False
    finally:
        h.close()


# ================================================================ symbols and Market Watch
def test_symbols_and_groups(h):
    total = h.call("symbols_total")
    assert total == len(h.call("symbols_get", group=None)) >= 15
    name_at = SYMBOL_INFO_FIELDS.index("name")
    names = {r[name_at] for r in h.call("symbols_get", group="*USD*,!EUR*")}
    assert "GBPUSD" in names and "USDJPY" in names and "EURUSD" not in names and "XAUUSD" in names
    assert {r[name_at] for r in h.call("symbols_get", group="eur*")} >= {"EURUSD", "EURJPY"}
    assert h.call("symbols_get", group="NOTHING*") == []
    every = {r[name_at] for r in h.call("symbols_get", group=None)}
    expected = {n for n in every if "JPY" not in n and "USD" not in n}
    assert expected >= {"EURGBP", "EURCHF", "EURAUD", "DE40", "US500", "JP225"} and "USDJPY" not in expected
    assert {r[name_at] for r in h.call("symbols_get", group="*,!*JPY*,!*USD*")} == expected


def test_default_symbol_properties(h):
    eurusd = h.symbol("EURUSD")
    assert eurusd["digits"] == 5 and eurusd["point"] == 0.00001 and eurusd["trade_contract_size"] == 100000.0
    assert eurusd["volume_min"] == 0.01 and eurusd["volume_step"] == 0.01 and eurusd["path"] == "Forex\\Majors\\EURUSD"
    assert eurusd["currency_base"] == "EUR" and eurusd["currency_profit"] == "USD"
    assert eurusd["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_MARKET and eurusd["filling_mode"] == 3
    assert eurusd["bid"] > 0 and eurusd["ask"] > eurusd["bid"] and eurusd["spread"] > 0
    assert eurusd["trade_tick_value"] == pytest.approx(1.0)
    assert eurusd["bidlow"] <= eurusd["bid"] <= eurusd["bidhigh"]
    eurjpy = h.symbol("EURJPY")
    assert eurjpy["trade_exemode"] == C.SYMBOL_TRADE_EXECUTION_INSTANT and eurjpy["filling_mode"] == 1
    gbpjpy = h.symbol("GBPJPY")
    assert gbpjpy["trade_stops_level"] > 0 and gbpjpy["trade_freeze_level"] > 0
    for name in ("USDJPY", "US500", "XAUUSD", "BTCUSD"):
        assert h.symbol(name)["name"] == name
    assert len(h.call("symbol_info", symbol="EURUSD")) == 96
    assert h.err("symbol_info", symbol="NOPE") == (-4, "Terminal: Not found")


def test_market_watch(h):
    info = h.symbol("NZDUSD")
    assert info["visible"] is False and info["select"] is False and info["bid"] > 0
    assert h.err("symbol_info_tick", symbol="NZDUSD") == (-4, "Terminal: Not found")
    assert h.err("symbol_info_tick", symbol="NOPE") == (-4, "Terminal: Not found")
    assert h.call("symbol_select", symbol="NZDUSD", enable=True) is True
    assert h.symbol("NZDUSD")["visible"] is True
    tick = h.tick("NZDUSD")
    assert tick["bid"] > 0 and tick["time_msc"] // 1000 == tick["time"]
    assert h.call("symbol_select", symbol="NZDUSD", enable=False) is True
    assert h.symbol("NZDUSD")["select"] is False


def test_cannot_deselect_symbol_with_position(h):
    pos = h.buy("EURUSD", 0.1)["order"]
    assert h.err("symbol_select", symbol="EURUSD", enable=False)[0] < 0
    assert h.symbol("EURUSD")["visible"] is True
    h.sell("EURUSD", 0.1, position=pos)
    assert h.call("symbol_select", symbol="EURUSD", enable=False) is True


def test_market_book(h):
    assert h.err("market_book_get", symbol="EURUSD")[0] < 0          # not subscribed
    assert h.call("market_book_add", symbol="EURUSD") is True
    book = h.book("EURUSD")
    tick = h.tick("EURUSD")
    depth = h.symbol("EURUSD")["ticks_bookdepth"]
    sells = [r for r in book if r["type"] == C.BOOK_TYPE_SELL]
    buys = [r for r in book if r["type"] == C.BOOK_TYPE_BUY]
    assert len(sells) == len(buys) == depth and book[:depth] == sells
    assert [r["price"] for r in sells] == sorted((r["price"] for r in sells), reverse=True)
    assert [r["price"] for r in buys] == sorted((r["price"] for r in buys), reverse=True)
    assert sells[-1]["price"] == tick["ask"] and buys[0]["price"] == tick["bid"]
    assert all(isinstance(r["volume"], int) and r["volume_dbl"] == float(r["volume"]) for r in book)
    assert h.call("market_book_release", symbol="EURUSD") is True
    assert h.err("market_book_release", symbol="EURUSD")[0] < 0
    assert h.err("market_book_add", symbol="NOPE") == (-4, "Terminal: Not found")


# ================================================================ price feed
def test_ticks_are_deterministic_for_a_seed():
    a, b, c = Harness(None, None, seed=5), Harness(None, None, seed=5), Harness(None, None, seed=6)
    try:
        now = a.now()
        args = dict(symbol="EURUSD", date_from=now - 3600, date_to=now, flags=C.COPY_TICKS_ALL)
        ta, tb, tc = a.call("copy_ticks_range", **args), b.call("copy_ticks_range", **args), c.call(
            "copy_ticks_range", **args)
        assert len(ta) > 100 and np.array_equal(ta, tb)
        assert not np.array_equal(ta["bid"][:50], tc["bid"][: min(50, len(tc))])
        assert a.tick("EURUSD") == b.tick("EURUSD")
    finally:
        a.close(), b.close(), c.close()


def test_live_tick_is_the_last_history_tick_in_broker_time(h):
    tick = h.tick("EURUSD")
    now = h.now()
    assert now == WEDNESDAY_NOON_UTC + OFFSET
    assert now - 120 < tick["time"] <= now
    ticks = h.call("copy_ticks_range", symbol="EURUSD", date_from=now - 600, date_to=now, flags=C.COPY_TICKS_ALL)
    last = ticks[-1]
    assert (int(last["time_msc"]), float(last["bid"]), float(last["ask"])) == (tick["time_msc"], tick["bid"],
                                                                               tick["ask"])
    assert ticks.dtype.names == ("time", "bid", "ask", "last", "volume", "time_msc", "flags", "volume_real")
    assert np.all(np.diff(ticks["time_msc"]) >= 0) and np.all(ticks["ask"] > ticks["bid"])
    assert np.all((ticks["flags"] & (C.TICK_FLAG_BID | C.TICK_FLAG_ASK)) != 0)


def test_bars_agree_with_ticks_and_live_tick(h):
    now = h.now()
    start = now - now % 3600 - 3600
    ticks = h.call("copy_ticks_range", symbol="EURUSD", date_from=start, date_to=start + 3599, flags=C.COPY_TICKS_ALL)
    m1 = h.call("copy_rates_range", symbol="EURUSD", timeframe=C.TIMEFRAME_M1, date_from=start, date_to=start + 3599)
    assert len(m1) == 60
    for bar in m1:
        sel = ticks[(ticks["time"] >= bar["time"]) & (ticks["time"] < bar["time"] + 60)]
        assert bar["open"] == sel["bid"][0] and bar["close"] == sel["bid"][-1]
        assert bar["high"] == sel["bid"].max() and bar["low"] == sel["bid"].min()
        assert bar["tick_volume"] == len(sel)
    h1 = h.call("copy_rates_range", symbol="EURUSD", timeframe=C.TIMEFRAME_H1, date_from=start, date_to=start)
    assert len(h1) == 1 and h1[0]["time"] == start
    assert h1[0]["open"] == m1[0]["open"] and h1[0]["close"] == m1[-1]["close"]
    assert h1[0]["high"] == m1["high"].max() and h1[0]["low"] == m1["low"].min()
    assert h1[0]["tick_volume"] == m1["tick_volume"].sum()
    # bar 0 is the current bar and ends at the live tick
    for tf in (C.TIMEFRAME_M1, C.TIMEFRAME_H1, 16388, C.TIMEFRAME_D1, C.TIMEFRAME_W1, C.TIMEFRAME_MN1):
        bars = h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=tf, start_pos=0, count=3)
        assert len(bars) == 3 and bars[-1]["close"] == h.tick("EURUSD")["bid"], tf
        assert bars[-1]["time"] <= now < bars[-1]["time"] + C.TIMEFRAMES_SECONDS[tf] + 3 * 86400
        assert np.all(np.diff(bars["time"]) > 0)


def test_bar_alignment_and_copy_rates_from(h):
    now = h.now()
    w1 = h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=C.TIMEFRAME_W1, start_pos=0, count=4)
    assert all((int(t) // 86400 + 4) % 7 == 0 for t in w1["time"])            # weeks open on Sunday
    mn = h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=C.TIMEFRAME_MN1, start_pos=0, count=2)
    assert all(dt.datetime.utcfromtimestamp(int(t)).day == 1 for t in mn["time"])
    d1 = h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=C.TIMEFRAME_D1, start_pos=0, count=7)
    week = d1[d1["time"] >= w1[-1]["time"]]
    assert w1[-1]["high"] == week["high"].max() and w1[-1]["open"] == week["open"][0]
    date_from = now - 5 * 3600 - 17
    bars = h.call("copy_rates_from", symbol="EURUSD", timeframe=C.TIMEFRAME_H1, date_from=date_from, count=10)
    assert len(bars) == 10 and bars[-1]["time"] <= date_from < bars[-1]["time"] + 3600
    recent = h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=C.TIMEFRAME_H1, start_pos=0, count=30)
    pos = len(recent) - 1 - int(np.flatnonzero(recent["time"] == bars[-1]["time"])[0])
    by_pos = h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=C.TIMEFRAME_H1, start_pos=pos, count=10)
    assert np.array_equal(bars, by_pos)


def test_rates_and_ticks_errors(h):
    assert h.err("copy_rates_from_pos", symbol="NOPE", timeframe=1, start_pos=0, count=10) == (
        -1, "Terminal: Call failed")
    assert h.err("copy_rates_range", symbol="NOPE", timeframe=1, date_from=1, date_to=2) == (-1, "Terminal: Call failed")
    assert h.err("copy_ticks_range", symbol="NOPE", date_from=1, date_to=2, flags=-1) == (-4, "Terminal: Not found")
    assert h.err("copy_ticks_from", symbol="NOPE", date_from=1, count=5, flags=-1) == (-4, "Terminal: Not found")
    maxbars = h.terminal()["maxbars"]
    assert h.err("copy_rates_from_pos", symbol="EURUSD", timeframe=1, start_pos=0, count=maxbars + 1) == (
        -1, "Terminal: Call failed")
    assert h.err("copy_rates_from_pos", symbol="EURUSD", timeframe=1, start_pos=maxbars, count=1)[0] == -1
    assert h.err("copy_rates_from", symbol="EURUSD", timeframe=1, date_from=h.now() - 200 * 86400, count=5)[0] == -1
    future = h.call("copy_ticks_range", symbol="EURUSD", date_from=h.now() + 100, date_to=h.now() + 200, flags=-1)
    assert isinstance(future, np.ndarray) and len(future) == 0
    trades = h.call("copy_ticks_range", symbol="EURUSD", date_from=h.now() - 600, date_to=h.now(),
                    flags=C.COPY_TICKS_TRADE)
    assert len(trades) == 0                                                   # forex has no trade ticks


def test_copy_ticks_from_counts_forward(h):
    start = h.now() - 7200
    ticks = h.call("copy_ticks_from", symbol="EURUSD", date_from=start, count=250, flags=C.COPY_TICKS_INFO)
    assert len(ticks) == 250 and ticks[0]["time"] >= start and np.all(np.diff(ticks["time_msc"]) >= 0)


def test_trade_ticks_for_exchange_symbols():
    cfg = {"symbols": [{"name": "FUT", "trade_calc_mode": 1, "digits": 2, "base_price": 100.0, "sessions": "always",
                        "currency_base": "USD", "currency_profit": "USD"}]}
    h = Harness(cfg, None)
    try:
        now = h.now()
        trades = h.call("copy_ticks_range", symbol="FUT", date_from=now - 600, date_to=now, flags=C.COPY_TICKS_TRADE)
        assert len(trades) > 0 and np.all(trades["last"] > 0) and np.all(trades["volume"] > 0)
        assert np.all((trades["flags"] & C.TICK_FLAG_LAST) != 0)
        bars = h.call("copy_rates_from_pos", symbol="FUT", timeframe=1, start_pos=0, count=5)
        assert np.all(bars["real_volume"] > 0)
    finally:
        h.close()


def test_set_price_and_the_walk_continues_from_there(h):
    h.ctl("freeze_feed", frozen=False)
    tick = h.set_price("EURUSD", 1.25000, 1.25010)
    assert tick["bid"] == 1.25 and h.tick("EURUSD")["bid"] == 1.25
    h.ctl("set_clock", at=h.engine.clock_pinned + 300)
    later = h.tick("EURUSD")
    assert later["time"] > tick["time"] and abs(later["bid"] - 1.25) < 0.01
    ticks = h.call("copy_ticks_range", symbol="EURUSD", date_from=tick["time"], date_to=h.now(), flags=-1)
    assert ticks[0]["bid"] == 1.25 and len(ticks) > 3


def test_frozen_feed_keeps_the_price(h):
    before = h.tick("EURUSD")
    h.ctl("set_clock", at=h.engine.clock_pinned + 600)
    assert h.tick("EURUSD") == before
    h.ctl("freeze_feed", symbol="EURUSD", frozen=False)
    h.ctl("set_clock", at=h.engine.clock_pinned + 600)
    assert h.tick("EURUSD")["time"] > before["time"]


def test_sessions_weekends_and_crypto(tmp_path):
    h = Harness({"server": {"always_open": False}}, None, freeze=False)
    try:
        saturday = utc(2024, 3, 16, 12, 0)
        h.ctl("set_clock", at=saturday)
        assert h.buy("EURUSD", 0.1)["retcode"] == 10018
        assert h.buy("EURUSD", 0.1)["comment"] == "Market closed"
        assert h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=0.5, type_filling=2)["retcode"] == 10018
        assert h.buy("BTCUSD", 0.01)["retcode"] == 10009                  # crypto trades all week
        tick = h.tick("EURUSD")
        midnight = (saturday + OFFSET) - (saturday + OFFSET) % 86400
        assert midnight - 600 < tick["time"] < midnight - 300                # Friday's last tick (close 23:55)
        empty = h.call("copy_ticks_range", symbol="EURUSD", date_from=saturday, date_to=saturday + 3600, flags=-1)
        assert len(empty) == 0
        h.ctl("set_clock", at=utc(2024, 3, 19, 12, 0))                  # next Tuesday
        h1 = h.call("copy_rates_range", symbol="EURUSD", timeframe=C.TIMEFRAME_H1, date_from=utc(2024, 3, 15),
                    date_to=utc(2024, 3, 19))
        weekdays = {dt.datetime.utcfromtimestamp(int(t)).weekday() for t in h1["time"]}
        assert 5 not in weekdays and 6 not in weekdays and {0, 4} <= weekdays
        h.ctl("set_clock", at=WEDNESDAY_NOON_UTC)
        assert h.buy("EURUSD", 0.1)["retcode"] == 10009
        h.ctl("set_clock", at=utc(2024, 3, 13, 22, 30))                 # 00:30 broker: index daily break
        assert h.buy("US500", 1.0)["retcode"] == 10018
    finally:
        h.close()


def test_server_offset_config():
    h = Harness({"server": {"offset_hours": 3}}, None)
    try:
        assert h.now() == WEDNESDAY_NOON_UTC + 3 * 3600
        pos = h.buy("EURUSD", 0.1)
        assert h.positions()[0]["time"] == WEDNESDAY_NOON_UTC + 3 * 3600
        assert h.history_orders(ticket=pos["order"])[0]["time_done"] == h.now()
    finally:
        h.close()


# ================================================================ persistence and control
def test_restart_keeps_accounts_positions_and_history(tmp_path):
    state = str(tmp_path / "st")
    h = Harness(None, state)
    h.set_price("EURUSD", 1.1, 1.1001)
    a = h.buy("EURUSD", 0.2, magic=3, comment="keep")["order"]
    b = h.buy("EURUSD", 0.1)["order"]
    h.sell("EURUSD", 0.1, position=b)
    h.send(action=5, symbol="EURUSD", volume=0.1, type=2, price=1.0, type_filling=2)
    balance = h.account()["balance"]
    h.close()
    h2 = Harness(None, state, password="pw")
    try:
        assert [p["ticket"] for p in h2.positions()] == [a] and h2.positions()[0]["comment"] == "keep"
        assert len(h2.orders()) == 1 and len(h2.history_orders()) == 3 and len(h2.deals()) == 4
        assert h2.account()["balance"] == balance
        assert h2.err("login", login=5550001, password="other", server=None, timeout=None)[0] == -6
        newest = max(o["ticket"] for o in h2.history_orders() + h2.orders())
        assert h2.buy("EURUSD", 0.1)["order"] > newest
        assert h2.sell("EURUSD", 0.1, position=b)["retcode"] == 10036
    finally:
        h2.close()


def test_crash_recovery_replays_the_journal(tmp_path):
    state = str(tmp_path / "st")
    h = Harness(None, state)
    h.set_price("EURUSD", 1.1, 1.1001)
    pos = h.buy("EURUSD", 0.3)["order"]
    h.sell("EURUSD", 0.1, position=pos)
    # simulate a crash: no close(), no snapshot; only what each call flushed to the journal
    h.engine._journal._lock_file.close()
    with open(h.engine._journal.path, "ab") as f:
        f.write(b"\x93\xa1")                       # a torn last record
    h2 = Harness(None, state)
    try:
        (p,) = h2.positions()
        assert p["ticket"] == pos and p["volume"] == 0.2
        assert len(h2.deals(position=pos)) == 2
    finally:
        h2.close()


def test_state_dir_is_locked(tmp_path):
    e = Engine(None, str(tmp_path / "st"), background=False)
    try:
        with pytest.raises(StateDirLocked):
            Engine(None, str(tmp_path / "st"), background=False)
    finally:
        e.close()


def test_reset_and_state(h):
    h.set_price("EURUSD", 1.1, 1.1001)
    h.buy()
    h.ctl("requote", count=3)
    st = h.ctl("state")
    assert st["login"] == 5550001 and st["positions"] == 1 and st["faults"]["requote"] == 3
    assert st["accounts"]["5550001"]["positions"] == 1
    h.ctl("reset")
    st = h.ctl("state")
    assert st["faults"]["requote"] == 0 and st["positions"] == 1 and st["frozen"] == []
    h.ctl("reset", full=True)
    st = h.ctl("state")
    assert st["positions"] == 0 and st["history_orders"] == 0 and st["login"] == 5550001
    assert h.account()["balance"] == 10000.0 and len(h.deals()) == 1


def test_background_thread_triggers_sl_with_running_clock():
    e = Engine(None, None, seed=3)                                      # background thread on
    h = Harness(engine=e, pin_at=None, freeze=True)
    try:
        tick = h.tick("EURUSD")
        pos = h.buy("EURUSD", 0.1, sl=round(tick["bid"] - 0.0005, 5))["order"]
        h.ctl("freeze_feed", frozen=False)
        e.feeds["EURUSD"].freeze(e.now_ms(), False)
        with e._lock:
            e.feeds["EURUSD"].set_price(e.now_ms() + 1, tick["bid"] - 0.002, tick["ask"] - 0.002, None)
        deadline = time.time() + 3
        while time.time() < deadline and h.positions():
            time.sleep(0.05)
        assert h.positions() == []
        assert h.deals(position=pos)[-1]["reason"] == C.DEAL_REASON_SL
    finally:
        h.close()


def test_unknown_control_and_bad_arguments(h):
    assert h.engine.control("nope", {})[0] == "err"
    with pytest.raises(CallFailed):
        h.ctl("set_price", symbol="NOPE", bid=1.0, ask=1.1)
    assert request(volume=1)["volume"] == 1.0


# ================================================================ CSV replay
def test_replay_bars_from_csv(tmp_path):
    start = utc(2024, 3, 13, 10, 0) + OFFSET
    lines = ["time,open,high,low,close,spread"]
    price = 1.2
    for i in range(60):
        o = round(price, 5)
        c = round(price + (0.0003 if i % 3 else -0.0002), 5)
        lines.append(f"{start + 60 * i},{o},{round(max(o, c) + 0.0001, 5)},{round(min(o, c) - 0.0001, 5)},{c},8")
        price = c
    path = tmp_path / "bars.csv"
    path.write_text("\n".join(lines) + "\n")
    h = Harness({"symbols": [{"name": "EURUSD", "history_csv": str(path)}]}, None)
    try:
        bars = h.call("copy_rates_range", symbol="EURUSD", timeframe=1, date_from=start, date_to=start + 3540)
        assert len(bars) == 60
        src = [line.split(",") for line in lines[1:]]
        for bar, row in zip(bars, src, strict=True):
            assert int(bar["time"]) == int(row[0])
            assert (bar["open"], bar["high"], bar["low"], bar["close"]) == tuple(float(x) for x in row[1:5])
            assert bar["spread"] == 8
        # the generated walk joins the replayed prices at both ends
        before = h.call("copy_ticks_range", symbol="EURUSD", date_from=start - 120, date_to=start - 1, flags=-1)
        assert len(before) and abs(before[-1]["bid"] - 1.2) < 0.002
    finally:
        h.close()


def test_replay_ticks_from_csv(tmp_path):
    start = utc(2024, 3, 13, 11, 0) + OFFSET
    path = tmp_path / "ticks.csv"
    path.write_text("time_msc,bid,ask\n" + "".join(
        f"{start * 1000 + 700 * i},{1.3 + i * 1e-5:.5f},{1.3001 + i * 1e-5:.5f}\n" for i in range(50)))
    h = Harness({"symbols": [{"name": "EURUSD", "history_csv": str(path)}]}, None)
    try:
        ticks = h.call("copy_ticks_range", symbol="EURUSD", date_from=start, date_to=start + 34, flags=-1)
        span_end = start * 1000 + 700 * 49
        # inside the CSV's span only its ticks; after it (to start+34.999) the walk may go on, joined to it
        replayed, after = ticks[ticks["time_msc"] <= span_end], ticks[ticks["time_msc"] > span_end]
        assert len(replayed) == 50 and replayed[0]["bid"] == 1.3 and replayed[-1]["bid"] == round(1.3 + 49e-5, 5)
        assert int(replayed[1]["time_msc"]) == start * 1000 + 700
        assert np.all(np.abs(after["bid"] - round(1.3 + 49e-5, 5)) < 0.002)
    finally:
        h.close()


def test_copy_ticks_from_trade_flag_on_forex_is_empty(h):
    ticks = h.call("copy_ticks_from", symbol="EURUSD", date_from=utc(2016, 1, 4), count=10, flags=C.COPY_TICKS_TRADE)
    assert len(ticks) == 0


def test_exactly_maxbars_bars_at_every_second_of_a_minute():
    """The terminal keeps maxbars bars: copy_rates_from_pos(0, maxbars) is complete whether or not
    the current minute's first tick has arrived yet."""
    h = Harness({"terminal": {"maxbars": 500}}, None)
    try:
        base = WEDNESDAY_NOON_UTC - WEDNESDAY_NOON_UTC % 60
        for second in (0, 0.001, 1, 30, 59.9):
            h.ctl("set_clock", at=base + second)
            bars = h.call("copy_rates_from_pos", symbol="EURUSD", timeframe=1, start_pos=0, count=500)
            assert len(bars) == 500, (second, len(bars))
    finally:
        h.close()
