"""The MetaTrader5 constants and enum names the order path needs.

The web tier never talks to a terminal, so it does not import the terminal module; the values come
from ``mt5sim.constants``, the project's own copy of the MetaTrader5 package's constants (checked
against the official wheel by mt5sim's tests). Bridge-side groupings and names are defined here.
"""

from __future__ import annotations

# The real MetaTrader5 values, re-exported (a plain module: importing it touches no terminal).
from mt5sim.constants import (
    DEAL_ENTRY_INOUT as DEAL_ENTRY_INOUT,
    DEAL_ENTRY_OUT as DEAL_ENTRY_OUT,
    DEAL_ENTRY_OUT_BY as DEAL_ENTRY_OUT_BY,
    ORDER_STATE_CANCELED as ORDER_STATE_CANCELED,
    ORDER_STATE_EXPIRED as ORDER_STATE_EXPIRED,
    ORDER_STATE_FILLED as ORDER_STATE_FILLED,
    ORDER_STATE_PARTIAL as ORDER_STATE_PARTIAL,
    ORDER_STATE_PLACED as ORDER_STATE_PLACED,
    ORDER_STATE_REJECTED as ORDER_STATE_REJECTED,
    ORDER_STATE_REQUEST_ADD as ORDER_STATE_REQUEST_ADD,
    ORDER_STATE_REQUEST_CANCEL as ORDER_STATE_REQUEST_CANCEL,
    ORDER_STATE_REQUEST_MODIFY as ORDER_STATE_REQUEST_MODIFY,
    ORDER_STATE_STARTED as ORDER_STATE_STARTED,
    ORDER_TYPE_BUY as ORDER_TYPE_BUY,
    ORDER_TYPE_SELL as ORDER_TYPE_SELL,
    POSITION_TYPE_BUY as POSITION_TYPE_BUY,
    SYMBOL_TRADE_EXECUTION_INSTANT as SYMBOL_TRADE_EXECUTION_INSTANT,
    SYMBOL_TRADE_EXECUTION_REQUEST as SYMBOL_TRADE_EXECUTION_REQUEST,
    TRADE_ACTION_DEAL as TRADE_ACTION_DEAL,
    TRADE_ACTION_MODIFY as TRADE_ACTION_MODIFY,
    TRADE_ACTION_PENDING as TRADE_ACTION_PENDING,
    TRADE_ACTION_REMOVE as TRADE_ACTION_REMOVE,
    TRADE_ACTION_SLTP as TRADE_ACTION_SLTP,
)

ORDER_TYPES = {
    "BUY": 0, "SELL": 1, "BUY_LIMIT": 2, "SELL_LIMIT": 3, "BUY_STOP": 4, "SELL_STOP": 5,
    "BUY_STOP_LIMIT": 6, "SELL_STOP_LIMIT": 7,
}
MARKET_TYPES = ("BUY", "SELL")
STOP_LIMIT_TYPES = ("BUY_STOP_LIMIT", "SELL_STOP_LIMIT")
BUY_TYPES = ("BUY", "BUY_LIMIT", "BUY_STOP", "BUY_STOP_LIMIT")
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
