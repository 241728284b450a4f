"""The terminal gateway: the one narrow interface through which the bridge reaches a terminal.

It wraps the ``MetaTrader5`` module API. The ``sim`` and ``mt5`` backends differ only in which
module is loaded (``mt5sim`` or ``MetaTrader5``); everything above this file is backend-agnostic.
The module is one connection per process and not thread-safe: a gateway belongs to one process and
is used from one thread (the pinned worker, the reader or the poller, each its own process).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

from .config import TerminalConfig

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
        self.mt5 = module or load_backend(terminal.backend)
        self.timeout_ms = timeout_ms
        self.connected = False

    # -- connection -------------------------------------------------------------------------
    def _fail(self, call: str) -> GatewayError:
        code, message = self.mt5.last_error()
        return GatewayError(call, code, message)

    def connect(self) -> None:
        """Attach to the terminal (no login: the terminal keeps its current account)."""
        kwargs = {"timeout": int(self.timeout_ms)} if self.timeout_ms else {}
        if not self.mt5.initialize(self.terminal.address, **kwargs):
            raise self._fail("initialize")
        self.connected = True

    def ensure_connected(self) -> None:
        if not self.connected:
            self.connect()

    def shutdown(self) -> None:
        if self.connected:
            self.mt5.shutdown()
            self.connected = False

    def login(self, login: int, password: str, server: str) -> dict[str, Any]:
        """Log the terminal in to ``login``; returns the account info as a dict."""
        self.ensure_connected()
        ok = self.mt5.login(login, password=password, server=server)
        if not ok:
            error = self._fail("login")
            if error.ipc_failure:
                self.connected = False
            raise error
        return self.account_info()

    # -- reads ------------------------------------------------------------------------------
    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.ensure_connected()
        result = getattr(self.mt5, name)(*args, **kwargs)
        if result is None:
            error = self._fail(name)
            if error.ipc_failure:
                self.connected = False
            raise error
        return result

    def account_info(self) -> dict[str, Any]:
        return as_dict(self._call("account_info"))

    def terminal_info(self) -> dict[str, Any]:
        return as_dict(self._call("terminal_info"))

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Any other MetaTrader5 function, failing with GatewayError on its failure value."""
        return self._call(name, *args, **kwargs)
