"""Tick-by-tick quotes: the poller reads the terminal's tick stream (``copy_ticks_from``) since the last tick it
handed on, so every tick reaches a fast socket, not one sample per poll cycle.

The cursor tests read sim-a (UTC+3) in this process through a gateway of their own; the last one runs the
whole path: mt5sim's ``set_price`` -> the events poller -> Redis -> daphne -> a socket, and compares what the
socket got with the terminal's own ``copy_ticks_range``.
"""

from __future__ import annotations

import math
import signal
import time

import pytest

import mt5sim
from mt5sim.control import Control
from terminals.reads import TerminalReads
from tests.events.test_live_stack import _wait_watched
from tests.waiting import wait_until
from workers.tick_stream import TickStream

pytestmark = pytest.mark.django_db(transaction=True)

OFFSET_MS = 3 * 3600 * 1000  # sim-a's server clock is UTC+3
FIELDS = ("time_msc", "bid", "ask", "last", "volume", "flags")


def _terminal_ticks(symbol: str, from_msc: int, to_msc: int) -> list[tuple]:
    """The terminal's ticks with from_msc <= time_msc <= to_msc (broker ms), as the stream's tuples in UTC."""
    array = mt5sim.copy_ticks_range(symbol, from_msc // 1000, to_msc // 1000 + 1, mt5sim.COPY_TICKS_ALL)
    assert array is not None, mt5sim.last_error()
    rows = [dict(zip(array.dtype.names, row, strict=True)) for row in array.tolist()]
    return [tuple(r[f] - OFFSET_MS if f == "time_msc" else r[f] for f in FIELDS)
            for r in rows if from_msc <= r["time_msc"] <= to_msc]


def _as_tuples(ticks: list[dict]) -> list[tuple]:
    return [tuple(t[f] for f in FIELDS) for t in ticks]


def _newest(reads: TerminalReads, symbol: str) -> dict:
    return reads.tick(symbol)


def test_the_cursor_hands_on_every_tick_once_and_in_order(sim_a) -> None:
    """A live feed (GBPUSD's generated walk goes on) with ticks injected between and during reads: the reads
    give exactly the terminal's ticks over the window, none twice, none skipped; the first read gives the
    newest tick only."""
    reads, ctl = sim_a
    stream = TickStream(reads)
    reads.selected("GBPUSD")
    first = stream.read("GBPUSD", _newest(reads, "GBPUSD"))
    assert len(first) == 1, first  # no history flood
    got = list(first)
    bids = [round(1.27000 + i / 100000, 5) for i in range(9)]
    for i, bid in enumerate(bids):
        ctl.set_price("GBPUSD", bid, round(bid + 0.0001, 5))
        if i % 3 == 2:  # three ticks between two reads
            got += stream.read("GBPUSD", _newest(reads, "GBPUSD"))
    got += stream.read("GBPUSD", _newest(reads, "GBPUSD"))
    # Each injected tick, in order. (A subsequence, not a filter: the live walk goes on from each injected
    # price and may hit one of these values again, CI seed of 2026-12-07. That no tick comes twice or is
    # skipped is the comparison with the terminal's own ticks below.)
    handed_on = iter(t["bid"] for t in got)
    assert all(bid in handed_on for bid in bids), [t["bid"] for t in got]
    window = _terminal_ticks("GBPUSD", got[0]["time_msc"] + OFFSET_MS, got[-1]["time_msc"] + OFFSET_MS)
    assert _as_tuples(got) == window
    assert abs(got[-1]["time_msc"] / 1000 - time.time()) < 60  # real UTC, not UTC+3


def test_ticks_of_one_millisecond_are_neither_repeated_nor_skipped(sim_a) -> None:
    """With the server clock pinned, three ticks share one millisecond; the cursor reads between them."""
    reads, ctl = sim_a
    stream = TickStream(reads)
    ctl.freeze_feed("USDCHF")
    try:
        ctl.set_price("USDCHF", 0.90000, 0.90010)
        reads.selected("USDCHF")
        assert _as_tuples(stream.read("USDCHF", _newest(reads, "USDCHF")))[0][1] == 0.9
        pinned = math.floor(time.time()) + 1.5  # ahead of the last tick (time order kept), exact in ms
        ctl.set_clock(at=pinned)
        try:
            ctl.set_price("USDCHF", 0.90001, 0.90011)
            one = stream.read("USDCHF", _newest(reads, "USDCHF"))
            ctl.set_price("USDCHF", 0.90002, 0.90012)
            ctl.set_price("USDCHF", 0.90003, 0.90013)
            two = stream.read("USDCHF", _newest(reads, "USDCHF"))
            again = stream.read("USDCHF", _newest(reads, "USDCHF"))
        finally:
            ctl.set_clock(offset_seconds=0)
        wait_until(lambda: time.time() > pinned + 0.05, 2, "the real clock past the pinned time")
        ctl.set_price("USDCHF", 0.90004, 0.90014)
        three = stream.read("USDCHF", _newest(reads, "USDCHF"))
    finally:
        ctl.freeze_feed("USDCHF", frozen=False)
    assert [t["bid"] for t in one] == [0.90001]
    assert [t["bid"] for t in two] == [0.90002, 0.90003]
    assert {t["time_msc"] for t in one + two} == {int(pinned * 1000)}  # one millisecond, in real UTC
    assert again == []
    assert [t["bid"] for t in three] == [0.90004]


def test_more_ticks_than_the_cap_in_one_cycle_jump_to_the_newest(sim_a) -> None:
    reads, ctl = sim_a
    stream = TickStream(reads, cap=3)
    ctl.freeze_feed("USDCAD")
    try:
        ctl.set_price("USDCAD", 1.30000, 1.30010)
        reads.selected("USDCAD")
        assert len(stream.read("USDCAD", _newest(reads, "USDCAD"))) == 1
        ctl.set_price("USDCAD", 1.30001, 1.30011)
        ctl.set_price("USDCAD", 1.30002, 1.30012)
        assert [t["bid"] for t in stream.read("USDCAD", _newest(reads, "USDCAD"))] == [1.30001, 1.30002]
        for i in range(3, 8):  # five new ticks: over the cap of three
            ctl.set_price("USDCAD", 1.30000 + i / 100000, 1.30010 + i / 100000)
        assert [t["bid"] for t in stream.read("USDCAD", _newest(reads, "USDCAD"))] == [1.30007]
        ctl.set_price("USDCAD", 1.30008, 1.30018)
        assert [t["bid"] for t in stream.read("USDCAD", _newest(reads, "USDCAD"))] == [1.30008]
    finally:
        ctl.freeze_feed("USDCAD", frozen=False)


def test_a_fast_socket_gets_every_tick_made_between_two_poll_cycles(live_stack, event_pollers, session_a,
                                                                    ws) -> None:
    ctl = Control(live_stack.addresses["sim-a"])
    ctl.freeze_feed("EURUSD")
    poller = event_pollers["sim-a"]
    stopped = False
    try:
        ctl.set_price("EURUSD", 1.10000, 1.10010)
        sock = ws(session_a)
        sock.send({"type": "subscribe", "channels": ["quote:EURUSD"], "request_id": "s"})
        sock.recv_until(lambda m: m.get("request_id") == "s")
        _wait_watched("sim-a", "EURUSD", since=time.time())
        ctl.set_price("EURUSD", 1.10100, 1.10110)  # the window starts after this tick
        start, _ = sock.recv_until(lambda m: m["type"] == "quote:EURUSD" and m["data"]["bid"] == 1.101)
        poller.kill(signal.SIGSTOP)  # the poller between two cycles while the terminal ticks
        stopped = True
        bids = [round(1.10101 + i / 100000, 5) for i in range(8)]
        for bid in bids:
            ctl.set_price("EURUSD", bid, round(bid + 0.0001, 5))
        poller.kill(signal.SIGCONT)
        stopped = False
        last, before = sock.recv_until(lambda m: m["type"] == "quote:EURUSD" and m["data"]["bid"] == bids[-1],
                                       timeout=10)
        quotes = [m["data"] for m in [*before, last] if m["type"] == "quote:EURUSD"]
        expected = _direct_ticks(live_stack.addresses["sim-a"], "EURUSD", start["data"]["time_msc"] + OFFSET_MS + 1,
                                 last["data"]["time_msc"] + OFFSET_MS)
        assert [t["bid"] for t in quotes] == bids, quotes  # every tick, in order: none coalesced
        assert _as_tuples(quotes) == expected
        assert [m["time_msc"] for m in [*before, last] if m["type"] == "quote:EURUSD"] == [
            q["time_msc"] for q in quotes]
    finally:
        if stopped:
            poller.kill(signal.SIGCONT)
        ctl.freeze_feed("EURUSD", frozen=False)
        ctl.close()


def _direct_ticks(address: str, symbol: str, from_msc: int, to_msc: int) -> list[tuple]:
    assert mt5sim.initialize(address), mt5sim.last_error()
    try:
        return _terminal_ticks(symbol, from_msc, to_msc)
    finally:
        mt5sim.shutdown()
