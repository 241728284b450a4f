"""Snapshot-backed reads: account, positions, pending orders, one position, and their freshness (asOf)."""

from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings as django_settings

from tests.reads.conftest import wait_until
from trading.reads.snapshots import load_snapshot

pytestmark = pytest.mark.django_db(transaction=True)

POLL_INTERVAL = 0.2  # what the test pollers run with (tests/reads/conftest.py)


def test_account_is_the_sessions_account_from_a_fresh_snapshot(session_a, terminal_a):
    before = time.time()
    def from_snapshot():
        body = session_a.get("/mt5/client/account").json()
        return body if body.get("source") == "snapshot" else None

    body = wait_until(from_snapshot)
    direct = terminal_a.mt5.account_info()
    assert body["login"] == 5001 == direct.login
    assert body["currency"] == direct.currency and body["leverage"] == direct.leverage
    assert body["balance"] == pytest.approx(direct.balance)
    for name in ("equity", "margin", "margin_free", "margin_level", "server", "company"):
        assert name in body
    # asOf: the snapshot's real-UTC time, no older than a few poll intervals.
    assert before - 1 <= body["asOf"] <= time.time()
    assert time.time() - body["asOf"] < 1.0


def test_a_change_at_the_terminal_is_visible_within_a_poll_interval(session_a, terminal_a):
    session_a.get("/mt5/client/account")
    deal = terminal_a.buy("EURUSD", 0.1)
    opened_at = time.time()
    position = wait_until(lambda: next((p for p in session_a.get("/mt5/client/positions").json()["positions"]
                                        if p["ticket"] == deal.order), None), timeout=3, interval=0.02)
    seen_after = time.time() - opened_at
    # One poll interval plus the poll cycle and the request itself; generous for a 2-core CI box.
    assert seen_after < POLL_INTERVAL + 0.8, seen_after
    assert position["symbol"] == "EURUSD" and position["volume"] == pytest.approx(0.1)
    assert position["type"] == 0 and position["price_open"] == pytest.approx(deal.price)
    # Real-UTC open time: the deal was made just now.
    assert abs(position["time"] - opened_at) < 3
    assert abs(position["time_msc"] / 1000 - opened_at) < 3


def test_positions_lists_positions_and_pending_orders_with_symbol_filter(session_a, terminal_a):
    buy = terminal_a.buy("EURUSD", 0.1)
    gbp = terminal_a.buy("GBPUSD", 0.2)
    tick = terminal_a.mt5.symbol_info_tick("EURUSD")
    pending = terminal_a.buy_limit("EURUSD", round(tick.ask - 0.0100, 5))

    def listed():
        body = session_a.get("/mt5/client/positions").json()
        tickets = {p["ticket"] for p in body["positions"]}
        orders = {o["ticket"] for o in body["orders"]}
        # Right after the login the poller has not stamped a snapshot for this session yet: until then
        # the same read is served by the terminal (source "terminal"); wait for the snapshot to list all.
        return body if {buy.order, gbp.order} <= tickets and pending.order in orders and \
            body["source"] == "snapshot" else None

    body = wait_until(listed)
    assert body["source"] == "snapshot" and "asOf" in body
    only_eur = session_a.get("/mt5/client/positions?symbol=eurusd").json()
    assert {p["symbol"] for p in only_eur["positions"]} == {"EURUSD"}
    assert buy.order in {p["ticket"] for p in only_eur["positions"]}
    assert gbp.order not in {p["ticket"] for p in only_eur["positions"]}
    assert pending.order in {o["ticket"] for o in only_eur["orders"]}

    orders = session_a.get("/mt5/client/orders").json()
    order = next(o for o in orders["orders"] if o["ticket"] == pending.order)
    assert order["type"] == 2 and order["price_open"] == pytest.approx(round(tick.ask - 0.0100, 5))
    assert abs(order["time_setup"] - time.time()) < 5  # real UTC
    assert session_a.get("/mt5/client/orders?symbol=GBPUSD").json()["orders"] == [
        o for o in orders["orders"] if o["symbol"] == "GBPUSD"]


def test_one_position_by_ticket(session_a, terminal_a):
    buy = terminal_a.buy("USDJPY", 0.1)
    body = wait_until(lambda: (r := session_a.get(f"/mt5/client/positions/{buy.order}")).status_code == 200
                      and r.json())
    assert body["ticket"] == buy.order and body["symbol"] == "USDJPY" and "asOf" in body
    missing = session_a.get("/mt5/client/positions/999999999")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NotFound"


def test_stale_snapshot_falls_back_to_the_terminal(session_a, settings):
    # The first snapshot stamped for this session (the poller's next cycle after the login).
    wait_until(lambda: session_a.get("/mt5/client/account").json()["source"] == "snapshot")
    # Every snapshot is now "too old" (other test suites may run pollers of their own on this terminal, so
    # stopping ours would not age it): the read goes to the terminal through the read queue.
    settings.BRIDGE_SNAPSHOT_MAX_AGE = 0.0
    body = session_a.get("/mt5/client/account").json()
    assert body["source"] == "terminal" and body["login"] == 5001
    assert time.time() - body["asOf"] < 1.0
    positions = session_a.get("/mt5/client/positions").json()
    assert positions["source"] == "terminal" and isinstance(positions["positions"], list)


def test_a_stopped_poller_leaves_reads_answered(session_a, reads):
    reads.pollers["sim-a"].stop()
    stopped = time.time()
    client = redis.Redis.from_url(django_settings.REDIS_URL)

    def aged_or_refreshed() -> bool:
        """Our poller's last snapshot is older than BRIDGE_SNAPSHOT_MAX_AGE, or a poller of another suite
        on this terminal writes fresh ones (then nothing is stale to fall back from)."""
        snapshot = load_snapshot(client, "sim-a")
        return (snapshot is None or snapshot.taken_at > stopped
                or snapshot.age() > django_settings.BRIDGE_SNAPSHOT_MAX_AGE)

    wait_until(aged_or_refreshed, 10, "the snapshot of sim-a stale (or refreshed by another poller)")
    snapshot = load_snapshot(client, "sim-a")
    stale = snapshot is None or snapshot.age() > django_settings.BRIDGE_SNAPSHOT_MAX_AGE
    body = session_a.get("/mt5/client/account").json()
    assert body["login"] == 5001 and time.time() - body["asOf"] < 2.0
    if stale:  # nothing kept it fresh: the read went to the terminal itself (unless a fresh one came since)
        assert body["source"] == "terminal" or load_snapshot(client, "sim-a").taken_at > stopped, body
