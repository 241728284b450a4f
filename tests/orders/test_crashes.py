"""Crash tests that can fail: the pinned worker is SIGKILLed at the dangerous points of the execution
path, and Redis is restarted under queued tasks. After recovery every task is final and has exactly
one order at the broker, counted in mt5sim's own history (not in the bridge's records).

(a)/(b) use the test-only crash points of trading.execution (BRIDGE_CRASH_AT, set only here); (c)
kills the worker from outside while the emulator holds its order_send (mt5sim ``delay``).
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest
import redis
from django.utils import timezone

import mt5sim
from tests.conftest import Stack
from tests.orders.conftest import LOGIN, PASSWORD, open_session, wait_final
from tests.procs import PYTHON, Proc, free_port, start_manage
from tests.waiting import wait_until
from trading.execution import BATCH_GRACE
from trading.models import FINAL_STATES, TaskTransition, TradeTask
from workers.tasks import execute_task, reconcile_all_task

pytestmark = pytest.mark.django_db(transaction=True)
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}
TERMINAL = "sim-b"


def _wait_dead(proc: Proc, timeout: float = 30.0) -> None:
    wait_until(lambda: not proc.alive(), timeout, f"{proc.name} dead")


def _wait_reconcile_due(task_id: str, after: float) -> None:
    """Until the task was dispatched more than ``after`` seconds ago (BRIDGE_RECONCILE_AFTER): from then
    on the periodic fan-out must pick its terminal."""
    def due() -> bool:
        dispatched = TradeTask.objects.get(id=task_id).dispatched_at
        return dispatched is not None and (timezone.now() - dispatched).total_seconds() > after

    wait_until(due, 10, f"{task_id} dispatched more than {after}s ago")


def _wait_batchable(task_id: str) -> None:
    """Until the task is older than BATCH_GRACE: from then on a batch claimed for another task takes it."""
    created = TradeTask.objects.get(id=task_id).created_at
    wait_until(lambda: timezone.now() - created > BATCH_GRACE, 5, f"{task_id} older than the batch grace")


def _restart(stack: Stack, env: dict[str, str] | None = None) -> Proc:
    stack.workers[TERMINAL].stop()
    return stack.start_worker(TERMINAL, env)


def _post(client, sid, rid, body=ORDER):
    r = client.post("/mt5/client/orders", body, format="json", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid)
    assert r.status_code == 202, r.content
    return r.json()["taskId"]


def _path(task: TradeTask) -> list[str]:
    return list(TaskTransition.objects.filter(task=task).state_changes().values_list("to_state", flat=True))


def test_a_killed_after_claim_before_order_send(stack, client, sim) -> None:
    crashing = _restart(stack, {"BRIDGE_CRASH_AT": "after_claim"})
    sid = open_session(client, TERMINAL)
    task_id = _post(client, sid, "crash-a")
    _wait_dead(crashing)
    task = TradeTask.objects.get(id=task_id)
    assert task.state == "dispatched" and task.sent_at is None and task.attempts == 1
    assert sim(TERMINAL).broker_orders_of(task) == []
    worker = stack.start_worker(TERMINAL)  # its start-up reconciliation settles the orphan
    task = wait_final(task_id)
    assert task.state == "filled" and task.attempts == 2, task.result
    assert len(sim(TERMINAL).broker_orders_of(task)) == 1
    transitions = TaskTransition.objects.filter(task=task).count()
    # A late redelivery of the same message (what Redis does after the visibility timeout) is a no-op.
    message = execute_task.apply_async(args=[task_id], queue=f"terminal.{TERMINAL}")
    # The worker took it and ran it to the end (else this proves nothing about a redelivery).
    wait_until(lambda: f"[{message.id}] succeeded" in worker.log(), 15, "the redelivered message consumed")
    task = TradeTask.objects.get(id=task_id)
    assert task.state == "filled" and task.attempts == 2
    assert TaskTransition.objects.filter(task=task).count() == transitions
    assert len(sim(TERMINAL).broker_orders_of(task)) == 1


def test_b_killed_after_order_send_returned_before_the_result_was_stored(stack, client, sim) -> None:
    crashing = _restart(stack, {"BRIDGE_CRASH_AT": "after_send"})
    sid = open_session(client, TERMINAL)
    task_id = _post(client, sid, "crash-b")
    _wait_dead(crashing)
    task = TradeTask.objects.get(id=task_id)
    assert task.state == "dispatched" and task.sent_at is not None and task.result is None
    assert len(sim(TERMINAL).broker_orders_of(task)) == 1  # it did execute
    stack.start_worker(TERMINAL)
    task = wait_final(task_id)
    assert task.state == "filled" and task.result["adopted"] is True and task.attempts == 1
    [order] = sim(TERMINAL).broker_orders_of(task)
    assert task.order_ticket == order.ticket and task.deal_ticket
    assert _path(task) == ["queued", "dispatched", "filled"]


def test_c_killed_during_an_order_send_the_emulator_delays(stack, client, sim, control, settings) -> None:
    env = {"BRIDGE_INFLIGHT_BOUND": "30", "BRIDGE_RECONCILE_AFTER": "1"}
    worker = _restart(stack, env)
    sid = open_session(client, TERMINAL)
    control(TERMINAL).delay(8.0, ["order_send"])
    task_id = _post(client, sid, "crash-c")
    wait_until(lambda: TradeTask.objects.get(id=task_id).sent_at is not None, 10, "order_send under way",
               interval=0.02)
    worker.kill(signal.SIGKILL)  # the order_send is in flight, held by the terminal
    _wait_dead(worker)
    stack.start_worker(TERMINAL, env)
    task = TradeTask.objects.get(id=task_id)
    # Start-up reconciliation looked, found nothing yet, and did NOT resend: the outcome is unknown.
    assert task.state == "unknown", (task.state, task.result)
    assert sim(TERMINAL).broker_orders_of(task) == []
    # The terminal executes the held request when its delay ends (the client is long gone).
    wait_until(lambda: sim(TERMINAL).broker_orders_of(task), 20, "the delayed order executed", interval=0.2)
    settings.BRIDGE_RECONCILE_AFTER = 1
    _wait_reconcile_due(task_id, 1)
    assert reconcile_all_task.apply().get() == [TERMINAL]  # beat's job: fan out to the terminal's queue
    task = wait_final(task_id)
    assert task.state == "filled" and task.result["adopted"] is True, task.result
    assert len(sim(TERMINAL).broker_orders_of(task)) == 1
    assert _path(task) == ["queued", "dispatched", "unknown", "filled"]


def test_d_killed_mid_batch_each_task_is_at_most_one_order_the_sent_adopted_the_unsent_failed(
        stack, client, sim, settings) -> None:
    """A batch (trading/execution.py: one claim, one commit of the send marks, then each order_send)
    killed after its third order_send: the three executed are adopted by tag, the three marked but never
    sent are proven not executed after the in-flight bound, none is sent twice."""
    env = {"BRIDGE_INFLIGHT_BOUND": "2", "BRIDGE_RECONCILE_AFTER": "1"}
    crashing = _restart(stack, {**env, "BRIDGE_CRASH_AT": "batch_send_3"})
    sid = open_session(client, TERMINAL)
    assert wait_final(_post(client, sid, "crash-d-warm")).state == "filled"  # a batch of one: no crash
    crashing.kill(signal.SIGSTOP)  # the worker takes nothing while the six are queued
    try:
        ids = [_post(client, sid, f"crash-d-{i}") for i in range(6)]
        _wait_batchable(ids[-1])
    finally:
        crashing.kill(signal.SIGCONT)
    _wait_dead(crashing)
    tasks = list(TradeTask.objects.filter(id__in=ids).order_by("created_at"))
    # One batch claimed the six and committed their six send marks before the first order_send.
    assert [(t.state, t.sent_at is not None, t.attempts) for t in tasks] == [("dispatched", True, 1)] * 6
    orders = {t.id: len(sim(TERMINAL).broker_orders_of(t)) for t in tasks}
    assert [orders[t.id] for t in tasks] == [1, 1, 1, 0, 0, 0], orders
    stack.start_worker(TERMINAL, env)  # its start-up reconciliation adopts what it finds by tag
    for task in tasks[:3]:
        done = wait_final(task.id)
        assert done.state == "filled" and done.result["adopted"] is True and done.attempts == 1, done.result
    settings.BRIDGE_RECONCILE_AFTER = 1
    for task in tasks[3:]:
        wait_until(lambda t=task: (timezone.now() - TradeTask.objects.get(id=t.id).sent_at).total_seconds() > 2.0,
                   10, "the in-flight bound passed since the send mark")
        _wait_reconcile_due(task.id, 1)
    assert reconcile_all_task.apply().get() == [TERMINAL]
    for task in tasks[3:]:
        done = wait_final(task.id)
        assert done.state == "failed" and done.result["error"]["code"] == "NotExecuted", done.result
        # unknown first when the start-up reconciliation came within the bound, else failed at once
        assert _path(done) in (["queued", "dispatched", "unknown", "failed"], ["queued", "dispatched", "failed"])
    for task in tasks:
        assert len(sim(TERMINAL).broker_orders_of(task)) == orders[task.id], task.id
    # Every message of the six is consumed (the queue drains) and none of them sends anything again.
    wait_until(lambda: redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(f"terminal.{TERMINAL}") == 0, 15,
               "the six messages consumed")
    for task in tasks:
        assert len(sim(TERMINAL).broker_orders_of(task)) == orders[task.id], task.id


def test_f_an_account_switched_by_hand_mid_batch_stops_the_batch(stack, client, sim, control) -> None:
    """A batch checks the terminal's account before its sends and again every ACCOUNT_RECHECK: someone
    logging the terminal in to another account by hand mid-batch stops it; the tasks not sent yet are
    cancelled (AccountMismatch) and none of them reaches either account. The send in flight at the switch
    is the window MetaTrader5 leaves (no "send on account X"): at most that one task may have an order."""
    worker = _restart(stack)
    sid = open_session(client, TERMINAL)
    assert wait_final(_post(client, sid, "switch-warm")).state == "filled"
    worker.kill(signal.SIGSTOP)
    try:
        ids = [_post(client, sid, f"switch-{i}") for i in range(6)]
        control(TERMINAL).delay(0.4, ["order_send"])  # each send of the batch takes 0.4 s
        _wait_batchable(ids[-1])
    finally:
        worker.kill(signal.SIGCONT)
    first = TradeTask.objects.get(id=ids[0])
    wait_until(lambda: len(sim(TERMINAL).broker_orders_of(first)) == 1, 20, "the batch's first order at the broker")
    _login_terminal(stack.addresses[TERMINAL], LOGIN + 777)  # by hand, mid-batch
    tasks = [wait_final(task_id, timeout=40) for task_id in ids]
    on_other = {t.id: len(sim(TERMINAL).broker_orders_of(t)) for t in tasks}
    _login_terminal(stack.addresses[TERMINAL], LOGIN)
    on_own = {t.id: len(sim(TERMINAL).broker_orders_of(t)) for t in tasks}
    cancelled = [t for t in tasks if t.state == "cancelled"]
    assert tasks[0].state == "filled" and on_own[tasks[0].id] == 1
    assert len(cancelled) >= 4, [(t.state, t.result) for t in tasks]  # all but the first and the one in flight
    for task in cancelled:
        assert task.result["error"]["code"] == "AccountMismatch", task.result
        assert on_other[task.id] == 0 and on_own[task.id] == 0, task.id
    assert sum(on_other.values()) <= 1 and all(on_own[t.id] + on_other[t.id] <= 1 for t in tasks)


def _login_terminal(address: str, login: int) -> None:
    """Log the terminal in to ``login`` by hand, as a person at the terminal would (not the bridge)."""
    assert mt5sim.initialize(address), mt5sim.last_error()
    try:
        assert mt5sim.login(login, password=PASSWORD, server="Demo"), mt5sim.last_error()
    finally:
        mt5sim.shutdown()


def test_e_a_batch_slower_than_the_send_window_marks_its_rest_again_before_sending(stack, client, sim, control) -> None:
    """No task of a batch is sent long after its send mark (recovery counts the in-flight bound from the
    mark): when the batch's sends outlast SEND_WINDOW (5 s), the rest is marked again (fenced) first."""
    worker = _restart(stack)
    sid = open_session(client, TERMINAL)
    assert wait_final(_post(client, sid, "slow-warm")).state == "filled"
    worker.kill(signal.SIGSTOP)
    try:
        ids = [_post(client, sid, f"slow-{i}") for i in range(2)]
        control(TERMINAL).delay(6.0, ["order_send"])  # each order_send of the batch takes 6 s
        _wait_batchable(ids[-1])
    finally:
        worker.kill(signal.SIGCONT)
    tasks = [wait_final(task_id, timeout=40) for task_id in ids]
    marks = {t.id: list(TaskTransition.objects.filter(task=t, detail__change="sent").values_list("at", flat=True))
             for t in tasks}
    assert [t.state for t in tasks] == ["filled", "filled"], [t.result for t in tasks]
    assert [len(sim(TERMINAL).broker_orders_of(t)) for t in tasks] == [1, 1]
    first, second = tasks
    assert len(marks[first.id]) == 1 and len(marks[second.id]) == 2, marks
    # The second's fresh mark came after the first's 6-second send, right before its own send.
    assert (marks[second.id][1] - marks[first.id][0]).total_seconds() > 5.0
    assert TradeTask.objects.get(id=second.id).sent_at == marks[second.id][1]


def test_sent_but_never_executed_fails_after_the_in_flight_bound(stack, client, sim, control, settings) -> None:
    _restart(stack, {"BRIDGE_INFLIGHT_BOUND": "2", "BRIDGE_RECONCILE_AFTER": "1"})
    sid = open_session(client, TERMINAL)
    control(TERMINAL).ipc_timeout("order_send", 1, execute=False)
    task = wait_final(_post(client, sid, "lost-1"), states=("unknown",))
    assert task.result["error"]["code"] == "OutcomeUnknown" and task.result["error"]["mt5"] == -10005
    # Past the in-flight bound (2 s after order_send) nothing can still arrive: the order is proven lost.
    wait_until(lambda: (timezone.now() - TradeTask.objects.get(id=task.id).sent_at).total_seconds() > 2.0, 10,
               "the in-flight bound passed since order_send")
    settings.BRIDGE_RECONCILE_AFTER = 1
    _wait_reconcile_due(task.id, 1)
    assert reconcile_all_task.apply().get() == [TERMINAL]
    task = wait_final(task.id)
    assert task.state == "failed" and task.result["error"]["code"] == "NotExecuted"
    assert sim(TERMINAL).broker_orders_of(task) == []


@pytest.fixture
def private_redis(stack: Stack):
    """A redis-server of this test only (never the shared one), restartable on the same port."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs: list[Proc] = []

    def start() -> Proc:
        proc = Proc(f"redis-{port}-{len(procs)}", argv, dict(os.environ), stack.log_dir).start()
        procs.append(proc)
        client = redis.Redis(port=port)

        def pong() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(pong, 10, "redis answering PING")
        return proc

    start()
    yield port, start, procs
    for proc in procs:
        proc.stop()


def _http(method: str, url: str, body: dict | None, headers: dict[str, str]) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_redis_restart_while_tasks_are_queued(stack, api_key, sim, control, private_redis) -> None:
    port, start_redis, procs = private_redis
    url = f"redis://127.0.0.1:{port}/0"
    env = {**stack.env, "REDIS_URL": url, "CELERY_BROKER_URL": url, "BRIDGE_OUTBOX_REPUBLISH_AFTER": "2",
           "BRIDGE_OUTBOX_SWEEP_INTERVAL": "1", "BRIDGE_RECONCILE_INTERVAL": "2", "BRIDGE_RECONCILE_AFTER": "2"}
    stack.workers[TERMINAL].stop()
    started: list[Proc] = []
    try:
        worker = start_manage(f"redis-worker-{port}", ["run_terminal_worker", TERMINAL], env, stack.log_dir)
        started.append(worker)
        worker.wait_log("ready", timeout=60)
        web_port = free_port()
        web = Proc(f"web-{web_port}", [PYTHON, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(web_port),
                                       "--log-level", "warning", "bridge_project.asgi:application"],
                   env, stack.log_dir).start()
        started.append(web)
        web.wait_for(lambda: _port_open(web_port), 30, "listening")
        base = f"http://127.0.0.1:{web_port}/mt5/client"
        auth = {"Authorization": f"Bearer {api_key}"}
        status, body = _http("POST", f"{base}/session/open?wait=15", {"accountId": "r", "server": "Demo",
                                                                       "login": LOGIN, "password": PASSWORD,
                                                                       "terminal": TERMINAL}, auth)
        assert status == 201 and body["status"] == "active", body
        headers = {**auth, "x-session-id": body["sessionId"]}
        control(TERMINAL).delay(1.5, ["order_send"])  # the worker drains slowly: tasks stay queued
        ids = []
        for i in range(6):
            status, task = _http("POST", f"{base}/orders", ORDER, {**headers, "x-request-id": f"redis-{i}"})
            assert status == 202, task
            ids.append(task["taskId"])
        assert redis.Redis(port=port).llen(f"terminal.{TERMINAL}") >= 3  # queued messages in Redis
        procs[-1].kill(signal.SIGKILL)  # Redis dies without persistence: the queue is gone
        _wait_dead(procs[-1])
        start_redis()
        assert redis.Redis(port=port).llen(f"terminal.{TERMINAL}") == 0
        control(TERMINAL).delay(0)
        # The outbox sweeper (beat on the maintenance worker) re-publishes what is still queued.
        maintenance = start_manage(f"maintenance-{port}", ["run_maintenance_worker", "--beat"], env, stack.log_dir)
        started.append(maintenance)
        for task_id in ids:
            task = wait_final(task_id, timeout=60)
            assert task.state == "filled", (task.id, task.state, task.result)
            assert len(sim(TERMINAL).broker_orders_of(task)) == 1, task.id
        assert TradeTask.objects.filter(id__in=ids).exclude(state__in=FINAL_STATES).count() == 0
    finally:
        for proc in reversed(started):
            proc.stop()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
