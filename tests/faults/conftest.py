"""Fault fixtures: a Redis of the test's own that can be killed and started again, this process
pointed at it, and a pinned worker on it.

The shared Redis (127.0.0.1:6379) that other tests and people use is never touched: a
``redis-server`` is started on a free port (in memory: ``--save '' --appendonly no``), so killing it
loses everything in it, as a Redis restart without persistence does.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.conftest import Stack
from tests.orders.conftest import control, sim  # noqa: F401 - fixtures used by the fault tests
from tests.procs import Proc, free_port, start_manage
from tests.waiting import wait_until

TERMINAL = "sim-b"  # the terminal whose pinned worker these tests replace with one on the private Redis


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class PrivateRedis:
    """A redis-server of one test, on a free port, that the test kills and starts again."""

    port: int
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = Proc(f"redis-{self.port}-{len(self.procs)}", argv, dict(os.environ), self.log_dir).start()
        self.procs.append(proc)

        def pong() -> bool:
            try:
                return bool(self.client().ping())
            except redis.ConnectionError:
                assert proc.alive(), proc.log()
                return False

        wait_until(pong, 10, "answering PING")

    def kill(self) -> None:
        """SIGKILL: the server dies with everything in memory (queues, cache, specs, streams)."""
        proc = self.procs[-1]
        proc.kill(signal.SIGKILL)
        wait_until(lambda: not proc.alive() and not _port_open(self.port), 10, "dead")

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def _reset_celery_connections() -> None:
    """Forget every broker connection and producer pool of this process, so the next publish connects
    to the broker URL configured now. kombu keeps its pools in global registries keyed by the
    connection: closing a pool without clearing them would hand the closed pool back to the next
    test on the same URL ("Acquire on closed pool")."""
    from kombu import pools

    from bridge_project.celery import app

    pools.reset()  # closes every pool and clears the registries
    app._pool = None
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None


def _forget_cached_clients() -> None:
    """Drop the clients this process built for the previous Redis URL (they reconnect from settings)."""
    import streams.publisher
    from bridge_project import metrics, ratelimit

    streams.publisher._clients.clear()
    ratelimit.reset_hold_off()
    with metrics._held_lock:
        metrics._held.clear()
        metrics._down_until = 0.0


@pytest.fixture
def on_private_redis(private_redis: PrivateRedis, settings) -> Iterator[PrivateRedis]:
    """This process (the web tier the test client drives, the sweeper it calls) uses the private
    Redis for everything: cache (throttle), symbol specs, event streams, metrics and the Celery broker."""
    from bridge_project.celery import app

    url = private_redis.url
    # Read before the Django settings change: app.conf reads CELERY_* through to them.
    previous_broker = app.conf.broker_url
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": url}}
    settings.BRIDGE_WORKER_HEARTBEAT_INTERVAL = 1.0
    app.conf.broker_url = url
    _reset_celery_connections()
    _forget_cached_clients()
    try:
        yield private_redis
    finally:
        app.conf.broker_url = previous_broker
        _reset_celery_connections()
        _forget_cached_clients()


@dataclass
class PrivateWorker:
    """The pinned worker of TERMINAL, started on the private Redis (heartbeat every second)."""

    stack: Stack
    redis_url: str
    procs: list[Proc] = field(default_factory=list)

    @property
    def proc(self) -> Proc:
        return self.procs[-1]

    def start(self) -> Proc:
        env = {**self.stack.env, "REDIS_URL": self.redis_url, "CELERY_BROKER_URL": self.redis_url,
               "BRIDGE_WORKER_HEARTBEAT_INTERVAL": "1"}
        proc = start_manage(f"fault-worker-{TERMINAL}-{time.time_ns()}", ["run_terminal_worker", TERMINAL,
                                                                         "--loglevel", "INFO"],
                            env, self.stack.log_dir)
        self.procs.append(proc)
        proc.wait_log("ready", timeout=60)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def private_worker(stack: Stack, on_private_redis: PrivateRedis) -> Iterator[PrivateWorker]:
    """Replace TERMINAL's pinned worker by one on the private Redis (the ``stack`` fixture starts the
    shared one again for the next test)."""
    stack.workers[TERMINAL].stop()
    worker = PrivateWorker(stack, on_private_redis.url)
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()
