"""Sequence numbers, retention and replay: socket resume/?since= and GET /events/recent."""

from __future__ import annotations

import pytest
import redis
from rest_framework.test import APIClient

from streams.keys import log_key, seq_key
from streams.publisher import publish_session_event

pytestmark = pytest.mark.django_db(transaction=True)

RECENT = "/mt5/client/events/recent"


def _order(n: int, state: str = "filled") -> dict:
    return {"taskId": f"tsk_{n}", "requestId": f"req_{n}", "kind": "order.create", "state": state, "result": None}


def _api(session) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {session.key}", HTTP_X_SESSION_ID=session.id)
    return api


def test_seq_is_per_session_and_gapless_across_channels(make_session) -> None:
    a, b = make_session(), make_session()
    seqs_a = [publish_session_event(a.id, ch, {"n": i}) for i, ch in enumerate(["order", "position", "account"] * 3)]
    seqs_b = [publish_session_event(b.id, "order", _order(i)) for i in range(2)]
    assert seqs_a == list(range(1, 10))
    assert seqs_b == [1, 2]
    # quotes are not replayable: they carry the last replayable seq and do not consume one
    assert publish_session_event(a.id, "quote:EURUSD", {"bid": 1}) == 9
    assert publish_session_event(a.id, "order", _order(99)) == 10


def test_reconnect_with_since_gets_missed_orders_in_order_then_live(ws, make_session) -> None:
    session = make_session()
    client = ws(session)
    client.send({"type": "subscribe", "channels": ["order", "position"], "request_id": "s"})
    base = client.recv_until(lambda m: m.get("request_id") == "s")[0]["seq"]
    publish_session_event(session.id, "order", _order(1, "queued"))
    last = client.recv_until(lambda m: m["type"] == "order")[0]["seq"]
    client.close()
    # while disconnected: two orders go through every state, a position opens
    for n in (2, 3):
        for state in ("queued", "dispatched", "filled"):
            publish_session_event(session.id, "order", _order(n, state))
    publish_session_event(session.id, "position", {"event": "opened", "ticket": 7})
    again = ws(session, query=f"since={last}")
    replayed = []
    while True:
        message = again.recv()
        if message["type"] == "resumed":
            break
        replayed.append(message)
    assert [m["seq"] for m in replayed] == list(range(last + 1, last + 8))
    assert [(m["data"].get("taskId"), m["data"].get("state")) for m in replayed[:6]] == [
        ("tsk_2", "queued"), ("tsk_2", "dispatched"), ("tsk_2", "filled"),
        ("tsk_3", "queued"), ("tsk_3", "dispatched"), ("tsk_3", "filled")]
    assert replayed[6]["type"] == "position"
    assert base < last
    # then live, continuing the same sequence without duplicates
    publish_session_event(session.id, "order", _order(4, "queued"))
    live = again.recv_until(lambda m: m["type"] == "order")[0]
    assert live["seq"] == last + 8


def test_resume_message_replays_and_filters_channels(ws, make_session) -> None:
    session = make_session()
    publish_session_event(session.id, "order", _order(1))
    publish_session_event(session.id, "account", {"balance": 1})
    publish_session_event(session.id, "order", _order(2))
    client = ws(session)
    client.send({"type": "resume", "since": 0, "channels": ["order"], "request_id": "r"})
    done, before = client.recv_until(lambda m: m["type"] == "resumed")
    assert [m["seq"] for m in before] == [1, 3]
    epoch = before[0]["epoch"]
    assert epoch > 0 and all(m["epoch"] == epoch for m in before)
    assert done == {"type": "resumed", "since": 0, "epoch": epoch, "seq": 3, "replayed": 2, "request_id": "r"}


def test_resync_required_past_retention(ws, make_session, settings) -> None:
    settings.BRIDGE_EVENTS_MAXLEN = 5
    session = make_session()
    for n in range(12):
        publish_session_event(session.id, "order", _order(n))
    r = redis.Redis.from_url(settings.REDIS_URL)
    assert r.xlen(log_key(session.id)) == 5
    client = ws(session, query="since=3")
    message = client.recv()
    epoch = int(r.hget(seq_key(session.id), "e"))
    assert message == {"type": "resync_required", "since": 3, "epoch": epoch, "oldestSeq": 8, "seq": 12}
    # live events go on after the resync notice
    publish_session_event(session.id, "order", _order(99))
    assert client.recv_until(lambda m: m["type"] == "order")[0]["seq"] == 13
    # 9..13 are kept now: since=8 is fully covered (a replay, not a resync), since=7 is not
    client2 = ws(session, query="since=8")
    done, before = client2.recv_until(lambda m: m["type"] == "resumed")
    assert [m["seq"] for m in before] == [9, 10, 11, 12, 13]
    assert ws(session, query="since=7").recv()["type"] == "resync_required"
    # a seq the session never reached cannot be continued either
    assert ws(session, query="since=500").recv()["type"] == "resync_required"


def test_events_older_than_max_age_are_trimmed(make_session, settings) -> None:
    settings.BRIDGE_EVENTS_MAX_AGE = 0.2
    session = make_session()
    for n in range(3):
        publish_session_event(session.id, "order", _order(n))
    import time

    r = redis.Redis.from_url(settings.REDIS_URL)
    assert [i.decode() for i, _ in r.xrange(log_key(session.id))] == ["1-0", "2-0", "3-0"]  # young: all kept
    # Time itself is the subject: the three events must become older than the max age (0.2 s).
    time.sleep(0.3)
    publish_session_event(session.id, "order", _order(3))
    ids = [i.decode() for i, _ in r.xrange(log_key(session.id))]
    assert ids == ["4-0"]
    assert int(r.hget(seq_key(session.id), "n")) == 4
    assert r.ttl(log_key(session.id)) > 0


def test_recent_events_endpoint_pages_and_filters(make_session) -> None:
    session = make_session()
    for n in range(5):
        publish_session_event(session.id, "order", _order(n))
        publish_session_event(session.id, "position", {"event": "opened", "ticket": n})
    api = _api(session)
    first = api.get(f"{RECENT}?since=0&limit=4")
    assert first.status_code == 200, first.content
    body = first.json()
    assert [e["seq"] for e in body["events"]] == [1, 2, 3, 4]
    assert body["hasMore"] is True and body["next"] == 4 and body["seq"] == 10
    rest = api.get(f"{RECENT}?since=4&channels=order").json()
    assert [(e["seq"], e["type"]) for e in rest["events"]] == [(5, "order"), (7, "order"), (9, "order")]
    assert rest["hasMore"] is False and rest["resyncRequired"] is False


def test_recent_events_bad_input_and_isolation(make_session) -> None:
    session, other = make_session(), make_session()
    publish_session_event(session.id, "order", _order(1))
    api = _api(session)
    for query in ("since=-1", "since=abc", "limit=0", "limit=5000", "channels=quote:EURUSD", "channels="):
        response = api.get(f"{RECENT}?{query}")
        assert response.status_code == 400, (query, response.content)
        assert response.json()["error"]["code"] == "ValidationError"
    # another workspace's key with this session id: 401, and nothing of the session leaks
    intruder = APIClient()
    intruder.credentials(HTTP_AUTHORIZATION=f"Bearer {other.key}", HTTP_X_SESSION_ID=session.id)
    response = intruder.get(RECENT)
    assert response.status_code == 401 and "events" not in response.json()
    assert APIClient().get(RECENT).status_code == 401
    # the other session's own stream is empty
    assert _api(other).get(RECENT).json()["events"] == []


def test_resync_on_rest_when_retention_passed(make_session, settings) -> None:
    settings.BRIDGE_EVENTS_MAXLEN = 3
    session = make_session()
    for n in range(6):
        publish_session_event(session.id, "order", _order(n))
    body = _api(session).get(f"{RECENT}?since=1").json()
    assert body["resyncRequired"] is True and body["events"] == [] and body["oldestSeq"] == 4
    assert body["next"] == 6
