"""Event stream settings, read from Django settings (bridge_project/settings.py reads the environment).

Retention of replayable events (order, position, account) per session is bounded two ways, whichever
bites first: ``BRIDGE_EVENTS_MAXLEN`` entries (exact trimming) and ``BRIDGE_EVENTS_MAX_AGE`` seconds.
"""

from __future__ import annotations

from django.conf import settings


def _setting(name: str, cast: type, default: object) -> object:
    """The setting from Django settings (read from the environment in bridge_project/settings.py)."""
    return cast(getattr(settings, name, default))


def events_maxlen() -> int:
    """At most this many replayable events are kept per session (exact MAXLEN)."""
    return int(_setting("BRIDGE_EVENTS_MAXLEN", int, 10_000))


def events_max_age() -> float:
    """Replayable events older than this many seconds are trimmed (checked on every publish)."""
    return float(_setting("BRIDGE_EVENTS_MAX_AGE", float, 24 * 3600))


def fanout_maxlen() -> int:
    """Length of the fan-out stream that relays read (a buffer, not a history)."""
    return int(_setting("BRIDGE_EVENTS_FANOUT_MAXLEN", int, 20_000))


def profit_interval() -> float:
    """Minimum seconds between two ``profit`` events of one terminal (throttle)."""
    return float(_setting("BRIDGE_EVENTS_PROFIT_INTERVAL", float, 0.5))


def account_equity_interval() -> float:
    """Minimum seconds between two ``account`` events caused by equity/margin-level drift alone.

    Balance, margin and free-margin changes caused by trades are published at once.
    """
    return float(_setting("BRIDGE_EVENTS_ACCOUNT_INTERVAL", float, 1.0))


def client_max_pending() -> int:
    """Replayable events a socket may have waiting to be written before it is closed with 4429."""
    return int(_setting("BRIDGE_EVENTS_CLIENT_MAX_PENDING", int, 2_000))


def client_high_water() -> int:
    """Bytes buffered by the server for a socket above which the bridge stops writing to it."""
    return int(_setting("BRIDGE_EVENTS_CLIENT_HIGH_WATER", int, 1 << 20))


def client_stall_timeout() -> float:
    """Seconds a socket may stay above the high-water mark before it is closed with 4429."""
    return float(_setting("BRIDGE_EVENTS_CLIENT_STALL_TIMEOUT", float, 15.0))


def session_check_interval() -> float:
    """Seconds between a socket's database checks that its session is still live (the fallback: a
    session that ends closes its sockets at once through its final ``session`` event)."""
    return float(_setting("BRIDGE_EVENTS_SESSION_CHECK_INTERVAL", float, 30.0))


def ticket_ttl() -> float:
    """Seconds a socket ticket from ``POST /events/ticket`` stays valid (it is single-use)."""
    return float(_setting("BRIDGE_EVENTS_TICKET_TTL", float, 30.0))


def connect_rate() -> str:
    """Socket connects allowed per API key (``N/s``, ``N/min``, ``N/hour``; ``0/min``: no limit)."""
    return str(_setting("BRIDGE_EVENTS_CONNECT_RATE", str, "30/min"))


def connect_fail_rate_ip() -> str:
    """Failed socket connects (bad key, ticket or session) allowed per client IP before it is refused."""
    return str(_setting("BRIDGE_EVENTS_CONNECT_FAIL_RATE_IP", str, "60/min"))


def message_rate() -> str:
    """Client messages allowed per socket."""
    return str(_setting("BRIDGE_EVENTS_MESSAGE_RATE", str, "20/s"))


def max_depth() -> int:
    """Deepest nesting of arrays/objects accepted in a client message."""
    return int(_setting("BRIDGE_EVENTS_MAX_DEPTH", int, 32))


def max_message_bytes() -> int:
    """Largest client message accepted (UTF-8 bytes)."""
    return int(_setting("BRIDGE_EVENTS_MAX_MESSAGE_BYTES", int, 64 * 1024))


def key_check_interval() -> float:
    """Seconds between an open socket's database checks that its API key is still active (the fallback:
    revoking a key closes its sockets at once through the channel layer)."""
    return float(_setting("BRIDGE_EVENTS_KEY_CHECK_INTERVAL", float, 30.0))


def redis_url() -> str:
    return str(settings.REDIS_URL)
