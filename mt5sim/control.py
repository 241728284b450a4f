"""Control client: drive an mt5sim terminal from tests, demos and ``python -m mt5sim control``.

It uses its own connection (independent from the ``MetaTrader5``-like client state), so a test
can hold a ``Control`` and an initialized ``mt5sim`` module side by side::

    from mt5sim.control import Control
    ctl = Control("127.0.0.1:5555")
    ctl.freeze_feed()
    ctl.set_price("EURUSD", 1.1000, 1.1002)
    ctl.requote(1)
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from . import protocol


class ControlError(Exception):
    """The terminal refused a control call: ``code`` and ``message`` as it sent them."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"({code}, {message!r})")
        self.code = code
        self.message = message


class Control:
    """A connection to one terminal (or broker) for ``ctl.*`` calls. Thread-safe; reconnects when dropped.

    Against a terminal started with ``serve --broker``, market- and trade-level controls reach its
    broker (they act for every terminal of that server name) and terminal-level ones stay in the
    terminal (see docs/mt5sim.md, "One broker, several terminals"). Against a broker address
    (``python -m mt5sim broker``), ``server_name`` picks which of its server names is driven
    (default: its first).
    """

    def __init__(self, address: str, timeout: float = 30.0, server_name: str | None = None) -> None:
        parsed = protocol.parse_address(address)
        if parsed is None:
            raise ValueError(f"not a host:port address: {address!r}")
        self.address = address
        self._host, self._port = parsed
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: protocol.FrameReader | None = None
        self._next_id = 0
        self._server_name = server_name

    # -- plumbing ------------------------------------------------------------------------------

    def _connect(self) -> None:
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = protocol.FrameReader(sock)

    def call(self, name: str, **kwargs: Any) -> Any:
        """Send ``ctl.<name>`` and return its value; raises ControlError or OSError."""
        if self._server_name is not None:
            kwargs = dict(kwargs, server_name=self._server_name)
        with self._lock:
            for attempt in (1, 2):
                if self._sock is None:
                    self._connect()
                assert self._sock is not None and self._reader is not None
                self._next_id += 1
                try:
                    self._sock.sendall(protocol.pack([self._next_id, f"ctl.{name}", kwargs]))
                    call_id, status, payload = self._reader.read()
                except (OSError, protocol.ConnectionClosed):
                    self.close_unlocked()
                    if attempt == 2:
                        raise
                    continue
                break
        if status == protocol.STATUS_ERR:
            raise ControlError(int(payload[0]), str(payload[1]))
        if status != protocol.STATUS_OK:
            raise ControlError(-10000, f"unexpected status {status!r}")
        return payload

    def close_unlocked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._reader = None

    def close(self) -> None:
        with self._lock:
            self.close_unlocked()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- engine controls -----------------------------------------------------------------------

    def set_price(self, symbol: str, bid: float, ask: float, last: float | None = None) -> Any:
        """A new tick at these prices now (pendings, SL/TP and stop-out react as to a real tick)."""
        return self.call("set_price", symbol=symbol, bid=float(bid), ask=float(ask),
                         last=None if last is None else float(last))

    def freeze_feed(self, symbol: str | None = None, frozen: bool = True) -> Any:
        """Stop (or with ``frozen=False`` restart) the random walk of one symbol or all."""
        return self.call("freeze_feed", symbol=symbol, frozen=frozen)

    def trade_server(self, connected: bool) -> Any:
        """Disconnect/reconnect the trade server (trade requests get 10031 while disconnected)."""
        return self.call("trade_server", connected=connected)

    def requote(self, count: int = 1) -> Any:
        """The next ``count`` market deals get 10004 (requote) with fresh prices."""
        return self.call("requote", count=int(count))

    def reject(self, count: int = 1, retcode: int = 10006) -> Any:
        """The next ``count`` trade requests are rejected with ``retcode``."""
        return self.call("reject", count=int(count), retcode=int(retcode))

    def set_clock(self, offset_seconds: float | None = None, at: float | None = None) -> Any:
        """Shift (``offset_seconds``) or pin (``at``, unix UTC) the trade server clock."""
        kwargs: dict[str, Any] = {}
        if offset_seconds is not None:
            kwargs["offset_seconds"] = float(offset_seconds)
        if at is not None:
            kwargs["at"] = float(at)
        return self.call("set_clock", **kwargs)

    # -- outcome faults: answers that do not tell what happened at the broker -------------------

    def comment_fault(self, mode: str | None, length: int = 0, text: str = "", count: int = 0) -> Any:
        """The broker rewrites the comment of the orders, deals and positions it creates from requests.

        ``mode="cut"`` keeps the first ``length`` characters of the request's comment, ``mode="rewrite"``
        replaces it by ``text``; ``None`` turns it off. ``count`` = 0: until turned off, else for the
        next ``count`` trade requests (order_send calls).
        """
        return self.call("comment_fault", mode=mode, length=int(length), text=str(text), count=int(count))

    def history_delay(self, seconds: float) -> Any:
        """History calls do not show orders/deals younger than ``seconds`` of real time; 0 turns it off."""
        return self.call("history_delay", seconds=float(seconds))

    def retcode_fault(self, retcode: int, count: int = 1, execute: bool = False) -> Any:
        """The next ``count`` order_send calls answer ``retcode`` with order=0 and deal=0.

        With ``execute=True`` the request is executed all the same (the broker has the deal).
        """
        return self.call("retcode_fault", retcode=int(retcode), count=int(count), execute=bool(execute))

    def slow_execution(self, seconds: float, count: int = 1, visible: bool = True,
                       answer: str = "ipc_timeout") -> Any:
        """The next ``count`` order_send calls fail now and are executed ``seconds`` later.

        ``answer="ipc_timeout"``: None with (-10005, 'IPC timeout'); ``answer="timeout"``: retcode 10012.
        ``visible=True``: meanwhile the request shows in orders_get() as an ORDER_STATE_STARTED order.
        """
        return self.call("slow_execution", seconds=float(seconds), count=int(count), visible=bool(visible),
                         answer=str(answer))

    def switch_account(self, login: int, password: str | None = None, server: str | None = None) -> Any:
        """The terminal logs into ``login`` as by hand in its window: every attached client sees that account."""
        return self.call("switch_account", login=int(login), password=password, server=server)

    def reset(self, full: bool = False) -> Any:
        """Clear prices and faults (IPC faults too); ``full`` also wipes accounts and history."""
        return self.call("reset", full=bool(full))

    def state(self) -> Any:
        """Summary dict: accounts, counts of orders, positions and deals, IPC faults."""
        return self.call("state")

    # -- IPC-level controls (handled by the terminal process itself) ----------------------------

    def delay(self, seconds: float, methods: list[str] | None = None) -> Any:
        """Delay every call (or only ``methods``) by ``seconds`` before it runs; 0 turns it off."""
        return self.call("delay", seconds=float(seconds), methods=list(methods) if methods else None)

    def ipc_timeout(self, method: str = "order_send", count: int = 1, execute: bool = True) -> Any:
        """The next ``count`` calls of ``method`` answer ``(-10005, 'IPC timeout')``.

        With ``execute=True`` the call still runs on the engine, so the client cannot know the outcome.
        """
        return self.call("ipc_timeout", method=method, count=int(count), execute=bool(execute))

    def ping(self) -> bool:
        return bool(self.call("ping"))
