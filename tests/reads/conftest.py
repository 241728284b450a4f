"""Fixtures of the read tests: a read process and a poller per stack terminal, sessions on a chosen terminal,
and a direct MetaTrader5-style client of a terminal (to change its state the way a trader in the terminal
would, and to compare with what the bridge answers)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from django.conf import settings as django_settings
from rest_framework.test import APIClient

import mt5sim
from mt5sim.control import Control
from tests.conftest import SIM_TERMINALS, Stack
from tests.procs import Proc, start_manage
from tests.waiting import wait_until  # the read tests import it from here too
from trading.reads.readqueue import heartbeat_key
from trading.reads.snapshots import quote_interest_key, snapshot_key, snapshot_version_key

POLL_INTERVAL = "0.2"


@dataclass
class ReadProcs:
    """The reader and poller processes of each terminal, restartable by tests that stop them."""

    stack: Stack
    readers: dict[str, Proc] = field(default_factory=dict)
    pollers: dict[str, Proc] = field(default_factory=dict)

    def start_reader(self, name: str) -> Proc:
        proc = start_manage(f"reader-{name}-{int(time.time() * 1000)}", ["run_terminal_reader", name],
                            {**self.stack.env, "BRIDGE_POLL_INTERVAL": POLL_INTERVAL,
                             "BRIDGE_POLL_IDLE_INTERVAL": POLL_INTERVAL}, self.stack.log_dir)
        proc.wait_log("ready", timeout=60)
        self.readers[name] = proc
        return proc

    def start_poller(self, name: str) -> Proc:
        proc = start_manage(f"poller-{name}-{int(time.time() * 1000)}", ["run_terminal_poller", name],
                            {**self.stack.env, "BRIDGE_POLL_INTERVAL": POLL_INTERVAL,
                             "BRIDGE_POLL_IDLE_INTERVAL": POLL_INTERVAL}, self.stack.log_dir)
        proc.wait_log("ready", timeout=60)
        self.pollers[name] = proc
        return proc

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


def open_session(client: APIClient, terminal: str, login: int) -> str:
    """Open a session on ``terminal`` and wait for it to be active; returns the session id."""
    r = client.post("/mt5/client/session/open?wait=15",
                    {"accountId": f"acc{login}", "server": "Demo", "login": login, "password": "pw",
                     "terminal": terminal}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["status"] == "active", r.json()
    sid = r.json()["sessionId"]
    client.credentials(**{**client._credentials, "HTTP_X_SESSION_ID": sid})
    return sid


@pytest.fixture
def session_a(client: APIClient, reads: ReadProcs) -> APIClient:
    """``client`` with a live session on sim-a (UTC+3), account 5001."""
    open_session(client, "sim-a", 5001)
    return client


class Terminal:
    """A direct MetaTrader5-style client of one stack terminal, plus its control connection."""

    def __init__(self, address: str):
        self.address = address
        self.ctl = Control(address)

    def __enter__(self) -> Terminal:
        assert mt5sim.initialize(self.address), mt5sim.last_error()
        return self

    def __exit__(self, *exc: object) -> None:
        mt5sim.shutdown()
        self.ctl.close()

    @property
    def mt5(self):  # the module
        return mt5sim

    def buy(self, symbol: str, volume: float = 0.1, **extra: object):
        result = mt5sim.order_send({"action": mt5sim.TRADE_ACTION_DEAL, "symbol": symbol, "volume": volume,
                                    "type": mt5sim.ORDER_TYPE_BUY, "type_filling": mt5sim.ORDER_FILLING_IOC,
                                    **extra})
        assert result is not None and result.retcode == mt5sim.TRADE_RETCODE_DONE, (result, mt5sim.last_error())
        return result

    def buy_limit(self, symbol: str, price: float, volume: float = 0.1):
        result = mt5sim.order_send({"action": mt5sim.TRADE_ACTION_PENDING, "symbol": symbol, "volume": volume,
                                    "type": mt5sim.ORDER_TYPE_BUY_LIMIT, "price": price,
                                    "type_filling": mt5sim.ORDER_FILLING_RETURN})
        assert result is not None and result.retcode == mt5sim.TRADE_RETCODE_DONE, (result, mt5sim.last_error())
        return result


@pytest.fixture
def terminal_a(stack: Stack, session_a: APIClient) -> Iterator[Terminal]:
    """A direct client of sim-a, attached after ``session_a`` logged the terminal in."""
    with Terminal(stack.addresses["sim-a"]) as terminal:
        yield terminal
