"""The 11 result types of MetaTrader5, and the two numpy dtypes.

The real module builds its results with ``PyStructSequence``: tuples whose items can also be read
(never written) as attributes, with ``n_fields``/``n_sequence_fields``, a ``TypeName(field=value, ...)``
repr and one extra method, a non-recursive ``_asdict()``. They are *not* namedtuples: no ``_fields``,
``_replace`` or ``_make``. This module reproduces that behaviour with plain tuple subclasses.
Field names and order are those of MetaTrader5 5.0.6231 (``fields.json``).
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import numpy as np

_STRUCTS: tuple[tuple[str, str, str], ...] = (
    ("TradePosition", "Trade position structure",
     """ticket time time_msc time_update time_update_msc type magic identifier reason volume price_open sl
        tp price_current swap profit symbol comment external_id"""),
    ("TradeOrder", "Trade order structure",
     """ticket time_setup time_setup_msc time_done time_done_msc time_expiration type type_time type_filling
        state magic position_id position_by_id reason volume_initial volume_current price_open sl tp
        price_current price_stoplimit symbol comment external_id"""),
    ("TradeDeal", "Trade deal structure",
     """ticket order time time_msc type entry magic position_id reason volume price commission swap profit
        fee symbol comment external_id"""),
    ("TradeRequest", "Trade request structure",
     """action magic order symbol volume price stoplimit sl tp deviation type type_filling type_time
        expiration comment position position_by"""),
    ("OrderSendResult", "order_send result structure",
     """retcode deal order volume price bid ask comment request_id retcode_external request"""),
    ("OrderCheckResult", "order_check result structure",
     """retcode balance equity profit margin margin_free margin_level comment request"""),
    ("Tick", "This is a structure for storing latest symbol prices",
     """time bid ask last volume time_msc flags volume_real"""),
    ("TerminalInfo", "This is a structure for storing terminal information",
     """community_account community_connection connected dlls_allowed trade_allowed tradeapi_disabled
        email_enabled ftp_enabled notifications_enabled mqid build maxbars codepage ping_last
        community_balance retransmission company name language path data_path commondata_path"""),
    ("SymbolInfo", "This is a structure for storing symbol information",
     """custom chart_mode select visible session_deals session_buy_orders session_sell_orders volume
        volumehigh volumelow time digits spread spread_float ticks_bookdepth trade_calc_mode trade_mode
        start_time expiration_time trade_stops_level trade_freeze_level trade_exemode swap_mode
        swap_rollover3days margin_hedged_use_leg expiration_mode filling_mode order_mode order_gtc_mode
        option_mode option_right bid bidhigh bidlow ask askhigh asklow last lasthigh lastlow volume_real
        volumehigh_real volumelow_real option_strike point trade_tick_value trade_tick_value_profit
        trade_tick_value_loss trade_tick_size trade_contract_size trade_accrued_interest trade_face_value
        trade_liquidity_rate volume_min volume_max volume_step volume_limit swap_long swap_short
        margin_initial margin_maintenance session_volume session_turnover session_interest
        session_buy_orders_volume session_sell_orders_volume session_open session_close session_aw
        session_price_settlement session_price_limit_min session_price_limit_max margin_hedged price_change
        price_volatility price_theoretical price_greeks_delta price_greeks_theta price_greeks_gamma
        price_greeks_vega price_greeks_rho price_greeks_omega price_sensitivity basis category currency_base
        currency_profit currency_margin bank description exchange formula isin name page path"""),
    ("AccountInfo", "This is a structure for storing account information",
     """login trade_mode leverage limit_orders margin_so_mode trade_allowed trade_expert margin_mode
        currency_digits fifo_close balance credit profit equity margin margin_free margin_level
        margin_so_call margin_so_so margin_initial margin_maintenance assets liabilities commission_blocked
        name server currency company"""),
    ("BookInfo", "This is a structure for storing Depth of Market information",
     """type price volume volume_dbl"""),
)


def _readonly(self: Any, value: Any) -> None:
    raise AttributeError("readonly attribute")


class _StructSequence(tuple):
    """Base of the result types: a tuple with read-only named items (PyStructSequence semantics)."""

    __slots__ = ()
    _field_names: tuple[str, ...] = ()
    n_fields = 0
    n_sequence_fields = 0
    n_unnamed_fields = 0

    def __new__(cls, sequence: Any = (), dict: Any = None):  # same name as CPython's structseq
        try:
            items = tuple(sequence)
        except TypeError:
            raise TypeError("constructor requires a sequence") from None
        if len(items) != cls.n_fields:
            raise TypeError(f"{cls.__name__}() takes a {cls.n_fields}-sequence ({len(items)}-sequence given)")
        return tuple.__new__(cls, items)

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={value!r}" for name, value in zip(self._field_names, self, strict=True))
        return f"{type(self).__name__}({body})"

    def __reduce__(self):
        return (type(self), (tuple(self), {}))

    def _asdict(self) -> dict:
        """Convert named tuple object to dictionary (not recursive, like MetaTrader5)."""
        return dict(zip(self._field_names, self, strict=True))


def _make_type(name: str, doc: str, fields: tuple[str, ...]) -> type:
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__doc__": doc,
        "__module__": "mt5sim",  # pickles as mt5sim.<Type>, a real attribute
        "__match_args__": fields,
        "_field_names": fields,
        "n_fields": len(fields),
        "n_sequence_fields": len(fields),
        "n_unnamed_fields": 0,
    }
    for index, field in enumerate(fields):
        namespace[field] = property(itemgetter(index), _readonly, None, None)
    return type(name, (_StructSequence,), namespace)


STRUCT_TYPES: dict[str, type] = {}
for _name, _doc, _fields in _STRUCTS:
    STRUCT_TYPES[_name] = _make_type(_name, _doc, tuple(_fields.split()))

TradePosition = STRUCT_TYPES["TradePosition"]
TradeOrder = STRUCT_TYPES["TradeOrder"]
TradeDeal = STRUCT_TYPES["TradeDeal"]
TradeRequest = STRUCT_TYPES["TradeRequest"]
OrderSendResult = STRUCT_TYPES["OrderSendResult"]
OrderCheckResult = STRUCT_TYPES["OrderCheckResult"]
Tick = STRUCT_TYPES["Tick"]
TerminalInfo = STRUCT_TYPES["TerminalInfo"]
SymbolInfo = STRUCT_TYPES["SymbolInfo"]
AccountInfo = STRUCT_TYPES["AccountInfo"]
BookInfo = STRUCT_TYPES["BookInfo"]

TRADE_REQUEST_FIELDS: tuple[str, ...] = TradeRequest._field_names

RATES_DTYPE = np.dtype([
    ("time", "<i8"), ("open", "<f8"), ("high", "<f8"), ("low", "<f8"), ("close", "<f8"),
    ("tick_volume", "<u8"), ("spread", "<i4"), ("real_volume", "<u8"),
])
TICKS_DTYPE = np.dtype([
    ("time", "<i8"), ("bid", "<f8"), ("ask", "<f8"), ("last", "<f8"), ("volume", "<u8"),
    ("time_msc", "<i8"), ("flags", "<u4"), ("volume_real", "<f8"),
])
