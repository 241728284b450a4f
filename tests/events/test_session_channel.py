"""The ``session`` channel: a session's status changes reach every socket of the session, and a final one
ends the socket with 4410 at once (real daphne, channel layer and Redis)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient
from websockets.exceptions import ConnectionClosed

from sessions.models import BridgeSession, SessionStatus
from streams.publisher import publish_session_event
from tests.events.conftest import start_daphne, ws_connect

pytestmark = pytest.mark.django_db(transaction=True)


def _status(session, status: str, previous: str, **extra) -> int:
    seq = publish_session_event(session.id, "session",
                                {"sessionId": session.id, "status": status, "from": previous, **extra})
    assert seq is not None
    return seq


def _ping(client, rid: str = "p") -> dict:
    client.send({"type": "ping", "request_id": rid})
    return client.recv_until(lambda m: m.get("request_id") == rid)[0]


def test_session_events_reach_every_socket_without_subscribing_and_a_close_ends_them_with_4410(
        ws, make_session) -> None:
    session, other = make_session(), make_session()
    bare = ws(session)  # subscribed to nothing
    orders = ws(session)
    orders.send({"type": "subscribe", "channels": ["order"], "request_id": "s"})
    reply = orders.recv_until(lambda m: m.get("request_id") == "s")[0]
    assert reply["channels"] == ["order", "session"]  # always delivered, listed as such
    theirs = ws(other)
    _ping(bare), _ping(theirs)  # both sockets are set up before anything is published

    seq = _status(session, "active", "opening")
    for client in (bare, orders):
        event = client.recv_until(lambda m: m["type"] == "session")[0]
        assert event["seq"] == seq and event["sessionId"] == session.id and event["epoch"] > 0
        assert event["data"] == {"sessionId": session.id, "status": "active", "from": "opening"}
    assert _ping(bare)["seq"] == seq  # still open, and it followed the sequence

    closed_seq = _status(session, "closed", "active", reason="client")
    started = time.monotonic()
    for client in (bare, orders):
        event, _ = client.recv_until(lambda m: m["type"] == "session")
        assert event["seq"] == closed_seq
        assert event["data"] == {"sessionId": session.id, "status": "closed", "from": "active", "reason": "client"}
        assert client.close_code(timeout=5) == 4410
    # at once: the database still says active (the 30 s liveness check would never close it)
    assert time.monotonic() - started < 5
    assert BridgeSession.objects.get(id=session.id).status == SessionStatus.ACTIVE
    # the other session's socket saw none of it and is still open
    assert [m for m in theirs.drain(0.5) if m["type"] == "session"] == []
    assert _ping(theirs)["type"] == "pong"


@pytest.mark.parametrize("status", ["expired", "login_failed"])
def test_every_final_status_ends_the_socket(ws, make_session, status: str) -> None:
    session = make_session()
    client = ws(session)
    _ping(client)
    _status(session, status, "opening" if status == "login_failed" else "active",
            error={"code": "LoginFailed", "message": "invalid account"} if status == "login_failed" else None)
    event = client.recv_until(lambda m: m["type"] == "session")[0]
    assert event["data"]["status"] == status
    assert client.close_code(timeout=5) == 4410


def test_non_final_statuses_keep_the_socket_open_and_unsubscribe_cannot_drop_the_channel(
        ws, make_session) -> None:
    session = make_session()
    client = ws(session)
    client.send({"type": "unsubscribe", "channels": ["session"], "request_id": "u"})
    assert client.recv_until(lambda m: m.get("request_id") == "u")[0]["subscribed"] == ["session"]
    _status(session, "opening", "opening")
    _status(session, "active", "opening")
    got = [client.recv_until(lambda m: m["type"] == "session")[0]["data"]["status"] for _ in range(2)]
    assert got == ["opening", "active"]
    assert _ping(client)["type"] == "pong"


def test_a_final_session_event_in_a_replay_ends_the_socket_after_the_events_before_it(
        ws, make_session) -> None:
    session = make_session()
    publish_session_event(session.id, "order", {"taskId": "tsk_1", "state": "filled"})
    _status(session, "active", "opening")
    publish_session_event(session.id, "order", {"taskId": "tsk_2", "state": "cancelled"})
    _status(session, "closed", "active", reason="client")
    publish_session_event(session.id, "order", {"taskId": "tsk_late", "state": "filled"})
    # the database still has the session live, so the socket opens; the replay carries the close
    client = ws(session, query="since=0")
    seen = []
    code = None
    deadline = time.monotonic() + 10
    while code is None and time.monotonic() < deadline:
        try:
            seen.append(client.recv(timeout=deadline - time.monotonic()))
        except TimeoutError:
            break
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
    assert code == 4410, seen
    assert [(m["type"], m["seq"]) for m in seen] == [("order", 1), ("session", 2), ("order", 3), ("session", 4)]


def test_rest_recent_events_carry_session_events_and_the_epoch(make_session) -> None:
    session = make_session()
    _status(session, "active", "opening")
    publish_session_event(session.id, "order", {"taskId": "tsk_1", "state": "filled"})
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {session.key}", HTTP_X_SESSION_ID=session.id)
    body = api.get("/mt5/client/events/recent?since=0").json()
    assert [e["type"] for e in body["events"]] == ["session", "order"]
    assert body["epoch"] > 0 and {e["epoch"] for e in body["events"]} == {body["epoch"]}
    assert [e["type"] for e in api.get("/mt5/client/events/recent?channels=session").json()["events"]] == ["session"]
    # an epoch that is not the session's: resync, go on from the start of the current epoch (all kept)
    stale = api.get(f"/mt5/client/events/recent?since=2&epoch={body['epoch'] - 1}").json()
    assert stale["resyncRequired"] is True and stale["events"] == [] and stale["next"] == 0
    assert stale["epoch"] == body["epoch"]
    same = api.get(f"/mt5/client/events/recent?since=1&epoch={body['epoch']}").json()
    assert same["resyncRequired"] is False and [e["seq"] for e in same["events"]] == [2]


@pytest.fixture
def checking_daphne(tmp_path, django_db_blocker) -> Iterator[str]:
    """A daphne whose sockets check their session in the database every round (the fallback)."""
    with django_db_blocker.unblock():
        proc, url = start_daphne(tmp_path, {"BRIDGE_EVENTS_SESSION_CHECK_INTERVAL": "1"}, name="daphne-check")
    yield url
    proc.stop()


def test_without_the_event_the_database_check_still_ends_the_socket(checking_daphne, make_session) -> None:
    session = make_session()
    client = ws_connect(checking_daphne, session)
    try:
        _ping(client)
        BridgeSession.objects.filter(id=session.id).update(status=SessionStatus.CLOSED)  # no event published
        error = client.recv_until(lambda m: m["type"] == "error", timeout=20)[0]
        assert error["error"]["code"] == "SessionExpired"
        assert client.close_code(timeout=5) == 4410
    finally:
        client.close()

