"""The terminal gateway: the one narrow interface through which the bridge reaches a terminal.

It wraps the ``MetaTrader5`` module API. The ``sim`` and ``mt5`` backends differ only in which
module is loaded (``mt5sim`` or ``MetaTrader5``); everything above this file is backend-agnostic.
The module is one connection per process and not thread-safe. A gateway belongs to one process; in the
terminal's process (``run_terminal_worker``) the order worker, the read loop and the snapshot poller are
threads that share its one gateway, so every call into the module holds the gateway's ``lock``: one call
at a time (and a failed call's ``last_error()`` is read under the same hold). An ``order_send`` holds it
for as long as the terminal takes; a read or a poll waits for it meanwhile.
"""

from __future__ import annotations

import importlib
import logging
import threading
from types import ModuleType
from typing import Any

from terminals.config import TerminalConfig

logger = logging.getLogger("bridge.gateway")

BACKEND_MODULES = {"sim": "mt5sim", "mt5": "MetaTrader5"}


class GatewayError(Exception):
    """A terminal call failed; ``code``/``message`` are MT5's ``last_error()``."""

    def __init__(self, call: str, code: int, message: str):
        super().__init__(f"{call} failed: ({code}, {message!r})")
        self.call, self.code, self.message = call, code, message

    @property
    def ipc_failure(self) -> bool:
        """IPC-level failure (-10000..-10005): the terminal may or may not have acted."""
        return -10005 <= self.code <= -10000


def load_backend(backend: str) -> ModuleType:
    try:
        return importlib.import_module(BACKEND_MODULES[backend])
    except KeyError as exc:
        raise ValueError(f"unknown backend {backend!r}") from exc


def as_dict(value: Any) -> Any:
    """MT5 result structs (and tuples of them) as plain dicts/lists, recursively."""
    if hasattr(value, "_asdict"):
        return {k: as_dict(v) for k, v in value._asdict().items()}
    if isinstance(value, tuple):
        return [as_dict(v) for v in value]
    return value


class TerminalGateway:
    """One process's connection to one terminal."""

    def __init__(self, terminal: TerminalConfig, module: ModuleType | None = None, timeout_ms: int | None = None):
        """``timeout_ms`` is ``initialize``'s timeout: for the real module the connect timeout, for
        mt5sim also each call's deadline (a hung terminal then fails with IPC timeout, -10005)."""
        self.terminal = terminal
        self._mt5 = module or load_backend(terminal.backend)
        self.timeout_ms = timeout_ms
        self._connected = False
        # Reentrant: login and _call take it and call ensure_connected/_fail, which take it too.
        self.lock = threading.RLock()
        # Logins and order_sends made through this gateway: the poller of the same process looks at it to take
        # a snapshot right after the bridge changed the terminal (without asking Redis for the change mark).
        self.writes = 0

    @property
    def connected(self) -> bool:
        """Whether this process is attached to the terminal (it reconnects on the next call if not)."""
        return self._connected

    def mark_lost(self) -> None:
        """Forget the connection after a failure seen elsewhere: the next call connects again."""
        self._connected = False

    def last_error(self) -> tuple[int, str]:
        """The module's ``last_error()``: the reason of the last failed call, as ``(code, message)``."""
        with self.lock:
            code, message = self._mt5.last_error()
        return int(code), str(message)

    # -- connection -------------------------------------------------------------------------
    def _fail(self, call: str) -> GatewayError:
        with self.lock:
            code, message = self._mt5.last_error()
        return GatewayError(call, code, message)

    def connect(self) -> None:
        """Attach to the terminal (no login: the terminal keeps its current account)."""
        kwargs = {"timeout": int(self.timeout_ms)} if self.timeout_ms else {}
        with self.lock:
            if not self._mt5.initialize(self.terminal.address, **kwargs):
                raise self._fail("initialize")
            self._connected = True

    def ensure_connected(self) -> None:
        with self.lock:
            if not self._connected:
                self.connect()

    def shutdown(self) -> None:
        with self.lock:
            if self._connected:
                self._mt5.shutdown()
                self._connected = False

    def login(self, login: int, password: str, server: str) -> dict[str, Any]:
        """Log the terminal in to ``login``; returns the account info as a dict."""
        with self.lock:  # nothing else reaches the terminal between the login and its account's read
            self.ensure_connected()
            self.writes += 1
            ok = self._mt5.login(login, password=password, server=server)
            if not ok:
                error = self._fail("login")
                if error.ipc_failure:
                    self._connected = False
                raise error
            return self.account_info()

    # -- reads ------------------------------------------------------------------------------
    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.ensure_connected()
            result = getattr(self._mt5, name)(*args, **kwargs)
            if result is None:
                error = self._fail(name)
                if error.ipc_failure:
                    self._connected = False
                raise error
        return result

    def account_info(self) -> dict[str, Any]:
        return as_dict(self._call("account_info"))

    def terminal_info(self) -> dict[str, Any]:
        return as_dict(self._call("terminal_info"))

    def symbols_get(self) -> list[Any]:
        return list(self._call("symbols_get"))

    def symbol_info(self, symbol: str) -> Any:
        return self._call("symbol_info", symbol)

    def symbol_info_tick(self, symbol: str) -> Any:
        return self._call("symbol_info_tick", symbol)

    def positions_get(self, **filters: Any) -> tuple[Any, ...]:
        return tuple(self._call("positions_get", **filters))

    def orders_get(self, **filters: Any) -> tuple[Any, ...]:
        return tuple(self._call("orders_get", **filters))

    def history_deals_get(self, *args: Any, **filters: Any) -> tuple[Any, ...]:
        return tuple(self._call("history_deals_get", *args, **filters))

    def history_orders_get(self, *args: Any, **filters: Any) -> tuple[Any, ...]:
        return tuple(self._call("history_orders_get", *args, **filters))

    # -- the one write ---------------------------------------------------------------------------
    def order_send(self, request: dict[str, Any]) -> tuple[Any, tuple[int, str] | None]:
        """``order_send(request)``: ``(result, None)``, or ``(None, (code, message))`` when the module
        gave no result (``last_error()``) or the call itself broke (the outcome is then unknown).

        Never reconnects first: a send must go out on the connection the caller checked. Holds the
        lock for the whole call: a read or a poll of this process waits until the terminal answered."""
        with self.lock:
            self.writes += 1
            try:
                result = self._mt5.order_send(request)
            except Exception as exc:  # a dropped link mid-call: the outcome is unknown
                self._connected = False
                return None, (-10000, f"order_send raised {type(exc).__name__}: {exc}")
            if result is None:
                code, message = self.last_error()
                if -10005 <= code <= -10000:
                    self._connected = False
                return None, (code, message)
        return result, None

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Any other MetaTrader5 function, failing with GatewayError on its failure value."""
        return self._call(name, *args, **kwargs)
