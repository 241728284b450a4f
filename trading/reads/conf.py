"""Settings of the read path, each from ``django.conf.settings`` when set there, else the environment.

They live here (not in bridge_project/settings.py) so the read path is configured in one place; a
test can still override any of them with the ``settings`` fixture. Documented in docs/reads.md.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, tuple[type, Any]] = {
    # Web tier: how long a request/reply read may take before 502 BridgeUnavailable.
    "BRIDGE_READ_TIMEOUT": (float, 2.0),
    # ... plus this much per 10,000 bars/ticks asked for (large copies take longer to serialize).
    "BRIDGE_READ_TIMEOUT_PER_10K": (float, 0.5),
    # A reader heartbeat older than this means the read process is gone (web answers 502 at once).
    "BRIDGE_READER_HEARTBEAT_TTL": (float, 2.0),
    # Poller: seconds between two snapshots of account, positions, orders, ticks and books.
    "BRIDGE_POLL_INTERVAL": (float, 0.25),
    # A snapshot older than this is not served (the poller is stuck or gone): the read falls back to
    # the read queue, and answers 502 when that fails too.
    "BRIDGE_SNAPSHOT_MAX_AGE": (float, 2.0),
    # Symbols asked for on /quotes/{symbol} stay watched by the poller this long (seconds).
    "BRIDGE_QUOTE_INTEREST_TTL": (float, 300.0),
    # Largest number of ticks in one response (count, or one page of a from/to range).
    "BRIDGE_READ_MAX_TICKS": (int, 100_000),
    # Longest broker suffix accepted when resolving EURUSD -> EURUSDm / EURUSD.pro (0 disables).
    "BRIDGE_SYMBOL_SUFFIX_MAX": (int, 6),
}


def get(name: str) -> Any:
    """The value of one read-path setting (settings > environment > default)."""
    kind, default = DEFAULTS[name]
    if hasattr(settings, name):
        return kind(getattr(settings, name))
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return kind(raw)
