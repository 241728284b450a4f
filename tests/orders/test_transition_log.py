"""The transition log and the event stream tell the same story: every change of every task (of state
or of fields: sent, attempt, edited, ...) is one ``order`` event, in the same order, and nothing else
writes a task. Played on the live stack (real pinned worker, mt5sim, Redis stream)."""

from __future__ import annotations

import json

import pytest

from streams.publisher import sync_redis
from streams.replay import read_since
from tests.orders.conftest import open_session, wait_final
from tests.waiting import wait_until
from trading.models import TaskTransition, TradeTask

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"


def _post(client, sid, path, body, rid):
    return client.post(BASE + path, body, format="json", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid)


def _events_by_task(session_id: str) -> dict[str, list[tuple[str, str, str]]]:
    page = read_since(sync_redis(), session_id, 0)
    assert not page.resync_required
    seen: dict[str, list[tuple[str, str, str]]] = {}
    for channel, text in zip(page.channels, page.events, strict=True):
        if channel != "order":
            continue
        data = json.loads(text)["data"]
        if data.get("source") == "terminal":  # a pending order changed at the broker, not a task's change
            continue
        seen.setdefault(data["taskId"], []).append((data["from"], data["state"], data.get("change", "")))
    return seen


def _log_by_task(session_id: str) -> dict[str, list[tuple[str, str, str]]]:
    logged: dict[str, list[tuple[str, str, str]]] = {}
    for task_id in TradeTask.objects.filter(session_id=session_id).values_list("id", flat=True):
        rows = TaskTransition.objects.filter(task_id=task_id).order_by("id")
        logged[task_id] = [(t.from_state, t.to_state, t.detail.get("change", "")) for t in rows]
    return logged


def test_replaying_the_transition_log_gives_the_event_stream(stack, client, control) -> None:
    eurusd = control("sim-a")
    eurusd.freeze_feed("EURUSD")
    eurusd.set_price("EURUSD", 1.10000, 1.10010)
    sid = open_session(client, "sim-a")
    opened = wait_final(_post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1},
                              "log-1").json()["taskId"])
    pending = wait_final(_post(client, sid, "/orders", {"symbol": "EURUSD", "type": "BUY_LIMIT", "volume": 0.1,
                                                        "price": 1.05}, "log-2").json()["taskId"])
    cancel = client.delete(f"{BASE}/orders/{pending.id}", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID="log-3")
    wait_final(cancel.json()["taskId"])
    wait_final(_post(client, sid, f"/positions/{opened.position_ticket}/close", {}, "log-4").json()["taskId"])
    # A rejected one too (the position is gone).
    wait_final(_post(client, sid, f"/positions/{opened.position_ticket}/close", {}, "log-5").json()["taskId"])
    eurusd.freeze_feed("EURUSD", frozen=False)

    logged = _log_by_task(sid)
    assert len(logged) == 5
    # The order path writes fields too, and each such change is in the log.
    assert ("dispatched", "dispatched", "sent") in logged[opened.id]
    # Published after each commit: wait until the stream has caught up with the log, then compare.
    wait_until(lambda: _events_by_task(sid) == logged, 10, "every transition published as an order event")
    events = _events_by_task(sid)
    for task_id, changes in logged.items():
        assert events[task_id] == changes, task_id
        assert changes[0] == ("", "queued", "")
