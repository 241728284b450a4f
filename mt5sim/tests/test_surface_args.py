"""Argument rules of the 32 functions, checked without a terminal (MT5_API.md §2.2, §2.3, §3).

The module validates its arguments before it talks to the terminal, so a call with valid
arguments and no connection ends with (-10004, 'No IPC connection'), while invalid arguments end
with the module's own (-2, ...) pair, a TypeError, or (for PyArg_ParseTuple failures) a SystemError.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, timedelta, timezone

import numpy as np
import pytest

import mt5sim as mt5
from mt5sim import client

NO_IPC = (-10004, "No IPC connection")
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)

NOARGS = ["shutdown", "version", "last_error", "account_info", "terminal_info", "symbols_total",
          "positions_total", "orders_total"]
POSITIONAL_ONLY = {
    "copy_rates_from": ("EURUSD", mt5.TIMEFRAME_M1, NOW, 10),
    "copy_rates_from_pos": ("EURUSD", mt5.TIMEFRAME_M1, 0, 10),
    "copy_rates_range": ("EURUSD", mt5.TIMEFRAME_M1, NOW, LATER),
    "copy_ticks_from": ("EURUSD", NOW, 10, mt5.COPY_TICKS_ALL),
    "copy_ticks_range": ("EURUSD", NOW, LATER, mt5.COPY_TICKS_ALL),
    "history_orders_total": (NOW, LATER),
    "history_deals_total": (NOW, LATER),
    "order_calc_margin": (mt5.ORDER_TYPE_BUY, "EURUSD", 0.1, 1.1),
    "order_calc_profit": (mt5.ORDER_TYPE_BUY, "EURUSD", 0.1, 1.1, 1.2),
    "symbol_info": ("EURUSD",),
    "symbol_info_tick": ("EURUSD",),
    "symbol_select": ("EURUSD", True),
    "market_book_add": ("EURUSD",),
    "market_book_get": ("EURUSD",),
    "market_book_release": ("EURUSD",),
}
GOOD_REQUEST = {
    "action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.1, "type": mt5.ORDER_TYPE_BUY,
    "price": 1.1, "deviation": 20, "magic": 234000, "comment": "python script open",
    "type_time": mt5.ORDER_TIME_GTC, "type_filling": mt5.ORDER_FILLING_IOC,
}


@pytest.fixture(autouse=True)
def not_connected(monkeypatch):
    """Every test here starts detached, with no default terminal address."""
    monkeypatch.delenv("MT5SIM_ADDRESS", raising=False)
    mt5.shutdown()
    yield
    mt5.shutdown()


def expect(result, value, error):
    assert result is value if value in (None, True, False) else result == value
    assert mt5.last_error() == error


# -- not initialized ----------------------------------------------------------------------------

NOT_CONNECTED_CALLS = [
    ("login", (123,), {}, False),
    ("version", (), {}, None),
    ("account_info", (), {}, None),
    ("terminal_info", (), {}, None),
    ("symbols_total", (), {}, None),
    ("symbols_get", (), {}, None),
    ("symbols_get", ("*USD*",), {}, None),
    ("symbol_info", ("EURUSD",), {}, None),
    ("symbol_info_tick", ("EURUSD",), {}, None),
    ("symbol_select", ("EURUSD",), {}, False),
    ("market_book_add", ("EURUSD",), {}, False),
    ("market_book_get", ("EURUSD",), {}, None),
    ("market_book_release", ("EURUSD",), {}, False),
    ("orders_total", (), {}, None),
    ("orders_get", (), {"symbol": "EURUSD"}, None),
    ("positions_total", (), {}, None),
    ("positions_get", (), {"ticket": 5}, None),
    ("order_check", (GOOD_REQUEST,), {}, None),
    ("order_send", (GOOD_REQUEST,), {}, None),
    ("order_send", (), GOOD_REQUEST, None),
    ("history_orders_get", (NOW, LATER), {"group": "*"}, None),
    ("history_orders_get", (), {"ticket": 1}, None),
    ("history_deals_get", (), {"position": 1}, None),
] + [(name, args, {}, None) for name, args in POSITIONAL_ONLY.items()
     if name not in ("symbol_info", "symbol_info_tick", "symbol_select", "market_book_add",
                     "market_book_get", "market_book_release")]


@pytest.mark.parametrize(("name", "args", "kwargs", "failure"), NOT_CONNECTED_CALLS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(NOT_CONNECTED_CALLS)])
def test_calls_before_initialize_fail_with_no_ipc_connection(name, args, kwargs, failure):
    result = getattr(mt5, name)(*args, **kwargs)
    expect(result, failure, NO_IPC)


def test_shutdown_without_connection_returns_true_and_last_error_is_not_reset_by_itself():
    assert mt5.shutdown() is True
    assert mt5.last_error() == (1, "Success")
    mt5.version()
    assert mt5.last_error() == NO_IPC
    assert mt5.last_error() == NO_IPC  # reading it does not reset it


# -- TypeErrors of the method flags ---------------------------------------------------------------

@pytest.mark.parametrize("name", NOARGS)
def test_noargs_functions_refuse_any_argument(name):
    function = getattr(mt5, name)
    with pytest.raises(TypeError, match=rf"^{name}\(\) takes no arguments \(1 given\)$"):
        function(1)
    with pytest.raises(TypeError, match=rf"^{name}\(\) takes no keyword arguments$"):
        function(x=1)


@pytest.mark.parametrize("name", sorted(POSITIONAL_ONLY))
def test_positional_only_functions_refuse_keywords(name):
    with pytest.raises(TypeError, match=rf"^{name}\(\) takes no keyword arguments$"):
        getattr(mt5, name)(*POSITIONAL_ONLY[name][:1], symbol="EURUSD")


@pytest.mark.parametrize("name", sorted(POSITIONAL_ONLY))
def test_positional_only_functions_accept_their_positional_form(name):
    result = getattr(mt5, name)(*POSITIONAL_ONLY[name])
    assert result in (None, False)
    assert mt5.last_error() == NO_IPC  # arguments passed the module's checks


# -- initialize / login ---------------------------------------------------------------------------

def test_initialize_argument_checks():
    expect(mt5.initialize(5), False, (-2, "Invalid 1st unnamed argument"))
    expect(mt5.initialize("a:1", "b:2"), False, (-2, "Invalid number of arguments"))
    expect(mt5.initialize(login="123"), False, (-2, 'Invalid "login" argument'))
    expect(mt5.initialize(login=-1), False, (-2, 'Invalid "login" argument'))
    expect(mt5.initialize(password=5), False, (-2, 'Invalid "password" argument'))
    expect(mt5.initialize(server=5), False, (-2, 'Invalid "server" argument'))
    expect(mt5.initialize(timeout=1.5), False, (-2, 'Invalid "timeout" argument'))
    expect(mt5.initialize(path=5), False, (-2, 'Invalid "path" argument'))


def test_initialize_with_a_terminal_path_and_no_address_fails_like_a_missing_terminal():
    not_found = (-10003, "IPC initialize failed, MetaTrader 5 x64 not found")
    expect(mt5.initialize(r"C:\Program Files\MetaTrader 5\terminal64.exe"), False, not_found)
    expect(mt5.initialize(), False, not_found)
    expect(mt5.initialize(path=r"C:\MT5\terminal64.exe", login=5, password="x", server="S", unknown=1),
           False, not_found)


def test_initialize_to_an_address_where_nothing_listens_fails_like_a_missing_terminal():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    expect(mt5.initialize(f"127.0.0.1:{port}", timeout=2000), False,
           (-10003, "IPC initialize failed, MetaTrader 5 x64 not found"))
    expect(mt5.version(), None, NO_IPC)


def test_login_argument_checks():
    expect(mt5.login(), False, (-2, "Invalid number of arguments"))
    expect(mt5.login("123"), False, (-2, "Invalid 1st unnamed argument"))
    expect(mt5.login(123, 456), False, (-2, "Invalid 2nd unnamed argument"))
    expect(mt5.login(123, "pw", 7), False, (-2, "Invalid 3rd unnamed argument"))
    expect(mt5.login(1, "p", "s", 4), False, (-2, "Invalid number of arguments"))
    expect(mt5.login(login="1"), False, (-2, 'Invalid "login" argument'))
    expect(mt5.login(123, password=1), False, (-2, 'Invalid "password" argument'))
    expect(mt5.login(123, timeout="1"), False, (-2, 'Invalid "timeout" argument'))
    expect(mt5.login(login=123, password="pw", server="S", timeout=1000, other=1), False, NO_IPC)


# -- symbols ---------------------------------------------------------------------------------------

def test_symbols_get_returns_false_on_bad_arguments():
    expect(mt5.symbols_get(5), False, (-2, "Invalid 1st unnamed argument"))
    expect(mt5.symbols_get("*", "*"), False, (-2, "Invalid number of arguments"))
    expect(mt5.symbols_get(group=5), False, (-2, 'Invalid "group" argument'))
    expect(mt5.symbols_get(group="*USD*"), None, NO_IPC)


def test_symbol_functions_bad_arguments():
    expect(mt5.symbol_info(5), None, (-2, "Invalid arguments"))
    expect(mt5.symbol_info(), None, (-2, "Invalid arguments"))
    expect(mt5.symbol_info_tick("EURUSD", 1), None, (-2, "Invalid arguments"))
    expect(mt5.symbol_select(5), False, (-2, "Invalid arguments"))
    expect(mt5.symbol_select("EURUSD", True, 3), False, (-2, "Invalid arguments"))
    expect(mt5.market_book_add(5), None, (-2, "Invalid arguments"))
    expect(mt5.market_book_release(), None, (-2, "Invalid arguments"))
    expect(mt5.market_book_get(b"EURUSD"), None, (-2, "Invalid arguments"))


# -- copy_* ------------------------------------------------------------------------------------------

def test_copy_functions_check_symbol_and_dates():
    expect(mt5.copy_rates_from("E" * 30, 1, NOW, 10), None, (-2, "Invalid arguments"))
    expect(mt5.copy_rates_from("E" * 29, 1, NOW, 10), None, NO_IPC)
    expect(mt5.copy_rates_from("EURUSD", 1, 0, 10), None, (-2, "Invalid arguments"))
    expect(mt5.copy_rates_from("EURUSD", 1, date(2024, 1, 1), 10), None, (-2, "Invalid arguments"))
    expect(mt5.copy_rates_from("EURUSD", 1, "2024-01-01", 10), None, (-2, "Invalid arguments"))
    expect(mt5.copy_rates_range("EURUSD", 1, NOW, 0), None, (-2, "Invalid arguments"))
    expect(mt5.copy_ticks_from(5, NOW, 10, -1), None, (-2, "Invalid arguments"))
    expect(mt5.copy_ticks_range("EURUSD", NOW, None, -1), None, (-2, "Invalid arguments"))
    expect(mt5.copy_ticks_from("EURUSD", 1704067200.9, 10, -1), None, NO_IPC)
    expect(mt5.copy_rates_from_pos("EURUSD", mt5.TIMEFRAME_H1, np.int64(0), True), None, NO_IPC)


@pytest.mark.parametrize("args", [
    ("EURUSD", 1, NOW, 1.5),            # "i" with a float
    ("EURUSD", "M1", NOW, 10),          # "i" with a str
    ("EURUSD", 1, NOW, 2 ** 40),        # "i" overflow
    ("EURUSD", 1, NOW),                 # wrong count
])
def test_copy_rates_parse_failures_surface_as_system_error(args):
    with pytest.raises(SystemError, match=r"^<built-in function copy_rates_from> returned a result with an exception set$"):
        mt5.copy_rates_from(*args)


def test_order_calc_formats():
    expect(mt5.order_calc_margin(mt5.ORDER_TYPE_BUY, "EURUSD", 1, 2), None, NO_IPC)  # "d" accepts ints
    expect(mt5.order_calc_profit(0, "EURUSD", np.float64(1.0), 1.1, 1.2), None, NO_IPC)
    expect(mt5.order_calc_margin(0, 5, 1.0, 1.1), None, (-2, "Invalid arguments"))
    with pytest.raises(SystemError):
        mt5.order_calc_margin(0.0, "EURUSD", 1.0, 1.1)  # "k" needs an int
    with pytest.raises(SystemError):
        mt5.order_calc_profit(0, "EURUSD", "1", 1.1, 1.2)


# -- history -------------------------------------------------------------------------------------------

def test_history_argument_forms():
    expect(mt5.history_deals_get(NOW, LATER), None, NO_IPC)
    expect(mt5.history_deals_get(NOW, LATER, group="*EUR*"), None, NO_IPC)
    expect(mt5.history_deals_get(ticket=1), None, NO_IPC)
    expect(mt5.history_orders_get(position=1), None, NO_IPC)
    expect(mt5.history_deals_get(NOW, LATER, ticket=1), None, (-2, "Unnamed arguments not allowed"))
    expect(mt5.history_orders_get(), None, (-2, "Invalid arguments"))
    expect(mt5.history_orders_get(NOW), None, (-2, "Invalid arguments"))
    expect(mt5.history_orders_get(0, LATER), None, (-2, "Invalid arguments"))
    expect(mt5.history_orders_get(NOW, LATER, group=5), None, (-2, 'Invalid "group" argument'))
    expect(mt5.history_orders_get(ticket="5"), None, (-2, 'Invalid "ticket" argument'))
    expect(mt5.history_deals_get(position=1.0), None, (-2, 'Invalid "position" argument'))
    expect(mt5.history_deals_total(NOW), None, (-2, "Invalid arguments"))
    expect(mt5.history_deals_total(NOW, date(2024, 1, 1)), None, (-2, "Invalid arguments"))
    expect(mt5.history_orders_total(NOW, 0), None, (-2, "Invalid arguments"))


def test_date_conversion_follows_the_c_module():
    naive = datetime(2024, 3, 1, 12, 0)
    assert client._date(naive) == int(naive.timestamp())  # local time, as Python converts it
    assert client._date(NOW) == 1709294400
    assert client._date(datetime(2024, 3, 1, 15, 0, tzinfo=timezone(timedelta(hours=3)))) == 1709294400
    assert client._date(1709294400.99) == 1709294400
    assert client._date(True) == 1
    assert client._date(0) is None and client._date(0.4) is None
    assert client._date(2 ** 31) is None
    assert client._date(date(2024, 1, 1)) is None
    assert client._date(np.datetime64("2024-01-01")) is None


# -- orders_get / positions_get --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["orders_get", "positions_get"])
def test_live_getters_are_keyword_only(name):
    function = getattr(mt5, name)
    expect(function("EURUSD"), None, (-2, "Unnamed arguments not allowed"))
    expect(function(symbol=5), None, (-2, 'Invalid "symbol" argument'))
    expect(function(group=["*"]), None, (-2, 'Invalid "group" argument'))
    expect(function(ticket="5"), None, (-2, 'Invalid "ticket" argument'))
    expect(function(ticket=1.0), None, (-2, 'Invalid "ticket" argument'))
    expect(function(ticket=True), None, NO_IPC)  # bool is an int subclass
    expect(function(symbol="EURUSD", unknown=object()), None, NO_IPC)  # unknown keywords ignored


# -- order_send / order_check --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["order_send", "order_check"])
def test_trade_request_container_rules(name):
    function = getattr(mt5, name)
    expect(function(), None, (-2, "Invalid number of arguments"))
    expect(function(GOOD_REQUEST, GOOD_REQUEST), None, (-2, "Invalid number of arguments"))
    expect(function([("action", 1)]), None, (-2, "Invalid arguments"))
    expect(function(GOOD_REQUEST, action=1), None, (-2, "Unnamed arguments not allowed"))
    expect(function(GOOD_REQUEST), None, NO_IPC)
    expect(function(**GOOD_REQUEST), None, NO_IPC)
    expect(function({}), None, NO_IPC)  # every field zero-filled
    expect(function(dict(GOOD_REQUEST, foo="bar", request_id=5)), None, NO_IPC)  # unknown keys ignored


class Side(enum.IntEnum):
    BUY = 0


class Money(float):
    pass


@pytest.mark.parametrize(("field", "value", "ok"), [
    ("volume", 1, False),            # the famous int volume
    ("volume", "0.1", False),
    ("volume", None, False),
    ("volume", np.float64(0.1), True),
    ("volume", Money(0.1), True),
    ("price", 1, False),
    ("sl", 0, False),
    ("tp", 0.0, True),
    ("stoplimit", np.float32(1.0), False),  # not a float subclass
    ("type", Side.BUY, True),
    ("type", 0.0, False),
    ("type", np.int64(0), False),    # not an int subclass
    ("deviation", True, True),
    ("magic", 2 ** 64 - 1, True),
    ("magic", 2 ** 64, False),
    ("magic", -1, False),
    ("action", "1", False),
    ("expiration", datetime(2030, 1, 1, tzinfo=UTC), False),
    ("expiration", 1893456000, True),
    ("position", 1.0, False),
    ("position_by", "2", False),
    ("order", None, False),
    ("type_time", 1.0, False),
    ("type_filling", "IOC", False),
    ("symbol", "S" * 29, True),
    ("symbol", "S" * 30, False),
    ("symbol", 5, False),
    ("comment", "c" * 29, True),
    ("comment", "c" * 30, False),
    ("comment", "\U0001F600" * 14, True),   # 28 UTF-16 code units
    ("comment", "\U0001F600" * 15, False),  # 30 UTF-16 code units for 15 characters
    ("comment", None, False),
])
def test_trade_request_field_types(field, value, ok):
    request = dict(GOOD_REQUEST, **{field: value})
    for function in (mt5.order_send, mt5.order_check):
        assert function(request) is None
        assert mt5.last_error() == (NO_IPC if ok else (-2, f'Invalid "{field}" argument'))
        assert function(**request) is None
        assert mt5.last_error() == (NO_IPC if ok else (-2, f'Invalid "{field}" argument'))


def test_trade_request_fields_are_checked_in_struct_order():
    mt5.order_send({"volume": 1, "symbol": 5, "magic": "x"})
    assert mt5.last_error() == (-2, 'Invalid "magic" argument')
    mt5.order_send({"volume": 1, "symbol": 5})
    assert mt5.last_error() == (-2, 'Invalid "symbol" argument')
    mt5.order_send({"comment": 5, "volume": 1})
    assert mt5.last_error() == (-2, 'Invalid "volume" argument')


def test_trade_request_is_normalized_and_zero_filled():
    request, error = client._trade_request(({"symbol": "EURUSD", "volume": np.float64(0.5), "type": Side.BUY,
                                             "deviation": True, "x": 1},), {})
    assert error is None
    assert list(request) == list(mt5.TradeRequest._field_names)
    assert request["volume"] == 0.5 and type(request["volume"]) is float
    assert request["type"] == 0 and type(request["type"]) is int
    assert request["deviation"] == 1 and type(request["deviation"]) is int
    assert request["comment"] == "" and request["price"] == 0.0 and request["position_by"] == 0
    assert "x" not in request
