"""The 32 functions of the MetaTrader5 module, talking to an mt5sim terminal over TCP.

Argument handling copies the real C extension (MetaTrader5 5.0.6231): which functions are
positional-only, keyword-driven or take no arguments, how strict the type checks are, the 29-char
limits, the date conversions, the failure values (None, False) and the ``last_error()`` pairs.
See ``docs/shared reference MT5_API.md`` sections 2 and 3.

Transport: one persistent TCP connection per process (TCP_NODELAY, msgpack frames, see
``protocol.py``). The module is not fork-safe by sharing: a child process created by ``fork()``
starts disconnected (every call gives ``(-10004, 'No IPC connection')``) until it calls
``initialize()`` itself, which opens its own connection. Calls from several threads are serialized.
"""

from __future__ import annotations

import math
import os
import select
import socket
import threading
from datetime import datetime
from operator import index as _as_index
from typing import Any

from . import protocol
from .structs import (
    TRADE_REQUEST_FIELDS,
    AccountInfo,
    BookInfo,
    OrderCheckResult,
    OrderSendResult,
    SymbolInfo,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)

_new = tuple.__new__

_SUCCESS = (1, "Success")
_INVALID_ARGS = (-2, "Invalid arguments")
_INVALID_NARGS = (-2, "Invalid number of arguments")
_INVALID_1ST = (-2, "Invalid 1st unnamed argument")
_INVALID_2ND = (-2, "Invalid 2nd unnamed argument")
_INVALID_3RD = (-2, "Invalid 3rd unnamed argument")
_UNNAMED = (-2, "Unnamed arguments not allowed")
_NO_IPC = (-10004, "No IPC connection")
_SEND_FAILED = (-10001, "IPC send failed")
_RECV_FAILED = (-10002, "IPC recv failed")
_IPC_TIMEOUT = (-10005, "IPC timeout")
_NOT_FOUND_TERMINAL = (-10003, "IPC initialize failed, MetaTrader 5 x64 not found")

_U32 = 1 << 32
_U64 = 1 << 64
_I32 = 1 << 31
_I64 = 1 << 63
_MAX_MT5_STR = 29  # the C code copies into a 32-wchar buffer after checking len + 1 < 31
_DEFAULT_TIMEOUT_MS = 60000

# Module-global error of the last call, like the C extension's. Before any call: zero-initialised.
_last_error: tuple[int, str] = (0, "")


def _invalid(field: str) -> tuple[int, str]:
    return (-2, f'Invalid "{field}" argument')


def _utf16_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


# --------------------------------------------------------------------------------------------------
# IPC connection


class _Connection:
    """One TCP connection to the terminal, owned by the process that opened it."""

    __slots__ = ("sock", "reader", "pid", "next_id", "poller")

    def __init__(self, host: str, port: int, connect_timeout: float, call_timeout: float | None) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(call_timeout)
        self.sock = sock
        self.reader = protocol.FrameReader(sock)
        self.pid = os.getpid()
        self.next_id = 0
        self.poller = select.poll() if hasattr(select, "poll") else None
        if self.poller is not None:
            self.poller.register(sock, select.POLLIN)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Terminal:
    """Process-wide client state: the connection and what is needed to re-open it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: _Connection | None = None
        self.address: tuple[str, int] | None = None
        self.init_kwargs: dict[str, Any] | None = None  # set while "initialized" (between initialize and shutdown)
        self.call_timeout: float | None = _DEFAULT_TIMEOUT_MS / 1000.0

    def forget(self) -> None:
        """Drop everything without talking to the terminal (used in a forked child)."""
        self.lock = threading.Lock()
        self.conn = None
        self.address = None
        self.init_kwargs = None


_terminal = _Terminal()


def _after_fork_in_child() -> None:
    _terminal.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _drop_connection() -> None:
    conn = _terminal.conn
    _terminal.conn = None
    if conn is not None and conn.pid == os.getpid():
        conn.close()


def _open_connection() -> bool:
    """(Re)open the connection to the stored address and replay initialize(); False if impossible."""
    global _last_error
    address = _terminal.address
    if address is None or _terminal.init_kwargs is None:
        return False
    try:
        conn = _Connection(address[0], address[1], min(5.0, _terminal.call_timeout or 5.0), _terminal.call_timeout)
    except OSError:
        return False
    _terminal.conn = conn
    ok, _ = _exchange(conn, "initialize", _terminal.init_kwargs)
    if not ok:
        _drop_connection()
        return False
    _last_error = _SUCCESS
    return True


def _exchange(conn: _Connection, method: str, kwargs: dict) -> tuple[bool, Any]:
    """One request/reply on ``conn``. On failure sets the error and returns (False, None)."""
    global _last_error
    conn.next_id += 1
    call_id = conn.next_id
    try:
        conn.sock.sendall(protocol.pack([call_id, method, kwargs]))
    except TimeoutError:
        _drop_connection()
        _last_error = _IPC_TIMEOUT
        return False, None
    except OSError:
        _drop_connection()
        _last_error = _SEND_FAILED
        return False, None
    try:
        reply = conn.reader.read()
    except TimeoutError:
        # The reply may still come later; the stream is out of step, so start a fresh connection next time.
        _drop_connection()
        _last_error = _IPC_TIMEOUT
        return False, None
    except (OSError, protocol.ConnectionClosed, ValueError):
        _drop_connection()
        _last_error = _RECV_FAILED
        return False, None
    try:
        reply_id, status, payload = reply
    except (TypeError, ValueError):
        _drop_connection()
        _last_error = _RECV_FAILED
        return False, None
    if reply_id != call_id:
        _drop_connection()
        _last_error = _RECV_FAILED
        return False, None
    if status == protocol.STATUS_OK:
        return True, payload
    if status == protocol.STATUS_ERR:
        _last_error = (int(payload[0]), str(payload[1]))
        return False, None
    if status == protocol.STATUS_IPC_TIMEOUT:
        _last_error = _IPC_TIMEOUT
        return False, None
    _last_error = (-10000, "IPC call failed")
    return False, None


def _rpc(method: str, kwargs: dict) -> tuple[bool, Any]:
    """Call the terminal. Reconnects once after a dropped connection; (-10004) if not initialized."""
    global _last_error
    terminal = _terminal
    with terminal.lock:
        conn = terminal.conn
        if conn is not None and conn.pid == os.getpid() and _closed_by_peer(conn):
            _drop_connection()  # the terminal went away between two calls: reconnect below
            conn = None
        if conn is None or conn.pid != os.getpid():
            if conn is not None:  # inherited through fork without the at-fork hook
                terminal.forget()
            if not _open_connection():
                _last_error = _NO_IPC
                return False, None
            conn = terminal.conn
        return _exchange(conn, method, kwargs)


def _closed_by_peer(conn: _Connection) -> bool:
    """True when the terminal closed the connection since the last reply (a zero-timeout poll)."""
    if conn.poller is None or conn.reader.buf or not conn.poller.poll(0):
        return False
    try:
        return conn.sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError, TimeoutError):
        return False
    except OSError:
        return True


# --------------------------------------------------------------------------------------------------
# argument helpers mirroring the C extension


def _check_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and low <= value < high


def _date(value: Any) -> int | None:
    """A date argument: int seconds, float (truncated) or datetime (``int(obj.timestamp())``); 0 is invalid."""
    if isinstance(value, datetime):
        try:
            seconds = int(value.timestamp())
        except (OverflowError, OSError, ValueError):
            return None
    elif isinstance(value, int):
        seconds = int(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        seconds = int(value)
    else:
        return None
    if seconds == 0 or not -_I32 <= seconds < _I32:
        return None
    return seconds


def _parse_failure(name: str, exc: BaseException) -> SystemError:
    """What CPython reports when the C function returns None with a PyArg_ParseTuple error pending."""
    err = SystemError(f"<built-in function {name}> returned a result with an exception set")
    err.__cause__ = exc
    return err


def _fmt_count(name: str, args: tuple, count: int) -> None:
    if len(args) != count:
        exc = TypeError(f"function takes exactly {count} arguments ({len(args)} given)")
        raise _parse_failure(name, exc)


def _fmt_i(name: str, value: Any, position: int) -> int:
    """PyArg_ParseTuple "i": an integer (``__index__``) that fits a C int."""
    if isinstance(value, float):
        raise _parse_failure(name, TypeError("'float' object cannot be interpreted as an integer"))
    try:
        number = _as_index(value)
    except TypeError:
        raise _parse_failure(
            name, TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")) from None
    if number >= _I32:
        raise _parse_failure(name, OverflowError("signed integer is greater than maximum"))
    if number < -_I32:
        raise _parse_failure(name, OverflowError("signed integer is less than minimum"))
    return number


def _fmt_k(name: str, value: Any, position: int) -> int:
    """PyArg_ParseTuple "k": an int, masked to a 32-bit unsigned long (Windows)."""
    if not isinstance(value, int):
        raise _parse_failure(name, TypeError(f"argument {position} must be int, not {type(value).__name__}"))
    return int(value) & (_U32 - 1)


def _fmt_d(name: str, value: Any, position: int) -> float:
    """PyArg_ParseTuple "d": anything float() accepts without going through str."""
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (str, bytes, bytearray)) or not (
            hasattr(value, "__float__") or hasattr(value, "__index__")):
        raise _parse_failure(name, TypeError(f"must be real number, not {type(value).__name__}"))
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _parse_failure(name, exc) from None


def _no_keywords(name: str, kwargs: dict) -> None:
    if kwargs:
        raise TypeError(f"{name}() takes no keyword arguments")


def _no_arguments(name: str, args: tuple, kwargs: dict) -> None:
    if kwargs:
        raise TypeError(f"{name}() takes no keyword arguments")
    if args:
        raise TypeError(f"{name}() takes no arguments ({len(args)} given)")


def _symbol_str(value: Any) -> bool:
    return isinstance(value, str) and _utf16_len(value) <= _MAX_MT5_STR


def _fail(value: Any, error: tuple[int, str]) -> Any:
    global _last_error
    _last_error = error
    return value


# --------------------------------------------------------------------------------------------------
# connection functions


def initialize(*args: Any, **kwargs: Any) -> bool:
    """initialize([path], *, login=, password=, server=, timeout=60000, portable=False) -> bool.

    ``path`` is the mt5sim terminal address "host:port"; when it is None or not an address
    (e.g. a ``terminal64.exe`` path), the ``MT5SIM_ADDRESS`` environment variable is used.
    """
    global _last_error
    _last_error = _SUCCESS
    if len(args) > 1:
        return _fail(False, _INVALID_NARGS)
    path = None
    if args:
        if not isinstance(args[0], str):
            return _fail(False, _INVALID_1ST)
        path = args[0]
    if "path" in kwargs and kwargs["path"] is not None:
        if not isinstance(kwargs["path"], str):
            return _fail(False, _invalid("path"))
        if path is None:
            path = kwargs["path"]
    login_value = kwargs.get("login")
    if login_value is not None and not _check_int(login_value, 0, _U64):
        return _fail(False, _invalid("login"))
    password = kwargs.get("password")
    if password is not None and not isinstance(password, str):
        return _fail(False, _invalid("password"))
    server = kwargs.get("server")
    if server is not None and not isinstance(server, str):
        return _fail(False, _invalid("server"))
    timeout = kwargs.get("timeout")
    if timeout is not None and not _check_int(timeout, 0, _U32):
        return _fail(False, _invalid("timeout"))
    portable = bool(kwargs.get("portable", False))

    address = protocol.parse_address(path) if path else None
    if address is None:
        env = os.environ.get("MT5SIM_ADDRESS")
        address = protocol.parse_address(env) if env else None
    if address is None:
        return _fail(False, _NOT_FOUND_TERMINAL)

    init_kwargs = {
        "path": path,
        "login": None if login_value is None else int(login_value),
        "password": password,
        "server": server,
        "timeout": None if timeout is None else int(timeout),
        "portable": portable,
    }
    terminal = _terminal
    with terminal.lock:
        conn = terminal.conn
        if conn is not None and (conn.pid != os.getpid() or terminal.address != address):
            if conn.pid == os.getpid():
                _polite_shutdown(conn)
            _drop_connection()
            conn = None
        terminal.address = address
        terminal.call_timeout = (timeout or _DEFAULT_TIMEOUT_MS) / 1000.0
        if conn is None:
            try:
                conn = _Connection(address[0], address[1], terminal.call_timeout, terminal.call_timeout)
            except OSError:
                terminal.init_kwargs = None
                return _fail(False, _NOT_FOUND_TERMINAL)
            terminal.conn = conn
        else:
            conn.sock.settimeout(terminal.call_timeout)
        ok, _ = _exchange(conn, "initialize", init_kwargs)
        if not ok:
            _drop_connection()
            terminal.init_kwargs = None
            return False
        terminal.init_kwargs = init_kwargs
        return True


def _polite_shutdown(conn: _Connection) -> None:
    """Tell the terminal this client leaves; errors do not matter any more."""
    try:
        _exchange(conn, "shutdown", {})
    except Exception:  # best effort on the way out
        pass


def login(*args: Any, **kwargs: Any) -> bool:
    """login(login, password=None, server=None, *, timeout=60000) -> bool."""
    global _last_error
    _last_error = _SUCCESS
    if len(args) > 3:
        return _fail(False, _INVALID_NARGS)
    login_value = kwargs.get("login")
    password = kwargs.get("password")
    server = kwargs.get("server")
    if len(args) >= 1:
        if not _check_int(args[0], 0, _U64):
            return _fail(False, _INVALID_1ST)
        login_value = args[0]
    if len(args) >= 2:
        if not isinstance(args[1], str):
            return _fail(False, _INVALID_2ND)
        password = args[1]
    if len(args) >= 3:
        if not isinstance(args[2], str):
            return _fail(False, _INVALID_3RD)
        server = args[2]
    if login_value is None:
        return _fail(False, _INVALID_NARGS)
    if not _check_int(login_value, 0, _U64):
        return _fail(False, _invalid("login"))
    if password is not None and not isinstance(password, str):
        return _fail(False, _invalid("password"))
    if server is not None and not isinstance(server, str):
        return _fail(False, _invalid("server"))
    timeout = kwargs.get("timeout")
    if timeout is not None and not _check_int(timeout, 0, _U32):
        return _fail(False, _invalid("timeout"))
    call = {"login": int(login_value), "password": password, "server": server,
            "timeout": None if timeout is None else int(timeout)}
    ok, _ = _rpc("login", call)
    if not ok:
        return False
    saved = _terminal.init_kwargs
    if saved is not None:  # a reconnection logs into the account used last
        saved.update(login=call["login"], password=password, server=server)
    return True


def shutdown(*args: Any, **kwargs: Any) -> bool:
    """shutdown() -> True. Closes the connection; later calls give (-10004, 'No IPC connection')."""
    global _last_error
    _no_arguments("shutdown", args, kwargs)
    _last_error = _SUCCESS
    terminal = _terminal
    with terminal.lock:
        conn = terminal.conn
        if conn is not None and conn.pid == os.getpid():
            _polite_shutdown(conn)
        _drop_connection()
        terminal.init_kwargs = None
        terminal.address = None
    _last_error = _SUCCESS
    return True


def version(*args: Any, **kwargs: Any) -> tuple | None:
    global _last_error
    _no_arguments("version", args, kwargs)
    _last_error = _SUCCESS
    ok, value = _rpc("version", {})
    if not ok or value is None:
        return None
    return tuple(value)


def last_error(*args: Any, **kwargs: Any) -> tuple[int, str]:
    _no_arguments("last_error", args, kwargs)
    return _last_error


# --------------------------------------------------------------------------------------------------
# account, terminal, symbols


def _noargs_struct(name: str, struct: type, args: tuple, kwargs: dict) -> Any:
    global _last_error
    _no_arguments(name, args, kwargs)
    _last_error = _SUCCESS
    ok, value = _rpc(name, {})
    if not ok or value is None:
        return None
    return _new(struct, value)


def account_info(*args: Any, **kwargs: Any) -> Any:
    return _noargs_struct("account_info", AccountInfo, args, kwargs)


def terminal_info(*args: Any, **kwargs: Any) -> Any:
    return _noargs_struct("terminal_info", TerminalInfo, args, kwargs)


def _noargs_scalar(name: str, args: tuple, kwargs: dict) -> Any:
    global _last_error
    _no_arguments(name, args, kwargs)
    _last_error = _SUCCESS
    ok, value = _rpc(name, {})
    return value if ok else None


def symbols_total(*args: Any, **kwargs: Any) -> int | None:
    return _noargs_scalar("symbols_total", args, kwargs)


def orders_total(*args: Any, **kwargs: Any) -> int | None:
    return _noargs_scalar("orders_total", args, kwargs)


def positions_total(*args: Any, **kwargs: Any) -> int | None:
    return _noargs_scalar("positions_total", args, kwargs)


def symbols_get(*args: Any, **kwargs: Any) -> Any:
    """symbols_get(group=None) -> tuple of SymbolInfo; False on bad arguments."""
    global _last_error
    _last_error = _SUCCESS
    if len(args) > 1:
        return _fail(False, _INVALID_NARGS)
    group = None
    if args:
        if not isinstance(args[0], str):
            return _fail(False, _INVALID_1ST)
        group = args[0]
    elif kwargs.get("group") is not None:
        group = kwargs["group"]
        if not isinstance(group, str):
            return _fail(False, _invalid("group"))
    ok, value = _rpc("symbols_get", {"group": group})
    if not ok or value is None:
        return None
    return tuple(_new(SymbolInfo, item) for item in value)


def _one_symbol(name: str, args: tuple, kwargs: dict, bad_args: Any, failure: Any) -> tuple[bool, Any]:
    """The (symbol, /) functions: (True, value) or (False, the failure value for this case)."""
    global _last_error
    _no_keywords(name, kwargs)
    _last_error = _SUCCESS
    if len(args) != 1 or not isinstance(args[0], str):
        _last_error = _INVALID_ARGS
        return False, bad_args
    ok, value = _rpc(name, {"symbol": args[0]})
    if not ok:
        return False, failure
    return True, value


def symbol_info(*args: Any, **kwargs: Any) -> Any:
    ok, value = _one_symbol("symbol_info", args, kwargs, None, None)
    if not ok or value is None:
        return None
    return _new(SymbolInfo, value)


def symbol_info_tick(*args: Any, **kwargs: Any) -> Any:
    ok, value = _one_symbol("symbol_info_tick", args, kwargs, None, None)
    if not ok or value is None:
        return None
    return _new(Tick, value)


def symbol_select(*args: Any, **kwargs: Any) -> bool:
    """symbol_select(symbol, enable=True, /) -> bool."""
    global _last_error
    _no_keywords("symbol_select", kwargs)
    _last_error = _SUCCESS
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
        return _fail(False, _INVALID_ARGS)
    enable = True if len(args) == 1 else bool(args[1])
    ok, value = _rpc("symbol_select", {"symbol": args[0], "enable": enable})
    return bool(value) if ok else False


def market_book_add(*args: Any, **kwargs: Any) -> bool | None:
    ok, value = _one_symbol("market_book_add", args, kwargs, None, False)
    return bool(value) if ok else value


def market_book_get(*args: Any, **kwargs: Any) -> Any:
    ok, value = _one_symbol("market_book_get", args, kwargs, None, None)
    if not ok or value is None:
        return None
    return tuple(_new(BookInfo, item) for item in value)


def market_book_release(*args: Any, **kwargs: Any) -> bool | None:
    ok, value = _one_symbol("market_book_release", args, kwargs, None, False)
    return bool(value) if ok else value


# --------------------------------------------------------------------------------------------------
# price history (numpy)


def _copy_call(name: str, args: tuple, kwargs: dict, fields: tuple[str, ...], fmt: str) -> Any:
    """The five copy_* functions parse alike: positional only, ``fmt`` as in the C module's
    PyArg_ParseTuple ("i" a C int, "O" the symbol or a date). Ints are converted first (a bad one
    raises as the real module does), then the symbol and dates are checked (a bad one: None with
    'Invalid arguments')."""
    global _last_error
    _no_keywords(name, kwargs)
    _last_error = _SUCCESS
    _fmt_count(name, args, len(fields))
    values = {field: (_fmt_i(name, value, pos) if kind == "i" else value)
              for pos, (field, kind, value) in enumerate(zip(fields, fmt, args, strict=True), start=1)}
    for field in fields:
        if field.startswith("date_"):
            values[field] = _date(values[field])
    if not _symbol_str(values["symbol"]) or any(v is None for v in values.values()):
        return _fail(None, _INVALID_ARGS)
    ok, value = _rpc(name, values)
    return value if ok else None


def copy_rates_from(*args: Any, **kwargs: Any) -> Any:
    """copy_rates_from(symbol, timeframe, date_from, count, /) -> numpy array ("OiOi")."""
    return _copy_call("copy_rates_from", args, kwargs, ("symbol", "timeframe", "date_from", "count"), "OiOi")


def copy_rates_from_pos(*args: Any, **kwargs: Any) -> Any:
    """copy_rates_from_pos(symbol, timeframe, start_pos, count, /) -> numpy array ("Oiii")."""
    return _copy_call("copy_rates_from_pos", args, kwargs, ("symbol", "timeframe", "start_pos", "count"), "Oiii")


def copy_rates_range(*args: Any, **kwargs: Any) -> Any:
    """copy_rates_range(symbol, timeframe, date_from, date_to, /) -> numpy array ("OiOO")."""
    return _copy_call("copy_rates_range", args, kwargs, ("symbol", "timeframe", "date_from", "date_to"), "OiOO")


def copy_ticks_from(*args: Any, **kwargs: Any) -> Any:
    """copy_ticks_from(symbol, date_from, count, flags, /) -> numpy array ("OOii")."""
    return _copy_call("copy_ticks_from", args, kwargs, ("symbol", "date_from", "count", "flags"), "OOii")


def copy_ticks_range(*args: Any, **kwargs: Any) -> Any:
    """copy_ticks_range(symbol, date_from, date_to, flags, /) -> numpy array ("OOOi")."""
    return _copy_call("copy_ticks_range", args, kwargs, ("symbol", "date_from", "date_to", "flags"), "OOOi")


# --------------------------------------------------------------------------------------------------
# live orders and positions


def _filter_kwargs(args: tuple, kwargs: dict) -> tuple[dict | None, tuple[int, str] | None]:
    """symbol=/group=/ticket= keywords of orders_get/positions_get; positional arguments refused."""
    if args:
        return None, _UNNAMED
    symbol = kwargs.get("symbol")
    if symbol is not None and not isinstance(symbol, str):
        return None, _invalid("symbol")
    group = kwargs.get("group")
    if group is not None and not isinstance(group, str):
        return None, _invalid("group")
    ticket = kwargs.get("ticket")
    if ticket is not None:
        if not _check_int(ticket, 0, _U64):
            return None, _invalid("ticket")
        ticket = int(ticket)
    return {"symbol": symbol, "group": group, "ticket": ticket}, None


def orders_get(*args: Any, **kwargs: Any) -> Any:
    """orders_get(*, symbol=, group=, ticket=) -> tuple of TradeOrder."""
    global _last_error
    _last_error = _SUCCESS
    call, error = _filter_kwargs(args, kwargs)
    if error:
        return _fail(None, error)
    ok, value = _rpc("orders_get", call)
    if not ok or value is None:
        return None
    return tuple(_new(TradeOrder, item) for item in value)


def positions_get(*args: Any, **kwargs: Any) -> Any:
    """positions_get(*, symbol=, group=, ticket=) -> tuple of TradePosition."""
    global _last_error
    _last_error = _SUCCESS
    call, error = _filter_kwargs(args, kwargs)
    if error:
        return _fail(None, error)
    ok, value = _rpc("positions_get", call)
    if not ok or value is None:
        return None
    return tuple(_new(TradePosition, item) for item in value)


# --------------------------------------------------------------------------------------------------
# calculations


def order_calc_margin(*args: Any, **kwargs: Any) -> float | None:
    """order_calc_margin(action, symbol, volume, price, /) -> float ("kOdd")."""
    global _last_error
    name = "order_calc_margin"
    _no_keywords(name, kwargs)
    _last_error = _SUCCESS
    _fmt_count(name, args, 4)
    action = _fmt_k(name, args[0], 1)
    volume = _fmt_d(name, args[2], 3)
    price = _fmt_d(name, args[3], 4)
    if not _symbol_str(args[1]):
        return _fail(None, _INVALID_ARGS)
    ok, value = _rpc(name, {"action": action, "symbol": args[1], "volume": volume, "price": price})
    return value if ok else None


def order_calc_profit(*args: Any, **kwargs: Any) -> float | None:
    """order_calc_profit(action, symbol, volume, price_open, price_close, /) -> float ("kOddd")."""
    global _last_error
    name = "order_calc_profit"
    _no_keywords(name, kwargs)
    _last_error = _SUCCESS
    _fmt_count(name, args, 5)
    action = _fmt_k(name, args[0], 1)
    volume = _fmt_d(name, args[2], 3)
    price_open = _fmt_d(name, args[3], 4)
    price_close = _fmt_d(name, args[4], 5)
    if not _symbol_str(args[1]):
        return _fail(None, _INVALID_ARGS)
    ok, value = _rpc(name, {"action": action, "symbol": args[1], "volume": volume,
                            "price_open": price_open, "price_close": price_close})
    return value if ok else None


# --------------------------------------------------------------------------------------------------
# trading

# (field, kind, low, high): checked in this order; the first bad field stops, like the C code.
_REQUEST_RULES: tuple[tuple[str, str, int, int], ...] = (
    ("action", "int", 0, _U32),
    ("magic", "int", 0, _U64),
    ("order", "int", 0, _U64),
    ("symbol", "str", 0, 0),
    ("volume", "float", 0, 0),
    ("price", "float", 0, 0),
    ("stoplimit", "float", 0, 0),
    ("sl", "float", 0, 0),
    ("tp", "float", 0, 0),
    ("deviation", "int", 0, _U32),
    ("type", "int", 0, _U32),
    ("type_filling", "int", 0, _U32),
    ("type_time", "int", 0, _U32),
    ("expiration", "int", -_I64, _I64),
    ("comment", "str", 0, 0),
    ("position", "int", 0, _U64),
    ("position_by", "int", 0, _U64),
)
assert tuple(rule[0] for rule in _REQUEST_RULES) == TRADE_REQUEST_FIELDS


def _trade_request(args: tuple, kwargs: dict) -> tuple[dict | None, tuple[int, str] | None]:
    """The request dict (positional) or keywords -> the 17 fields, zero-filled, or an error pair."""
    if kwargs:
        if args:
            return None, _UNNAMED
        source = kwargs
    else:
        if len(args) != 1:
            return None, _INVALID_NARGS
        source = args[0]
        if not isinstance(source, dict):
            return None, _INVALID_ARGS
    request: dict[str, Any] = {}
    for field, kind, low, high in _REQUEST_RULES:
        if field not in source:
            request[field] = "" if kind == "str" else (0.0 if kind == "float" else 0)
            continue
        value = source[field]
        if kind == "int":
            if not _check_int(value, low, high):
                return None, _invalid(field)
            request[field] = int(value)
        elif kind == "float":
            if not isinstance(value, float):
                return None, _invalid(field)
            request[field] = float(value)
        else:
            if not _symbol_str(value):
                return None, _invalid(field)
            request[field] = str(value)
    return request, None


def _with_request(struct: type, value: list) -> Any:
    items = list(value)
    items[-1] = _new(TradeRequest, items[-1])
    return _new(struct, items)


def order_check(*args: Any, **kwargs: Any) -> Any:
    """order_check(request) or order_check(**request) -> OrderCheckResult."""
    global _last_error
    _last_error = _SUCCESS
    request, error = _trade_request(args, kwargs)
    if error:
        return _fail(None, error)
    ok, value = _rpc("order_check", {"request": request})
    if not ok or value is None:
        return None
    return _with_request(OrderCheckResult, value)


def order_send(*args: Any, **kwargs: Any) -> Any:
    """order_send(request) or order_send(**request) -> OrderSendResult (also for rejections)."""
    global _last_error
    _last_error = _SUCCESS
    request, error = _trade_request(args, kwargs)
    if error:
        return _fail(None, error)
    ok, value = _rpc("order_send", {"request": request})
    if not ok or value is None:
        return None
    return _with_request(OrderSendResult, value)


# --------------------------------------------------------------------------------------------------
# history


def _history_total(name: str, args: tuple, kwargs: dict) -> int | None:
    global _last_error
    _no_keywords(name, kwargs)
    _last_error = _SUCCESS
    if len(args) != 2:
        return _fail(None, _INVALID_ARGS)
    date_from = _date(args[0])
    date_to = _date(args[1])
    if date_from is None or date_to is None:
        return _fail(None, _INVALID_ARGS)
    ok, value = _rpc(name, {"date_from": date_from, "date_to": date_to})
    return value if ok else None


def history_orders_total(*args: Any, **kwargs: Any) -> int | None:
    """history_orders_total(date_from, date_to, /) -> int."""
    return _history_total("history_orders_total", args, kwargs)


def history_deals_total(*args: Any, **kwargs: Any) -> int | None:
    """history_deals_total(date_from, date_to, /) -> int."""
    return _history_total("history_deals_total", args, kwargs)


def _history_query(args: tuple, kwargs: dict) -> tuple[dict | None, tuple[int, str] | None]:
    """(date_from, date_to, *, group=) or (*, ticket=) or (*, position=)."""
    ticket = kwargs.get("ticket")
    position = kwargs.get("position")
    if ticket is not None or position is not None:
        if args:
            return None, _UNNAMED
        if ticket is not None:
            if not _check_int(ticket, 0, _U64):
                return None, _invalid("ticket")
            return {"date_from": None, "date_to": None, "group": None, "ticket": int(ticket), "position": None}, None
        if not _check_int(position, 0, _U64):
            return None, _invalid("position")
        return {"date_from": None, "date_to": None, "group": None, "ticket": None, "position": int(position)}, None
    if len(args) != 2:
        return None, _INVALID_ARGS
    date_from = _date(args[0])
    date_to = _date(args[1])
    if date_from is None or date_to is None:
        return None, _INVALID_ARGS
    group = kwargs.get("group")
    if group is not None and not isinstance(group, str):
        return None, _invalid("group")
    return {"date_from": date_from, "date_to": date_to, "group": group, "ticket": None, "position": None}, None


def history_orders_get(*args: Any, **kwargs: Any) -> Any:
    """history_orders_get(date_from, date_to, *, group=) | (*, ticket=) | (*, position=) -> tuple of TradeOrder."""
    global _last_error
    _last_error = _SUCCESS
    call, error = _history_query(args, kwargs)
    if error:
        return _fail(None, error)
    ok, value = _rpc("history_orders_get", call)
    if not ok or value is None:
        return None
    return tuple(_new(TradeOrder, item) for item in value)


def history_deals_get(*args: Any, **kwargs: Any) -> Any:
    """history_deals_get(date_from, date_to, *, group=) | (*, ticket=<order>) | (*, position=) -> TradeDeal tuple."""
    global _last_error
    _last_error = _SUCCESS
    call, error = _history_query(args, kwargs)
    if error:
        return _fail(None, error)
    ok, value = _rpc("history_deals_get", call)
    if not ok or value is None:
        return None
    return tuple(_new(TradeDeal, item) for item in value)


FUNCTION_NAMES: tuple[str, ...] = (
    "initialize", "login", "shutdown", "version", "last_error", "account_info", "terminal_info",
    "symbols_total", "symbols_get", "symbol_info", "symbol_info_tick", "symbol_select",
    "market_book_add", "market_book_get", "market_book_release",
    "copy_rates_from", "copy_rates_from_pos", "copy_rates_range", "copy_ticks_from", "copy_ticks_range",
    "orders_total", "orders_get", "order_calc_margin", "order_calc_profit", "order_check", "order_send",
    "positions_total", "positions_get",
    "history_orders_total", "history_orders_get", "history_deals_total", "history_deals_get",
)
