"""The hot write path (trading/hotwrites.py): POST /orders answered in front of Django with the ledger's
guarantees, and everything it cannot vouch for handed, unchanged, to the full path.

Real Redis and the test database throughout (no terminal process: the tasks stay queued, their message
waits in the terminal's queue). The in-process tests drive the ASGI middleware with a stand-in for Django
behind it that answers 599 and echoes the body it was handed, so every test sees which path answered and
that the full path gets the request as it came. One test puts the real Django application behind it and
compares the hot answer with the full path's replay of the same request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.db import connections
from rest_framework.renderers import JSONRenderer

from bridge_project.celery import app as celery_app, terminal_queue
from sessions.models import BridgeSession
from sessions.services import session_close
from tests.factories import make_api_key, make_session, make_workspace
from trading.hotwrites import HotWrites
from trading.models import TaskTransition, TradeTask
from trading.outbox import execute_message, task_id_of
from trading.serializers import TaskSerializer, task_body
from trading.symbol_specs import store_specs

pytestmark = pytest.mark.django_db(transaction=True)
FULL_PATH_STATUS = 599
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}
EURUSD = {"name": "EURUSD", "digits": 5, "point": 1e-5, "trade_tick_size": 1e-5, "volume_min": 0.01,
          "volume_max": 100.0, "volume_step": 0.01, "volume_limit": 0.0, "trade_mode": 4, "trade_exemode": 2,
          "filling_mode": 3, "order_mode": 127, "expiration_mode": 15, "trade_stops_level": 0,
          "trade_freeze_level": 0, "select": True, "visible": True}


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


class Live:
    """A session with a key, its terminal's specs published for it, and a HotWrites in front of a stand-in."""

    def __init__(self, behind: Any = None) -> None:
        self.workspace = make_workspace()
        self.key_row, self.key = make_api_key(self.workspace)
        self.session = make_session(self.workspace)
        self.terminal = self.session.terminal.name
        store_specs(self.terminal, self.session.id, [EURUSD])
        self.handed: list[bytes] = []
        self.app = HotWrites(behind or self._full_path)

    async def _full_path(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.handed.append(body)
        await send({"type": "http.response.start", "status": FULL_PATH_STATUS, "headers": []})
        await send({"type": "http.response.body", "body": body})

    def headers(self, rid: str | None = None, **extra: str) -> list[tuple[bytes, bytes]]:
        headers = [(b"authorization", f"Bearer {self.key}".encode()), (b"x-session-id", self.session.id.encode()),
                   (b"content-type", b"application/json"), (b"host", b"testserver")]
        if rid is not None:
            headers.append((b"x-request-id", rid.encode()))
        return headers + [(k.encode(), v.encode()) for k, v in extra.items()]

    def close(self) -> None:
        if self.app._writer is not None:  # its threads' database connections, or the test database stays in use
            self.app._writer.executor.submit(connections.close_all).result()
            self.app._writer.publisher.submit(connections.close_all).result()


async def _post(app: Any, headers: list[tuple[bytes, bytes]], body: bytes, query: bytes = b""
                ) -> tuple[int, dict[bytes, bytes], bytes]:
    headers = [h for h in headers if h[0] != b"content-length"] + [(b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/mt5/client/orders", "query_string": query,
             "headers": headers, "scheme": "http", "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
             "http_version": "1.1", "root_path": ""}
    chunks = [body[:7], body[7:]]  # two messages: the body is reassembled (and handed on) whole
    sent: list[dict] = []

    async def receive() -> dict:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, payload = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), payload


def post(app: Any, headers: list[tuple[bytes, bytes]], body: dict | bytes, query: bytes = b""):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(_post(app, headers, raw, query))


def _queued_ids(terminal: str, expect: int = 0, timeout: float = 5.0) -> list[str]:
    """The task ids of the terminal's queued messages, once there are ``expect`` of them (the batch's
    messages are pushed by the publisher thread after the commit, maybe after the answer), or the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        ids = [task_id_of(m) for m in _redis().lrange(terminal_queue(terminal), 0, -1)]
        if len(ids) >= expect or time.monotonic() > deadline:
            return ids
        time.sleep(0.02)


@pytest.fixture
def live() -> Iterator[Live]:
    live = Live()
    _redis().delete(terminal_queue(live.terminal))
    yield live
    live.close()
    asyncio.run(sync_to_async(connections.close_all)())


def test_an_order_is_accepted_with_its_task_its_transition_and_its_message(live: Live) -> None:
    status, headers, body = post(live.app, live.headers("hot-1"), ORDER)
    assert status == 202, body
    task = TradeTask.objects.get()
    assert json.loads(body) == json.loads(JSONRenderer().render(TaskSerializer(task).data))
    assert task_body(task) == TaskSerializer(task).data
    assert headers[b"x-request-id"] == b"hot-1" and b"idempotent-replayed" not in headers
    assert headers[b"content-type"] == b"application/json" and headers[b"allow"] == b"GET, POST, HEAD, OPTIONS"
    assert (task.request_id, task.session_id, task.state, task.request) == ("hot-1", live.session.id, "queued",
                                                                            ORDER)
    assert task.published_at is not None and task.tag.startswith("b:")
    assert list(TaskTransition.objects.filter(task=task).values_list("from_state", "to_state")) == [("", "queued")]
    assert _queued_ids(live.terminal, 1) == [task.id]  # published after the commit, as the worker reads it
    assert live.handed == []


def test_a_replay_is_the_same_task_and_another_payload_goes_to_the_full_path(live: Live) -> None:
    first = post(live.app, live.headers("hot-2"), ORDER)
    again = post(live.app, live.headers("hot-2"), dict(reversed(list(ORDER.items()))))
    assert first[0] == again[0] == 202
    assert again[1][b"idempotent-replayed"] == b"true"
    assert json.loads(again[2])["taskId"] == json.loads(first[2])["taskId"]
    other = json.dumps({**ORDER, "volume": 0.2}).encode()
    status, _, body = post(live.app, live.headers("hot-2"), other)
    assert status == FULL_PATH_STATUS and body == other  # the full path answers 409 TaskConflict from the ledger
    assert TradeTask.objects.count() == 1 and len(_queued_ids(live.terminal, 1)) == 1


def _warm(live: Live) -> str:
    """One order first: the grants are cached and the access epoch the session's creation rotated is read."""
    status, _, body = post(live.app, live.headers("hot-warm"), ORDER)
    assert status == 202, body
    return json.loads(body)["taskId"]


def test_twenty_concurrent_identical_requests_make_one_task_and_one_message(live: Live) -> None:
    warm = _warm(live)

    async def burst() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        raw = json.dumps(ORDER).encode()
        return await asyncio.gather(*[_post(live.app, live.headers("hot-same"), raw) for _ in range(20)])

    results = asyncio.run(burst())
    assert {status for status, _, _ in results} == {202}
    assert len({json.loads(body)["taskId"] for _, _, body in results}) == 1
    assert sum(1 for _, headers, _ in results if b"idempotent-replayed" not in headers) == 1
    assert TradeTask.objects.exclude(id=warm).count() == 1 and len(_queued_ids(live.terminal, 2)) == 2


def test_concurrent_orders_are_one_batch_each_its_own_task(live: Live) -> None:
    warm = _warm(live)

    async def burst() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        return await asyncio.gather(*[_post(live.app, live.headers(f"hot-many-{i}"), json.dumps(ORDER).encode())
                                      for i in range(40)])

    results = asyncio.run(burst())
    assert {status for status, _, _ in results} == {202}
    ids = {json.loads(body)["taskId"] for _, _, body in results}
    assert len(ids) == 40 and set(TradeTask.objects.exclude(id=warm).values_list("id", flat=True)) == ids
    assert sorted(_queued_ids(live.terminal, 41)) == sorted(ids | {warm})
    assert TaskTransition.objects.filter(task_id__in=ids, from_state="", to_state="queued").count() == 40


def test_no_request_id_gets_a_new_one_each_time(live: Live) -> None:
    one = post(live.app, live.headers(), ORDER)
    two = post(live.app, live.headers(), ORDER)
    assert one[0] == two[0] == 202
    rids = {one[1][b"x-request-id"], two[1][b"x-request-id"]}
    assert len(rids) == 2 and all(r.startswith(b"req_") for r in rids)
    assert TradeTask.objects.count() == 2


@pytest.mark.parametrize(("change", "body"), [
    ("query string", ORDER),
    ("form body", ORDER),
    ("unknown field", {**ORDER, "voluem": 1}),
    ("volume off its step", {**ORDER, "volume": 0.015}),
    ("unknown symbol", {**ORDER, "symbol": "NOPE"}),
    ("not an object", [ORDER]),
    ("malformed", b'{"symbol": '),
    ("NaN", b'{"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "sl": NaN}'),
    ("UTF-16", json.dumps(ORDER).encode("utf-16")),
    ("too deep", b'{"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "comment": ' + b"[" * 40 + b"]" * 40 + b"}"),
    ("bad request id", ORDER),
    ("repeated request id", ORDER),
    ("idempotency-key alias", ORDER),
    ("unknown session", ORDER),
    ("bad key", ORDER),
    ("closed session", ORDER),
    ("specs of another session", ORDER),
    ("no specs", ORDER),
])
def test_what_the_hot_path_cannot_vouch_for_goes_the_full_way_untouched(live: Live, change: str, body: Any) -> None:
    headers, query = live.headers("hot-x"), b""
    if change == "query string":
        query = b"wait=1"
    elif change == "form body":
        headers = [h for h in headers if h[0] != b"content-type"] + [(b"content-type", b"text/plain")]
    elif change == "bad request id":
        headers = live.headers("bad id with spaces")
    elif change == "repeated request id":
        headers = live.headers("hot-x") + [(b"x-request-id", b"hot-y")]
    elif change == "idempotency-key alias":
        headers = live.headers(**{"idempotency-key": "hot-x"})
    elif change == "unknown session":
        headers = [h if h[0] != b"x-session-id" else (h[0], b"sess_nope") for h in headers]
    elif change == "bad key":
        headers = [h if h[0] != b"authorization" else (h[0], b"Bearer mt5b_nope") for h in headers]
    elif change == "closed session":
        session_close(session=BridgeSession.objects.get(id=live.session.id))
    elif change == "specs of another session":
        store_specs(live.terminal, "sess_other", [EURUSD])
    elif change == "no specs":
        _redis().delete(f"bridge:symspec:{live.terminal}")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, echoed = post(live.app, headers, raw, query)
    assert status == FULL_PATH_STATUS and echoed == raw and live.handed == [raw]
    assert TradeTask.objects.count() == 0 and _queued_ids(live.terminal) == []


def test_a_closed_session_is_refused_from_the_next_request_on(live: Live) -> None:
    assert post(live.app, live.headers("hot-c1"), ORDER)[0] == 202  # the grants are now cached
    session_close(session=BridgeSession.objects.get(id=live.session.id))
    assert post(live.app, live.headers("hot-c2"), ORDER)[0] == FULL_PATH_STATUS
    assert TradeTask.objects.filter(request_id="hot-c2").count() == 0


def test_the_hot_answer_is_the_full_paths_answer() -> None:
    """A new order through the hot path, then the same request through Django itself: the full path
    replays it with the same body and the same headers (plus Idempotent-Replayed)."""
    live = Live(behind=get_asgi_application())
    try:
        hot = post(live.app, live.headers("hot-same-answer"), ORDER)
        full = asyncio.run(_post(get_asgi_application(), live.headers("hot-same-answer"), json.dumps(ORDER).encode()))
        assert hot[0] == full[0] == 202, (hot, full)
        assert json.loads(hot[2]) == json.loads(full[2])  # (PostgreSQL's jsonb gives the replay's keys in its order)
        full_headers = {k.lower(): v for k, v in full[1].items()}
        assert full_headers.pop(b"idempotent-replayed") == b"true"
        assert hot[1] == full_headers
    finally:
        live.close()
        asyncio.run(sync_to_async(connections.close_all)())


def test_the_lean_message_is_the_one_kombu_writes() -> None:
    """outbox.execute_message against what ``send_task`` puts in the queue: the same envelope, headers,
    properties and body, but for the fresh ids."""
    queue = f"terminal.lean-{time.monotonic_ns()}"
    client = _redis()
    try:
        celery_app.send_task("trading.execute", args=["tsk_lean"], queue=queue)
        kombu_message = json.loads(client.lpop(queue))
        ours = json.loads(execute_message("tsk_lean", queue))
    finally:
        client.delete(queue, f"_kombu.binding.{queue}")

    def normal(message: dict) -> dict:
        message = json.loads(json.dumps(message))
        for key in ("id", "root_id", "origin"):
            message["headers"][key] = "*"
        for key in ("correlation_id", "delivery_tag"):
            message["properties"][key] = "*"
        return message

    assert normal(ours) == normal(kombu_message)
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    assert task_id_of(json.dumps(ours)) == "tsk_lean"


def test_a_batch_insert_skips_a_task_whose_request_id_is_taken_and_keeps_the_others(live: Live) -> None:
    """ledger.tasks_insert_batch: the unique index arbitrates per row (ON CONFLICT DO NOTHING), so a request
    id taken meanwhile (by another process, after the batch's lookup) costs that row only."""
    from trading.ledger import tasks_insert_batch
    from trading.orders import new_tag
    from trading.states import task_create

    def task(rid: str) -> TradeTask:
        return TradeTask(workspace_id=live.workspace.id, session_id=live.session.id,
                         terminal_id=live.session.terminal_id, request_id=rid, fingerprint="f", kind="order.create",
                         request=ORDER, tag=new_tag())

    taken = task("batch-taken")
    task_create(task=taken)
    created = tasks_insert_batch(tasks=[task("batch-taken"), task("batch-new"), task("batch-new")])
    assert [t.request_id for t in created] == ["batch-new"]
    assert TradeTask.objects.filter(request_id="batch-taken").get().id == taken.id
    assert list(TaskTransition.objects.filter(task=created[0]).values_list("from_state", "to_state")) == [("", "queued")]
