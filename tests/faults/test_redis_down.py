"""A Redis outage never turns a request into a 500 (issue #10, DESIGN.md "Guarantees").

Everything real: the web tier is this process (Django test client) with its cache, specs, streams,
metrics and Celery broker on a private redis-server; the pinned worker of the terminal consumes the
same Redis; the database is the test PostgreSQL. The Redis is SIGKILLed (it loses everything) and
started again, empty, on the same port.

While it is down every write path answers one of two things:

* ``503 Unavailable`` with ``Retry-After`` and the standard error body, nothing written, when the
  write needs the symbol specs (POST /orders, PATCH /orders/{id}, PATCH /positions/{t} of a position
  the ledger knows);
* ``202``/``201`` when it needs only the database (DELETE of a working pending order, close of a
  position, session open): the task lands ``queued`` with no publish, and the outbox sweeper
  publishes it once Redis is back; it then executes once at the terminal.

A replay of the same request id after recovery answers the same task.
"""

from __future__ import annotations

import pytest

from bridge_project import metrics
from sessions.models import BridgeSession
from tests.faults.conftest import TERMINAL, wait_until
from tests.orders.conftest import open_session, wait_final
from trading.models import TaskState, TradeTask
from trading.outbox import sweep_outbox

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"


@pytest.fixture
def frozen_eurusd(control):
    ctl = control(TERMINAL)
    ctl.freeze_feed("EURUSD")
    ctl.set_price("EURUSD", 1.10000, 1.10010)
    yield ctl
    ctl.freeze_feed("EURUSD", frozen=False)


def _write(client, method: str, path: str, sid: str, rid: str, body: dict | None = None):
    call = getattr(client, method)
    kwargs = {"format": "json"} if body is not None else {}
    return call(BASE + path, body, HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid, **kwargs)


def _assert_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert int(response["Retry-After"]) >= 1
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == "Unavailable", body
    assert body["error"]["details"]["retryAfter"] == int(response["Retry-After"])


def test_every_write_path_with_redis_down_is_503_or_accepted_never_500(
        stack, client, sim, frozen_eurusd, private_worker, on_private_redis, settings) -> None:
    redis_server = on_private_redis
    sid = open_session(client, TERMINAL)
    opened = wait_final(_write(client, "post", "/orders", sid, "rd-open",
                               {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}).json()["taskId"])
    assert opened.state == "filled" and opened.position_ticket, opened.result
    ticket = opened.position_ticket
    pending = wait_final(_write(client, "post", "/orders", sid, "rd-pending",
                                {"symbol": "EURUSD", "type": "BUY_LIMIT", "volume": 0.1, "price": 1.05}
                                ).json()["taskId"])
    assert pending.state == "placed" and pending.order_ticket, pending.result

    redis_server.kill()
    statuses: dict[str, int] = {}

    # Needs the symbol specs (Redis): 503, nothing written.
    create_body = {"symbol": "EURUSD", "type": "BUY", "volume": 0.2}
    r = _write(client, "post", "/orders", sid, "rd-create", create_body)
    statuses["POST /orders"] = r.status_code
    _assert_unavailable(r)
    assert r.json()["error"]["details"]["dependency"] == "redis"
    assert not TradeTask.objects.filter(request_id="rd-create").exists()

    r = _write(client, "patch", f"/orders/{pending.id}", sid, "rd-patch", {"price": 1.04})
    statuses["PATCH /orders/{id}"] = r.status_code
    _assert_unavailable(r)
    r = _write(client, "patch", f"/positions/{ticket}", sid, "rd-sltp", {"sl": 1.0, "tp": 1.2})
    statuses["PATCH /positions/{t}"] = r.status_code
    _assert_unavailable(r)
    assert not TradeTask.objects.filter(request_id__in=["rd-patch", "rd-sltp"]).exists()
    assert TradeTask.objects.get(id=pending.id).request["price"] == 1.05

    # Needs only the ledger: accepted, queued, not published (the broker is down).
    r = _write(client, "delete", f"/orders/{pending.id}", sid, "rd-cancel")
    statuses["DELETE /orders/{id}"] = r.status_code
    assert r.status_code == 202 and r.json()["kind"] == "order.cancel", r.content
    cancel_id = r.json()["taskId"]
    r = _write(client, "post", f"/positions/{ticket}/close", sid, "rd-close", {})
    statuses["POST /positions/{t}/close"] = r.status_code
    assert r.status_code == 202 and r.json()["kind"] == "position.close", r.content
    close_id = r.json()["taskId"]
    for task in TradeTask.objects.filter(id__in=[cancel_id, close_id]):
        assert task.state == TaskState.QUEUED and task.published_at is None, (task.id, task.published_at)

    # Reads of the ledger still answer; reads through Redis fail cleanly; a session opens (its login
    # waits for the broker).
    assert client.get(f"{BASE}/tasks/{close_id}").status_code == 200
    for path in ("/account", "/positions", "/quotes/EURUSD"):
        r = client.get(BASE + path, HTTP_X_SESSION_ID=sid)
        statuses[f"GET {path}"] = r.status_code
        assert r.status_code in (502, 503) and set(r.json()["error"]) == {"code", "message", "details"}, r.content
    r = client.post(f"{BASE}/session/open", {"accountId": "rd-2", "server": "Demo", "login": 5002,
                                             "password": "pw", "terminal": "sim-a"}, format="json")
    statuses["POST /session/open"] = r.status_code
    assert r.status_code == 201 and r.json()["status"] == "opening", r.content
    assert BridgeSession.objects.get(id=r.json()["sessionId"]).status == "opening"

    # The sweeper cannot read the broker: it publishes nothing and does not raise.
    settings.BRIDGE_OUTBOX_REPUBLISH_AFTER = 0.5
    wait_until(lambda: sweep_outbox() == 0 and all(
        t.published_at is None for t in TradeTask.objects.filter(id__in=[cancel_id, close_id])), 5, "a quiet sweep")
    assert 500 not in statuses.values(), statuses

    redis_server.start()  # empty: no queue, no specs, no throttle history
    # The terminal's worker reconnects to the broker (Celery retries every few seconds); until then a
    # write needing specs would be a 502 (the terminal side cannot publish them), which is not tested here.
    wait_until(lambda: private_worker.proc.log().count("Connected to redis") >= 2, 60, "worker reconnected")
    # Replays answer the same task; the refused write is now accepted once.
    r = _write(client, "delete", f"/orders/{pending.id}", sid, "rd-cancel")
    assert r.status_code == 202 and r.json()["taskId"] == cancel_id and r["Idempotent-Replayed"] == "true"
    r = _write(client, "post", f"/positions/{ticket}/close", sid, "rd-close", {})
    assert r.status_code == 202 and r.json()["taskId"] == close_id and r["Idempotent-Replayed"] == "true"
    r = _write(client, "post", "/orders", sid, "rd-create", create_body)
    assert r.status_code == 202 and "Idempotent-Replayed" not in r, r.content
    create_id = r.json()["taskId"]
    r = _write(client, "post", "/orders", sid, "rd-create", create_body)
    assert r.json()["taskId"] == create_id and r["Idempotent-Replayed"] == "true"

    # The outbox sweeper publishes what was accepted during the outage; each executes once.
    def settled() -> bool:
        sweep_outbox()
        return not TradeTask.objects.filter(id__in=[cancel_id, close_id], state=TaskState.QUEUED).exists()

    wait_until(settled, 60, "published by the sweeper", interval=0.5)
    cancel, close, create = (wait_final(i, timeout=30) for i in (cancel_id, close_id, create_id))
    assert cancel.state == "filled" and close.state == "filled" and create.state == "filled", (
        cancel.result, close.result, create.result)
    terminal = sim(TERMINAL)
    assert not [o for o in terminal.orders() if o.ticket == pending.order_ticket]
    [gone] = terminal.history_orders(pending.tag)
    assert gone.state == 2  # ORDER_STATE_CANCELED: cancelled once
    assert not [p for p in terminal.positions() if p.ticket == ticket]
    for task in (close, create):  # one broker order each: published by the sweeper, executed once
        assert len(terminal.history_orders(task.tag)) == 1, task.id

    # What the outage cost was counted, and reached Redis once it was back.
    def counted() -> dict:
        metrics.inc("bridge_tasks_republished", 0, reason="flush")  # any metric call flushes held counts
        got = metrics.read_counter("bridge_redis_unavailable")
        return got if got.get(("request",), 0) >= 3 and got.get(("throttle",), 0) >= 1 else {}

    counts = wait_until(counted, 10, "outage counted")
    assert counts.get(("publish",), 0) >= 2 and counts.get(("login",), 0) >= 1, counts


def test_rate_limiter_fails_open_while_redis_is_down_and_limits_again_after(
        client, on_private_redis, settings) -> None:
    settings.BRIDGE_THROTTLE_RATE = "2/min"
    path = f"{BASE}/tasks/tsk_unknown"
    assert [client.get(path).status_code for _ in range(3)] == [404, 404, 429]

    on_private_redis.kill()
    during = [client.get(path).status_code for _ in range(5)]
    assert during == [404] * 5  # let through (unthrottled), neither 429 nor 500

    on_private_redis.start()  # empty: the request history is gone
    # After the hold-off the limiter uses Redis again: two more pass, then 429.
    wait_until(lambda: client.get(path).status_code == 429, 15, "throttled again")
    counts = metrics.read_counter("bridge_redis_unavailable")
    assert counts.get(("throttle",), 0) >= 5, counts


def test_redis_and_broker_errors_reaching_a_view_are_503_not_500(on_private_redis) -> None:
    """Whatever call meets the outage, the API's exception handler answers 503 Unavailable."""
    import redis
    from rest_framework.exceptions import NotFound

    from bridge_project.errors import exception_handler
    from workers.tasks import execute_task

    on_private_redis.kill()
    caught: list[BaseException] = []
    try:
        redis.Redis(port=on_private_redis.port, socket_connect_timeout=1).get("x")
    except redis.RedisError as exc:
        caught.append(exc)
    try:  # a Celery publish to the dead broker (kombu's OperationalError after its retries)
        execute_task.apply_async(args=["tsk_x"], queue="terminal.none", retry=True,
                                 retry_policy={"max_retries": 1, "interval_start": 0.1})
    except Exception as exc:
        caught.append(exc)
    try:
        try:
            raise caught[0]
        except redis.RedisError as exc:
            raise RuntimeError("the read failed") from exc
    except RuntimeError as exc:
        caught.append(exc)
    assert [type(e).__name__ for e in caught] == ["ConnectionError", "OperationalError", "RuntimeError"]
    for exc in caught:
        response = exception_handler(exc, {})
        assert response.status_code == 503, (exc, response.data)
        assert response.data["error"]["code"] == "Unavailable" and int(response["Retry-After"]) >= 1
        assert set(response.data["error"]) == {"code", "message", "details"}
    # Not every error becomes a 503: a bug is still a 500, an API error keeps its status.
    assert exception_handler(RuntimeError("a bug"), {}).status_code == 500
    assert exception_handler(NotFound("gone"), {}).status_code == 404
