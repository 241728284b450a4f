"""The poller's cycle, run in this process against sim-a: what a snapshot holds and what after_poll gets."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from django.conf import settings

from terminals.config import get_terminal
from terminals.gateway import TerminalGateway
from tests.waiting import wait_until
from trading.reads.snapshots import (
    TerminalSnapshot,
    changed_key,
    load_snapshot,
    quote_interest_key,
    snapshot_key,
)
from workers.poller import TerminalPoller

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def hooks(monkeypatch):
    """The events seam, recording what the poller hands it (the events work's real hook is not under test)."""
    from streams import poll_events

    calls: list[tuple[str, TerminalSnapshot | None, TerminalSnapshot]] = []
    monkeypatch.setattr(poll_events, "after_poll", lambda name, previous, current: calls.append((name, previous,
                                                                                                  current)))
    monkeypatch.setattr(poll_events, "watched_symbols", lambda name: {"EURJPY", "NOSUCH"})
    return calls


def test_a_cycle_stores_a_utc_snapshot_and_hands_previous_and_current_to_after_poll(stack, terminal_a, hooks):
    client = redis.Redis.from_url(settings.REDIS_URL)
    poller = TerminalPoller(get_terminal("sim-a"), client=client,
                            gateway=TerminalGateway(get_terminal("sim-a"), terminal_a.mt5), interval=0.2)
    first = poller.poll_once()
    assert hooks[-1] == ("sim-a", None, first)
    assert first.account["login"] == 5001 and first.connected is True and first.deals == []
    assert "EURJPY" in first.ticks and "NOSUCH" not in first.ticks  # unknown watched symbol: skipped
    assert first.books["EURJPY"] and {e["side"] for e in first.books["EURJPY"]} == {"sell", "buy"}
    assert abs(first.ticks["EURJPY"]["time_msc"] / 1000 - time.time()) < 120  # real UTC, not UTC+3

    deal = terminal_a.buy("GBPJPY", 0.1)
    second = poller.poll_once()
    assert hooks[-1] == ("sim-a", first, second)
    assert [d["ticket"] for d in second.deals] == [deal.deal]
    assert abs(second.deals[0]["time"] - time.time()) < 5
    assert deal.order in {p["ticket"] for p in second.positions}
    assert "GBPJPY" in second.ticks  # a symbol with a position is kept, watched or not
    third = poller.poll_once()
    assert third.deals == []  # a deal is new once
    stored = load_snapshot(client, "sim-a")
    assert stored is not None and stored.taken_at >= third.taken_at and stored.account["login"] == 5001


def test_an_idle_terminal_is_polled_slowly_and_at_once_after_a_change_by_the_bridge_or_a_quote_asked(
        stack, terminal_a, monkeypatch):
    """Idle (nobody watches or asked a quote, only prices move): a cycle every idle interval; the read-your-writes
    mark is looked at every interval and brings a cycle at once; a quote asked makes the cadence the interval."""
    import dataclasses

    from streams import poll_events
    from streams.subscriptions import WatchedSymbols
    from trading.reads.snapshots import note_quote_interest, note_terminal_changed
    from workers import poller as poller_module

    monkeypatch.setattr(poll_events, "after_poll", lambda name, previous, current: None)
    monkeypatch.setattr(poll_events, "watched_symbols", lambda name: WatchedSymbols())
    monkeypatch.setattr(poller_module, "ACTIVE_HOLD", 0.3)  # the first cycle's "change" stops counting soon
    client = redis.Redis.from_url(settings.REDIS_URL)
    # sim-a under a name of its own: its marks and quote interest are this test's alone.
    config = dataclasses.replace(get_terminal("sim-a"), name=f"cadence-{time.time_ns()}")
    poller = TerminalPoller(config, client=client, gateway=TerminalGateway(get_terminal("sim-a"), terminal_a.mt5),
                            interval=0.05, idle_interval=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: poller.cycles >= 1 and not poller.active(), 5, "the poller idle")
        first = poller.cycles
        stop.wait(2.5)  # a measurement window: 50 cycles at the interval, 2 or 3 at the idle interval
        assert 1 <= poller.cycles - first <= 4, poller.cycles - first

        after = poller.cycles
        wait_until(lambda: poller.cycles > after, 2, "an idle cycle")  # the next idle one is a second away
        marked = time.time()
        note_terminal_changed(client, config.name, at=marked)  # what trading.states does before a task settles
        wait_until(lambda: poller.previous.taken_at >= marked, 0.4, "a cycle right after the mark")

        note_quote_interest(client, config.name, "EURUSD")
        wait_until(lambda: poller.interest, 2, "the quote interest seen")
        fast = poller.cycles
        stop.wait(1.0)  # a measurement window again: 20 cycles at the interval
        assert poller.cycles - fast >= 8, poller.cycles - fast
        assert "EURUSD" in poller.previous.ticks
    finally:
        stop.set()
        thread.join(5)
        client.delete(changed_key(config.name), snapshot_key(config.name), quote_interest_key(config.name))

    # In the terminal's process the poller shares the pinned worker's gateway: an order sent through it brings a
    # cycle at once, without the mark (the only writer is in the process).
    gateway = TerminalGateway(get_terminal("sim-a"), terminal_a.mt5)
    poller = TerminalPoller(config, client=client, gateway=gateway, interval=0.05, idle_interval=1.0,
                            worker_gateway=True)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: poller.cycles >= 1 and not poller.active(), 5, "the poller idle")
        after = poller.cycles
        wait_until(lambda: poller.cycles > after, 2, "an idle cycle")  # the next idle one is a second away
        result, error = gateway.order_send({"action": terminal_a.mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD",
                                            "volume": 0.01, "type": terminal_a.mt5.ORDER_TYPE_BUY,
                                            "type_filling": terminal_a.mt5.ORDER_FILLING_IOC})
        sent = time.time()
        assert error is None and result.retcode == terminal_a.mt5.TRADE_RETCODE_DONE, (result, error)
        snapshot = wait_until(lambda: poller.previous.taken_at >= sent and poller.previous, 0.4,
                              "a cycle right after the order")
        assert result.order in {p["ticket"] for p in snapshot.positions}
    finally:
        stop.set()
        thread.join(5)
        client.delete(changed_key(config.name), snapshot_key(config.name), quote_interest_key(config.name))
