"""Failures: 502 BridgeUnavailable fast when the read process, the terminal or the broker is down, and a
read answered while the pinned order worker is stuck in a slow order.

The destructive tests use sim-b and restore it before they end (the ``reads`` fixture checks that every
terminal is back up for the next test).
"""

from __future__ import annotations

import signal
import time

import pytest
import redis
from django.conf import settings as django_settings

from mt5sim.control import Control
from tests.procs import Proc
from tests.reads.conftest import open_session, wait_until
from trading.reads.readqueue import reader_status
from trading.reads.snapshots import load_snapshot

pytestmark = pytest.mark.django_db(transaction=True)

FAST = 2.6  # seconds: "within a second or two" (BRIDGE_READ_TIMEOUT is 2 s), with room for a busy CI box
QUEUE_READS = ("/mt5/client/symbols/EURUSD", "/mt5/client/quotes/history?symbol=EURUSD&timeframe=M1&count=10",
               "/mt5/client/ticks/EURUSD?count=5", "/mt5/client/depth/EURUSD", "/mt5/client/history/deals")


def _timed(client, path):
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def _snapshot_stale(terminal: str) -> bool:
    """The terminal's snapshot is older than BRIDGE_SNAPSHOT_MAX_AGE (or gone): reads will not serve it."""
    snapshot = load_snapshot(redis.Redis.from_url(django_settings.REDIS_URL), terminal)
    return snapshot is None or snapshot.age() > django_settings.BRIDGE_SNAPSHOT_MAX_AGE


def _reader_sees_terminal_down(terminal: str) -> bool:
    status = reader_status(redis.Redis.from_url(django_settings.REDIS_URL), terminal)
    return status is not None and not status.get("terminal_ok", False)


def _assert_502(client, path, within: float = FAST, reason: str | None = None):
    response, took = _timed(client, path)
    assert response.status_code == 502, (path, response.status_code, response.content)
    error = response.json()["error"]
    assert error["code"] == "BridgeUnavailable"
    assert took < within, (path, took)
    if reason is not None:
        assert error["details"].get("reason") == reason, error
    return error


@pytest.fixture
def session_b(other_client, reads):
    open_session(other_client, "sim-b", 6001)
    return other_client


def test_reader_stopped_gracefully_is_502_at_once_and_snapshot_reads_still_answer(session_b, reads):
    assert session_b.get("/mt5/client/symbols/EURUSD").status_code == 200
    reads.readers["sim-b"].stop()
    for path in QUEUE_READS:
        _assert_502(session_b, path, within=0.5, reason="reader_down")
    # The poller is still up: snapshot-backed reads do not need the read process.
    body = session_b.get("/mt5/client/account").json()
    assert body["source"] == "snapshot" and body["login"] == 6001
    reads.start_reader("sim-b")
    assert session_b.get("/mt5/client/symbols/EURUSD").status_code == 200


def test_reader_killed_is_502_within_two_seconds(session_b, reads):
    assert session_b.get("/mt5/client/symbols/EURUSD").status_code == 200
    reads.readers["sim-b"].kill(signal.SIGKILL)  # no goodbye: its heartbeat just stops
    reads.readers["sim-b"].popen.wait(5)
    for path in QUEUE_READS:
        _assert_502(session_b, path)
    reads.start_reader("sim-b")
    wait_until(lambda: session_b.get("/mt5/client/symbols/EURUSD").status_code == 200, timeout=5)


def test_hung_terminal_is_502_within_two_seconds(session_b, stack):
    sim = stack.sims["sim-b"]
    assert session_b.get("/mt5/client/symbols/EURUSD").status_code == 200
    sim.kill(signal.SIGSTOP)  # the terminal stops answering (process frozen, socket open)
    try:
        for path in QUEUE_READS[:2]:
            _assert_502(session_b, path)
        # Snapshot reads: the poller is stuck too, so after BRIDGE_SNAPSHOT_MAX_AGE the snapshot is not
        # served and the fallback read cannot answer either.
        wait_until(lambda: _snapshot_stale("sim-b"), 10, "the snapshot of sim-b stale")
        _assert_502(session_b, "/mt5/client/account")
    finally:
        sim.kill(signal.SIGCONT)
    wait_until(lambda: session_b.get("/mt5/client/symbols/EURUSD").status_code == 200, timeout=15)


def test_stopped_terminal_is_502_fast_and_reads_come_back_with_it(session_b, stack, reads):
    old = stack.sims["sim-b"]
    assert session_b.get("/mt5/client/account").status_code == 200
    old.stop()  # the terminal process is gone (connection refused)
    try:
        # The reader notices at its next probe (every PROBE_SECONDS, 1 s, between BRPOPs of 0.5 s) and says
        # so in its next heartbeat (every BRIDGE_READER_HEARTBEAT_TTL / 4, 0.5 s): 2 s, plus room for a
        # loaded machine.
        wait_until(lambda: _reader_sees_terminal_down("sim-b"), 3.0, "the reader seeing sim-b down")
        for path in QUEUE_READS:
            _assert_502(session_b, path, within=0.5, reason="terminal_down")
        # ...and once the last snapshot is too old, snapshot reads fail fast too.
        wait_until(lambda: _snapshot_stale("sim-b"), 10, "the snapshot of sim-b stale")
        _assert_502(session_b, "/mt5/client/account")
    finally:
        # Same address, same state directory: the terminal comes back (for the next tests too)...
        stack.sims["sim-b"] = Proc(old.name, old.argv, old.env, old.log_path.parent).start()
        address = stack.addresses["sim-b"]
        wait_until(lambda: _ping(address), timeout=20)
    # ...and so do the reads.
    wait_until(lambda: session_b.get("/mt5/client/symbols/EURUSD").status_code == 200, timeout=10)
    body = wait_until(lambda: (r := session_b.get("/mt5/client/account")).status_code == 200 and r.json(), timeout=10)
    assert body["login"] == 6001


def _ping(address: str) -> bool:
    try:
        with Control(address, timeout=1) as ctl:
            return ctl.ping()
    except OSError:
        return False


def test_broker_disconnected_is_502(session_b, stack):
    ctl = Control(stack.addresses["sim-b"])
    try:
        ctl.trade_server(False)
        error = wait_until(lambda: (r := session_b.get("/mt5/client/symbols/EURUSD")).status_code == 502
                           and r.json()["error"], timeout=3)
        assert error["details"]["reason"] == "broker_disconnected"
        error = wait_until(lambda: (r := session_b.get("/mt5/client/account")).status_code == 502
                           and r.json()["error"], timeout=3)
        assert error["code"] == "BridgeUnavailable"
    finally:
        ctl.trade_server(True)
        ctl.close()
    wait_until(lambda: session_b.get("/mt5/client/account").status_code == 200, timeout=5)


def test_reads_answer_while_the_order_worker_is_busy_with_a_slow_order(session_a, stack):
    ctl = Control(stack.addresses["sim-a"])
    ctl.delay(6.0, methods=["order_send"])
    try:
        placed = session_a.post("/mt5/client/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1},
                                format="json", HTTP_X_REQUEST_ID=f"slow-{time.time()}")
        assert placed.status_code == 202, placed.content
        task_id = placed.json()["taskId"]
        # The pinned worker has taken the task and sits in order_send (6 s at the terminal).
        wait_until(lambda: session_a.get(f"/mt5/client/tasks/{task_id}").json()["state"] == "dispatched", timeout=5)
        busy_since = time.monotonic()
        for path in ("/mt5/client/account", "/mt5/client/positions", "/mt5/client/symbols/EURUSD",
                     "/mt5/client/quotes/EURUSD", "/mt5/client/quotes/history?symbol=EURUSD&timeframe=M1&count=100",
                     "/mt5/client/ticks/EURUSD?count=50", "/mt5/client/history/deals"):
            response, took = _timed(session_a, path)
            assert response.status_code == 200, (path, response.content)
            assert took < 1.0, (path, took)
        assert session_a.get(f"/mt5/client/tasks/{task_id}").json()["state"] == "dispatched"  # still busy
        assert time.monotonic() - busy_since < 6.0
    finally:
        ctl.delay(0)
        ctl.close()
    done = wait_until(lambda: (t := session_a.get(f"/mt5/client/tasks/{task_id}").json())["state"]
                      not in ("queued", "dispatched") and t, timeout=15)
    assert done["state"] == "filled", done
