"""Every write kind against a real pinned worker and a real mt5sim terminal, checked at the terminal."""

from __future__ import annotations

import pytest

from tests.orders.conftest import open_session, wait_final
from tests.waiting import wait_until
from trading.models import TaskTransition, TradeTask

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"


def _post(client, sid, path, body, rid):
    return client.post(BASE + path, body, format="json", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid)


@pytest.fixture
def eurusd(control):
    ctl = control("sim-a")
    ctl.freeze_feed("EURUSD")
    ctl.set_price("EURUSD", 1.10000, 1.10010)
    yield ctl
    ctl.freeze_feed("EURUSD", frozen=False)


def test_market_order_fills_once_with_tag_magic_and_every_field(stack, client, sim, eurusd) -> None:
    sid = open_session(client, "sim-a")
    body = {"symbol": "EURUSD", "type": "BUY", "volume": 0.2, "sl": 1.09, "tp": 1.12, "deviation": 15,
            "comment": "my-strat", "type_filling": "IOC", "magic": 4242}
    r = _post(client, sid, "/orders", body, "w-market-1")
    assert r.status_code == 202, r.content
    assert r.json()["state"] == "queued" and r.json()["request"] == body
    task = wait_final(r.json()["taskId"])
    assert task.state == "filled", task.result
    assert task.result["retcode"] == 10009 and task.result["retcodeText"] == "Request completed"
    assert task.attempts == 1 and task.order_ticket and task.deal_ticket and task.position_ticket
    sent = task.mt5_request
    assert (sent["sl"], sent["tp"], sent["deviation"], sent["magic"], sent["type_filling"]) == (1.09, 1.12, 15, 4242, 1)
    assert sent["comment"] == f"{task.tag}|my-strat" and len(sent["comment"]) <= 29
    [order] = sim("sim-a").broker_orders_of(task)
    assert order.ticket == task.order_ticket and order.magic == 4242 and order.volume_initial == 0.2
    positions = [p for p in sim("sim-a").positions() if p.ticket == task.position_ticket]
    assert positions and positions[0].sl == 1.09 and positions[0].tp == 1.12
    states = list(TaskTransition.objects.filter(task=task).state_changes().values_list("from_state", "to_state"))
    assert states == [("", "queued"), ("queued", "dispatched"), ("dispatched", "filled")]
    got = client.get(f"{BASE}/tasks/{task.id}").json()
    assert got["state"] == "filled" and got["result"]["order"] == task.order_ticket and got["attempts"] == 1


def test_pending_order_placed_modified_and_cancelled_at_the_broker(stack, client, sim, eurusd) -> None:
    sid = open_session(client, "sim-a")
    r = _post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY_LIMIT", "volume": 0.1, "price": 1.09,
                                        "type_time": "SPECIFIED", "expiration": 4_000_000_000}, "w-pend-1")
    create = wait_final(r.json()["taskId"])
    assert create.state == "placed" and create.result["retcode"] == 10009, create.result
    [working] = [o for o in sim("sim-a").orders() if o.ticket == create.order_ticket]
    assert working.price_open == 1.09 and working.comment == create.tag
    assert working.time_expiration == 4_000_000_000 + 10800  # UTC -> sim-a's broker time (UTC+3)

    r = client.patch(f"{BASE}/orders/{create.id}", {"price": 1.085, "sl": 1.08}, format="json",
                     HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="w-pend-2")
    assert r.status_code == 202, r.content
    assert r.json()["kind"] == "order.modify" and r.json()["parentTaskId"] == create.id
    modify = wait_final(r.json()["taskId"])
    assert modify.state == "filled" and modify.result["retcode"] == 10009, modify.result
    [working] = [o for o in sim("sim-a").orders() if o.ticket == create.order_ticket]
    assert (working.price_open, working.sl, working.time_expiration) == (1.085, 1.08, 4_000_000_000 + 10800)

    r = client.delete(f"{BASE}/orders/{create.id}", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="w-pend-3")
    assert r.status_code == 202 and r.json()["kind"] == "order.cancel"
    cancel = wait_final(r.json()["taskId"])
    assert cancel.state == "filled" and cancel.result["retcode"] == 10009
    assert not [o for o in sim("sim-a").orders() if o.ticket == create.order_ticket]
    [gone] = sim("sim-a").history_orders(create.tag)
    assert gone.state == 2  # ORDER_STATE_CANCELED


def test_position_sltp_partial_and_full_close(stack, client, sim, eurusd) -> None:
    sid = open_session(client, "sim-a")
    opened = wait_final(_post(client, sid, "/orders", {"symbol": "EURUSD", "type": "SELL", "volume": 0.3},
                              "w-pos-1").json()["taskId"])
    ticket = opened.position_ticket
    assert opened.state == "filled" and ticket

    r = client.patch(f"{BASE}/positions/{ticket}", {"sl": 1.105, "tp": 1.08}, format="json",
                     HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="w-pos-2")
    assert r.status_code == 202 and r.json()["kind"] == "position.modify"
    sltp = wait_final(r.json()["taskId"])
    assert sltp.state == "filled" and sltp.result["retcode"] == 10009, sltp.result
    [pos] = [p for p in sim("sim-a").positions() if p.ticket == ticket]
    assert (pos.sl, pos.tp) == (1.105, 1.08)

    partial = wait_final(_post(client, sid, f"/positions/{ticket}/close", {"volume": 0.1}, "w-pos-3").json()["taskId"])
    assert partial.state == "filled" and partial.result["volume"] == 0.1, partial.result
    [pos] = [p for p in sim("sim-a").positions() if p.ticket == ticket]
    assert pos.volume == pytest.approx(0.2)
    [close_deal] = sim("sim-a").history_deals(partial.tag)
    assert close_deal.position_id == ticket and close_deal.entry == 1  # DEAL_ENTRY_OUT

    full = wait_final(_post(client, sid, f"/positions/{ticket}/close", {}, "w-pos-4").json()["taskId"])
    assert full.state == "filled" and full.result["retcode"] == 10009
    assert not [p for p in sim("sim-a").positions() if p.ticket == ticket]

    again = wait_final(_post(client, sid, f"/positions/{ticket}/close", {}, "w-pos-5").json()["taskId"])
    assert again.state == "rejected" and again.result["retcode"] == 10036
    assert not sim("sim-a").broker_orders_of(again)


def test_broker_rejection_keeps_mt5_retcode_and_text(stack, client, sim, eurusd) -> None:
    sid = open_session(client, "sim-a")
    eurusd.reject(1, 10019)
    task = wait_final(_post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1},
                            "w-rej-1").json()["taskId"])
    assert task.state == "rejected" and task.result["retcode"] == 10019
    assert task.result["retcodeText"] == "There is not enough money to complete the request"
    stops = wait_final(_post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "sl": 1.2},
                             "w-rej-2").json()["taskId"])
    assert stops.state == "rejected" and stops.result["retcode"] == 10016, stops.result


def test_requote_is_retried_with_a_fresh_price_and_counted(stack, client, sim, eurusd) -> None:
    sid = open_session(client, "sim-a")
    eurusd.requote(2)
    task = wait_final(_post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1,
                                                      "deviation": 1000}, "w-rq-1").json()["taskId"])
    assert task.state == "filled", task.result
    assert task.result["retries"] == 2 and task.attempts == 3
    assert len(sim("sim-a").broker_orders_of(task)) == 1


def test_requote_outside_deviation_is_not_retried(stack, client, sim, eurusd) -> None:
    sid = open_session(client, "sim-a")
    eurusd.requote(1)
    # A client price far from the market with zero deviation: the fresh price is out of bounds.
    task = wait_final(_post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1,
                                                      "price": 1.05, "deviation": 0}, "w-rq-2").json()["taskId"])
    assert task.state == "rejected" and task.result["retcode"] == 10004 and task.attempts == 1


def test_queued_tasks_change_and_cancel_in_place_executed_ones_cannot(stack, client, sim, eurusd, control) -> None:
    sid = open_session(client, "sim-a")
    eurusd.delay(2.0, ["order_send"])  # the first order holds the worker; the next ones stay queued
    first = _post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}, "q-1").json()
    second = _post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}, "q-2").json()
    third = _post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}, "q-3").json()
    r = client.patch(f"{BASE}/orders/{second['taskId']}", {"volume": 0.3, "comment": "edited"}, format="json",
                     HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="q-2-edit")
    assert r.status_code == 200, r.content
    assert r.json()["taskId"] == second["taskId"] and r.json()["request"]["volume"] == 0.3
    replay = client.patch(f"{BASE}/orders/{second['taskId']}", {"volume": 0.3, "comment": "edited"}, format="json",
                          HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="q-2-edit")
    assert replay.status_code == 200 and replay["Idempotent-Replayed"] == "true"
    bad = client.patch(f"{BASE}/orders/{second['taskId']}", {"volume": 0.005}, format="json",
                       HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="q-2-bad")
    assert bad.status_code == 400 and "volume" in bad.json()["error"]["details"]
    r = client.delete(f"{BASE}/orders/{third['taskId']}", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="q-3-del")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    eurusd.delay(0)
    done1, done2 = wait_final(first["taskId"]), wait_final(second["taskId"])
    assert done1.state == done2.state == "filled"
    assert done2.mt5_request["volume"] == 0.3 and done2.mt5_request["comment"].endswith("|edited")
    assert TradeTask.objects.get(id=third["taskId"]).state == "cancelled"
    assert not sim("sim-a").broker_orders_of(TradeTask.objects.get(id=third["taskId"]))
    for method, rid in ((client.patch, "late-1"), (client.delete, "late-2")):
        kwargs = {"data": {"sl": 1.0}, "format": "json"} if method == client.patch else {}
        r = method(f"{BASE}/orders/{first['taskId']}", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid, **kwargs)
        assert r.status_code == 409 and r.json()["error"]["code"] == "TaskConflict"
    r = client.delete(f"{BASE}/orders/{third['taskId']}", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="late-3")
    assert r.status_code == 409


def test_ipc_timeout_after_execution_becomes_unknown_then_adopted_never_resent(stack, client, sim, eurusd) -> None:
    sid = open_session(client, "sim-a")
    eurusd.ipc_timeout("order_send", 1, execute=True)
    task = wait_final(_post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1},
                            "w-ipc-1").json()["taskId"])
    assert task.state == "filled" and task.result.get("adopted") is True, task.result
    path = list(TaskTransition.objects.filter(task=task).state_changes().values_list("to_state", flat=True))
    assert path == ["queued", "dispatched", "unknown", "filled"]
    assert len(sim("sim-a").broker_orders_of(task)) == 1 and task.order_ticket


def test_stop_limit_and_day_orders_carry_every_field(stack, client, sim, eurusd) -> None:
    sid = open_session(client, "sim-a")
    body = {"symbol": "EURUSD", "type": "BUY_STOP_LIMIT", "volume": 0.1, "price": 1.11, "stoplimit": 1.105,
            "sl": 1.09, "tp": 1.13, "type_time": "DAY", "magic": 7, "comment": "sl-day"}
    task = wait_final(_post(client, sid, "/orders", body, "w-sl-1").json()["taskId"])
    assert task.state == "placed", task.result
    [order] = [o for o in sim("sim-a").orders() if o.ticket == task.order_ticket]
    assert (order.type, order.price_open, order.price_stoplimit, order.sl, order.tp, order.type_time, order.magic) == (
        6, 1.11, 1.105, 1.09, 1.13, 1, 7)
    assert order.comment == f"{task.tag}|sl-day"


def test_reconciliation_reports_a_tagged_order_no_task_owns(stack, client, sim) -> None:
    import time

    import mt5sim
    from trading.models import UnownedOrder
    from workers.tasks import reconcile_terminal_task

    open_session(client, "sim-a")
    stray = "b:zzstray" + str(int(time.time()) % 1000).zfill(3)
    assert mt5sim.initialize(stack.addresses["sim-a"])
    try:
        result = mt5sim.order_send({"action": 1, "symbol": "EURUSD", "volume": 0.01, "type": 0, "comment": stray})
        assert result is not None and result.retcode == 10009, mt5sim.last_error()
    finally:
        mt5sim.shutdown()
    reconcile_terminal_task.apply_async(kwargs={"startup": True}, queue="terminal.sim-a")
    # The reconciliation records each place it finds the order in as it goes: wait for it to finish.
    def sources() -> set[str]:
        return set(UnownedOrder.objects.filter(tag=stray).values_list("source", flat=True))

    wait_until(lambda: {"history_orders", "positions"} <= sources(), 20, "the stray order reported from both places",
               interval=0.2)
