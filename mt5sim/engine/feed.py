"""Deterministic price feed: the tick history of a symbol for any past window, and the live tick.

Why this shape: the live tick, copy_ticks_* and copy_rates_* must agree for any window, be the
same for a given seed, and cost nothing to keep. So there is no stored walk: ticks are a pure
function of (seed, symbol, real-UTC minute bucket). Each open minute gets 1..2*tpm-1 ticks at hashed
millisecond offsets; the mid price is base_price * exp(sum of value-noise octaves from 1 minute
to ~2 years), so it wanders like a random walk without drifting away. Bars are aggregated from
these same ticks, and the live tick is simply the last tick at or before "now".

Clocks: a real market does not depend on a broker's clock setting, so the path is generated in real
UTC (t_utc = t_broker - server offset), and two terminals with the same seed show the same prices at
the same real moment whatever their offsets. Everything else is broker time, as in real MT5: the
times of ticks and bars, the days that ticks are cached and summarised by, sessions and weekends.

Test control sits on top as overlays: a set_price injects a tick and shifts the path by a delta
from that moment on; freeze_feed drops generated ticks while frozen, and unfreezing shifts the
path so it walks on from the frozen price.
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_right
from collections import OrderedDict

import numpy as np

from . import _const as C

MINUTE_MS = 60_000
DAY_MS = 86_400_000
_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)
_S30, _S27, _S31 = _U64(30), _U64(27), _U64(31)
_INV64 = 1.0 / 18446744073709551616.0
_SQRT12 = math.sqrt(12.0)
_OCTAVES = [60.0 * 4**k for k in range(11)]   # 1 min .. ~2 years

TICKS_DTYPE = np.dtype([("time", "<i8"), ("bid", "<f8"), ("ask", "<f8"), ("last", "<f8"), ("volume", "<u8"),
                        ("time_msc", "<i8"), ("flags", "<u4"), ("volume_real", "<f8")])
RATES_DTYPE = np.dtype([("time", "<i8"), ("open", "<f8"), ("high", "<f8"), ("low", "<f8"), ("close", "<f8"),
                        ("tick_volume", "<u8"), ("spread", "<i4"), ("real_volume", "<u8")])


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _hash(key: int, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    h = _mix(a.astype(_U64) ^ _U64(key))
    if b is not None:
        h = _mix(h ^ (b.astype(_U64) * _GOLDEN))
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 hash -> float in [0, 1)."""
    return (h >> _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _scalar_key(*parts: int) -> int:
    h = np.array([0], dtype=_U64)
    for p in parts:
        h = _mix(h ^ _U64(p & 0xFFFFFFFFFFFFFFFF))
    return int(h[0])


def minute_of_week(bucket: np.ndarray | int):
    """Minute of the week (Monday 00:00 = 0) of an epoch minute; 1970-01-01 was a Thursday."""
    return (bucket + 3 * 1440) % 10080


def session_mask(table: dict[int, list[tuple[int, int]]], always_open: bool) -> np.ndarray:
    mask = np.zeros(10080, dtype=bool)
    if always_open:
        mask[:] = True
        return mask
    for day, ranges in table.items():
        for a, b in ranges:
            mask[day * 1440 + a: day * 1440 + min(b, 1440)] = True
    return mask


class SymbolFeed:
    """Ticks and bars of one symbol."""

    def __init__(self, spec: dict, seed: int, always_open: bool, history_start_s: int, server_offset_s: int = 0):
        self.name = spec["name"]
        self.offset_ms = int(server_offset_s) * 1000   # broker time - UTC
        self.digits = int(spec["digits"])
        self.point = float(spec["point"])
        self.base_price = float(spec["base_price"])
        self.spread_points = float(spec["spread_points"])
        self.spread_float = bool(spec.get("spread_float", True))
        self.tpm = max(1, int(spec["ticks_per_minute"]))
        self.trade_ticks = bool(spec["trade_ticks"])
        self.no_prices = bool(spec["no_prices"])
        self.history_start_ms = history_start_s * 1000
        self.open_mask = session_mask(spec["session_table"], always_open or spec["sessions"] in ("crypto", "always"))
        self.always_open = bool(self.open_mask.all())
        self.key = _scalar_key(seed, zlib.crc32(self.name.encode()))
        vol = float(spec["volatility"])
        self.amplitudes = [vol * math.sqrt(t / 86400.0) for t in _OCTAVES]
        self.jitter = 0.35 * self.amplitudes[0]
        # overlays (test control)
        self.seg_start: list[int] = []
        self.seg_frozen: list[bool] = []
        self.seg_delta: list[float] = []
        self.injected: list[tuple[int, float, float, float, int]] = []
        self.version = 0
        self._base_cache: OrderedDict[int, dict] = OrderedDict()
        self._final_cache: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self._day_summary: dict[int, tuple] = {}
        self._live: tuple[int, int, tuple | None] = (0, -1, None)   # (valid_from, valid_until, tick)
        self.csv: dict | None = load_history_csv(spec["history_csv"], spec) if spec.get("history_csv") else None
        if self.csv is not None:
            t = self.csv["t"]
            self.csv["ratio_before"] = float(self.csv["bid"][0]) / self.path_bid(int(t[0]))
            self.csv["ratio_after"] = float(self.csv["bid"][-1]) / self.path_bid(int(t[-1]))

    # ----------------------------------------------------------------- generation
    def is_open_at(self, t_ms: int) -> bool:
        return bool(self.open_mask[minute_of_week(t_ms // MINUTE_MS)])

    def _knots(self, k: int, j: np.ndarray) -> np.ndarray:
        """Value-noise knot values of octave k (zero mean, unit variance)."""
        key = self.key ^ (0x51ED270B27 * (k + 1))
        return (_unit(_hash(key, j)) - 0.5) * _SQRT12

    def _path(self, t_ms: np.ndarray) -> np.ndarray:
        """Smooth log-price offset at these times (value noise, smoothstep interpolation).

        Knot values are hashed once per minute bucket (every octave's period is a whole number of
        minutes), and the two fastest octaves are interpolated at each tick; the slower ones are
        evaluated at the bucket's middle (their change inside a minute is far below the tick
        jitter). This keeps a day of history cheap to generate.
        """
        buckets, inverse = np.unique(t_ms // MINUTE_MS, return_inverse=True)
        t = t_ms.astype(np.float64) / 1000.0
        out = np.zeros(len(t))
        mid = buckets.astype(np.float64) * 60.0 + 30.0
        slow = np.zeros(len(buckets))
        for k, (period, amp) in enumerate(zip(_OCTAVES, self.amplitudes, strict=True)):
            jb = (buckets * 60) // int(period)
            v0 = self._knots(k, jb)
            v1 = self._knots(k, jb + 1)
            if k < 2:
                f = t / period - jb[inverse]
                sm = f * f * (3.0 - 2.0 * f)
                out += amp * (v0[inverse] + (v1 - v0)[inverse] * sm)
            else:
                f = mid / period - jb
                sm = f * f * (3.0 - 2.0 * f)
                slow += amp * (v0 + (v1 - v0) * sm)
        return out + slow[inverse]

    def path_bid(self, t_ms: int) -> float:
        """The generator's bid at a broker-time instant, without the per-tick jitter (anchor for overlays)."""
        t_utc = np.array([t_ms - self.offset_ms], dtype=np.int64)
        return self.base_price * math.exp(float(self._path(t_utc)[0]))

    def _base_day(self, day: int) -> dict:
        """Generated ticks of one broker day (before overlays), in broker time, cached.

        The UTC minute buckets covering the broker day are generated, then shifted to broker time;
        sessions and history_start are applied on the broker clock. With a whole-minute offset
        (every real one) a UTC bucket is exactly one broker minute and the filter stays per bucket.
        """
        cached = self._base_cache.get(day)
        if cached is not None:
            self._base_cache.move_to_end(day)
            return cached
        off = self.offset_ms
        day_start, day_end = day * DAY_MS, (day + 1) * DAY_MS
        aligned = off % MINUTE_MS == 0
        first = (day_start - off) // MINUTE_MS
        last = -((off - day_end) // MINUTE_MS)          # ceil((day_end - off) / MINUTE_MS)
        buckets = np.arange(first, last, dtype=np.int64)  # UTC minute buckets
        broker_start = buckets * MINUTE_MS + off
        if aligned:
            keep = (self.open_mask[minute_of_week(broker_start // MINUTE_MS)]
                    & (broker_start >= self.history_start_ms))
        else:                                             # a bucket straddles two broker minutes
            broker_end = broker_start + (MINUTE_MS - 1)
            keep = ((self.open_mask[minute_of_week(broker_start // MINUTE_MS)]
                     | self.open_mask[minute_of_week(broker_end // MINUTE_MS)])
                    & (broker_end >= self.history_start_ms))
        buckets = buckets[keep]
        if self.no_prices or len(buckets) == 0:
            res = _empty_ticks()
        else:
            res = self._generate(buckets)
            res["t"] = res["t"] + off
            if not aligned:
                t = res["t"]
                inside = ((t >= day_start) & (t < day_end) & (t >= self.history_start_ms)
                          & self.open_mask[minute_of_week(t // MINUTE_MS)])
                res = {k: v[inside] for k, v in res.items()}
        if self.csv is not None:
            res = self._merge_csv(day, res)
        self._base_cache[day] = res
        if len(self._base_cache) > 24:
            self._base_cache.popitem(last=False)
        return res

    def _merge_csv(self, day: int, gen: dict) -> dict:
        """Replayed ticks inside the CSV's time span; generated ones outside it, rescaled to join it."""
        csv = self.csv
        start, end = int(csv["t"][0]), int(csv["span_end"])
        day_start, day_end = day * DAY_MS, (day + 1) * DAY_MS
        t = gen["t"]
        before, after = t < start, t > end
        keep = before | after
        out = {k: v[keep] for k, v in gen.items()}
        spread = out["ask"] - out["bid"]
        ratio = np.where(before[keep], csv["ratio_before"], csv["ratio_after"])
        out["bid"] = np.round(out["bid"] * ratio, self.digits)
        out["ask"] = np.round(out["bid"] + spread, self.digits)
        out["last"] = np.where(out["last"] > 0, np.round(out["last"] * ratio, self.digits), 0.0)
        a = int(np.searchsorted(csv["t"], day_start, side="left"))
        b = int(np.searchsorted(csv["t"], day_end, side="left"))
        if b > a:
            for key in ("t", "bid", "ask", "last", "vol", "flags"):
                out[key] = np.concatenate([out[key], csv[key][a:b]])
            order = np.argsort(out["t"], kind="stable")
            out = {k: v[order] for k, v in out.items()}
        return out

    def _generate(self, buckets: np.ndarray) -> dict:
        """Ticks of these UTC minute buckets, with UTC times (the caller shifts them to broker time)."""
        n = 1 + (_hash(self.key ^ 0x1111, buckets) % _U64(2 * self.tpm - 1)).astype(np.int64)
        total = int(n.sum())
        rep = np.repeat(buckets, n)
        idx = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        h = _hash(self.key ^ 0x2222, rep, idx)          # one hash per tick, split into fields
        offs = ((h & _U64(0xFFFFFFFF)) % _U64(MINUTE_MS)).astype(np.int64)
        t = rep * MINUTE_MS + offs
        order = np.argsort(t, kind="stable")
        t, rep, idx, h = t[order], rep[order], idx[order], h[order]
        u_jit = ((h >> _U64(32)) & _U64(0xFFFFF)).astype(np.float64) * (1.0 / 1048576.0)
        u_spread = (h >> _U64(52)).astype(np.float64) * (1.0 / 4096.0)
        jit = (u_jit - 0.5) * _SQRT12 * self.jitter
        mid = self.base_price * np.exp(self._path(t) + jit)
        bid = np.round(mid, self.digits)
        if self.spread_float:
            sp = np.maximum(1.0, np.round(self.spread_points * (0.6 + 0.8 * u_spread)))
        else:
            sp = np.full(len(t), max(1.0, self.spread_points))
        ask = np.round(bid + sp * self.point, self.digits)
        if self.trade_ticks:
            u = _unit(_hash(self.key ^ 0x5555, rep, idx))
            last = np.where(u < 0.5, bid, ask)
            vol = (1 + (_hash(self.key ^ 0x6666, rep, idx) % _U64(20))).astype(np.uint64)
            side = np.where(u < 0.5, C.TICK_FLAG_SELL, C.TICK_FLAG_BUY)
            flags = (C.TICK_FLAG_LAST | C.TICK_FLAG_VOLUME | side).astype(np.uint32)
        else:
            last = np.zeros(len(t))
            vol = np.zeros(len(t), dtype=np.uint64)
            flags = np.zeros(len(t), dtype=np.uint32)
        return {"t": t, "bid": bid, "ask": ask, "last": last, "vol": vol, "flags": flags}

    # ----------------------------------------------------------------- overlays
    def _invalidate(self, from_ms: int) -> None:
        self.version += 1
        self._final_cache.clear()
        first_day = from_ms // DAY_MS
        for d in [d for d in self._day_summary if d >= first_day]:
            del self._day_summary[d]
        self._live = (0, -1, None)

    def _add_segment(self, start_ms: int, frozen: bool, delta: float) -> None:
        i = bisect_right(self.seg_start, start_ms)
        self.seg_start.insert(i, start_ms)
        self.seg_frozen.insert(i, frozen)
        self.seg_delta.insert(i, delta)

    def _segment_at(self, t_ms: int) -> int:
        return bisect_right(self.seg_start, t_ms) - 1

    def set_price(self, t_ms: int, bid: float, ask: float, last: float | None) -> tuple:
        """Inject a tick now; the generated walk continues from this price."""
        bid = round(float(bid), self.digits)
        ask = round(float(ask), self.digits)
        last_v = round(float(last), self.digits) if last else 0.0
        self.injected.append((t_ms, bid, ask, last_v, 1 if last else 0))
        self.injected.sort(key=lambda x: x[0])
        seg = self._segment_at(t_ms)
        frozen = seg >= 0 and self.seg_frozen[seg]
        delta = bid - self.path_bid(t_ms)
        self._add_segment(t_ms, frozen, delta)
        self._invalidate(t_ms)
        return self.tick_at(t_ms)

    def freeze(self, t_ms: int, frozen: bool) -> None:
        seg = self._segment_at(t_ms)
        currently = seg >= 0 and self.seg_frozen[seg]
        if currently == frozen:
            return
        if frozen:
            delta = self.seg_delta[seg] if seg >= 0 else 0.0
            self._add_segment(t_ms, True, delta)
        else:
            tick = self.tick_at(t_ms)
            delta = (tick[1] - self.path_bid(t_ms)) if tick else (self.seg_delta[seg] if seg >= 0 else 0.0)
            self._add_segment(t_ms, False, delta)
        self._invalidate(t_ms)

    def is_frozen(self, t_ms: int) -> bool:
        seg = self._segment_at(t_ms)
        return seg >= 0 and self.seg_frozen[seg]

    def reset_overlays(self) -> None:
        self.seg_start, self.seg_frozen, self.seg_delta, self.injected = [], [], [], []
        self._invalidate(0)

    def overlays_state(self) -> dict:
        return {"seg_start": self.seg_start, "seg_frozen": self.seg_frozen, "seg_delta": self.seg_delta,
                "injected": [list(x) for x in self.injected]}

    def load_overlays(self, state: dict) -> None:
        self.seg_start = list(state.get("seg_start", []))
        self.seg_frozen = list(state.get("seg_frozen", []))
        self.seg_delta = list(state.get("seg_delta", []))
        self.injected = [tuple(x) for x in state.get("injected", [])]
        self._invalidate(0)

    # ----------------------------------------------------------------- final ticks
    def day_ticks(self, day: int) -> dict:
        """Final ticks of one broker day: generated ticks with overlays applied, injected ticks merged."""
        key = (day, self.version)
        cached = self._final_cache.get(key)
        if cached is not None:
            return cached
        base = self._base_day(day)
        t, bid, ask, last, vol, tflags = base["t"], base["bid"], base["ask"], base["last"], base["vol"], base["flags"]
        day_end = (day + 1) * DAY_MS
        if self.seg_start and self.seg_start[0] < day_end and len(t):
            starts = np.array(self.seg_start, dtype=np.int64)
            k = np.searchsorted(starts, t, side="right") - 1
            inside = k >= 0
            kk = np.where(inside, k, 0)
            frozen = np.array(self.seg_frozen, dtype=bool)[kk] & inside
            delta = np.where(inside, np.array(self.seg_delta)[kk], 0.0)
            keep = ~frozen
            t, tflags, vol = t[keep], tflags[keep], vol[keep]
            delta = delta[keep]
            bid = np.round(bid[keep] + delta, self.digits)
            ask = np.round(ask[keep] + delta, self.digits)
            last = np.where(last[keep] > 0, np.round(last[keep] + delta, self.digits), 0.0)
        inj = [x for x in self.injected if day * DAY_MS <= x[0] < day_end]
        if inj:
            it = np.array([x[0] for x in inj], dtype=np.int64)
            t = np.concatenate([t, it])
            bid = np.concatenate([bid, [x[1] for x in inj]])
            ask = np.concatenate([ask, [x[2] for x in inj]])
            last = np.concatenate([last, [x[3] for x in inj]])
            vol = np.concatenate([vol, np.array([x[4] for x in inj], dtype=np.uint64)])
            tflags = np.concatenate([tflags, np.array(
                [(C.TICK_FLAG_LAST | C.TICK_FLAG_VOLUME) if x[3] else 0 for x in inj], dtype=np.uint32)])
            order = np.argsort(t, kind="stable")
            t, bid, ask, last, vol, tflags = t[order], bid[order], ask[order], last[order], vol[order], tflags[order]
        flags = tflags.copy()
        if len(t):
            changed_bid = np.empty(len(t), dtype=bool)
            changed_ask = np.empty(len(t), dtype=bool)
            changed_bid[0] = changed_ask[0] = True
            changed_bid[1:] = bid[1:] != bid[:-1]
            changed_ask[1:] = ask[1:] != ask[:-1]
            info = (changed_bid * C.TICK_FLAG_BID) | (changed_ask * C.TICK_FLAG_ASK)
            info = np.where((info == 0) & (tflags == 0), C.TICK_FLAG_BID | C.TICK_FLAG_ASK, info)
            flags = flags | info.astype(np.uint32)
        res = {"t": t, "bid": bid, "ask": ask, "last": last, "vol": vol, "flags": flags.astype(np.uint32)}
        self._final_cache[key] = res
        if len(self._final_cache) > 8:
            self._final_cache.popitem(last=False)
        return res

    def tick_at(self, now_ms: int) -> tuple | None:
        """The last tick at or before now_ms as a Tick value list, or None (no quotes yet)."""
        vf, vu, tick = self._live
        if vf <= now_ms < vu:
            return tick
        day = now_ms // DAY_MS
        first_day = max(self.history_start_ms // DAY_MS, day - 14)
        d = day
        next_time = (day + 1) * DAY_MS
        while d >= first_day:
            arr = self.day_ticks(d)
            t = arr["t"]
            i = int(np.searchsorted(t, now_ms, side="right")) - 1
            if d == day and i + 1 < len(t):
                next_time = int(t[i + 1])
            if i >= 0:
                tm = int(t[i])
                tick = (tm // 1000, float(arr["bid"][i]), float(arr["ask"][i]), float(arr["last"][i]),
                        int(arr["vol"][i]), tm, int(arr["flags"][i]), float(arr["vol"][i]))
                self._live = (tm, next_time, tick)
                return tick
            d -= 1
        self._live = (now_ms, next_time, None)
        return None

    def ticks_between(self, from_ms: int, to_ms: int, limit: int | None = None) -> np.ndarray:
        """Ticks with from_ms <= time_msc <= to_ms (to_ms already capped at now), oldest first."""
        from_ms = max(from_ms, self.history_start_ms)
        parts = []
        got = 0
        day = from_ms // DAY_MS
        last_day = to_ms // DAY_MS
        while day <= last_day:
            arr = self.day_ticks(day)
            t = arr["t"]
            a = int(np.searchsorted(t, from_ms, side="left"))
            b = int(np.searchsorted(t, to_ms, side="right"))
            if b > a:
                parts.append((arr, a, b))
                got += b - a
                if limit is not None and got >= limit:
                    break
            day += 1
        n = sum(b - a for _, a, b in parts)
        out = np.zeros(n, dtype=TICKS_DTYPE)
        pos = 0
        for arr, a, b in parts:
            m = b - a
            sl = slice(pos, pos + m)
            out["time_msc"][sl] = arr["t"][a:b]
            out["bid"][sl] = arr["bid"][a:b]
            out["ask"][sl] = arr["ask"][a:b]
            out["last"][sl] = arr["last"][a:b]
            out["volume"][sl] = arr["vol"][a:b]
            out["volume_real"][sl] = arr["vol"][a:b]
            out["flags"][sl] = arr["flags"][a:b]
            pos += m
        out["time"] = out["time_msc"] // 1000
        if limit is not None:
            out = out[:limit]
        return out

    # ----------------------------------------------------------------- bars
    def _price_series(self, arr: dict) -> np.ndarray:
        return arr["last"] if self.trade_ticks else arr["bid"]

    def minute_bars(self, day: int, now_ms: int) -> np.ndarray:
        """M1 bars of one day from its ticks (up to now)."""
        arr = self.day_ticks(day)
        t = arr["t"]
        n = int(np.searchsorted(t, now_ms, side="right"))
        if self.trade_ticks:
            keep = np.flatnonzero(arr["last"][:n] > 0)
        else:
            keep = np.arange(n)
        if len(keep) == 0:
            return np.zeros(0, dtype=RATES_DTYPE)
        t = t[keep]
        price = self._price_series(arr)[keep]
        spread = np.round((arr["ask"][keep] - arr["bid"][keep]) / self.point).astype(np.int32)
        vol = arr["vol"][keep]
        minute = t // MINUTE_MS
        starts = np.concatenate([[0], np.flatnonzero(np.diff(minute)) + 1])
        ends = np.concatenate([starts[1:], [len(t)]])
        out = np.zeros(len(starts), dtype=RATES_DTYPE)
        out["time"] = minute[starts] * 60
        out["open"] = price[starts]
        out["close"] = price[ends - 1]
        out["high"] = np.maximum.reduceat(price, starts)
        out["low"] = np.minimum.reduceat(price, starts)
        out["tick_volume"] = (ends - starts).astype(np.uint64)
        out["spread"] = np.minimum.reduceat(spread, starts)
        out["real_volume"] = np.add.reduceat(vol, starts) if self.trade_ticks else 0
        return out

    def day_summary(self, day: int, now_ms: int) -> tuple | None:
        """The D1 bar of a day as a tuple (cached once the day is over)."""
        if (day + 1) * DAY_MS <= now_ms and day in self._day_summary:
            return self._day_summary[day]
        was_cached = day in self._base_cache
        m1 = self.minute_bars(day, now_ms)
        if len(m1) == 0:
            res = None
        else:
            res = (day * 86400, float(m1["open"][0]), float(m1["high"].max()), float(m1["low"].min()),
                   float(m1["close"][-1]), int(m1["tick_volume"].sum()), int(m1["spread"].min()),
                   int(m1["real_volume"].sum()))
        if (day + 1) * DAY_MS <= now_ms:
            self._day_summary[day] = res
            if not was_cached:
                # a finished day generated only for its summary (symbol_info's previous close, D1 bars) is not kept:
                # with many symbols, one day of ticks each is what a broker-sized Market Watch can afford
                self._base_cache.pop(day, None)
                for key in [k for k in self._final_cache if k[0] == day]:
                    del self._final_cache[key]
        return res


def _empty_ticks() -> dict:
    return {"t": np.zeros(0, np.int64), "bid": np.zeros(0), "ask": np.zeros(0), "last": np.zeros(0),
            "vol": np.zeros(0, np.uint64), "flags": np.zeros(0, np.uint32)}


def _parse_time(value: str) -> int:
    """A CSV time cell as broker milliseconds: epoch seconds, epoch milliseconds or an ISO date-time."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        import calendar
        import datetime as _dt
        when = _dt.datetime.fromisoformat(value.replace("Z", ""))
        return calendar.timegm(when.timetuple()) * 1000 + when.microsecond // 1000
    return int(number) if number > 1e11 else int(number * 1000)


def load_history_csv(path: str, spec: dict) -> dict:
    """Ticks (time|time_msc, bid, ask[, last, volume]) or bars (time, open, high, low, close[, spread]) from a CSV.

    Bars become four ticks each (open, high/low in the bar's direction, close) spread across the bar."""
    import csv as _csv

    digits, point = int(spec["digits"]), float(spec["point"])
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(_csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    cols = {c.strip().lower(): c for c in rows[0]}
    tcol = cols.get("time_msc") or cols.get("time") or cols.get("datetime") or cols.get("date")
    if tcol is None:
        raise ValueError(f"{path}: needs a time, time_msc or datetime column")
    times = np.array([_parse_time(r[tcol]) for r in rows], dtype=np.int64)
    order = np.argsort(times, kind="stable")
    times = times[order]
    rows = [rows[i] for i in order]

    def col(name: str, default: float = 0.0) -> np.ndarray:
        key = cols.get(name)
        return np.array([float(r[key]) if key and r[key] != "" else default for r in rows])

    if "open" in cols:
        o, hi, lo, c = col("open"), col("high"), col("low"), col("close")
        spread = col("spread", float(spec["spread_points"])) * point
        step = int(np.median(np.diff(times))) if len(times) > 1 else 60_000
        step = max(4, min(step, DAY_MS))
        up = c >= o
        prices = np.stack([o, np.where(up, lo, hi), np.where(up, hi, lo), c], axis=1).ravel()
        t = (times[:, None] + (np.arange(4) * (step // 4))[None, :]).ravel()
        bid = np.round(prices, digits)
        ask = np.round(bid + np.repeat(spread, 4), digits)
        last = np.zeros(len(t))
        vol = np.zeros(len(t), dtype=np.uint64)
        span_end = int(times[-1]) + step - 1
    else:
        t = times
        bid = np.round(col("bid"), digits)
        ask = np.round(col("ask"), digits)
        if np.any(ask <= 0):
            ask = np.where(ask > 0, ask, np.round(bid + float(spec["spread_points"]) * point, digits))
        last = np.round(col("last"), digits)
        vol = col("volume").astype(np.uint64)
        span_end = int(t[-1])
    flags = np.where(last > 0, C.TICK_FLAG_LAST | C.TICK_FLAG_VOLUME, 0).astype(np.uint32)
    return {"t": t.astype(np.int64), "bid": bid, "ask": ask, "last": last, "vol": vol, "flags": flags,
            "span_end": span_end}


def bar_open(tf: int, t: np.ndarray) -> np.ndarray:
    """Open time of the bar of timeframe tf containing each time t (seconds)."""
    secs = C.TIMEFRAMES_SECONDS[tf]
    if tf == C.TIMEFRAME_MN1:
        return t.astype("datetime64[s]").astype("datetime64[M]").astype("datetime64[s]").astype(np.int64)
    if tf == C.TIMEFRAME_W1:
        days = t // 86400
        return (days - (days + 4) % 7) * 86400
    return t - t % secs


def next_bar_open(tf: int, t_open: int) -> int:
    if tf == C.TIMEFRAME_MN1:
        m = np.array([t_open], dtype="datetime64[s]").astype("datetime64[M]") + 1
        return int(m.astype("datetime64[s]").astype(np.int64)[0])
    return t_open + C.TIMEFRAMES_SECONDS[tf]


def aggregate(bars: np.ndarray, tf: int) -> np.ndarray:
    """Bars (M1 or D1) grouped into timeframe tf."""
    if len(bars) == 0:
        return bars
    keys = bar_open(tf, bars["time"])
    starts = np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1])
    ends = np.concatenate([starts[1:], [len(bars)]])
    out = np.zeros(len(starts), dtype=RATES_DTYPE)
    out["time"] = keys[starts]
    out["open"] = bars["open"][starts]
    out["close"] = bars["close"][ends - 1]
    out["high"] = np.maximum.reduceat(bars["high"], starts)
    out["low"] = np.minimum.reduceat(bars["low"], starts)
    out["tick_volume"] = np.add.reduceat(bars["tick_volume"], starts)
    out["spread"] = np.minimum.reduceat(bars["spread"], starts)
    out["real_volume"] = np.add.reduceat(bars["real_volume"], starts)
    return out


def bars_in_days(feed: SymbolFeed, tf: int, day_from: int, day_to: int, now_ms: int) -> np.ndarray:
    """All bars of timeframe tf built from the ticks of days [day_from, day_to] (inclusive)."""
    if tf >= C.TIMEFRAME_D1:
        rows = [feed.day_summary(d, now_ms) for d in range(day_from, day_to + 1)]
        rows = [r for r in rows if r is not None]
        d1 = np.array(rows, dtype=RATES_DTYPE) if rows else np.zeros(0, dtype=RATES_DTYPE)
        return d1 if tf == C.TIMEFRAME_D1 else aggregate(d1, tf)
    parts = [feed.minute_bars(d, now_ms) for d in range(day_from, day_to + 1)]
    m1 = np.concatenate(parts) if parts else np.zeros(0, dtype=RATES_DTYPE)
    return m1 if tf == C.TIMEFRAME_M1 else aggregate(m1, tf)
