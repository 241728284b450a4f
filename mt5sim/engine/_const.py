"""Constants the engine uses, with the real MetaTrader5 values.

The public names come from mt5sim.constants (which owns the real values). Names that are not
in the Python package (SYMBOL_FILLING_*, SYMBOL_EXPIRATION_*, SYMBOL_ORDER_*) are defined only
here, on purpose, with the engine's own tables.
"""

from ..constants import *  # noqa: F403 - re-exported for the engine as C.NAME

SYMBOL_CALC_MODE_EXCH_FUTURES_FORTS = 34


# MQL5 flags that the Python package does not export (MT5_API.md §7).
SYMBOL_FILLING_FOK = 1
SYMBOL_FILLING_IOC = 2
SYMBOL_FILLING_BOC = 4
SYMBOL_EXPIRATION_GTC = 1
SYMBOL_EXPIRATION_DAY = 2
SYMBOL_EXPIRATION_SPECIFIED = 4
SYMBOL_EXPIRATION_SPECIFIED_DAY = 8
SYMBOL_ORDER_MARKET = 1
SYMBOL_ORDER_LIMIT = 2
SYMBOL_ORDER_STOP = 4
SYMBOL_ORDER_STOP_LIMIT = 8
SYMBOL_ORDER_SL = 16
SYMBOL_ORDER_TP = 32
SYMBOL_ORDER_CLOSEBY = 64


# The comment the trade server puts in results for each retcode.
RETCODE_COMMENTS = {
    0: "Done",
    10004: "Requote",
    10006: "Request rejected",
    10007: "Request canceled by trader",
    10008: "Order placed",
    10009: "Request executed",
    10010: "Request executed partially",
    10011: "Request processing error",
    10012: "Request canceled by timeout",
    10013: "Invalid request",
    10014: "Invalid volume",
    10015: "Invalid price",
    10016: "Invalid stops",
    10017: "Trade disabled",
    10018: "Market closed",
    10019: "No money",
    10020: "Prices changed",
    10021: "No prices",
    10022: "Invalid expiration",
    10023: "Order state changed",
    10024: "Too many requests",
    10025: "No changes",
    10026: "AutoTrading disabled by server",
    10027: "AutoTrading disabled by client",
    10028: "Request locked for processing",
    10029: "Order or position frozen",
    10030: "Unsupported filling mode",
    10031: "No connection",
    10032: "Only real accounts allowed",
    10033: "Pending orders limit reached",
    10034: "Volume limit reached",
    10035: "Invalid order",
    10036: "Position already closed",
    10038: "Invalid close volume",
    10039: "Close order already exists",
    10040: "Positions limit reached",
    10041: "Pending order activation rejected",
    10042: "Only long positions allowed",
    10043: "Only short positions allowed",
    10044: "Only position closing allowed",
    10045: "FIFO close rule",
}

TIMEFRAMES_SECONDS = {
    1: 60, 2: 120, 3: 180, 4: 240, 5: 300, 6: 360, 10: 600, 12: 720, 15: 900, 20: 1200, 30: 1800,
    16385: 3600, 16386: 7200, 16387: 10800, 16388: 14400, 16390: 21600, 16392: 28800, 16396: 43200,
    16408: 86400, 32769: 604800, 49153: 2592000,
}
