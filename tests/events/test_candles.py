"""``candle:<symbol>:<timeframe>``: the forming bar on each tick and ``closed: true`` when it completes, from the
terminal's own bars, so they equal ``copy_rates_from_pos`` (times in real UTC).

The first tests read sim-a (UTC+3) in this process through a gateway of their own; the last one runs the whole
path (mt5sim's ``set_price`` -> the events poller -> daphne -> a socket) across a real minute boundary (up to a
minute of waiting: the emulator's clock is the trade server's, shared with the rest of the stack, so it is not
shifted here).
"""

from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings

import mt5sim
from mt5sim.control import Control
from streams.keys import subs_key
from streams.subscriptions import watched
from tests.events.test_live_stack import _wait_watched
from tests.waiting import wait_until
from workers import tick_stream
from workers.tick_stream import CandleWatch

pytestmark = pytest.mark.django_db(transaction=True)

OFFSET = 3 * 3600  # sim-a's server clock is UTC+3
BAR = ("time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume")


def _terminal_bar(symbol: str, timeframe: str, pos: int) -> dict:
    """The terminal's bar at ``pos`` (0: the newest) with its time in real UTC."""
    array = mt5sim.copy_rates_from_pos(symbol, getattr(mt5sim, f"TIMEFRAME_{timeframe}"), pos, 1)
    assert array is not None and len(array) == 1, mt5sim.last_error()
    bar = dict(zip(array.dtype.names, array.tolist()[0], strict=True))
    return {k: bar[k] - OFFSET if k == "time" else bar[k] for k in BAR}


def _bar(event_data: dict) -> dict:
    return {k: event_data[k] for k in BAR}


def _seconds_left_in_minute() -> float:
    return 60 - time.time() % 60


def _next_minute(margin: float = 6.0) -> None:
    """Wait, if the minute is about to end, for the next one (so a test's ticks fall in one bar)."""
    if _seconds_left_in_minute() < margin:
        minute = int(time.time() // 60)
        wait_until(lambda: int(time.time() // 60) > minute, 10, "the next minute")


def test_the_forming_bar_on_each_tick_and_closed_once_its_time_is_up(sim_a, monkeypatch) -> None:
    reads, ctl = sim_a
    watch = CandleWatch(reads)
    ctl.freeze_feed("AUDUSD")
    try:
        _next_minute()
        ctl.set_price("AUDUSD", 0.66000, 0.66010)
        reads.selected("AUDUSD")
        first = watch.read("AUDUSD", "M1", ticked=True)
        assert [_bar(b) for b in first] == [_terminal_bar("AUDUSD", "M1", 0)] and first[0]["closed"] is False
        assert first[0]["symbol"] == "AUDUSD" and first[0]["timeframe"] == "M1"
        assert abs(first[0]["time"] - time.time()) < 61  # real UTC, not UTC+3
        assert watch.read("AUDUSD", "M1", ticked=True) == []  # nothing changed: nothing to publish
        ctl.set_price("AUDUSD", 0.66050, 0.66060)
        ctl.set_price("AUDUSD", 0.65990, 0.66000)
        update = watch.read("AUDUSD", "M1", ticked=True)
        assert [_bar(b) for b in update] == [_terminal_bar("AUDUSD", "M1", 0)] and update[0]["closed"] is False
        # (ticks of the walk before the freeze may be in the bar too)
        assert update[0]["high"] == max(first[0]["high"], 0.6605) and update[0]["close"] == 0.6599
        assert update[0]["low"] == min(first[0]["low"], 0.6599)
        assert watch.read("AUDUSD", "M1", ticked=False) == []  # no tick, the bar's time not up: not even read
        # The bar's minute is over (the reads' clock moved past its end and the grace): it is closed once,
        # as the terminal has it, although no newer bar came (the feed is frozen).
        bar_end = update[0]["time"] + 60
        real_time = time.time
        monkeypatch.setattr(tick_stream.time, "time", lambda: bar_end + tick_stream.CLOSE_GRACE + 0.1)
        closed = watch.read("AUDUSD", "M1", ticked=False)
        assert [_bar(b) for b in closed] == [_terminal_bar("AUDUSD", "M1", 0)] and closed[0]["closed"] is True
        assert watch.read("AUDUSD", "M1", ticked=False) == []
        monkeypatch.setattr(tick_stream.time, "time", real_time)
    finally:
        ctl.freeze_feed("AUDUSD", frozen=False)


def test_a_quiet_symbols_complete_last_bar_is_not_published_as_forming(sim_a, monkeypatch) -> None:
    reads, ctl = sim_a
    watch = CandleWatch(reads)
    ctl.freeze_feed("NZDUSD")
    try:
        ctl.set_price("NZDUSD", 0.60000, 0.60010)
        reads.selected("NZDUSD")
        # D1 bars form for a day: the last one is published as forming.
        d1 = watch.read("NZDUSD", "D1", ticked=True)
        assert [_bar(b) for b in d1] == [_terminal_bar("NZDUSD", "D1", 0)] and d1[0]["closed"] is False
        # An M1 bar whose minute is over (the reads' clock past its end) is complete: nothing forms.
        last = _terminal_bar("NZDUSD", "M1", 0)
        monkeypatch.setattr(tick_stream.time, "time", lambda: last["time"] + 60 + tick_stream.CLOSE_GRACE + 0.1)
        assert watch.read("NZDUSD", "M1", ticked=True) == []
    finally:
        ctl.freeze_feed("NZDUSD", frozen=False)


def test_candle_events_equal_the_terminals_bars_and_a_bar_closes_when_the_next_one_opens(
        live_stack, session_a, ws) -> None:
    address = live_stack.addresses["sim-a"]
    ctl = Control(address)
    ctl.freeze_feed("EURUSD")
    assert mt5sim.initialize(address), mt5sim.last_error()
    try:
        _next_minute(margin=10)
        ctl.set_price("EURUSD", 1.10000, 1.10010)
        sock = ws(session_a)
        sock.send({"type": "subscribe", "channels": ["candle:EURUSD:M1", "candle:EURUSD:H1"], "request_id": "s"})
        sock.recv_until(lambda m: m.get("request_id") == "s")
        _wait_watched("sim-a", "EURUSD", since=time.time())
        for bid in (1.10030, 1.09980, 1.10010):
            ctl.set_price("EURUSD", bid, round(bid + 0.0001, 5))
        got: dict[str, dict] = {}  # the first event of each timeframe's bar at the last price (any order)
        while len(got) < 2:
            message, _ = sock.recv_until(lambda m: m["type"].startswith("candle:EURUSD:")
                                         and m["data"]["close"] == 1.1001)
            got.setdefault(message["data"]["timeframe"], message)
        forming, hourly = got["M1"], got["H1"]
        assert forming["data"]["closed"] is False and _bar(forming["data"]) == _terminal_bar("EURUSD", "M1", 0)
        assert hourly["data"]["closed"] is False and _bar(hourly["data"]) == _terminal_bar("EURUSD", "H1", 0)
        # the next minute: its first tick opens a new bar, which closes the one before
        bar_time = forming["data"]["time"]
        wait_until(lambda: time.time() >= bar_time + 60, 65, "the next minute")
        ctl.set_price("EURUSD", 1.10020, 1.10030)
        closed, before = sock.recv_until(lambda m: m["type"] == "candle:EURUSD:M1" and m["data"]["closed"],
                                         timeout=10)
        assert closed["data"]["time"] == bar_time
        assert _bar(closed["data"]) == _terminal_bar("EURUSD", "M1", 1)  # as the terminal keeps it, closed
        opened, _ = sock.recv_until(lambda m: m["type"] == "candle:EURUSD:M1" and m["data"]["time"] == bar_time + 60)
        assert opened["data"]["closed"] is False and _bar(opened["data"]) == _terminal_bar("EURUSD", "M1", 0)
        closes = [m for m in [*before, closed] if m["type"] == "candle:EURUSD:M1" and m["data"]["closed"]]
        assert len(closes) == 1  # closed once
    finally:
        mt5sim.shutdown()
        ctl.freeze_feed("EURUSD", frozen=False)
        ctl.close()


def test_candle_and_deal_channels_are_accepted_and_the_poller_is_told_the_pairs(make_session, ws) -> None:
    """The subscribe check takes ``candle:<symbol>:<M1..D1>`` and ``deal``; the socket's record for the poller
    carries the (symbol, timeframe) pairs, which ``watched`` hands the poller."""
    session = make_session()
    sock = ws(session)
    sock.send({"type": "subscribe", "channels": ["candle:EURUSD:M2", "candle:EURUSD", "candle::M1"],
               "request_id": "bad"})
    error = sock.recv_until(lambda m: m.get("request_id") == "bad")[0]
    assert error["type"] == "error" and error["error"]["code"] == "ValidationError"
    assert len(error["error"]["details"]["channels"]) == 3
    sock.send({"type": "subscribe", "channels": ["deal", "candle:EURUSD:M1", "candle:EURUSD:D1", "candle:X:Y:H4"],
               "request_id": "ok"})
    reply = sock.recv_until(lambda m: m.get("request_id") == "ok")[0]
    assert reply["type"] == "subscribed"
    assert {"deal", "candle:EURUSD:M1", "candle:EURUSD:D1", "candle:X:Y:H4"} <= set(reply["channels"])
    client = redis.Redis.from_url(settings.REDIS_URL)
    wait_until(lambda: client.hlen(subs_key(session.terminal)) == 1, 5, "the socket's record")
    found = watched(client, session.terminal)
    assert found.candles == {("EURUSD", "M1"), ("EURUSD", "D1"), ("X:Y", "H4")}
    assert "EURUSD" in found and "X:Y" in found  # their ticks are read (bars follow ticks)
    assert found.quotes == frozenset()  # but no quote events: nobody subscribed to quotes
