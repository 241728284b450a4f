"""The snapshot poller of one terminal: account, positions, pending orders, ticks and books in Redis.

Every ``BRIDGE_POLL_INTERVAL`` seconds (default 0.25) it reads the terminal through its own gateway
(a third process on the terminal, beside the pinned worker and the reader), writes one snapshot under
``bridge:snap:<terminal>`` with ``taken_at`` (served as ``asOf``), and hands the previous and current
snapshots to ``streams.poll_events.after_poll`` (the events work turns the differences into events).

Ticks are kept for the symbols the events work watches (``watched_symbols``), the symbols of open
positions and pending orders, and the symbols clients asked a quote of recently; books for the
watched symbols (``watched_symbols(...).depth`` when the events work names that subset). ``deals`` holds
the history deals that appeared since the previous cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from streams import poll_events
from terminals.binding import terminal_binding
from terminals.config import TerminalConfig, get_terminal
from terminals.gateway import GatewayError, TerminalGateway, as_dict
from terminals.reads import ReadError, TerminalReads
from terminals.timeutil import record_to_utc
from trading.reads.snapshots import TerminalSnapshot, store_snapshot, wanted_quote_symbols

logger = logging.getLogger("bridge.poller")


class TerminalPoller:
    """Polls one terminal into Redis snapshots; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, terminal: TerminalConfig, client: redis.Redis | None = None,
                 gateway: TerminalGateway | None = None, interval: float | None = None):
        self.terminal = terminal
        self.redis = client or redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.reads = TerminalReads(gateway or TerminalGateway(terminal, timeout_ms=settings.BRIDGE_READ_TERMINAL_TIMEOUT_MS))
        self.interval = interval if interval is not None else settings.BRIDGE_POLL_INTERVAL
        self.previous: TerminalSnapshot | None = None
        self.seen_deals: dict[int, int] = {}
        self.deals_primed = False
        self.selected: set[str] = set()
        self.cycles = 0
        self.last_good: float | None = None

    def _symbols_to_watch(self, positions: list[dict], orders: list[dict]) -> tuple[set[str], set[str]]:
        """(symbols to keep ticks of, symbols to keep books of)."""
        try:
            found = poll_events.watched_symbols(self.terminal.name) or ()
            watched = set(found)
            # The events work may name the subset that needs books (``.depth``); else every watched symbol.
            depth = set(getattr(found, "depth", watched))
        except Exception:  # the events work's bug must not stop snapshots
            logger.exception("watched_symbols failed")
            watched, depth = set(), set()
        wanted = wanted_quote_symbols(self.redis, self.terminal.name, settings.BRIDGE_QUOTE_INTEREST_TTL)
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
        store_snapshot(self.redis, self.terminal.name, snapshot)
        previous, self.previous = self.previous, snapshot
        self.cycles += 1
        self.last_good = taken_at
        try:
            poll_events.after_poll(self.terminal.name, previous, snapshot)
        except Exception:  # the events work's bug must not stop snapshots
            logger.exception("after_poll failed")
        return snapshot

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        logger.info("poller for terminal %s ready (every %.3fs)", self.terminal.name, self.interval)
        if ready is not None:
            ready()
        failing = False
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
                if failing:
                    logger.info("terminal %s reachable again", self.terminal.name)
                failing = False
            except (ReadError, GatewayError) as exc:
                if not failing:
                    logger.warning("poll of terminal %s failed: %s", self.terminal.name, exc)
                failing = True
                self.reads.gw.mark_lost()
                self.selected.clear()
                self.reads.books.clear()
            except redis.RedisError:
                logger.warning("poller cannot reach Redis; retrying")
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        self.reads.gw.shutdown()


def run_terminal_poller(name: str, stop: threading.Event, interval: float | None = None,
                        ready: Callable[[], None] | None = None) -> None:
    """Entry point of ``manage.py run_terminal_poller NAME``; ``ready`` is called before the first cycle."""
    TerminalPoller(get_terminal(name), interval=interval).run(stop, ready)
