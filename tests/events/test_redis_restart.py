"""Redis restarted empty (no persistence) under an open socket: nothing published after it is dropped.

A private ``redis-server`` (never the shared one) on a free port, a daphne and this process's publisher
pointed at it; the server is killed and a fresh, empty one started on the same port.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

import streams.publisher as publisher
from streams.keys import seq_key, subs_key
from streams.publisher import publish_session_event
from tests.events.conftest import PrivateRedis, WsClient, start_daphne, ws_connect
from tests.procs import Proc
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory, django_db_setup,
                  django_db_blocker) -> Iterator[tuple[PrivateRedis, Proc, str]]:
    server = PrivateRedis(tmp_path_factory.mktemp("private-redis"))
    server.start()
    try:
        with django_db_blocker.unblock():
            daphne, url = start_daphne(tmp_path_factory.mktemp("daphne-private"), {"REDIS_URL": server.url},
                                       name="daphne-private")
        try:
            yield server, daphne, url
        finally:
            daphne.stop()
    finally:
        server.stop()


@pytest.fixture
def stack(private_stack, settings) -> Iterator[tuple[PrivateRedis, Proc, str]]:
    """This process's publisher writes to the private Redis for the test."""
    settings.REDIS_URL = private_stack[0].url
    publisher._clients.clear()
    yield private_stack
    publisher._clients.clear()


def _order(task: str, state: str = "filled") -> dict:
    return {"taskId": task, "requestId": f"req-{task}", "kind": "order.create", "state": state, "result": None}


def _orders(client: WsClient, count: int, timeout: float = 20) -> tuple[list[dict], list[dict]]:
    """The next ``count`` order events, and every other message seen meanwhile."""
    got: list[dict] = []
    others: list[dict] = []
    while len(got) < count:
        message, before = client.recv_until(lambda m: m["type"] == "order", timeout=timeout)
        others += before
        got.append(message)
    return got, others


def test_a_socket_open_across_a_redis_restart_gets_every_order_event_published_after_it(
        stack, make_session) -> None:
    server, daphne, url = stack
    session = make_session()
    sock = ws_connect(url, session)
    try:
        sock.send({"type": "subscribe", "channels": ["order", "quote:EURUSD"], "request_id": "s"})
        assert sock.recv_until(lambda m: m.get("request_id") == "s")[0]["seq"] == 0
        for n in range(5):
            publish_session_event(session.id, "order", _order(f"tsk_before_{n}"))
        before, _ = _orders(sock, 5)
        old_epoch = before[0]["epoch"]
        assert [m["seq"] for m in before] == [1, 2, 3, 4, 5] and {m["epoch"] for m in before} == {old_epoch}

        server.kill()
        server.start()  # empty: the counter, the epoch, the fan-out group, the channel-layer groups are gone
        r = redis.Redis.from_url(server.url)
        assert not r.exists(seq_key(session.id))
        for n in range(3):
            assert publish_session_event(session.id, "order", _order(f"tsk_after_{n}")) == n + 1
        new_epoch = int(r.hget(seq_key(session.id), "e"))
        assert new_epoch > old_epoch

        # the socket that stayed open is told to resync, then gets the three new events, in order
        after, others = _orders(sock, 3)
        notices = [m for m in others if m["type"] == "resync_required"]
        assert notices == [{"type": "resync_required", "since": 5, "epoch": new_epoch, "oldestSeq": 1, "seq": 0}]
        assert [(m["seq"], m["epoch"], m["data"]["taskId"]) for m in after] == [
            (1, new_epoch, "tsk_after_0"), (2, new_epoch, "tsk_after_1"), (3, new_epoch, "tsk_after_2")]

        # live delivery works again: the socket is back in its channel-layer groups (a quote only ever
        # comes through the group, never from the stream) and its quote subscription is back for the poller
        def quote_arrives() -> bool:
            publish_session_event(session.id, "quote:EURUSD", {"symbol": "EURUSD", "bid": 1.1, "ask": 1.2})
            try:
                message = sock.recv_until(lambda m: m["type"] == "quote:EURUSD", timeout=0.5)[0]
            except TimeoutError:
                return False
            return message["epoch"] == new_epoch and message["seq"] == 3

        wait_until(quote_arrives, 20, "a quote through the re-joined group")
        assert wait_until(lambda: r.hlen(subs_key(session.terminal)), 10, "the quote subscription re-registered")
        publish_session_event(session.id, "order", _order("tsk_live"))
        live = sock.recv_until(lambda m: m["type"] == "order", timeout=5)[0]
        assert (live["seq"], live["epoch"], live["data"]["taskId"]) == (4, new_epoch, "tsk_live")
        sock.send({"type": "ping", "request_id": "p"})
        pong = sock.recv_until(lambda m: m.get("request_id") == "p")[0]
        assert (pong["seq"], pong["epoch"]) == (4, new_epoch)
        assert "Redis restarted" in daphne.log()

        # a client coming back with a pre-restart position (seq 5 of the old epoch) must resync, even
        # though seq 5 looks reachable in the new sequence; then it gets the new epoch's events and live ones
        publish_session_event(session.id, "order", _order("tsk_5"))  # the new epoch passes seq 5
        back = ws_connect(url, session, query=f"since=5&epoch={old_epoch}")
        try:
            notice = back.recv()
            assert notice == {"type": "resync_required", "since": 5, "epoch": new_epoch, "oldestSeq": 1, "seq": 0}
            replayed, _ = _orders(back, 5)
            assert [m["seq"] for m in replayed] == [1, 2, 3, 4, 5]
            publish_session_event(session.id, "order", _order("tsk_after_resume"))
            assert back.recv_until(lambda m: m["type"] == "order")[0]["seq"] == 6
            # the same with a resume message on an open socket
            back.send({"type": "resume", "since": 5, "epoch": old_epoch, "request_id": "r"})
            reply = back.recv_until(lambda m: m.get("request_id") == "r")[0]
            assert reply | {"request_id": None} == {"type": "resync_required", "since": 5, "epoch": new_epoch,
                                                    "oldestSeq": 1, "seq": 0, "request_id": None}
            # and with the current epoch it is an ordinary resume
            back.send({"type": "resume", "since": 5, "epoch": new_epoch, "request_id": "r2"})
            done, replayed = back.recv_until(lambda m: m.get("request_id") == "r2")
            assert done["type"] == "resumed" and done["epoch"] == new_epoch and done["seq"] == 6
            assert [m["data"]["taskId"] for m in replayed if m["type"] == "order"][-1] == "tsk_after_resume"
        finally:
            back.close()
    finally:
        sock.close()


def test_a_restart_with_nothing_published_yet_then_a_resume_from_before_it(stack, make_session) -> None:
    server, _daphne, url = stack
    session = make_session()
    sock = ws_connect(url, session)
    try:
        sock.send({"type": "subscribe", "channels": ["order"], "request_id": "s"})
        sock.recv_until(lambda m: m.get("request_id") == "s")
        publish_session_event(session.id, "order", _order("tsk_1"))
        old_epoch = sock.recv_until(lambda m: m["type"] == "order")[0]["epoch"]
        server.kill()
        server.start()
        # nothing published yet: a resume from the old epoch resyncs to "no sequence yet" (epoch 0)
        sock.send({"type": "resume", "since": 1, "epoch": old_epoch, "request_id": "r"})
        reply = sock.recv_until(lambda m: m.get("request_id") == "r", timeout=20)[0]
        assert reply == {"type": "resync_required", "since": 1, "epoch": 0, "oldestSeq": None, "seq": 0,
                         "request_id": "r"}
        # the first event of the new sequence is simply followed (the socket had nothing of it)
        publish_session_event(session.id, "order", _order("tsk_new"))
        event, before = sock.recv_until(lambda m: m["type"] == "order", timeout=20)
        assert (event["seq"], event["data"]["taskId"]) == (1, "tsk_new") and event["epoch"] > old_epoch
        assert [m for m in before if m["type"] == "resync_required"] == []
    finally:
        sock.close()


def test_while_redis_is_down_sockets_stay_open_new_ones_get_4503_and_delivery_resumes(
        stack, make_session) -> None:
    server, _daphne, url = stack
    session = make_session()
    sock = ws_connect(url, session)
    try:
        sock.send({"type": "subscribe", "channels": ["order"], "request_id": "s"})
        sock.recv_until(lambda m: m.get("request_id") == "s")
        publish_session_event(session.id, "order", _order("tsk_1"))
        old_epoch = sock.recv_until(lambda m: m["type"] == "order")[0]["epoch"]
        server.kill()
        try:
            sock.send({"type": "ping", "request_id": "p"})
            assert sock.recv_until(lambda m: m.get("request_id") == "p")[0]["type"] == "pong"
            # a client message that needs Redis: an error the client can retry on, not a dead socket
            sock.send({"type": "resume", "since": 1, "request_id": "r"})
            reply = sock.recv_until(lambda m: m.get("request_id") == "r", timeout=30)[0]
            assert reply["type"] == "error" and reply["error"]["code"] == "Unavailable", reply
            newcomer = ws_connect(url, session)
            try:
                error = newcomer.recv(timeout=30)
                assert error["type"] == "error" and error["error"]["code"] == "Unavailable", error
                assert newcomer.close_code(timeout=10) == 4503
            finally:
                newcomer.close()
        finally:
            server.start()
        publish_session_event(session.id, "order", _order("tsk_back"))
        event, before = sock.recv_until(lambda m: m["type"] == "order", timeout=20)
        assert (event["seq"], event["data"]["taskId"]) == (1, "tsk_back") and event["epoch"] > old_epoch
        assert [m["type"] for m in before if m["type"] == "resync_required"] == ["resync_required"]
    finally:
        sock.close()
