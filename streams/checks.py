"""The periodic checks of this process's sockets, made once per process for all of them.

Every socket needs four fallbacks: a lost last event (its session's sequence moved on and nothing
came), its symbol record for the poller kept alive, its session still live, its API key still active.
Each socket used to run its own timers for them. Sockets opened together then checked together: at
1,000 sockets, every 30 s a thousand database queries (each on a new connection) and every 5 s a
thousand Redis calls landed in the same second, and every event of the process waited behind them
(issue #14's 1,000-socket tail). One task per daphne process now makes each check once per distinct
session, terminal or key, and hands each socket only the answer:

* every ``GAP_CHECK_SECONDS``: ``(seq, epoch)`` of every session with a socket here, in one pipeline;
  each socket decides whether to read the stream (``EventsConsumer.check_sequence``);
* every ``SUBSCRIPTION_TTL / 3``: the symbol records of every socket watching symbols, one ``HSET`` per
  terminal (``subscriptions.refresh``: the version the poller follows moves only if a record was gone);
* every ``BRIDGE_EVENTS_SESSION_CHECK_INTERVAL``: which sessions are still live, one query; the sockets of
  the others end (``SessionExpired``, 4410);
* every ``BRIDGE_EVENTS_KEY_CHECK_INTERVAL``: which API keys are still active, one query; the sockets of
  the others close with 4401.

A failed check (Redis or the database away) is logged and made again at its next turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from redis.exceptions import RedisError

from sessions.models import LIVE_STATUSES, ApiKey, BridgeSession
from sessions.services import session_expire_if_due

from . import conf, relay, subscriptions
from .replay import acurrent_states

logger = logging.getLogger("bridge.events.checks")

GAP_CHECK_SECONDS = 5.0

_tasks: dict[int, asyncio.Task] = {}


def live_sessions(session_ids: set[str]) -> set[str]:
    """Those of ``session_ids`` still live (a session past its expiry is expired here, as a read would)."""
    sessions = BridgeSession.objects.filter(id__in=session_ids, status__in=LIVE_STATUSES)
    return {session.id for session in sessions if session_expire_if_due(session=session).live}


def active_keys(key_ids: set[int]) -> set[int]:
    return set(ApiKey.objects.filter(pk__in=key_ids, revoked_at__isnull=True).values_list("pk", flat=True))


def start() -> None:
    """Start this process's checks unless they run (called by each socket as it opens)."""
    loop = asyncio.get_running_loop()
    task = _tasks.get(id(loop))
    if task is None or task.done():
        _tasks[id(loop)] = loop.create_task(_run(), name="events-checks")


def _open_sockets() -> list[Any]:
    return [s for s in list(relay.hub().sockets) if s.session_id is not None and not s.closing]


async def check_sequences() -> None:
    sockets = _open_sockets()
    if not sockets:
        return
    async with relay.redis_slot():
        states = await acurrent_states(relay.async_redis(), {s.session_id for s in sockets})
    for socket_consumer in sockets:
        socket_consumer.check_sequence(*states[socket_consumer.session_id])


async def refresh_symbols() -> None:
    records: dict[str, dict[str, str]] = defaultdict(dict)
    for socket_consumer in _open_sockets():
        record = socket_consumer.symbols_record()
        if record is not None:
            records[socket_consumer.terminal][socket_consumer.socket_id] = record
    for terminal, by_socket in records.items():
        async with relay.redis_slot():
            await subscriptions.refresh(relay.async_redis(), terminal, by_socket)


async def _drop_sockets_not_in(read: Callable[[set], set], attribute: str, drop: Callable[[Any], None]) -> None:
    """``drop`` every open socket whose ``attribute`` (its session id, its key id) is not among what ``read``
    (one query for all the values of this process's sockets) returns."""
    sockets = _open_sockets()
    if not sockets:
        return
    still = await database_sync_to_async(read)({getattr(s, attribute) for s in sockets})
    for socket_consumer in sockets:
        if getattr(socket_consumer, attribute) not in still:
            drop(socket_consumer)


async def check_sessions() -> None:
    await _drop_sockets_not_in(live_sessions, "session_id", lambda s: s.session_gone())


async def check_keys() -> None:
    await _drop_sockets_not_in(active_keys, "key_id", lambda s: s.on_key_revoked(s.key_id))


async def _run() -> None:
    every = {
        check_sequences: GAP_CHECK_SECONDS,
        refresh_symbols: subscriptions.SUBSCRIPTION_TTL / 3,
        check_sessions: conf.session_check_interval(),
        check_keys: conf.key_check_interval(),
    }
    due = {check: time.monotonic() + interval for check, interval in every.items()}
    while True:
        await asyncio.sleep(max(0.0, min(due.values()) - time.monotonic()))
        now = time.monotonic()
        for check, interval in every.items():
            if due[check] > now:
                continue
            due[check] = now + interval
            try:
                await check()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("events %s: Redis unreachable (%s); next turn in %.0f s", check.__name__, exc,
                               interval)
            except Exception:  # the database away, or a bug: the checks must outlive it
                logger.exception("events %s failed; next turn in %.0f s", check.__name__, interval)
