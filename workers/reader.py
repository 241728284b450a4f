"""The read loop of one terminal: serves the terminal's read queue, never the order queue.

By default it is a thread of the terminal's process (``run_terminal_worker``, ``workers/terminal_threads.py``)
and shares that process's gateway with the pinned worker and the poller: a read waits while an
``order_send`` holds the gateway's lock. Run alone (``run_terminal_reader``, with the worker started
``--without-reader``) it is a process of its own with its own connection, and a read never waits behind
an order. Requests are served one at a time in arrival order; a heartbeat thread that never touches the
terminal keeps ``bridge:reader:<terminal>`` alive in Redis with what the reader last learnt about its
terminal, so the web tier answers 502 at once when the reader is gone or the terminal is unreachable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections

from terminals.binding import terminal_binding
from terminals.config import TerminalConfig, get_terminal
from terminals.gateway import GatewayError, TerminalGateway
from terminals.reads import ReadError, TerminalReads
from trading.reads.readqueue import RAW_MARK, REPLY_TTL, RedisClock, heartbeat_key, queue_key

logger = logging.getLogger("bridge.reader")

POLL_SECONDS = 1.0  # BRPOP timeout: how often an idle reader looks at its terminal (and at its stop event)
PROBE_SECONDS = 1.0  # how often an idle reader checks that its terminal and broker are reachable


class ReaderState:
    """What the heartbeat reports; written by the serving thread, read by the heartbeat thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.terminal_ok = False
        self.broker_connected = False
        self.error: str | None = None
        self.busy_with: str | None = None
        self.served = 0
        self.expired = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "terminal_ok": self.terminal_ok,
                "broker_connected": self.broker_connected,
                "error": self.error,
                "busy_with": self.busy_with,
                "served": self.served,
                "expired": self.expired,
            }

    def set_terminal(self, ok: bool, broker_connected: bool, error: str | None = None) -> None:
        with self.lock:
            self.terminal_ok, self.broker_connected, self.error = ok, broker_connected, error


class TerminalReader:
    """Serves ``bridge:read:<terminal>`` with one gateway; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, terminal: TerminalConfig, client: redis.Redis | None = None,
                 gateway: TerminalGateway | None = None):
        self.terminal = terminal
        self.redis = client or redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.owns_gateway = gateway is None  # a shared gateway (the terminal's process) is not ours to shut
        self.reads = TerminalReads(gateway or TerminalGateway(terminal, timeout_ms=settings.BRIDGE_READ_TERMINAL_TIMEOUT_MS))
        self.state = ReaderState()
        self.clock = RedisClock()
        self.identity = f"{terminal.name}@{socket.gethostname()}:{os.getpid()}"
        self.handlers = {
            "ping": lambda: {"pong": True},
            "account": self.reads.account,
            "trading_state": self.reads.trading_state,
            "positions": self.reads.positions,
            "orders": self.reads.orders,
            "symbols": self.reads.symbols,
            "symbol": self.reads.symbol,
            "tick": self.reads.tick,
            "depth": self.reads.depth,
            "rates": self.reads.rates,
            "ticks": self.reads.ticks,
            "history": self.reads.history_page,
        }

    # -- heartbeat -----------------------------------------------------------------------------
    def beat(self) -> None:
        ttl = settings.BRIDGE_READER_HEARTBEAT_TTL
        body = {"reader": self.identity, "at": time.time(), **self.state.snapshot()}
        self.redis.set(heartbeat_key(self.terminal.name), json.dumps(body), px=int(ttl * 1000))

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        interval = settings.BRIDGE_READER_HEARTBEAT_TTL / 4
        while not stop.is_set():
            try:
                self.beat()
            except redis.RedisError:
                logger.warning("reader heartbeat failed (Redis unreachable?)")
            stop.wait(interval)
        try:
            self.redis.delete(heartbeat_key(self.terminal.name))
        except redis.RedisError:
            pass

    # -- terminal ------------------------------------------------------------------------------
    def probe(self) -> None:
        """Learn whether the terminal answers and its broker is connected (for the heartbeat)."""
        try:
            status = self.reads.probe()
            self.state.set_terminal(True, status["broker_connected"])
        except (ReadError, GatewayError) as exc:
            self.state.set_terminal(False, False, str(exc))
            self.reads.gw.mark_lost()

    # -- serving -------------------------------------------------------------------------------
    def owner_refusal(self, session_id: str | None) -> ReadError | None:
        """None when the terminal is bound to ``session_id`` and shows the binding's account (read
        right before serving); else the error to answer: nothing of any account is served."""
        try:
            binding = terminal_binding(terminal_name=self.terminal.name)
        except DatabaseError as exc:
            close_old_connections()
            return ReadError("unavailable", f"the terminal's owner cannot be checked: {exc}",
                             {"reason": "database_unavailable"})
        if not session_id or binding is None or binding.session_id != session_id:
            return ReadError("unavailable", "the terminal is not logged in for this session",
                             {"reason": "account_mismatch"})
        if not binding.shows(self.reads.account()):  # a down terminal: ReadError terminal_down, as any read
            return ReadError("unavailable", "the terminal is logged in to another account than this session's",
                             {"reason": "account_mismatch"})
        return None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request's reply document (never raises)."""
        op = request.get("op", "")
        handler = self.handlers.get(op)
        if handler is None:
            return ReadError("invalid", f"unknown read {request.get('op')!r}").as_reply()
        try:
            if op != "ping":
                refusal = self.owner_refusal(request.get("session"))
                if refusal is not None:
                    return refusal.as_reply()
            value = handler(**(request.get("args") or {}))
        except ReadError as exc:
            if exc.kind == "unavailable" and "code" in exc.details and exc.details["code"] <= -10000:
                self.state.set_terminal(False, False, exc.message)
            return exc.as_reply()
        except GatewayError as exc:
            logger.warning("read %s failed at the terminal: %s", request.get("op"), exc)
            return ReadError("unavailable", f"the terminal failed the read: {exc.message}",
                             {"code": exc.code, "reason": "terminal_error"}).as_reply()
        except (TypeError, ValueError, KeyError) as exc:
            logger.exception("bad read request %s", request.get("op"))
            return ReadError("invalid", f"bad read request: {exc}").as_reply()
        return {"ok": True, "value": value}

    def serve_one(self, raw: bytes) -> None:
        try:
            request = json.loads(raw)
            reply_to = request["reply"]
        except (ValueError, KeyError, TypeError):
            logger.error("dropping malformed read request %r", raw[:200])
            return
        if self.clock.now(self.redis) > float(request.get("deadline") or 0):
            with self.state.lock:
                self.state.expired += 1
            return  # the caller has already answered 502: doing the read would only delay the next one
        with self.state.lock:
            self.state.busy_with = request.get("id")
        try:
            reply = self.handle(request)
        finally:
            with self.state.lock:
                self.state.busy_with = None
                self.state.served += 1
        try:  # strict JSON: a NaN or an infinity from the terminal must not reach a client as bad JSON
            if reply["ok"] and request.get("raw"):
                body = RAW_MARK + json.dumps(reply["value"], separators=(",", ":"), allow_nan=False).encode()
            else:
                body = json.dumps(reply, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            logger.error("read %s: answer is not JSON: %s", request.get("op"), exc)
            body = json.dumps(ReadError("unavailable", "the terminal answered a value that is not JSON",
                                        {"reason": "terminal_error"}).as_reply()).encode()
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(reply_to, body)
        pipe.expire(reply_to, REPLY_TTL)
        pipe.execute()

    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        self.probe()
        heartbeat = threading.Thread(target=self._heartbeat_loop, args=(stop,), name="reader-heartbeat", daemon=True)
        heartbeat.start()
        logger.info("reader for terminal %s serving queue %s", self.terminal.name, queue_key(self.terminal.name))
        if ready is not None:
            ready()
        last_probe = time.monotonic()
        queue = queue_key(self.terminal.name)
        while not stop.is_set():
            try:
                item = self.redis.brpop([queue], timeout=POLL_SECONDS)
            except redis.RedisError:
                logger.warning("reader cannot reach Redis; retrying")
                stop.wait(1.0)
                continue
            if item is not None:
                try:
                    self.serve_one(item[1])
                except redis.RedisError:  # the reply could not be sent: the caller answers 502 by itself
                    logger.warning("reader cannot reach Redis to answer a read; going on")
                if not self.state.terminal_ok:
                    self.probe()
            if time.monotonic() - last_probe >= PROBE_SECONDS:
                self.probe()
                last_probe = time.monotonic()
        heartbeat.join(timeout=2)
        if self.owns_gateway:
            self.reads.gw.shutdown()
        connections.close_all()  # this thread's database connections (a thread of the terminal's process)


def run_terminal_reader(name: str, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
    """Entry point of ``manage.py run_terminal_reader NAME``; ``ready`` is called once it serves."""
    TerminalReader(get_terminal(name)).run(stop, ready)
