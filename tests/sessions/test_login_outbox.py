"""The login outbox: a login whose message was lost is published again to the terminal's live worker,
and a session that cannot log in within BRIDGE_SESSION_LOGIN_TIMEOUT ends ``login_failed``
(``LoginTimeout``) and frees its terminal, instead of staying ``opening`` while it is heartbeated."""

from __future__ import annotations

import time

import pytest
from rest_framework.test import APIClient

from sessions import services
from sessions.models import BridgeSession, SessionTransition
from terminals.models import Terminal
from tests.conftest import Stack
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
OPEN = "/mt5/client/session/open"


def _open(client: APIClient, terminal: str, login: int) -> str:
    response = client.post(OPEN, {"accountId": "x", "server": "Demo", "login": login, "password": "pw",
                                  "terminal": terminal}, format="json")
    assert response.status_code == 201 and response.json()["status"] == "opening", response.content
    return response.json()["sessionId"]


def test_a_lost_login_message_is_published_again(stack: Stack, client: APIClient, monkeypatch, settings) -> None:
    monkeypatch.setattr(services, "publish_login", lambda session: False)  # the publish after commit is lost
    sid = _open(client, "sim-a", 71001)
    assert BridgeSession.objects.get(id=sid).login_published_at is None
    monkeypatch.undo()
    wait_until(lambda: Terminal.objects.get(name="sim-a").worker_alive(), 20, "the worker's heartbeat")
    settings.BRIDGE_SESSION_LOGIN_REPUBLISH_AFTER = 0.2
    wait_until(lambda: time.time() - BridgeSession.objects.get(id=sid).created_at.timestamp() > 0.3, 5, "age")
    assert services.sessions_redrive_logins() == {"republished": 1, "failed": 0}
    session = wait_until(lambda: BridgeSession.objects.filter(id=sid, status="active").first(), 20, "active")
    assert session.login_published_at is not None
    assert Terminal.objects.get(name="sim-a").bound_session_id == sid
    client.delete(f"/mt5/client/session/{sid}")
    assert Terminal.objects.get(name="sim-a").bound_session_id == ""


def test_a_login_that_never_completes_ends_login_failed_and_frees_the_terminal(
        stack: Stack, client: APIClient, monkeypatch, settings) -> None:
    monkeypatch.setattr(services, "publish_login", lambda session: False)
    sid = _open(client, "sim-b", 71002)
    settings.BRIDGE_SESSION_LOGIN_TIMEOUT = 0.5
    wait_until(lambda: time.time() - BridgeSession.objects.get(id=sid).created_at.timestamp() > 0.6, 5, "age")
    assert services.sessions_redrive_logins() == {"republished": 0, "failed": 1}
    session = BridgeSession.objects.get(id=sid)
    assert session.status == "login_failed" and "did not complete" in session.error_message
    assert bytes(session.password_encrypted) == b""  # the secret does not outlive the session
    transition = SessionTransition.objects.get(session_id=sid, to_status="login_failed")
    assert transition.detail["reason"] == "LoginTimeout"
    monkeypatch.undo()
    settings.BRIDGE_SESSION_LOGIN_TIMEOUT = 90
    reopened = client.post(f"{OPEN}?wait=15", {"accountId": "x", "server": "Demo", "login": 71002, "password": "pw",
                                               "terminal": "sim-b"}, format="json")
    assert reopened.status_code == 201 and reopened.json()["status"] == "active", reopened.content
    client.delete(f"/mt5/client/session/{reopened.json()['sessionId']}")
