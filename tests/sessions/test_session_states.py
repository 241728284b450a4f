"""The session state machine against the real pinned worker (issue #10, "What to build" 1): each change of
status writes its transition row and emits its ``session`` event on the session's stream, and a session
still ``opening`` (a slow login at mt5sim) answers every write and terminal read 409 and queues nothing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient

from mt5sim.control import Control
from sessions.models import BridgeSession, SessionTransition
from sessions.services import sessions_expire_due
from streams.keys import log_key
from tests.conftest import Stack
from tests.waiting import wait_until
from trading.models import RequestReceipt, TradeTask

pytestmark = pytest.mark.django_db(transaction=True)
OPEN = "/mt5/client/session/open"
BASE = "/mt5/client"


def _open(client: APIClient, login: int, password: str = "pw", wait: int = 20) -> dict:
    body = {"accountId": f"acc-{login}", "server": "Demo", "login": login, "password": password, "terminal": "sim-a"}
    response = client.post(f"{OPEN}?wait={wait}", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _status_path(sid: str) -> list[str]:
    return list(SessionTransition.objects.filter(session_id=sid).status_changes().values_list("to_status", flat=True))


def _session_events(sid: str) -> list[tuple[str, str]]:
    """(from, status) of each ``session`` event in the session's replayable log (what its sockets get)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    found = []
    for _, fields in client.xrange(log_key(sid)):
        if fields.get(b"c") == b"session":
            data = json.loads(fields[b"e"])["data"]
            assert data["sessionId"] == sid, data
            found.append((data["from"], data["status"]))
    return found


def _events_are(sid: str, expected: list[tuple[str, str]]) -> None:
    wait_until(lambda: len(_session_events(sid)) >= len(expected), 10, f"{len(expected)} session events of {sid}")
    assert _session_events(sid) == expected


def test_every_status_change_writes_its_transition_and_emits_its_session_event(stack: Stack,
                                                                               client: APIClient) -> None:
    # opening -> active (the worker's login) -> closed (DELETE)
    closed = _open(client, 70201)
    assert closed["status"] == "active", closed
    assert client.delete(f"{BASE}/session/{closed['sessionId']}").json()["status"] == "closed"
    assert _status_path(closed["sessionId"]) == ["opening", "active", "closed"]
    _events_are(closed["sessionId"], [("opening", "active"), ("active", "closed")])
    # opening -> login_failed (MT5 refuses the password the account was created with)
    failed = _open(client, 70201, password="not-pw")
    assert failed["status"] == "login_failed", failed
    assert _status_path(failed["sessionId"]) == ["opening", "login_failed"]
    _events_are(failed["sessionId"], [("opening", "login_failed")])
    # opening -> active -> expired (no heartbeat within the TTL; beat's sweep, called here at a later time)
    expired = _open(client, 70202)
    assert expired["status"] == "active", expired
    assert sessions_expire_due(now=timezone.now() + timedelta(seconds=settings.BRIDGE_SESSION_TTL + 1)) == 1
    assert BridgeSession.objects.get(id=expired["sessionId"]).status == "expired"
    assert _status_path(expired["sessionId"]) == ["opening", "active", "expired"]
    _events_are(expired["sessionId"], [("opening", "active"), ("active", "expired")])


def test_a_session_still_opening_refuses_every_write_and_read_with_409_and_queues_nothing(
        stack: Stack, client: APIClient) -> None:
    ctl = Control(stack.addresses["sim-a"])
    ctl.delay(6.0, ["login"])  # a slow login (real MT5 logins take seconds): the session stays opening
    try:
        opened = _open(client, 70203, wait=0)
        sid = opened["sessionId"]
        assert opened["status"] == "opening", opened
        order = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}
        calls = [
            ("post", f"{BASE}/orders", order),
            ("patch", f"{BASE}/orders/tsk_x", {"volume": 0.2}),
            ("delete", f"{BASE}/orders/tsk_x", None),
            ("patch", f"{BASE}/positions/1", {"sl": 1.0}),
            ("post", f"{BASE}/positions/1/close", {}),
            ("post", f"{BASE}/positions/close", {}),
            ("get", f"{BASE}/account", None),
            ("get", f"{BASE}/positions", None),
            ("get", f"{BASE}/orders", None),
            ("get", f"{BASE}/positions/1", None),
            ("get", f"{BASE}/history/deals", None),
            ("get", f"{BASE}/symbols/EURUSD", None),
        ]
        for i, (method, path, body) in enumerate(calls):
            response = getattr(client, method)(path, body, format="json", HTTP_X_SESSION_ID=sid,
                                               HTTP_X_REQUEST_ID=f"opening-{i}")
            assert response.status_code == 409, (method, path, response.content)
            error = response.json()["error"]
            assert error["code"] == "SessionNotReady", (method, path, error)
            assert error["details"] == {"sessionId": sid, "status": "opening"}, (method, path, error)
        # still opening when the last call was answered: each refusal above was for an opening session
        assert BridgeSession.objects.get(id=sid).status == "opening"
        assert not TradeTask.objects.filter(session_id=sid).exists()
        assert not RequestReceipt.objects.exists()
    finally:
        ctl.delay(0)
        ctl.close()
    active = wait_until(lambda: BridgeSession.objects.filter(id=sid, status="active").first(), 20, "the slow login")
    assert client.delete(f"{BASE}/session/{active.id}").json()["status"] == "closed"
