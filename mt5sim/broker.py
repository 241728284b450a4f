"""The trade server process (``python -m mt5sim broker``): one Engine per server name, many terminals.

Accounts, passwords, orders, positions, deals, history, prices and trade rules live here; terminals
(``python -m mt5sim serve --broker``) keep only what is theirs (login, Market Watch, terminal
properties, IPC faults) and send it along (a ``TerminalView``) whenever it changed.

Frames are the terminal protocol's (``protocol.py``). A terminal link sends
``[call_id, method, kwargs, view]`` where ``view`` is None (unchanged since the last call on this
link) or ``[server_name, login, password, market_watch, terminal, connected]``; the reply is the
same ``[call_id, status, payload]`` a client expects, so the terminal relays it undecoded. Other
connections (``Control``, ``python -m mt5sim control``) send ``[call_id, "ctl.<name>", kwargs]``
and reach the default server name (or ``server_name=`` in kwargs). ``broker.hello``,
``broker.auth`` and ``broker.ping`` serve terminals. ``ctl.trade_server`` at the broker address
disconnects that server name from every terminal (each terminal's own one only its own).
"""

from __future__ import annotations

import copy
import os
import re
import socket
import sys
import traceback
from typing import Any

from . import protocol
from .engine.engine import Engine, EngineError, Session, TerminalView
from .listener import CALL_FAILED, ThreadedListener

_UNSUPPORTED = [-7, "Terminal: Unsupported function"]


class _AllBooks(set):
    """A broker-side session is subscribed to every book: the terminal checks its clients' subscriptions."""

    def __contains__(self, item: object) -> bool:
        return True


def server_configs(config: dict | None, servers: list[tuple[str, int | None]]) -> dict[str, dict]:
    """One engine configuration per server name: the user's config with that name (and clock offset)."""
    base = copy.deepcopy(config or {})
    if not servers:
        name = str((base.get("server") or {}).get("name") or "MT5Sim-Demo")
        servers = [(name, None)]
    out: dict[str, dict] = {}
    for name, offset in servers:
        cfg = copy.deepcopy(base)
        server = cfg.setdefault("server", {})
        server["name"] = name
        if offset is not None:
            server["offset_seconds"] = int(offset)
            server.pop("offset_hours", None)
        out[name] = cfg
    return out


def _state_subdir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, re.sub(r"[^A-Za-z0-9._-]", "_", name))


class Broker:
    """The engines of one broker process, by server name (the first is the default)."""

    def __init__(self, config: dict | None, state_dir: str | None, seed: int = 0,
                 servers: list[tuple[str, int | None]] | None = None) -> None:
        self.engines: dict[str, Engine] = {}
        try:
            for name, cfg in server_configs(config, servers or []).items():
                state = _state_subdir(state_dir, name) if state_dir else None
                self.engines[name] = Engine(cfg, state, seed=seed)
        except BaseException:
            self.close()
            raise
        self.default = next(iter(self.engines))

    def engine(self, name: str | None) -> Engine:
        return self.engines.get(name or self.default) or self.engines[self.default]

    def hello(self) -> dict:
        """What a terminal needs to run on its own: symbols, default Market Watch, terminal properties."""
        servers = {}
        for name, engine in self.engines.items():
            with engine._lock:
                servers[name] = {
                    "symbols": list(engine.symbols),
                    "select": sorted(n for n, s in engine.symbols.items() if s["select"]),
                    "terminal": dict(engine.cfg["terminal"]),
                    "offset_seconds": engine.server_offset,
                }
        return {"servers": servers, "default": self.default, "pid": os.getpid()}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


class _Link:
    """One terminal link's broker-side state: its view and the engine it talks to."""

    __slots__ = ("engine", "view", "session")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.view = TerminalView(None, set(), dict(engine.cfg["terminal"]), True)
        self.session = Session()
        self.session.initialized = True
        self.session.books = _AllBooks()


class BrokerServer(ThreadedListener):
    """TCP front of a Broker: one thread per connection (terminal links and control connections)."""

    log_name = "mt5sim broker"
    thread_name = "mt5sim-broker"

    def __init__(self, broker: Broker, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.broker = broker

    def _serve_connection(self, sock: socket.socket) -> None:
        link = _Link(self.broker.engine(None))
        self._serve_frames(sock, lambda message: self._answer(link, message))

    def _answer(self, link: _Link, message: Any) -> bytes | None:
        try:
            call_id, method, kwargs = message[0], str(message[1]), message[2] or {}
        except (TypeError, IndexError):
            return None
        if len(message) > 3 and message[3] is not None:
            self._sync_view(link, message[3])
        status, payload = self._dispatch(link, method, kwargs, len(message) > 3)
        return self._reply_frame(call_id, method, status, payload)

    def _sync_view(self, link: _Link, view: list) -> None:
        """A terminal's state changed: take it, and log its login in again (this broker may have restarted)."""
        server_name, login, password, market_watch, terminal, connected = view
        engine = self.broker.engine(server_name)
        link.engine = engine
        link.view.market_watch = set(market_watch)
        link.view.terminal = dict(terminal)
        link.view.connected = bool(connected)
        link.view.login = None
        if login is not None:
            try:
                link.view.login = engine.authenticate_remote(int(login), password, None)[0]
            except EngineError:
                link.view.login = None  # every account call then fails, as for a terminal without account

    def _dispatch(self, link: _Link, method: str, kwargs: dict, from_terminal: bool) -> tuple[str, Any]:
        try:
            if method.startswith("ctl."):
                name = method[4:]
                if from_terminal:
                    status, value = link.engine.control_as(link.view, name, kwargs)
                else:
                    kwargs = dict(kwargs)
                    engine = self.broker.engine(kwargs.pop("server_name", None))
                    if name == "ping":
                        return protocol.STATUS_OK, True
                    status, value = engine.control(name, kwargs)
                    if name == "state" and status == "ok" and isinstance(value, dict):
                        value = dict(value, broker={"servers": list(self.broker.engines),
                                                    "default": self.broker.default})
            elif method.startswith("broker."):
                return self._broker_call(link, method[7:], kwargs)
            elif from_terminal:
                status, value = link.engine.call_as(link.view, link.session, method, kwargs)
            else:
                return protocol.STATUS_ERR, _UNSUPPORTED
        except Exception:  # an engine bug answers "call failed", the broker lives on
            print(f"mt5sim broker: {method} failed", file=sys.stderr, flush=True)
            traceback.print_exc()
            return protocol.STATUS_ERR, CALL_FAILED
        if status == "err":
            return protocol.STATUS_ERR, [int(value[0]), str(value[1])]
        if status == protocol.STATUS_IPC_TIMEOUT:
            return protocol.STATUS_IPC_TIMEOUT, None
        return protocol.STATUS_OK, value

    def _broker_call(self, link: _Link, name: str, kwargs: dict) -> tuple[str, Any]:
        if name == "ping":  # False while the server name is "disconnected" (ctl.trade_server at the broker)
            return protocol.STATUS_OK, bool(link.engine.connected)
        if name == "hello":
            return protocol.STATUS_OK, self.broker.hello()
        if name == "auth":
            engine = self.broker.engine(kwargs.get("server_name"))
            login = kwargs.get("login")
            try:
                got, created = engine.authenticate_remote(None if login is None else int(login),
                                                          kwargs.get("password"), kwargs.get("server"))
            except EngineError as exc:
                return protocol.STATUS_ERR, [int(exc.err[0]), str(exc.err[1])]
            acct = engine.accounts[got]
            return protocol.STATUS_OK, {"login": got, "server": acct["server"], "created": created}
        return protocol.STATUS_ERR, _UNSUPPORTED
