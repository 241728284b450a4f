"""Broker time <-> real UTC, and the ``from``/``to`` query values.

MT5 reports every time in trade-server time (UTC + the broker's offset, as naive epoch seconds).
On the wire the bridge speaks real UTC only, so the terminal's configured ``utc_offset`` is applied
both ways: subtracted from every time the terminal returns, added to every ``from``/``to`` sent to it.
A zero time means "none" in MT5 (e.g. ``time_expiration`` of a GTC order) and stays zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np

# Fields of MT5 structs and arrays that hold times: seconds, and milliseconds.
SECOND_FIELDS = frozenset(
    {"time", "time_update", "time_setup", "time_done", "time_expiration", "start_time", "expiration_time"}
)
MSC_FIELDS = frozenset({"time_msc", "time_update_msc", "time_setup_msc", "time_done_msc"})

# MT5 dates are C longs: seconds in [1, 2**31).
MIN_TIME = 1
MAX_TIME = 2**31 - 1
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def utc_to_broker(seconds: float, offset: int) -> float:
    """A real-UTC time as the terminal's clock shows it."""
    return seconds + offset


def record_to_utc(record: dict[str, Any], offset: int) -> dict[str, Any]:
    """A struct as a dict with its time fields moved to real UTC (in place, and returned)."""
    if offset:
        for name in SECOND_FIELDS.intersection(record):
            if record[name]:
                record[name] -= offset
        for name in MSC_FIELDS.intersection(record):
            if record[name]:
                record[name] -= offset * 1000
    return record


def records_to_utc(records: Iterable[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    return [record_to_utc(r, offset) for r in records]


def array_to_records(array: np.ndarray, offset: int) -> list[dict[str, Any]]:
    """A numpy rates/ticks array as a list of plain dicts with real-UTC times."""
    names = array.dtype.names or ()
    if offset and len(array):
        array = array.copy()
        if "time" in names:
            array["time"] -= offset
        if "time_msc" in names:
            array["time_msc"] -= offset * 1000
    return [dict(zip(names, row, strict=True)) for row in array.tolist()]


def parse_time(value: str) -> float:
    """A ``from``/``to`` value: unix seconds (``1717000000``, ``1717000000.25``) or ISO 8601.

    ISO 8601 without a zone is UTC (never the server's local time); a date alone is its midnight UTC.
    Raises ValueError with a message fit for the client.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty time")
    if _NUMBER_RE.match(text):
        seconds = float(text)
    else:
        iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        try:
            moment = datetime.fromisoformat(iso)
        except ValueError as exc:
            raise ValueError("not unix seconds or an ISO 8601 date-time") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or not MIN_TIME <= seconds <= MAX_TIME:
        raise ValueError(f"out of range: unix seconds must be between {MIN_TIME} and {MAX_TIME}")
    return seconds


def broker_seconds(utc_seconds: float, offset: int) -> int:
    """A real-UTC time as the int seconds an MT5 date argument takes (clamped into its range)."""
    return int(min(max(math.floor(utc_to_broker(utc_seconds, offset)), MIN_TIME), MAX_TIME))
