"""The snapshot poller of one terminal: account, positions, pending orders, ticks and books in Redis.

It runs as a thread of the terminal's process (``run_terminal_worker``, sharing its gateway with the
pinned worker and the reader: a cycle waits while an ``order_send`` holds the gateway's lock), or alone
as ``run_terminal_poller`` beside a worker started ``--without-poller``. Each cycle reads the terminal,
writes one snapshot under ``bridge:snap:<terminal>`` with ``taken_at`` (served as ``asOf``), and hands
the previous and current snapshots to ``streams.poll_events.after_poll`` (the events work turns the
differences into events).

Cadence: every ``BRIDGE_POLL_INTERVAL`` seconds (default 0.25) while the terminal is *active*; every
``BRIDGE_POLL_IDLE_INTERVAL`` (default 1.0, at most half of ``BRIDGE_SNAPSHOT_MAX_AGE``, so an idle
terminal's snapshot is always servable) while it is idle. Active means: a socket watches a quote or a
book of it, a client asked a quote of it within ``BRIDGE_QUOTE_INTEREST_TTL``, something other than
prices changed (positions, orders, balance, deals, the binding, the link) within ``ACTIVE_HOLD`` seconds,
or the bridge changed the terminal since the last snapshot (the read-your-writes mark, checked every
``BRIDGE_POLL_INTERVAL`` even when idle, so the snapshot after an order comes as soon as before). So the
quotes clients use keep their freshness; only an unwatched terminal's floating profit is refreshed less
often. An explicit ``interval`` (``--interval``) without ``idle_interval`` polls at that one cadence.

Ticks are kept for the symbols the events work watches (``watched_symbols``), the symbols of open
positions and pending orders, and the symbols clients asked a quote of recently; books for the
watched symbols (``watched_symbols(...).depth`` when the events work names that subset). ``deals`` holds
the history deals that appeared since the previous cycle.

For the events, each cycle also reads the terminal's tick stream of every watched symbol since the last
tick seen (``copy_ticks_from``: every tick, not one sample per cycle) and the bars of the watched
(symbol, timeframe) pairs (``watched_symbols(...).candles``), see ``workers.tick_stream``; they go to
``after_poll`` as the snapshot's ``live`` attribute (not a field: never stored in Redis).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections

from streams import poll_events
from terminals.binding import terminal_binding
from terminals.config import TerminalConfig, get_terminal
from terminals.gateway import GatewayError, TerminalGateway, as_dict
from terminals.reads import ReadError, TerminalReads
from terminals.timeutil import record_to_utc
from trading.reads.snapshots import TerminalSnapshot, changed_key, store_snapshot, wanted_quote_symbols
from workers.tick_stream import CandleWatch, TickStream

logger = logging.getLogger("bridge.poller")

ACTIVE_HOLD = 2.0  # seconds a terminal stays active after a change other than prices, or a write of the bridge
CRASH_CYCLE = 8  # test mode, BRIDGE_CRASH_AT=poller_thread: the cycle that raises (once the process is up)

# What identifies a position or an order apart from prices (its floating profit and current price move
# with every tick and do not make the terminal active).
_POSITION_FIELDS = ("ticket", "symbol", "type", "volume", "price_open", "sl", "tp", "magic", "comment")
_ORDER_FIELDS = ("ticket", "symbol", "type", "volume_current", "price_open", "price_stoplimit", "sl", "tp",
                 "type_time", "time_expiration", "state")
_ACCOUNT_FIELDS = ("login", "server", "balance", "credit", "leverage", "trade_allowed", "currency")


def _shape(snapshot: TerminalSnapshot) -> tuple:
    """The snapshot without its prices: equal shapes mean nothing but prices changed between two cycles."""
    account = snapshot.account or {}
    return (
        snapshot.session_id, snapshot.connected, bool(snapshot.deals),
        tuple(account.get(f) for f in _ACCOUNT_FIELDS),
        tuple(sorted(tuple(p.get(f) for f in _POSITION_FIELDS) for p in snapshot.positions)),
        tuple(sorted(tuple(o.get(f) for f in _ORDER_FIELDS) for o in snapshot.orders)),
    )


class TerminalPoller:
    """Polls one terminal into Redis snapshots; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, terminal: TerminalConfig, client: redis.Redis | None = None,
                 gateway: TerminalGateway | None = None, interval: float | None = None,
                 idle_interval: float | None = None, worker_gateway: bool = False):
        """``worker_gateway``: ``gateway`` is the pinned worker's own, in its process (the only one that trades on
        the terminal): its count of writes tells the bridge's changes, in place of the change mark in Redis."""
        self.terminal = terminal
        self.redis = client or redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.owns_gateway = gateway is None  # a shared gateway (the terminal's process) is not ours to shut
        self.reads = TerminalReads(gateway or TerminalGateway(terminal, timeout_ms=settings.BRIDGE_READ_TERMINAL_TIMEOUT_MS))
        self.interval = interval if interval is not None else settings.BRIDGE_POLL_INTERVAL
        if idle_interval is None:
            idle_interval = self.interval if interval is not None else settings.BRIDGE_POLL_IDLE_INTERVAL
        # Idle, a snapshot must still be servable (younger than BRIDGE_SNAPSHOT_MAX_AGE) between two cycles.
        self.idle_interval = max(self.interval, min(idle_interval, settings.BRIDGE_SNAPSHOT_MAX_AGE / 2))
        self.active_until = 0.0  # monotonic time until which the terminal counts as active
        self.worker_gateway = worker_gateway
        self.writes_seen = self.reads.gw.writes  # the worker's gateway's count of the bridge's writes
        self.interest = False  # the last cycle found a watcher or a recent quote request
        self.previous: TerminalSnapshot | None = None
        self.seen_deals: dict[int, int] = {}
        self.deals_primed = False
        self.selected: set[str] = set()
        self.watched: frozenset[str] = frozenset()  # the events work's watched symbols of the last cycle
        self.tick_stream = TickStream(self.reads)
        self.candles = CandleWatch(self.reads)
        self.cycles = 0
        self.last_good: float | None = None

    def _symbols_to_watch(self, positions: list[dict], orders: list[dict]) -> tuple[set[str], set[str]]:
        """(symbols to keep ticks of, symbols to keep books of)."""
        try:
            found = poll_events.watched_symbols(self.terminal.name) or frozenset()
            self.watched = found
            watched = set(found)
            # The events work may name the subset that needs books (``.depth``); else every watched symbol.
            depth = set(getattr(found, "depth", watched))
        except Exception:  # the events work's bug must not stop snapshots
            logger.exception("watched_symbols failed")
            watched, depth = set(), set()
            self.watched = frozenset()
        wanted = wanted_quote_symbols(self.redis, self.terminal.name, settings.BRIDGE_QUOTE_INTEREST_TTL)
        self.interest = bool(watched or wanted)
        held = {p["symbol"] for p in positions} | {o["symbol"] for o in orders}
        return watched | wanted | held, depth

    def _tick(self, symbol: str) -> dict[str, Any] | None:
        try:
            if symbol not in self.selected:
                self.reads.selected(symbol)  # Market Watch first, or the terminal has no tick for it
                self.selected.add(symbol)
            tick = as_dict(self.reads.call("symbol_info_tick", symbol))
        except ReadError as exc:
            if exc.kind == "unavailable":
                raise
            return None  # an unknown symbol asked for by a client: nothing to keep
        except GatewayError:
            self.selected.discard(symbol)
            return None
        return {"symbol": symbol, **record_to_utc(tick, self.reads.offset)}

    def _live(self, ticks: dict[str, dict[str, Any]]) -> poll_events.LiveFeed:
        """Every tick of the watched symbols since the previous cycle, and the bars of the watched
        (symbol, timeframe) pairs that changed or completed (``workers.tick_stream``)."""
        quotes = set(getattr(self.watched, "quotes", self.watched))
        candles = set(getattr(self.watched, "candles", ()))
        streamed = quotes | {symbol for symbol, _ in candles}
        self.tick_stream.forget(streamed)
        self.candles.forget(candles)
        live = poll_events.LiveFeed()
        for symbol in sorted(streamed):
            if symbol in ticks:  # a symbol the terminal has a tick of (an unknown one has none)
                live.ticks[symbol] = self.tick_stream.read(symbol, ticks[symbol])
        for symbol, timeframe in sorted(candles):
            if symbol in ticks:
                bars = self.candles.read(symbol, timeframe, ticked=bool(live.ticks.get(symbol)))
                if bars:
                    live.candles[(symbol, timeframe)] = bars
        return live

    def _owner(self, account: dict[str, Any]) -> str:
        """The session this cycle's data may be served to: the terminal's bound session, if the
        terminal shows its account; else "" (nobody: e.g. a login switched the account by hand)."""
        try:
            binding = terminal_binding(terminal_name=self.terminal.name)
        except DatabaseError:
            logger.warning("poller of %s cannot read the terminal's binding: snapshot served to nobody",
                           self.terminal.name)
            close_old_connections()
            return ""
        return binding.session_id if binding is not None and binding.shows(account) else ""

    def poll_once(self) -> TerminalSnapshot:
        """One cycle: read the terminal, store the snapshot, call after_poll."""
        if self.cycles == CRASH_CYCLE and settings.BRIDGE_TEST_MODE and settings.BRIDGE_CRASH_AT == "poller_thread":
            raise RuntimeError("BRIDGE_CRASH_AT=poller_thread: the poller dies here (test mode)")
        taken_at = time.time()
        info = self.reads.terminal_info(fresh=True)
        account = self.reads.account()
        positions = self.reads.positions()
        orders = self.reads.orders()
        tick_symbols, book_symbols = self._symbols_to_watch(positions, orders)
        ticks = {}
        for symbol in sorted(tick_symbols):
            tick = self._tick(symbol)
            if tick is not None:
                ticks[symbol] = tick
        live = self._live(ticks)
        books = {}
        for symbol in sorted(book_symbols):
            try:
                books[symbol] = self.reads.book(symbol)
            except ReadError as exc:
                if exc.details.get("code", 0) <= -10000:
                    raise
            except GatewayError:
                continue
        # Look back past the last good cycle, so a poller that was stuck or down misses no deal.
        window = 120 if self.last_good is None else int(min(max(120, time.time() - self.last_good + 60), 7 * 86400))
        deals = self.reads.new_deals_since(self.seen_deals, window)
        if not self.deals_primed:  # the first cycle learns what already exists; nothing is "new"
            deals, self.deals_primed = [], True
        snapshot = TerminalSnapshot(
            account=account, positions=positions, orders=orders, ticks=ticks, books=books, deals=deals,
            taken_at=taken_at, connected=bool(info.get("connected")), session_id=self._owner(account),
            extra={"poller_cycle_ms": round((time.time() - taken_at) * 1000, 2)},
        )
        snapshot.live = live  # a part for after_poll only: not a field, so never stored with the snapshot
        store_snapshot(self.redis, self.terminal.name, snapshot)
        if self.previous is None or _shape(snapshot) != _shape(self.previous):
            self.active_until = time.monotonic() + ACTIVE_HOLD
        previous, self.previous = self.previous, snapshot
        self.cycles += 1
        self.last_good = taken_at
        try:
            poll_events.after_poll(self.terminal.name, previous, snapshot)
        except Exception:  # the events work's bug must not stop snapshots
            logger.exception("after_poll failed")
        return snapshot

    def active(self) -> bool:
        """Poll at ``interval`` (else at ``idle_interval``): watched, asked, or changed a moment ago."""
        return self.interest or time.monotonic() < self.active_until

    def _changed_or_unknown(self) -> bool:
        """The bridge changed the terminal after the last snapshot was taken, or that cannot be told (no
        snapshot yet, Redis unreachable: the cycle says why). In the terminal's process the gateway is shared
        with the pinned worker, the only one that trades on the terminal: its count of writes says it, for
        free (and the terminal counts as active for a moment, since the change mark may follow the write).
        A poller of its own process reads the read-your-writes mark (one GET)."""
        if self.previous is None:
            return True
        if self.worker_gateway:
            return self._bridge_wrote()
        try:
            raw = self.redis.get(changed_key(self.terminal.name))
        except redis.RedisError:
            return True
        return raw is not None and float(raw) >= self.previous.taken_at

    def _bridge_wrote(self) -> bool:
        """The worker's gateway wrote since last asked; the terminal is then active for ``ACTIVE_HOLD``."""
        writes = self.reads.gw.writes
        if writes == self.writes_seen:
            return False
        self.writes_seen = writes
        self.active_until = time.monotonic() + ACTIVE_HOLD
        return True

    def _cycle(self, failing: bool) -> bool:
        """One poll; returns whether the terminal is failing (logged once per failure spell)."""
        try:
            self.poll_once()
            if failing:
                logger.info("terminal %s reachable again", self.terminal.name)
            return False
        except (ReadError, GatewayError) as exc:
            if not failing:
                logger.warning("poll of terminal %s failed: %s", self.terminal.name, exc)
            self.reads.gw.mark_lost()
            self.selected.clear()
            self.reads.books.clear()
            return True
        except redis.RedisError:
            logger.warning("poller cannot reach Redis; retrying")
            return failing

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        logger.info("poller for terminal %s polling every %.3fs (idle: every %.3fs)", self.terminal.name,
                    self.interval, self.idle_interval)
        if ready is not None:
            ready()
        failing = False
        last = -float("inf")  # monotonic start of the last cycle
        while not stop.is_set():
            now = time.monotonic()
            if failing or self.active():
                due = now - last >= self.interval
                if self.worker_gateway:
                    self._bridge_wrote()  # a write now keeps the cadence up for a moment
            else:  # idle: a cycle every idle_interval, and at once after a change the bridge made
                due = now - last >= self.idle_interval or self._changed_or_unknown()
            if due:
                last = now
                failing = self._cycle(failing)
            # Wake on the interval's grid from the last cycle's start: a cycle every `interval` when active.
            stop.wait(self.interval - (time.monotonic() - last) % self.interval)
        if self.owns_gateway:
            self.reads.gw.shutdown()
        connections.close_all()  # this thread's database connections (a thread of the terminal's process)


def run_terminal_poller(name: str, stop: threading.Event, interval: float | None = None,
                        ready: Callable[[], None] | None = None) -> None:
    """Entry point of ``manage.py run_terminal_poller NAME``; ``ready`` is called before the first cycle."""
    TerminalPoller(get_terminal(name), interval=interval).run(stop, ready)
