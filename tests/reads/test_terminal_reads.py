"""Request/reply reads against a real terminal: symbols, quotes, bars, ticks, depth, history, and gzip.

Each answer is compared with what the terminal itself returns for the same question (through a direct
MetaTrader5-style client), with the terminal's UTC offset (sim-a: +3 h) taken off every time.
"""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from tests.reads.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

OFFSET_A = 10800  # sim-a's broker clock is UTC+3


# --- symbols -----------------------------------------------------------------------------------------------
def test_symbols_lists_enabled_symbols_and_filters_by_group(session_a, terminal_a):
    body = session_a.get("/mt5/client/symbols").json()
    names = {s["name"] for s in body["symbols"]}
    assert body["count"] == len(body["symbols"]) and {"EURUSD", "USDJPY", "XAUUSD", "NZDUSD"} <= names
    eurusd = next(s for s in body["symbols"] if s["name"] == "EURUSD")
    direct = terminal_a.mt5.symbol_info("EURUSD")
    for name in ("digits", "point", "volume_min", "volume_max", "volume_step", "trade_mode", "description"):
        assert eurusd[name] == getattr(direct, name)
    usd = session_a.get("/mt5/client/symbols", {"group": "*USD*"}).json()["symbols"]
    assert {s["name"] for s in usd} == {s.name for s in terminal_a.mt5.symbols_get("*USD*")}
    assert all("USD" in s["name"] for s in usd) and "EURGBP" not in {s["name"] for s in usd}
    no_jpy = session_a.get("/mt5/client/symbols", {"group": "*,!*JPY*"}).json()["symbols"]
    assert no_jpy and not any("JPY" in s["name"] for s in no_jpy)
    assert session_a.get("/mt5/client/symbols", {"group": "NOPE*"}).json() == {"symbols": [], "count": 0}


def test_symbol_detail_selects_a_symbol_not_in_market_watch(session_a, terminal_a):
    mt5 = terminal_a.mt5
    assert mt5.symbol_select("EURCHF", False)
    assert mt5.symbol_info("EURCHF").select is False
    r = session_a.get("/mt5/client/symbols/EURCHF")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "EURCHF" and body["select"] is True
    assert len(body) == 96  # every SymbolInfo field
    assert mt5.symbol_info("EURCHF").select is True  # selected at the terminal itself
    assert abs(body["time"] - time.time()) < 120  # last quote time, real UTC


def test_unknown_symbol_is_404_everywhere(session_a):
    for path in ("/mt5/client/symbols/NOPE", "/mt5/client/quotes/NOPE", "/mt5/client/depth/NOPE",
                 "/mt5/client/ticks/NOPE?count=5", "/mt5/client/quotes/history?symbol=NOPE&timeframe=M1&count=5"):
        r = session_a.get(path)
        assert r.status_code == 404, (path, r.content)
        assert r.json()["error"]["code"] == "NotFound"
        assert r.json()["error"]["details"]["symbol"] == "NOPE"


def test_symbol_names_resolve_ignoring_case(session_a):
    body = session_a.get("/mt5/client/symbols/eurusd").json()
    assert body["name"] == "EURUSD"
    assert session_a.get("/mt5/client/quotes/gbpusd").json()["symbol"] == "GBPUSD"
    # A prefix is not a suffix match: "EUR" is not resolved to one of the EUR symbols.
    assert session_a.get("/mt5/client/symbols/EUR").status_code == 404


# --- quotes and depth ----------------------------------------------------------------------------------------
def test_quote_of_an_unselected_symbol_then_kept_by_the_poller(session_a, terminal_a):
    mt5 = terminal_a.mt5
    assert mt5.symbol_select("AUDJPY", False)
    first = session_a.get("/mt5/client/quotes/AUDJPY")
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["symbol"] == "AUDJPY" and body["source"] == "terminal"
    assert body["bid"] > 0 and body["ask"] >= body["bid"]
    assert abs(body["time"] - time.time()) < 120 and body["time_msc"] // 1000 == body["time"]
    # From now on the poller keeps AUDJPY: the next quotes come from the snapshot.
    snap = wait_until(lambda: (b := session_a.get("/mt5/client/quotes/AUDJPY").json())["source"] == "snapshot" and b)
    assert time.time() - snap["asOf"] < 1.5


def test_quote_follows_a_price_set_at_the_terminal(session_a, terminal_a, stack):
    ctl = terminal_a.ctl
    ctl.freeze_feed("USDCHF")
    try:
        session_a.get("/mt5/client/quotes/USDCHF")
        ctl.set_price("USDCHF", 0.91234, 0.91251)
        set_at = time.time()
        body = wait_until(lambda: (b := session_a.get("/mt5/client/quotes/USDCHF").json())["bid"] == 0.91234 and b)
        assert body["ask"] == 0.91251
        assert abs(body["time_msc"] / 1000 - set_at) < 1.0  # the tick's time in real UTC
    finally:
        ctl.freeze_feed("USDCHF", frozen=False)


def test_depth_is_the_terminals_market_book(session_a, terminal_a):
    body = session_a.get("/mt5/client/depth/EURUSD").json()
    assert body["symbol"] == "EURUSD" and body["book"]
    sells = [e for e in body["book"] if e["side"] == "sell"]
    buys = [e for e in body["book"] if e["side"] == "buy"]
    assert sells and buys
    assert body["book"] == sells + buys  # MT5 order: sells first
    assert [e["price"] for e in sells] == sorted((e["price"] for e in sells), reverse=True)
    assert min(e["price"] for e in sells) > max(e["price"] for e in buys)
    for entry in body["book"]:
        assert set(entry) == {"type", "side", "price", "volume", "volume_dbl"}


# --- bars ----------------------------------------------------------------------------------------------------
def _direct_bars(array: np.ndarray, offset: int = OFFSET_A) -> list[dict]:
    return [{**dict(zip(array.dtype.names, row, strict=True)), "time": row[0] - offset} for row in array.tolist()]


def test_bars_last_n(session_a, terminal_a):
    body = session_a.get("/mt5/client/quotes/history", {"symbol": "EURUSD", "timeframe": "M5", "count": 10}).json()
    assert body["symbol"] == "EURUSD" and body["timeframe"] == "M5" and body["count"] == 10 and body["next"] is None
    times = [b["time"] for b in body["bars"]]
    assert times == sorted(times) and all(t % 300 == 0 for t in times)
    now = time.time()
    assert now - 300 <= times[-1] <= now  # the current bar, real UTC (not 3 hours ahead)
    assert set(body["bars"][0]) == {"time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume"}
    # Negative count without from is the same question ("the last 10", up to now).
    neg = session_a.get("/mt5/client/quotes/history", {"symbol": "EURUSD", "timeframe": "M5", "count": -10}).json()
    assert neg["count"] == 10 and neg["bars"][-1]["time"] - times[-1] in (0, 300)


def test_bars_backward_to_from_matches_copy_rates_from(session_a, terminal_a):
    mt5 = terminal_a.mt5
    moment = int(time.time()) - 3 * 86400 - 1234
    body = session_a.get("/mt5/client/quotes/history",
                         {"symbol": "EURUSD", "timeframe": "H1", "count": -24, "from": moment}).json()
    direct = mt5.copy_rates_from("EURUSD", mt5.TIMEFRAME_H1, moment + OFFSET_A, 24)
    assert body["count"] == 24 and body["bars"] == _direct_bars(direct)
    assert body["bars"][-1]["time"] <= moment < body["bars"][-1]["time"] + 3600


def test_bars_forward_from_from(session_a, terminal_a):
    mt5 = terminal_a.mt5
    moment = int(time.time()) - 5 * 86400 + 17
    body = session_a.get("/mt5/client/quotes/history",
                         {"symbol": "EURUSD", "timeframe": "M15", "count": 40, "from": moment}).json()
    assert body["count"] == 40
    assert body["bars"][0]["time"] >= moment and body["bars"][0]["time"] - moment < 900
    last = body["bars"][-1]["time"]
    direct = mt5.copy_rates_range("EURUSD", mt5.TIMEFRAME_M15, moment + OFFSET_A, last + OFFSET_A)
    assert body["bars"] == _direct_bars(direct)


def test_bars_range_in_iso_8601_and_unix_seconds_agree(session_a, terminal_a):
    start = datetime(*datetime.now(UTC).timetuple()[:3], tzinfo=UTC).timestamp() - 2 * 86400
    iso_from = datetime.fromtimestamp(start, UTC).isoformat().replace("+00:00", "Z")
    iso_to = datetime.fromtimestamp(start + 6 * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    by_iso = session_a.get("/mt5/client/quotes/history",
                           {"symbol": "GBPUSD", "timeframe": "H1", "from": iso_from, "to": iso_to}).json()
    by_unix = session_a.get("/mt5/client/quotes/history",
                            {"symbol": "GBPUSD", "timeframe": "H1", "from": int(start), "to": int(start) + 6 * 3600}).json()
    assert by_iso == by_unix
    assert [b["time"] for b in by_iso["bars"]] == [int(start) + h * 3600 for h in range(7)]
    # An ISO time with its own zone: 03:00+03:00 is midnight UTC.
    local = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT03:00:00+03:00")
    by_zone = session_a.get("/mt5/client/quotes/history",
                            {"symbol": "GBPUSD", "timeframe": "H1", "from": local, "to": iso_to}).json()
    assert by_zone == by_iso


def test_bars_range_pages_with_limit_and_next(session_a):
    start = (int(time.time()) - 86400) // 60 * 60
    end = start + 599 * 60
    query = {"symbol": "EURUSD", "timeframe": "M1", "to": end, "limit": 400}
    first = session_a.get("/mt5/client/quotes/history", {**query, "from": start}).json()
    assert first["count"] == 400 and first["next"] == {"from": start + 400 * 60}
    second = session_a.get("/mt5/client/quotes/history", {**query, "from": first["next"]["from"]}).json()
    assert second["count"] == 200 and second["next"] is None
    times = [b["time"] for b in first["bars"] + second["bars"]]
    assert times == list(range(start, end + 60, 60))  # every minute once: nothing lost, nothing repeated


def test_bars_over_the_terminals_maxbars_is_a_clear_400(session_a, terminal_a):
    maxbars = terminal_a.mt5.terminal_info().maxbars
    r = session_a.get("/mt5/client/quotes/history", {"symbol": "EURUSD", "timeframe": "M1", "count": maxbars + 1})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "ValidationError" and "count" in error["details"] and error["details"]["maxbars"] == maxbars
    # A range reaching further back than the terminal keeps: refused, not silently cut.
    r = session_a.get("/mt5/client/quotes/history", {"symbol": "EURUSD", "timeframe": "M1",
                                                      "from": int(time.time()) - 200 * 86400, "to": int(time.time())})
    assert r.status_code == 400 and "from" in r.json()["error"]["details"]
    # Exactly maxbars is allowed and complete.
    full = session_a.get("/mt5/client/quotes/history", {"symbol": "EURUSD", "timeframe": "M1", "count": maxbars},
                         HTTP_ACCEPT_ENCODING="gzip")
    assert full.status_code == 200
    assert json.loads(gzip.decompress(full.content))["count"] == maxbars


# --- ticks ---------------------------------------------------------------------------------------------------
def _direct_ticks(array: np.ndarray, offset: int = OFFSET_A) -> list[dict]:
    return [{**dict(zip(array.dtype.names, row, strict=True)), "time": row[0] - offset, "time_msc": row[5] - offset * 1000}
            for row in array.tolist()]


def test_ticks_forward_backward_and_last(session_a, terminal_a):
    mt5 = terminal_a.mt5
    moment = int(time.time()) - 2 * 3600
    forward = session_a.get("/mt5/client/ticks/EURUSD", {"count": 20, "from": moment}).json()
    direct = mt5.copy_ticks_from("EURUSD", moment + OFFSET_A, 20, mt5.COPY_TICKS_ALL)
    assert forward["count"] == 20 and forward["ticks"] == _direct_ticks(direct)
    assert forward["ticks"][0]["time"] >= moment

    backward = session_a.get("/mt5/client/ticks/EURUSD", {"count": -20, "from": moment}).json()
    assert backward["count"] == 20
    assert backward["ticks"][-1]["time_msc"] <= moment * 1000
    window = mt5.copy_ticks_range("EURUSD", moment + OFFSET_A - 3600, moment + OFFSET_A, mt5.COPY_TICKS_ALL)
    assert backward["ticks"] == _direct_ticks(window[window["time_msc"] <= (moment + OFFSET_A) * 1000][-20:])

    last = session_a.get("/mt5/client/ticks/EURUSD", {"count": 5}).json()
    assert last["count"] == 5 and time.time() - last["ticks"][-1]["time_msc"] / 1000 < 120


def test_ticks_range_with_flags_and_paging(session_a, terminal_a):
    mt5 = terminal_a.mt5
    start = time.time() - 3 * 3600
    end = start + 1800
    whole = session_a.get("/mt5/client/ticks/EURUSD", {"from": start, "to": end, "flags": "INFO"}).json()
    assert whole["flags"] == "INFO" and whole["next"] is None
    assert all(start * 1000 <= t["time_msc"] <= end * 1000 for t in whole["ticks"])
    direct = mt5.copy_ticks_range("EURUSD", int(start) + OFFSET_A, int(end) + 1 + OFFSET_A, mt5.COPY_TICKS_INFO)
    direct = direct[(direct["time_msc"] >= round(start * 1000) + OFFSET_A * 1000)
                    & (direct["time_msc"] <= round(end * 1000) + OFFSET_A * 1000)]
    assert whole["ticks"] == _direct_ticks(direct)
    assert whole["count"] > 20
    pages, cursor = [], start
    while True:
        page = session_a.get("/mt5/client/ticks/EURUSD",
                             {"from": cursor, "to": end, "flags": "INFO", "limit": 7}).json()
        pages.extend(page["ticks"])
        assert page["count"] <= 7
        if page["next"] is None:
            break
        cursor = page["next"]["from"]
    assert pages == whole["ticks"]  # no tick lost or repeated across pages
    trade = session_a.get("/mt5/client/ticks/EURUSD", {"from": start, "to": end, "flags": "TRADE"}).json()
    assert trade["flags"] == "TRADE" and isinstance(trade["ticks"], list)


# --- history -------------------------------------------------------------------------------------------------
def test_history_deals_and_orders(session_a, terminal_a):
    opened = terminal_a.buy("EURUSD", 0.1)
    other = terminal_a.buy("GBPUSD", 0.1)
    mt5 = terminal_a.mt5
    closed = mt5.order_send({"action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.1,
                             "type": mt5.ORDER_TYPE_SELL, "position": opened.order,
                             "type_filling": mt5.ORDER_FILLING_IOC})
    assert closed.retcode == mt5.TRADE_RETCODE_DONE
    now = time.time()

    deals = session_a.get("/mt5/client/history/deals").json()  # default: the last 7 days
    tickets = {d["ticket"] for d in deals["deals"]}
    assert {opened.deal, other.deal, closed.deal} <= tickets
    assert deals["count"] == len(deals["deals"]) and deals["to"] - deals["from"] == pytest.approx(7 * 86400, abs=2)
    mine = next(d for d in deals["deals"] if d["ticket"] == opened.deal)
    assert abs(mine["time"] - now) < 5 and abs(mine["time_msc"] / 1000 - now) < 5  # real UTC

    by_position = session_a.get("/mt5/client/history/deals", {"position": opened.order}).json()["deals"]
    assert {d["ticket"] for d in by_position} == {opened.deal, closed.deal}
    by_symbol = session_a.get("/mt5/client/history/deals", {"symbol": "GBPUSD"}).json()["deals"]
    assert other.deal in {d["ticket"] for d in by_symbol} and {d["symbol"] for d in by_symbol} == {"GBPUSD"}
    past = session_a.get("/mt5/client/history/deals",
                         {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"}).json()
    assert past["deals"] == []

    orders = session_a.get("/mt5/client/history/orders", {"from": int(now) - 60, "to": int(now) + 60}).json()
    assert {opened.order, other.order} <= {o["ticket"] for o in orders["orders"]}
    order = next(o for o in orders["orders"] if o["ticket"] == opened.order)
    assert abs(order["time_setup"] - now) < 5 and abs(order["time_done"] - now) < 5
    by_pos = session_a.get("/mt5/client/history/orders", {"position": opened.order}).json()["orders"]
    assert opened.order in {o["ticket"] for o in by_pos} and all(o["position_id"] == opened.order for o in by_pos)


# --- compression ---------------------------------------------------------------------------------------------
def test_large_responses_are_gzipped_when_accepted(session_a):
    query = {"symbol": "EURUSD", "timeframe": "M1", "count": 2000}
    plain = session_a.get("/mt5/client/quotes/history", query)
    assert plain.status_code == 200 and plain.get("Content-Encoding") is None
    zipped = session_a.get("/mt5/client/quotes/history", query, HTTP_ACCEPT_ENCODING="gzip, deflate")
    assert zipped.status_code == 200 and zipped["Content-Encoding"] == "gzip"
    body = json.loads(gzip.decompress(zipped.content))
    assert body["count"] == 2000 and len(zipped.content) < len(plain.content) / 3


def test_from_alone_runs_to_now(session_a, terminal_a):
    start = int(time.time()) - 30 * 60
    bars = session_a.get("/mt5/client/quotes/history", {"symbol": "EURUSD", "timeframe": "M1", "from": start}).json()
    times = [b["time"] for b in bars["bars"]]
    assert times[0] == start - start % 60 + (60 if start % 60 else 0)
    # Up to the last bar with a tick: the feed gives every open minute at least one tick, so the current
    # minute's bar may not exist yet and the last one may have opened up to 2 minutes ago.
    assert time.time() - 120 < times[-1] <= time.time()
    assert times == list(range(times[0], times[-1] + 60, 60))
    since = time.time() - 600
    ticks = session_a.get("/mt5/client/ticks/EURUSD", {"from": since}).json()
    assert ticks["count"] > 0 and ticks["next"] is None
    assert round(since * 1000) <= ticks["ticks"][0]["time_msc"] and ticks["ticks"][-1]["time_msc"] / 1000 <= time.time()
    last = session_a.get("/mt5/client/ticks/EURUSD", {"count": -5}).json()  # no from: the last 5 either way
    assert last["count"] == 5 and time.time() - last["ticks"][-1]["time_msc"] / 1000 < 120


def test_history_of_a_position_within_a_window(session_a, terminal_a):
    opened = terminal_a.buy("USDCAD", 0.1)
    opened_second = int(time.time())
    # Deal times filter by whole broker seconds: the close must fall in a later second than the open.
    wait_until(lambda: int(time.time()) > opened_second, 2, "the next second")
    mt5 = terminal_a.mt5
    closed = mt5.order_send({"action": mt5.TRADE_ACTION_DEAL, "symbol": "USDCAD", "volume": 0.1,
                             "type": mt5.ORDER_TYPE_SELL, "position": opened.order, "type_filling": mt5.ORDER_FILLING_IOC})
    assert closed.retcode == mt5.TRADE_RETCODE_DONE
    deals = session_a.get("/mt5/client/history/deals", {"position": opened.order}).json()["deals"]
    closing_time = next(d["time_msc"] for d in deals if d["ticket"] == closed.deal) / 1000
    later = session_a.get("/mt5/client/history/deals", {"position": opened.order, "from": closing_time - 0.001}).json()
    assert [d["ticket"] for d in later["deals"]] == [closed.deal]
    wrong_symbol = session_a.get("/mt5/client/history/deals", {"position": opened.order, "symbol": "EURUSD"}).json()
    assert wrong_symbol["deals"] == []


def test_redis_unreachable_is_503_unavailable_not_500(session_a, settings):
    """The bridge's own Redis is down: 503 Unavailable with Retry-After (API.md), not the terminal's 502."""
    from tests.procs import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/3"  # nothing listens there
    for path in ("/mt5/client/account", "/mt5/client/symbols/EURUSD", "/mt5/client/quotes/EURUSD"):
        r = session_a.get(path)
        assert r.status_code == 503 and r.json()["error"]["code"] == "Unavailable", (path, r.content)
        assert int(r["Retry-After"]) >= 1
