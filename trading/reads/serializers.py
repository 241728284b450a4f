"""Query parameters of the read endpoints: strict (unknown or repeated parameters are a 400).

Each rule here is also what the OpenAPI schema states (the patterns and ranges below are used by
both): numbers are JSON numbers (no spaces, no ``nan``), symbols are ``SYMBOL_PATTERN``, ``from``/``to``
are unix seconds in MT5's date range (ISO 8601 is accepted too, see ``TimeField``).
"""

from __future__ import annotations

import re
import time
from typing import Any

from django.conf import settings
from django.http import QueryDict
from rest_framework import serializers

from bridge_project.errors import ValidationFailed
from terminals.reads import TICK_FLAGS, TIMEFRAME_SECONDS
from terminals.symbols import valid_symbol
from terminals.timeutil import MAX_TIME, MIN_TIME, parse_time

HISTORY_DEFAULT_DAYS = 7
MAX_COUNT = 2**31 - 1
MAX_LIMIT = 2**31 - 1
MAX_TICK_RANGE = 86400  # seconds a from/to tick range may span (TicksQuery)

# A symbol name (terminals.symbols.valid_symbol): 1 to 29 of these characters, not starting with '!'.
SYMBOL_CHARS = r"A-Za-z0-9._#+\-$&@^~'"
SYMBOL_PATTERN = rf"^[{SYMBOL_CHARS}][{SYMBOL_CHARS}!]{{0,28}}$"
# An MT5 group mask (terminals.symbols.GROUP_RE).
GROUP_PATTERN = r"^[\x21-\x7e]{1,256}$"
# Numbers in a query string are JSON numbers: what a generated client sends, nothing looser.
JSON_INTEGER_RE = re.compile(r"-?(0|[1-9][0-9]*)")
JSON_NUMBER_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def query_data(query: QueryDict, allowed: set[str]) -> dict[str, str]:
    """The query string as a flat dict; unknown and repeated parameters are refused."""
    unknown = sorted(set(query) - allowed)
    repeated = sorted(k for k in query if len(query.getlist(k)) > 1)
    errors = {k: ["Unknown parameter."] for k in unknown}
    errors.update({k: ["Given more than once."] for k in repeated})
    if errors:
        raise ValidationFailed("request validation failed", errors)
    return {k: query.get(k) for k in query}


class QueryIntegerField(serializers.IntegerField):
    """An integer query value written as a JSON integer (``-12``; not ``+12``, `` 12``, ``12.0``)."""

    default_error_messages = {"invalid": "A JSON integer is required (digits, optionally after '-')."}

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, str) or not JSON_INTEGER_RE.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class QueryNumberField(serializers.FloatField):
    """A number query value written as a JSON number (``-1.5``, ``2e3``; not `` 1``, ``nan``, ``1_0``)."""

    default_error_messages = {"invalid": "A JSON number is required."}

    def to_internal_value(self, data: Any) -> float:
        if not isinstance(data, str) or not JSON_NUMBER_RE.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class TimeField(serializers.Field):
    """A time: unix seconds (fractions allowed) or ISO 8601 (no zone = UTC); real UTC seconds out.

    The schema states the unix-seconds form (a number from 1 to 2**31-1, MT5's dates); ISO 8601
    date-times in that range are accepted as well."""

    default_error_messages = {"invalid": "{reason}: give unix seconds or ISO 8601 (e.g. 2024-05-01T12:00:00Z)."}

    def to_internal_value(self, data: Any) -> float:
        try:
            return parse_time(str(data))
        except ValueError as exc:
            self.fail("invalid", reason=str(exc))

    def to_representation(self, value: float) -> float:
        return value


TIME_SCHEMA = {"type": "number", "minimum": MIN_TIME, "maximum": MAX_TIME}


class SymbolField(serializers.CharField):
    """A symbol name as sent: no trimming, ``SYMBOL_PATTERN``."""

    default_error_messages = {"invalid_symbol": "Not a symbol name (1 to 29 characters, no spaces or masks)."}

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not (re.fullmatch(SYMBOL_PATTERN, value) and valid_symbol(value)):
            self.fail("invalid_symbol")
        return value


def validate_symbol(value: str) -> str:
    """A symbol taken from the URL path."""
    if not (re.fullmatch(SYMBOL_PATTERN, value) and valid_symbol(value)):
        raise ValidationFailed("invalid symbol", {"symbol": [SymbolField.default_error_messages["invalid_symbol"]]})
    return value


class SymbolFilterQuery(serializers.Serializer):
    symbol = SymbolField(required=False, help_text="only this symbol (exact name, case-insensitive)")


class SymbolsQuery(serializers.Serializer):
    group = serializers.CharField(
        required=False, max_length=256, trim_whitespace=False,
        help_text="MT5 group mask: comma list, * wildcard, ! excludes, e.g. *USD*,!EUR*",
    )

    def validate_group(self, value: str) -> str:
        if not re.fullmatch(GROUP_PATTERN, value):
            raise serializers.ValidationError("Printable ASCII without spaces, at most 256 characters.")
        return value


class _CountFromTo(serializers.Serializer):
    """The signed count model shared by bars and ticks."""

    count = QueryIntegerField(
        required=False, min_value=-MAX_COUNT, max_value=MAX_COUNT,
        help_text="signed: >0 forward from `from`, <0 backward to `from`; without `from`, the last |count|",
    )
    date_from = TimeField(required=False, help_text="unix seconds or ISO 8601 (UTC)")
    date_to = TimeField(required=False, help_text="unix seconds or ISO 8601 (UTC); with `from`, not with `count`")
    limit = QueryIntegerField(required=False, min_value=1, max_value=MAX_LIMIT,
                              help_text="page size of a from/to range")

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

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        date_from = attrs.get("date_from")
        if attrs.get("count") is None and attrs.get("date_to") is None and date_from is not None \
                and date_from > time.time():
            # A range from a time still to come ends there (no bars yet): `to` defaults to now, or to
            # `from` when that is later, as for history (a range ending before it began sized its read
            # timeout below zero: an instant 502).
            attrs["date_to"] = date_from
        return attrs


class TicksQuery(_CountFromTo):
    """Ticks by the count/from/to model. A from/to range spans at most ``MAX_TICK_RANGE`` seconds
    (``to`` defaulting to now): a terminal copies the whole range before the bridge cuts a page from
    it, so a range of years would hold the terminal for minutes (and the emulator's memory)."""

    flags = serializers.ChoiceField(choices=list(TICK_FLAGS), required=False, default="ALL")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        date_from = attrs.get("date_from")
        if attrs.get("count") is None and date_from is not None:
            date_to = attrs.get("date_to")
            if (time.time() if date_to is None else date_to) - date_from > MAX_TICK_RANGE:
                raise serializers.ValidationError({
                    "to" if date_to is not None else "from": [
                        f"a tick range spans at most {MAX_TICK_RANGE} seconds (one day; without `to`, `from` is "
                        "within the last day): page through longer spans, or use count"]})
        return attrs

    def validate_count(self, value: int) -> int:
        max_ticks = max_ticks_per_request()
        if abs(value) > max_ticks:
            raise serializers.ValidationError(f"|count| must be <= {max_ticks} (BRIDGE_READ_MAX_TICKS); page with "
                                              "from/to")
        return value


def max_ticks_per_request() -> int:
    return int(settings.BRIDGE_READ_MAX_TICKS)


class HistoryQuery(serializers.Serializer):
    date_from = TimeField(required=False, help_text="unix seconds or ISO 8601 (UTC); default: 7 days before `to`")
    date_to = TimeField(required=False, help_text="unix seconds or ISO 8601 (UTC); default: now")
    symbol = SymbolField(required=False)
    position = QueryIntegerField(required=False, min_value=1, max_value=2**63 - 1,
                                 help_text="only orders/deals of this position id")

    def to_internal_value(self, data: Any) -> Any:
        data = dict(data)
        for wire, name in (("from", "date_from"), ("to", "date_to")):
            if wire in data:
                data[name] = data.pop(wire)
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("position") is None:
            # `to` defaults to now (or to `from` when that is later: the future has no history yet).
            now = float(int(time.time()) + 1)
            attrs.setdefault("date_to", max(now, attrs.get("date_from") or now))
            attrs.setdefault("date_from", max(attrs["date_to"] - HISTORY_DEFAULT_DAYS * 86400, 1.0))
        date_from, date_to = attrs.get("date_from"), attrs.get("date_to")
        if date_from is not None and date_to is not None and date_from > date_to:
            raise serializers.ValidationError({"from": ["from is after to."]})
        return attrs


MAX_MAGIC = 2**64 - 1  # an MT5 magic number is an unsigned 64-bit integer


class StatsQuery(HistoryQuery):
    """GET /stats: the range of /history/deals (same formats and defaults), a symbol and a magic."""

    position = None  # not a filter of the statistics
    magic = QueryIntegerField(required=False, min_value=0, max_value=MAX_MAGIC,
                              help_text="only trades (and entry deals) with this magic number")


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
