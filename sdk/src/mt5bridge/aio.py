"""The asyncio client: :class:`AsyncClient`, :class:`AsyncSession`, :class:`AsyncEventStream`.

The same calls as the sync client (``await s.buy(...)``, ``await s.account()``), the same retry policy and
the same event protocol; heartbeats and the order watcher are asyncio tasks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ._api import DEFAULT_WAIT, Call, SessionAPI, TasksAPI
from ._core import API_PATH, RetryPolicy, decode, resolve_config, retry_decision, task_of, user_agent, ws_url
from ._events import Reconnect, Stop, StreamState, handshake_refused
from .errors import BridgeError, ConnectionFailed, LoginFailed, SessionExpired, TaskTimeout, Unauthorized
from .models import FINAL_STATES, Event, SessionInfo, State, Task

log = logging.getLogger("mt5bridge")


class AsyncClient:
    """The asyncio twin of :class:`mt5bridge.Client` (same arguments, same environment variables)."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.api_key, self.base_url = resolve_config(api_key, base_url)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.events_url = ws_url(self.base_url)  # /events is at the root, not under the API path
        self._http = httpx.AsyncClient(base_url=self.base_url + API_PATH, timeout=timeout, transport=transport,
                                       headers={"Authorization": f"Bearer {self.api_key}",
                                                "User-Agent": user_agent()})

    async def send(self, call: Call, *, session_id: str | None = None, retry: RetryPolicy | None = None,
                   timeout: float | None = None) -> Any:
        """Run one call with the retry policy (see :meth:`mt5bridge.Client.send`)."""
        headers = {}
        if session_id and call.session:
            headers["x-session-id"] = session_id
        if call.request_id:
            headers["x-request-id"] = call.request_id
        policy = retry or self.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(call.method, call.path, json=call.json, params=call.params,
                                                    headers=headers,
                                                    timeout=timeout or httpx.USE_CLIENT_DEFAULT)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                hopeless = isinstance(exc, httpx.UnsupportedProtocol)  # a bad URL: no retry will do
                may_retry = not hopeless and (call.replay_safe or not sent)
                delay = retry_decision(policy, attempt, None) if may_retry else None
                if delay is None:
                    raise ConnectionFailed(f"{call.method} {call.path}: {exc!r}", code="ConnectionFailed",
                                           request_id=call.request_id) from exc
                log.info("%s %s: %r; retry %d in %.2fs (request id %s)", call.method, call.path, exc, attempt,
                         delay, call.request_id)
                await asyncio.sleep(delay)
                continue
            delay = retry_decision(policy, attempt, response)
            if delay is None:
                break
            log.info("%s %s: %d; retry %d in %.2fs (request id %s)", call.method, call.path,
                     response.status_code, attempt, delay, call.request_id)
            await asyncio.sleep(delay)
        body = decode(response, call.request_id)
        if call.task:
            return task_of(response, body)
        if call.tasks:
            return [Task.from_dict(t) for t in (body or {}).get("tasks", [])]
        return call.parse(body) if call.parse else body

    async def request(self, method: str, path: str, *, json: dict[str, Any] | None = None,
                      params: dict[str, Any] | None = None, session_id: str | None = None,
                      request_id: str | None = None) -> Any:
        """Any endpoint under ``/mt5/client`` (the decoded JSON), with the retry policy; a write
        (``request_id`` given) keeps its request id across retries."""
        return await self.send(Call(method.upper(), path, json=json, params=params, request_id=request_id),
                               session_id=session_id)

    async def task(self, task_id: str) -> Task:
        return await self.send(Call("GET", f"/tasks/{task_id}", parse=Task.from_dict, session=False))

    def session(self, *, login: int, password: str, server: str, account_id: str, terminal: str | None = None,
                wait: float = 30.0, heartbeat: bool = True) -> AsyncSession:
        """``async with client.session(...) as s:`` opens (waits until active), heartbeats, closes on exit."""
        return AsyncSession(self, login=login, password=password, server=server, account_id=account_id,
                            terminal=terminal, wait=wait, heartbeat=heartbeat)

    async def open_session(self, **kwargs: Any) -> AsyncSession:
        return await self.session(**kwargs).open()

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSession(SessionAPI):
    """One bridge session under asyncio; every method of :class:`SessionAPI` returns an awaitable."""

    def __init__(self, client: AsyncClient, *, login: int, password: str, server: str, account_id: str,
                 terminal: str | None = None, wait: float = 30.0, heartbeat: bool = True) -> None:
        self._init_session(client, login=login, password=password, server=server, account_id=account_id,
                           terminal=terminal, wait=wait, heartbeat=heartbeat)
        self.tasks = AsyncTasks(self)
        self._heartbeat_task: asyncio.Task | None = None
        self._watcher: _AsyncOrderWatcher | None = None

    async def open(self) -> AsyncSession:
        wait = max(0.0, min(30.0, self._open_wait))
        call = Call("POST", "/session/open", json=self._open_body, params={"wait": int(wait)},
                    parse=SessionInfo.from_dict, session=False, replay_safe=False)
        info = await self.client.send(call, timeout=wait + 15)
        self._open_body["password"] = ""
        self.session_id = info.session_id
        if info.heartbeat_interval:
            self.heartbeat_interval = float(info.heartbeat_interval)
        deadline = time.monotonic() + self._open_wait
        while info.status == "opening" and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            info = await self.info()
        self.opened = info
        if info.status != "active":
            await self.close()
            raise LoginFailed(f"session {info.session_id} is {info.status}", code="LoginFailed",
                              details={"session": info.raw, "error": info.error})
        if self._heartbeat_enabled:
            self._heartbeat_task = asyncio.create_task(self._heartbeats())
        return self

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.heartbeat()
            except (SessionExpired, Unauthorized):
                self.ended = True
                return
            except BridgeError as exc:
                log.warning("heartbeat of session %s failed: %s", self.session_id, exc)

    def heartbeat(self) -> Any:
        return self._call(Call("POST", f"/session/{self.session_id}/heartbeat", parse=SessionInfo.from_dict))

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        if self._watcher is not None:
            await self._watcher.stop()
        if self.session_id and not self.ended:
            try:
                await self._call(Call("DELETE", f"/session/{self.session_id}"))
            except (SessionExpired, Unauthorized):
                pass
            self.ended = True

    async def __aenter__(self) -> AsyncSession:
        return await self.open() if not self.session_id else self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _call(self, call: Call) -> Any:
        return self._acall(call)

    async def _acall(self, call: Call) -> Any:
        result = await self.client.send(call, session_id=self.session_id)
        if call.wait is not None:
            if isinstance(result, list):
                return [await self.wait_task(t, call.wait) for t in result]
            return await self.wait_task(result, call.wait)
        return result

    def events(self, channels: list[str] | None = None, *, since: int | None = None, epoch: int | None = None,
               ping_interval: float = 15.0, ping_timeout: float = 10.0,
               reload_on_resync: bool = True) -> AsyncEventStream:
        """``async for event in s.events(["order"]):`` reconnecting and resuming by itself."""
        return AsyncEventStream(self, channels or ["order"], since=since, epoch=epoch, ping_interval=ping_interval,
                                ping_timeout=ping_timeout, reload_on_resync=reload_on_resync)

    async def state(self) -> State:
        """Account, positions, pending orders and the tasks not final, read now over REST."""
        both = await self.positions_and_orders()
        return State(account=await self.account(), positions=both.positions, orders=both.orders,
                     pending_tasks=await self.tasks.reconcile())

    async def wait_task(self, task: Task | str, timeout: float = DEFAULT_WAIT) -> Task:
        """The task once final (event stream first, ``GET /tasks/{id}`` while it is down)."""
        task_id = task if isinstance(task, str) else task.task_id
        replayed = False if isinstance(task, str) else task.replayed
        if not isinstance(task, str) and task.final:
            return task
        if self._watcher is None:
            self._watcher = _AsyncOrderWatcher(self)
        watcher = self._watcher
        deadline = time.monotonic() + timeout
        await watcher.wait_connected(min(2.0, timeout))
        last_poll = 0.0
        while True:
            now = time.monotonic()
            poll_every = 2.0 if watcher.connected else 0.25
            if watcher.final_state(task_id) or now - last_poll >= poll_every:
                last_poll = now
                current = await self.tasks.get(task_id)
                if current.final:
                    current.replayed = replayed
                    return current
            if now >= deadline:
                raise TaskTimeout(f"task {task_id} not final after {timeout}s", code="TaskTimeout",
                                  details={"taskId": task_id})
            await watcher.wait_change(task_id, min(poll_every, max(0.0, deadline - now)))


class AsyncTasks(TasksAPI):
    _session: AsyncSession

    async def reconcile(self) -> list[Task]:
        """Every task of the session not final (queued, dispatched, unknown)."""
        return [task async for task in self.iter(state=self.NOT_FINAL)]

    async def iter(self, **filters: Any) -> AsyncIterator[Task]:
        cursor = None
        while True:
            page = await self.list(cursor=cursor, **filters)
            for task in page.tasks:
                yield task
            cursor = page.next_cursor
            if not cursor:
                return

    async def wait(self, task_id: str, timeout: float = DEFAULT_WAIT) -> Task:
        return await self._session.wait_task(task_id, timeout)


class AsyncEventStream:
    """``async for event in stream``; see :class:`mt5bridge.EventStream` for the behaviour."""

    def __init__(self, session: AsyncSession, channels: list[str], *, since: int | None = None,
                 epoch: int | None = None, ping_interval: float = 15.0, ping_timeout: float = 10.0,
                 reload_on_resync: bool = True) -> None:
        self.session = session
        self.reload_on_resync = reload_on_resync
        self.state = StreamState(list(channels), last_seq=since, epoch=epoch)
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.connected = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._closed = False

    @property
    def last_seq(self) -> int | None:
        return self.state.last_seq

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._closed or self.session.ended:
                await self.aclose()
                raise StopAsyncIteration
            if self._ws is None:
                await self._connect()
                continue
            timeout = self.ping_timeout if self.state.awaiting_pong else self.ping_interval
            try:
                text = await asyncio.wait_for(self._ws.recv(), timeout)
            except TimeoutError:
                if self.state.awaiting_pong:
                    await self._drop(1006)
                else:
                    await self._send(self.state.ping())
                continue
            except ConnectionClosed as exc:
                await self._drop(exc.rcvd.code if exc.rcvd else 1006, exc.rcvd.reason if exc.rcvd else "")
                continue
            event = self.state.on_text(text)
            if self.state.subscribed and not self.connected.is_set():
                self.connected.set()  # subscribed: what is published from now on will come
            if event is not None:
                if event.resync_required and self.reload_on_resync:
                    event.state = await self.session.state()
                return event

    async def _connect(self) -> None:
        headers = {"Authorization": f"Bearer {self.session.client.api_key}", "x-session-id": self.session.session_id}
        try:
            ws = await connect(self.session.client.events_url, additional_headers=headers, open_timeout=10,
                               ping_interval=None, close_timeout=2, proxy=None, max_size=None)
        except (OSError, TimeoutError, InvalidStatus, ConnectionClosed) as exc:
            refused = handshake_refused(exc)
            if refused is not None:
                self._closed = True
                raise refused from exc
            delay = self.state.on_connect_failure().delay
            log.info("events: connect failed (%r); again in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            return
        for message in self.state.hello():
            try:
                await ws.send(message)
            except ConnectionClosed:
                break
        self._ws = ws

    async def _send(self, text: str) -> None:
        try:
            assert self._ws is not None
            await self._ws.send(text)
        except ConnectionClosed as exc:
            await self._drop(exc.rcvd.code if exc.rcvd else 1006)

    async def _drop(self, code: int, reason: str = "") -> None:
        ws, self._ws = self._ws, None
        self.connected.clear()
        if ws is not None:
            await ws.close()
        if self._closed:
            return
        action = self.state.on_close(code, reason)
        if isinstance(action, Stop):
            self._closed = True
        elif isinstance(action, Reconnect):
            await asyncio.sleep(action.delay)
        else:
            self._closed = True
            raise action

    async def aclose(self) -> None:
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _AsyncOrderWatcher:
    KEEP = 10_000

    def __init__(self, session: AsyncSession) -> None:
        self.stream = AsyncEventStream(session, ["order"], reload_on_resync=False)
        self._final: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run())

    @property
    def connected(self) -> bool:
        return self.stream.connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stream.connected.wait(), timeout)

    async def _run(self) -> None:
        try:
            async for event in self.stream:
                task_id, state = event.data.get("taskId"), event.data.get("state")
                if (event.type == "order" and task_id and state in FINAL_STATES) or event.resync_required:
                    async with self._changed:
                        if task_id and state in FINAL_STATES:
                            self._final[task_id] = state
                            while len(self._final) > self.KEEP:
                                self._final.popitem(last=False)
                        self._changed.notify_all()
        except BridgeError as exc:
            log.warning("order watcher stopped: %s (waits poll the tasks)", exc)

    def final_state(self, task_id: str) -> str | None:
        return self._final.get(task_id)

    async def wait_change(self, task_id: str, timeout: float) -> None:
        async with self._changed:
            if task_id not in self._final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)

    async def stop(self) -> None:
        await self.stream.aclose()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BridgeError):
            await self._task
