"""The price path follows real UTC: the broker's clock offset changes the time stamps, never the prices."""

from __future__ import annotations

import calendar
import datetime as dt

import numpy as np
import pytest

from mt5sim.engine import _const as C
from mt5sim.engine.testing import Harness

# Wednesday 22:00 UTC: at UTC+3 that is Thursday 01:00, so windows below cross a broker midnight.
WEDNESDAY_LATE_UTC = calendar.timegm(dt.datetime(2024, 3, 13, 22, 0, 0).timetuple())
SEED = 11


def harness(offset_s: int, seed: int = SEED, at: int = WEDNESDAY_LATE_UTC, always_open: bool = True) -> Harness:
    return Harness({"server": {"offset_seconds": offset_s, "always_open": always_open}}, None, seed=seed, pin_at=at,
                   freeze=False)


@pytest.fixture
def pair(request):
    """Two terminals, same seed and config, broker clocks UTC+0 and UTC+offset, pinned at the same real moment."""
    offset = request.param
    a, b = harness(0), harness(offset)
    yield a, b, offset
    a.close()
    b.close()


@pytest.mark.parametrize("pair", [10800, 10830], indirect=True, ids=["utc+3", "utc+3h00m30s"])
@pytest.mark.parametrize("symbol", ["EURUSD", "BTCUSD"])
def test_same_real_moment_same_live_tick(pair, symbol):
    a, b, offset = pair
    assert b.now() - a.now() == offset
    ta, tb = a.tick(symbol), b.tick(symbol)
    assert (ta["bid"], ta["ask"], ta["last"], ta["volume"]) == (tb["bid"], tb["ask"], tb["last"], tb["volume"])
    assert tb["time_msc"] - ta["time_msc"] == offset * 1000
    assert tb["time"] - ta["time"] == offset
    sa, sb = a.symbol(symbol), b.symbol(symbol)
    assert (sa["bid"], sa["ask"]) == (sb["bid"], sb["ask"]) == (ta["bid"], ta["ask"])


@pytest.mark.parametrize("pair", [10800, 10830], indirect=True, ids=["utc+3", "utc+3h00m30s"])
def test_same_real_window_same_ticks(pair):
    """Two hours of ticks (across UTC+3's broker midnight), asked for in each terminal's own clock."""
    a, b, offset = pair
    utc_from, utc_to = WEDNESDAY_LATE_UTC - 7200, WEDNESDAY_LATE_UTC
    ticks = []
    for h, off in ((a, 0), (b, offset)):
        ticks.append(h.call("copy_ticks_range", symbol="EURUSD", date_from=utc_from + off, date_to=utc_to + off,
                            flags=C.COPY_TICKS_ALL))
    ta, tb = ticks
    assert len(ta) > 1000 and len(ta) == len(tb)
    assert np.array_equal(ta["bid"], tb["bid"]) and np.array_equal(ta["ask"], tb["ask"])
    assert np.array_equal(tb["time_msc"] - ta["time_msc"], np.full(len(ta), offset * 1000))
    assert np.array_equal(tb["time"], tb["time_msc"] // 1000)
    # The broker-time day boundary of UTC+3 lies inside this window and splits nothing.
    midnight_b = (utc_to + offset) // 86400 * 86400 * 1000
    assert tb["time_msc"][0] < midnight_b < tb["time_msc"][-1]


@pytest.mark.parametrize("pair", [10800], indirect=True, ids=["utc+3"])
def test_broker_time_bars_of_the_same_real_minutes_are_equal(pair):
    a, b, offset = pair
    utc_from, utc_to = WEDNESDAY_LATE_UTC - 3 * 3600, WEDNESDAY_LATE_UTC - 1
    bars = [h.call("copy_rates_range", symbol="EURUSD", timeframe=C.TIMEFRAME_M1, date_from=utc_from + off,
                   date_to=utc_to + off) for h, off in ((a, 0), (b, offset))]
    ra, rb = bars
    assert len(ra) == len(rb) == 180
    assert np.array_equal(rb["time"] - ra["time"], np.full(180, offset))
    for field in ("open", "high", "low", "close", "tick_volume", "spread"):
        assert np.array_equal(ra[field], rb[field]), field


def test_the_same_broker_clock_reading_is_a_different_market_moment():
    """Guards the tests above against a path that ignores time: 22:00 broker at UTC+0 and at UTC+3 differ."""
    a, b = harness(0, at=WEDNESDAY_LATE_UTC), harness(10800, at=WEDNESDAY_LATE_UTC - 10800)
    try:
        assert a.now() == b.now()
        args = dict(symbol="EURUSD", date_from=a.now() - 3600, date_to=a.now(), flags=C.COPY_TICKS_ALL)
        ta, tb = a.call("copy_ticks_range", **args), b.call("copy_ticks_range", **args)
        n = min(len(ta), len(tb))
        assert n > 100 and not np.array_equal(ta["bid"][:n], tb["bid"][:n])
    finally:
        a.close(), b.close()


def test_same_seed_and_offset_is_deterministic():
    a, b, c = harness(10800), harness(10800), harness(10800, seed=SEED + 1)
    try:
        now = a.now()
        args = dict(symbol="EURUSD", date_from=now - 7200, date_to=now, flags=C.COPY_TICKS_ALL)
        ta, tb, tc = (h.call("copy_ticks_range", **args) for h in (a, b, c))
        assert len(ta) > 1000 and np.array_equal(ta, tb)
        assert not np.array_equal(ta["bid"][:50], tc["bid"][:50])
        assert a.tick("EURUSD") == b.tick("EURUSD")
    finally:
        a.close(), b.close(), c.close()


def test_sessions_stay_on_the_broker_clock():
    """Forex closes Friday 23:55 broker time: 21:30 UTC is after the close at UTC+3, still open at UTC+0."""
    friday_2130_utc = calendar.timegm(dt.datetime(2024, 3, 15, 21, 30, 0).timetuple())
    a = harness(0, at=friday_2130_utc, always_open=False)
    b = harness(10800, at=friday_2130_utc, always_open=False)
    try:
        assert a.now() - a.tick("EURUSD")["time"] < 60
        close_b = (b.now() // 86400 - 1) * 86400 + 1435 * 60     # Friday 23:55 on b's clock
        assert close_b - 60 <= b.tick("EURUSD")["time"] < close_b
        assert len(b.call("copy_ticks_range", symbol="EURUSD", date_from=close_b, date_to=b.now(), flags=-1)) == 0
    finally:
        a.close(), b.close()
