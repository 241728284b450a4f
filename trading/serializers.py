"""Request bodies of the write endpoints (strict JSON types, unknown fields refused) and the task body."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from bridge_project.fields import (
    RejectUnknownFieldsMixin,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from bridge_project.schema import (
    REQUEST_ID_PATTERN,
    TASK_ID_PATTERN,
    ExclusiveMinFloatField,
    FullMatch,
    StrictBodyExtension,
)
from terminals.constants import FILLING_TYPES, ORDER_TYPES, TIME_TYPES

from .models import TaskKind, TaskState, TradeTask
from .orders import USER_COMMENT_MAX
from .reads.serializers import SYMBOL_PATTERN, QueryIntegerField, QueryNumberField
from .selectors import MAX_LIMIT

MAX_PRICE = 1e12
MAX_VOLUME = 1e9
MAX_MONEY = 1e12
UINT64_MAX = 2**64 - 1


def _printable_bmp_pattern(max_length: int) -> str:
    """``^[...]{0,max_length}$`` over the characters of the Basic Multilingual Plane that Python calls
    printable (``str.isprintable``, the rule of ``trading.orders.check_user_comment``), as ``\\uXXXX``
    ranges: that rule in a form JSON Schema can state. Outside the BMP a character takes two of
    MT5's UTF-16 units, so ``max_length`` characters are ``max_length`` units only within it."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or not chr(code).isprintable():
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    chars = "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)
    return f"^[{chars}]{{0,{max_length}}}$"


COMMENT_PATTERN = _printable_bmp_pattern(USER_COMMENT_MAX)


def _price(**kw: Any) -> StrictFloatField:
    return StrictFloatField(required=False, min_value=0.0, max_value=MAX_PRICE, **kw)


class VolumeField(StrictFloatField, ExclusiveMinFloatField):
    """Lots: a JSON number greater than 0 (and at most MAX_VOLUME)."""

    def __init__(self, **kwargs: Any):
        super().__init__(max_value=MAX_VOLUME, **kwargs)


def _comment(**kw: Any) -> StrictCharField:
    return StrictCharField(
        required=False, allow_blank=True, max_length=USER_COMMENT_MAX, trim_whitespace=False,
        validators=[FullMatch(COMMENT_PATTERN, f"at most {USER_COMMENT_MAX} printable characters of the Basic "
                              "Multilingual Plane (MT5 keeps 29 UTF-16 units; the bridge tag takes the rest)")],
        **kw,
    )


class OrderCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    symbol = StrictCharField(max_length=29, trim_whitespace=False, validators=[FullMatch(SYMBOL_PATTERN)],
                             help_text="a symbol of the session's terminal (unknown there: 400 naming `symbol`)")
    type = serializers.ChoiceField(choices=list(ORDER_TYPES))
    volume = VolumeField(help_text="lots, > 0; within the symbol's volume_min/volume_max and a multiple of its "
                         "volume_step (else 400 naming `volume`)")
    price = _price(help_text="required for pending orders; market orders: the reference price for deviation. "
                   "Prices have the symbol's digits and are multiples of its tick size (else 400 naming the field)")
    stoplimit = _price(help_text="the limit price of a STOP_LIMIT order: required for those, refused for others")
    sl = _price()
    tp = _price()
    deviation = StrictIntegerField(required=False, min_value=0, max_value=100_000, help_text="points")
    magic = StrictIntegerField(required=False, min_value=0, max_value=UINT64_MAX, help_text="default: the bridge magic")
    comment = _comment(help_text=f"at most {USER_COMMENT_MAX} printable characters (the bridge tag takes the rest "
                       "of MT5's 29)")
    type_filling = serializers.ChoiceField(choices=list(FILLING_TYPES), required=False)
    type_time = serializers.ChoiceField(choices=list(TIME_TYPES), required=False)
    expiration = StrictIntegerField(required=False, min_value=1, max_value=2**40,
                                    help_text="unix seconds UTC; required with type_time SPECIFIED (in the future) "
                                    "or SPECIFIED_DAY, refused with the others")


class OrderPatchSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    min_fields = 1  # the schema's minProperties: a PATCH changes something

    price = _price()
    stoplimit = _price()
    sl = _price()
    tp = _price()
    volume = VolumeField(required=False)
    expiration = StrictIntegerField(required=False, min_value=1, max_value=2**40)
    type_time = serializers.ChoiceField(choices=list(TIME_TYPES), required=False)
    deviation = StrictIntegerField(required=False, min_value=0, max_value=100_000)
    comment = _comment()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError({"non_field_errors": ["nothing to change"]})
        return attrs


class PositionCloseSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    volume = VolumeField(required=False, help_text="partial close when less than the position's volume")
    deviation = StrictIntegerField(required=False, min_value=0, max_value=100_000)


class MoneyField(StrictFloatField, ExclusiveMinFloatField):
    """A sum in the account currency: a JSON number greater than 0 (and at most MAX_MONEY)."""

    def __init__(self, **kwargs: Any):
        super().__init__(required=False, max_value=MAX_MONEY, **kwargs)


class PositionModifySerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    min_fields = 1  # the schema's minProperties
    # Not a price and a sum for the same level (the schema's `not`, PositionModifyBodyExtension).
    exclusive = (("sl", "slMoney"), ("tp", "tpMoney"))

    sl = _price(help_text="0 removes the stop loss")
    tp = _price(help_text="0 removes the take profit")
    slMoney = MoneyField(help_text="the stop loss as the most the position may lose there, in the account currency "
                         "(> 0; not with `sl`): converted to a price when accepted, rounded on the tick grid "
                         "toward the open price (the loss at it is at most this, within one tick)")
    tpMoney = MoneyField(help_text="the take profit as the least the position gains there, in the account currency "
                         "(> 0; not with `tp`): converted to a price when accepted, rounded on the tick grid "
                         "away from the open price (the profit at it is at least this, within one tick)")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError({"non_field_errors": ["give sl, tp, slMoney, tpMoney or two of them"]})
        errors = {money: [f"not with `{price}`: give the level as a price or as money"]
                  for price, money in self.exclusive if price in attrs and money in attrs}
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class PositionModifyBodyExtension(OpenApiSerializerExtension):
    """PositionModifySerializer's body as StrictBodyExtension states it, plus the levels given twice it
    refuses (`sl` with `slMoney`, `tp` with `tpMoney`): a `not` of their `required` pairs."""

    target_class = "trading.serializers.PositionModifySerializer"
    priority = 1  # over StrictBodyExtension, whose schema it extends

    def map_serializer(self, auto_schema, direction):  # drf-spectacular signature
        schema = StrictBodyExtension(self.target).map_serializer(auto_schema, direction)
        if direction == "request":
            schema["not"] = {"anyOf": [{"required": list(pair)} for pair in PositionModifySerializer.exclusive]}
        return schema


class PositionsCloseAllSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    symbol = StrictCharField(required=False, max_length=29, trim_whitespace=False,
                             validators=[FullMatch(SYMBOL_PATTERN)],
                             help_text="only positions of this symbol (the broker's name, case-insensitive)")
    side = serializers.ChoiceField(choices=["BUY", "SELL"], required=False,
                                   help_text="only BUY (long) or SELL (short) positions")
    magic = StrictIntegerField(required=False, min_value=0, max_value=UINT64_MAX,
                               help_text="only positions with this magic number")
    deviation = StrictIntegerField(required=False, min_value=0, max_value=100_000,
                                   help_text="points, for each close (default BRIDGE_DEFAULT_DEVIATION)")


MONEY_LEVEL_FIELDS = {
    "asked": "the sum the body asked for (`slMoney`/`tpMoney`)",
    "price": "the price computed: the task's `sl`/`tp`",
    "money": "what the position loses (SL) or gains (TP) at that price, in the account currency: at most "
             "`asked` for an SL, at least `asked` for a TP, within one tick's worth",
    "priceOpen": "the position's open price used",
    "volume": "the position's volume used (lots)",
    "tickValue": "account currency per tick and lot used: the terminal's trade_tick_value_loss for an SL, "
                 "trade_tick_value_profit for a TP (trade_tick_value when those are 0)",
    "tickSize": "the symbol's trade_tick_size",
}
MONEY_LEVEL_SCHEMA = {"type": "object", "required": list(MONEY_LEVEL_FIELDS),
                      "properties": {name: {"type": "number", "description": text}
                                     for name, text in MONEY_LEVEL_FIELDS.items()}}


@extend_schema_field({
    "type": "object", "additionalProperties": True,
    "description": "the validated body as stored for the worker. A `position.modify` given `slMoney`/`tpMoney` "
                   "holds the prices computed from them in `sl`/`tp` and, in `moneyLevels`, per level given as "
                   "money: the sum asked, the price, the sum that price really means and what it was computed from.",
    "properties": {"moneyLevels": {"type": "object", "additionalProperties": False,
                                   "properties": {"sl": MONEY_LEVEL_SCHEMA, "tp": MONEY_LEVEL_SCHEMA}}},
})
class TaskRequestField(serializers.JSONField):
    """The task's ``request`` (its JSON as stored)."""


class TaskSerializer(serializers.ModelSerializer):
    """A task: one write and its outcome at the terminal.

    `state`: queued → dispatched → placed | filled | partial | rejected | failed, queued → cancelled,
    dispatched → unknown → (final); a tagged order that executes after `failed` is adopted late
    (failed → filled, with its event). `unknown` lasts at least BRIDGE_INFLIGHT_BOUND (90 s) after
    the send, and as long as the terminal is disconnected, on another account or its history is not
    synced: `result.error.unknownBecause` is one of within_inflight_bound, in_flight_at_terminal,
    ambiguous_match, terminal_disconnected, account_mismatch, history_not_synced.
    Bridge reason codes in `result.error.code` (with `result.source` = "bridge" when nothing was
    sent): SessionEnded, TerminalNotBound, AccountMismatch (cancelled); NotExecuted, BridgeUnavailable,
    TerminalError (failed); OutcomeUnknown (unknown). docs/orders.md has the details.
    """

    taskId = serializers.CharField(source="id")
    request = TaskRequestField()
    requestId = serializers.CharField(source="request_id")
    sessionId = serializers.CharField(source="session_id")
    parentTaskId = serializers.CharField(source="parent_id", allow_null=True)
    createdAt = serializers.SerializerMethodField()
    updatedAt = serializers.SerializerMethodField()
    finishedAt = serializers.SerializerMethodField()

    class Meta:
        model = TradeTask
        fields = ["taskId", "requestId", "sessionId", "kind", "state", "request", "result", "parentTaskId",
                  "createdAt", "updatedAt", "finishedAt", "attempts"]

    def get_createdAt(self, task: TradeTask) -> float:
        return task.created_at.timestamp()

    def get_updatedAt(self, task: TradeTask) -> float:
        return task.updated_at.timestamp()

    def get_finishedAt(self, task: TradeTask) -> float | None:
        return task.finished_at.timestamp() if task.finished_at else None


def task_body(task: TradeTask) -> dict[str, Any]:
    """``TaskSerializer(task).data`` without building a serializer per task (the hot write path answers
    with it; tests/orders/test_hot_writes.py checks the two agree)."""
    return {
        "taskId": task.id, "requestId": task.request_id, "sessionId": task.session_id, "kind": task.kind,
        "state": task.state, "request": task.request, "result": task.result, "parentTaskId": task.parent_id,
        "createdAt": task.created_at.timestamp(), "updatedAt": task.updated_at.timestamp(),
        "finishedAt": task.finished_at.timestamp() if task.finished_at else None, "attempts": task.attempts,
    }


class TaskListSerializer(serializers.Serializer):
    tasks = TaskSerializer(many=True)
    nextCursor = serializers.CharField(allow_null=True)


class CallTasksSerializer(serializers.Serializer):
    tasks = TaskSerializer(many=True, help_text="the tasks the call made, by ticket (empty: nothing matched)")


# --- GET /tasks: its query, as the schema states it (trading.selectors.task_list then applies it) ----

MAX_SINCE = 253402300799  # 9999-12-31T23:59:59Z: the last second a datetime holds
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"


class CommaChoicesField(serializers.Field):
    """A comma-separated list of choices (``state=queued,filled``): every item one of them, none empty."""

    default_error_messages = {"invalid": "A comma-separated list of: {choices}."}

    def __init__(self, choices: list[str], **kwargs: Any):
        self.choices = list(choices)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        items = str(data).split(",")
        if not all(item in self.choices for item in items):
            self.fail("invalid", choices=", ".join(self.choices))
        return items

    def to_representation(self, value: list[str]) -> str:
        return ",".join(value)


def _query_text(pattern: str, message: str) -> StrictCharField:
    return StrictCharField(required=False, trim_whitespace=False, validators=[FullMatch(pattern, message)])


class TaskListQuery(serializers.Serializer):
    state = CommaChoicesField(list(TaskState.values), required=False)
    kind = CommaChoicesField(list(TaskKind.values), required=False)
    requestId = _query_text(REQUEST_ID_PATTERN, "1 to 128 printable ASCII characters, no spaces")
    since = QueryNumberField(required=False, min_value=0, max_value=MAX_SINCE)
    limit = QueryIntegerField(required=False, min_value=1, max_value=MAX_LIMIT)
    cursor = _query_text(CURSOR_PATTERN, "not a cursor this API returned")

    def validate_cursor(self, value: str) -> str:
        """The ``nextCursor`` of a page: ``<microseconds>|<task id>`` in unpadded base64url."""
        try:
            micros, task_id = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode().split("|", 1)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise serializers.ValidationError("not a cursor this API returned") from exc
        if not re.fullmatch(r"[0-9]{1,20}", micros) or not re.fullmatch(TASK_ID_PATTERN, task_id):
            raise serializers.ValidationError("not a cursor this API returned")
        return value
