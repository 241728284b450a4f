"""An error of the bridge itself (not the terminal's) while executing a task is retried a bounded number of
times, then the task ends ``failed`` with ``BridgeError`` — with a real pinned worker and mt5sim terminal.

The failing task is a row the web tier could not have written today (an order type this worker does not
know: what a newer web tier or a bug would leave in the ledger), inserted directly: building its
``order_send`` request raises ``KeyError`` on the worker, before anything reaches the terminal. No
test-only switch is involved.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from django.conf import settings as django_settings

from sessions.models import BridgeSession
from streams.replay import read_since
from tests.conftest import Stack
from tests.factories import make_task
from tests.orders.conftest import open_session, wait_final
from tests.waiting import wait_until
from trading.models import TaskTransition, TradeTask
from trading.outbox import publish_task
from trading.task_errors import _redacted
from workers.tasks import reconcile_all_task

pytestmark = pytest.mark.django_db(transaction=True)
TERMINAL = "sim-b"
MAX_ERRORS = 3


def _insert_unbuildable(session: BridgeSession, name: str) -> TradeTask:
    """A task the API would refuse (no such order type), inserted by the ledger and published: what a
    bug of the bridge's own validation would let through."""
    task = make_task(session, request_id=name, request={"symbol": "EURUSD", "type": "BUY_FUTURE", "volume": 0.1})
    assert publish_task(task.id, TERMINAL)
    return task


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    wait_until(predicate, timeout, what)


def _errors(task_id: str) -> int:
    result = TradeTask.objects.get(id=task_id).result or {}
    return int((result.get("error") or {}).get("errors", 0))


@pytest.fixture
def erring_worker(stack: Stack) -> Stack:
    """The terminal's worker with reconciliation looking at every dispatched task (no age threshold)."""
    stack.workers[TERMINAL].stop()
    stack.start_worker(TERMINAL, {"BRIDGE_RECONCILE_AFTER": "0", "BRIDGE_TASK_MAX_ERRORS": str(MAX_ERRORS)})
    yield stack
    stack.workers[TERMINAL].stop()
    stack.start_worker(TERMINAL)


def test_an_error_of_the_bridge_is_retried_a_bounded_number_of_times_then_the_task_fails(
        erring_worker, client, sim, settings) -> None:
    sid = open_session(client, TERMINAL)
    session = BridgeSession.objects.get(id=sid)
    first, second = _insert_unbuildable(session, "unbuildable-1"), _insert_unbuildable(session, "unbuildable-2")
    # The delivery raised: error 1 of each, the tasks kept dispatched and never sent.
    _wait(lambda: _errors(first.id) == 1 and _errors(second.id) == 1, "the deliveries did not record the errors")
    for task_id in (first.id, second.id):
        task = TradeTask.objects.get(id=task_id)
        assert task.state == "dispatched" and task.sent_at is None and task.attempts == 1
        assert task.result["error"]["code"] == "BridgeError" and task.result["error"]["exception"] == "KeyError"
    # Reconciliation (beat's fan-out, run here) tries each again; the error on the first task does not stop
    # the second's reconciliation.
    settings.BRIDGE_RECONCILE_AFTER = 0
    assert reconcile_all_task.apply().get() == [TERMINAL]
    _wait(lambda: _errors(first.id) == 2 and _errors(second.id) == 2, "reconciliation did not retry both tasks")
    assert reconcile_all_task.apply().get() == [TERMINAL]
    for task_id in (first.id, second.id):
        task = wait_final(task_id)
        assert task.state == "failed", (task.state, task.result)
        error = task.result["error"]
        assert error["code"] == "BridgeError" and error["exception"] == "KeyError"
        assert error["message"].startswith("KeyError: 'BUY_FUTURE'") and error["errors"] == MAX_ERRORS
        assert task.attempts == MAX_ERRORS and task.sent_at is None and task.finished_at is not None
        assert sim(TERMINAL).broker_orders_of(task) == []  # nothing ever reached the terminal
        transitions = list(TaskTransition.objects.filter(task=task).state_changes())
        assert [t.to_state for t in transitions] == ["queued", "dispatched", "failed"]
        assert transitions[-1].detail["reason"] == "bridge_error" and transitions[-1].detail["errors"] == MAX_ERRORS
    # states.task_change published the order event of the failure on the session's stream.
    page = read_since(redis.Redis.from_url(django_settings.REDIS_URL), sid, 0)
    failed = [e for e in page.events if '"state":"failed"' in e.replace(" ", "")]
    assert any(first.id in e for e in failed) and any(second.id in e for e in failed), page.events
    # Bounded: nothing is left for reconciliation, and the terminal's worker still executes orders.
    assert reconcile_all_task.apply().get() == []
    r = client.post("/mt5/client/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}, format="json",
                    HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="after-errors")
    assert r.status_code == 202, r.content
    assert wait_final(r.json()["taskId"]).state == "filled"


def test_error_messages_carry_no_credentials(settings) -> None:
    settings.SECRET_KEY = "s3cr3t-" * 8
    text = _redacted(f"connect to redis://:hunter2pass@redis:6379/0 failed; key {settings.SECRET_KEY}; " + "x" * 500)
    assert "hunter2pass" not in text and settings.SECRET_KEY not in text
    assert "redis://***@redis:6379/0" in text and len(text) <= 300
