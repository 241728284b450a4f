"""The relay: one reader of the fan-out stream per daphne process, dispatching to this process's sockets.

Publishers (Celery workers, pollers) are synchronous and must not open an event loop or a Redis
connection per event, so they only append to the fan-out stream (``streams.publisher``). Each daphne
process runs one relay, started with its first socket: it reads the whole fan-out stream itself with a
plain ``XREAD`` and its own cursor (no consumer group: every process sees every event), turns each
entry into one ``Event`` (the JSON text the publisher encoded, decoded once per process) and hands it,
in stream order, to the sockets of THIS process that joined the entry's group, through an in-process
registry (group -> sockets). No channel-layer message, no Redis round trip per socket or per event:
one blocking ``XREAD`` returns up to ``BATCH`` entries for all sockets of the process.

A socket handles an event at once when it is idle (the common case: the next seq, a quote), without a
task switch; otherwise (it is busy with a client message or a replay, or the event needs the stream: a
seq gap, another epoch) the event waits in the socket's own bounded inbox, handled in order by the
socket's dispatch loop (``streams.consumers``). Every replayable event is also in the session's
stream, and sockets detect a gap (a seq jump, the 5-second check) and fetch it there, so an inbox
overflow or a relay that fell behind the stream's trim loses nothing of ``order``/``position``/
``account``/``session``. Entries older than ``STALE_SECONDS`` when read are skipped rather than sent
late: quotes would be stale and replayable events are fetched from the stream by seq.

The cursor starts at the stream's last entry, read before the first socket joins anything (``start``),
so an event published after a socket joined its groups is always read. Redis restarted empty (no
persistence) takes the fan-out stream with it: the relay notices (Redis's ``run_id`` changed, checked
every ``RESTART_CHECK_SECONDS`` and after any connection error), restarts its cursor at the new
stream's start (``0-0``: nothing published between the restart and the check is skipped) and tells
every socket of this process (``redis_restarted``) to register its symbols again and check its
sequence against the stream.

Entries with a ``t`` field are control messages, not events: ``t=key.revoked`` (``k``: the API key's id,
``g``: ``key.<id>``) is handed to every socket of this process opened with that key, which closes with
4401 (``streams.publisher.publish_key_revoked``). Unknown fields and control types are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    TimeoutError as RedisTimeoutError,
)

from . import conf
from .keys import FANOUT_STREAM

logger = logging.getLogger("bridge.events.relay")

STALE_SECONDS = 10.0
BATCH = 512
BLOCK_MS = 1000
RESTART_CHECK_SECONDS = 1.0
START_TIMEOUT = 3.0  # a socket waits this long for the relay's first cursor (Redis away: 4503)
# Also retry pipelines (MULTI reads of the stream) on a connection Redis closed: after a restart the
# pooled connections are dead, and a retry on a new connection is what the caller wants.
RETRY_ON = [RedisConnectionError, RedisTimeoutError]

stats = {"read": 0, "dispatched": 0, "stale": 0, "errors": 0, "redis_restarts": 0, "key_revoked": 0}


class Event:
    """One fan-out entry as every socket of the process sees it (built once, shared by all)."""

    __slots__ = ("channel", "epoch", "replayable", "seq", "text")

    def __init__(self, channel: str, seq: int, epoch: int, replayable: bool, text: str):
        self.channel, self.seq, self.epoch, self.replayable, self.text = channel, seq, epoch, replayable, text


class Hub:
    """This event loop's relay: the group registry, the sockets, and the reader task."""

    def __init__(self) -> None:
        self.groups: dict[str, set[Any]] = {}
        self.sockets: weakref.WeakSet = weakref.WeakSet()
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # set once the first cursor is known

    def join(self, group: str, socket_consumer: Any) -> None:
        self.groups.setdefault(group, set()).add(socket_consumer)

    def leave(self, group: str, socket_consumer: Any) -> None:
        members = self.groups.get(group)
        if members is not None:
            members.discard(socket_consumer)
            if not members:
                del self.groups[group]

    def members(self, group: str) -> int:
        return len(self.groups.get(group, ()))


_hubs: dict[int, Hub] = {}
_clients: dict[int, aioredis.Redis] = {}


def hub() -> Hub:
    """This event loop's hub (one per daphne process)."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(id(loop))
    if found is None:
        found = _hubs[id(loop)] = Hub()
    return found


def join(group: str, socket_consumer: Any) -> None:
    """``socket_consumer`` receives the events of ``group`` (``on_event``) from now on: in-process, no Redis."""
    hub().join(group, socket_consumer)


def leave(group: str, socket_consumer: Any) -> None:
    hub().leave(group, socket_consumer)


def watch(socket_consumer: Any) -> None:
    """``socket_consumer.redis_restarted()`` is called when Redis restarted empty."""
    hub().sockets.add(socket_consumer)


def unwatch(socket_consumer: Any) -> None:
    hub().sockets.discard(socket_consumer)


def async_redis() -> aioredis.Redis:
    """This event loop's asyncio Redis client (one pool per loop)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(id(loop))
    if client is None:
        client = aioredis.Redis.from_url(conf.redis_url(), socket_connect_timeout=2, health_check_interval=30,
                                         retry_on_error=RETRY_ON)
        _clients[id(loop)] = client
    return client


_slots: dict[int, asyncio.Semaphore] = {}
REDIS_SLOTS = 48  # redis-py 8's asyncio pools hold at most 100 connections and raise beyond


def redis_slot() -> asyncio.Semaphore:
    """Bounds this loop's concurrent Redis/channel-layer calls made by sockets (a burst of 1,000 connects
    would otherwise exhaust the pools with MaxConnectionsError)."""
    loop = asyncio.get_running_loop()
    slot = _slots.get(id(loop))
    if slot is None:
        slot = _slots[id(loop)] = asyncio.Semaphore(REDIS_SLOTS)
    return slot


async def start() -> None:
    """Start this process's relay unless it runs, and wait until it has its cursor: every entry added to
    the fan-out stream after this returns is read and dispatched. Raises ``ConnectionError`` when the
    relay could not read the stream's position within ``START_TIMEOUT`` (Redis unreachable)."""
    current = hub()
    if current.task is None or current.task.done():
        current.task = asyncio.get_running_loop().create_task(_run(current), name="events-relay")
    if not current.ready.is_set():
        try:
            await asyncio.wait_for(current.ready.wait(), START_TIMEOUT)
        except TimeoutError:
            raise RedisConnectionError("the events relay cannot read the fan-out stream") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _notify_restart(current: Hub) -> None:
    for socket_consumer in list(current.sockets):
        try:
            socket_consumer.redis_restarted()
        except Exception:  # one socket must not keep the others from hearing it
            logger.exception("could not tell a socket that Redis restarted")


def _dispatch(current: Hub, fields: dict) -> None:
    """Hand one entry to the sockets of its group (in this process)."""
    group = fields.get(b"g")
    if group is None:
        return
    members = current.groups.get(_text(group))
    if not members:
        return
    control = fields.get(b"t")
    if control is not None:
        if control == b"key.revoked":
            stats["key_revoked"] += 1
            key_id = int(fields[b"k"])
            for socket_consumer in tuple(members):
                try:
                    socket_consumer.on_key_revoked(key_id)
                except Exception:
                    logger.exception("a socket failed to handle a key revocation")
        return
    event = Event(_text(fields[b"c"]), int(fields.get(b"s", 0)), int(fields.get(b"p", 0)),
                  fields.get(b"r") == b"1", _text(fields[b"e"]))
    for socket_consumer in tuple(members):
        try:
            socket_consumer.on_event(event)
        except Exception:  # one socket must not keep the others from their events
            logger.exception("a socket failed to handle an event")
    stats["dispatched"] += len(members)


async def _stream_end(client: aioredis.Redis) -> str:
    """The id of the fan-out stream's last entry (``0-0`` when it is empty or absent)."""
    last = await client.xrevrange(FANOUT_STREAM, "+", "-", count=1)
    return _text(last[0][0]) if last else "0-0"


async def _run(current: Hub) -> None:
    client = aioredis.Redis.from_url(conf.redis_url(), socket_connect_timeout=2,
                                     socket_timeout=BLOCK_MS / 1000 + 10, retry_on_error=RETRY_ON)
    run_id: str | None = None  # the Redis server process we read from
    cursor: str | None = None  # None: take the stream's end before the next read
    next_check = 0.0
    logger.info("events relay started")
    while True:
        try:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + RESTART_CHECK_SECONDS
                current_id = (await client.info("server")).get("run_id")
                if run_id is not None and current_id != run_id:
                    stats["redis_restarts"] += 1
                    logger.warning("events relay: Redis restarted (run_id %s -> %s): reading the new fan-out "
                                   "stream from its start; sockets check their sequence", run_id, current_id)
                    cursor = "0-0"
                    _notify_restart(current)
                run_id = current_id
            if cursor is None:
                cursor = await _stream_end(client)
            current.ready.set()
            reply = await client.xread({FANOUT_STREAM: cursor}, count=BATCH, block=BLOCK_MS)
            if not reply:
                continue
            cutoff_ms = (time.time() - STALE_SECONDS) * 1000
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    cursor = _text(entry_id)
                    stats["read"] += 1
                    if int(cursor.split("-", 1)[0]) < cutoff_ms:
                        stats["stale"] += 1
                        continue
                    _dispatch(current, fields)
        except asyncio.CancelledError:
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # Redis away: wait for it
            stats["errors"] += 1
            logger.warning("events relay: Redis unreachable (%s: %s)", type(exc).__name__, exc)
            next_check = 0.0
            await asyncio.sleep(0.5)
        except Exception:  # the relay must outlive anything else too
            stats["errors"] += 1
            logger.exception("events relay error")
            next_check = 0.0
            await asyncio.sleep(0.5)
