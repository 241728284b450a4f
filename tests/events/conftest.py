"""Fixtures for the events tests: a real daphne on a free port, live sessions, WebSocket clients.

Everything runs against the real Redis of ``REDIS_URL`` (its ``bridge:ev:*`` keys are cleared once per
run) and the test database; daphne runs the real ASGI application with the real channel layer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import mt5sim
from mt5sim.control import Control
from sessions.models import Workspace
from streams.keys import log_key, seq_key
from terminals.config import get_terminal
from terminals.gateway import TerminalGateway
from terminals.reads import TerminalReads
from tests.factories import make_api_key, make_session as factories_make_session, make_workspace
from tests.procs import PYTHON, Proc, free_port
from workers.stack import daphne_argv

# Small limits so the slow-client test runs in seconds (documented defaults are larger).
DAPHNE_ENV = {
    "BRIDGE_EVENTS_CLIENT_HIGH_WATER": "65536",
    "BRIDGE_EVENTS_CLIENT_STALL_TIMEOUT": "3",
    "BRIDGE_EVENTS_CLIENT_MAX_PENDING": "300",
}


def db_env() -> dict[str, str]:
    s = connection.settings_dict
    if s["ENGINE"].endswith("postgresql"):
        user, host, port = s.get("USER") or "postgres", s.get("HOST") or "127.0.0.1", s.get("PORT") or 5432
        return {"DATABASE_URL": f"postgres://{user}@{host}:{port}/{s['NAME']}"}
    return {"DATABASE_URL": f"sqlite:///{s['NAME']}"}


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class PrivateRedis:
    """A throw-away ``redis-server`` without persistence, restartable on the same port (nothing else talks
    to it: its restarts and its command statistics are the test's alone)."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        data_dir = self.log_dir / f"data-{self.starts}"
        data_dir.mkdir()
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", str(data_dir)]
        self.proc = Proc(f"redis-{self.port}-{self.starts}", argv, dict(os.environ), self.log_dir).start()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        self.proc.wait_for(lambda: _pings(client), 15, "answering PING")
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill(signal.SIGKILL)
        self.proc.popen.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def events_redis() -> redis.Redis:
    client = redis.Redis.from_url(settings.REDIS_URL)
    for pattern in ("bridge:ev:*", "bridge:ch*"):
        keys = list(client.scan_iter(pattern, count=1000))
        if keys:
            client.delete(*keys)
    return client


def start_daphne(log_dir: Path, extra_env: dict[str, str] | None = None, name: str = "daphne") -> tuple[Proc, str]:
    port = free_port()
    env = {**os.environ, **db_env(), **DAPHNE_ENV, **(extra_env or {})}
    argv = daphne_argv("127.0.0.1", port, PYTHON)  # as run_bridge starts it: with workers.stack's tuning
    proc = Proc(f"{name}-{port}", argv, env, log_dir).start()
    proc.wait_log("Listening on TCP address", timeout=60)
    return proc, f"ws://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def daphne(tmp_path_factory: pytest.TempPathFactory, django_db_setup, django_db_blocker,
           events_redis) -> Iterator[tuple[Proc, str]]:
    """A daphne serving the bridge (its log: ``proc.log()``) and its ws:// base URL."""
    with django_db_blocker.unblock():
        proc, url = start_daphne(tmp_path_factory.mktemp("daphne"))
    try:
        yield proc, url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def daphne_url(daphne: tuple[Proc, str]) -> str:
    return daphne[1]




@dataclass
class LiveSession:
    id: str
    key: str
    workspace: Workspace
    terminal: str


@pytest.fixture
def make_session(db) -> Callable[..., LiveSession]:
    """An active bridge session on a fresh terminal row (no terminal process behind it), opened and
    activated by the session services. Its event stream starts empty: these tests count seqs from
    the first event they publish, and the activation's own ``session`` event would be seq 1."""

    def make(workspace: Workspace | None = None, login: int = 5001) -> LiveSession:
        workspace = workspace or make_workspace()
        key = make_api_key(workspace)[1]
        session = factories_make_session(workspace, login=login)
        redis.Redis.from_url(settings.REDIS_URL).delete(seq_key(session.id), log_key(session.id))
        return LiveSession(session.id, key, workspace, session.terminal.name)

    return make


class WsClient:
    """A blocking WebSocket client with JSON helpers."""

    def __init__(self, conn: ClientConnection):
        self.conn = conn

    def send(self, message: dict | str) -> None:
        self.conn.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout: float = 5.0) -> dict:
        return json.loads(self.conn.recv(timeout=timeout))

    def recv_until(self, predicate: Callable[[dict], bool], timeout: float = 10.0) -> tuple[dict, list[dict]]:
        """The first message matching ``predicate`` and every message seen before it."""
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message in {timeout}s; saw {seen[-5:]}")
            try:
                message = self.recv(left)
            except TimeoutError:
                continue
            if predicate(message):
                return message, seen
            seen.append(message)

    def drain(self, seconds: float) -> list[dict]:
        """Everything that arrives within ``seconds``."""
        got: list[dict] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.recv(left))
            except TimeoutError:
                break
        return got

    def close_code(self, timeout: float = 5.0) -> int | None:
        try:
            while True:
                self.conn.recv(timeout=timeout)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    def close(self) -> None:
        self.conn.close()


def ws_connect(url: str, session: LiveSession | None = None, *, query: str = "", headers: bool = True,
               token: str | None = None, session_id: str | None = None) -> WsClient:
    extra = {}
    if session is not None and headers:
        extra = {"Authorization": f"Bearer {token or session.key}", "x-session-id": session_id or session.id}
    path = f"{url}/events" + (f"?{query}" if query else "")
    conn = connect(path, additional_headers=extra, open_timeout=10, max_size=None)
    return WsClient(conn.__enter__())  # the context-manager form; closed by the fixture


@pytest.fixture
def ws(daphne_url: str) -> Iterator[Callable[..., WsClient]]:
    opened: list[WsClient] = []

    def open_ws(session: LiveSession | None = None, **kwargs) -> WsClient:
        client = ws_connect(daphne_url, session, **kwargs)
        opened.append(client)
        return client

    yield open_ws
    for client in opened:
        try:
            client.close()
        except Exception:
            pass


# -- the real stack: mt5sim terminals, pinned workers, pollers ------------------------------------------
@pytest.fixture(scope="session")
def event_pollers(bridge_stack) -> Iterator[dict[str, Proc]]:
    """A fast poller (50 ms) per stack terminal, the process that turns terminal changes into events."""
    from tests.procs import start_manage

    procs: dict[str, Proc] = {}
    try:
        for name in bridge_stack.addresses:
            proc = start_manage(f"events-poller-{name}-{int(time.time() * 1000)}",
                                ["run_terminal_poller", name, "--interval", "0.05"], bridge_stack.env,
                                bridge_stack.log_dir)
            proc.wait_log("ready", timeout=60)
            procs[name] = proc
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture
def live_stack(stack, event_pollers, daphne_url):
    for name, proc in event_pollers.items():
        assert proc.alive(), f"poller of {name} died:\n{proc.log()[-2000:]}"
    return stack


@pytest.fixture
def eurusd_a(live_stack):
    ctl = Control(live_stack.addresses["sim-a"])
    ctl.freeze_feed("EURUSD")
    ctl.set_price("EURUSD", 1.10000, 1.10010)
    yield ctl
    ctl.freeze_feed("EURUSD", frozen=False)
    ctl.close()


@pytest.fixture
def sim_a(stack) -> Iterator[tuple[TerminalReads, Control]]:
    """Reads of sim-a through a gateway of this test, its control connection, and the module attached to it
    (for the terminal's own ``copy_ticks_range``)."""
    gateway = TerminalGateway(get_terminal("sim-a"), mt5sim)
    ctl = Control(stack.addresses["sim-a"])
    assert mt5sim.initialize(stack.addresses["sim-a"]), mt5sim.last_error()
    try:
        yield TerminalReads(gateway), ctl
    finally:
        mt5sim.shutdown()
        gateway.shutdown()
        ctl.close()


def live_session_open(client, terminal: str, login: int) -> str:
    """A session opened over REST on ``terminal`` of the live stack, active: its id."""
    r = client.post("/mt5/client/session/open?wait=15", {"accountId": f"acc-{login}", "server": "Demo",
                                                          "login": login, "password": "pw", "terminal": terminal},
                    format="json")
    assert r.status_code == 201 and r.json()["status"] == "active", r.content
    return r.json()["sessionId"]


@dataclass
class RestSession:
    """A session opened over REST, as ``ws`` takes it: its id and the API key of the client that opened it."""

    id: str
    key: str


def live_session_of(client, sid: str) -> RestSession:
    return RestSession(id=sid, key=client._credentials["HTTP_AUTHORIZATION"].split()[1])


@pytest.fixture
def session_a(live_stack, client):
    """A session of login 5001 on sim-a of the live stack, closed after the test."""
    sid = live_session_open(client, "sim-a", 5001)
    yield live_session_of(client, sid)
    client.delete(f"/mt5/client/session/{sid}")
