"""End to end: real mt5sim terminals, pinned workers, pollers, daphne, Redis and PostgreSQL.

Prices are driven with mt5sim's control API; orders go through the REST API and the pinned worker;
the socket must see what happened, in order, with the terminal's broker time turned into real UTC
(sim-a runs at UTC+3).
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from streams.replay import read_since
from tests.events.conftest import live_session_of, live_session_open
from tests.waiting import wait_until
from trading.models import FINAL_STATES, TradeTask
from trading.reads.snapshots import load_snapshot

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"


def _order(client: APIClient, sid: str, rid: str, **body) -> str:
    r = client.post(f"{BASE}/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.1, **body}, format="json",
                    HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid)
    assert r.status_code == 202, r.content
    return r.json()["taskId"]


def _wait_final(task_id: str, timeout: float = 20) -> TradeTask:
    return wait_until(lambda: (task := TradeTask.objects.get(id=task_id)).state in FINAL_STATES and task, timeout,
                      f"{task_id} final")


def _state_changes(events: list[tuple[str, str | None]]) -> list[str]:
    """The states an order went through, from its events (those of a change of fields left out)."""
    return [state for state, change in events if not change]


def _wait_watched(terminal: str, symbol: str, since: float) -> None:
    """Until the terminal's poller has begun a cycle after ``since`` with ``symbol`` among its ticks: a
    cycle reads the watched symbols first, so from then on it watches what was subscribed before."""
    client = redis.Redis.from_url(django_settings.REDIS_URL)

    def watched() -> bool:
        snapshot = load_snapshot(client, terminal)
        return snapshot is not None and snapshot.taken_at > since and symbol in snapshot.ticks

    wait_until(watched, 10, f"the poller of {terminal} watching {symbol}")


def _logged(session_id: str, since: int) -> list[dict]:
    """The session's events after ``since`` as the replay log holds them."""
    page = read_since(redis.Redis.from_url(django_settings.REDIS_URL), session_id, since)
    return [json.loads(event) for event in page.events]


def test_quotes_orders_positions_and_an_sl_hit(live_stack, client, session_a, eurusd_a, ws) -> None:
    sock = ws(session_a)
    sock.send({"type": "subscribe", "channels": ["quote:EURUSD", "order", "position", "account"],
               "request_id": "s"})
    sock.recv_until(lambda m: m.get("request_id") == "s")
    _wait_watched("sim-a", "EURUSD", since=time.time())  # the poller picks the subscription up on its next cycle
    # a price move at the terminal -> a quote event, its time in real UTC (sim-a is UTC+3)
    eurusd_a.set_price("EURUSD", 1.10020, 1.10030)
    quote, _ = sock.recv_until(lambda m: m["type"] == "quote:EURUSD" and m["data"]["bid"] == 1.1002, timeout=5)
    assert quote["data"]["ask"] == 1.1003
    assert abs(quote["data"]["time_msc"] - time.time() * 1000) < 5000, quote
    # an order over REST -> order events through every state, then the position opened
    task_id = _order(client, session_a.id, "ev-e2e-1", sl=1.0950)
    events = []  # (state, change): a change of fields without a change of state names itself
    while ("filled", None) not in events:
        message, _ = sock.recv_until(lambda m: m["type"] == "order" and m["data"].get("taskId") == task_id)
        events.append((message["data"]["state"], message["data"].get("change")))
    assert _state_changes(events) == ["queued", "dispatched", "filled"], events
    assert ("dispatched", "sent") in events, events  # the send mark, before the outcome
    task = _wait_final(task_id)
    opened, _ = sock.recv_until(lambda m: m["type"] == "position" and m["data"]["event"] == "opened")
    assert opened["data"]["ticket"] == task.position_ticket and opened["data"]["sl"] == 1.095
    # the price goes through the SL at the terminal -> position closed with reason sl
    eurusd_a.set_price("EURUSD", 1.09400, 1.09410)
    closed, before = sock.recv_until(lambda m: m["type"] == "position" and m["data"]["event"] == "closed",
                                     timeout=10)
    assert closed["data"]["ticket"] == task.position_ticket
    assert closed["data"]["reason"] == "sl", closed
    assert abs(closed["time_msc"] - time.time() * 1000) < 5000
    # seq is gapless over what this socket got of order/position/account
    account, _ = sock.recv_until(lambda m: m["type"] == "account", timeout=5)
    assert account["data"]["balance"] < 100000 or account["data"]["balance"] > 0


def test_reconnect_with_since_gets_both_orders_in_order(live_stack, client, session_a, eurusd_a, ws) -> None:
    sock = ws(session_a)
    sock.send({"type": "subscribe", "channels": ["order"], "request_id": "s"})
    since = sock.recv_until(lambda m: m.get("request_id") == "s")[0]["seq"]
    sock.close()
    first = _order(client, session_a.id, "ev-e2e-gap-1")
    second = _order(client, session_a.id, "ev-e2e-gap-2")
    tickets = {_wait_final(first).position_ticket, _wait_final(second).position_ticket}

    def positions_logged() -> bool:  # the poller's position events too, not only the worker's order events
        return tickets <= {e["data"].get("ticket") for e in _logged(session_a.id, since)
                           if e["type"] == "position" and e["data"].get("event") == "opened"}

    wait_until(positions_logged, 10, "both positions' opened events logged")
    again = ws(session_a, query=f"since={since}")
    done, replayed = again.recv_until(lambda m: m["type"] == "resumed", timeout=10)
    seqs = [m["seq"] for m in replayed]
    assert seqs == list(range(since + 1, since + 1 + len(seqs))) and seqs[-1] == done["seq"]
    orders = [(m["data"]["taskId"], m["data"]["state"]) for m in replayed
              if m["type"] == "order" and m["data"].get("taskId") in (first, second) and not m["data"].get("change")]
    assert [s for t, s in orders if t == first] == ["queued", "dispatched", "filled"]
    assert [s for t, s in orders if t == second] == ["queued", "dispatched", "filled"]
    assert orders.index((first, "queued")) < orders.index((second, "queued"))
    assert {m["type"] for m in replayed} >= {"order", "position"}, [(m["type"], m["data"]) for m in replayed if m["type"] != "order"]


def test_another_workspace_on_another_terminal_receives_nothing(live_stack, client, other_client, session_a,
                                                                eurusd_a, ws) -> None:
    other_sid = live_session_open(other_client, "sim-b", 6001)
    try:
        theirs = ws(live_session_of(other_client, other_sid))
        theirs.send({"type": "subscribe", "channels": ["order", "position", "account", "profit", "quote:EURUSD"],
                     "request_id": "s"})
        theirs.recv_until(lambda m: m.get("request_id") == "s")
        theirs.drain(1.0)  # their own account/profit baseline, if any
        task_id = _order(client, session_a.id, "ev-e2e-iso-1")
        _wait_final(task_id)
        eurusd_a.set_price("EURUSD", 1.10100, 1.10110)
        leaked = [m for m in theirs.drain(2.0) if m.get("sessionId") != other_sid or task_id in str(m)]
        assert leaked == []
        # and the socket of session_a cannot be opened with the other workspace's key
        assert ws(live_session_of(other_client, session_a.id)).close_code() == 4401
    finally:
        other_client.delete(f"{BASE}/session/{other_sid}")
