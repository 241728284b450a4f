"""Names of everything the event stream keeps in Redis and in the channel layer, in one place."""

from __future__ import annotations

import hashlib
import re

PREFIX = "bridge:ev"
FANOUT_STREAM = f"{PREFIX}:fanout"

REPLAYABLE = ("order", "position", "account", "session", "deal")
# Channels every socket of the session receives without subscribing (the session's own life).
ALWAYS = ("session",)
SESSION_CHANNELS = ("order", "position", "account", "profit", "session", "deal")
# Session statuses after which the session is over: its sockets are closed (4410) once the event is sent.
FINAL_SESSION_STATUSES = ("closed", "expired", "login_failed")
SYMBOL_CHANNELS = ("quote", "depth")
# ``candle:<symbol>:<timeframe>``: the bars of these timeframes (MT5's names, as ``/quotes/history``).
CANDLE_TIMEFRAMES = ("M1", "M5", "M15", "M30", "H1", "H4", "D1")

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,48}$")
SYMBOL_RE = re.compile(r"^[\x21-\x7e]{1,64}$")


def seq_key(session_id: str) -> str:
    """The session's sequence record: a hash ``{n: last seq, e: epoch}``, one key so the two can never be
    lost apart. ``e`` is set (Redis server time in ms) whenever the counter is created, so a counter that
    starts again at 1 (Redis restarted empty, or the record expired) always comes with a newer epoch."""
    return f"{PREFIX}:counter:{session_id}"


def log_key(session_id: str) -> str:
    """The session's replayable events: a Redis stream whose entry ids are ``<seq>-0``."""
    return f"{PREFIX}:log:{session_id}"


def subs_key(terminal_name: str) -> str:
    """Hash: socket id -> its quote/depth subscriptions (read by the terminal's poller)."""
    return f"{PREFIX}:subs:{terminal_name}"


def subs_version_key(terminal_name: str) -> str:
    return f"{PREFIX}:subs:{terminal_name}:v"


def _symbol_part(symbol: str) -> str:
    if _SAFE.match(symbol):
        return symbol
    return "h" + hashlib.sha1(symbol.encode()).hexdigest()[:20]


def replay_group(session_id: str) -> str:
    """Channel-layer group of a session's replayable events (every socket of the session joins it)."""
    return f"ev.{session_id}.r"


def live_group(session_id: str, channel: str) -> str:
    """Channel-layer group of one non-replayable channel: ``profit``, ``quote:X``, ``depth:X`` or
    ``candle:X:TF``."""
    if channel == "profit":
        return f"ev.{session_id}.profit"
    kind, _, symbol = channel.partition(":")
    if kind == "candle":
        symbol, _, timeframe = symbol.rpartition(":")
        return f"ev.{session_id}.c.{timeframe}.{_symbol_part(symbol)}"
    return f"ev.{session_id}.{kind[0]}.{_symbol_part(symbol)}"


def key_group(key_id: int) -> str:
    """Channel-layer group of every socket opened with one API key (told when the key is revoked)."""
    return f"key.{int(key_id)}"


def group_for(session_id: str, channel: str) -> str:
    return replay_group(session_id) if channel in REPLAYABLE else live_group(session_id, channel)


def parse_channel(channel: object) -> tuple[str, str | None] | None:
    """``("quote", "EURUSD")``, ``("order", None)``, ``("candle", "EURUSD:M1")``, ... or None when not a
    channel name."""
    if not isinstance(channel, str):
        return None
    if channel in SESSION_CHANNELS:
        return channel, None
    kind, sep, symbol = channel.partition(":")
    if sep and kind in SYMBOL_CHANNELS and SYMBOL_RE.match(symbol):
        return kind, symbol
    if sep and kind == "candle" and parse_candle(symbol) is not None:
        return kind, symbol
    return None


def parse_candle(rest: str) -> tuple[str, str] | None:
    """``"EURUSD:M1"`` (the part after ``candle:``) as ``("EURUSD", "M1")``, or None. The timeframe is the
    last ``:`` part, so a symbol that itself holds a ``:`` still parses."""
    symbol, sep, timeframe = rest.rpartition(":")
    if sep and timeframe in CANDLE_TIMEFRAMES and SYMBOL_RE.match(symbol):
        return symbol, timeframe
    return None
