"""The /events socket on a real daphne with the real channel layer and Redis (no terminal needed)."""

from __future__ import annotations

import time

import pytest

from streams.poll_events import after_poll
from streams.publisher import publish_session_event

pytestmark = pytest.mark.django_db(transaction=True)


def _order(task: str, state: str) -> dict:
    return {"taskId": task, "requestId": f"req-{task}", "kind": "order.create", "state": state, "result": None}


def _subscribe(client, channels: list[str], rid: str = "r1") -> dict:
    client.send({"type": "subscribe", "channels": channels, "request_id": rid})
    reply, _ = client.recv_until(lambda m: m.get("request_id") == rid)
    assert reply["type"] == "subscribed", reply
    return reply


def test_bad_credentials_close_with_4401(ws, make_session) -> None:
    session = make_session()
    other = make_session()
    assert ws(session, token="mt5b_nope_nope").close_code() == 4401
    assert ws(session, session_id="sess_unknown").close_code() == 4401
    assert ws(None).close_code() == 4401
    # a valid key of another workspace cannot open this session's stream
    assert ws(session, token=other.key).close_code() == 4401
    # query-string credentials work for browsers
    client = ws(None, query=f"token={session.key}&session={session.id}")
    client.send({"type": "ping", "request_id": "p"})
    assert client.recv()["type"] == "pong"


def test_order_events_reach_the_subscribed_socket_in_seq_order(ws, make_session) -> None:
    session = make_session()
    client = ws(session)
    base = _subscribe(client, ["order"])["seq"]
    for state in ("queued", "dispatched", "filled"):
        publish_session_event(session.id, "order", _order("tsk_1", state))
    got = [client.recv_until(lambda m: m["type"] == "order")[0] for _ in range(3)]
    assert [m["data"]["state"] for m in got] == ["queued", "dispatched", "filled"]
    assert [m["seq"] for m in got] == [base + 1, base + 2, base + 3]
    assert all(m["sessionId"] == session.id for m in got)


def test_bad_messages_get_error_and_the_socket_stays_open(ws, make_session) -> None:
    client = ws(make_session())
    bad = [
        "not json",
        "[1, 2]",
        {"type": "dance"},
        {"type": "subscribe"},
        {"type": "subscribe", "channels": ["quote:"]},
        {"type": "subscribe", "channels": ["orders"]},
        {"type": "resume", "since": "12"},
        {"type": "resume", "since": -1},
        {"type": "resume", "since": 1, "channels": ["quote:EURUSD"]},
        {"type": "ping", "request_id": 5},
    ]
    for message in bad:
        client.send(message)
        reply = client.recv()
        assert reply["type"] == "error", (message, reply)
        assert reply["error"]["code"] == "ValidationError"
    client.conn.send(b"\x00binary")
    assert client.recv()["type"] == "error"
    client.send({"type": "ping", "request_id": "still-here"})
    assert client.recv() | {"time_msc": 0} == {"type": "pong", "request_id": "still-here", "time_msc": 0, "seq": 0,
                                               "epoch": 0}


def test_quotes_from_a_poll_reach_quote_subscribers_only(ws, make_session) -> None:
    session = make_session()
    quoted, silent = ws(session), ws(session)
    _subscribe(quoted, ["quote:EURUSD"])
    _subscribe(silent, ["quote:GBPUSD"])
    t = int(time.time() * 1000)
    tick = {"bid": 1.1, "ask": 1.1002, "last": 0.0, "volume": 0, "time_msc": t}
    after_poll(session.terminal, {"ticks": {"EURUSD": tick}}, {
        "times_utc": True, "ticks": {"EURUSD": {**tick, "bid": 1.1001, "time_msc": t + 5}, "GBPUSD": None}})
    quote, _ = quoted.recv_until(lambda m: m["type"].startswith("quote:"))
    assert quote["type"] == "quote:EURUSD"
    assert quote["data"] == {"symbol": "EURUSD", "bid": 1.1001, "ask": 1.1002, "last": 0.0, "volume": 0,
                             "time_msc": t + 5}
    assert silent.drain(0.5) == []


def test_another_workspace_session_receives_nothing(ws, make_session) -> None:
    mine, theirs = make_session(), make_session()
    me, them = ws(mine), ws(theirs)
    _subscribe(me, ["order", "position", "account", "quote:EURUSD"])
    _subscribe(them, ["order", "position", "account", "quote:EURUSD"])
    publish_session_event(mine.id, "order", _order("tsk_mine", "filled"))
    publish_session_event(mine.id, "quote:EURUSD", {"symbol": "EURUSD", "bid": 1, "ask": 1})
    assert me.recv_until(lambda m: m["type"] == "order")[0]["data"]["taskId"] == "tsk_mine"
    assert them.drain(1.0) == []
