"""The seam through which the rest of the bridge hands events to the /events stream.

Callers: ``trading`` on every task state change (``order``), ``sessions`` on every session status
change (``session``), the terminal pollers through ``streams.poll_events`` (``position``, ``account``,
``profit``, ``quote:X``, ``depth:X``).

One publish is one Redis script call (a batch of events, ``publish_events``: one call for all) on a
long-lived, per-process connection pool (no event loop, no new connection per send), and it does
everything atomically:

* replayable channels (``order``, ``position``, ``account``, ``session``): ``HINCRBY`` the session's
  seq (a new counter gets a new epoch), append the event to the session's stream (entry id
  ``<seq>-0``; exact ``MAXLEN`` and an age cut, see ``streams.conf``), so seq order and stream order
  can never disagree between two publishers;
* every channel: append the event to the fan-out stream that the relays inside daphne read and
  forward to the channel layer (``streams.relay``).

Non-replayable events (quotes, depth, profit) carry as ``seq`` the session's last replayable seq at
the time they were published: a socket that sees a larger seq than it has delivered knows it missed
a replayable event and fetches it from the stream.

Every event also carries the session's ``epoch``: the Redis server time (ms) at which its seq counter
was created. Redis restarted empty (or a counter expired) means the counter starts again at 1 with a
newer epoch, so ``(epoch, seq)`` never repeats and a socket can tell "a new sequence" from "old news"
(``docs/events.md``, "Epochs"). ``0`` means the session has no counter yet.

``session`` events (the session's own status changes, published by ``sessions`` right after each
change commits) are replayable like ``order``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
import redis

from . import conf
from .keys import FANOUT_STREAM, REPLAYABLE, group_for, key_group, log_key, parse_channel, seq_key

logger = logging.getLogger("bridge.events")

_PUBLISH_BODY = """
local body_head, body_tail = ARGV[1], ARGV[2]
local now_ms, maxlen, max_age_ms = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local fanout_maxlen, group, channel, ttl = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local replayable = ARGV[10] == '1'
local seq, epoch
if replayable then
  seq = redis.call('HINCRBY', KEYS[1], 'n', 1)
  epoch = redis.call('HGET', KEYS[1], 'e')
  if seq == 1 or not epoch then
    -- a new counter (first event, Redis restarted empty, or expired): a new epoch, on Redis's clock,
    -- and the log of any previous epoch goes (its seqs would collide with the new ones)
    local t = redis.call('TIME')
    epoch = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
    redis.call('HSET', KEYS[1], 'e', epoch)
    redis.call('DEL', KEYS[2])
  end
  local body = body_head .. seq .. ',"epoch":' .. epoch .. body_tail
  local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', maxlen, seq .. '-0', 't', now_ms, 'e', body, 'c', channel)
  if type(ok) == 'table' and ok.err then
    -- an entry id at or above seq survived somehow: start the log again
    redis.call('DEL', KEYS[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', maxlen, seq .. '-0', 't', now_ms, 'e', body, 'c', channel)
  end
  if not LIGHT then
    local cutoff = now_ms - max_age_ms
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if #first > 0 and tonumber(first[1][2][2]) < cutoff then
      local batch = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1024)
      local keep = seq .. '-0'
      for _, entry in ipairs(batch) do
        if tonumber(entry[2][2]) >= cutoff then keep = entry[1]; break end
      end
      redis.call('XTRIM', KEYS[2], 'MINID', keep)
    end
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[2], ttl)
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', fanout_maxlen, '*', 'g', group, 'c', channel, 's', seq,
             'p', epoch, 'r', '1', 'e', body)
else
  local state = redis.call('HMGET', KEYS[1], 'n', 'e')
  seq = tonumber(state[1] or '0')
  epoch = state[2] or '0'
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', fanout_maxlen, '*', 'g', group, 'c', channel, 's', seq,
             'p', epoch, 'r', '0', 'e', body_head .. seq .. ',"epoch":' .. epoch .. body_tail)
end
return seq
"""
_PUBLISH_LUA = "local LIGHT = false\n" + _PUBLISH_BODY
# Many events in one script call (the pinned worker's batch): the body above as a function of (keys,
# args) called for each event in turn: KEYS are 3 per event, ARGV 10 per event; the seqs in order. The
# age cut and the TTLs of a session's counter and log are done once, with its last replayable event of
# the call (LIGHT for the others): the same end state as one call per event.
_PUBLISH_MANY_LUA = (
    "local function publish(KEYS, ARGV, LIGHT)\n" + _PUBLISH_BODY + "end\n"
    "local out, n, last = {}, #KEYS / 3, {}\n"
    "for i = 0, n - 1 do if ARGV[10 * i + 10] == '1' then last[KEYS[3 * i + 1]] = i end end\n"
    "for i = 0, n - 1 do\n"
    "  out[i + 1] = publish({KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]},\n"
    "                       {unpack(ARGV, 10 * i + 1, 10 * i + 10)}, last[KEYS[3 * i + 1]] ~= i)\n"
    "end\n"
    "return out\n"
)


_clients: dict[int, tuple[redis.Redis, Any]] = {}


def _client() -> tuple[redis.Redis, Any]:
    """This process's Redis client and registered script (one pool per process, fork-safe)."""
    pid = os.getpid()
    entry = _clients.get(pid)
    if entry is None:
        _clients.clear()
        client = redis.Redis.from_url(conf.redis_url(), socket_timeout=5, socket_connect_timeout=2,
                                      health_check_interval=30)
        entry = (client, client.register_script(_PUBLISH_LUA))
        _clients[pid] = entry
    return entry


def sync_redis() -> redis.Redis:
    """The process's shared synchronous Redis client (also used by the REST view and the poller side)."""
    return _client()[0]


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "_asdict"):
        return value._asdict()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# orjson (a fifth of the poller's CPU was the stdlib's encoder), with what json.dumps did kept: datetimes
# and dataclasses through _json_default, int keys as strings. One difference: a NaN or an infinity is
# written as null (json.dumps with allow_nan=False raised, losing the whole event).
_DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=_json_default, option=_DUMPS_OPTIONS).decode()


def now_msc() -> int:
    return int(time.time() * 1000)


def _limits() -> tuple[int, int, int, int]:
    """(log maxlen, log max age in ms, fan-out maxlen, key TTL in s) from the settings."""
    max_age = conf.events_max_age()
    return conf.events_maxlen(), int(max_age * 1000), conf.fanout_maxlen(), int(max(2 * max_age, 7 * 24 * 3600))


def _script_args(session_id: str, channel: str, data: dict[str, Any], time_msc: int | None,
                 limits: tuple[int, int, int, int] | None = None) -> tuple[list, list]:
    if parse_channel(channel) is None:
        raise ValueError(f"not an event channel: {channel!r}")
    head = '{"type":' + dumps(channel) + ',"seq":'
    tail = (',"sessionId":' + dumps(session_id) + ',"time_msc":' + str(int(time_msc or now_msc()))
            + ',"data":' + dumps(data) + "}")
    maxlen, max_age_ms, fanout_maxlen, ttl = limits or _limits()
    keys = [seq_key(session_id), log_key(session_id), FANOUT_STREAM]
    args = [head, tail, now_msc(), maxlen, max_age_ms, fanout_maxlen,
            group_for(session_id, channel), channel, ttl, "1" if channel in REPLAYABLE else "0"]
    return keys, args


def publish_session_event(
    session_id: str, channel: str, data: dict[str, Any], time_msc: int | None = None
) -> int | None:
    """Publish one event of ``channel`` ('order', 'position', 'account', 'session', 'profit', 'quote:X',
    'depth:X').

    ``session``: ``data`` is ``{"sessionId", "status", "from", "paused", "error"?: {"code", "message"},
    "reason"?}`` (a pause or a resume adds ``change``, ``pausedAt``, ``cancelQueued``?);
    a final ``status`` (closed, expired, login_failed) closes the session's sockets (4410) once sent.

    Returns the event's seq (for non-replayable channels: the session's last replayable seq), or None
    when Redis could not be reached after a few quick retries (logged; the caller's work goes on: the
    task ledger stays the truth and a client that reloads over REST sees it).
    """
    keys, args = _script_args(session_id, channel, data, time_msc)
    _, script = _client()
    for attempt in range(3):
        try:
            return int(script(keys=keys, args=args))
        except redis.RedisError:
            if attempt == 2:
                logger.exception("event %s for session %s not published", channel, session_id)
                return None
            time.sleep(0.05 * (attempt + 1))
    return None


def publish_session_events(
    session_id: str, events: Iterable[tuple[str, dict[str, Any], int | None]]
) -> list[int | None]:
    """Publish several events of one session in one round trip, in order (a poller cycle's changes)."""
    prepared = [_script_args(session_id, channel, data, time_msc) for channel, data, time_msc in events]
    if not prepared:
        return []
    client, script = _client()
    for attempt in range(3):
        try:
            pipe = client.pipeline(transaction=False)
            for keys, args in prepared:
                script(keys=keys, args=args, client=pipe)
            return [int(x) for x in pipe.execute()]
        except redis.RedisError:
            if attempt == 2:
                logger.exception("%d events for session %s not published", len(prepared), session_id)
                return [None] * len(prepared)
            time.sleep(0.05 * (attempt + 1))
    return [None] * len(prepared)


_many_scripts: dict[int, Any] = {}


def publish_events(events: Iterable[tuple[str, str, dict[str, Any], int | None]]) -> list[int | None]:
    """Publish ``(session_id, channel, data, time_msc)`` events of any sessions in one script call, in order
    (the pinned worker's batch of task changes): each gets what ``publish_session_event`` does for one
    (its seq, its log entry, its fan-out entry). The seqs, or None for each when Redis could not be
    reached after a few quick retries (logged)."""
    limits = _limits()
    prepared = [_script_args(session_id, channel, data, time_msc, limits)
                for session_id, channel, data, time_msc in events]
    if not prepared:
        return []
    client, _ = _client()
    script = _many_scripts.get(id(client))
    if script is None:
        _many_scripts.clear()
        script = _many_scripts[id(client)] = client.register_script(_PUBLISH_MANY_LUA)
    keys = [key for event_keys, _ in prepared for key in event_keys]
    args = [arg for _, event_args in prepared for arg in event_args]
    for attempt in range(3):
        try:
            return [int(x) for x in script(keys=keys, args=args)]
        except redis.RedisError:
            if attempt == 2:
                logger.exception("%d events not published", len(prepared))
                return [None] * len(prepared)
            time.sleep(0.05 * (attempt + 1))
    return [None] * len(prepared)


def publish_key_revoked(key_id: int) -> bool:
    """Tell every socket opened with API key ``key_id`` (on any daphne process) that the key was revoked:
    they close with 4401 at once. One entry on the fan-out stream (``t=key.revoked``), handed by each
    process's relay to its sockets in the group ``key.<id>``. Never raises: False when Redis could not be
    reached (logged; the periodic key check of the sockets' process, ``BRIDGE_EVENTS_KEY_CHECK_INTERVAL``,
    still closes them)."""
    client, _ = _client()
    for attempt in range(3):
        try:
            client.xadd(FANOUT_STREAM, {"g": key_group(key_id), "t": "key.revoked", "k": int(key_id), "c": ""},
                        maxlen=conf.fanout_maxlen(), approximate=True)
            return True
        except redis.RedisError:
            if attempt == 2:
                logger.exception("revocation of API key %s not published; sockets close at their next key check",
                                 key_id)
                return False
            time.sleep(0.05 * (attempt + 1))
    return False


def on_session_changed(*, session_id: str, data: dict[str, Any], **_: Any) -> None:
    """``sessions.signals.session_changed``: the ``session`` event on the session's stream."""
    publish_session_event(session_id, "session", data)


def on_api_key_revoked(*, key_id: int, **_: Any) -> None:
    """``sessions.signals.api_key_revoked``: close the sockets opened with that key."""
    publish_key_revoked(key_id)
