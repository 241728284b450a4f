"""The relay: one long-lived task per daphne process that moves published events into the channel layer.

Publishers (Celery workers, pollers) are synchronous and must not open an event loop or a Redis
connection per event, so they only append to the fan-out stream (``streams.publisher``). Each daphne
process runs one relay, started with its first socket. All relays read the fan-out stream in one
Redis consumer group (``XREADGROUP ... NOACK``), so each event is forwarded exactly once by one relay,
whatever the number of daphne processes, with one ``group_send``: channels-redis turns that into one
message per daphne process holding members of the group, however many sockets there are.

Delivery through the channel layer is at most once. That is acceptable because every replayable
event is also in the session's stream, and sockets detect a gap (a seq jump) and fetch it there.
Entries older than ``STALE_SECONDS`` when read (a relay that was down) are skipped rather than sent
late: quotes would be stale and replayable events are fetched from the stream by seq.

Redis restarted empty (no persistence) takes the fan-out stream, its consumer group and every
channel-layer group membership with it. The relay notices (Redis's ``run_id`` changed, checked every
``RESTART_CHECK_SECONDS``, or ``NOGROUP``), recreates the consumer group reading the new stream from
its start (so nothing published between the restart and the check is skipped), and tells every socket
of this process (``watch``) to join its groups again and check its sequence against the stream.

Entries with a ``t`` field are control messages, not events: ``t=key.revoked`` (``k``: the API key's id,
``g``: ``key.<id>``) becomes ``bridge.key_revoked`` for every socket opened with that key, which closes
with 4401 (``streams.publisher.publish_key_revoked``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
from collections import defaultdict

import redis.asyncio as aioredis
from channels.layers import get_channel_layer
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    ResponseError,
    TimeoutError as RedisTimeoutError,
)

from . import conf
from .keys import FANOUT_STREAM, RELAY_GROUP

logger = logging.getLogger("bridge.events.relay")

STALE_SECONDS = 10.0
BATCH = 512
RESTART_CHECK_SECONDS = 1.0
# Also retry pipelines (MULTI reads of the stream) on a connection Redis closed: after a restart the
# pooled connections are dead, and a retry on a new connection is what the caller wants.
RETRY_ON = [RedisConnectionError, RedisTimeoutError]

_relays: dict[int, asyncio.Task] = {}
_clients: dict[int, aioredis.Redis] = {}
stats = {"forwarded": 0, "stale": 0, "errors": 0, "redis_restarts": 0}
# The sockets of this process, told when Redis restarted (each has ``redis_restarted()``).
_watchers: weakref.WeakSet = weakref.WeakSet()


def watch(socket_consumer) -> None:
    _watchers.add(socket_consumer)


def unwatch(socket_consumer) -> None:
    _watchers.discard(socket_consumer)


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


def ensure_relay() -> None:
    """Start this process's relay on the running loop unless it is already running."""
    loop = asyncio.get_running_loop()
    task = _relays.get(id(loop))
    if task is None or task.done():
        _relays[id(loop)] = loop.create_task(_run(), name="events-relay")


async def _ensure_group(client: aioredis.Redis, start: str = "$") -> None:
    """Create the relays' consumer group unless it exists. ``start``: ``$`` at a first start (entries
    from before it had no socket to go to), ``0`` after a restart (the stream holds only new events)."""
    try:
        await client.xgroup_create(FANOUT_STREAM, RELAY_GROUP, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _notify_restart() -> None:
    for socket_consumer in list(_watchers):
        try:
            socket_consumer.redis_restarted()
        except Exception:  # one socket must not keep the others from hearing it
            logger.exception("could not tell a socket that Redis restarted")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _forward_group(layer, group: str, messages: list[dict]) -> None:
    for message in messages:  # in order within one group (seq order)
        await layer.group_send(group, message)


async def _run() -> None:
    client = aioredis.Redis.from_url(conf.redis_url(), socket_connect_timeout=2, socket_timeout=10,
                                     retry_on_error=RETRY_ON)
    layer = get_channel_layer()
    consumer = f"{socket.gethostname()}:{os.getpid()}"
    run_id: str | None = None  # the Redis server process we read from
    group_start: str | None = "$"  # create the group (from there) before the next read; None: it exists
    next_check = 0.0
    logger.info("events relay %s started", consumer)
    while True:
        try:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + RESTART_CHECK_SECONDS
                current_id = (await client.info("server")).get("run_id")
                if run_id is not None and current_id != run_id:
                    stats["redis_restarts"] += 1
                    logger.warning("events relay %s: Redis restarted (run_id %s -> %s): recreating the relay "
                                   "group, sockets join their groups again", consumer, run_id, current_id)
                    group_start = "0"
                    _notify_restart()
                run_id = current_id
            if group_start is not None:
                await _ensure_group(client, group_start)
                group_start = None
            reply = await client.xreadgroup(RELAY_GROUP, consumer, {FANOUT_STREAM: ">"}, count=BATCH, block=1000,
                                            noack=True)
            if not reply:
                continue
            cutoff_ms = (time.time() - STALE_SECONDS) * 1000
            by_group: dict[str, list[dict]] = defaultdict(list)
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    if int(_text(entry_id).split("-", 1)[0]) < cutoff_ms:
                        stats["stale"] += 1
                        continue
                    if b"t" in fields:  # a control message: an API key was revoked
                        if fields[b"t"] == b"key.revoked":
                            by_group[_text(fields[b"g"])].append({"type": "bridge.key_revoked",
                                                                   "k": int(fields[b"k"])})
                        continue
                    by_group[_text(fields[b"g"])].append({
                        "type": "bridge.event",
                        "c": _text(fields[b"c"]),
                        "s": int(fields[b"s"]),
                        "p": int(fields.get(b"p", 0)),
                        "r": fields[b"r"] == b"1",
                        "e": _text(fields[b"e"]),
                    })
            # Different groups go out concurrently; within a group, in order.
            await asyncio.gather(*(_forward_group(layer, g, msgs) for g, msgs in by_group.items()))
            stats["forwarded"] += sum(len(m) for m in by_group.values())
        except asyncio.CancelledError:
            raise
        except ResponseError as exc:
            stats["errors"] += 1
            if "NOGROUP" in str(exc):
                # The group (or the whole stream) is gone: Redis restarted or it was deleted. Recreate it
                # from the stream's start and check the run_id at once (this process's sockets re-join).
                group_start, next_check = "0", 0.0
                continue
            logger.exception("events relay error")
            await asyncio.sleep(0.5)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # Redis away: wait for it
            stats["errors"] += 1
            logger.warning("events relay %s: Redis unreachable (%s: %s)", consumer, type(exc).__name__, exc)
            next_check = 0.0
            await asyncio.sleep(0.5)
        except Exception:  # the relay must outlive anything else too
            stats["errors"] += 1
            logger.exception("events relay error")
            next_check = 0.0
            await asyncio.sleep(0.5)
