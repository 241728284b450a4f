"""The outbox sweeper re-publishes only where it helps (issue #10).

Real parts: a private redis-server as the Celery broker, the terminal's pinned worker on it (killed
and started again), mt5sim, PostgreSQL. What the broker holds is read from Redis itself: the queue
list ``terminal.<name>`` and kombu's ``unacked`` hash.

* a task whose message was lost is not re-published while the terminal's worker is dead (the
  queue would only pile up copies), and is re-published once the worker is alive again;
* a task whose message is still in the queue, or delivered and not yet acknowledged, is not
  re-published; once the queue list is deleted (the message lost) it is, exactly once.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from bridge_project.celery import app
from terminals.models import Terminal
from tests.faults.conftest import TERMINAL, wait_until
from tests.orders.conftest import LOGIN, open_session, wait_final
from trading.models import TaskState, TradeTask
from trading.outbox import sweep_outbox, task_id_of

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}
QUEUE = f"terminal.{TERMINAL}"
REPUBLISH_AFTER = 0.5


def _post(client, sid: str, rid: str) -> str:
    r = client.post(f"{BASE}/orders", ORDER, format="json", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid)
    assert r.status_code == 202, r.content
    return r.json()["taskId"]


def _queued_ids(broker) -> list[str]:
    """Task ids of the messages in the terminal's queue list, read raw (the id is in the message)."""
    raw = broker.lrange(QUEUE, 0, -1)
    ids = [task_id_of(message) for message in raw]
    assert all(i and i.encode() in message for i, message in zip(ids, raw, strict=True)), raw
    return ids


def _unacked_ids(broker) -> list[str]:
    return [task_id_of(entry) for entry in broker.hvals("unacked")]


def _stale(*task_ids: str) -> bool:
    """Every task was last published more than BRIDGE_OUTBOX_REPUBLISH_AFTER ago."""
    tasks = TradeTask.objects.filter(id__in=task_ids)
    cutoff = timezone.now().timestamp() - REPUBLISH_AFTER - 0.1
    return all((t.published_at or t.created_at).timestamp() < cutoff for t in tasks)


def _worker_alive() -> bool:
    return Terminal.objects.get(name=TERMINAL).worker_alive()


def test_no_republish_to_a_dead_workers_queue_then_once_it_is_back(
        stack, client, sim, private_worker, on_private_redis, settings) -> None:
    settings.BRIDGE_OUTBOX_REPUBLISH_AFTER = REPUBLISH_AFTER
    broker = on_private_redis.client()
    sid = open_session(client, TERMINAL)
    # The worker publishes the symbol specs right after the login: let it finish before it dies.
    wait_until(lambda: broker.hexists(f"bridge:symspec:{TERMINAL}", "__meta__"), 15, "specs published")
    private_worker.proc.kill()  # SIGKILL: no goodbye, its heartbeat just stops
    wait_until(lambda: not _worker_alive(), 15, "worker seen dead")

    task_id = _post(client, sid, "sw-dead-1")
    assert _queued_ids(broker) == [task_id]
    broker.delete(QUEUE)  # the message is lost (a Redis restart would do the same)
    wait_until(lambda: _stale(task_id), 10, "stale")
    published_at = TradeTask.objects.get(id=task_id).published_at
    for _ in range(3):
        assert sweep_outbox() == 0
    assert broker.llen(QUEUE) == 0, _queued_ids(broker)
    task = TradeTask.objects.get(id=task_id)
    assert task.state == TaskState.QUEUED and task.published_at == published_at

    private_worker.start()
    wait_until(_worker_alive, 15, "worker alive again")
    wait_until(lambda: sweep_outbox() == 1, 10, "re-published")
    task = wait_final(task_id, timeout=30)
    assert task.state == "filled", task.result
    assert len(sim(TERMINAL).history_orders(task.tag)) == 1


def test_no_republish_of_a_task_its_queue_holds_but_of_one_whose_message_was_lost(
        stack, client, sim, control, private_worker, on_private_redis, settings) -> None:
    settings.BRIDGE_OUTBOX_REPUBLISH_AFTER = REPUBLISH_AFTER
    broker = on_private_redis.client()
    sid = open_session(client, TERMINAL)
    ctl = control(TERMINAL)
    ctl.delay(8, ["order_send"])  # the worker (solo pool) is busy with the first task: nothing else moves
    busy = _post(client, sid, "sw-held-0")
    wait_until(lambda: TradeTask.objects.get(id=busy).state == TaskState.DISPATCHED, 15, "first task claimed")
    second, third = _post(client, sid, "sw-held-1"), _post(client, sid, "sw-held-2")
    assert sorted(_queued_ids(broker)) == sorted([second, third])

    # A consumer takes the older message and does not acknowledge it: it now sits in kombu's
    # ``unacked`` hash, as a worker's delivered message does.
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(QUEUE)
        message = queue.get(block=True, timeout=5)
        taken = message.payload[0][0]
        left = third if taken == second else second
        assert taken in (second, third) and taken in _unacked_ids(broker)
        assert _queued_ids(broker) == [left]
        assert _worker_alive()

        wait_until(lambda: _stale(second, third), 10, "stale")
        for _ in range(3):
            assert sweep_outbox() == 0  # one in the list, one delivered: both held
        assert _queued_ids(broker) == [left] and taken in _unacked_ids(broker)

        broker.delete(QUEUE)  # the message of ``left`` is lost
        assert sweep_outbox() == 1
        assert _queued_ids(broker) == [left]  # re-published once, and only that one
        assert sweep_outbox() == 0  # fresh publish (and held again): nothing more
        assert _queued_ids(broker) == [left]
        queue.close()  # closing without ack gives the taken message back to the queue (kombu restore)

    ctl.delay(0)
    for task_id in (busy, second, third):
        task = wait_final(task_id, timeout=60)
        assert task.state == "filled", (task.id, task.result)
        assert len(sim(TERMINAL).history_orders(task.tag)) == 1, task.id


def test_a_task_whose_delivery_died_with_its_worker_is_republished_not_left_for_the_visibility_timeout(
        stack, client, sim, control, private_worker, on_private_redis, settings) -> None:
    """Found by bench/chaos.py: a worker SIGKILLed after kombu delivered a message but before it claimed
    the task leaves the message in ``unacked`` until the visibility timeout (300 s); the task must not
    wait that long behind a live, idle worker."""
    settings.BRIDGE_OUTBOX_REPUBLISH_AFTER = REPUBLISH_AFTER
    settings.BRIDGE_OUTBOX_DELIVERY_GRACE = 2.0
    broker = on_private_redis.client()
    sid = open_session(client, TERMINAL, login=LOGIN + 400)  # an account of its own: its margin is its own
    ctl = control(TERMINAL)
    ctl.delay(6, ["order_send"])  # the worker is busy with a first task: the next message waits in the list
    busy = _post(client, sid, "sw-died-0")
    wait_until(lambda: TradeTask.objects.get(id=busy).state == TaskState.DISPATCHED, 15, "first task claimed")
    orphan = _post(client, sid, "sw-died-1")
    # A consumer takes the message and never acknowledges it, as a worker killed right after the delivery.
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(QUEUE)
        assert queue.get(block=True, timeout=5).payload[0][0] == orphan
        assert orphan in _unacked_ids(broker) and _queued_ids(broker) == []
        wait_until(lambda: _stale(orphan), 10, "stale")
        assert sweep_outbox() == 0  # a fresh delivery: the worker may be about to claim it
        wait_until(lambda: sweep_outbox() == 1, 10, "re-published once the delivery is older than the grace")
        assert _queued_ids(broker) == [orphan]
        ctl.delay(0)
        task = wait_final(orphan, timeout=30)
        assert task.state == "filled" and len(sim(TERMINAL).history_orders(task.tag)) == 1
        queue.close()  # the dead delivery comes back from kombu: its claim is refused (the task is final)
    assert wait_final(busy, timeout=30).state == "filled"
    assert len(sim(TERMINAL).history_orders(TradeTask.objects.get(id=orphan).tag)) == 1
