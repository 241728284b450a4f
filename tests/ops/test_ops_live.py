"""Ops endpoints, /metrics and bridge_status against the real stack: mt5sim terminals, pinned workers,
the Celery broker in Redis, the ledger in PostgreSQL."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.conftest import Stack
from tests.ops.conftest import drain_queue
from tests.waiting import wait_until
from trading.models import FINAL_STATES, TradeTask

pytestmark = pytest.mark.django_db(transaction=True)

TERMINALS = "/mt5/client/ops/terminals"


def _open(client: APIClient, terminal: str, login: int) -> str:
    r = client.post("/mt5/client/session/open?wait=20",
                    {"accountId": f"acc-{login}", "server": "Demo", "login": login, "password": "pw",
                     "terminal": terminal}, format="json")
    assert r.status_code == 201 and r.json()["status"] == "active", r.content
    return r.json()["sessionId"]


def _terminal(ops_client: APIClient, name: str) -> dict:
    r = ops_client.get(TERMINALS)
    assert r.status_code == 200, r.content
    return {t["name"]: t for t in r.json()["terminals"]}[name]


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in Prometheus text (None when absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return None


def _wait_alive(ops_client: APIClient, name: str, timeout: float = 20.0) -> dict:
    """Terminal rows are flushed between transactional tests: wait for the worker's next beat."""
    return wait_until(lambda: (state := _terminal(ops_client, name))["worker"]["alive"] and state, timeout,
                      f"the worker of {name} shown alive", interval=0.1)


def _restart_worker(stack: Stack, name: str, **env: str):
    stack.workers[name].stop()
    return stack.start_worker(name, env)


def test_terminals_show_live_workers_and_the_bound_session(stack: Stack, client: APIClient,
                                                           ops_client: APIClient) -> None:
    sid = _open(client, "sim-a", 7101)
    _wait_alive(ops_client, "sim-b")
    a = _wait_alive(ops_client, "sim-a")
    assert a["backend"] == "sim" and a["address"] == stack.addresses["sim-a"]
    assert a["worker"]["alive"] is True
    assert 0 <= a["worker"]["heartbeatAge"] <= 3 * 5.0
    assert a["worker"]["hostname"].startswith("sim-a@")
    assert a["session"]["sessionId"] == sid and a["session"]["status"] == "active"
    assert a["session"]["login"] == 7101 and a["session"]["workspace"] == "ws-main"
    assert a["queueDepth"] == 0 and a["queuedTasks"] == 0 and a["oldestQueuedTaskAge"] is None
    assert a["binding"] == {"sessionId": sid, "login": 7101, "server": a["binding"]["server"],
                            "since": a["binding"]["since"]} and a["binding"]["server"]
    assert a["lease"]["held"] is True and a["lease"]["holder"].startswith("sim-a@") and a["lease"]["token"] >= 1
    b = _terminal(ops_client, "sim-b")
    assert b["worker"]["alive"] is True and b["session"] is None
    client.delete(f"/mt5/client/session/{sid}")
    after = _terminal(ops_client, "sim-a")
    assert after["session"] is None and after["binding"] is None


def test_a_killed_worker_shows_down_within_its_heartbeat_grace(stack: Stack, ops_client: APIClient,
                                                               settings) -> None:
    interval = 1.0
    settings.BRIDGE_WORKER_HEARTBEAT_INTERVAL = interval
    worker = _restart_worker(stack, "sim-b", BRIDGE_WORKER_HEARTBEAT_INTERVAL=str(interval))
    state = wait_until(lambda: (s := _terminal(ops_client, "sim-b"))["worker"]["alive"]
                       and s["worker"]["heartbeatAge"] <= interval and s, 10, "a fresh heartbeat", interval=0.1)
    beat_before = state["worker"]["lastHeartbeat"]
    # It keeps beating: the heartbeat moves on within a couple of intervals (polled gently: the ops API
    # is rate limited, BRIDGE_THROTTLE_OPS_RATE, and this test reads it often).
    wait_until(lambda: _terminal(ops_client, "sim-b")["worker"]["lastHeartbeat"] > beat_before, 2.5 * interval,
               "the next heartbeat", interval=0.25)

    worker.kill()  # SIGKILL: a crash, nothing is cleaned up
    killed = time.monotonic()
    while _terminal(ops_client, "sim-b")["worker"]["alive"]:
        assert time.monotonic() - killed < 3 * interval + 2.0, "worker still shown alive"
        time.sleep(0.1)
    detected = time.monotonic() - killed
    # Down once its last beat is older than the grace (3 heartbeat intervals, the rule the session
    # allocator uses too): at most 3 intervals after the crash, not before 2 (it beat < 1 interval ago).
    assert 2 * interval - 0.5 <= detected <= 3 * interval + 2.0, detected
    print(f"killed worker shown down after {detected:.2f}s (heartbeat interval {interval}s)")
    text = ops_client.get("/metrics").content.decode()
    assert _metric(text, "bridge_worker_up", terminal="sim-b") == 0.0
    assert _metric(text, "bridge_worker_heartbeat_age_seconds", terminal="sim-b") >= 3 * interval


def test_queued_task_age_grows_queue_depth_from_broker_then_drains(
    stack: Stack, client: APIClient, ops_client: APIClient, settings, clean_metrics: None,
) -> None:
    settings.BRIDGE_OPS_STUCK_AFTER = 1.0
    settings.BRIDGE_METRICS_SETTLE_SECONDS = 0.0
    sid = _open(client, "sim-b", 7102)
    stack.workers["sim-b"].stop()  # nobody consumes terminal.sim-b now
    try:
        r = client.post("/mt5/client/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}, format="json",
                        HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="ops-age-1")
        assert r.status_code == 202, r.content
        task_id = r.json()["taskId"]

        first = _terminal(ops_client, "sim-b")
        assert first["queueDepth"] == 1  # the message itself, read from the broker (LLEN)
        assert first["queuedTasks"] == 1 and first["oldestQueuedTaskAge"] >= 0
        assert _terminal(ops_client, "sim-a")["queueDepth"] == 0
        # Time itself is the subject: the reported age must grow with the clock while nothing drains.
        time.sleep(1.5)
        later = _terminal(ops_client, "sim-b")
        assert later["oldestQueuedTaskAge"] >= first["oldestQueuedTaskAge"] + 1.4

        tasks = ops_client.get("/mt5/client/ops/tasks?state=queued&older_than=1").json()["tasks"]
        assert tasks[0]["taskId"] == task_id and tasks[0]["stuck"] is True and tasks[0]["terminal"] == "sim-b"
        assert ops_client.get("/mt5/client/ops/tasks?state=queued&older_than=3600").json()["tasks"] == []

        text = ops_client.get("/metrics").content.decode()
        assert _metric(text, "bridge_queue_depth", terminal="sim-b") == 1.0
        assert _metric(text, "bridge_queued_tasks", terminal="sim-b") == 1.0
        assert _metric(text, "bridge_oldest_queued_task_age_seconds", terminal="sim-b") >= 1.4
        assert _metric(text, "bridge_tasks", state="queued", kind="order.create") == 1.0

        stack.start_worker("sim-b")  # the worker comes back and drains its queue
        wait_until(lambda: TradeTask.objects.get(id=task_id).state in FINAL_STATES, 30, f"{task_id} final",
                   interval=0.1)
        assert TradeTask.objects.get(id=task_id).state == "filled"
        drained = _terminal(ops_client, "sim-b")
        assert drained["queueDepth"] == 0 and drained["queuedTasks"] == 0 and drained["oldestQueuedTaskAge"] is None

        text = ops_client.get("/metrics").content.decode()
        assert _metric(text, "bridge_tasks_finished_total", state="filled", kind="order.create") == 1.0
        assert _metric(text, "bridge_tasks", state="queued", kind="order.create") is None
        assert _metric(text, "bridge_task_accept_to_final_seconds_count", kind="order.create") == 1.0
        assert _metric(text, "bridge_task_accept_to_final_seconds_bucket", kind="order.create", le="0.5") == 0.0
        assert _metric(text, "bridge_task_accept_to_final_seconds_bucket", kind="order.create", le="+Inf") == 1.0
        assert _metric(text, "bridge_task_accept_to_final_seconds_sum", kind="order.create") >= 1.4
        # A second scrape folds nothing twice.
        text = ops_client.get("/metrics").content.decode()
        assert _metric(text, "bridge_task_accept_to_final_seconds_count", kind="order.create") == 1.0
    finally:
        drain_queue("sim-b")
        client.delete(f"/mt5/client/session/{sid}")


def test_process_counters_reach_metrics(ops_client: APIClient, clean_metrics: None) -> None:
    from bridge_project import metrics

    metrics.reconciliation_outcome("filled")
    metrics.broker_order_orphaned("sim-a")
    metrics.observe("bridge_http_request_seconds", 0.02, method="GET", status="2xx")
    text = ops_client.get("/metrics").content.decode()
    assert _metric(text, "bridge_reconciliation_outcomes_total", outcome="filled") == 1.0
    assert _metric(text, "bridge_broker_orders_orphaned_total", terminal="sim-a") == 1.0
    assert _metric(text, "bridge_http_request_seconds_bucket", method="GET", status="2xx", le="0.01") == 0.0
    assert _metric(text, "bridge_http_request_seconds_bucket", method="GET", status="2xx", le="0.025") == 1.0
    assert _metric(text, "bridge_http_request_seconds_count", method="GET", status="2xx") == 1.0


def test_bridge_status_prints_what_ops_terminals_shows(stack: Stack, client: APIClient,
                                                       ops_client: APIClient) -> None:
    sid = _open(client, "sim-a", 7103)
    _wait_alive(ops_client, "sim-a")
    out = io.StringIO()
    call_command("bridge_status", "--json", stdout=out)
    printed = {t["name"]: t for t in json.loads(out.getvalue())["terminals"]}
    served = {t["name"]: t for t in ops_client.get(TERMINALS).json()["terminals"]}
    assert printed.keys() == served.keys() >= {"sim-a", "sim-b"}
    for name in printed:
        for key in ("backend", "address", "queueDepth", "queuedTasks"):
            assert printed[name][key] == served[name][key]
        assert printed[name]["worker"]["alive"] == served[name]["worker"]["alive"]
        assert (printed[name]["session"] or {}).get("sessionId") == (served[name]["session"] or {}).get("sessionId")
    table = io.StringIO()
    call_command("bridge_status", stdout=table)
    lines = table.getvalue().splitlines()
    row_a = next(line for line in lines if line.startswith("sim-a "))
    assert "alive" in row_a and sid in row_a
    client.delete(f"/mt5/client/session/{sid}")


def test_events_published_counts_what_the_publisher_sends(ops_client: APIClient) -> None:
    from streams.publisher import publish_session_event

    before = _metric(ops_client.get("/metrics").content.decode(), "bridge_events_published_total")
    assert before is not None
    for i in range(3):
        publish_session_event("sess_ops_metrics", "order", {"taskId": f"tsk_{i}", "state": "filled"})
    publish_session_event("sess_ops_metrics", "quote:EURUSD", {"symbol": "EURUSD", "bid": 1.1, "ask": 1.2})
    after = _metric(ops_client.get("/metrics").content.decode(), "bridge_events_published_total")
    assert after == before + 4


def test_client_requests_are_timed_into_the_histogram(client: APIClient, ops_client: APIClient,
                                                      clean_metrics: None) -> None:
    for _ in range(3):
        assert client.get("/mt5/client/session/sess_unknown").status_code == 404
    assert client.post("/mt5/client/session/open", {}, format="json").status_code == 400
    text = ops_client.get("/metrics").content.decode()
    assert _metric(text, "bridge_http_request_seconds_count", method="GET", status="4xx") == 3.0
    assert _metric(text, "bridge_http_request_seconds_count", method="POST", status="4xx") == 1.0
    assert _metric(text, "bridge_http_request_seconds_bucket", method="GET", status="4xx", le="+Inf") == 3.0
    assert _metric(text, "bridge_http_request_seconds_sum", method="GET", status="4xx") > 0
    # /metrics and other non-client paths are not timed.
    assert _metric(text, "bridge_http_request_seconds_count", method="GET", status="2xx") is None
