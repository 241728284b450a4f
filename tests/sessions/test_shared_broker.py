"""Two terminals on one emulated broker, through the bridge: one login is one account on both.

The test stack's broker runs server name MT5Sim-Demo (sim-a's); this test adds a terminal ``sim-c``
on the same server name with its own pinned worker, as `make run` and compose run ``sim-1``/``sim-2``.
Real processes throughout: the broker, both terminals, both pinned workers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from rest_framework.test import APIClient

import mt5sim
from tests.conftest import SIM_SERVER_OF, SIM_SERVERS, SIM_TERMINALS, Stack, _db_env
from tests.procs import Proc, start_manage, start_sim
from tests.waiting import wait_until
from trading.models import FINAL_STATES, TradeTask

pytestmark = pytest.mark.django_db(transaction=True)

A, B = "sim-a", "sim-c"  # both on sim-a's server name
LOGIN = 7_120_000 + os.getpid() % 10_000  # an account no other test (or earlier run on this state) knows
PASSWORD = "Shared-Pw-1"


def _terminals(stack: Stack, extra_address: str) -> dict:
    return {
        "sim_broker": {"address": stack.broker_address, "servers": SIM_SERVERS},
        "terminals": [
            *({"name": name, "backend": "sim", "address": stack.addresses[name], "server": SIM_SERVER_OF[name],
               "utc_offset": offset} for name, offset in SIM_TERMINALS),
            {"name": B, "backend": "sim", "address": extra_address, "server": SIM_SERVER_OF[A]},
        ],
    }


@pytest.fixture
def shared(stack: Stack, tmp_path: Path, settings) -> Iterator[dict[str, str]]:
    """sim-c: a second terminal on sim-a's server name of the stack's broker, with its pinned worker."""
    procs: list[Proc] = []
    try:
        sim, address = start_sim(f"sim-{B}", tmp_path, tmp_path / "state", broker=stack.broker_address,
                                 server=SIM_SERVER_OF[A])
        procs.append(sim)
        # The stack's terminals plus this one, so that no process's terminal sync disables another's.
        terminals_file = tmp_path / "terminals.yaml"
        terminals_file.write_text(yaml.safe_dump(_terminals(stack, address), sort_keys=False))
        settings.BRIDGE_TERMINALS_FILE = str(terminals_file)
        env = {**os.environ, **_db_env(), "BRIDGE_TERMINALS_FILE": str(terminals_file)}
        worker = start_manage(f"worker-{B}", ["run_terminal_worker", B, "--loglevel", "INFO"], env, tmp_path)
        procs.append(worker)
        worker.wait_log("ready", timeout=60)
        yield {A: stack.addresses[A], B: address}
    finally:
        for proc in reversed(procs):
            proc.stop()


def _open(client: APIClient, terminal: str, password: str = PASSWORD) -> dict:
    body = {"accountId": "shared", "server": "Demo", "login": LOGIN, "password": password, "terminal": terminal}
    response = client.post("/mt5/client/session/open?wait=20", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _write(client: APIClient, sid: str, rid: str, path: str, body: dict) -> TradeTask:
    accepted = client.post(f"/mt5/client{path}", body, format="json", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid)
    assert accepted.status_code == 202, accepted.content
    task_id = accepted.json()["taskId"]
    return wait_until(lambda: (t := TradeTask.objects.get(id=task_id)).state in FINAL_STATES and t, 30,
                      f"task {task_id} final")


def _account_and_positions(address: str) -> tuple[tuple[int, float], set[int]]:
    """The emulator's own view through one terminal (the mt5sim client, not the bridge), logged in to LOGIN."""
    assert mt5sim.initialize(address, login=LOGIN, password=PASSWORD, server="Demo"), mt5sim.last_error()
    try:
        account = mt5sim.account_info()
        positions = mt5sim.positions_get(symbol="EURUSD")
        assert account is not None and positions is not None, mt5sim.last_error()
        return (account.login, account.balance), {p.ticket for p in positions}
    finally:
        mt5sim.shutdown()


def test_one_login_is_one_account_on_both_terminals_and_a_wrong_password_fails_on_each(
        shared: dict[str, str], client: APIClient) -> None:
    rid = f"shared-{time.time_ns()}"
    # A: the login's first use opens its demo account at the broker; a position is opened through A.
    on_a = _open(client, A)
    assert on_a["status"] == "active" and on_a["terminal"] == A, on_a
    opened = _write(client, on_a["sessionId"], f"{rid}-buy", "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1})
    assert opened.state == "filled" and opened.position_ticket, opened.result
    ticket = opened.position_ticket
    assert client.delete(f"/mt5/client/session/{on_a['sessionId']}").status_code == 200

    # A wrong password for the existing login fails on the terminal that never saw the login...
    wrong_b = _open(client, B, password="not-the-password")
    assert wrong_b["status"] == "login_failed" and wrong_b["error"] == {"code": -6, "message": "Terminal: Authorization failed"}, wrong_b
    # ...and on the one that did.
    wrong_a = _open(client, A, password="not-the-password")
    assert wrong_a["status"] == "login_failed" and wrong_a["error"]["code"] == -6, wrong_a

    # B with the right password: the same account, with A's position.
    on_b = _open(client, B)
    assert on_b["status"] == "active" and on_b["terminal"] == B, on_b
    account_b, positions_b = _account_and_positions(shared[B])
    account_a, positions_a = _account_and_positions(shared[A])
    assert account_b == account_a and account_b[0] == LOGIN
    assert ticket in positions_b and positions_a == positions_b

    # The position opened through A is closed through B, via the bridge.
    closed = _write(client, on_b["sessionId"], f"{rid}-close", f"/positions/{ticket}/close", {})
    assert closed.state == "filled", closed.result
    assert ticket not in _account_and_positions(shared[A])[1]  # gone at the broker: A sees it closed
    assert ticket not in _account_and_positions(shared[B])[1]
    assert client.delete(f"/mt5/client/session/{on_b['sessionId']}").status_code == 200
