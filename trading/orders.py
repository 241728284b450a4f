"""Order rules: validation against the symbol's own limits, the comment tag, and the MT5 requests.

Validation (web tier, before a task exists) uses the symbol spec the terminal's worker published
(``trading.symbol_specs``). Building the ``order_send`` request happens on the pinned worker, with the
live tick and symbol info at hand.

Comment rule: MT5 keeps at most 29 characters of a request comment. The bridge writes
``<tag>`` or ``<tag>|<user comment>`` where the tag is ``b:`` + 10 characters (12 in all), unique
per task: it is how a task's order is found at the terminal. That leaves 16 characters (UTF-16
code units) for the user's comment; a longer one is a 400, never silently cut.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from django.conf import settings

from bridge_project.errors import ValidationFailed
from terminals import constants as C

TAG_PREFIX = "b:"
TAG_LENGTH = 12
MT5_COMMENT_MAX = 29
USER_COMMENT_MAX = MT5_COMMENT_MAX - TAG_LENGTH - 1  # 16: the separator '|' takes one
_TAG_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_tag() -> str:
    return TAG_PREFIX + "".join(secrets.choice(_TAG_ALPHABET) for _ in range(TAG_LENGTH - len(TAG_PREFIX)))


def is_bridge_comment(comment: str) -> bool:
    return len(comment) >= TAG_LENGTH and comment.startswith(TAG_PREFIX) and (
        len(comment) == TAG_LENGTH or comment[TAG_LENGTH] == "|"
    )


def tag_of(comment: str) -> str | None:
    return comment[:TAG_LENGTH] if is_bridge_comment(comment) else None


def mt5_comment(tag: str, user_comment: str | None) -> str:
    return f"{tag}|{user_comment}" if user_comment else tag


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def check_user_comment(comment: str | None, errors: dict[str, list[str]]) -> None:
    if not comment:
        return
    if _utf16_len(comment) > USER_COMMENT_MAX:
        errors.setdefault("comment", []).append(
            f"at most {USER_COMMENT_MAX} characters: MT5 keeps {MT5_COMMENT_MAX} and the bridge tag uses "
            f"{TAG_LENGTH + 1}"
        )
    if any(not ch.isprintable() for ch in comment):
        errors.setdefault("comment", []).append("printable characters only")


def _is_multiple(value: float, step: float) -> bool:
    if step <= 0:
        return True
    ratio = value / step
    return abs(ratio - round(ratio)) < 1e-6


def _has_digits(value: float, digits: int) -> bool:
    scaled = value * (10 ** int(digits))
    return abs(scaled - round(scaled)) < 1e-6 * max(1.0, abs(scaled) / 1e6)


def check_volume(volume: float, spec: dict[str, Any], errors: dict[str, list[str]], field: str = "volume") -> None:
    vmin, vmax, step = float(spec["volume_min"]), float(spec["volume_max"]), float(spec["volume_step"])
    if volume < vmin - 1e-12 or volume > vmax + 1e-12:
        errors.setdefault(field, []).append(f"must be between {vmin} and {vmax} for {spec['name']}")
    elif not _is_multiple(volume, step):
        errors.setdefault(field, []).append(f"must be a multiple of the volume step {step} of {spec['name']}")


def check_prices(data: dict[str, Any], spec: dict[str, Any], errors: dict[str, list[str]]) -> None:
    digits = int(spec["digits"])
    tick = float(spec.get("trade_tick_size") or 0.0)
    for field in ("price", "stoplimit", "sl", "tp"):
        value = data.get(field)
        if value is None or value == 0:
            continue
        if not _has_digits(value, digits):
            errors.setdefault(field, []).append(f"{spec['name']} prices have {digits} digits")
        elif tick and not _is_multiple(value, tick):
            errors.setdefault(field, []).append(f"must be a multiple of the tick size {tick}")


def validate_order_create(data: dict[str, Any], spec: dict[str, Any] | None, now: float | None = None) -> None:
    """Raise ValidationFailed (400, every field named) unless the order fits the symbol and MT5's rules."""
    errors: dict[str, list[str]] = {}
    if spec is None:
        raise ValidationFailed("unknown symbol", {"symbol": [f"{data['symbol']!r} is not a symbol of this terminal"]})
    otype = data["type"]
    check_volume(data["volume"], spec, errors)
    check_prices(data, spec, errors)
    check_user_comment(data.get("comment"), errors)
    if otype not in C.MARKET_TYPES and not data.get("price"):
        errors.setdefault("price", []).append(f"required for {otype} orders")
    if otype in C.STOP_LIMIT_TYPES and not data.get("stoplimit"):
        errors.setdefault("stoplimit", []).append(f"required for {otype} orders")
    if otype not in C.STOP_LIMIT_TYPES and data.get("stoplimit"):
        errors.setdefault("stoplimit", []).append("only for BUY_STOP_LIMIT and SELL_STOP_LIMIT orders")
    check_expiration(data.get("type_time"), data.get("expiration"), errors, now)
    if errors:
        raise ValidationFailed("order validation failed", errors)


def check_expiration(type_time: str | None, expiration: int | None, errors: dict[str, list[str]],
                     now: float | None = None) -> None:
    if type_time in C.EXPIRING_TIME_TYPES:
        if expiration is None:
            errors.setdefault("expiration", []).append(f"required with type_time {type_time}")
        elif type_time == "SPECIFIED" and expiration <= (now or time.time()):
            errors.setdefault("expiration", []).append("must be in the future")
    elif expiration is not None:
        errors.setdefault("expiration", []).append("only with type_time SPECIFIED or SPECIFIED_DAY")


# --- MT5 requests (pinned worker) ----------------------------------------------------------------

def _float(value: Any) -> float:
    return float(value or 0.0)


def default_filling(filling_mode: int, pending: bool) -> int:
    """The filling the symbol allows when the client gave none (FOK, else IOC, else RETURN)."""
    if pending:
        return C.FILLING_TYPES["RETURN"]
    if filling_mode & C.SYMBOL_FILLING_FOK:
        return C.FILLING_TYPES["FOK"]
    if filling_mode & C.SYMBOL_FILLING_IOC:
        return C.FILLING_TYPES["IOC"]
    return C.FILLING_TYPES["RETURN"]


def market_price(otype: int, tick: Any) -> float:
    """The price a market order of ``otype`` executes at: ask for a buy, bid for a sell."""
    return float(tick.ask if otype == C.ORDER_TYPE_BUY else tick.bid)


def order_create_request(task_request: dict[str, Any], tag: str, utc_offset: int, symbol_info: Any,
                         tick: Any | None) -> dict[str, Any]:
    """The ``order_send`` request of an ``order.create`` task: every client field carried through."""
    otype_name = task_request["type"]
    otype = C.ORDER_TYPES[otype_name]
    pending = otype_name not in C.MARKET_TYPES
    price = _float(task_request.get("price"))
    if not pending and not price and tick is not None:
        price = market_price(otype, tick)
    filling = task_request.get("type_filling")
    expiration = task_request.get("expiration")
    return {
        "action": C.TRADE_ACTION_PENDING if pending else C.TRADE_ACTION_DEAL,
        "symbol": task_request["symbol"],
        "volume": float(task_request["volume"]),
        "type": otype,
        "price": price,
        "stoplimit": _float(task_request.get("stoplimit")),
        "sl": _float(task_request.get("sl")),
        "tp": _float(task_request.get("tp")),
        "deviation": int(task_request.get("deviation", settings.BRIDGE_DEFAULT_DEVIATION)),
        "magic": int(task_request.get("magic", settings.BRIDGE_MAGIC)),
        "comment": mt5_comment(tag, task_request.get("comment")),
        "type_filling": C.FILLING_TYPES[filling] if filling else default_filling(int(symbol_info.filling_mode), pending),
        "type_time": C.TIME_TYPES[task_request.get("type_time") or "GTC"],
        # The client speaks real UTC; the terminal wants trade-server time.
        "expiration": int(expiration) + utc_offset if expiration else 0,
        "position": 0,
        "position_by": 0,
        "order": 0,
    }


def position_close_request(task_request: dict[str, Any], tag: str, position: Any, symbol_info: Any,
                           tick: Any) -> dict[str, Any]:
    """A market deal opposite to ``position`` with ``position=`` its ticket (hedging and netting)."""
    otype = C.ORDER_TYPE_SELL if int(position.type) == C.POSITION_TYPE_BUY else C.ORDER_TYPE_BUY
    return {
        "action": C.TRADE_ACTION_DEAL,
        "symbol": position.symbol,
        "volume": float(task_request.get("volume") or position.volume),
        "type": otype,
        "price": market_price(otype, tick),
        "deviation": int(task_request.get("deviation", settings.BRIDGE_DEFAULT_DEVIATION)),
        "magic": int(settings.BRIDGE_MAGIC),
        "comment": tag,
        "type_filling": default_filling(int(symbol_info.filling_mode), False),
        "position": int(position.ticket),
    }


def position_modify_request(task_request: dict[str, Any], position: Any) -> dict[str, Any]:
    """TRADE_ACTION_SLTP: the fields not given keep the position's current value."""
    return {
        "action": C.TRADE_ACTION_SLTP,
        "symbol": position.symbol,
        "position": int(position.ticket),
        "sl": float(task_request["sl"]) if "sl" in task_request else float(position.sl),
        "tp": float(task_request["tp"]) if "tp" in task_request else float(position.tp),
        "magic": int(settings.BRIDGE_MAGIC),
    }


def order_modify_request(task_request: dict[str, Any], order: Any, utc_offset: int) -> dict[str, Any]:
    """TRADE_ACTION_MODIFY: MT5 zero-fills what is missing, so unchanged fields are sent as they are."""
    expiration = task_request.get("expiration")
    type_time = task_request.get("type_time")
    return {
        "action": C.TRADE_ACTION_MODIFY,
        "order": int(order.ticket),
        "symbol": order.symbol,
        "price": float(task_request.get("price", order.price_open)),
        "stoplimit": float(task_request.get("stoplimit", order.price_stoplimit)),
        "sl": float(task_request.get("sl", order.sl)),
        "tp": float(task_request.get("tp", order.tp)),
        "type_time": C.TIME_TYPES[type_time] if type_time else int(order.type_time),
        "expiration": int(expiration) + utc_offset if expiration else int(order.time_expiration),
    }


def order_cancel_request(order_ticket: int) -> dict[str, Any]:
    return {"action": C.TRADE_ACTION_REMOVE, "order": int(order_ticket)}


def within_deviation(reference: float, fresh: float, deviation: int, point: float) -> bool:
    if not reference:
        return True
    return math.isclose(reference, fresh) or abs(fresh - reference) <= deviation * point + 1e-12
