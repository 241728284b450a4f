"""Sessions against real pinned workers attached to real mt5sim terminals."""

from __future__ import annotations

import logging
import time

import pytest
from django.db import connection
from rest_framework.test import APIClient

import mt5sim
from sessions.crypto import decrypt_secret
from sessions.models import BridgeSession
from sessions.services import sessions_expire_due
from tests.conftest import Stack
from tests.procs import start_manage
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

OPEN = "/mt5/client/session/open"
PASSWORD = "Pa55-word-XYZ"  # the password that must never appear in clear


def _open(client: APIClient, login: int, password: str = PASSWORD, **extra) -> dict:
    body = {"accountId": f"acc-{login}", "server": "Demo-Server", "login": login, "password": password, **extra}
    response = client.post(f"{OPEN}?wait=20", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _close(client: APIClient, session_id: str) -> None:
    client.delete(f"/mt5/client/session/{session_id}")


def _stored_password(session_id: str) -> bytes:
    """The password column of the session's row, as the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT password_encrypted FROM bridge_sessions_bridgesession WHERE id = %s", [session_id])
        return bytes(cursor.fetchone()[0])


def test_open_logs_in_on_the_pinned_worker_and_becomes_active(stack: Stack, client: APIClient) -> None:
    body = _open(client, 70001, terminal="sim-a")
    assert body["status"] == "active", body
    assert body["terminal"] == "sim-a"
    assert body["broker"]["currency"] == "USD" and body["broker"]["leverage"] == 100
    assert body["broker"]["connected"] is True
    assert body["expiresAt"] > time.time()
    # The emulator's own view: the terminal is now logged in to that account.
    mt5sim.initialize(stack.addresses["sim-a"])
    try:
        assert mt5sim.account_info().login == 70001
    finally:
        mt5sim.shutdown()
    got = client.get(f"/mt5/client/session/{body['sessionId']}")
    assert got.status_code == 200 and got.json()["status"] == "active"
    _close(client, body["sessionId"])


def test_wrong_password_is_login_failed_with_mt5_error_and_frees_terminal(stack: Stack, client: APIClient) -> None:
    first = _open(client, 70002, terminal="sim-b")
    assert first["status"] == "active"
    _close(client, first["sessionId"])
    failed = _open(client, 70002, password="not-the-password", terminal="sim-b")
    assert failed["status"] == "login_failed"
    assert failed["error"] == {"code": -6, "message": "Terminal: Authorization failed"}
    assert _stored_password(failed["sessionId"]) == b""  # the secret does not outlive the session
    # login_failed is not live: the terminal is free again.
    again = _open(client, 70002, terminal="sim-b")
    assert again["status"] == "active"
    _close(client, again["sessionId"])


def test_heartbeat_extends_and_close_frees_and_revokes(stack: Stack, client: APIClient) -> None:
    body = _open(client, 70003, terminal="sim-a")
    sid = body["sessionId"]
    opened = int(time.time())
    # expiresAt has whole seconds: a heartbeat in a later second than the open must move it on.
    wait_until(lambda: int(time.time()) > opened, 2, "the next second")
    beat = client.post(f"/mt5/client/session/{sid}/heartbeat")
    assert beat.status_code == 200
    assert beat.json()["expiresAt"] > body["expiresAt"]
    assert decrypt_secret(_stored_password(sid), sid) == PASSWORD  # a live session holds its password
    closed = client.delete(f"/mt5/client/session/{sid}")
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert _stored_password(sid) == b""  # wiped with the close (issue #11)
    after = client.post(f"/mt5/client/session/{sid}/heartbeat")
    assert after.status_code == 401 and after.json()["error"]["code"] == "SessionExpired"
    # the terminal is free: a new session can take it
    reopened = _open(client, 70004, terminal="sim-a")
    assert reopened["status"] == "active"
    _close(client, reopened["sessionId"])


def test_session_without_heartbeat_expires_by_beat_and_frees_terminal(stack: Stack, client: APIClient, settings) -> None:
    settings.BRIDGE_SESSION_TTL = 2
    env = {**stack.env, "BRIDGE_SESSION_EXPIRY_SWEEP": "0.5"}
    maint = start_manage("maintenance-expiry", ["run_maintenance_worker", "--beat"], env, stack.log_dir)
    try:
        body = _open(client, 70005, terminal="sim-b")
        assert body["status"] == "active"
        sid = body["sessionId"]
        wait_until(lambda: BridgeSession.objects.get(id=sid).status != "active", 20, "the session swept",
                   interval=0.2)
        assert BridgeSession.objects.get(id=sid).status == "expired"
        assert _stored_password(sid) == b""  # wiped with the expiry
        hb = client.post(f"/mt5/client/session/{sid}/heartbeat")
        assert hb.status_code == 401 and hb.json()["error"]["code"] == "SessionExpired"
    finally:
        maint.stop()
    settings.BRIDGE_SESSION_TTL = 120
    reopened = _open(client, 70006, terminal="sim-b")
    assert reopened["status"] == "active"
    _close(client, reopened["sessionId"])


def test_expire_service_marks_only_overdue_live_sessions(stack: Stack, client: APIClient) -> None:
    body = _open(client, 70007, terminal="sim-a")
    assert sessions_expire_due() == 0
    BridgeSession.objects.filter(id=body["sessionId"]).update(expires_at="2000-01-01T00:00:00Z")
    assert sessions_expire_due() == 1
    assert BridgeSession.objects.get(id=body["sessionId"]).status == "expired"


def test_workspaces_cannot_see_each_others_sessions(stack: Stack, client: APIClient, other_client: APIClient) -> None:
    mine = _open(client, 70008, terminal="sim-a")
    sid = mine["sessionId"]
    for response in (
        other_client.get(f"/mt5/client/session/{sid}"),
        other_client.post(f"/mt5/client/session/{sid}/heartbeat"),
        other_client.delete(f"/mt5/client/session/{sid}"),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "NotFound"
    assert BridgeSession.objects.get(id=sid).status == "active"  # the other workspace changed nothing
    _close(client, sid)


def test_password_is_never_stored_or_logged_in_clear(stack: Stack, client: APIClient, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    body = _open(client, 70009, terminal="sim-b")
    sid = body["sessionId"]
    row = BridgeSession.objects.get(id=sid)
    assert PASSWORD.encode() not in bytes(row.password_encrypted)
    assert decrypt_secret(row.password_encrypted, sid) == PASSWORD
    with connection.cursor() as cursor:  # every column of every row, as the database holds it
        cursor.execute("SELECT * FROM bridge_sessions_bridgesession")
        for record in cursor.fetchall():
            for value in record:
                raw = bytes(value) if isinstance(value, memoryview | bytes) else str(value).encode()
                assert PASSWORD.encode() not in raw
    assert PASSWORD not in caplog.text
    for proc in stack.workers.values():
        assert PASSWORD not in proc.log()
    assert PASSWORD not in str(client.get(f"/mt5/client/session/{sid}").content)
    _close(client, sid)


def test_ciphertext_is_bound_to_its_session(stack: Stack, client: APIClient) -> None:
    body = _open(client, 70010, terminal="sim-a")
    row = BridgeSession.objects.get(id=body["sessionId"])
    with pytest.raises(Exception):  # noqa: B017 - InvalidTag: authenticated encryption refuses it
        decrypt_secret(row.password_encrypted, "sess_someone_else")
    _close(client, body["sessionId"])
