"""Query parameters of the read endpoints: strict (unknown or repeated parameters are a 400)."""

from __future__ import annotations

import time
from typing import Any

from django.http import QueryDict
from rest_framework import serializers

from bridge_project.errors import ValidationFailed

from .ops import TICK_FLAGS, TIMEFRAME_SECONDS
from .symbols import GROUP_RE, valid_symbol
from .timeutil import parse_time

HISTORY_DEFAULT_DAYS = 7
MAX_COUNT = 2**31 - 1


def query_data(query: QueryDict, allowed: set[str]) -> dict[str, str]:
    """The query string as a flat dict; unknown and repeated parameters are refused."""
    unknown = sorted(set(query) - allowed)
    repeated = sorted(k for k in query if len(query.getlist(k)) > 1)
    errors = {k: ["Unknown parameter."] for k in unknown}
    errors.update({k: ["Given more than once."] for k in repeated})
    if errors:
        raise ValidationFailed("request validation failed", errors)
    return {k: query.get(k) for k in query}


class TimeField(serializers.Field):
    """A time: unix seconds (fractions allowed) or ISO 8601 (no zone = UTC); real UTC seconds out."""

    default_error_messages = {"invalid": "{reason}: give unix seconds or ISO 8601 (e.g. 2024-05-01T12:00:00Z)."}

    def to_internal_value(self, data: Any) -> float:
        try:
            return parse_time(str(data))
        except ValueError as exc:
            self.fail("invalid", reason=str(exc))

    def to_representation(self, value: float) -> float:
        return value


class SymbolField(serializers.CharField):
    default_error_messages = {"invalid_symbol": "Not a symbol name (1 to 29 characters, no spaces or masks)."}

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not valid_symbol(value):
            self.fail("invalid_symbol")
        return value


def validate_symbol(value: str) -> str:
    """A symbol taken from the URL path."""
    if not valid_symbol(value):
        raise ValidationFailed("invalid symbol", {"symbol": [SymbolField.default_error_messages["invalid_symbol"]]})
    return value


class SymbolFilterQuery(serializers.Serializer):
    symbol = SymbolField(required=False, help_text="only this symbol (exact name, case-insensitive)")


class SymbolsQuery(serializers.Serializer):
    group = serializers.CharField(
        required=False, max_length=256,
        help_text="MT5 group mask: comma list, * wildcard, ! excludes, e.g. *USD*,!EUR*",
    )

    def validate_group(self, value: str) -> str:
        if not GROUP_RE.match(value):
            raise serializers.ValidationError("Printable ASCII without spaces, at most 256 characters.")
        return value


class _CountFromTo(serializers.Serializer):
    """The signed count model shared by bars and ticks."""

    count = serializers.IntegerField(
        required=False, min_value=-MAX_COUNT, max_value=MAX_COUNT,
        help_text="signed: >0 forward from `from`, <0 backward to `from`; without `from`, the last |count|",
    )
    date_from = TimeField(required=False, help_text="unix seconds or ISO 8601 (UTC)")
    date_to = TimeField(required=False, help_text="unix seconds or ISO 8601 (UTC); with `from`, not with `count`")
    limit = serializers.IntegerField(required=False, min_value=1, help_text="page size of a from/to range")

    def to_internal_value(self, data: Any) -> Any:
        data = dict(data)
        for wire, name in (("from", "date_from"), ("to", "date_to")):
            if wire in data:
                data[name] = data.pop(wire)
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        count, date_from, date_to = attrs.get("count"), attrs.get("date_from"), attrs.get("date_to")
        errors: dict[str, list[str]] = {}
        if count == 0:
            errors["count"] = ["Must not be 0."]
        if count is None and date_from is None:
            errors["count"] = ["Give count, or from (with to or count)."]
        if count is not None and date_to is not None:
            errors["to"] = ["Give either count or to with from, not both."]
        if date_to is not None and date_from is None:
            errors["to"] = ["to needs from."]
        if date_from is not None and date_to is not None and date_from > date_to:
            errors["from"] = ["from is after to."]
        if attrs.get("limit") is not None and count is not None:
            errors["limit"] = ["limit pages a from/to range; with count, count is the size."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class BarsQuery(_CountFromTo):
    symbol = SymbolField(help_text="symbol (broker name; suffixes resolved, see docs/reads.md)")
    timeframe = serializers.ChoiceField(choices=list(TIMEFRAME_SECONDS), help_text="M1 ... MN1")


class TicksQuery(_CountFromTo):
    flags = serializers.ChoiceField(choices=list(TICK_FLAGS), required=False, default="ALL")


class HistoryQuery(serializers.Serializer):
    date_from = TimeField(required=False, help_text="unix seconds or ISO 8601 (UTC); default: 7 days before `to`")
    date_to = TimeField(required=False, help_text="unix seconds or ISO 8601 (UTC); default: now")
    symbol = SymbolField(required=False)
    position = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1,
                                        help_text="only orders/deals of this position id")

    def to_internal_value(self, data: Any) -> Any:
        data = dict(data)
        for wire, name in (("from", "date_from"), ("to", "date_to")):
            if wire in data:
                data[name] = data.pop(wire)
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("position") is None:
            attrs.setdefault("date_to", float(int(time.time()) + 1))
            attrs.setdefault("date_from", max(attrs["date_to"] - HISTORY_DEFAULT_DAYS * 86400, 1.0))
        date_from, date_to = attrs.get("date_from"), attrs.get("date_to")
        if date_from is not None and date_to is not None and date_from > date_to:
            raise serializers.ValidationError({"from": ["from is after to."]})
        return attrs


def validated(serializer_class: type[serializers.Serializer], query: QueryDict, extra: dict[str, Any] | None = None,
              allowed: set[str] | None = None) -> dict[str, Any]:
    """Validate a query string (plus path values in ``extra``); errors name the wire parameters."""
    names = allowed if allowed is not None else _wire_names(serializer_class)
    data = query_data(query, names)
    serializer = serializer_class(data={**data, **(extra or {})})
    if not serializer.is_valid():
        errors = {("from" if k == "date_from" else "to" if k == "date_to" else k): v
                  for k, v in serializer.errors.items()}
        details = {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in errors.items()}
        if "non_field_errors" in details:
            details["query"] = details.pop("non_field_errors")
        raise ValidationFailed("request validation failed", details)
    return dict(serializer.validated_data)


def _wire_names(serializer_class: type[serializers.Serializer]) -> set[str]:
    names = set(serializer_class().fields)
    return {"from" if n == "date_from" else "to" if n == "date_to" else n for n in names}
