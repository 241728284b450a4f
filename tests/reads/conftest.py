"""Fixtures of the read tests: a read process and a poller per stack terminal, sessions on a chosen terminal,
and a direct MetaTrader5-style client of a terminal (to change its state the way a trader in the terminal
would, and to compare with what the bridge answers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

import mt5sim
from mt5sim.control import Control

# The read processes' fixtures (``read_procs``, ``reads``) live in tests/conftest.py: one instance for the
# whole run. Importing them here would make this directory's own second set of readers and pollers.
from tests.conftest import POLL_INTERVAL, SIM_TERMINALS, ReadProcs, Stack  # noqa: F401 (imported from here)
from tests.waiting import wait_until  # noqa: F401 (the read tests import it from here too)


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
