"""Terminal ownership, proven against the faults that would break it: a second tenant on the same
terminal with a slow login, a session that ends under queued tasks, an account switched under the
running worker, and two workers started for one terminal. What the broker did is read from mt5sim's
own records, never from the bridge's."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

import mt5sim
from sessions.models import BridgeSession, SessionTransition
from terminals.models import Terminal
from tests.conftest import Stack
from tests.orders.conftest import LOGIN, PASSWORD, open_session, wait_final
from tests.waiting import wait_until
from trading.execution import BATCH_SIZE
from trading.models import TaskTransition, TradeTask
from trading.outbox import publish_task
from trading.reconciliation import reconciliation_request

pytestmark = pytest.mark.django_db(transaction=True)
TERMINAL = "sim-b"
BUY = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}


@pytest.fixture
def extra_workers(stack: Stack):
    """Start more workers of TERMINAL; each is stopped after the test unless it became the stack's own."""
    started = []

    def start(env: dict[str, str] | None = None):
        proc = stack.start_worker_waiting(TERMINAL, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if stack.workers.get(TERMINAL) is not proc:
            proc.stop()


def _post(client: APIClient, sid: str, rid: str, path: str = "/mt5/client/orders", body: dict | None = None):
    return client.post(path, BUY if body is None else body, format="json", HTTP_X_SESSION_ID=sid,
                       HTTP_X_REQUEST_ID=rid)


def _holding(worker) -> None:
    """Wait until ``worker`` holds its terminal's lease (the test database is flushed between tests,
    and a worker takes the lease of a re-created terminal row at its next heartbeat)."""
    wait_until(lambda: Terminal.objects.filter(name=TERMINAL, lease_holder__endswith=f":{worker.pid}",
                                          lease_expires_at__isnull=False).exists(), 20, "the worker holds the lease")


def _login_terminal(address: str, login: int, password: str = PASSWORD) -> None:
    """Log the terminal in to ``login`` by hand, as a person at the terminal would (not the bridge)."""
    assert mt5sim.initialize(address), mt5sim.last_error()
    try:
        assert mt5sim.login(login, password=password, server="Demo"), mt5sim.last_error()
    finally:
        mt5sim.shutdown()


def test_a_second_tenant_with_a_slow_login_never_touches_the_first_tenants_account(
        stack: Stack, client: APIClient, other_client: APIClient, sim, control) -> None:
    # A trades on the terminal, then leaves.
    sid_a = open_session(client, TERMINAL)
    filled = wait_final(_post(client, sid_a, "own-a-1").json()["taskId"])
    assert filled.state == "filled"
    ticket = filled.position_ticket
    client.delete(f"/mt5/client/session/{sid_a}")
    # B (another workspace) opens on the same terminal with A's login and a wrong password; the
    # terminal takes 3 s to log in (a real MT5 login takes seconds).
    control(TERMINAL).delay(3.0, ["login"])
    opened = other_client.post("/mt5/client/session/open",
                               {"accountId": "b", "server": "Demo", "login": LOGIN, "password": "not-A's",
                                "terminal": TERMINAL}, format="json")
    assert opened.status_code == 201 and opened.json()["status"] == "opening", opened.content
    sid_b = opened.json()["sessionId"]
    # While opening: every write and every terminal read is 409 SessionNotReady, and nothing is queued.
    close = _post(other_client, sid_b, "own-b-close", f"/mt5/client/positions/{ticket}/close", {})
    assert close.status_code == 409 and close.json()["error"]["code"] == "SessionNotReady", close.content
    assert close.json()["error"]["details"] == {"sessionId": sid_b, "status": "opening"}
    for path in ("/mt5/client/positions", "/mt5/client/account", "/mt5/client/history/deals",
                 f"/mt5/client/positions/{ticket}"):
        read = other_client.get(path, HTTP_X_SESSION_ID=sid_b)
        assert read.status_code == 409 and read.json()["error"]["code"] == "SessionNotReady", (path, read.content)
    assert not TradeTask.objects.filter(session_id=sid_b).exists()
    # The login fails; B's session ends and B's id is refused from then on.
    session = wait_until(lambda: BridgeSession.objects.filter(id=sid_b, status="login_failed").first(), 20, "login_failed")
    assert session.error_code == -6
    assert list(SessionTransition.objects.filter(session_id=sid_b).status_changes().values_list("to_status", flat=True)) == [
        "opening", "login_failed"]
    again = _post(other_client, sid_b, "own-b-close-2", f"/mt5/client/positions/{ticket}/close", {})
    assert again.status_code == 401 and again.json()["error"]["code"] == "SessionExpired"
    # A's position is still open at the broker: B closed nothing.
    _login_terminal(stack.addresses[TERMINAL], LOGIN)
    assert ticket in {p.ticket for p in sim(TERMINAL).positions()}
    control(TERMINAL).delay(0)


def test_a_session_that_ends_takes_its_queued_tasks_with_it(stack: Stack, client: APIClient, sim) -> None:
    sid = open_session(client, TERMINAL)
    # One order first: the worker has published the account's symbol specs (a write validates
    # against them) before it stops.
    assert wait_final(_post(client, sid, "own-end-0").json()["taskId"]).state == "filled"
    worker = stack.workers[TERMINAL]
    handled_before = worker.log().count("'skipped-cancelled'")
    os.kill(worker.pid, signal.SIGSTOP)  # the worker is busy elsewhere: the task waits in the queue
    try:
        accepted = _post(client, sid, "own-end-1")
        assert accepted.status_code == 202 and accepted.json()["state"] == "queued"
        task_id = accepted.json()["taskId"]
        assert client.delete(f"/mt5/client/session/{sid}").json()["status"] == "closed"
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    task = TradeTask.objects.get(id=task_id)
    assert task.state == "cancelled" and task.result["error"]["code"] == "SessionEnded", task.result
    assert TaskTransition.objects.filter(task=task, to_state="cancelled").get().detail["reason"] == "closed"
    # The worker receives the message afterwards and must not send it.
    wait_until(lambda: worker.log().count("'skipped-cancelled'") > handled_before, 20, "the worker skipped the delivery")
    assert Terminal.objects.get(name=TERMINAL).bound_session_id == ""
    assert sim(TERMINAL).broker_orders_of(task) == []


def test_an_account_switched_under_the_worker_sends_nothing(stack: Stack, client: APIClient, sim) -> None:
    sid = open_session(client, TERMINAL)
    first = wait_final(_post(client, sid, "own-switch-0").json()["taskId"])
    assert first.state == "filled"
    # Someone logs the terminal in to another account by hand while the session is active.
    _login_terminal(stack.addresses[TERMINAL], LOGIN + 777)
    task = wait_final(_post(client, sid, "own-switch-1").json()["taskId"])
    assert task.state == "cancelled" and task.result["error"]["code"] == "AccountMismatch", task.result
    assert task.sent_at is None
    assert sim(TERMINAL).broker_orders_of(task) == []  # nothing on the other account
    _login_terminal(stack.addresses[TERMINAL], LOGIN)
    assert sim(TERMINAL).broker_orders_of(task) == []  # nor on the session's
    back = wait_final(_post(client, sid, "own-switch-2").json()["taskId"])
    assert back.state == "filled" and len(sim(TERMINAL).broker_orders_of(back)) == 1
    client.delete(f"/mt5/client/session/{sid}")


def test_the_same_request_id_under_another_account_is_a_conflict_not_a_replay(stack: Stack, client: APIClient) -> None:
    sid = open_session(client, TERMINAL)
    task_id = _post(client, sid, "own-acct-1").json()["taskId"]
    wait_final(task_id)
    client.delete(f"/mt5/client/session/{sid}")
    other = open_session(client, TERMINAL, login=LOGIN + 1)
    conflict = _post(client, other, "own-acct-1")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "TaskConflict"
    assert conflict.json()["error"]["details"]["taskId"] == task_id
    assert TradeTask.objects.filter(request_id="own-acct-1").count() == 1
    client.delete(f"/mt5/client/session/{other}")


def test_two_workers_for_one_terminal_never_execute_a_task_twice(stack: Stack, client: APIClient, sim,
                                                                 extra_workers) -> None:
    first = stack.workers[TERMINAL]
    sid = open_session(client, TERMINAL, login=LOGIN + 300)  # an account of its own; the first worker logs in
    _holding(first)
    second = extra_workers({"BRIDGE_INFLIGHT_BOUND": "2"})
    second.wait_log("another worker holds the lease", timeout=60)
    ids: list[str] = []
    lock = threading.Lock()

    def submit(prefix: str, count: int) -> None:
        api = APIClient()
        api.credentials(**client._credentials)
        for i in range(count):
            response = _post(api, sid, f"two-{prefix}-{i}", body={**BUY, "volume": 0.01})
            assert response.status_code == 202, response.content
            with lock:
                ids.append(response.json()["taskId"])

    threads = [threading.Thread(target=submit, args=(str(n), 75)) for n in range(4)]
    for thread in threads:
        thread.start()
    # Mid-run the first worker dies; the waiting one takes the lease over and goes on.
    wait_until(lambda: len(ids) >= 120, 60, "120 orders accepted")
    first.kill(signal.SIGKILL)
    killed_at = timezone.now()
    for thread in threads:
        thread.join()
    second.wait_log("ready", timeout=60)
    stack.workers[TERMINAL] = second
    for task_id in ids:
        task = TradeTask.objects.filter(id=task_id).first()
        if task.state == "queued":  # its message went down with the killed worker: the outbox re-publishes
            publish_task(task_id, TERMINAL)
    tasks = [wait_final(task_id, timeout=60, states=("filled", "unknown", "failed", "rejected")) for task_id in ids]
    # The task the killed worker was executing may be unknown (sent mark committed, order_send maybe not):
    # the new holder settles it from the terminal once the in-flight bound (2 s here) has passed.
    unsettled = [task.id for task in tasks if task.state == "unknown"]
    if unsettled:
        wait_until(lambda: time.time() - min(TradeTask.objects.get(id=t).sent_at.timestamp() for t in unsettled) > 2.5, 10,
              "the in-flight bound passed")
        reconciliation_request(task_ids=unsettled)
        tasks = [wait_final(task.id, timeout=30) if task.id in unsettled else task for task in tasks]
    by_tag: dict[str, int] = {}
    for order in sim(TERMINAL).history_orders():
        by_tag[order.comment[:12]] = by_tag.get(order.comment[:12], 0) + 1
    assert len(tasks) == 300
    assert {task.id: by_tag[task.tag] for task in tasks if by_tag.get(task.tag, 0) > 1} == {}  # no duplicate
    outcomes = {(task.state, by_tag.get(task.tag, 0)) for task in tasks}
    assert outcomes <= {("filled", 1), ("failed", 0)}, outcomes  # each final state matches the broker
    # Only what the killed worker had in flight may be lost: tasks it claimed, or whose send mark it committed, before it
    # died (one batch at most: the marks of a batch are committed together, then sent one by one), each
    # settled `failed` and absent at the broker (checked above). (Before batches: at most one task.)
    lost = [task for task in tasks if task.state != "filled"]
    assert len(lost) <= BATCH_SIZE, len(lost)
    assert all(task.sent_at is None or task.sent_at <= killed_at for task in lost), [
        (task.id, task.sent_at, killed_at) for task in lost]
    assert Terminal.objects.get(name=TERMINAL).lease_holder.endswith(f":{second.pid}")
    client.delete(f"/mt5/client/session/{sid}")


def test_a_stale_worker_resumed_after_losing_its_lease_is_fenced_and_exits(stack: Stack, client: APIClient,
                                                                          sim, extra_workers) -> None:
    sid = open_session(client, TERMINAL)
    stale = stack.workers[TERMINAL]
    _holding(stale)
    assert wait_final(_post(client, sid, "stale-0").json()["taskId"]).state == "filled"  # specs published
    os.kill(stale.pid, signal.SIGSTOP)  # an orphan: paused (a VM frozen), its lease runs out
    try:
        ids = [_post(client, sid, f"stale-{i}").json()["taskId"] for i in range(5)]
        fresh = extra_workers()
        fresh.wait_log("ready", timeout=60)  # it took the lease once the stale one's expired
    finally:
        os.kill(stale.pid, signal.SIGCONT)
    # Resumed, the stale worker's claim or sent-mark is refused by the fence and it exits at once.
    wait_until(lambda: not stale.alive(), 30, "the stale worker exits")
    assert "no longer current" in stale.log()
    stack.workers[TERMINAL] = fresh
    for task_id in ids:
        if TradeTask.objects.get(id=task_id).state == "queued":
            publish_task(task_id, TERMINAL)  # a message the stale worker had reserved: the outbox's job
    tasks = [wait_final(task_id, timeout=30) for task_id in ids]
    assert [task.state for task in tasks] == ["filled"] * 5
    assert [len(sim(TERMINAL).broker_orders_of(task)) for task in tasks] == [1] * 5
    client.delete(f"/mt5/client/session/{sid}")
