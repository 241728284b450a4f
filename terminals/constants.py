"""The MetaTrader5 constants and enum names the order path needs.

The web tier never talks to a terminal, so it does not import the terminal module (nor the emulator):
the values are written here. Bridge-side groupings and names are defined here too.
"""

from __future__ import annotations

# The real MetaTrader5 values (the same in every build of the package; tests/terminals/
# test_constants.py checks each against mt5sim's copy, itself checked against the wheel).
DEAL_ENTRY_INOUT = 2
DEAL_ENTRY_OUT = 1
DEAL_ENTRY_OUT_BY = 3
ORDER_STATE_CANCELED = 2
ORDER_STATE_EXPIRED = 6
ORDER_STATE_FILLED = 4
ORDER_STATE_PARTIAL = 3
ORDER_STATE_PLACED = 1
ORDER_STATE_REJECTED = 5
ORDER_STATE_REQUEST_ADD = 7
ORDER_STATE_REQUEST_CANCEL = 9
ORDER_STATE_REQUEST_MODIFY = 8
ORDER_STATE_STARTED = 0
ORDER_TYPE_BUY = 0
ORDER_TYPE_SELL = 1
POSITION_TYPE_BUY = 0
SYMBOL_TRADE_EXECUTION_INSTANT = 1
SYMBOL_TRADE_EXECUTION_REQUEST = 0
TRADE_ACTION_DEAL = 1
TRADE_ACTION_MODIFY = 7
TRADE_ACTION_PENDING = 5
TRADE_ACTION_REMOVE = 8
TRADE_ACTION_SLTP = 6
TIMEFRAME_M1 = 1
TIMEFRAME_M2 = 2
TIMEFRAME_M3 = 3
TIMEFRAME_M4 = 4
TIMEFRAME_M5 = 5
TIMEFRAME_M6 = 6
TIMEFRAME_M10 = 10
TIMEFRAME_M12 = 12
TIMEFRAME_M15 = 15
TIMEFRAME_M20 = 20
TIMEFRAME_M30 = 30
TIMEFRAME_H1 = 16385
TIMEFRAME_H2 = 16386
TIMEFRAME_H3 = 16387
TIMEFRAME_H4 = 16388
TIMEFRAME_H6 = 16390
TIMEFRAME_H8 = 16392
TIMEFRAME_H12 = 16396
TIMEFRAME_D1 = 16408
TIMEFRAME_W1 = 32769
TIMEFRAME_MN1 = 49153
COPY_TICKS_ALL = -1
COPY_TICKS_INFO = 1
COPY_TICKS_TRADE = 2

ORDER_TYPES = {
    "BUY": 0, "SELL": 1, "BUY_LIMIT": 2, "SELL_LIMIT": 3, "BUY_STOP": 4, "SELL_STOP": 5,
    "BUY_STOP_LIMIT": 6, "SELL_STOP_LIMIT": 7,
}
MARKET_TYPES = ("BUY", "SELL")
STOP_LIMIT_TYPES = ("BUY_STOP_LIMIT", "SELL_STOP_LIMIT")
FILLING_TYPES = {"FOK": 0, "IOC": 1, "RETURN": 2}
TIME_TYPES = {"GTC": 0, "DAY": 1, "SPECIFIED": 2, "SPECIFIED_DAY": 3}
EXPIRING_TIME_TYPES = ("SPECIFIED", "SPECIFIED_DAY")


SYMBOL_FILLING_FOK = 1  # SymbolInfo.filling_mode bits (not in the Python package)
SYMBOL_FILLING_IOC = 2

RETCODE_REQUOTE = 10004
RETCODE_PLACED = 10008
RETCODE_DONE = 10009
RETCODE_DONE_PARTIAL = 10010
RETCODE_PRICE_CHANGED = 10020
RETCODE_PRICE_OFF = 10021
RETCODE_NO_CHANGES = 10025
RETCODE_POSITION_CLOSED = 10036
RETCODE_INVALID_ORDER = 10035

# Retcodes after which MT5 says nothing was executed and a fresh price may be tried.
RETRYABLE_RETCODES = (RETCODE_REQUOTE, RETCODE_PRICE_CHANGED, RETCODE_PRICE_OFF)

RETCODE_TEXT = {
    10004: "Requote", 10006: "Request rejected", 10007: "Request canceled by trader", 10008: "Order placed",
    10009: "Request completed", 10010: "Only part of the request was completed",
    10011: "Request processing error", 10012: "Request canceled by timeout", 10013: "Invalid request",
    10014: "Invalid volume in the request", 10015: "Invalid price in the request",
    10016: "Invalid stops in the request", 10017: "Trade is disabled", 10018: "Market is closed",
    10019: "There is not enough money to complete the request", 10020: "Prices changed",
    10021: "There are no quotes to process the request", 10022: "Invalid order expiration date in the request",
    10023: "Order state changed", 10024: "Too frequent requests", 10025: "No changes in request",
    10026: "Autotrading disabled by server", 10027: "Autotrading disabled by client terminal",
    10028: "Request locked for processing", 10029: "Order or position frozen",
    10030: "Invalid order filling type", 10031: "No connection with the trade server",
    10032: "Operation is allowed only for live accounts",
    10033: "The number of pending orders has reached the limit",
    10034: "The volume of orders and positions for the symbol has reached the limit",
    10035: "Incorrect or prohibited order type",
    10036: "Position with the specified POSITION_IDENTIFIER has already been closed",
    10038: "A close volume exceeds the current position volume",
    10039: "A close order already exists for a specified position",
    10040: "The number of open positions simultaneously present on an account has reached the limit",
    10041: "The pending order activation request is rejected, the order is canceled",
    10042: "Only long positions are allowed", 10043: "Only short positions are allowed",
    10044: "Only position closing is allowed", 10045: "Position closing is allowed only by FIFO rule",
    10046: "Opposite positions on a single symbol are disabled",
}


def retcode_text(retcode: int | None) -> str:
    if retcode is None:
        return ""
    return RETCODE_TEXT.get(int(retcode), f"retcode {retcode}")
