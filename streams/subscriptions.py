"""Where sockets record which symbols they watch, so the terminal's poller knows what to poll.

Per terminal, a Redis hash maps each socket to its quote and depth symbols, its candle (symbol,
timeframe) pairs and an expiry; a version counter changes whenever what is watched changes, so a
poller reading every cycle pays one ``GET`` until something changes. A socket's record is refreshed
while it is open (``streams.checks``: a new expiry, no version change) and removed on close; a record
of a socket whose daphne died expires by itself (``SUBSCRIPTION_TTL``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .keys import subs_key, subs_version_key

SUBSCRIPTION_TTL = 60.0  # seconds a record lives without refresh; refreshed every TTL/3 (streams.checks)
FULL_REREAD = 10.0  # seconds between full re-reads even without a version change (to drop expired)


class WatchedSymbols(frozenset):
    """The symbols to poll ticks for (quote, depth or candle subscribers); ``.depth``: those needing the
    book; ``.quotes``: those whose ticks are published (quote or depth subscribers); ``.candles``: the
    (symbol, timeframe) pairs whose bars are published."""

    depth: frozenset[str]
    quotes: frozenset[str]
    candles: frozenset[tuple[str, str]]

    def __new__(cls, quotes: set[str] | frozenset[str] = frozenset(), depth: set[str] | frozenset[str] = frozenset(),
                candles: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()):
        obj = super().__new__(cls, set(quotes) | set(depth) | {symbol for symbol, _ in candles})
        obj.depth = frozenset(depth)
        obj.quotes = frozenset(quotes) | obj.depth
        obj.candles = frozenset(candles)
        return obj


def record(quotes: set[str], depth: set[str], now: float | None = None,
           candles: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> str:
    item = {"q": sorted(quotes), "d": sorted(depth), "exp": (now or time.time()) + SUBSCRIPTION_TTL}
    if candles:
        item["c"] = sorted([symbol, timeframe] for symbol, timeframe in candles)
    return json.dumps(item)


async def register(client, terminal: str, socket_id: str, quotes: set[str], depth: set[str],
                   candles: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()) -> None:
    pipe = client.pipeline(transaction=False)
    if quotes or depth or candles:
        pipe.hset(subs_key(terminal), socket_id, record(quotes, depth, candles=candles))
    else:
        pipe.hdel(subs_key(terminal), socket_id)
    pipe.incr(subs_version_key(terminal))
    await pipe.execute()


async def refresh(client, terminal: str, records: dict[str, str]) -> None:
    """Write the fresh records (``record``) of sockets whose symbols did not change, in one ``HSET``. The
    version moves only when a record had to be created again (it had expired and the poller dropped it):
    a refresh alone changes nothing the poller polls, so it does not make every poller re-read the hash."""
    if records and await client.hset(subs_key(terminal), mapping=records):
        await client.incr(subs_version_key(terminal))


async def unregister(client, terminal: str, socket_id: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.hdel(subs_key(terminal), socket_id)
    pipe.incr(subs_version_key(terminal))
    await pipe.execute()


def merge(records: dict, now: float) -> tuple[WatchedSymbols, list]:
    """Union of live records; also the ids of expired ones (to delete)."""
    quotes: set[str] = set()
    depth: set[str] = set()
    candles: set[tuple[str, str]] = set()
    expired = []
    for socket_id, raw in records.items():
        try:
            item = json.loads(raw)
        except (TypeError, ValueError):
            expired.append(socket_id)
            continue
        if float(item.get("exp", 0)) < now:
            expired.append(socket_id)
            continue
        quotes.update(item.get("q", ()))
        depth.update(item.get("d", ()))
        candles.update((str(pair[0]), str(pair[1])) for pair in item.get("c", ()) if len(pair) == 2)
    return WatchedSymbols(quotes, depth, candles), expired


@dataclass
class _Cached:
    version: bytes | None = None
    read_at: float = 0.0
    value: WatchedSymbols = field(default_factory=WatchedSymbols)


_cache: dict[str, _Cached] = {}


def watched(client, terminal: str) -> WatchedSymbols:
    """Synchronous read for the poller: one GET per call unless the subscriptions changed."""
    now = time.time()
    cached = _cache.setdefault(terminal, _Cached())
    version = client.get(subs_version_key(terminal))
    if version == cached.version and now - cached.read_at < FULL_REREAD:
        return cached.value
    value, expired = merge(client.hgetall(subs_key(terminal)), now)
    if expired:
        client.hdel(subs_key(terminal), *expired)
    cached.version, cached.read_at, cached.value = version, now, value
    return value
