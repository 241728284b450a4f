"""The UTC offset both ways: sim-a's broker clock is UTC+3, sim-b's UTC+0, and for the same market moment
the bridge answers the same real-UTC times from both; real-UTC ``from``/``to`` find the same moment on both."""

from __future__ import annotations

import time

import pytest

from tests.reads.conftest import Terminal, open_session, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PRICES = {"bid": 1.23456, "ask": 1.23470}


@pytest.fixture
def both(client, other_client, reads, stack):
    """A session on each terminal, and direct clients to set the same market moment on both."""
    open_session(client, "sim-a", 5001)
    open_session(other_client, "sim-b", 6001)
    controls = {name: Terminal(stack.addresses[name]).ctl for name in ("sim-a", "sim-b")}
    for ctl in controls.values():
        ctl.freeze_feed("EURUSD")
    yield {"sim-a": client, "sim-b": other_client}, controls
    for ctl in controls.values():
        ctl.freeze_feed("EURUSD", frozen=False)
        ctl.close()


def test_the_terminals_really_differ_by_three_hours(stack, both):
    """The premise: the same instant reads 3 hours apart at the two terminals' own clocks."""
    _, controls = both
    clocks = {name: ctl.state()["time"] for name, ctl in controls.items()}
    assert clocks["sim-a"] - clocks["sim-b"] == pytest.approx(10800, abs=2)


def test_same_market_moment_same_real_utc_times(both):
    clients, controls = both
    for client in clients.values():  # the poller starts keeping EURUSD for these sessions
        client.get("/mt5/client/quotes/EURUSD")
    moment = time.time()
    for ctl in controls.values():
        ctl.set_price("EURUSD", PRICES["bid"], PRICES["ask"])

    quotes = {}
    for name, client in clients.items():
        quotes[name] = wait_until(lambda c=client: (q := c.get("/mt5/client/quotes/EURUSD").json())["bid"]
                                  == PRICES["bid"] and q)
    for quote in quotes.values():
        assert abs(quote["time_msc"] / 1000 - moment) < 1.0
        assert quote["time"] == quote["time_msc"] // 1000
    assert abs(quotes["sim-a"]["time_msc"] - quotes["sim-b"]["time_msc"]) < 1000

    # Outgoing bar times: the bar that holds the moment opens at the same real-UTC minute on both.
    for name, client in clients.items():
        bars = client.get("/mt5/client/quotes/history", {"symbol": "EURUSD", "timeframe": "M1", "count": 2}).json()
        opens = [b["time"] for b in bars["bars"]]
        assert int(moment) // 60 * 60 in opens, (name, opens, moment)

    # Incoming from/to: a real-UTC window around the moment holds the injected tick on both terminals
    # (without the offset added, sim-a would be asked for a window three hours in its past).
    for name, client in clients.items():
        ticks = client.get("/mt5/client/ticks/EURUSD", {"from": moment - 2, "to": moment + 3}).json()["ticks"]
        injected = [t for t in ticks if t["bid"] == PRICES["bid"] and t["ask"] == PRICES["ask"]]
        assert injected, (name, ticks)
        assert abs(injected[0]["time_msc"] / 1000 - moment) < 1.0
        rates = client.get("/mt5/client/quotes/history",
                           {"symbol": "EURUSD", "timeframe": "M1", "count": -1, "from": moment}).json()["bars"]
        assert rates[0]["time"] == int(moment) // 60 * 60


def test_deals_made_at_the_same_moment_have_the_same_real_utc_time(both, stack):
    clients, _ = both
    made = {}
    for name in ("sim-a", "sim-b"):
        with Terminal(stack.addresses[name]) as terminal:
            made[name] = (terminal.buy("EURUSD", 0.1), time.time())
    times = {}
    for name, client in clients.items():
        deal_ticket = made[name][0].deal
        deals = client.get("/mt5/client/history/deals", {"from": made[name][1] - 30,
                                                         "to": made[name][1] + 30}).json()["deals"]
        deal = next(d for d in deals if d["ticket"] == deal_ticket)
        times[name] = deal["time_msc"] / 1000
        assert abs(times[name] - made[name][1]) < 2
        position = wait_until(lambda c=client, t=made[name][0].order: next(
            (p for p in c.get("/mt5/client/positions").json()["positions"] if p["ticket"] == t), None))
        assert abs(position["time"] - made[name][1]) < 2
    assert abs(times["sim-a"] - times["sim-b"]) < 2
