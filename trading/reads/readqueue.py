"""Request/reply over a terminal's read queue in Redis (the web tier's side, and the shared keys).

The web tier LPUSHes ``{"id", "op", "args", "reply", "deadline", "session"}`` (``deadline``: unix seconds by the Redis
server's clock, see RedisClock) onto ``bridge:read:<terminal>`` and
BLPOPs the reply key; the terminal's read process (workers/reader.py) BRPOPs requests in order,
calls the terminal through its own gateway and LPUSHes ``{"ok": true, "value"}`` or
``{"ok": false, "kind", "message", "details"}``. The reader keeps a heartbeat key with a short TTL:
no heartbeat, or a heartbeat saying the terminal or broker is unreachable, is a 502 at once; a reply
that does not come before the deadline is a 502 too (and the reader skips the expired request).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis
from django.conf import settings

from bridge_project.errors import BridgeUnavailable, NotFound, Unavailable, ValidationFailed

QUEUE_KEY = "bridge:read:{terminal}"
REPLY_KEY = "bridge:read:reply:{id}"
HEARTBEAT_KEY = "bridge:reader:{terminal}"
REPLY_TTL = 30  # seconds a reply nobody collected stays in Redis

_clients: dict[str, redis.Redis] = {}
CLOCK_REFRESH = 30.0  # seconds between two readings of the Redis server's clock


class RedisClock:
    """Unix time as the Redis server's clock tells it, read at most every CLOCK_REFRESH seconds.

    Request deadlines are written by the web tier and checked by a reader that may run on another
    machine (the Windows VM) whose clock drifts: both sides use Redis's clock, not their own.
    """

    def __init__(self) -> None:
        self.skew = 0.0
        self.read_at = float("-inf")

    def now(self, client: redis.Redis) -> float:
        if time.monotonic() - self.read_at > CLOCK_REFRESH:
            before = time.time()
            seconds, micros = client.time()
            after = time.time()
            self.skew = seconds + micros / 1e6 - (before + after) / 2
            self.read_at = time.monotonic()
        return time.time() + self.skew


_clock = RedisClock()


def redis_client() -> redis.Redis:
    """One connection pool per Redis URL for the process (each blocking wait takes its own connection)."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=30)
        _clients[url] = client
    return client


def queue_key(terminal: str) -> str:
    return QUEUE_KEY.format(terminal=terminal)


def heartbeat_key(terminal: str) -> str:
    return HEARTBEAT_KEY.format(terminal=terminal)


def reply_key(request_id: str) -> str:
    return REPLY_KEY.format(id=request_id)


def reader_status(client: redis.Redis, terminal: str) -> dict[str, Any] | None:
    raw = client.get(heartbeat_key(terminal))
    return json.loads(raw) if raw else None


def raise_if_unavailable(terminal: str, status: dict[str, Any] | None) -> dict[str, Any]:
    """502 unless the reader is alive and last saw its terminal and broker reachable."""
    if status is None:
        raise BridgeUnavailable(
            f"the read process of terminal {terminal} is not running",
            {"terminal": terminal, "reason": "reader_down"},
        )
    if not status.get("terminal_ok", False):
        raise BridgeUnavailable(
            f"terminal {terminal} cannot be reached",
            {"terminal": terminal, "reason": "terminal_down", "error": status.get("error")},
        )
    if not status.get("broker_connected", False):
        raise BridgeUnavailable(
            f"terminal {terminal} has no connection to the trade server",
            {"terminal": terminal, "reason": "broker_disconnected"},
        )
    return status


def _reply_error(terminal: str, reply: dict[str, Any]) -> Exception:
    kind = reply.get("kind")
    message = reply.get("message") or "read failed"
    details = reply.get("details") or {}
    if kind == "not_found":
        return NotFound(message, details)
    if kind == "invalid":
        return ValidationFailed(message, details)
    return BridgeUnavailable(message, {"terminal": terminal, **details})


RAW_MARK = b"R"  # a reply that starts with this is the value's JSON text itself (no envelope)


class RawJSON:
    """A read's answer as the JSON text the reader made: sent to the client as is, never parsed here
    (large bar, tick and history answers skip a decode and a re-encode in the web tier)."""

    __slots__ = ("body",)

    def __init__(self, body: bytes):
        self.body = body

    def value(self) -> Any:
        return json.loads(self.body)


def call_reader(terminal: str, op: str, args: dict[str, Any], timeout: float | None = None,
                raw: bool = False, *, session: str) -> Any:
    """Run one read at the terminal's read process for ``session`` (the reader serves it only while
    the terminal is bound to that session and shows its account); its value (a RawJSON with
    ``raw``), or the mapped API error."""
    try:
        return _call_reader(terminal, op, args, timeout, raw, session)
    except redis.RedisError as exc:
        raise Unavailable("the bridge's Redis cannot be reached; retry", {"terminal": terminal,
                                                                         "dependency": "redis"}) from exc


def _call_reader(terminal: str, op: str, args: dict[str, Any], timeout: float | None, raw: bool,
                 session: str) -> Any:
    client = redis_client()
    raise_if_unavailable(terminal, reader_status(client, terminal))
    timeout = timeout if timeout is not None else settings.BRIDGE_READ_TIMEOUT
    request_id = uuid.uuid4().hex
    reply = reply_key(request_id)
    started = time.monotonic()
    deadline = _clock.now(client) + timeout
    payload = json.dumps({"id": request_id, "op": op, "args": args, "reply": reply, "deadline": deadline,
                          "raw": raw, "session": session})
    client.lpush(queue_key(terminal), payload)
    while True:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            break
        item = client.blpop([reply], timeout=min(0.5, remaining))
        if item is not None:
            if item[1][:1] == RAW_MARK:
                return RawJSON(item[1][1:])
            answer = json.loads(item[1])
            if answer.get("ok"):
                return answer.get("value")
            raise _reply_error(terminal, answer)
        # No reply yet: a reader that died meanwhile makes this a 502 now, not at the deadline.
        raise_if_unavailable(terminal, reader_status(client, terminal))
    client.lrem(queue_key(terminal), 1, payload)  # not started yet: nobody should work on it any more
    raise BridgeUnavailable(
        f"terminal {terminal} did not answer within {timeout:.1f}s",
        {"terminal": terminal, "reason": "timeout", "op": op},
    )
