"""The poller's reads of the terminal's tick stream and bars, for tick-by-tick quotes and candle events.

Ticks: per watched symbol, a cursor at the last tick handed on (its broker ``time_msc`` and how many ticks
of that very millisecond were handed on). Each cycle reads ``copy_ticks_from(symbol, <the cursor's second>,
n, COPY_TICKS_ALL)`` (the function takes whole seconds) and keeps what lies after the cursor: ticks of a
later millisecond, and ticks of the cursor's millisecond beyond those already handed on (a new tick in
the same millisecond is not skipped, none is handed on twice). ``n`` is the ticks already seen in the
cursor's second plus ``MAX_TICKS_PER_CYCLE`` plus one, so a full answer means more than the cap arrived.

* First read of a symbol: only its newest tick (no history flood); that read is a ``copy_ticks_range``
  from the newest tick's second to now, so the cursor counts the ticks of its second.
* More than ``MAX_TICKS_PER_CYCLE`` new ticks in one cycle (a poller that was stalled): the symbol starts
  again from its newest tick, as on a first read; the ticks in between are not published.

Candles: per watched (symbol, timeframe), ``copy_rates_from_pos(symbol, tf, 0, 2)`` (the terminal's own
bars, so they match ``copy_rates_*``), read on the first cycle, whenever the symbol had new ticks, and
once the forming bar's time is up. The forming bar is handed on when it changed; a bar is handed on with
``closed: True`` once, when a newer bar appears or when the terminal's clock (real time plus its UTC
offset) is ``CLOSE_GRACE`` seconds past the bar's end. Bars that opened and completed between two reads
(a stalled poller) are read with ``copy_rates_range`` and closed in order.

Everything handed on is in real UTC (``record_to_utc`` with the terminal's offset).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from terminals import constants as C
from terminals.gateway import GatewayError
from terminals.reads import TIMEFRAME_SECONDS, ReadError, TerminalReads
from terminals.timeutil import record_to_utc

logger = logging.getLogger("bridge.poller")

MAX_TICKS_PER_CYCLE = 1000
CLOSE_GRACE = 1.0  # seconds past a bar's end (terminal clock) before it is closed without a newer bar
MAX_CLOSED_PER_CYCLE = 100  # bars closed at once after a stall (older ones are not published)
TICK_FIELDS = ("bid", "ask", "last", "volume", "time_msc", "flags")
BAR_FIELDS = ("time", "open", "high", "low", "close", "tick_volume", "spread", "real_volume")


def _array_or_none(reads: TerminalReads, function: str, *args: Any) -> np.ndarray | None:
    """The terminal's array, or None when it has none for these arguments (an unknown symbol, an
    error of the call); an unreachable terminal raises (the cycle fails, as any read's)."""
    try:
        return reads.call(function, *args)
    except ReadError as exc:
        if exc.kind == "unavailable":
            raise
        return None
    except GatewayError:
        return None

@dataclass
class _Cursor:
    msc: int  # broker time_msc of the last tick handed on
    at_msc: int  # ticks of that millisecond handed on (or skipped on a first read)
    in_second: int  # ticks of that second up to and including the cursor


def _ticks_to_dicts(array: np.ndarray, offset: int) -> list[dict[str, Any]]:
    names = array.dtype.names or ()
    out = []
    for row in array.tolist():
        tick = dict(zip(names, row, strict=True))
        out.append(record_to_utc({k: tick[k] for k in TICK_FIELDS if k in tick}, offset))
    return out


class TickStream:
    """The tick cursors of one terminal (one per symbol)."""

    def __init__(self, reads: TerminalReads, cap: int = MAX_TICKS_PER_CYCLE):
        self.reads = reads
        self.cap = cap
        self.cursors: dict[str, _Cursor] = {}

    def forget(self, keep: set[str] | frozenset[str]) -> None:
        """Drop the cursors of symbols no longer watched: watched again later, they start afresh."""
        for symbol in [s for s in self.cursors if s not in keep]:
            del self.cursors[symbol]

    def reset(self) -> None:
        self.cursors.clear()

    def _copy(self, symbol: str, second: int, count: int | None) -> np.ndarray | None:
        """``copy_ticks_from`` from ``second`` (broker); ``count`` None: ``copy_ticks_range`` up to now."""
        if count is None:
            return _array_or_none(self.reads, "copy_ticks_range", symbol, max(second, 1),
                                  self.reads.now_broker() + 1, C.COPY_TICKS_ALL)
        return _array_or_none(self.reads, "copy_ticks_from", symbol, max(second, 1), count, C.COPY_TICKS_ALL)

    def _start(self, symbol: str, newest_msc: int) -> list[dict[str, Any]]:
        """A first read (or a restart after an overflow): the newest tick only, and the cursor on it."""
        # Every tick from the newest one's second to now (a few seconds' worth), so the cursor knows the
        # ticks of its second and millisecond.
        array = self._copy(symbol, newest_msc // 1000, None)
        if array is None or not len(array):
            return []
        last = int(array["time_msc"][-1])
        times = array["time_msc"]
        self.cursors[symbol] = _Cursor(last, int((times == last).sum()), int((times // 1000 == last // 1000).sum()))
        return _ticks_to_dicts(array[-1:], self.reads.offset)

    def read(self, symbol: str, newest: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The ticks of ``symbol`` after the cursor, oldest first, in real UTC. ``newest``: the symbol's
        ``symbol_info_tick`` of this cycle (real UTC), where a first read starts."""
        cursor = self.cursors.get(symbol)
        if cursor is None:
            if newest is None or not newest.get("time_msc"):
                return []
            return self._start(symbol, int(newest["time_msc"]) + self.reads.offset * 1000)
        requested = cursor.in_second + self.cap + 1
        array = self._copy(symbol, cursor.msc // 1000, requested)
        if array is None:
            return []
        if len(array) >= requested:  # more new ticks than the cap: jump to the newest
            logger.warning("more than %d new ticks of %s in one poll cycle: publishing from its newest tick",
                           self.cap, symbol)
            del self.cursors[symbol]
            newest_msc = int(newest["time_msc"]) + self.reads.offset * 1000 if newest else int(array["time_msc"][-1])
            return self._start(symbol, max(newest_msc, int(array["time_msc"][-1])))
        times = array["time_msc"]
        same = np.flatnonzero(times == cursor.msc)[cursor.at_msc:]
        later = np.flatnonzero(times > cursor.msc)
        fresh = array[np.concatenate([same, later])] if len(same) or len(later) else array[:0]
        if not len(fresh):
            return []
        last = int(fresh["time_msc"][-1])
        if last == cursor.msc:
            cursor.at_msc += len(fresh)
            cursor.in_second += len(fresh)
        else:
            second = last // 1000
            cursor.msc, cursor.at_msc = last, int((times == last).sum())
            cursor.in_second = int(((times // 1000 == second) & (times <= last)).sum())
        return _ticks_to_dicts(fresh, self.reads.offset)


@dataclass
class _BarState:
    bar: dict[str, Any]  # the forming bar last handed on (broker times)
    closed_through: int  # open time (broker s) of the newest bar handed on closed; 0: none


class CandleWatch:
    """The forming bar of each watched (symbol, timeframe) of one terminal."""

    def __init__(self, reads: TerminalReads, grace: float = CLOSE_GRACE):
        self.reads = reads
        self.grace = grace
        self.states: dict[tuple[str, str], _BarState] = {}

    def forget(self, keep: set[tuple[str, str]] | frozenset[tuple[str, str]]) -> None:
        for pair in [p for p in self.states if p not in keep]:
            del self.states[pair]

    def reset(self) -> None:
        self.states.clear()

    def _rates(self, function: str, *args: Any) -> list[dict[str, Any]] | None:
        array = _array_or_none(self.reads, function, *args)
        if array is None:
            return None
        names = array.dtype.names or ()
        return [{k: v for k, v in zip(names, row, strict=True) if k in BAR_FIELDS} for row in array.tolist()]

    def _due(self, state: _BarState, seconds: int, now_broker: float) -> bool:
        """The forming bar's time is up and it was not closed yet."""
        return state.closed_through < state.bar["time"] and now_broker >= state.bar["time"] + seconds + self.grace

    def read(self, symbol: str, timeframe: str, ticked: bool) -> list[dict[str, Any]]:
        """Bars to publish for ``(symbol, timeframe)``, oldest first, each with ``closed``; times real UTC.
        ``ticked``: the symbol had new ticks this cycle (else the terminal is read only when a bar is due)."""
        key = (symbol, timeframe)
        seconds = TIMEFRAME_SECONDS[timeframe]
        state = self.states.get(key)
        now_broker = time.time() + self.reads.offset
        if state is not None and not ticked and not self._due(state, seconds, now_broker):
            return []
        tf = getattr(C, f"TIMEFRAME_{timeframe}")
        rates = self._rates("copy_rates_from_pos", symbol, tf, 0, 2)
        if not rates:
            return []
        forming = rates[-1]
        if state is None:
            state = self.states[key] = _BarState(forming, 0)
            if now_broker >= forming["time"] + seconds + self.grace:
                state.closed_through = forming["time"]  # a quiet symbol: its last bar is complete already
                return []
            return [self._payload(symbol, timeframe, forming, False)]
        if forming["time"] > state.bar["time"]:
            out = [self._payload(symbol, timeframe, r, True) for r in self._completed(state, symbol, tf, rates)]
            state.bar, state.closed_through = forming, forming["time"] - 1
            if now_broker >= forming["time"] + seconds + self.grace:
                out.append(self._payload(symbol, timeframe, forming, True))
                state.closed_through = forming["time"]
            else:
                out.append(self._payload(symbol, timeframe, forming, False))
            return out
        if forming["time"] < state.bar["time"]:  # the terminal's history went back (a reset): start again
            del self.states[key]
            return []
        if state.closed_through >= forming["time"]:
            return []  # closed already (by its time); a late change is left to copy_rates_*
        if self._due(state, seconds, now_broker):
            state.bar, state.closed_through = forming, forming["time"]
            return [self._payload(symbol, timeframe, forming, True)]
        if forming != state.bar:
            state.bar = forming
            return [self._payload(symbol, timeframe, forming, False)]
        return []

    def _completed(self, state: _BarState, symbol: str, tf: int, rates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A newer bar appeared: the bars that completed since the last read and were not closed yet."""
        forming = rates[-1]
        if state.closed_through >= state.bar["time"]:
            # the last one was closed by its time: those after it, if any, completed unseen
            return [r for r in rates[:-1] if r["time"] > state.closed_through]
        done = [r for r in rates[:-1] if r["time"] >= state.bar["time"]]
        if not done or done[0]["time"] != state.bar["time"]:  # bars completed between two reads
            done = self._rates("copy_rates_range", symbol, tf, state.bar["time"], forming["time"] - 1) or []
            done = [r for r in done if state.bar["time"] <= r["time"] < forming["time"]]
        return done[-MAX_CLOSED_PER_CYCLE:]

    def _payload(self, symbol: str, timeframe: str, bar: dict[str, Any], closed: bool) -> dict[str, Any]:
        data = record_to_utc(dict(bar), self.reads.offset)
        return {"symbol": symbol, "timeframe": timeframe, **data, "closed": closed}
