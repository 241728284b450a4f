"""A terminal connected to a broker (``python -m mt5sim serve --broker HOST:PORT``).

The terminal keeps only terminal-local state: the login it is logged in to (and the passwords it
saved), its Market Watch, terminal properties, market book subscriptions of its clients and the
IPC faults. Everything about accounts and markets is asked of the broker (``broker.py``).

Each client connection gets its own persistent link to the broker (one thread per client both
sides, blocking sockets: no multiplexing lock on the hot path). A request is forwarded as
``[call_id, method, kwargs, view]`` and the broker's reply relayed to the client undecoded. The
view (``TerminalState.view``) travels only when the terminal state changed since that link's last
call. Without the broker, calls answer as a terminal without a trade server connection:
``terminal_info().connected`` is False, trade requests get 10031 (an ``order_send`` whose reply was
lost answers ``IPC timeout``: its outcome is unknown), read calls answer what the terminal last
received for the same call (account, positions, ticks...; ``(-1, 'Terminal: Call failed')`` for a
call never answered), ``login``/``initialize(login=...)`` ``IPC timeout``; each call tries to reconnect.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import traceback
from typing import Any

from . import protocol
from .engine import _const as C
from .engine.journal import StateDirLocked
from .engine.trading import _REQUEST_KEYS
from .server import TerminalServer

ERR_NOT_FOUND = [-4, "Terminal: Not found"]
ERR_CALL_FAILED = [-1, "Terminal: Call failed"]
ERR_INVALID_PARAMS = [-2, "Terminal: Invalid params"]
ERR_NO_IPC = [-10004, "No IPC connection"]
STATE_FILE = "terminal.json"
LOCK_FILE = "terminal.lock"
LINK_TIMEOUT = 65.0
CONNECT_TIMEOUT = 2.0


class LinkDown(Exception):
    """The broker could not be reached; ``sent`` tells whether the request may have arrived."""

    def __init__(self, sent: bool) -> None:
        super().__init__(sent)
        self.sent = sent


class TerminalState:
    """Terminal-local state, persisted in ``--state DIR/terminal.json`` when a state dir is given."""

    def __init__(self, state_dir: str | None, server_name: str | None, overrides: dict | None) -> None:
        self.lock = threading.Lock()
        self.path = os.path.join(state_dir, STATE_FILE) if state_dir else None
        self.version = 1
        self.hello: dict = {}
        self.server_name = server_name
        self.login: int | None = None
        self.passwords: dict[int, str | None] = {}
        self.market_watch: set[str] | None = None
        self.symbols: frozenset[str] = frozenset()  # the server name's symbols (broker.hello)
        self.overrides = dict(overrides or {})  # terminal properties from the terminal's own config
        self.terminal: dict = {}
        self.changed_terminal: dict = {}  # set_terminal at run time (until reset)
        self.trade_connected = True  # ctl.trade_server
        self._dir_lock = None
        if state_dir:
            self._dir_lock = open(os.path.join(state_dir, LOCK_FILE), "a+")  # held for the process life
            try:
                fcntl.flock(self._dir_lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                self._dir_lock.close()
                raise StateDirLocked(f"state dir {state_dir} is used by another mt5sim terminal") from exc
        if self.path and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as handle:
                saved = json.load(handle)
            self.server_name = saved.get("server_name") or server_name
            self.login = saved.get("login")
            self.passwords = {int(k): v for k, v in (saved.get("passwords") or {}).items()}
            self.market_watch = set(saved.get("market_watch") or [])

    # -- what the broker told us ---------------------------------------------------------------
    def set_hello(self, hello: dict) -> None:
        with self.lock:
            self.hello = hello
            servers = hello["servers"]
            if self.server_name not in servers:
                self.server_name = hello["default"]
            info = servers[self.server_name]
            if self.market_watch is None:
                self.market_watch = set(info["select"])
            else:
                self.market_watch &= set(info["symbols"])
            self.symbols = frozenset(info["symbols"])
            self.terminal = {**info["terminal"], **self.overrides, **self.changed_terminal}
            self.version += 1

    # -- changes -------------------------------------------------------------------------------
    def _changed(self) -> None:
        self.version += 1
        if self.path is None:
            return
        data = {"server_name": self.server_name, "login": self.login,
                "passwords": {str(k): v for k, v in self.passwords.items()},
                "market_watch": sorted(self.market_watch or ())}
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, self.path)

    def set_login(self, server_name: str, login: int, password: str | None) -> None:
        with self.lock:
            if server_name != self.server_name:
                info = self.hello["servers"][server_name]
                self.server_name = server_name
                self.market_watch = set(info["select"])
                self.symbols = frozenset(info["symbols"])
            self.login = login
            if password is not None:
                self.passwords[login] = password
            self._changed()

    def select(self, symbol: str, enable: bool) -> None:
        with self.lock:
            assert self.market_watch is not None
            if enable:
                self.market_watch.add(symbol)
            else:
                self.market_watch.discard(symbol)
            self._changed()

    def set_terminal(self, props: dict) -> dict:
        with self.lock:
            for key in props:
                if key not in self.terminal:
                    raise KeyError(key)
            self.changed_terminal.update(props)
            self.terminal.update(props)
            self.version += 1
            return dict(self.terminal)

    def set_trade_connected(self, connected: bool) -> bool:
        with self.lock:
            self.trade_connected = bool(connected)
            self.version += 1
            return self.trade_connected

    def reset(self, full: bool) -> None:
        """``ctl.reset``: terminal properties and connection back; ``full`` also the Market Watch."""
        with self.lock:
            self.changed_terminal.clear()
            info = self.hello["servers"][self.server_name]
            self.terminal = {**info["terminal"], **self.overrides}
            self.trade_connected = True
            if full:
                self.market_watch = set(info["select"])
                self._changed()
            else:
                self.version += 1

    def view(self) -> tuple[int, list]:
        with self.lock:
            login = self.login
            return self.version, [self.server_name, login, self.passwords.get(login) if login is not None else None,
                                  sorted(self.market_watch or ()), dict(self.terminal), self.trade_connected]


class BrokerLink:
    """One persistent connection to the broker (one per client connection of the terminal)."""

    __slots__ = ("address", "state", "sock", "reader", "synced")

    def __init__(self, address: tuple[str, int], state: TerminalState) -> None:
        self.address = address
        self.state = state
        self.sock: socket.socket | None = None
        self.reader: protocol.FrameReader | None = None
        self.synced = 0

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.reader = None

    def _connect(self) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise LinkDown(False) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(LINK_TIMEOUT)
        self.sock, self.reader = sock, protocol.FrameReader(sock)
        self.synced = 0
        try:  # the broker may have restarted with another configuration: learn it again
            sock.sendall(protocol.pack([0, "broker.hello", {}]))
            _, status, hello = self.reader.read()
        except (OSError, protocol.ConnectionClosed, ValueError) as exc:
            self.close()
            raise LinkDown(False) from exc
        if status == protocol.STATUS_OK:
            self.state.set_hello(hello)

    def request(self, call_id: Any, method: str, kwargs: dict) -> bytes:
        """Send one call (with the terminal's view if it changed) and return the reply body undecoded."""
        if self.sock is None:
            self._connect()
        assert self.sock is not None and self.reader is not None
        version = self.state.version
        if version != self.synced:
            version, view = self.state.view()
            message = [call_id, method, kwargs, view]
        else:
            message = [call_id, method, kwargs, None]
        try:
            self.sock.sendall(protocol.pack(message))
        except OSError as exc:
            self.close()
            raise LinkDown(False) from exc
        self.synced = version
        try:
            return self.reader.read_body()
        except (OSError, protocol.ConnectionClosed) as exc:
            self.close()
            raise LinkDown(True) from exc

    def call(self, method: str, kwargs: dict) -> tuple[str, Any]:
        """A request whose answer the terminal itself needs: (status, payload)."""
        _, status, payload = protocol.unpack(self.request(0, method, kwargs))
        return status, payload


class _Client:
    __slots__ = ("initialized", "books")

    def __init__(self) -> None:
        self.initialized = False
        self.books: set[str] = set()


def _echo(request: dict) -> list:
    return [request.get(k, "" if k in ("symbol", "comment") else 0) for k in _REQUEST_KEYS]


def _no_connection_result(method: str, kwargs: dict) -> list:
    request = kwargs.get("request") or {}
    comment = C.RETCODE_COMMENTS.get(C.TRADE_RETCODE_CONNECTION, "No connection with the trade server")
    if method == "order_check":
        return [C.TRADE_RETCODE_CONNECTION, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, comment, _echo(request)]
    return [C.TRADE_RETCODE_CONNECTION, 0, 0, 0.0, 0.0, 0.0, 0.0, comment, 0, 0, _echo(request)]


def _reply(call_id: Any, status: str, payload: Any) -> bytes:
    return protocol.pack([call_id, status, payload])


class RemoteTerminalServer(TerminalServer):
    """A terminal whose trade server is a broker process. Start with ``connect()`` then ``start()``."""

    def __init__(self, broker_address: str, host: str = "127.0.0.1", port: int = 0, state_dir: str | None = None,
                 server_name: str | None = None, terminal_overrides: dict | None = None) -> None:
        super().__init__(None, host, port)
        parsed = protocol.parse_address(broker_address)
        if parsed is None:
            raise ValueError(f"not a host:port address: {broker_address!r}")
        self.broker_address = broker_address
        self.broker = parsed
        self.state = TerminalState(state_dir, server_name, terminal_overrides)
        self.known: dict[tuple, bytes] = {}  # (server, login, method, kwargs) -> the broker's last answer
        self.known_bytes = 0

    def connect(self, stop: threading.Event, wait: bool = True) -> bool:
        """Learn the broker's servers and symbols; with ``wait``, until it answers or ``stop`` is set."""
        link = BrokerLink(self.broker, self.state)
        while True:
            try:
                link._connect()
                if self.state.hello:
                    link.close()
                    return True
            except LinkDown:
                pass
            link.close()
            if not wait or stop.wait(0.2):
                return False

    # -- connections -----------------------------------------------------------------------------
    def _serve_connection(self, sock: socket.socket) -> None:
        client = _Client()
        link = BrokerLink(self.broker, self.state)
        try:
            self._serve_frames(sock, lambda message: self._answer_client(client, link, message))
        finally:
            link.close()

    def _answer_client(self, client: _Client, link: BrokerLink, message: Any) -> bytes | None:
        try:
            call_id, method, kwargs = message
        except (TypeError, ValueError):
            return None
        try:
            return self._handle(client, link, call_id, str(method), kwargs or {})
        except Exception as exc:  # a bug answers "call failed", the terminal lives on
            print(f"mt5sim terminal: {method} failed: {exc!r}", flush=True)
            traceback.print_exc()
            return _reply(call_id, protocol.STATUS_ERR, ERR_CALL_FAILED)

    def _handle(self, client: _Client, link: BrokerLink, call_id: Any, method: str, kwargs: dict) -> bytes:
        if method.startswith("ctl."):
            status, payload = self._terminal_control(link, method[4:], kwargs)
            return _reply(call_id, status, payload)
        delay = self.faults.delay_for(method)
        if delay:
            time.sleep(delay)
        timeout = self.faults.take_timeout(method)
        if timeout is not None:
            if timeout:
                self._call(client, link, call_id, method, kwargs)
            return _reply(call_id, protocol.STATUS_IPC_TIMEOUT, None)
        return self._call(client, link, call_id, method, kwargs)

    def _call(self, client: _Client, link: BrokerLink, call_id: Any, method: str, kwargs: dict) -> bytes:
        if not client.initialized and method != "initialize":
            return _reply(call_id, protocol.STATUS_ERR, ERR_NO_IPC)
        state = self.state
        if method in _FORWARDED:
            try:
                body = link.request(call_id, method, kwargs)
            except LinkDown as exc:
                return self._without_broker(call_id, method, kwargs, exc.sent)
            if method not in _TRADES and len(body) <= _KNOWN_MAX_BYTES:
                self._remember(method, kwargs, body)
            return protocol.frame(body)
        if method == "initialize":
            login = kwargs.get("login")
            if login is not None or state.login is None:
                error = self._login(link, login, kwargs.get("password"), kwargs.get("server"))
                if error is not None and login is not None:
                    return _reply(call_id, *error)
            client.initialized = True
            return _reply(call_id, protocol.STATUS_OK, True)
        if method == "login":
            error = self._login(link, kwargs.get("login"), kwargs.get("password"), kwargs.get("server"))
            if error is not None:
                return _reply(call_id, *error)
            return _reply(call_id, protocol.STATUS_OK, True)
        if method == "shutdown":
            client.initialized = False
            client.books.clear()
            return _reply(call_id, protocol.STATUS_OK, True)
        if method == "version":
            t = state.terminal
            return _reply(call_id, protocol.STATUS_OK,
                          [500, int(t.get("build", 5120)), str(t.get("build_date", "28 Jun 2025"))])
        if method == "terminal_info":
            return _reply(call_id, protocol.STATUS_OK, self._terminal_info(link))
        symbol = kwargs.get("symbol")
        if method == "market_book_release":
            if symbol not in state.symbols or symbol not in client.books:
                return _reply(call_id, protocol.STATUS_ERR, ERR_CALL_FAILED)
            client.books.discard(symbol)
            return _reply(call_id, protocol.STATUS_OK, True)
        if method == "market_book_get":
            if symbol not in state.symbols:
                return _reply(call_id, protocol.STATUS_ERR, ERR_NOT_FOUND)
            if symbol not in client.books:
                return _reply(call_id, protocol.STATUS_ERR, ERR_CALL_FAILED)
            try:
                return protocol.frame(link.request(call_id, method, kwargs))
            except LinkDown as exc:
                return self._without_broker(call_id, method, kwargs, exc.sent)
        if method in ("symbol_select", "market_book_add"):
            # the broker checks (unknown symbol, a symbol in use cannot leave Market Watch); the terminal keeps it
            try:
                status, payload = link.call(method, kwargs)
            except LinkDown as exc:
                return self._without_broker(call_id, method, kwargs, exc.sent)
            if status == protocol.STATUS_OK:
                if method == "market_book_add":
                    client.books.add(symbol)
                    if symbol not in (state.market_watch or ()):
                        state.select(symbol, True)
                else:
                    enable = bool(kwargs.get("enable", True))
                    if enable != (symbol in (state.market_watch or ())):
                        state.select(symbol, enable)
                    if not enable:
                        client.books.discard(symbol)
            return _reply(call_id, status, payload)
        return _reply(call_id, protocol.STATUS_ERR, [-7, "Terminal: Unsupported function"])

    def _known_key(self, method: str, kwargs: dict) -> tuple | None:
        try:
            key = (self.state.server_name, self.state.login, method, tuple(kwargs.items()))
            hash(key)
        except TypeError:
            return None
        return key

    def _remember(self, method: str, kwargs: dict, body: bytes) -> None:
        """Keep the last answer to each read call: without a broker the terminal shows what it last knew."""
        key = self._known_key(method, kwargs)
        if key is None:
            return
        if (len(self.known) >= _KNOWN_MAX_ENTRIES or self.known_bytes > _KNOWN_MAX_TOTAL) and key not in self.known:
            self.known.clear()  # calls with ever new arguments (a moving date_from): start over, memory stays bounded
            self.known_bytes = 0
        previous = self.known.get(key)
        self.known[key] = body
        self.known_bytes += len(body) - (len(previous) if previous is not None else 0)

    def _without_broker(self, call_id: Any, method: str, kwargs: dict, sent: bool) -> bytes:
        if method == "order_send" and sent:
            return _reply(call_id, protocol.STATUS_IPC_TIMEOUT, None)  # it may have executed
        if method in ("order_send", "order_check"):
            return _reply(call_id, protocol.STATUS_OK, _no_connection_result(method, kwargs))
        key = self._known_key(method, kwargs)
        body = self.known.get(key) if key is not None else None
        if body is not None:
            _, status, payload = protocol.unpack(body)
            return _reply(call_id, status, payload)
        return _reply(call_id, protocol.STATUS_ERR, ERR_CALL_FAILED)

    def _login(self, link: BrokerLink, login: int | None, password: str | None,
               server: str | None) -> tuple[str, Any] | None:
        """Log this terminal in at the broker; None on success, else the (status, payload) to answer."""
        error, _ = self._authenticate(link, login, password, server)
        return error

    def _authenticate(self, link: BrokerLink, login: int | None, password: str | None,
                      server: str | None) -> tuple[tuple[str, Any] | None, dict]:
        state = self.state
        servers = state.hello.get("servers", {})
        target = server if server in servers else state.server_name
        if password is None and login is not None:
            password = state.passwords.get(int(login))
        try:
            status, payload = link.call("broker.auth", {"server_name": target, "login": login, "password": password,
                                                        "server": server})
        except LinkDown:
            return (protocol.STATUS_IPC_TIMEOUT, None), {}
        if status != protocol.STATUS_OK:
            return (status, payload), {}
        state.set_login(target, int(payload["login"]), password)
        return None, payload

    def _broker_alive(self, link: BrokerLink) -> bool:
        try:
            status, payload = link.call("broker.ping", {})
        except LinkDown:
            return False
        return status == protocol.STATUS_OK and bool(payload)

    def _terminal_info(self, link: BrokerLink) -> list:
        state = self.state
        t = state.terminal
        connected = state.trade_connected and self._broker_alive(link)
        return [False, False, connected, False, bool(t.get("trade_allowed", True)),
                bool(t.get("tradeapi_disabled", False)), False, False, False, False, int(t.get("build", 5120)),
                int(t.get("maxbars", 100000)), int(t.get("codepage", 0)),
                int(t.get("ping_last", 35000)) if connected else 0, 0.0, 0.0, str(t.get("company", "")),
                str(t.get("name", "")), str(t.get("language", "English")), str(t.get("path", "")),
                str(t.get("data_path", "")), str(t.get("commondata_path", ""))]

    # -- controls ------------------------------------------------------------------------------
    def _terminal_control(self, link: BrokerLink, name: str, kwargs: dict) -> tuple[str, Any]:
        state = self.state
        if "server_name" in kwargs:  # a terminal's controls go to the server name it is on
            kwargs = {k: v for k, v in kwargs.items() if k != "server_name"}
        answered = self.faults.control(name, kwargs)  # delay, ipc_timeout, ping, server_state (reset: the faults)
        if answered is not None:
            return answered
        try:
            if name == "trade_server":
                return protocol.STATUS_OK, state.set_trade_connected(kwargs.get("connected", True))
            if name == "set_terminal":
                try:
                    return protocol.STATUS_OK, state.set_terminal(dict(kwargs))
                except KeyError:
                    return protocol.STATUS_ERR, ERR_INVALID_PARAMS
            if name == "switch_account":
                if kwargs.get("login") is None:
                    return protocol.STATUS_ERR, [-2, "switch_account: login is required"]
                error, auth = self._authenticate(link, int(kwargs["login"]), kwargs.get("password"),
                                                 kwargs.get("server"))
                if error is not None:
                    if error[0] == protocol.STATUS_IPC_TIMEOUT:
                        return protocol.STATUS_ERR, [-10004, "No connection with the trade server"]
                    return error
                return protocol.STATUS_OK, {"login": auth.get("login"), "server": auth.get("server"),
                                            "created": bool(auth.get("created"))}
            if name == "reset":
                state.reset(bool(kwargs.get("full", False)))
        except (TypeError, ValueError) as exc:
            return protocol.STATUS_ERR, [-2, f"Invalid params: {exc}"]
        try:
            status, payload = link.call(f"ctl.{name}", kwargs)
        except LinkDown:
            return protocol.STATUS_ERR, [-10004, "No connection with the trade server"]
        if name == "state" and status == protocol.STATUS_OK and isinstance(payload, dict):
            payload = dict(payload, login=state.login, connected=state.trade_connected,
                           ipc_faults=self.faults.describe(),
                           terminal={"broker": self.broker_address, "server_name": state.server_name,
                                     "market_watch": sorted(state.market_watch or ())})
        return status, payload


_TRADES = frozenset({"order_send", "order_check"})
_KNOWN_MAX_BYTES = 256 * 1024
_KNOWN_MAX_ENTRIES = 4096
_KNOWN_MAX_TOTAL = 32 * 1024 * 1024
_FORWARDED = frozenset({
    "account_info", "symbols_total", "symbols_get", "symbol_info", "symbol_info_tick",
    "copy_rates_from", "copy_rates_from_pos", "copy_rates_range", "copy_ticks_from", "copy_ticks_range",
    "orders_total", "orders_get", "positions_total", "positions_get", "history_orders_total",
    "history_orders_get", "history_deals_total", "history_deals_get", "order_calc_margin",
    "order_calc_profit", "order_check", "order_send",
})
