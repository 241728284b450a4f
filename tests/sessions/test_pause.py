"""Pause and resume of a session (docs/sessions.md, "Pause"): writes refused with 409 SessionPaused while
reads, tasks, heartbeats and events go on; queued tasks wait at the real pinned worker (never reach the
emulator's broker) and fill after the resume, or end cancelled with ``cancelQueued``; a transition row and a
``session`` event per pause and resume, none for a pause or resume that changes nothing."""

from __future__ import annotations

import json
import signal
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from ops.dashboard import terminals as dashboard_terminals
from ops.selectors import terminal_statuses
from sessions.models import BridgeSession, SessionStatus, SessionTransition
from sessions.services import session_close, session_pause, session_resume
from streams.keys import log_key
from tests.factories import make_session, make_workspace
from tests.orders.conftest import open_session, sim, wait_final  # noqa: F401 (sim: a fixture)
from tests.orders.test_hot_writes import FULL_PATH_STATUS, ORDER, Live, post
from tests.waiting import wait_until
from trading.models import TaskState, TaskTransition, TradeTask
from trading.outbox import sweep_outbox

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"
TERMINAL = "sim-a"
BUY = {"symbol": "EURUSD", "type": "BUY", "volume": 0.01}


def _post(client, sid: str, path: str, body: dict | None, rid: str | None = None):
    headers = {"HTTP_X_SESSION_ID": sid, **({"HTTP_X_REQUEST_ID": rid} if rid else {})}
    return client.post(BASE + path, body, format="json", **headers)


def _pause(client, sid: str, body: dict | None = None):
    return client.post(f"{BASE}/session/{sid}/pause", body, format="json")


def _resume(client, sid: str):
    return client.post(f"{BASE}/session/{sid}/resume")


def _pause_changes(sid: str) -> list[tuple[str, dict]]:
    rows = SessionTransition.objects.filter(session_id=sid, detail__change__in=["paused", "resumed"])
    return [(row.detail["change"], row.detail) for row in rows]


def _session_events(sid: str) -> list[dict]:
    """The ``session`` events kept in the session's replayable log (what a socket receives)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    events = []
    for _, fields in client.xrange(log_key(sid)):
        if fields.get(b"c") == b"session":
            events.append(json.loads(fields[b"e"])["data"])
    return events


def _order_events(sid: str, task_id: str) -> list[dict]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    found = []
    for _, fields in client.xrange(log_key(sid)):
        if fields.get(b"c") == b"order":
            data = json.loads(fields[b"e"])["data"]
            if data.get("taskId") == task_id:
                found.append(data)
    return found


def _assert_paused_refusal(response, sid: str) -> None:
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "SessionPaused" and "paused" in error["message"], error
    assert error["details"]["sessionId"] == sid and isinstance(error["details"]["pausedAt"], int)


def test_a_paused_session_refuses_every_write_and_serves_reads_replays_and_heartbeats(
        stack, client, reads) -> None:
    sid = open_session(client, TERMINAL)
    filled = wait_final(_post(client, sid, "/orders", BUY, "pz-before").json()["taskId"])
    assert filled.state == "filled" and filled.position_ticket, filled.result
    none_closed = _post(client, sid, "/positions/close", {"magic": 987654}, "pz-close-none")  # matches nothing
    assert none_closed.status_code == 200 and none_closed.json() == {"tasks": []}, none_closed.content
    tasks_before = TradeTask.objects.count()

    r = _pause(client, sid)
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["sessionId"] == sid and body["status"] == "active" and body["paused"] is True
    assert isinstance(body["pausedAt"], int) and abs(body["pausedAt"] - timezone.now().timestamp()) < 10
    assert set(body) >= {"terminal", "accountId", "login", "server", "expiresAt", "broker", "heartbeatInterval"}

    ticket = filled.position_ticket
    writes = [
        _post(client, sid, "/orders", BUY, "pz-new"),
        _post(client, sid, "/orders", BUY),  # no request id: the bridge's own, a new one
        client.patch(f"{BASE}/orders/{filled.id}", {"sl": 1.0}, format="json", HTTP_X_SESSION_ID=sid,
                     HTTP_X_REQUEST_ID="pz-patch"),
        client.delete(f"{BASE}/orders/{filled.id}", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="pz-delete"),
        client.patch(f"{BASE}/positions/{ticket}", {"sl": 1.0}, format="json", HTTP_X_SESSION_ID=sid,
                     HTTP_X_REQUEST_ID="pz-sltp"),
        _post(client, sid, f"/positions/{ticket}/close", {}, "pz-close"),
        _post(client, sid, "/positions/close", {"symbol": "EURUSD"}, "pz-close-all"),
    ]
    for response in writes:
        _assert_paused_refusal(response, sid)
    assert TradeTask.objects.count() == tasks_before  # nothing queued

    # A replay of a request id accepted before the pause: the ledger's answer, the same task.
    replay = _post(client, sid, "/orders", BUY, "pz-before")
    assert replay.status_code == 202 and replay["Idempotent-Replayed"] == "true", replay.content
    assert replay.json()["taskId"] == filled.id
    call_replay = _post(client, sid, "/positions/close", {"magic": 987654}, "pz-close-none")  # a call's receipt
    assert call_replay.status_code == 200 and call_replay["Idempotent-Replayed"] == "true", call_replay.content
    other = _post(client, sid, "/orders", {**BUY, "volume": 0.02}, "pz-before")  # same id, another payload
    assert other.status_code == 409 and other.json()["error"]["code"] == "TaskConflict"

    # Reads, the task list, the session and its heartbeat go on.
    assert client.get(f"{BASE}/session/{sid}").json()["paused"] is True
    assert client.get(f"{BASE}/tasks", HTTP_X_SESSION_ID=sid).status_code == 200
    assert client.get(f"{BASE}/tasks/{filled.id}").json()["state"] == "filled"
    account = client.get(f"{BASE}/account", HTTP_X_SESSION_ID=sid)
    assert account.status_code == 200 and account.json()["login"] == 5001, account.content
    positions = client.get(f"{BASE}/positions", HTTP_X_SESSION_ID=sid)
    assert positions.status_code == 200 and ticket in [p["ticket"] for p in positions.json()["positions"]]
    beat = client.post(f"{BASE}/session/{sid}/heartbeat")
    assert beat.status_code == 200 and beat.json()["paused"] is True

    # Pausing again changes nothing: no second transition, no second event.
    again = _pause(client, sid, {"cancelQueued": False})
    assert again.status_code == 200 and again.json()["pausedAt"] == body["pausedAt"]
    assert _pause_changes(sid) == [("paused", {"change": "paused", "cancelQueued": False})]

    resumed = _resume(client, sid)
    assert resumed.status_code == 200 and resumed.json()["paused"] is False and resumed.json()["pausedAt"] is None
    assert _resume(client, sid).json()["paused"] is False  # resuming a running session: no change
    assert [change for change, _ in _pause_changes(sid)] == ["paused", "resumed"]
    transitions = SessionTransition.objects.filter(session_id=sid, detail__change__in=["paused", "resumed"])
    assert all(t.from_status == t.to_status == "active" for t in transitions)

    events = [e for e in _session_events(sid) if e.get("change")]
    assert [(e["change"], e["paused"], e["status"]) for e in events] == [("paused", True, "active"),
                                                                          ("resumed", False, "active")]
    assert events[0]["pausedAt"] == body["pausedAt"] and events[0]["cancelQueued"] is False
    assert events[1]["pausedAt"] is None

    # Writes are accepted again.
    after = _post(client, sid, "/orders", BUY, "pz-after")
    assert after.status_code == 202, after.content
    assert wait_final(after.json()["taskId"]).state == "filled"


def test_queued_tasks_do_not_reach_the_broker_while_paused_and_fill_after_the_resume(
        stack, client, sim) -> None:  # noqa: F811 (the sim fixture)
    sid = open_session(client, TERMINAL)
    assert wait_final(_post(client, sid, "/orders", BUY, "pq-warm").json()["taskId"]).state == "filled"
    worker = stack.workers[TERMINAL]
    answered_paused = worker.log().count("'paused'")
    worker.kill(signal.SIGSTOP)  # the worker cannot claim: the tasks stay queued until the pause commits
    try:
        ids = [_post(client, sid, "/orders", BUY, f"pq-{i}").json()["taskId"] for i in range(3)]
        assert _pause(client, sid).status_code == 200
    finally:
        worker.kill(signal.SIGCONT)
    # The running worker takes each task's message and leaves the task be: its delivery answers 'paused'.
    wait_until(lambda: worker.log().count("'paused'") >= answered_paused + 3, 20,
               "the worker's answers to the paused tasks' messages")
    tasks = [TradeTask.objects.get(id=task_id) for task_id in ids]
    assert [t.state for t in tasks] == ["queued"] * 3 and all(t.attempts == 0 for t in tasks)
    assert not TaskTransition.objects.filter(task_id__in=ids, to_state=TaskState.DISPATCHED).exists()
    assert all(sim(TERMINAL).broker_orders_of(t) == [] for t in tasks)  # the broker never saw them
    # The outbox sweeper leaves them too, however stale (their messages are gone): the resume publishes them.
    assert sweep_outbox(now=timezone.now() + timedelta(hours=1)) == 0
    [status] = [s for s in terminal_statuses() if s.name == TERMINAL]
    assert status.session["sessionId"] == sid and status.session["paused"] is True
    assert status.queued_tasks == 3
    [row] = [t for t in dashboard_terminals(timezone.now()) if t["name"] == TERMINAL]
    assert row["account"]["paused"] is True  # the dashboard's terminal table says so

    assert _resume(client, sid).status_code == 200
    done = [wait_final(task_id) for task_id in ids]
    assert [t.state for t in done] == ["filled"] * 3, [t.result for t in done]
    assert all(len(sim(TERMINAL).broker_orders_of(t)) == 1 for t in done)  # each exactly once
    [status] = [s for s in terminal_statuses() if s.name == TERMINAL]
    assert status.session["paused"] is False and status.session["pausedAt"] is None


def test_cancel_queued_cancels_them_through_their_transitions_and_events(
        stack, client, sim) -> None:  # noqa: F811 (the sim fixture)
    sid = open_session(client, TERMINAL)
    assert wait_final(_post(client, sid, "/orders", BUY, "pc-warm").json()["taskId"]).state == "filled"
    worker = stack.workers[TERMINAL]
    skipped = worker.log().count("'skipped-cancelled'")
    worker.kill(signal.SIGSTOP)
    try:
        kept = _post(client, sid, "/orders", BUY, "pc-kept").json()["taskId"]
        assert _pause(client, sid).status_code == 200  # kept waits, queued
        assert TradeTask.objects.get(id=kept).state == "queued"
        # A pause asked again with cancelQueued: the session does not change, the queued task is cancelled.
        again = _pause(client, sid, {"cancelQueued": True})
        assert again.status_code == 200 and again.json()["paused"] is True
        assert [change for change, _ in _pause_changes(sid)] == ["paused"]
        assert _resume(client, sid).status_code == 200
        ids = [_post(client, sid, "/orders", BUY, f"pc-{i}").json()["taskId"] for i in range(2)]
        r = _pause(client, sid, {"cancelQueued": True})
        assert r.status_code == 200 and r.json()["paused"] is True
    finally:
        worker.kill(signal.SIGCONT)
    assert _pause_changes(sid)[-1] == ("paused", {"change": "paused", "cancelQueued": True})
    for task_id in [kept, *ids]:
        task = TradeTask.objects.get(id=task_id)
        assert task.state == "cancelled" and task.result["error"]["code"] == "SessionPaused", task.result
        assert task.attempts == 0 and task.sent_at is None
        [last] = TaskTransition.objects.filter(task_id=task_id).state_changes().order_by("-id")[:1]
        assert (last.from_state, last.to_state) == ("queued", "cancelled")
        assert last.detail == {"by": "session", "reason": "paused"}
        events = _order_events(sid, task_id)
        assert [e["state"] for e in events][-1] == "cancelled"
    assert [e["cancelQueued"] for e in _session_events(sid) if e.get("change") == "paused"] == [False, True]
    # The worker answers their messages without sending anything; nothing reaches the broker after a resume.
    wait_until(lambda: worker.log().count("'skipped-cancelled'") >= skipped + 3, 20,
               "the worker's answers to the cancelled tasks' messages")
    assert _resume(client, sid).status_code == 200
    control = wait_final(_post(client, sid, "/orders", BUY, "pc-control").json()["taskId"])
    assert control.state == "filled"  # the worker is past the cancelled tasks' messages and the resume
    for task_id in [kept, *ids]:
        task = TradeTask.objects.get(id=task_id)
        assert task.state == "cancelled" and sim(TERMINAL).broker_orders_of(task) == []


def test_pause_needs_an_active_session_of_the_workspace(client, other_client, workspace) -> None:
    opening = make_session(workspace, status=SessionStatus.OPENING)
    for call in (_pause, _resume):
        r = call(client, opening.id)
        assert r.status_code == 409 and r.json()["error"]["code"] == "SessionNotReady", r.content
        assert r.json()["error"]["details"] == {"sessionId": opening.id, "status": "opening"}
    active = make_session(workspace)
    for call in (_pause, _resume):  # another workspace's session: unknown, as for every session call
        r = call(other_client, active.id)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NotFound"
    assert _pause(client, "sess_" + "x" * 24).status_code == 404
    assert _pause(client, "not-a-session").status_code == 404
    for bad in ({"cancelQueued": "yes"}, {"cancelQueued": 1}, {"cancel": True}, ["x"]):
        r = _pause(client, active.id, bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationError", (bad, r.content)
    assert not BridgeSession.objects.get(id=active.id).paused  # bad input changed nothing
    assert not SessionTransition.objects.filter(session_id=active.id, detail__change="paused").exists()
    session_close(session=BridgeSession.objects.get(id=active.id))
    for call in (_pause, _resume):  # ended: 401 as every call on an ended session
        r = call(client, active.id)
        assert r.status_code == 401 and r.json()["error"]["code"] == "SessionExpired", r.content
    assert not SessionTransition.objects.filter(session_id=active.id, detail__change="paused").exists()


def test_the_hot_write_path_hands_a_paused_sessions_order_to_the_full_path() -> None:
    live = Live()
    try:
        assert post(live.app, live.headers("hp-1"), ORDER)[0] == 202  # the grants are now cached
        session_pause(session=BridgeSession.objects.get(id=live.session.id))
        status, _, _ = post(live.app, live.headers("hp-2"), ORDER)
        assert status == FULL_PATH_STATUS  # from the next request on: Django answers (409 SessionPaused)
        assert not TradeTask.objects.filter(request_id="hp-2").exists()
        session_resume(session=BridgeSession.objects.get(id=live.session.id))
        assert post(live.app, live.headers("hp-3"), ORDER)[0] == 202
    finally:
        live.close()


def test_admin_lists_and_filters_paused_sessions(db) -> None:
    workspace = make_workspace()
    paused, running = make_session(workspace), make_session(workspace)
    session_pause(session=paused)
    user = get_user_model().objects.create_superuser("pause-admin", "p@example.com", "pw-pause-admin-1")
    browser = Client()
    browser.force_login(user)
    page = "/admin/bridge_sessions/bridgesession/"
    listed = browser.get(page)
    assert listed.status_code == 200 and "paused" in listed.content.decode()
    yes = {s.id for s in browser.get(page, {"paused": "yes"}).context["cl"].result_list}
    no = {s.id for s in browser.get(page, {"paused": "no"}).context["cl"].result_list}
    assert paused.id in yes and running.id not in yes and running.id in no and paused.id not in no
    detail = browser.get(f"{page}{paused.id}/change/")
    assert detail.status_code == 200 and "Paused at" in detail.content.decode()
