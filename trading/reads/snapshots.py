"""Terminal snapshots in Redis: what the poller last saw at a terminal, with when it saw it.

The poller of a terminal writes one JSON document per cycle under ``bridge:snap:<terminal>``; the web
tier answers /account, /positions, /orders and /quotes from it (``asOf`` = ``taken_at``). Times in a
snapshot are real UTC already (the poller converts them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

SNAPSHOT_KEY = "bridge:snap:{terminal}"
# The ``taken_at`` of the snapshot under SNAPSHOT_KEY, written with it atomically: the hot read path
# (trading/reads/hotpath.py) reads this small key on every request and the snapshot only when it changed.
SNAPSHOT_VERSION_KEY = "bridge:snap:{terminal}:at"
# When the bridge last changed the terminal's trading state (a task settled after the terminal acted):
# a snapshot whose cycle started before this may not show it (read-your-writes, docs/reads.md).
CHANGED_KEY = "bridge:changed:{terminal}"
# Symbols a client asked a quote of: member = symbol, score = last time asked (unix seconds).
QUOTE_INTEREST_KEY = "bridge:quotes:wanted:{terminal}"


@dataclass
class TerminalSnapshot:
    """One poll cycle's view of a terminal (the object ``streams.poll_events.after_poll`` receives)."""

    account: dict[str, Any]
    positions: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    ticks: dict[str, dict[str, Any]]
    books: dict[str, list[dict[str, Any]]]
    deals: list[dict[str, Any]]  # history deals that appeared since the previous cycle
    taken_at: float  # unix seconds (real UTC) when the cycle started
    connected: bool = True  # the terminal's link to the trade server (terminal_info().connected)
    # The session the terminal was bound to when the snapshot was taken, "" when it was bound to none
    # or showed another account than the binding's: such a snapshot is served to no session.
    session_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.taken_at

    def to_json(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies every position and order (a third of a poll cycle's CPU
        # with thousands of positions); the fields are plain JSON values already. orjson: the stdlib's
        # encoder was a fifth of the poller's CPU with thousands of positions.
        return orjson.dumps({name: getattr(self, name) for name in self.__dataclass_fields__},
                            option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_json(cls, raw: bytes | str) -> TerminalSnapshot:
        data = orjson.loads(raw)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def snapshot_key(terminal: str) -> str:
    return SNAPSHOT_KEY.format(terminal=terminal)


def quote_interest_key(terminal: str) -> str:
    return QUOTE_INTEREST_KEY.format(terminal=terminal)


def snapshot_version_key(terminal: str) -> str:
    return SNAPSHOT_VERSION_KEY.format(terminal=terminal)


def store_snapshot(client: Any, terminal: str, snapshot: TerminalSnapshot, ttl: float = 3600) -> None:
    """The snapshot and its version, in one MULTI/EXEC (a reader never sees one without the other)."""
    pipe = client.pipeline(transaction=True)
    pipe.set(snapshot_key(terminal), snapshot.to_json(), ex=int(ttl))
    pipe.set(snapshot_version_key(terminal), repr(snapshot.taken_at), ex=int(ttl))
    pipe.execute()


def load_snapshot(client: Any, terminal: str) -> TerminalSnapshot | None:
    raw = client.get(snapshot_key(terminal))
    return TerminalSnapshot.from_json(raw) if raw else None


def changed_key(terminal: str) -> str:
    return CHANGED_KEY.format(terminal=terminal)


def note_terminal_changed(client: Any, terminal: str, at: float | None = None, ttl: float = 3600) -> None:
    """Record that the terminal's state changed at ``at`` (before the change is visible to clients)."""
    client.set(changed_key(terminal), repr(at if at is not None else time.time()), ex=int(ttl))


def load_snapshot_and_change(client: Any, terminal: str) -> tuple[TerminalSnapshot | None, float]:
    """The snapshot and the time of the last change the bridge made at the terminal (0.0: none), in
    one round trip."""
    raw, changed = client.mget(snapshot_key(terminal), changed_key(terminal))
    return (TerminalSnapshot.from_json(raw) if raw else None), float(changed or 0.0)


def note_quote_interest(client: Any, terminal: str, symbol: str, now: float | None = None) -> None:
    client.zadd(quote_interest_key(terminal), {symbol: now if now is not None else time.time()})


def wanted_quote_symbols(client: Any, terminal: str, ttl: float, now: float | None = None) -> set[str]:
    """Symbols asked for within ``ttl`` seconds (older interest is dropped)."""
    now = now if now is not None else time.time()
    key = quote_interest_key(terminal)
    client.zremrangebyscore(key, "-inf", now - ttl)
    return {m.decode() if isinstance(m, bytes) else m for m in client.zrange(key, 0, -1)}
