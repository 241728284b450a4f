"""Request bodies of the write endpoints (strict JSON types, unknown fields refused) and the task body."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from bridge_project.fields import (
    RejectUnknownFieldsMixin,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)

from .models import Task
from .mt5const import FILLING_TYPES, ORDER_TYPES, TIME_TYPES

MAX_PRICE = 1e12
MAX_VOLUME = 1e9
UINT64_MAX = 2**64 - 1


def _price(**kw: Any) -> StrictFloatField:
    return StrictFloatField(required=False, min_value=0.0, max_value=MAX_PRICE, **kw)


class OrderCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    symbol = StrictCharField(max_length=29, help_text="a symbol of the session's terminal")
    type = serializers.ChoiceField(choices=list(ORDER_TYPES))
    volume = StrictFloatField(min_value=0.0, max_value=MAX_VOLUME, help_text="lots; within the symbol's limits")
    price = _price(help_text="required for pending orders; market orders: the reference price for deviation")
    stoplimit = _price(help_text="the limit price of a STOP_LIMIT order")
    sl = _price()
    tp = _price()
    deviation = StrictIntegerField(required=False, min_value=0, max_value=100_000, help_text="points")
    magic = StrictIntegerField(required=False, min_value=0, max_value=UINT64_MAX, help_text="default: the bridge magic")
    comment = StrictCharField(required=False, allow_blank=True, max_length=64,
                              help_text="at most 16 characters (the bridge tag takes the rest of MT5's 29)")
    type_filling = serializers.ChoiceField(choices=list(FILLING_TYPES), required=False)
    type_time = serializers.ChoiceField(choices=list(TIME_TYPES), required=False)
    expiration = StrictIntegerField(required=False, min_value=1, max_value=2**40,
                                    help_text="unix seconds UTC; with type_time SPECIFIED or SPECIFIED_DAY")

    def validate_volume(self, value: float) -> float:
        if value <= 0:
            raise serializers.ValidationError("must be greater than 0")
        return value


class OrderPatchSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    price = _price()
    stoplimit = _price()
    sl = _price()
    tp = _price()
    volume = StrictFloatField(required=False, min_value=0.0, max_value=MAX_VOLUME)
    expiration = StrictIntegerField(required=False, min_value=1, max_value=2**40)
    type_time = serializers.ChoiceField(choices=list(TIME_TYPES), required=False)
    deviation = StrictIntegerField(required=False, min_value=0, max_value=100_000)
    comment = StrictCharField(required=False, allow_blank=True, max_length=64)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError({"non_field_errors": ["nothing to change"]})
        return attrs


class PositionCloseSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    volume = StrictFloatField(required=False, min_value=0.0, max_value=MAX_VOLUME,
                              help_text="partial close when less than the position's volume")
    deviation = StrictIntegerField(required=False, min_value=0, max_value=100_000)

    def validate_volume(self, value: float) -> float:
        if value <= 0:
            raise serializers.ValidationError("must be greater than 0")
        return value


class PositionModifySerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    sl = _price(help_text="0 removes the stop loss")
    tp = _price(help_text="0 removes the take profit")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError({"non_field_errors": ["give sl, tp or both"]})
        return attrs


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
    requestId = serializers.CharField(source="request_id")
    sessionId = serializers.CharField(source="session_id")
    parentTaskId = serializers.CharField(source="parent_id", allow_null=True)
    createdAt = serializers.SerializerMethodField()
    updatedAt = serializers.SerializerMethodField()
    finishedAt = serializers.SerializerMethodField()

    class Meta:
        model = Task
        fields = ["taskId", "requestId", "sessionId", "kind", "state", "request", "result", "parentTaskId",
                  "createdAt", "updatedAt", "finishedAt", "attempts"]

    def get_createdAt(self, task: Task) -> float:  # noqa: N802
        return task.created_at.timestamp()

    def get_updatedAt(self, task: Task) -> float:  # noqa: N802
        return task.updated_at.timestamp()

    def get_finishedAt(self, task: Task) -> float | None:  # noqa: N802
        return task.finished_at.timestamp() if task.finished_at else None


class TaskListSerializer(serializers.Serializer):
    tasks = TaskSerializer(many=True)
    nextCursor = serializers.CharField(allow_null=True)  # noqa: N815
