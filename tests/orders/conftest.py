"""Fixtures for the order tests: a live session on a named sim terminal, waiting for tasks, and the
emulator's own view of what was traded (its history, read with the mt5sim client, not the bridge)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

import mt5sim
from mt5sim.control import Control
from tests.conftest import Stack
from trading.models import FINAL_STATES, TradeTask

LOGIN = 5001
PASSWORD = "pw"


def open_session(client: APIClient, terminal: str, login: int = LOGIN) -> str:
    r = client.post("/mt5/client/session/open?wait=15",
                    {"accountId": f"acc-{login}", "server": "Demo", "login": login, "password": PASSWORD,
                     "terminal": terminal}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "active", body
    return body["sessionId"]


def wait_final(task_id: str, timeout: float = 20.0, states: tuple[str, ...] = tuple(FINAL_STATES)) -> TradeTask:
    deadline = time.monotonic() + timeout
    while True:
        task = TradeTask.objects.get(id=task_id)
        if task.state in states:
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {task.state} after {timeout}s: {task.result}")
        time.sleep(0.05)


class Terminal:
    """The emulator's own records, read through the mt5sim client (one attachment per call)."""

    def __init__(self, address: str):
        self.address = address

    def _read(self, fn: Callable[[], Any]) -> Any:
        assert mt5sim.initialize(self.address), mt5sim.last_error()
        try:
            return fn()
        finally:
            mt5sim.shutdown()

    def history_orders(self, tag: str | None = None) -> list[Any]:
        now = int(time.time())
        rows = self._read(lambda: mt5sim.history_orders_get(1, now + 3 * 86400)) or ()
        return [o for o in rows if tag is None or o.comment.startswith(tag)]

    def history_deals(self, tag: str | None = None) -> list[Any]:
        now = int(time.time())
        rows = self._read(lambda: mt5sim.history_deals_get(1, now + 3 * 86400)) or ()
        return [d for d in rows if tag is None or d.comment.startswith(tag)]

    def orders(self) -> list[Any]:
        return list(self._read(lambda: mt5sim.orders_get()) or ())

    def positions(self) -> list[Any]:
        return list(self._read(lambda: mt5sim.positions_get()) or ())

    def broker_orders_of(self, task: TradeTask) -> list[Any]:
        """Every order at the broker (working or in history) that carries the task's tag."""
        working = [o for o in self.orders() if o.comment.startswith(task.tag)]
        return working + self.history_orders(task.tag)


@pytest.fixture
def sim(stack: Stack) -> Callable[[str], Terminal]:
    return lambda name: Terminal(stack.addresses[name])


@pytest.fixture
def control(stack: Stack):
    controls: list[Control] = []

    def make(name: str) -> Control:
        ctl = Control(stack.addresses[name])
        controls.append(ctl)
        return ctl

    yield make
    for ctl in controls:
        try:
            ctl.delay(0)
            ctl.ipc_timeout("order_send", 0)
        except Exception:
            pass
        ctl.close()
