"""The /events WebSocket: authentication, subscribe/unsubscribe/resume/ping, live and replayed events.

A socket belongs to one bridge session of one workspace and only ever joins that session's groups,
so it cannot receive another session's events. Messages from the client that cannot be understood
(invalid JSON, nested deeper than ``BRIDGE_EVENTS_MAX_DEPTH``, larger than
``BRIDGE_EVENTS_MAX_MESSAGE_BYTES``, ...) get an ``error`` message (the API's error body) and the socket
stays open. Credentials: the ``Authorization`` and ``x-session-id`` headers, a single-use ``?ticket=``
(``streams.tickets``), or (discouraged: it lands in proxy logs) ``?token=&session=``. Close codes:

* 4401: bad or missing credentials, or the session is not live when the socket opens; also the socket's
  API key revoked or rotated while it is open (``key.<id>`` group, with a periodic database check as
  the fallback);
* 4410: the session ended while the socket was open (its final ``session`` event was sent first; the
  30-second database check is the fallback should that event be lost);
* 4429: the client cannot keep up (see ``streams.send_queue``; resume with ``?since=``), or it went over a
  rate limit: connects per key or failed connects per IP, or a flood of messages (``streams.ratelimit``);
* 4503: Redis was unreachable while the socket opened (after an ``Unavailable`` error): try again.

A socket follows the session's sequence ``(epoch, seq)`` from the moment it opens. An event of another
epoch than the socket's means Redis restarted empty (or a client named an old epoch): the socket asks
the stream, tells the client ``resync_required`` and follows the new epoch (``docs/events.md``).
"""

from __future__ import annotations

try:  # the kernel's send queue of a socket (server_backlog); not on Windows, where the web tier never runs
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except ImportError:  # pragma: no cover
    _OUTQ = None

import asyncio
import contextlib
import json
import logging
import math
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from redis.exceptions import RedisError

from bridge_project.ratelimit import arate_limit_hit, client_ip_from_scope
from sessions.auth import principal_for_key
from sessions.models import ApiKey
from sessions.services import session_get

from . import checks, conf, ratelimit, relay, subscriptions, tickets
from .keys import (
    ALWAYS,
    FINAL_SESSION_STATUSES,
    REPLAYABLE,
    group_for,
    key_group,
    parse_candle,
    parse_channel,
    replay_group,
)
from .publisher import dumps
from .relay import Event, async_redis, redis_slot
from .replay import ReplayPage, acurrent_state, aread_since
from .send_queue import SendQueue

logger = logging.getLogger("bridge.events")

CLOSE_UNAUTHORIZED = 4401
CLOSE_SESSION_ENDED = 4410
CLOSE_TOO_SLOW = 4429
CLOSE_UNAVAILABLE = 4503  # Redis unreachable while the socket opened (servers may send 1000 or 3000-4999)
MAX_CHANNELS = 256
REPLAY_PAGE = 1000
# Events waiting in a busy socket's inbox beyond this are dropped (counted): a replayable one is then
# fetched from the session's stream by the gap check, quotes are latest values anyway.
INBOX_LIMIT = 4096
# What a Redis (or channel layer) outage raises: the socket stays open, the operation is retried or
# answered with an ``Unavailable`` error.
REDIS_ERRORS = (RedisError, OSError)


def _live_session_of(workspace, session_id: str) -> tuple[str, str] | None:
    try:
        session = session_get(workspace=workspace, session_id=session_id)
    except Exception:  # NotFound (another workspace's or unknown): same answer, 4401
        return None
    if not session.live:
        return None
    return session.id, session.terminal.name


def _authenticate(token: str | None, session_id: str | None) -> tuple[str, str, int] | None:
    """(session id, terminal name, key id) when the key is valid and the session is its workspace's and live."""
    if not token or not session_id or len(token) > 256 or len(session_id) > 64:
        return None
    principal = principal_for_key(token)
    if principal is None:
        return None
    found = _live_session_of(principal.workspace, session_id)
    return (*found, principal.api_key.pk) if found else None


def _authenticate_ticket(grant: tickets.Ticket) -> tuple[str, str, int] | None:
    """As ``_authenticate`` for a redeemed ticket: its key must still be active and its session live."""
    key = ApiKey.objects.select_related("workspace").filter(
        pk=grant.key_id, workspace_id=grant.workspace_id, revoked_at__isnull=True).first()
    if key is None:
        return None
    found = _live_session_of(key.workspace, grant.session_id)
    return (*found, key.pk) if found else None


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


def too_deep(value: Any, limit: int) -> bool:
    """True when arrays/objects nest deeper than ``limit`` (a top-level object is depth 1). Iterative."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_client_message(text: str, max_bytes: int, max_depth: int) -> tuple[Any, str | None]:
    """(the decoded JSON, None) or (None, why it is refused). Size is checked before parsing; nesting
    deeper than the interpreter can parse (``RecursionError``) or than ``max_depth`` is refused."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        return None, f"message larger than {max_bytes} bytes"
    try:
        value = json.loads(text)
    except RecursionError:
        return None, f"message nested deeper than {max_depth} levels"
    except ValueError:
        return None, "message is not valid JSON"
    if isinstance(value, dict | list) and too_deep(value, max_depth):
        return None, f"message nested deeper than {max_depth} levels"
    return value, None


def _server_protocol(send: Any) -> Any:
    """The server's protocol object behind an ASGI ``send`` (daphne: ``partial(handle_reply, protocol)``)."""
    return next(iter(getattr(send, "args", ()) or ()), None)


def server_text_writer(send: Any) -> Callable[[str], bool] | None:
    """A synchronous write of one text message straight into the server's WebSocket protocol, when the
    server lets us see it (daphne: what its ``handle_reply`` does with a ``websocket.send``, without the
    three coroutines and the message dict per message and socket); None otherwise. The write answers
    False, writing nothing, once the connection is no longer open: then ``send`` is the way."""
    protocol = _server_protocol(send)
    server_send = getattr(protocol, "serverSend", None)
    open_state = getattr(protocol, "STATE_OPEN", None)
    if server_send is None or open_state is None:
        return None

    def write(text: str) -> bool:
        if protocol.state != open_state:
            return False
        server_send(text, False)
        return True

    return write


def server_backlog(send: Any) -> int | None:
    """Bytes the server still holds for this socket, when the server lets us see it (daphne: the
    Twisted transport's write buffer, plus what the kernel holds in the socket's send queue, unsent or
    unacknowledged: daphne under ``workers.stack`` writes straight into the kernel while nothing is
    buffered, so a client that stopped reading first fills that queue); None otherwise (then
    ``await send`` itself applies backpressure)."""
    protocol = _server_protocol(send)
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "dataBuffer"):
        return None
    try:
        buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return None
    return buffered + _kernel_send_queue(getattr(transport, "socket", None))


def _kernel_send_queue(sock: Any) -> int:
    """Bytes in a TCP socket's kernel send queue (Linux ``SIOCOUTQ``); 0 where it cannot be read."""
    if _OUTQ is None or sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError, struct.error):
        return 0


class EventsConsumer(AsyncWebsocketConsumer):
    """One client socket of one bridge session."""

    async def __call__(self, scope, receive, send) -> None:
        """As channels' ``AsyncConsumer.__call__``, with a channel-layer receive that survives Redis going
        away (channels-redis raises from ``receive`` then, which would end the socket)."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.base_send = send
        # Messages from this process to this socket (events that must wait, checks, a revoked key),
        # handled in order by the same loop as the client's messages (``on_event``).
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.inbox_dropped = 0
        self._dispatching = False
        self._inbox_pending = 0  # put and not yet fully handled
        try:
            await await_many_dispatch([receive, self._channel_receive, self.inbox.get], self.dispatch)
        except StopConsumer:
            pass
        finally:
            # Also when a handler failed and no disconnect ran: the relay must not keep a dead socket.
            if getattr(self, "groups_joined", None):
                self._leave_all()
            relay.unwatch(self)

    async def _channel_receive(self) -> dict:
        delay = 0.05
        while True:
            try:
                return await self.channel_layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if delay == 0.05:
                    logger.warning("socket %s: channel layer unreachable (%s: %s); retrying",
                                   getattr(self, "socket_id", "?"), type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _refuse(self, code: int, error: dict) -> None:
        """Answer ``error`` and close with ``code`` (only while opening: nothing else is queued yet)."""
        self.closing = True
        await self.send(text_data=dumps(error))
        await self.close(code=code)

    async def _rate_limited(self, retry_after: float, message: str) -> None:
        wait = max(1, math.ceil(retry_after))
        await self._refuse(CLOSE_TOO_SLOW, _error("RateLimited", message, {"retryAfter": wait}))

    async def _authenticate_scope(self, query: dict[str, list[str]]) -> tuple[str, str, int] | None:
        """Headers first, then a ``?ticket=`` (redeemed: single use), then ``?token=&session=``."""
        headers = {k.decode("latin-1").lower() for k, _ in self.scope.get("headers", [])}
        ticket = (query.get("ticket") or [None])[0]
        if ticket is not None and "authorization" not in headers:
            grant = await tickets.redeem(self.redis, ticket)
            if grant is None:
                return None
            return await database_sync_to_async(_authenticate_ticket)(grant)
        token, session_id, _ = credentials(self.scope)
        return await database_sync_to_async(_authenticate)(token, session_id)

    async def connect(self) -> None:
        self.session_id: str | None = None
        self.closing = False
        self.close_sent = False
        # Accept first: a close code (4401, 4429) can only be sent on an accepted socket.
        await self.accept()
        self.redis = async_redis()
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            auth = await self._authenticate_scope(query)
            if auth is None:
                # Failed connects count per client address; over the limit: 4429 instead of 4401.
                wait = await arate_limit_hit(scope=ratelimit.CONNECT_FAIL_SCOPE, key=client_ip_from_scope(self.scope),
                                             rate=conf.connect_fail_rate_ip())
                if wait is not None:
                    await self._rate_limited(wait, "too many failed connects from this address")
                else:
                    await self._refuse(CLOSE_UNAUTHORIZED,
                                       _error("Unauthorized", "invalid API key, ticket or session"))
                return
            wait = await arate_limit_hit(scope=ratelimit.CONNECT_SCOPE, key=str(auth[2]), rate=conf.connect_rate())
            if wait is not None:
                await self._rate_limited(wait, f"too many socket connects with this API key ({conf.connect_rate()})")
                return
        except REDIS_ERRORS as exc:
            logger.warning("socket refused, Redis unreachable while authenticating (%s)", exc)
            await self._refuse(CLOSE_UNAVAILABLE, _error("Unavailable", "the event store is unreachable; retry shortly"))
            return
        self.session_id, self.terminal, self.key_id = auth
        self.socket_id = uuid.uuid4().hex
        self.messages = ratelimit.MessageBucket(conf.message_rate())
        self.refused_in_a_row = 0
        self.max_bytes, self.max_depth = conf.max_message_bytes(), conf.max_depth()
        self.subs: set[str] = set(ALWAYS)
        # The session's sequence as far as this socket has delivered it: (epoch, seq). Epoch 0 with seq 0:
        # the session had no sequence yet, so the first epoch seen is simply followed.
        self.epoch = 0
        self.last_seq = 0
        self.checked_seq = -1  # last_seq at the previous sequence check (streams.checks)
        self.groups_joined: set[str] = set()
        self.send_queue = SendQueue(conf.client_max_pending())
        self.restart_task: asyncio.Task | None = None
        try:
            # The relay's cursor first: every entry added to the fan-out stream after it is read. Then the
            # key's group, then check the key once more: a revocation that committed before the join is
            # seen by this check, one after it arrives through the group.
            await relay.start()
            self._join(key_group(self.key_id))
            if self.key_id not in await database_sync_to_async(checks.active_keys)({self.key_id}):
                self._leave_all()
                await self._refuse(CLOSE_UNAUTHORIZED, _error("Unauthorized", "the API key was revoked"))
                return
            self._join(replay_group(self.session_id))
            # After joining: every event from here on either comes through the group or is older than this.
            async with redis_slot():
                self.last_seq, self.epoch = await acurrent_state(self.redis, self.session_id)
        except REDIS_ERRORS as exc:
            logger.warning("socket of session %s refused, Redis unreachable (%s)", self.session_id, exc)
            self._leave_all()
            self.closing = True
            await self.send(text_data=dumps(_error("Unavailable", "the event store is unreachable; retry shortly")))
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        relay.watch(self)
        self.writer = asyncio.create_task(self._write_loop())
        checks.start()  # this process's periodic checks of its sockets, this one included
        since = (query.get("since") or [None])[0]
        epoch = (query.get("epoch") or [None])[0]
        if epoch is not None and not epoch.isdigit():
            self._reply(_error("ValidationError", "epoch must be a non-negative integer", {"epoch": [epoch]}))
        elif since is not None:
            if not since.isdigit():
                self._reply(_error("ValidationError", "since must be a non-negative integer", {"since": [since]}))
            else:
                try:
                    await self._resume(int(since), int(epoch) if epoch else None, set(REPLAYABLE), None)
                except REDIS_ERRORS as exc:
                    logger.warning("socket %s: resume failed, Redis unreachable (%s)", self.socket_id, exc)
                    self._reply(_error("Unavailable", "the event store is unreachable; resume again shortly"))

    async def disconnect(self, code: int) -> None:
        if self.session_id is None:
            return
        self.closing = True
        relay.unwatch(self)
        self._leave_all()
        for task in (getattr(self, "writer", None), getattr(self, "restart_task", None)):
            if task is not None:
                task.cancel()
        try:
            async with redis_slot():
                await subscriptions.unregister(self.redis, self.terminal, self.socket_id)
        except Exception:  # the record expires by itself
            logger.warning("could not remove subscriptions of socket %s", self.socket_id)

    # -- client messages ---------------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session_id is None or self.closing:
            return
        wait = self.messages.take()
        if wait:
            # Every refused message is answered (unread); a client that goes on sending a whole further
            # burst without waiting is flooding: closed with 4429.
            self.refused_in_a_row += 1
            if self.refused_in_a_row > max(self.messages.limit, 1):
                await self._close_now(CLOSE_TOO_SLOW, _error("RateLimited", "message flood: the socket is closed",
                                                             {"retryAfter": round(wait, 3)}))
            else:
                self._reply(_error("RateLimited", f"more than {self.messages.limit} messages per "
                                   f"{self.messages.period:g} s; this one was not read",
                                   {"retryAfter": round(wait, 3)}))
            return
        self.refused_in_a_row = 0
        if text_data is None:
            self._reply(_error("ValidationError", "binary frames are not supported; send JSON text"))
            return
        message, why = parse_client_message(text_data, self.max_bytes, self.max_depth)
        if why is not None:
            self._reply(_error("ValidationError", why))
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
        try:
            await handler(message, request_id)
        except REDIS_ERRORS as exc:
            logger.warning("socket %s: %s failed, Redis unreachable (%s)", self.socket_id, message.get("type"), exc)
            self._reply(_error("Unavailable", "the event store is unreachable; retry shortly", {}, request_id))

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
                "unknown channel: use order, position, account, session, profit, deal, quote:<symbol>, "
                "depth:<symbol>, candle:<symbol>:<M1|M5|M15|M30|H1|H4|D1>",
                {"channels": [f"invalid: {c!r}" for c in bad]}, request_id))
            return None
        return list(dict.fromkeys(channels))

    async def _on_subscribe(self, message: dict, request_id: str | None) -> None:
        channels = self._channels_arg(message, request_id)
        if channels is None:
            return
        if len((self.subs | set(channels)) - set(ALWAYS)) > MAX_CHANNELS:
            self._reply(_error("ValidationError", f"at most {MAX_CHANNELS} channels per socket",
                               {"channels": ["too many"]}, request_id))
            return
        for channel in channels:
            if channel not in REPLAYABLE:
                self._join(group_for(self.session_id, channel))
        self.subs.update(channels)
        await self._publish_watch()
        self._reply(_with_rid({"type": "subscribed", "channels": sorted(self.subs), "seq": self.last_seq,
                               "epoch": self.epoch}, request_id))

    async def _on_unsubscribe(self, message: dict, request_id: str | None) -> None:
        channels = self._channels_arg(message, request_id)
        if channels is None:
            return
        for channel in channels:
            if channel in ALWAYS:
                continue  # the session's own events always reach its sockets
            if channel in self.subs and channel not in REPLAYABLE:
                self._leave(group_for(self.session_id, channel))
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
        epoch = message.get("epoch")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            self._reply(_error("ValidationError", "epoch must be a non-negative integer",
                               {"epoch": ["A non-negative JSON integer is required."]}, request_id))
            return
        channels = message.get("channels", list(REPLAYABLE))
        if (not isinstance(channels, list) or not channels
                or any(not isinstance(c, str) or c not in REPLAYABLE for c in channels)):
            self._reply(_error("ValidationError", f"resume channels must be among {', '.join(REPLAYABLE)}",
                               {"channels": ["invalid"]}, request_id))
            return
        await self._resume(since, epoch, set(channels), request_id)

    async def _on_ping(self, message: dict, request_id: str | None) -> None:
        self._reply(_with_rid({"type": "pong", "time_msc": int(time.time() * 1000), "seq": self.last_seq,
                               "epoch": self.epoch}, request_id))

    # -- replay --------------------------------------------------------------------------------------
    async def _resume(self, since: int, epoch: int | None, channels: set[str], request_id: str | None) -> None:
        """Deliver the kept events after ``since`` in order, then live ones (none lost, none twice).

        ``epoch`` (None or 0: the one this socket follows) names the sequence ``since`` counts in; a
        ``since`` of another epoch than the stream's cannot be continued: ``resync_required``.

        Live events that arrive meanwhile wait in the socket's inbox (this handler runs before the next
        message is dispatched) and are dropped as duplicates when their seq was already replayed.
        """
        self.subs.update(channels)
        async with redis_slot():
            page = await aread_since(self.redis, self.session_id, since, REPLAY_PAGE)
        if page.epoch_differs(epoch or self.epoch):
            await self._follow_new_epoch(since, request_id)
            return
        self.epoch = page.epoch
        if page.resync_required:
            self.last_seq = page.current
            self._reply(_with_rid(self._resync_notice(since, page, page.current), request_id))
            return
        self.last_seq = since
        replayed = await self._deliver_pages(page)
        self._reply(_with_rid({"type": "resumed", "since": since, "epoch": self.epoch, "seq": self.last_seq,
                               "replayed": replayed}, request_id))

    def _resync_notice(self, since: int, page: ReplayPage, seq: int) -> dict:
        """Events after ``since`` cannot all be given: reload state over REST; events after (epoch, seq)
        follow."""
        return {"type": "resync_required", "since": since, "epoch": page.epoch, "oldestSeq": page.oldest,
                "seq": seq}

    async def _follow_new_epoch(self, since: int, request_id: str | None = None) -> None:
        """The stream's sequence is another one than the one ``since`` counts in (Redis restarted empty):
        ``resync_required``, then follow the new epoch from its start when all of it is still kept (the
        events published since the restart follow at once), else from its current seq."""
        async with redis_slot():
            page = await aread_since(self.redis, self.session_id, 0, REPLAY_PAGE)
        self.epoch = page.epoch
        if page.whole_epoch_kept:
            self.last_seq = 0
            self._reply(_with_rid(self._resync_notice(since, page, 0), request_id))
            await self._deliver_pages(page)
        else:
            self.last_seq = page.current
            self._reply(_with_rid(self._resync_notice(since, page, page.current), request_id))

    async def _deliver_pages(self, page: ReplayPage, upto: int | None = None) -> int:
        """Deliver pages of the stream from ``page`` on until ``upto`` (or the page's current seq)."""
        delivered = 0
        target = upto if upto is not None else page.current
        while True:
            for seq, channel, text in zip(page.seqs, page.channels, page.events, strict=True):
                if seq <= self.last_seq:
                    continue
                if upto is not None and seq > upto:
                    return delivered
                if self._wants(channel):
                    await self._room_for_replay()
                    if self.closing:
                        return delivered
                    self._deliver(channel, text)
                    delivered += 1
                self.last_seq = seq
                if self.closing:  # the session ended
                    return delivered
            if self.last_seq >= target or not page.seqs:
                if self.last_seq < target and page.resync_required:
                    self._reply(self._resync_notice(self.last_seq, page, page.current))
                    self.last_seq = max(self.last_seq, page.current)
                return delivered
            async with redis_slot():
                page = await aread_since(self.redis, self.session_id, self.last_seq, REPLAY_PAGE)
            if page.epoch != self.epoch:  # restarted again meanwhile: the next event or check follows it
                return delivered

    async def _room_for_replay(self) -> None:
        """Replay at the pace the client reads: never more than half the pending limit queued at once
        (a replay is not a reason to close a socket; a client that stops reading still is)."""
        low = self.send_queue.max_pending // 2
        while self.send_queue.ordered_pending >= low and not self.closing:
            if self.writer.done():  # the socket went away mid-replay
                self.closing = True
                return
            await asyncio.sleep(0.005)

    async def _sync_with_stream(self, upto: int | None = None) -> None:
        """Something was missed (a seq gap, an event of another epoch, a restart): read the stream after
        the socket's seq and deliver what is missing, or follow the stream's new epoch."""
        async with redis_slot():
            page = await aread_since(self.redis, self.session_id, self.last_seq, REPLAY_PAGE)
        if page.epoch != self.epoch:
            if page.epoch == 0:
                return  # Redis lost the sequence and nothing was published since: the next event starts one
            if self.epoch != 0 or self.last_seq != 0:
                await self._follow_new_epoch(self.last_seq)
                return
            self.epoch = page.epoch  # the session's first sequence: nothing was seen before it
        if page.resync_required:
            self._reply(self._resync_notice(self.last_seq, page, page.current))
            self.last_seq = page.current
            return
        await self._deliver_pages(page, upto)

    # -- events from this process's relay ---------------------------------------------------------
    def on_event(self, event: Event) -> None:
        """Called by the relay for every event of a group this socket joined (``streams.relay``), in
        stream order. Idle and nothing waiting: handled at once, without a task switch; otherwise (busy with
        a message, or the event needs the stream) it waits in the inbox, handled in order by ``dispatch``."""
        if self._dispatching or self._inbox_pending or not self._event_now(event):
            if self._inbox_pending >= INBOX_LIMIT:
                self.inbox_dropped += 1  # a replayable one comes back from the stream (gap check)
                return
            self._to_inbox({"type": "bridge.event", "ev": event})

    def on_key_revoked(self, key_id: int) -> None:
        """Called by the relay for ``t=key.revoked`` of this socket's key group."""
        self._to_inbox({"type": "bridge.key_revoked", "k": key_id})

    def _to_inbox(self, message: dict) -> None:
        message["local"] = True
        self._inbox_pending += 1
        self.inbox.put_nowait(message)

    async def dispatch(self, message: dict) -> None:
        """Events skip channels' per-message ``aclose_old_connections`` (a thread hop each): they never
        touch the database, and at 1,000 sockets x 10 ticks/s that hop was most of daphne's CPU. Client
        messages skip it too (their handlers never touch the database): a flood costs no thread hops."""
        self._dispatching = True
        try:
            if message["type"] == "bridge.event":
                await self.bridge_event(message)
            elif message["type"] == "websocket.receive":
                await self.websocket_receive(message)
            else:
                await super().dispatch(message)
        except REDIS_ERRORS as exc:
            # Reading the stream failed (Redis away): what was missed is fetched by the next event or check.
            logger.warning("socket %s: %s not handled, Redis unreachable (%s)", getattr(self, "socket_id", "?"),
                           message.get("type"), exc)
        finally:
            self._dispatching = False
            if message.get("local"):
                self._inbox_pending -= 1

    def _event_now(self, event: Event) -> bool:
        """The common cases, without awaiting anything: True when handled; False when the stream must be
        read first (a seq gap, another epoch): then ``bridge_event`` handles it in order."""
        if self.session_id is None or self.closing:
            return True
        epoch, seq, channel = event.epoch, event.seq, event.channel
        if epoch and epoch != self.epoch:
            if self.epoch == 0 and self.last_seq == 0:
                self.epoch = epoch  # the session's first sequence
            else:
                return False  # another sequence: the stream decides
        if not epoch:  # published while the session had no sequence (a quote after a restart)
            if not event.replayable and self._wants(channel):
                self.send_queue.put_latest(channel, event.text)
            return True
        if seq > self.last_seq:
            if event.replayable and seq == self.last_seq + 1:
                if self.send_queue.ordered_pending >= self.send_queue.max_pending // 2 and self._wants(channel):
                    return False  # the client is behind: wait for room first (``bridge_event``)
                self.last_seq = seq
                if self._wants(channel):
                    self._deliver(channel, event.text)
                return True
            return False  # a jump: something was missed, read it from the stream first
        if event.replayable:
            return True  # already delivered (replay overlap)
        if self._wants(channel):
            self.send_queue.put_latest(channel, event.text)
        return True

    async def bridge_event(self, message: dict) -> None:
        """An event that waited in the inbox, or that needs the stream (``_event_now`` said so)."""
        event: Event = message["ev"]
        if self._event_now(event):
            return
        channel, seq, replayable, text, epoch = event.channel, event.seq, event.replayable, event.text, event.epoch
        if epoch != self.epoch:
            # Another sequence: Redis restarted empty (or an old event came late). The stream decides.
            await self._sync_with_stream()
            if not replayable and self._wants(channel) and epoch == self.epoch:
                self.send_queue.put_latest(channel, text)
            return
        if replayable and seq == self.last_seq + 1:
            # The client is behind: queue no more than a replay would (the socket's dispatch waits here;
            # later events wait in the inbox, or past its bound come back from the stream).
            await self._room_for_replay()
            if self.closing or seq != self.last_seq + 1:
                return
            self.last_seq = seq
            self._deliver(channel, text)
            return
        await self._sync_with_stream(seq)  # seq > last_seq + 1, or a quote ahead of the socket
        if not replayable and self._wants(channel) and not self.closing:
            self.send_queue.put_latest(channel, text)

    def _wants(self, channel: str) -> bool:
        return channel in self.subs or channel in ALWAYS

    def _deliver(self, channel: str, text: str) -> None:
        """Queue one ordered event; a final ``session`` event also ends the socket (4410) once written."""
        self.send_queue.put(text)
        if channel == "session" and _session_status(text) in FINAL_SESSION_STATUSES:
            self._end(CLOSE_SESSION_ENDED)

    def _end(self, code: int) -> None:
        """Close the socket with ``code`` after what is queued; nothing more is queued or handled."""
        if not self.closing:
            self.closing = True
            self.send_queue.put_close(code)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close once (the writer, a revocation and a flood may each want to)."""
        if self.close_sent:
            return
        self.close_sent = True
        await super().close(code=code, reason=reason)

    async def _close_now(self, code: int, error: dict) -> None:
        """Close at once, ahead of anything still queued (a revoked key, a flood): ``error``, then ``code``;
        nothing more reaches the client."""
        if self.close_sent:
            return
        self.closing = True
        writer = getattr(self, "writer", None)
        if writer is not None and not writer.done() and writer is not asyncio.current_task():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        if self.close_sent:
            return
        logger.info("socket %s of session %s closed (%s): %s", getattr(self, "socket_id", "?"), self.session_id,
                    code, error["error"]["message"])
        await self.send(text_data=dumps(error))
        await self.close(code=code)

    # -- the API key: revoked while the socket is open --------------------------------------------------
    async def bridge_key_revoked(self, message: dict) -> None:
        """The socket's API key was revoked or rotated (``streams.publisher.publish_key_revoked``)."""
        if self.session_id is not None and message.get("k") == self.key_id:
            await self._close_now(CLOSE_UNAUTHORIZED, _error("Unauthorized", "the API key was revoked"))

    # -- writing ---------------------------------------------------------------------------------------
    def _reply(self, payload: dict) -> None:
        self.send_queue.put(dumps(payload))

    async def _write_loop(self) -> None:
        """Write what is queued, in order. The server's backlog for this socket (a syscall) is looked at
        after every sixteenth of the high-water mark written (64 KiB by default), not before each message:
        at 1,000 sockets the look per message was an eighth of daphne's time. So the writer goes at most a
        sixteenth of the mark (or one message) past the mark before it stops for the client."""
        look_every = max(1, conf.client_high_water() // 16)
        write = server_text_writer(self.base_send)
        unlooked = 0  # characters written since the last look
        try:
            while True:
                await self.send_queue.wait()
                while True:
                    if self.send_queue.overflowed:
                        await self._too_slow(f"more than {self.send_queue.max_pending} ordered messages pending")
                        return
                    item = self.send_queue.pop()
                    if item is None:
                        break
                    if isinstance(item, int):
                        logger.info("socket %s of session %s closed (%s)", self.socket_id, self.session_id, item)
                        await self.close(code=item)
                        return
                    if write is None or not write(item):
                        await self.send(text_data=item)
                    unlooked += len(item)
                    if unlooked >= look_every:
                        unlooked = 0
                        if not await self._room_to_write():
                            return
        except asyncio.CancelledError:
            raise
        except Exception:  # the record expires by itself
            logger.exception("events writer failed for socket %s", getattr(self, "socket_id", "?"))

    async def _room_to_write(self) -> bool:
        """False when the client stopped reading: the server has held more than the high-water mark for it
        for the stall timeout (then the socket is closed with 4429)."""
        high = conf.client_high_water()
        backlog = server_backlog(self.base_send)
        if backlog is None or backlog <= high:
            return True
        stall = conf.client_stall_timeout()
        if await self._wait_drain(high // 4, stall):
            return True
        await self._too_slow(f"server buffer over {high} bytes for {stall}s")
        return False

    async def _wait_drain(self, low: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if self.send_queue.overflowed:
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
    def _join(self, group: str) -> None:
        """Receive ``group``'s events from this process's relay (in-process: no Redis, cannot fail)."""
        if group not in self.groups_joined:
            relay.join(group, self)
            self.groups_joined.add(group)

    def _leave(self, group: str) -> None:
        if group in self.groups_joined and group != replay_group(self.session_id):
            relay.leave(group, self)
            self.groups_joined.discard(group)

    def _leave_all(self) -> None:
        for group in self.groups_joined:
            relay.leave(group, self)
        self.groups_joined.clear()

    def _watched(self) -> tuple[set[str], set[str], set[tuple[str, str]]]:
        """(quote symbols, depth symbols, candle (symbol, timeframe) pairs) this socket subscribes to."""
        quotes = {c.split(":", 1)[1] for c in self.subs if c.startswith("quote:")}
        depth = {c.split(":", 1)[1] for c in self.subs if c.startswith("depth:")}
        candles = {parse_candle(c.split(":", 1)[1]) for c in self.subs if c.startswith("candle:")}
        return quotes, depth, {pair for pair in candles if pair is not None}

    async def _publish_watch(self) -> None:
        quotes, depth, candles = self._watched()
        async with redis_slot():
            await subscriptions.register(self.redis, self.terminal, self.socket_id, quotes, depth, candles=candles)

    def redis_restarted(self) -> None:
        """Called by this process's relay when Redis came back empty: the poller's record of this socket's
        symbols is gone and events may have been lost. Register the symbols again, then check the sequence
        (in order with the events). The groups are this process's own: nothing to join again."""
        if self.session_id is None or self.closing:
            return
        if self.restart_task is None or self.restart_task.done():
            self.restart_task = asyncio.get_running_loop().create_task(self._rejoin())

    async def _rejoin(self) -> None:
        delay = 0.1
        while not self.closing:
            try:
                await self._publish_watch()
                self._to_inbox({"type": "bridge.check"})
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis flapping: try again
                logger.warning("socket %s: registering its symbols again failed (%s); retrying", self.socket_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- answers of this process's periodic checks (streams.checks) ------------------------------------
    def check_sequence(self, current: int, epoch: int) -> None:
        """The session's ``(seq, epoch)`` now. Another epoch: Redis restarted and events were published
        since. Behind with no progress since the last check: a lost last event (a socket that is merely busy
        catching up moves on by itself and is not asked to read the stream)."""
        if self.closing:
            return
        if (epoch and epoch != self.epoch) or (current > self.last_seq and self.last_seq == self.checked_seq):
            self._to_inbox({"type": "bridge.check"})
        self.checked_seq = self.last_seq

    def symbols_record(self) -> str | None:
        """This socket's record for the poller (``streams.subscriptions``), None when it watches no symbol."""
        quotes, depth, candles = self._watched()
        if not (quotes or depth or candles):
            return None
        return subscriptions.record(quotes, depth, candles=candles)

    def session_gone(self) -> None:
        """The database says the session is no longer live (the fallback: its final ``session`` event
        should have closed the socket already)."""
        if not self.closing:
            self.send_queue.put(dumps(_error("SessionExpired", "the session is no longer live")))
            self._end(CLOSE_SESSION_ENDED)

    async def bridge_check(self, message: dict) -> None:
        """A gap check or a restart, run in the consumer's own message order (no race with live events)."""
        if self.session_id is not None and not self.closing:
            await self._sync_with_stream()


def _session_status(text: str) -> str | None:
    try:
        return json.loads(text)["data"]["status"]
    except (ValueError, KeyError, TypeError):
        return None


def _error(code: str, message: str, details: dict | None = None, request_id: str | None = None) -> dict:
    return _with_rid({"type": "error", "error": {"code": code, "message": message, "details": details or {}}},
                     request_id)


def _with_rid(payload: dict, request_id: str | None) -> dict:
    if request_id is not None:
        payload["request_id"] = request_id
    return payload
