"""The ``deal`` channel: every deal the poller sees, once, with the terminal's figures, kept and resumable.

Real stack: mt5sim sim-a (UTC+3), the pinned worker, the events poller, daphne, Redis and PostgreSQL. A position
is opened and closed over REST; the socket's deal events must equal the terminal's ``history_deals_get``.
"""

from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings as django_settings

import mt5sim
from tests.events.test_live_stack import (
    _logged,
    _order,
    _wait_final,
)
from tests.waiting import wait_until
from trading.reads.snapshots import load_snapshot

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"
OFFSET_MS = 3 * 3600 * 1000  # sim-a's server clock is UTC+3
FIELDS = ("ticket", "order", "position_id", "symbol", "type", "entry", "volume", "price", "commission", "swap",
          "profit", "fee", "magic", "comment", "reason", "time_msc")


def _terminal_deals(address: str, position: int) -> list[dict]:
    assert mt5sim.initialize(address), mt5sim.last_error()
    try:
        deals = mt5sim.history_deals_get(position=position) or ()
    finally:
        mt5sim.shutdown()
    return [{f: (d.time_msc - OFFSET_MS if f == "time_msc" else getattr(d, f)) for f in FIELDS} for d in deals]


def _cycles_after(terminal: str, moment: float, count: int) -> None:
    """Until the terminal's poller has stored ``count`` more snapshots after ``moment`` (a deal already handed on
    would be handed on again by one of them, if the poller repeated deals)."""
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    seen: set[float] = set()

    def enough() -> bool:
        snapshot = load_snapshot(client, terminal)
        if snapshot is not None and snapshot.taken_at > moment:
            seen.add(snapshot.taken_at)
        return len(seen) >= count

    wait_until(enough, 10, f"{count} poll cycles of {terminal}")


def test_an_open_and_a_close_come_as_deal_events_equal_to_the_terminals_deals_once_each(
        live_stack, client, session_a, eurusd_a, ws) -> None:
    sock = ws(session_a)
    sock.send({"type": "subscribe", "channels": ["deal", "position"], "request_id": "s"})
    since = sock.recv_until(lambda m: m.get("request_id") == "s")[0]["seq"]
    opened = _wait_final(_order(client, session_a.id, "ev-deal-open"))
    assert opened.state == "filled", opened.state
    ticket = opened.position_ticket
    eurusd_a.set_price("EURUSD", 1.10050, 1.10060)  # a profit to show on the closing deal
    r = client.post(f"{BASE}/positions/{ticket}/close", {}, format="json", HTTP_X_SESSION_ID=session_a.id,
                    HTTP_X_REQUEST_ID="ev-deal-close")
    assert r.status_code == 202, r.content
    assert _wait_final(r.json()["taskId"]).state == "filled"

    def both() -> list[dict]:
        got = [m for m in received if m["type"] == "deal" and m["data"]["position_id"] == ticket]
        return got if len(got) >= 2 else []

    received: list[dict] = []
    deadline = time.monotonic() + 15
    while not both() and time.monotonic() < deadline:
        received += sock.drain(0.2)
    deals = both()
    expected = _terminal_deals(live_stack.addresses["sim-a"], ticket)
    assert len(expected) == 2 and [d["entry"] for d in expected] == [0, 1], expected  # in, out
    assert [{f: m["data"][f] for f in FIELDS} for m in deals] == expected
    assert [m["time_msc"] for m in deals] == [d["time_msc"] for d in expected]  # real UTC
    assert expected[1]["profit"] != 0
    # kept and resumable: in the session's log, in seq order with the rest
    assert all(m["seq"] > since for m in deals) and deals[0]["seq"] < deals[1]["seq"]
    logged = [e for e in _logged(session_a.id, since) if e["type"] == "deal" and e["data"]["position_id"] == ticket]
    assert [e["seq"] for e in logged] == [m["seq"] for m in deals]
    # once: more poll cycles hand neither deal on again
    _cycles_after("sim-a", time.time(), 10)
    received += sock.drain(0.5)
    tickets = [m["data"]["ticket"] for m in received if m["type"] == "deal"]
    assert {d["ticket"] for d in expected} <= set(tickets)
    assert len(tickets) == len(set(tickets)), tickets
    logged = [e for e in _logged(session_a.id, since) if e["type"] == "deal"]
    assert len({e["data"]["ticket"] for e in logged}) == len(logged)


def test_a_socket_resuming_with_since_gets_the_deals_it_missed(live_stack, client, session_a, eurusd_a, ws) -> None:
    sock = ws(session_a)
    sock.send({"type": "subscribe", "channels": ["deal"], "request_id": "s"})
    since = sock.recv_until(lambda m: m.get("request_id") == "s")[0]["seq"]
    sock.close()
    task = _wait_final(_order(client, session_a.id, "ev-deal-missed"))
    expected = wait_until(lambda: [e for e in _logged(session_a.id, since) if e["type"] == "deal"
                                   and e["data"]["position_id"] == task.position_ticket], 10, "the deal logged")
    again = ws(session_a, query=f"since={since}")
    done, replayed = again.recv_until(lambda m: m["type"] == "resumed", timeout=10)
    deals = [m for m in replayed if m["type"] == "deal" and m["data"]["position_id"] == task.position_ticket]
    assert [(m["seq"], m["data"]["ticket"]) for m in deals] == [(e["seq"], e["data"]["ticket"]) for e in expected]
