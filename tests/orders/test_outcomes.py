"""Honest outcomes: every ambiguous answer of a terminal ends with exactly one broker order per task
that executed, none for one that did not, and the right final state; ``unknown`` turns ``failed``
only with proof, and a tagged order that surfaces late is adopted. mt5sim plays each fault; the
broker's side is read from mt5sim's own records.

The pinned worker of TERMINAL runs here with an in-flight bound of 2 s (instead of 90 s) so the
tests do not wait minutes; reconciliation is asked for explicitly (beat's job in production).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from bridge_project.celery import terminal_queue
from tests.conftest import Stack
from tests.orders.conftest import LOGIN, open_session, wait_final
from tests.waiting import wait_until
from trading.models import TaskTransition, TradeTask, UnownedOrder
from trading.reconciliation import reconciliation_request
from workers.tasks import reconcile_terminal_task

pytestmark = pytest.mark.django_db(transaction=True)
TERMINAL = "sim-b"
BOUND = 2.0
BUY = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}
OWN_LOGIN = LOGIN + 500  # an account of this module's own: the positions it opens use no one else's margin


@pytest.fixture(scope="module")
def short_bound_worker(bridge_stack: Stack) -> Iterator[None]:
    """TERMINAL's worker with BRIDGE_INFLIGHT_BOUND=2 for this module, the default one after it."""
    bridge_stack.workers[TERMINAL].stop()
    bridge_stack.start_worker(TERMINAL, {"BRIDGE_INFLIGHT_BOUND": str(BOUND)})
    yield
    bridge_stack.workers[TERMINAL].stop()
    bridge_stack.start_worker(TERMINAL)


@pytest.fixture
def session(short_bound_worker: None, stack: Stack, client: APIClient, control) -> Iterator[str]:
    ctl = control(TERMINAL)
    ctl.reset()
    sid = open_session(client, TERMINAL, login=OWN_LOGIN)
    yield sid
    ctl.reset()
    client.delete(f"/mt5/client/session/{sid}")


def _post(client: APIClient, sid: str, rid: str, path: str = "/mt5/client/orders", body: dict | None = None) -> str:
    response = client.post(path, BUY if body is None else body, format="json", HTTP_X_SESSION_ID=sid,
                           HTTP_X_REQUEST_ID=rid)
    assert response.status_code == 202, response.content
    return response.json()["taskId"]


def _unknown(task_id: str) -> TradeTask:
    return wait_final(task_id, states=("unknown",))


def _past_bound(task: TradeTask) -> None:
    """Wait until the in-flight bound has passed since the task's send mark (the condition under test)."""
    wait_until(lambda: time.time() - task.sent_at.timestamp() > BOUND + 0.2, 10, "the in-flight bound passed")


def _reconcile(task_id: str) -> TradeTask:
    """Ask the terminal's worker to settle the task now; returns it once the worker has looked."""
    before = TradeTask.objects.get(id=task_id).updated_at
    reconciliation_request(task_ids=[task_id])
    return wait_until(lambda: (t := TradeTask.objects.get(id=task_id)).updated_at != before and t, 20, "reconciliation ran")


def _reconcile_terminal() -> None:
    """Ask the worker for a full reconciliation, with the scan for tagged orders (beat does it periodically)."""
    reconcile_terminal_task.apply_async(kwargs={"startup": True}, queue=terminal_queue(TERMINAL))


def _path(task: TradeTask) -> list[str]:
    return list(TaskTransition.objects.filter(task=task).state_changes().values_list("to_state", flat=True))


def _unknown_because(task: TradeTask) -> str:
    return task.result["error"]["unknownBecause"]


@pytest.mark.parametrize("fault", ["ipc_timeout", "10012", "10011", "10008", "10010"])
def test_an_ambiguous_answer_of_an_executed_order_is_adopted_once(session, client, sim, control, fault) -> None:
    ctl = control(TERMINAL)
    if fault == "ipc_timeout":
        ctl.ipc_timeout("order_send", 1, execute=True)
    else:
        ctl.retcode_fault(int(fault), 1, execute=True)
    task = wait_final(_post(client, session, f"amb-x-{fault}"))
    assert task.state == "filled" and task.result["adopted"] is True, (task.state, task.result)
    assert _path(task) == ["queued", "dispatched", "unknown", "filled"]
    assert len(sim(TERMINAL).broker_orders_of(task)) == 1
    assert task.position_ticket and task.order_ticket


@pytest.mark.parametrize("fault", ["ipc_timeout", "10012", "10011", "10008"])
def test_an_ambiguous_answer_of_an_order_that_never_executed_fails_only_after_the_bound(
        session, client, sim, control, fault) -> None:
    ctl = control(TERMINAL)
    if fault == "ipc_timeout":
        ctl.ipc_timeout("order_send", 1, execute=False)
    else:
        ctl.retcode_fault(int(fault), 1, execute=False)
    task = _unknown(_post(client, session, f"amb-n-{fault}"))
    assert _reconcile(task.id).state == "unknown"  # within the bound: not proof of anything
    _past_bound(task)
    task = _reconcile(task.id)
    assert task.state == "failed" and task.result["error"]["code"] == "NotExecuted", task.result
    assert sim(TERMINAL).broker_orders_of(task) == []


def test_a_disconnected_terminal_keeps_the_outcome_unknown(session, client, sim, control) -> None:
    ctl = control(TERMINAL)
    ctl.ipc_timeout("order_send", 1, execute=False)
    task = _unknown(_post(client, session, "amb-disc"))
    ctl.trade_server(False)
    _past_bound(task)
    task = _reconcile(task.id)
    assert task.state == "unknown" and _unknown_because(task) == "terminal_disconnected", task.result
    ctl.trade_server(True)
    task = _reconcile(task.id)
    assert task.state == "failed" and sim(TERMINAL).broker_orders_of(task) == []


def test_a_terminal_on_another_account_keeps_the_outcome_unknown(session, client, sim, control) -> None:
    ctl = control(TERMINAL)
    # The order executes later on the session's account, invisible meanwhile; before it does, the
    # terminal is logged in to another account (by hand in its window): that account's history says
    # nothing of the task, so a lookup there is no proof that it never executed.
    ctl.slow_execution(4.0, 1, visible=False)
    task = _unknown(_post(client, session, "amb-acct"))
    ctl.switch_account(OWN_LOGIN + 1, "pw", "Demo")
    try:
        _past_bound(task)
        task = _reconcile(task.id)
        assert task.state == "unknown" and _unknown_because(task) == "account_mismatch", task.result
    finally:
        ctl.switch_account(OWN_LOGIN, "pw", "Demo")
    wait_until(lambda: sim(TERMINAL).broker_orders_of(task), 20, "the late execution on the session's account")
    task = _reconcile(task.id)
    assert task.state == "filled" and len(sim(TERMINAL).broker_orders_of(task)) == 1, task.result
    assert _path(task) == ["queued", "dispatched", "unknown", "filled"]  # never failed on the way


def test_a_close_whose_history_is_not_synced_stays_unknown_until_it_is(session, client, sim, control) -> None:
    opened = wait_final(_post(client, session, "amb-hist-open"))
    assert opened.state == "filled"
    ctl = control(TERMINAL)
    ctl.history_delay(8.0)
    ctl.ipc_timeout("order_send", 1, execute=True)
    close = _unknown(_post(client, session, "amb-hist-close", f"/mt5/client/positions/{opened.position_ticket}/close",
                           {}))
    _past_bound(close)
    close = _reconcile(close.id)
    # The position is gone but its closing deal is not in the terminal's history yet: no proof.
    assert close.state == "unknown" and _unknown_because(close) == "history_not_synced", close.result
    ctl.history_delay(0)
    close = _reconcile(close.id)
    assert close.state == "filled", close.result
    assert len([d for d in sim(TERMINAL).history_deals(close.tag)]) == 1


@pytest.mark.parametrize("mode", ["rewrite", "cut"])
def test_an_order_whose_comment_the_broker_rewrote_is_matched_once(session, client, sim, control, mode) -> None:
    ctl = control(TERMINAL)
    ctl.comment_fault(mode, length=5, text="[broker]", count=1)
    ctl.ipc_timeout("order_send", 1, execute=True)
    magic = {"rewrite": 4242, "cut": 4343}[mode]  # an order of another test must not match this one's request
    task = wait_final(_post(client, session, f"amb-comment-{mode}", body={**BUY, "magic": magic}))
    assert task.state == "filled", (task.state, task.result)
    assert "rewritten" in task.result["comment"]
    matching = [o for o in sim(TERMINAL).history_orders() if o.ticket == task.order_ticket]
    assert len(matching) == 1 and not matching[0].comment.startswith(task.tag)
    assert sim(TERMINAL).broker_orders_of(task) == []  # no order carries its tag any more


def test_two_rewritten_candidates_are_never_guessed(session, client, sim, control) -> None:
    ctl = control(TERMINAL)
    ctl.comment_fault("rewrite", text="", count=2)
    ctl.slow_execution(3.0, 2, visible=False)  # both execute later, together, without their tags
    tasks = [_unknown(_post(client, session, f"amb-two-{i}", body={**BUY, "magic": 777})) for i in (1, 2)]
    wait_until(lambda: len([o for o in sim(TERMINAL).history_orders() if o.magic == 777]) == 2, 20, "both executed")
    _past_bound(tasks[1])
    for task in tasks:
        # Two orders match each task's request and neither carries a tag: which is whose cannot be
        # told, so neither is adopted by guess, and neither task is failed (an order did execute).
        task = _reconcile(task.id)
        assert task.state == "unknown" and _unknown_because(task) == "ambiguous_match", task.result


def test_an_execution_later_than_the_bound_is_adopted_after_failed(session, client, sim, control) -> None:
    ctl = control(TERMINAL)
    ctl.slow_execution(6.0, 1, visible=False)
    task = _unknown(_post(client, session, "amb-late"))
    _past_bound(task)
    task = _reconcile(task.id)
    assert task.state == "failed", task.result  # nothing shows at the terminal: honest at that time
    wait_until(lambda: sim(TERMINAL).broker_orders_of(task), 20, "the late execution")
    _reconcile_terminal()
    task = wait_final(task.id, states=("filled",))
    assert _path(task) == ["queued", "dispatched", "unknown", "failed", "filled"]
    assert TaskTransition.objects.filter(task=task, to_state="filled").get().detail["reason"] == "late-execution"
    assert len(sim(TERMINAL).broker_orders_of(task)) == 1
    assert not UnownedOrder.objects.filter(tag=task.tag).exists()


def test_an_order_the_terminal_shows_in_flight_is_never_failed(session, client, sim, control) -> None:
    ctl = control(TERMINAL)
    ctl.slow_execution(5.0, 1, visible=True)
    task = _unknown(_post(client, session, "amb-inflight"))
    _past_bound(task)
    task = _reconcile(task.id)
    assert task.state == "unknown" and _unknown_because(task) == "in_flight_at_terminal", task.result
    wait_until(lambda: sim(TERMINAL).history_orders(task.tag), 20, "the execution")
    task = _reconcile(task.id)
    assert task.state == "filled" and len(sim(TERMINAL).broker_orders_of(task)) == 1
    assert _path(task) == ["queued", "dispatched", "unknown", "filled"]
