"""The synchronous client: :class:`Client`, its :class:`Session`, the session's :class:`EventStream`."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from ._api import DEFAULT_WAIT, Call, SessionAPI, TasksAPI
from ._core import (
    API_PATH,
    RetryPolicy,
    decode,
    new_request_id,
    resolve_config,
    retry_decision,
    task_of,
    user_agent,
    ws_url,
)
from ._events import Reconnect, Stop, StreamState, handshake_refused
from .errors import BridgeError, ConnectionFailed, LoginFailed, SessionExpired, TaskTimeout, Unauthorized
from .models import FINAL_STATES, Event, SessionInfo, State, Task

log = logging.getLogger("mt5bridge")


class Client:
    """A connection to one bridge with one API key.

    ``Client()`` reads ``MT5BRIDGE_API_KEY`` and ``MT5BRIDGE_URL`` (default ``http://127.0.0.1:8000``) from
    the environment when the arguments are absent. ``retry`` is the policy of every call (see
    :class:`RetryPolicy`); ``timeout`` is httpx's per-request timeout in seconds.
    """

    def __init__(self, api_key: str | None = None, base_url: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.api_key, self.base_url = resolve_config(api_key, base_url)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.events_url = ws_url(self.base_url)  # /events is at the root, not under the API path
        self._http = httpx.Client(base_url=self.base_url + API_PATH, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {self.api_key}", "User-Agent": user_agent()})

    # -- transport --------------------------------------------------------------------------------
    def send(self, call: Call, *, session_id: str | None = None, retry: RetryPolicy | None = None,
             timeout: float | None = None) -> Any:
        """Run one call with the retry policy; the decoded answer (or the model ``call.parse`` makes)."""
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
                response = self._http.request(call.method, call.path, json=call.json, params=call.params,
                                              headers=headers, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
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
                time.sleep(delay)
                continue
            delay = retry_decision(policy, attempt, response)
            if delay is None:
                break
            log.info("%s %s: %d; retry %d in %.2fs (request id %s)", call.method, call.path,
                     response.status_code, attempt, delay, call.request_id)
            time.sleep(delay)
        body = decode(response, call.request_id)
        if call.task:
            return task_of(response, body)
        if call.tasks:
            return [Task.from_dict(t) for t in (body or {}).get("tasks", [])]
        return call.parse(body) if call.parse else body

    def request(self, method: str, path: str, *, json: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None, session_id: str | None = None,
                request_id: str | None = None) -> Any:
        """Any endpoint under ``/mt5/client`` (the decoded JSON), with the retry policy; a write
        (``request_id`` given) keeps its request id across retries."""
        return self.send(Call(method.upper(), path, json=json, params=params, request_id=request_id),
                         session_id=session_id)

    def task(self, task_id: str) -> Task:
        """``GET /tasks/{id}`` without a session: reconcile a task after its session ended."""
        return self.send(Call("GET", f"/tasks/{task_id}", parse=Task.from_dict, session=False))

    def health(self) -> dict[str, Any]:
        response = self._http.get(self.base_url + "/health")
        return decode(response, None)

    # -- sessions ---------------------------------------------------------------------------------
    def session(self, *, login: int, password: str, server: str, account_id: str, terminal: str | None = None,
                wait: float = 30.0, heartbeat: bool = True) -> Session:
        """A session handle, opened by ``with`` (or :meth:`Session.open`): it waits until the session is
        active, heartbeats in the background and closes on exit."""
        return Session(self, login=login, password=password, server=server, account_id=account_id,
                       terminal=terminal, wait=wait, heartbeat=heartbeat)

    def open_session(self, **kwargs: Any) -> Session:
        """:meth:`session`, opened now (close it with ``s.close()``)."""
        return self.session(**kwargs).open()

    def attach(self, session_id: str, *, heartbeat: bool = True) -> Session:
        """A handle on a session opened elsewhere (by id), heartbeating unless ``heartbeat=False``;
        ``close()`` (or leaving ``with``) closes the session itself."""
        s = Session(self, login=0, password="", server="", account_id="", heartbeat=heartbeat)
        s._adopt(session_id)
        return s

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session(SessionAPI):
    """One bridge session: reads and writes under it (see :class:`SessionAPI` for every method)."""

    def __init__(self, client: Client, *, login: int, password: str, server: str, account_id: str,
                 terminal: str | None = None, wait: float = 30.0, heartbeat: bool = True) -> None:
        self._init_session(client, login=login, password=password, server=server, account_id=account_id,
                           terminal=terminal, wait=wait, heartbeat=heartbeat)
        self.tasks = Tasks(self)
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._watcher: _OrderWatcher | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------
    def open(self) -> Session:
        """``POST /session/open?wait=``; waits until ``active`` (``LoginFailed`` if the login is refused)."""
        wait = max(0.0, min(30.0, self._open_wait))
        # Opening twice would be a second session: only a request that never left is sent again.
        call = Call("POST", "/session/open", json=self._open_body, params={"wait": int(wait)},
                    parse=SessionInfo.from_dict, session=False, replay_safe=False)
        info = self.client.send(call, timeout=wait + 15)
        self._open_body["password"] = ""
        self._adopt(info.session_id, info)
        deadline = time.monotonic() + self._open_wait
        while info.status == "opening" and time.monotonic() < deadline:
            time.sleep(0.25)
            info = self.info()
        self.opened = info
        if info.status != "active":
            self.close()
            raise LoginFailed(f"session {info.session_id} is {info.status}", code="LoginFailed",
                              details={"session": info.raw, "error": info.error})
        return self

    def _adopt(self, session_id: str, info: SessionInfo | None = None) -> None:
        self.session_id = session_id
        if info is not None and info.heartbeat_interval:
            self.heartbeat_interval = float(info.heartbeat_interval)
        if self._heartbeat_enabled and self._heartbeat_thread is None:
            self._heartbeat_thread = threading.Thread(target=self._heartbeats, name=f"mt5bridge-hb-{session_id}",
                                                      daemon=True)
            self._heartbeat_thread.start()

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self.heartbeat()
            except (SessionExpired, Unauthorized):
                self.ended = True
                log.warning("session %s ended; heartbeats stop", self.session_id)
                return
            except BridgeError as exc:
                log.warning("heartbeat of session %s failed: %s", self.session_id, exc)

    def heartbeat(self) -> SessionInfo:
        """``POST /session/{id}/heartbeat`` (the background thread sends these by itself)."""
        return self._call(Call("POST", f"/session/{self.session_id}/heartbeat", parse=SessionInfo.from_dict))

    def close(self) -> None:
        """Stop the heartbeats and the order watcher, ``DELETE /session/{id}`` (already ended: fine)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.stop()
        if self.session_id and not self.ended:
            try:
                self._call(Call("DELETE", f"/session/{self.session_id}"))
            except (SessionExpired, Unauthorized):
                pass
            self.ended = True
        if self._heartbeat_thread is not None and self._heartbeat_thread is not threading.current_thread():
            self._heartbeat_thread.join(timeout=5)

    def __enter__(self) -> Session:
        return self.open() if not self.session_id else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------------
    def _call(self, call: Call) -> Any:
        result = self.client.send(call, session_id=self.session_id)
        if call.wait is not None:
            if isinstance(result, list):
                return [self.wait_task(t, call.wait) for t in result]
            return self.wait_task(result, call.wait)
        return result

    def events(self, channels: list[str] | None = None, *, since: int | None = None, epoch: int | None = None,
               ping_interval: float = 15.0, ping_timeout: float = 10.0, reload_on_resync: bool = True) -> EventStream:
        """An iterator of the session's events (``order`` by default) that reconnects by itself and
        resumes where it left off. ``for event in s.events(["order", "quote:EURUSD"]): ...``"""
        return EventStream(self, channels or ["order"], since=since, epoch=epoch, ping_interval=ping_interval,
                           ping_timeout=ping_timeout, reload_on_resync=reload_on_resync)

    def state(self) -> State:
        """Account, positions, pending orders and the tasks not final, read now over REST."""
        both = self.positions_and_orders()
        return State(account=self.account(), positions=both.positions, orders=both.orders,
                     pending_tasks=self.tasks.reconcile())

    def wait_task(self, task: Task | str, timeout: float = DEFAULT_WAIT) -> Task:
        """The task once final: from the ``order`` event stream (one socket per session, shared by every
        wait), falling back to ``GET /tasks/{id}`` while the stream is down. ``TaskTimeout`` after
        ``timeout`` seconds."""
        task_id = task if isinstance(task, str) else task.task_id
        replayed = False if isinstance(task, str) else task.replayed
        if not isinstance(task, str) and task.final:
            return task
        watcher = self._order_watcher()
        deadline = time.monotonic() + timeout
        watcher.wait_connected(min(2.0, timeout))
        last_poll = 0.0
        while True:
            now = time.monotonic()
            seen = watcher.final_state(task_id)
            poll_every = 2.0 if watcher.connected else 0.25
            if seen or now - last_poll >= poll_every:
                last_poll = now
                current = self.tasks.get(task_id)
                if current.final:
                    current.replayed = replayed
                    return current
            if now >= deadline:
                raise TaskTimeout(f"task {task_id} not final after {timeout}s", code="TaskTimeout",
                                  details={"taskId": task_id})
            watcher.wait_change(task_id, min(poll_every, max(0.0, deadline - now)))

    def _order_watcher(self) -> _OrderWatcher:
        with self._lock:
            if self._watcher is None:
                self._watcher = _OrderWatcher(self)
            return self._watcher


class Tasks(TasksAPI):
    _session: Session

    def reconcile(self) -> list[Task]:
        """Every task of the session that is not final (queued, dispatched or unknown), newest first: after
        a crash, what may still execute."""
        return list(self.iter(state=self.NOT_FINAL))

    def iter(self, **filters: Any) -> Iterator[Task]:
        """Every task matching ``filters`` (as :meth:`list`), page after page."""
        cursor = None
        while True:
            page = self.list(cursor=cursor, **filters)
            yield from page.tasks
            cursor = page.next_cursor
            if not cursor:
                return

    def wait(self, task_id: str, timeout: float = DEFAULT_WAIT) -> Task:
        return self._session.wait_task(task_id, timeout)


class EventStream:
    """The session's events, reconnecting with ``since=<last seq>`` whenever the socket drops.

    Iterate it (``for event in stream``); ``close()`` (or leaving ``with``) ends it. Ends by itself when
    the session ends (4410); raises :class:`Unauthorized` on 4401. A ``resync_required`` event means
    events were lost: reload state over REST (positions, ``s.tasks.reconcile()``), then go on.
    """

    def __init__(self, session: Session, channels: list[str], *, since: int | None = None,
                 epoch: int | None = None, ping_interval: float = 15.0, ping_timeout: float = 10.0,
                 reload_on_resync: bool = True) -> None:
        self.session = session
        self.reload_on_resync = reload_on_resync
        self.state = StreamState(list(channels), last_seq=since, epoch=epoch)
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.connected = threading.Event()
        self._ws: ClientConnection | None = None
        self._pending: collections.deque[Event] = collections.deque()
        self._closed = False

    @property
    def last_seq(self) -> int | None:
        return self.state.last_seq

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        while True:
            if self._closed or self.session.ended:
                self.close()
                raise StopIteration
            if self._ws is None:
                self._connect()
                continue
            try:
                text = self._ws.recv(timeout=self.ping_timeout if self.state.awaiting_pong else self.ping_interval)
            except TimeoutError:
                if self.state.awaiting_pong:  # no answer to our ping: a dead link
                    self._drop(1006)
                else:
                    self._send(self.state.ping())
                continue
            except ConnectionClosed as exc:
                self._drop(exc.rcvd.code if exc.rcvd else 1006, exc.rcvd.reason if exc.rcvd else "")
                continue
            event = self.state.on_text(text)
            if self.state.subscribed and not self.connected.is_set():
                self.connected.set()  # subscribed: what is published from now on will come
            if event is not None:
                if event.resync_required and self.reload_on_resync:
                    event.state = self.session.state()
                return event

    def _connect(self) -> None:
        headers = {"Authorization": f"Bearer {self.session.client.api_key}", "x-session-id": self.session.session_id}
        try:
            ws = connect(self.session.client.events_url, additional_headers=headers, open_timeout=10,
                         ping_interval=None, close_timeout=2, proxy=None, max_size=None, legacy=True)
        except (OSError, TimeoutError, InvalidStatus, ConnectionClosed) as exc:
            refused = handshake_refused(exc)
            if refused is not None:
                self._closed = True
                raise refused from exc
            delay = self.state.on_connect_failure().delay
            log.info("events: connect failed (%r); again in %.2fs", exc, delay)
            self._sleep(delay)
            return
        for message in self.state.hello():
            try:
                ws.send(message)
            except ConnectionClosed:
                break
        self._ws = ws

    def _send(self, text: str) -> None:
        try:
            assert self._ws is not None
            self._ws.send(text)
        except ConnectionClosed as exc:
            self._drop(exc.rcvd.code if exc.rcvd else 1006)

    def _drop(self, code: int, reason: str = "") -> None:
        """The connection ended: reconnect (after a delay), stop, or raise."""
        ws, self._ws = self._ws, None
        self.connected.clear()
        if ws is not None:
            ws.close()
        if self._closed:
            return
        action = self.state.on_close(code, reason)
        if isinstance(action, Stop):
            self._closed = True
        elif isinstance(action, Reconnect):
            log.info("events: socket closed (%s); reconnecting in %.2fs from seq %s", code, action.delay,
                     self.state.last_seq)
            self._sleep(action.delay)
        else:
            self._closed = True
            raise action

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closed and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _OrderWatcher:
    """One ``order`` event stream per session, in a thread, shared by every ``wait=True``."""

    KEEP = 10_000

    def __init__(self, session: Session) -> None:
        self.stream = EventStream(session, ["order"], reload_on_resync=False)
        self._final: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"mt5bridge-orders-{session.session_id}", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self.stream.connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self.stream.connected.wait(timeout)

    def _run(self) -> None:
        try:
            for event in self.stream:
                task_id, state = event.data.get("taskId"), event.data.get("state")
                if event.type == "order" and task_id and state in FINAL_STATES:
                    with self._changed:
                        self._final[task_id] = state
                        while len(self._final) > self.KEEP:
                            self._final.popitem(last=False)
                        self._changed.notify_all()
                elif event.resync_required:
                    with self._changed:
                        self._changed.notify_all()  # waiters poll the tasks themselves
        except BridgeError as exc:
            log.warning("order watcher stopped: %s (waits poll the tasks)", exc)

    def final_state(self, task_id: str) -> str | None:
        with self._changed:
            return self._final.get(task_id)

    def wait_change(self, task_id: str, timeout: float) -> None:
        with self._changed:
            if task_id not in self._final:
                self._changed.wait(timeout)

    def stop(self) -> None:
        self.stream.close()


__all__ = ["Client", "EventStream", "Session", "Tasks", "new_request_id"]
