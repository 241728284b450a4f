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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import defaultdict

import redis.asyncio as aioredis
from channels.layers import get_channel_layer
from redis.exceptions import ResponseError

from . import conf
from .keys import FANOUT_STREAM, RELAY_GROUP

logger = logging.getLogger("bridge.events.relay")

STALE_SECONDS = 10.0
BATCH = 512

_relays: dict[int, asyncio.Task] = {}
_clients: dict[int, aioredis.Redis] = {}
stats = {"forwarded": 0, "stale": 0, "errors": 0}


def async_redis() -> aioredis.Redis:
    """This event loop's asyncio Redis client (one pool per loop)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(id(loop))
    if client is None:
        client = aioredis.Redis.from_url(conf.redis_url(), socket_connect_timeout=2, health_check_interval=30)
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


async def _ensure_group(client: aioredis.Redis) -> None:
    try:
        await client.xgroup_create(FANOUT_STREAM, RELAY_GROUP, id="$", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _forward_group(layer, group: str, messages: list[dict]) -> None:  # noqa: ANN001
    for message in messages:  # in order within one group (seq order)
        await layer.group_send(group, message)


async def _run() -> None:
    client = aioredis.Redis.from_url(conf.redis_url(), socket_connect_timeout=2, socket_timeout=10)
    layer = get_channel_layer()
    consumer = f"{socket.gethostname()}:{os.getpid()}"
    await _ensure_group(client)
    logger.info("events relay %s started", consumer)
    while True:
        try:
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
                    by_group[_text(fields[b"g"])].append({
                        "type": "bridge.event",
                        "c": _text(fields[b"c"]),
                        "s": int(fields[b"s"]),
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
                await _ensure_group(client)
                continue
            logger.exception("events relay error")
            await asyncio.sleep(0.5)
        except Exception:  # noqa: BLE001 - the relay must outlive Redis hiccups
            stats["errors"] += 1
            logger.exception("events relay error")
            await asyncio.sleep(0.5)
