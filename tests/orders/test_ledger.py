"""The idempotency ledger over HTTP: replay, conflict, concurrency, bad input, isolation, listing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from rest_framework.test import APIClient

from tests.orders.conftest import open_session, wait_final
from trading.models import TradeTask

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}


def _post(client, sid, body, rid=None, path="/orders", **headers):
    if rid is not None:
        headers["HTTP_X_REQUEST_ID"] = rid
    return client.post(BASE + path, body, format="json", HTTP_X_SESSION_ID=sid, **headers)


def test_replay_returns_same_task_same_status_and_header(stack, client, sim) -> None:
    sid = open_session(client, "sim-b")
    first = _post(client, sid, ORDER, "led-1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first
    assert first["x-request-id"] == "led-1"
    wait_final(first.json()["taskId"])
    again = _post(client, sid, dict(reversed(list(ORDER.items()))), "led-1")  # key order does not matter
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json()["taskId"] == first.json()["taskId"] and again.json()["state"] == "filled"
    alias = _post(client, sid, ORDER, HTTP_IDEMPOTENCY_KEY="led-1")
    assert alias.status_code == 202 and alias.json()["taskId"] == first.json()["taskId"]
    assert TradeTask.objects.count() == 1
    assert len(sim("sim-b").broker_orders_of(TradeTask.objects.get())) == 1


def test_same_request_id_other_payload_is_409_naming_the_task(stack, client) -> None:
    sid = open_session(client, "sim-b")
    first = _post(client, sid, ORDER, "led-2").json()
    r = _post(client, sid, {**ORDER, "volume": 0.2}, "led-2")
    assert r.status_code == 409
    assert r.json()["error"] == {"code": "TaskConflict", "message": "request id 'led-2' was used with a different payload",
                                 "details": {"taskId": first["taskId"]}}
    r = _post(client, sid, {}, "led-2", path="/positions/123/close")  # same id, another operation
    assert r.status_code == 409 and r.json()["error"]["details"]["taskId"] == first["taskId"]
    assert TradeTask.objects.count() == 1


def test_twenty_concurrent_identical_requests_make_one_task_and_one_broker_order(stack, client, api_key, sim) -> None:
    sid = open_session(client, "sim-b")
    barrier = threading.Barrier(20)

    def one(_: int) -> tuple[int, str, str | None]:
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
        try:
            barrier.wait()
            r = _post(api, sid, ORDER, "led-concurrent")
            return r.status_code, r.json()["taskId"], r.get("Idempotent-Replayed")
        finally:
            connection.close()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert {status for status, _, _ in results} == {202}
    assert len({task_id for _, task_id, _ in results}) == 1
    assert sum(1 for _, _, replayed in results if replayed != "true") == 1  # exactly one inserted it
    task = wait_final(results[0][1])
    assert TradeTask.objects.count() == 1 and task.state == "filled"
    assert len(sim("sim-b").broker_orders_of(task)) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**ORDER, "symbol": "NOPE"}, "symbol"),
        ({**ORDER, "volume": 0.015}, "volume"),  # not a multiple of the 0.01 step
        ({**ORDER, "volume": 0.001}, "volume"),  # below volume_min
        ({**ORDER, "volume": 501.0}, "volume"),  # above volume_max
        ({**ORDER, "volume": "0.1"}, "volume"),  # strings are not numbers
        ({**ORDER, "volume": 0}, "volume"),
        ({**ORDER, "sl": 1.000001}, "sl"),  # EURUSD has 5 digits
        ({**ORDER, "type": "BUY_LIMIT"}, "price"),  # pending needs a price
        ({**ORDER, "type": "BUY_STOP_LIMIT", "price": 1.2}, "stoplimit"),
        ({**ORDER, "stoplimit": 1.1}, "stoplimit"),
        ({**ORDER, "type": "BUY_NOW"}, "type"),
        ({**ORDER, "type_filling": "BOC"}, "type_filling"),
        ({**ORDER, "type_time": "SPECIFIED"}, "expiration"),
        ({**ORDER, "expiration": 4_000_000_000}, "expiration"),
        ({**ORDER, "comment": "x" * 17}, "comment"),  # 12-char tag + '|' + 16 = 29
        ({**ORDER, "comment": "a\nb"}, "comment"),
        ({**ORDER, "magic": -1}, "magic"),
        ({**ORDER, "deviation": 1.5}, "deviation"),
        ({**ORDER, "voluem": 0.1}, "voluem"),
        ({"type": "BUY", "volume": 0.1}, "symbol"),
    ],
)
def test_bad_order_is_400_naming_the_field_and_creates_nothing(stack, client, body, field) -> None:
    sid = open_session(client, "sim-b")
    r = _post(client, sid, body, "bad-1")
    assert r.status_code == 400, r.content
    assert r.json()["error"]["code"] == "ValidationError"
    assert field in r.json()["error"]["details"], r.json()
    assert TradeTask.objects.count() == 0


def test_sixteen_character_comment_is_accepted(stack, client) -> None:
    sid = open_session(client, "sim-b")
    r = _post(client, sid, {**ORDER, "comment": "x" * 16}, "cm-1")
    assert r.status_code == 202
    task = wait_final(r.json()["taskId"])
    assert task.state == "filled" and task.mt5_request["comment"] == f"{task.tag}|{'x' * 16}"


def test_other_malformed_writes_are_4xx_never_500(stack, client) -> None:
    sid = open_session(client, "sim-b")
    cases = [
        client.post(f"{BASE}/orders", "not json", content_type="application/json", HTTP_X_SESSION_ID=sid),
        client.post(f"{BASE}/orders", [1, 2], format="json", HTTP_X_SESSION_ID=sid),
        client.patch(f"{BASE}/orders/tsk_nope", {"sl": 1.0}, format="json", HTTP_X_SESSION_ID=sid),
        client.delete(f"{BASE}/orders/tsk_nope", HTTP_X_SESSION_ID=sid),
        client.patch(f"{BASE}/positions/1", {}, format="json", HTTP_X_SESSION_ID=sid),
        client.patch(f"{BASE}/positions/1", {"sl": -1}, format="json", HTTP_X_SESSION_ID=sid),
        client.post(f"{BASE}/positions/99999999999999999999999/close", {}, format="json", HTTP_X_SESSION_ID=sid),
        client.post(f"{BASE}/positions/1/close", {"volume": -1}, format="json", HTTP_X_SESSION_ID=sid),
        client.post(f"{BASE}/orders", ORDER, format="json"),  # no session
        client.post(f"{BASE}/orders", ORDER, format="json", HTTP_X_SESSION_ID="sess_unknown"),
        client.get(f"{BASE}/tasks?state=bogus", HTTP_X_SESSION_ID=sid),
        client.get(f"{BASE}/tasks?cursor=%%%", HTTP_X_SESSION_ID=sid),
        client.get(f"{BASE}/tasks?limit=0", HTTP_X_SESSION_ID=sid),
        client.get(f"{BASE}/tasks?since=abc", HTTP_X_SESSION_ID=sid),
        client.get(f"{BASE}/tasks/tsk_nope"),
        client.post(f"{BASE}/orders", ORDER, format="json", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="bad id"),
    ]
    statuses = [r.status_code for r in cases]
    assert statuses == [400, 400, 404, 404, 400, 400, 404, 400, 401, 401, 400, 400, 400, 400, 404, 400]
    for r in cases:
        assert set(r.json()["error"]) == {"code", "message", "details"}
    assert TradeTask.objects.count() == 0


def test_workspaces_never_see_each_others_tasks(stack, client, other_client) -> None:
    sid = open_session(client, "sim-b")
    task_id = _post(client, sid, ORDER, "iso-1").json()["taskId"]
    assert other_client.get(f"{BASE}/tasks/{task_id}").status_code == 404
    assert other_client.get(f"{BASE}/tasks", HTTP_X_SESSION_ID=sid).status_code == 401
    for r in (other_client.patch(f"{BASE}/orders/{task_id}", {"sl": 1.0}, format="json", HTTP_X_SESSION_ID=sid),
              other_client.delete(f"{BASE}/orders/{task_id}", HTTP_X_SESSION_ID=sid),
              _post(other_client, sid, ORDER, "iso-1")):
        assert r.status_code == 401  # the session is not theirs
    # The same request id in another workspace is another key.
    other_sid = open_session(other_client, "sim-a")
    r = _post(other_client, other_sid, {**ORDER, "volume": 0.2}, "iso-1")
    assert r.status_code == 202 and r.json()["taskId"] != task_id


def test_task_list_filters_and_cursor_pages(stack, client) -> None:
    sid = open_session(client, "sim-b")
    ids = [_post(client, sid, ORDER, f"list-{i}").json()["taskId"] for i in range(5)]
    for task_id in ids:
        wait_final(task_id)
    r = client.get(f"{BASE}/tasks?limit=2", HTTP_X_SESSION_ID=sid).json()
    seen = [t["taskId"] for t in r["tasks"]]
    while r["nextCursor"]:
        r = client.get(f"{BASE}/tasks?limit=2&cursor={r['nextCursor']}", HTTP_X_SESSION_ID=sid).json()
        seen += [t["taskId"] for t in r["tasks"]]
    assert seen == list(reversed(ids))
    by_rid = client.get(f"{BASE}/tasks?requestId=list-3", HTTP_X_SESSION_ID=sid).json()["tasks"]
    assert [t["taskId"] for t in by_rid] == [ids[3]]
    assert client.get(f"{BASE}/tasks?state=queued,dispatched", HTTP_X_SESSION_ID=sid).json()["tasks"] == []
    assert len(client.get(f"{BASE}/tasks?state=filled&kind=order.create", HTTP_X_SESSION_ID=sid).json()["tasks"]) == 5
    assert client.get(f"{BASE}/tasks?since=4000000000", HTTP_X_SESSION_ID=sid).json()["tasks"] == []
    # Closing the session keeps its tasks readable (by id and by list).
    client.delete(f"{BASE}/session/{sid}")
    assert client.get(f"{BASE}/tasks/{ids[0]}").json()["state"] == "filled"
    assert len(client.get(f"{BASE}/tasks", HTTP_X_SESSION_ID=sid).json()["tasks"]) == 5
