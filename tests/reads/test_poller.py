"""The poller's cycle, run in this process against sim-a: what a snapshot holds and what after_poll gets."""

from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings

from terminals.config import get_terminal
from terminals.gateway import TerminalGateway
from trading.reads.snapshots import TerminalSnapshot, load_snapshot
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
