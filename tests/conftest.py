"""Shared fixtures: API clients, and a real bridge stack (an mt5sim broker, its terminals, pinned workers).

The stack fixtures run real processes against the test database (PostgreSQL in CI) and the Redis
named by ``REDIS_URL``; tests that use them must be ``django_db(transaction=True)`` so that what
they write is committed and visible to the workers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import yaml
from django.conf import settings as django_settings
from django.db import connection
from rest_framework.test import APIClient

from sessions.api_keys import create_api_key
from sessions.models import Workspace
from tests.procs import Proc, start_manage, start_sim, start_sim_broker
from tests.waiting import wait_until
from trading.reads.readqueue import heartbeat_key
from trading.reads.snapshots import quote_interest_key, snapshot_key, snapshot_version_key


@pytest.fixture(scope="session", autouse=True)
def _flush_survives_busy_workers() -> Iterator[None]:
    """Between transactional tests Django TRUNCATEs every table while the test's worker processes
    may still hold a row lock (a task finishing): PostgreSQL can pick the TRUNCATE as a deadlock
    victim. Retry it: the workers' transactions are short. (Test harness only.)"""
    from django.core.management.base import CommandError
    from django.db import OperationalError
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown

    def teardown_with_retry(self) -> None:
        for attempt in range(5):
            try:
                return original(self)
            except (OperationalError, CommandError) as exc:  # flush wraps the deadlock in CommandError
                if "deadlock" not in f"{exc} {exc.__cause__}" or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    TransactionTestCase._fixture_teardown = teardown_with_retry
    yield
    TransactionTestCase._fixture_teardown = original


SIM_TERMINALS = (("sim-a", 10800), ("sim-b", 0))  # (name, broker UTC offset in seconds)
# The test stack's one emulated broker runs a server name per clock; each terminal is on its offset's.
# Two server names keep the two terminals' accounts apart (each name has its own), as the suite expects.
SIM_SERVERS = {"MT5Sim-Demo": 10800, "MT5Sim-UTC": 0}
SIM_SERVER_OF = {"sim-a": "MT5Sim-Demo", "sim-b": "MT5Sim-UTC"}


# The stack's pinned workers run without their reader and poller threads: the read and events tests start
# those as processes of their own (run_terminal_reader/run_terminal_poller) with their own cadence, and stop
# or freeze them. The one process per terminal is tested in tests/foundation/test_terminal_process.py.
WORKER_ONLY = ("--without-reader", "--without-poller")


@dataclass
class Stack:
    """The running test stack: the broker, terminals by name, their pinned workers, the env they run with."""

    terminals_file: Path
    addresses: dict[str, str]
    sims: dict[str, Proc]
    broker: Proc | None = None
    broker_address: str = ""
    workers: dict[str, Proc] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None

    def start_worker(self, name: str, extra_env: dict[str, str] | None = None) -> Proc:
        proc = start_manage(
            f"worker-{name}-{int(time.time() * 1000)}",
            ["run_terminal_worker", name, "--loglevel", "INFO", *WORKER_ONLY],
            {**self.env, **(extra_env or {})},
            self.log_dir,
        )
        proc.wait_log("ready", timeout=60)
        self.workers[name] = proc
        return proc

    def start_worker_waiting(self, name: str, extra_env: dict[str, str] | None = None) -> Proc:
        """Start one more pinned worker of ``name`` without waiting for it (it may wait for the lease)."""
        return start_manage(
            f"worker-{name}-extra-{int(time.time() * 1000)}",
            ["run_terminal_worker", name, "--loglevel", "INFO", *WORKER_ONLY],
            {**self.env, **(extra_env or {})},
            self.log_dir,
        )


def _db_env() -> dict[str, str]:
    """Environment that points a subprocess at this test run's database."""
    settings_dict = connection.settings_dict
    env = {}
    if settings_dict["ENGINE"].endswith("postgresql"):
        user = settings_dict.get("USER") or "postgres"
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        env["DATABASE_URL"] = f"postgres://{user}@{host}:{port}/{settings_dict['NAME']}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{settings_dict['NAME']}"
    return env


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def sim_stack(stack_dir: Path, django_db_setup, django_db_blocker) -> Iterator[Stack]:
    """One mt5sim broker and two terminals on it (sim-a on a UTC+3 server name, sim-b on a UTC+0 one),
    and a terminals file declaring them (no workers yet)."""
    sims: dict[str, Proc] = {}
    addresses: dict[str, str] = {}
    broker: Proc | None = None
    try:
        # Demo accounts with room for every test's positions: the suite's tests share a few logins on
        # these terminals and leave positions open, and a margin run out midway would turn later
        # orders into 10019 rejections that have nothing to do with what they test.
        # Account 5001 is the suite's shared login (password "pw", every test that uses it says so): declared,
        # so that a login of it with another password (the schema's example body, sent by the schema fuzz
        # to whichever terminal is free) fails instead of taking it over for the rest of the run.
        config = stack_dir / "sim-broker.yaml"
        config.write_text(yaml.safe_dump({"account_defaults": {"balance": 1_000_000.0},
                                          "accounts": [{"login": 5001, "password": "pw", "server": "Demo"}]}))
        broker, broker_address = start_sim_broker("sim-broker", stack_dir, stack_dir / "state-broker", SIM_SERVERS,
                                                  seed=10, config=config)
        for name, offset in SIM_TERMINALS:
            # The terminal's clock is its server name's: the offset the terminals file declares for it.
            assert SIM_SERVERS[SIM_SERVER_OF[name]] == offset
            proc, address = start_sim(f"sim-{name}", stack_dir, stack_dir / f"state-{name}", broker=broker_address,
                                      server=SIM_SERVER_OF[name])
            sims[name], addresses[name] = proc, address
        terminals_file = stack_dir / "terminals.yaml"
        terminals_file.write_text(
            yaml.safe_dump(
                {
                    "sim_broker": {"address": broker_address, "servers": SIM_SERVERS},
                    "terminals": [
                        {"name": name, "backend": "sim", "address": addresses[name], "server": SIM_SERVER_OF[name],
                         "utc_offset": offset}
                        for name, offset in SIM_TERMINALS
                    ],
                },
                sort_keys=False,  # the first server name is the broker's default
            )
        )
        with django_db_blocker.unblock():
            env = {**os.environ, **_db_env(), "BRIDGE_TERMINALS_FILE": str(terminals_file)}
        yield Stack(terminals_file, addresses, sims, broker=broker, broker_address=broker_address, env=env,
                    log_dir=stack_dir)
    finally:
        for proc in sims.values():
            proc.stop()
        if broker is not None:
            broker.stop()


@pytest.fixture(scope="session")
def bridge_stack(sim_stack: Stack) -> Iterator[Stack]:
    """``sim_stack`` plus one pinned worker per terminal."""
    try:
        for name, _ in SIM_TERMINALS:
            sim_stack.start_worker(name)
        yield sim_stack
    finally:
        for proc in sim_stack.workers.values():
            proc.stop()


@pytest.fixture
def stack(bridge_stack: Stack, settings) -> Stack:
    """Per test: the running stack, with this process's settings pointed at its terminals file."""
    settings.BRIDGE_TERMINALS_FILE = str(bridge_stack.terminals_file)
    for name, proc in bridge_stack.workers.items():
        if not proc.alive():  # a crash test killed it: bring the terminal's worker back
            bridge_stack.start_worker(name)
    return bridge_stack


@pytest.fixture
def workspace(db) -> Workspace:
    return Workspace.objects.create(name="ws-main")


@pytest.fixture
def api_key(workspace: Workspace) -> str:
    return create_api_key(workspace)[1]


@pytest.fixture
def client(api_key: str) -> APIClient:
    """An API client authenticated as ``workspace``."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return api


@pytest.fixture
def other_client(db) -> APIClient:
    """An API client of a second workspace."""
    ws = Workspace.objects.create(name="ws-other")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {create_api_key(ws)[1]}")
    return api


# -- the read processes: a reader and a poller per stack terminal (tests/reads and the writes that read) --
POLL_INTERVAL = "0.2"


@dataclass
class ReadProcs:
    """The reader and poller processes of each terminal, restartable by tests that stop them."""

    stack: Stack
    readers: dict[str, Proc] = field(default_factory=dict)
    pollers: dict[str, Proc] = field(default_factory=dict)

    def _start(self, role: str, name: str) -> Proc:
        proc = start_manage(f"{role}-{name}-{int(time.time() * 1000)}", [f"run_terminal_{role}", name],
                            {**self.stack.env, "BRIDGE_POLL_INTERVAL": POLL_INTERVAL,
                             "BRIDGE_POLL_IDLE_INTERVAL": POLL_INTERVAL}, self.stack.log_dir)
        proc.wait_log("ready", timeout=60)
        return proc

    def start_reader(self, name: str) -> Proc:
        self.readers[name] = self._start("reader", name)
        return self.readers[name]

    def start_poller(self, name: str) -> Proc:
        self.pollers[name] = self._start("poller", name)
        return self.pollers[name]

    def ensure_running(self) -> None:
        for name, _ in SIM_TERMINALS:
            if name not in self.readers or not self.readers[name].alive():
                self.start_reader(name)
            if name not in self.pollers or not self.pollers[name].alive():
                self.start_poller(name)
        client = redis.Redis.from_url(django_settings.REDIS_URL)
        for name, _ in SIM_TERMINALS:
            wait_until(lambda name=name: client.get(heartbeat_key(name)) is not None, 20,
                       f"a heartbeat of the reader of {name}")

    def stop_all(self) -> None:
        for proc in [*self.readers.values(), *self.pollers.values()]:
            proc.stop()


# One instance for the whole run, whichever directory asks for it: a test module that imported these
# fixtures would get a session fixture of its own (a second reader per terminal, left running).
@pytest.fixture(scope="session")
def read_procs(bridge_stack: Stack) -> Iterator[ReadProcs]:
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    for name, _ in SIM_TERMINALS:  # nothing left over from an earlier run in this Redis DB
        client.delete(snapshot_key(name), snapshot_version_key(name), heartbeat_key(name), quote_interest_key(name), f"bridge:read:{name}")
    procs = ReadProcs(bridge_stack)
    try:
        procs.ensure_running()
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def reads(stack: Stack, read_procs: ReadProcs) -> ReadProcs:
    """Per test: the stack with readers and pollers running (restarted if a test stopped one)."""
    for name, proc in stack.sims.items():
        assert proc.alive(), f"terminal {name} is down (a failure test did not restore it)"
    read_procs.ensure_running()
    return read_procs
