"""A script written for the real MetaTrader5 package runs unmodified through ``python -m mt5sim run``.

The script follows the published MetaQuotes Python examples (order_send, copy_rates_from_pos,
history_deals_get): ``import MetaTrader5 as mt5``, ``initialize()``, a BUY at
``symbol_info_tick().ask``, the close by an opposite deal with ``position=``, rates as a numpy array
and pandas-free printing, deals filtered with ``group``. It exits non-zero on any failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mt5sim.tests.conftest import ROOT

EXAMPLE = r'''
from datetime import datetime, timedelta, timezone
import sys
import time

import MetaTrader5 as mt5

# display data on the MetaTrader 5 package
print("MetaTrader5 package author: ", mt5.__author__)
print("MetaTrader5 package version: ", mt5.__version__)

# establish connection to the MetaTrader 5 terminal
if not mt5.initialize():
    print("initialize() failed, error code =", mt5.last_error())
    sys.exit(1)
print(mt5.terminal_info())
print(mt5.version())

# prepare the buy request structure
symbol = "EURUSD"
symbol_info = mt5.symbol_info(symbol)
if symbol_info is None:
    print(symbol, "not found, can not call order_check()")
    mt5.shutdown()
    sys.exit(2)

# if the symbol is unavailable in MarketWatch, add it
if not symbol_info.visible:
    print(symbol, "is not visible, trying to switch on")
    if not mt5.symbol_select(symbol, True):
        print("symbol_select({}}) failed, exit", symbol)
        mt5.shutdown()
        sys.exit(3)

# the broker decides which filling policies market orders may use
if symbol_info.filling_mode & 1:
    filling = mt5.ORDER_FILLING_FOK
elif symbol_info.filling_mode & 2:
    filling = mt5.ORDER_FILLING_IOC
else:
    filling = mt5.ORDER_FILLING_RETURN

lot = 0.1
point = mt5.symbol_info(symbol).point
price = mt5.symbol_info_tick(symbol).ask
deviation = 20
request = {
    "action": mt5.TRADE_ACTION_DEAL,
    "symbol": symbol,
    "volume": lot,
    "type": mt5.ORDER_TYPE_BUY,
    "price": price,
    "sl": price - 100 * point,
    "tp": price + 100 * point,
    "deviation": deviation,
    "magic": 234000,
    "comment": "python script open",
    "type_time": mt5.ORDER_TIME_GTC,
    "type_filling": filling,
}

# send a trading request
result = mt5.order_send(request)
# check the execution result
print("1. order_send(): by {} {} lots at {} with deviation={} points".format(symbol, lot, price, deviation))
if result is None or result.retcode != mt5.TRADE_RETCODE_DONE:
    print("2. order_send failed, retcode={}".format(None if result is None else result.retcode), mt5.last_error())
    if result is not None:
        # request the result as a dictionary and display it element by element
        result_dict = result._asdict()
        for field in result_dict.keys():
            print("   {}={}".format(field, result_dict[field]))
            # if this is a trading request structure, display it element by element as well
            if field == "request":
                traderequest_dict = result_dict[field]._asdict()
                for tradereq_filed in traderequest_dict:
                    print("       traderequest: {}={}".format(tradereq_filed, traderequest_dict[tradereq_filed]))
    mt5.shutdown()
    sys.exit(4)

print("2. order_send done, ", result)
print("   opened position with POSITION_TICKET={}".format(result.order))
print("   sleep 2 seconds before closing position #{}".format(result.order))
time.sleep(2)

# create a close request
position_id = result.order
price = mt5.symbol_info_tick(symbol).bid
request = {
    "action": mt5.TRADE_ACTION_DEAL,
    "symbol": symbol,
    "volume": lot,
    "type": mt5.ORDER_TYPE_SELL,
    "position": position_id,
    "price": price,
    "deviation": deviation,
    "magic": 234000,
    "comment": "python script close",
    "type_time": mt5.ORDER_TIME_GTC,
    "type_filling": filling,
}
# send a trading request
result = mt5.order_send(request)
# check the execution result
print("3. close position #{}: sell {} {} lots at {} with deviation={} points".format(
    position_id, symbol, lot, price, deviation))
if result is None or result.retcode != mt5.TRADE_RETCODE_DONE:
    print("4. order_send failed, retcode={}".format(None if result is None else result.retcode), mt5.last_error())
    mt5.shutdown()
    sys.exit(5)
print("4. position #{} closed, {}".format(position_id, result))

# get 10 EURUSD M1 bars from the current one
rates = mt5.copy_rates_from_pos(symbol, mt5.TIMEFRAME_M1, 0, 10)
if rates is None or len(rates) != 10:
    print("copy_rates_from_pos failed", mt5.last_error())
    sys.exit(6)
print("Display obtained data 'as is'")
for rate in rates:
    print(rate)
print("last bar opens at", datetime.fromtimestamp(int(rates[-1]["time"]), tz=timezone.utc))

# get deals for symbols whose names contain neither "EUR" nor "GBP", then those with "EUR"
from_date = datetime.now(timezone.utc) - timedelta(days=1)
to_date = datetime.now(timezone.utc) + timedelta(days=1)
deals = mt5.history_deals_get(from_date, to_date, group="*,!*EUR*,!*GBP*")
if deals is None:
    print("No deals with group=\"*,!*EUR*,!*GBP*\", error code={}".format(mt5.last_error()))
    sys.exit(7)
print("history_deals_get({}, {}, group=\"*,!*EUR*,!*GBP*\")={}".format(from_date, to_date, len(deals)))
if any("EUR" in deal.symbol for deal in deals):
    print("group filter let an EUR deal through")
    sys.exit(8)
deals = mt5.history_deals_get(from_date, to_date, group="*EUR*")
mine = [deal for deal in deals if deal.position_id == position_id]
for deal in mine:
    print("  ", deal)
if len(mine) != 2:
    print("expected 2 deals of position", position_id, "got", len(mine))
    sys.exit(9)
print("deals of position #{}: {}".format(position_id, [deal.entry for deal in mine]))

# shut down connection to the MetaTrader 5 terminal
mt5.shutdown()
'''


def test_metaquotes_style_example_runs_unmodified(sim_server: str, tmp_path: Path):
    script = tmp_path / "order_send_example.py"
    script.write_text(EXAMPLE)
    env = dict(os.environ, MT5SIM_ADDRESS=sim_server)
    done = subprocess.run([sys.executable, "-m", "mt5sim", "run", str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MetaTrader5 package version:  5.0.6231" in done.stdout
    assert "2. order_send done,  OrderSendResult(retcode=10009" in done.stdout
    assert "4. position #" in done.stdout and " closed, OrderSendResult(retcode=10009" in done.stdout
    assert "deals of position #" in done.stdout and ": [0, 1]" in done.stdout
    assert "TradeRequest(action=1, magic=234000" in done.stdout


# ---------------------------------------------------------------- the examples that missed before issue #12
# Each script follows the published MetaQuotes example of one function (same calls, symbols, request fields
# and checks; pandas/pytz printing left out) and exits non-zero where the example would print a failure.

SYMBOL_SELECT_EURCAD = r'''
import sys
import MetaTrader5 as mt5

print("MetaTrader5 package author: ", mt5.__author__)
print("MetaTrader5 package version: ", mt5.__version__)
if not mt5.initialize():
    print("initialize() failed, error code =", mt5.last_error())
    sys.exit(1)

# attempt to enable the display of the EURCAD in MarketWatch
selected = mt5.symbol_select("EURCAD", True)
if not selected:
    print("Failed to select EURCAD, error code =", mt5.last_error())
    sys.exit(2)
symbol_info = mt5.symbol_info("EURCAD")
print(symbol_info)
print("EURCAD: currency_base =", symbol_info.currency_base, "  currency_profit =", symbol_info.currency_profit,
      "  currency_margin =", symbol_info.currency_margin)
print()
print("Show symbol_info()._asdict():")
symbol_info_dict = symbol_info._asdict()
for prop in symbol_info_dict:
    print("  {}={}".format(prop, symbol_info_dict[prop]))
mt5.shutdown()
'''

SYMBOL_INFO_TICK_EURAUD = r'''
import sys
import MetaTrader5 as mt5

if not mt5.initialize():
    print("initialize() failed, error code =", mt5.last_error())
    sys.exit(1)

# attempt to enable the display of the EURAUD symbol in MarketWatch
selected = mt5.symbol_select("EURAUD", True)
if not selected:
    print("Failed to select EURAUD")
    mt5.shutdown()
    sys.exit(2)

# display the last EURAUD tick
lasttick = mt5.symbol_info_tick("EURAUD")
print(lasttick)
if lasttick is None or not lasttick.bid > 0:
    sys.exit(3)
# display tick field values in the form of a list
print("Show symbol_info_tick(\"EURAUD\")._asdict():")
symbol_info_tick_dict = mt5.symbol_info_tick("EURAUD")._asdict()
for prop in symbol_info_tick_dict:
    print("  {}={}".format(prop, symbol_info_tick_dict[prop]))
mt5.shutdown()
'''

ORDER_SEND_USDJPY = r'''
import sys
import time
import MetaTrader5 as mt5

print("MetaTrader5 package author: ", mt5.__author__)
print("MetaTrader5 package version: ", mt5.__version__)
if not mt5.initialize():
    print("initialize() failed, error code =", mt5.last_error())
    sys.exit(1)

# prepare the buy request structure
symbol = "USDJPY"
symbol_info = mt5.symbol_info(symbol)
if symbol_info is None:
    print(symbol, "not found, can not call order_check()")
    mt5.shutdown()
    sys.exit(2)

# if the symbol is unavailable in MarketWatch, add it
if not symbol_info.visible:
    print(symbol, "is not visible, trying to switch on")
    if not mt5.symbol_select(symbol, True):
        print("symbol_select({}}) failed, exit", symbol)
        mt5.shutdown()
        sys.exit(3)

lot = 0.1
point = mt5.symbol_info(symbol).point
price = mt5.symbol_info_tick(symbol).ask
deviation = 20
request = {
    "action": mt5.TRADE_ACTION_DEAL,
    "symbol": symbol,
    "volume": lot,
    "type": mt5.ORDER_TYPE_BUY,
    "price": price,
    "sl": price - 100 * point,
    "tp": price + 100 * point,
    "deviation": deviation,
    "magic": 234000,
    "comment": "python script open",
    "type_time": mt5.ORDER_TIME_GTC,
    "type_filling": mt5.ORDER_FILLING_RETURN,
}

# send a trading request
result = mt5.order_send(request)
# check the execution result
print("1. order_send(): by {} {} lots at {} with deviation={} points".format(symbol, lot, price, deviation))
if result.retcode != mt5.TRADE_RETCODE_DONE:
    print("2. order_send failed, retcode={}".format(result.retcode))
    result_dict = result._asdict()
    for field in result_dict.keys():
        print("   {}={}".format(field, result_dict[field]))
    mt5.shutdown()
    sys.exit(4)

print("2. order_send done, ", result)
print("   opened position with POSITION_TICKET={}".format(result.order))
print("   sleep 2 seconds before closing position #{}".format(result.order))
time.sleep(2)
# create a close request
position_id = result.order
price = mt5.symbol_info_tick(symbol).bid
deviation = 20
request = {
    "action": mt5.TRADE_ACTION_DEAL,
    "symbol": symbol,
    "volume": lot,
    "type": mt5.ORDER_TYPE_SELL,
    "position": position_id,
    "price": price,
    "deviation": deviation,
    "magic": 234000,
    "comment": "python script close",
    "type_time": mt5.ORDER_TIME_GTC,
    "type_filling": mt5.ORDER_FILLING_RETURN,
}
# send a trading request
result = mt5.order_send(request)
# check the execution result
print("3. close position #{}: sell {} {} lots at {} with deviation={} points".format(
    position_id, symbol, lot, price, deviation))
if result.retcode != mt5.TRADE_RETCODE_DONE:
    print("4. order_send failed, retcode={}".format(result.retcode))
    print("   result", result)
    mt5.shutdown()
    sys.exit(5)
print("4. position #{} closed, {}".format(position_id, result))
mt5.shutdown()
'''

COPY_RATES_RANGE_2020 = r'''
import sys
from datetime import datetime, timezone
import MetaTrader5 as mt5

print("MetaTrader5 package author: ", mt5.__author__)
print("MetaTrader5 package version: ", mt5.__version__)
if not mt5.initialize():
    print("initialize() failed, error code =", mt5.last_error())
    sys.exit(1)

# create 'datetime' objects in UTC time zone to avoid the implementation of a local time zone offset
utc_from = datetime(2020, 1, 10, tzinfo=timezone.utc)
utc_to = datetime(2020, 1, 11, hour=13, tzinfo=timezone.utc)
# get bars from USDJPY M5 within the interval of 2020.01.10 00:00 - 2020.01.11 13:00 in UTC time zone
rates = mt5.copy_rates_range("USDJPY", mt5.TIMEFRAME_M5, utc_from, utc_to)
mt5.shutdown()
if rates is None:
    print("copy_rates_range failed, error code =", mt5.last_error())
    sys.exit(2)

# display each element of obtained data in a new line
print("Display obtained data 'as is'")
counter = 0
for rate in rates:
    counter += 1
    if counter <= 10:
        print(rate)
print("bars:", len(rates), "first:", datetime.fromtimestamp(int(rates[0]["time"]), tz=timezone.utc))
'''


def run_example(address: str, script_text: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    script = tmp_path / f"{name}.py"
    script.write_text(script_text)
    env = dict(os.environ, MT5SIM_ADDRESS=address)
    return subprocess.run([sys.executable, "-m", "mt5sim", "run", str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_symbol_select_example_eurcad(sim_server: str, tmp_path: Path):
    done = run_example(sim_server, SYMBOL_SELECT_EURCAD, tmp_path, "symbol_select_eurcad")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "EURCAD: currency_base = EUR   currency_profit = CAD   currency_margin = EUR" in done.stdout
    assert "  path=Forex\\Minors\\EURCAD" in done.stdout and "  description=Euro vs Canadian Dollar" in done.stdout


def test_symbol_info_tick_example_euraud(sim_server: str, tmp_path: Path):
    done = run_example(sim_server, SYMBOL_INFO_TICK_EURAUD, tmp_path, "symbol_info_tick_euraud")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Tick(time=") and "  bid=" in done.stdout


def test_order_send_example_usdjpy_with_filling_return(sim_server: str, tmp_path: Path):
    done = run_example(sim_server, ORDER_SEND_USDJPY, tmp_path, "order_send_usdjpy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2. order_send done,  OrderSendResult(retcode=10009" in done.stdout
    assert "type_filling=2" in done.stdout
    assert " closed, OrderSendResult(retcode=10009" in done.stdout


def test_copy_rates_range_example_2020_with_unlimited_maxbars(sim_factory, tmp_path: Path):
    # "Max. bars in chart: Unlimited", the setting the example needs for a 2020 range (the default 100000
    # M5 bars reach back less than a year, and the terminal then fails the call as the real one does)
    config = tmp_path / "unlimited.yaml"
    config.write_text("terminal:\n  maxbars: unlimited\n")
    terminal = sim_factory("unlimited", config=config)
    done = run_example(terminal.address, COPY_RATES_RANGE_2020, tmp_path, "copy_rates_range_2020")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bars: 445 first: 2020-01-10 00:00:00+00:00" in done.stdout
    default = sim_factory("default")
    refused = run_example(default.address, COPY_RATES_RANGE_2020, tmp_path, "copy_rates_range_2020_default")
    assert refused.returncode == 2 and "copy_rates_range failed" in refused.stdout   # rates is None
