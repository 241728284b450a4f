"""The /events WebSocket: authentication, subscribe/unsubscribe/resume/ping, live and replayed events.

A socket belongs to one bridge session of one workspace and only ever joins that session's groups,
so it cannot receive another session's events. Messages from the client that cannot be understood get
an ``error`` message (the API's error body) and the socket stays open. Close codes:

* 4401: bad or missing credentials, or the session is not (or no longer) live;
* 4429: the client cannot keep up (see ``streams.outbox``); resume with ``?since=``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import conf, subscriptions
from .keys import REPLAYABLE, group_for, parse_channel, replay_group
from .outbox import Outbox
from .publisher import dumps
from .relay import async_redis, ensure_relay, redis_slot
from .replay import acurrent_seq, aread_since

logger = logging.getLogger("bridge.events")

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4429
MAX_MESSAGE_BYTES = 64 * 1024
MAX_CHANNELS = 256
GAP_CHECK_SECONDS = 5.0
SESSION_CHECK_SECONDS = 30.0
GROUP_REFRESH_SECONDS = 3600.0  # channels-redis forgets group members after group_expiry (1 day)
REPLAY_PAGE = 1000


def _authenticate(token: str | None, session_id: str | None) -> tuple[str, str] | None:
    """(session id, terminal name) when the key is valid and the session is its workspace's and live."""
    from sessions.auth import principal_for_key
    from sessions.services import get_session

    if not token or not session_id:
        return None
    principal = principal_for_key(token)
    if principal is None:
        return None
    try:
        session = get_session(principal.workspace, session_id)
    except Exception:  # noqa: BLE001 - NotFound (another workspace's or unknown): same answer, 4401
        return None
    if not session.live:
        return None
    return session.id, session.terminal.name


def _session_live(session_id: str) -> bool:
    from sessions.models import LIVE_STATUSES, BridgeSession
    from sessions.services import _expire_if_due

    session = BridgeSession.objects.filter(id=session_id, status__in=LIVE_STATUSES).first()
    return session is not None and _expire_if_due(session).live


def credentials(scope: dict[str, Any]) -> tuple[str | None, str | None, dict[str, list[str]]]:
    """(api key, session id, query) from the headers, else from ``?token=&session=``."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    token = None
    auth = headers.get("authorization", "").split()
    if len(auth) == 2 and auth[0].lower() == "bearer":
        token = auth[1]
    token = token or (query.get("token") or [None])[0]
    session_id = headers.get("x-session-id") or (query.get("session") or [None])[0]
    return token, session_id, query


def server_backlog(send: Any) -> int | None:
    """Bytes the server still holds for this socket, when the server lets us see it (daphne: the
    Twisted transport's write buffer); None otherwise (then ``await send`` itself applies backpressure)."""
    protocol = next(iter(getattr(send, "args", ()) or ()), None)
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "dataBuffer"):
        return None
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return None


class EventsConsumer(AsyncWebsocketConsumer):
    """One client socket of one bridge session."""

    async def connect(self) -> None:
        self.session_id: str | None = None
        self.closing = False
        # Accept first: a close code (4401) can only be sent on an accepted socket.
        await self.accept()
        token, session_id, query = credentials(self.scope)
        auth = await database_sync_to_async(_authenticate)(token, session_id)
        if auth is None:
            self.closing = True
            await self.send(text_data=dumps(_error("Unauthorized", "invalid API key or session")))
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.session_id, self.terminal = auth
        self.socket_id = uuid.uuid4().hex
        self.subs: set[str] = set()
        self.tracking = False  # follows the session's seq (subscribed to a replayable channel or resumed)
        self.last_seq = 0
        self.groups_joined: set[str] = set()
        self.outbox = Outbox(conf.client_max_pending())
        self.redis = async_redis()
        ensure_relay()
        await self._join(replay_group(self.session_id))
        self.writer = asyncio.create_task(self._write_loop())
        self.housekeeper = asyncio.create_task(self._housekeeping())
        since = (query.get("since") or [None])[0]
        if since is not None:
            if not since.isdigit():
                self._reply(_error("ValidationError", "since must be a non-negative integer", {"since": [since]}))
            else:
                await self._resume(int(since), set(REPLAYABLE), None)

    async def disconnect(self, code: int) -> None:
        if self.session_id is None:
            return
        for task in (getattr(self, "writer", None), getattr(self, "housekeeper", None)):
            if task is not None:
                task.cancel()
        try:
            async with redis_slot():
                for group in self.groups_joined:
                    await self.channel_layer.group_discard(group, self.channel_name)
                await subscriptions.unregister(self.redis, self.terminal, self.socket_id)
        except Exception:  # noqa: BLE001 - the record expires by itself
            logger.warning("could not remove subscriptions of socket %s", self.socket_id)

    # -- client messages ---------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session_id is None or self.closing:
            return
        if text_data is None:
            self._reply(_error("ValidationError", "binary frames are not supported; send JSON text"))
            return
        if len(text_data) > MAX_MESSAGE_BYTES:
            self._reply(_error("ValidationError", f"message larger than {MAX_MESSAGE_BYTES} bytes"))
            return
        try:
            message = json.loads(text_data)
        except ValueError:
            self._reply(_error("ValidationError", "message is not valid JSON"))
            return
        if not isinstance(message, dict):
            self._reply(_error("ValidationError", "message must be a JSON object"))
            return
        request_id = message.get("request_id")
        if request_id is not None and not (isinstance(request_id, str) and 0 < len(request_id) <= 128):
            self._reply(_error("ValidationError", "request_id must be a string of 1 to 128 characters",
                               {"request_id": ["invalid"]}))
            return
        handler = {
            "subscribe": self._on_subscribe,
            "unsubscribe": self._on_unsubscribe,
            "resume": self._on_resume,
            "ping": self._on_ping,
        }.get(message.get("type"))  # type: ignore[arg-type]
        if handler is None:
            self._reply(_error("ValidationError", "type must be one of subscribe, unsubscribe, resume, ping",
                               {"type": [repr(message.get("type"))]}, request_id))
            return
        await handler(message, request_id)

    def _channels_arg(self, message: dict, request_id: str | None) -> list[str] | None:
        channels = message.get("channels")
        if not isinstance(channels, list) or not channels:
            self._reply(_error("ValidationError", "channels must be a non-empty list",
                               {"channels": ["required"]}, request_id))
            return None
        bad = [c for c in channels if parse_channel(c) is None]
        if bad:
            self._reply(_error(
                "ValidationError",
                "unknown channel: use order, position, account, profit, quote:<symbol>, depth:<symbol>",
                {"channels": [f"invalid: {c!r}" for c in bad]}, request_id))
            return None
        return list(dict.fromkeys(channels))

    async def _on_subscribe(self, message: dict, request_id: str | None) -> None:
        channels = self._channels_arg(message, request_id)
        if channels is None:
            return
        if len(self.subs | set(channels)) > MAX_CHANNELS:
            self._reply(_error("ValidationError", f"at most {MAX_CHANNELS} channels per socket",
                               {"channels": ["too many"]}, request_id))
            return
        if any(c in REPLAYABLE for c in channels) and not self.tracking:
            async with redis_slot():
                self.last_seq = await acurrent_seq(self.redis, self.session_id)
            self.tracking = True
        for channel in channels:
            if channel not in REPLAYABLE:
                await self._join(group_for(self.session_id, channel))
        self.subs.update(channels)
        await self._publish_watch()
        self._reply(_with_rid({"type": "subscribed", "channels": sorted(self.subs), "seq": self.last_seq},
                              request_id))

    async def _on_unsubscribe(self, message: dict, request_id: str | None) -> None:
        channels = self._channels_arg(message, request_id)
        if channels is None:
            return
        for channel in channels:
            if channel in self.subs and channel not in REPLAYABLE:
                await self._leave(group_for(self.session_id, channel))
            self.subs.discard(channel)
        await self._publish_watch()
        self._reply(_with_rid({"type": "unsubscribed", "channels": channels, "subscribed": sorted(self.subs)},
                              request_id))

    async def _on_resume(self, message: dict, request_id: str | None) -> None:
        since = message.get("since")
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            self._reply(_error("ValidationError", "since must be a non-negative integer",
                               {"since": ["A non-negative JSON integer is required."]}, request_id))
            return
        channels = message.get("channels", list(REPLAYABLE))
        if (not isinstance(channels, list) or not channels
                or any(not isinstance(c, str) or c not in REPLAYABLE for c in channels)):
            self._reply(_error("ValidationError", "resume channels must be among order, position, account",
                               {"channels": ["invalid"]}, request_id))
            return
        await self._resume(since, set(channels), request_id)

    async def _on_ping(self, message: dict, request_id: str | None) -> None:
        self._reply(_with_rid({"type": "pong", "time_msc": int(time.time() * 1000), "seq": self.last_seq},
                              request_id))

    # -- replay --------------------------------------------------------------------------------------
    async def _resume(self, since: int, channels: set[str], request_id: str | None) -> None:
        """Deliver the kept events after ``since`` in order, then live ones (none lost, none twice).

        Live events that arrive meanwhile wait in the channel layer (this handler runs before the next
        message is dispatched) and are dropped as duplicates when their seq was already replayed.
        """
        self.subs.update(channels)
        self.tracking = True
        async with redis_slot():
            page = await aread_since(self.redis, self.session_id, since, REPLAY_PAGE)
        if page.resync_required:
            self.last_seq = page.current
            self._reply(_with_rid({"type": "resync_required", "since": since, "oldestSeq": page.oldest,
                                   "seq": page.current}, request_id))
            return
        self.last_seq = since
        replayed = await self._deliver_pages(page)
        self._reply(_with_rid({"type": "resumed", "since": since, "seq": self.last_seq, "replayed": replayed},
                              request_id))

    async def _deliver_pages(self, page, upto: int | None = None) -> int:  # noqa: ANN001
        """Deliver pages of the stream from ``page`` on until ``upto`` (or the page's current seq)."""
        delivered = 0
        target = upto if upto is not None else page.current
        while True:
            for seq, channel, text in zip(page.seqs, page.channels, page.events, strict=True):
                if seq <= self.last_seq:
                    continue
                if upto is not None and seq > upto:
                    return delivered
                if channel in self.subs:
                    await self._room_for_replay()
                    if self.closing:
                        return delivered
                    self.outbox.put(text)
                    delivered += 1
                self.last_seq = seq
            if self.last_seq >= target or not page.seqs:
                if self.last_seq < target and page.resync_required:
                    self._reply({"type": "resync_required", "since": self.last_seq, "oldestSeq": page.oldest,
                                 "seq": page.current})
                    self.last_seq = max(self.last_seq, page.current)
                return delivered
            async with redis_slot():
                page = await aread_since(self.redis, self.session_id, self.last_seq, REPLAY_PAGE)

    async def _room_for_replay(self) -> None:
        """Replay at the pace the client reads: never more than half the pending limit queued at once
        (a replay is not a reason to close a socket; a client that stops reading still is)."""
        low = self.outbox.max_pending // 2
        while self.outbox.ordered_pending >= low and not self.closing:
            if self.writer.done():  # the socket went away mid-replay
                self.closing = True
                return
            await asyncio.sleep(0.005)

    async def _catch_up(self, upto: int) -> None:
        """A gap (a seq beyond the next one): fetch the missing events from the stream."""
        async with redis_slot():
            page = await aread_since(self.redis, self.session_id, self.last_seq, REPLAY_PAGE)
        if page.resync_required:
            self._reply({"type": "resync_required", "since": self.last_seq, "oldestSeq": page.oldest,
                         "seq": page.current})
            self.last_seq = page.current
            return
        await self._deliver_pages(page, upto)

    # -- events from the channel layer ---------------------------------------------------------------
    async def dispatch(self, message: dict) -> None:
        """Events skip channels' per-message ``aclose_old_connections`` (a thread hop each): they never
        touch the database, and at 1,000 sockets x 10 ticks/s that hop was most of daphne's CPU."""
        if message["type"] == "bridge.event":
            await self.bridge_event(message)
        else:
            await super().dispatch(message)

    async def bridge_event(self, message: dict) -> None:
        if self.session_id is None or self.closing:
            return
        channel, seq, replayable, text = message["c"], message["s"], message["r"], message["e"]
        if self.tracking and seq > self.last_seq:
            if replayable and seq == self.last_seq + 1:
                self.last_seq = seq
                if channel in self.subs:
                    self.outbox.put(text)
                return
            await self._catch_up(seq)
            if replayable:
                return
        elif replayable:
            return  # not followed, or already delivered (replay overlap)
        if channel in self.subs:
            self.outbox.put_latest(channel, text)

    # -- writing ---------------------------------------------------------------------------------------
    def _reply(self, payload: dict) -> None:
        self.outbox.put(dumps(payload))

    async def _write_loop(self) -> None:
        high = conf.client_high_water()
        stall = conf.client_stall_timeout()
        try:
            while True:
                await self.outbox.wait()
                while True:
                    if self.outbox.overflowed:
                        await self._too_slow(f"more than {self.outbox.max_pending} ordered messages pending")
                        return
                    backlog = server_backlog(self.base_send)
                    if backlog is not None and backlog > high:
                        if not await self._wait_drain(high // 4, stall):
                            await self._too_slow(f"server buffer over {high} bytes for {stall}s")
                            return
                    text = self.outbox.pop()
                    if text is None:
                        break
                    await self.send(text_data=text)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            logger.exception("events writer failed for socket %s", getattr(self, "socket_id", "?"))

    async def _wait_drain(self, low: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if self.outbox.overflowed:
                return False
            backlog = server_backlog(self.base_send)
            if backlog is None or backlog <= low:
                return True
        return False

    async def _too_slow(self, why: str) -> None:
        logger.warning("socket %s of session %s closed (4429): %s; last seq %s", self.socket_id,
                       self.session_id, why, self.last_seq)
        self.closing = True
        await self.close(code=CLOSE_TOO_SLOW)

    # -- groups, subscriptions, housekeeping ------------------------------------------------------------
    async def _join(self, group: str) -> None:
        if group not in self.groups_joined:
            async with redis_slot():
                await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.add(group)

    async def _leave(self, group: str) -> None:
        if group in self.groups_joined and group != replay_group(self.session_id):
            async with redis_slot():
                await self.channel_layer.group_discard(group, self.channel_name)
            self.groups_joined.discard(group)

    async def _publish_watch(self) -> None:
        quotes = {c.split(":", 1)[1] for c in self.subs if c.startswith("quote:")}
        depth = {c.split(":", 1)[1] for c in self.subs if c.startswith("depth:")}
        async with redis_slot():
            await subscriptions.register(self.redis, self.terminal, self.socket_id, quotes, depth)

    async def _housekeeping(self) -> None:
        """Refresh the subscription record, catch a lost last event, re-check the session, keep groups."""
        last_refresh = last_session = last_groups = time.monotonic()
        checked_seq = -1
        while True:
            await asyncio.sleep(GAP_CHECK_SECONDS)
            now = time.monotonic()
            try:
                if self.tracking:
                    async with redis_slot():
                        current = await acurrent_seq(self.redis, self.session_id)
                    # Behind and no progress since the last round: a lost last event (a socket that is
                    # merely busy catching up moves on by itself and is not asked to read the stream).
                    if current > self.last_seq and self.last_seq == checked_seq:
                        async with redis_slot():
                            await self.channel_layer.send(self.channel_name, {"type": "bridge.check", "s": current})
                    checked_seq = self.last_seq
                if now - last_refresh >= subscriptions.SUBSCRIPTION_TTL / 3 and self.subs:
                    await self._publish_watch()
                    last_refresh = now
                if now - last_session >= SESSION_CHECK_SECONDS:
                    last_session = now
                    if not await database_sync_to_async(_session_live)(self.session_id):
                        self.closing = True
                        self.outbox.put(dumps(_error("SessionExpired", "the session is no longer live")))
                        await asyncio.sleep(0.1)
                        await self.close(code=CLOSE_UNAUTHORIZED)
                        return
                if now - last_groups >= GROUP_REFRESH_SECONDS:
                    last_groups = now
                    async with redis_slot():
                        for group in self.groups_joined:
                            await self.channel_layer.group_add(group, self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - housekeeping retries next round
                logger.exception("events housekeeping failed for socket %s", self.socket_id)

    async def bridge_check(self, message: dict) -> None:
        """Periodic gap check, run in the consumer's own message order (no race with live events)."""
        if self.tracking and message["s"] > self.last_seq and not self.closing:
            await self._catch_up(message["s"])


def _error(code: str, message: str, details: dict | None = None, request_id: str | None = None) -> dict:
    return _with_rid({"type": "error", "error": {"code": code, "message": message, "details": details or {}}},
                     request_id)


def _with_rid(payload: dict, request_id: str | None) -> dict:
    if request_id is not None:
        payload["request_id"] = request_id
    return payload
