# ruff: noqa: F401 - everything imported here is the public surface (like MetaTrader5)
"""mt5sim: a MetaTrader5 (5.0.6231) look-alike module backed by a simulated terminal.

``import mt5sim as mt5`` gives the same functions, constants, result types and helpers as
``import MetaTrader5 as mt5``; ``initialize("host:port")`` (or ``MT5SIM_ADDRESS``) attaches this
process to a terminal started with ``python -m mt5sim serve``. See docs/mt5sim.md.
"""

from .client import (
    account_info,
    copy_rates_from,
    copy_rates_from_pos,
    copy_rates_range,
    copy_ticks_from,
    copy_ticks_range,
    history_deals_get,
    history_deals_total,
    history_orders_get,
    history_orders_total,
    initialize,
    last_error,
    login,
    market_book_add,
    market_book_get,
    market_book_release,
    order_calc_margin,
    order_calc_profit,
    order_check,
    order_send,
    orders_get,
    orders_total,
    positions_get,
    positions_total,
    shutdown,
    symbol_info,
    symbol_info_tick,
    symbol_select,
    symbols_get,
    symbols_total,
    terminal_info,
    version,
)
from .constants import *  # noqa: F403 - the public constants are the module surface
from .constants import (
    ORDER_TYPE_BUY,
    ORDER_TYPE_SELL,
    TRADE_ACTION_DEAL,
    TRADE_RETCODE_DONE,
    TRADE_RETCODE_PRICE_OFF,
    TRADE_RETCODE_REQUOTE,
)
from .structs import (
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

__version__ = "5.0.6231"
__author__ = "MetaQuotes Ltd."

_RETRY_RETCODES = (TRADE_RETCODE_REQUOTE, TRADE_RETCODE_PRICE_OFF)
_HELPER_ATTEMPTS = 10


def _RawOrder(order_type, symbol, volume, price, comment=None, ticket=None):  # MetaTrader5's name
    """A market deal request as the package's helpers build it: no type_filling (so FOK), deviation 10."""
    request = {
        "action": TRADE_ACTION_DEAL,
        "symbol": symbol,
        "volume": volume,
        "type": order_type,
        "price": price,
        "deviation": 10,
    }
    if comment is not None:
        request["comment"] = comment
    if ticket is not None:
        request["position"] = ticket
    return order_send(request)


def _market_order(order_type, price_field, symbol, volume, price, comment, ticket):
    if price is not None:
        return _RawOrder(order_type, symbol, volume, price, comment, ticket)
    result = None
    for _ in range(_HELPER_ATTEMPTS):
        tick = symbol_info_tick(symbol)
        # Like the package: a None tick fails on attribute access (AttributeError).
        result = _RawOrder(order_type, symbol, volume, getattr(tick, price_field), comment, ticket)
        if result is None:
            return None
        if result.retcode not in _RETRY_RETCODES:
            break
    return result


def Buy(symbol, volume, price=None, *, comment=None, ticket=None):  # MetaTrader5's name
    """Market buy; without a price, retries at the current ask while requoted or without prices."""
    return _market_order(ORDER_TYPE_BUY, "ask", symbol, volume, price, comment, ticket)


def Sell(symbol, volume, price=None, *, comment=None, ticket=None):  # MetaTrader5's name
    """Market sell; without a price, retries at the current bid while requoted or without prices."""
    return _market_order(ORDER_TYPE_SELL, "bid", symbol, volume, price, comment, ticket)


def Close(symbol, *, comment=None, ticket=None):  # MetaTrader5's name
    """Close the buy/sell positions of ``symbol`` (or the one ``ticket``) with opposite deals.

    True when all closed, "Partially" when some did, False when none did, None when a tick or a
    result was None.
    """
    positions = positions_get(ticket=ticket) if ticket is not None else positions_get(symbol=symbol)
    attempted = closed = 0
    for position in positions:
        if position.type not in (ORDER_TYPE_BUY, ORDER_TYPE_SELL):
            continue
        attempted += 1
        for _ in range(_HELPER_ATTEMPTS):
            tick = symbol_info_tick(symbol)
            if tick is None:
                return None
            if position.type == ORDER_TYPE_BUY:
                result = _RawOrder(ORDER_TYPE_SELL, symbol, position.volume, tick.bid, comment, position.ticket)
            else:
                result = _RawOrder(ORDER_TYPE_BUY, symbol, position.volume, tick.ask, comment, position.ticket)
            if result is None:
                return None
            if result.retcode in _RETRY_RETCODES:
                continue
            if result.retcode == TRADE_RETCODE_DONE:
                closed += 1
            break
    if closed == 0:
        return False
    return True if closed == attempted else "Partially"


# Keep the namespace like MetaTrader5's: no implementation submodules among the public names.
del client, constants, structs, protocol  # noqa: F821 - bound by the submodule imports above
