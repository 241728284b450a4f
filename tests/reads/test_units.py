"""Pure rules of the read path: time parsing and conversion, symbol-name resolution."""

from __future__ import annotations

import numpy as np
import pytest

from terminals.symbols import resolve_symbol_name, valid_symbol
from terminals.timeutil import array_to_records, broker_seconds, parse_time, record_to_utc


@pytest.mark.parametrize(("text", "expected"), [
    ("1717243200", 1717243200.0),
    ("1717243200.25", 1717243200.25),
    ("2024-06-01T12:00:00Z", 1717243200.0),
    ("2024-06-01T12:00:00+00:00", 1717243200.0),
    ("2024-06-01T15:00:00+03:00", 1717243200.0),
    ("2024-06-01T12:00:00", 1717243200.0),  # no zone: UTC, never the server's local time
    ("2024-06-01T12:00:00.500Z", 1717243200.5),
    ("2024-06-01", 1717200000.0),
])
def test_parse_time_accepts_unix_seconds_and_iso_8601(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "0", "-1", "2147483648", "1e30", "inf", "nan",
                                  "2024-02-30T00:00:00Z", "12:00"])
def test_parse_time_refuses_what_mt5_cannot_take(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_offset_applies_both_ways():
    offset = 10800
    record = {"time": 1717254000, "time_msc": 1717254000123, "time_expiration": 0, "price": 1.1,
              "time_setup": 1717254000, "time_done_msc": 1717254001000}
    assert record_to_utc(dict(record), offset) == {
        "time": 1717243200, "time_msc": 1717243200123, "time_expiration": 0, "price": 1.1,
        "time_setup": 1717243200, "time_done_msc": 1717243201000}
    assert broker_seconds(1717243200.7, offset) == 1717254000
    assert broker_seconds(1717243200.0, -3600) == 1717239600
    assert broker_seconds(2**31 + 5, 0) == 2**31 - 1  # clamped into MT5's date range


def test_arrays_become_records_with_real_utc_times():
    dtype = np.dtype([("time", "<i8"), ("bid", "<f8"), ("time_msc", "<i8")])
    array = np.array([(1717254000, 1.5, 1717254000250)], dtype=dtype)
    assert array_to_records(array, 10800) == [{"time": 1717243200, "bid": 1.5, "time_msc": 1717243200250}]
    assert array["time"][0] == 1717254000  # the terminal's array is left as it was


NAMES = ["EURUSDm", "GBPUSD.pro", "USDJPY", "US500", "US30.cash", "XAUUSD", "xauusd_i", "BTCUSD#", "EURUSD.a",
         "EURUSD.b"]


@pytest.mark.parametrize(("requested", "resolved"), [
    ("USDJPY", "USDJPY"),
    ("usdjpy", "USDJPY"),
    ("GBPUSD", "GBPUSD.pro"),
    ("US30", "US30.cash"),
    ("BTCUSD", "BTCUSD#"),
    ("EURUSDm", "EURUSDm"),
    ("XAUUSD", "XAUUSD"),
])
def test_broker_suffixes_resolve_to_the_one_candidate(requested, resolved):
    assert resolve_symbol_name(requested, NAMES, 6) == (resolved, [])


def test_ambiguous_and_non_suffix_names_do_not_resolve():
    assert resolve_symbol_name("EURUSD", ["EURUSD.a", "EURUSD.b"], 6) == (None, ["EURUSD.a", "EURUSD.b"])
    assert resolve_symbol_name("US", NAMES, 6) == (None, [])  # US500: digits are part of the name
    assert resolve_symbol_name("EUR", ["EURUSD"], 6) == (None, [])  # upper-case letters too
    assert resolve_symbol_name("GBPUSD", NAMES, 0) == (None, [])  # suffix matching switched off
    assert resolve_symbol_name("US30", NAMES, 3) == (None, [])  # ".cash" is longer than allowed


def test_symbol_names_that_can_reach_a_terminal():
    assert valid_symbol("EURUSD") and valid_symbol("US30.cash") and valid_symbol("BTCUSD#")
    assert not valid_symbol("X" * 30) and not valid_symbol("EUR USD") and not valid_symbol("*USD*")
    assert not valid_symbol("!EURUSD") and not valid_symbol("EUR,USD") and not valid_symbol("")
