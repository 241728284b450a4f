"""Read-your-writes: once a client has seen a task final, every read of its session reflects it.

The fault that would break it: a snapshot taken before the terminal acted is still fresh by age. Here
the poller of sim-a is frozen (SIGSTOP) and snapshots are allowed to be a minute old, so every read
after a write would be served from the pre-write snapshot unless the bridge knows it is older than
its own last change at the terminal.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings

from tests.reads.conftest import wait_until
from trading.models import FINAL_STATES
from trading.reads.snapshots import load_snapshot

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"


def _final(client, response) -> dict:
    """The task of a 202, polled over GET /tasks/{id} until the client sees it final."""
    assert response.status_code == 202, response.content
    task_id = response.json()["taskId"]

    def settled() -> dict | None:
        body = client.get(f"{BASE}/tasks/{task_id}").json()
        return body if body["state"] in FINAL_STATES else None

    return wait_until(settled, 20, f"task {task_id} final")


def _pollers_of(terminal: str) -> list[int]:
    """Every poller process of ``terminal`` in this test run (other fixtures may have started one too):
    matched by command line and by this run's Redis."""
    ours = f"REDIS_URL={django_settings.REDIS_URL}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run_terminal_poller" in argv and terminal.encode() in argv and ours in environ:
            pids.append(int(entry.name))
    return pids


def _rid() -> str:
    return f"ryw-{uuid.uuid4().hex[:12]}"


def test_reads_reflect_a_fill_modify_pending_cancel_and_close_at_once(session_a, reads, settings) -> None:
    settings.BRIDGE_SNAPSHOT_MAX_AGE = 60.0  # a stale snapshot would be served by age alone
    wait_until(lambda: session_a.get(f"{BASE}/account").json().get("source") == "snapshot", 10,
               "a snapshot of this session")
    before = session_a.get(f"{BASE}/account").json()
    pollers = _pollers_of("sim-a")
    assert reads.pollers["sim-a"].pid in pollers, pollers
    for pid in pollers:
        os.kill(pid, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        # A fill: the position, the account's margin and the deal are there at once.
        filled = _final(session_a, session_a.post(f"{BASE}/orders", {"symbol": "EURUSD", "type": "BUY",
                                                                      "volume": 0.1}, format="json",
                                                  HTTP_X_REQUEST_ID=_rid()))
        assert filled["state"] == "filled", filled
        ticket = filled["result"]["order"]  # a hedging account: the position's ticket is its opening order's
        positions = session_a.get(f"{BASE}/positions").json()["positions"]
        assert ticket in [p["ticket"] for p in positions], positions
        account = session_a.get(f"{BASE}/account").json()
        assert account["margin"] > before["margin"], (before, account)
        now = int(time.time())
        deals = session_a.get(f"{BASE}/history/deals", {"from": now - 3600, "to": now + 60}).json()["deals"]
        assert filled["result"]["deal"] in [d["ticket"] for d in deals]

        # A modification of the position's stops.
        modified = _final(session_a, session_a.patch(f"{BASE}/positions/{ticket}", {"sl": 0.5}, format="json",
                                                     HTTP_X_REQUEST_ID=_rid()))
        assert modified["state"] == "filled", modified
        [position] = [p for p in session_a.get(f"{BASE}/positions").json()["positions"] if p["ticket"] == ticket]
        assert position["sl"] == 0.5

        # A pending order placed, then cancelled.
        placed = _final(session_a, session_a.post(f"{BASE}/orders", {"symbol": "EURUSD", "type": "BUY_LIMIT",
                                                                      "volume": 0.1, "price": 0.6}, format="json",
                                                  HTTP_X_REQUEST_ID=_rid()))
        assert placed["state"] == "placed", placed
        order = placed["result"]["order"]
        assert order in [o["ticket"] for o in session_a.get(f"{BASE}/orders").json()["orders"]]
        cancelled = _final(session_a, session_a.delete(f"{BASE}/orders/{placed['taskId']}",
                                                      HTTP_X_REQUEST_ID=_rid()))
        assert cancelled["state"] == "filled", cancelled
        assert order not in [o["ticket"] for o in session_a.get(f"{BASE}/orders").json()["orders"]]

        # A close: the position is gone and its closing deal is in the history.
        closed = _final(session_a, session_a.post(f"{BASE}/positions/{ticket}/close", {}, format="json",
                                                  HTTP_X_REQUEST_ID=_rid()))
        assert closed["state"] == "filled", closed
        assert ticket not in [p["ticket"] for p in session_a.get(f"{BASE}/positions").json()["positions"]]
        now = int(time.time())
        deals = session_a.get(f"{BASE}/history/deals", {"from": now - 3600, "to": now + 60}).json()["deals"]
        assert closed["result"]["deal"] in [d["ticket"] for d in deals]
        # The poller really was frozen all along: its last snapshot predates the first write.
        snapshot = load_snapshot(redis.Redis.from_url(django_settings.REDIS_URL), "sim-a")
        assert snapshot is not None and snapshot.taken_at < frozen_at
    finally:
        for pid in pollers:
            os.kill(pid, signal.SIGCONT)
