"""after_poll: snapshot differences become position/order/account/profit events (real Redis, no terminal)."""

from __future__ import annotations

import time

import pytest
import redis

from streams import poll_events
from streams.poll_events import after_poll
from streams.publisher import sync_redis
from streams.replay import read_since

pytestmark = pytest.mark.django_db(transaction=True)

NOW_MS = int(time.time() * 1000)


def _pos(ticket: int, **kw) -> dict:
    base = {"ticket": ticket, "symbol": "EURUSD", "type": 0, "volume": 0.1, "price_open": 1.1, "sl": 1.09,
            "tp": 1.12, "price_current": 1.1, "profit": 0.0, "swap": 0.0, "magic": 0, "comment": "",
            "identifier": ticket, "reason": 3, "time_msc": NOW_MS, "time_update_msc": NOW_MS}
    return {**base, **kw}


def _deal(ticket: int, position: int, reason: int, entry: int = 1, **kw) -> dict:
    return {"ticket": ticket, "order": ticket + 1000, "position_id": position, "entry": entry, "reason": reason,
            "price": 1.09, "profit": -10.0, "volume": 0.1, "symbol": "EURUSD", "time_msc": NOW_MS + 1, **kw}


def _account(login: int = 5001, **kw) -> dict:
    return {"login": login, "balance": 1000.0, "credit": 0.0, "equity": 1000.0, "margin": 0.0,
            "margin_free": 1000.0, "margin_level": 0.0, "profit": 0.0, "currency": "USD", **kw}


def _snap(**parts) -> dict:
    return {"account": _account(), "positions": [], "orders": [], "ticks": {}, "books": {}, "deals": [], **parts}


def _events(session_id: str) -> list[dict]:
    import json

    page = read_since(sync_redis(), session_id, 0, 1000)
    return [json.loads(e) for e in page.events]


@pytest.fixture(autouse=True)
def _fresh_state() -> None:
    poll_events._states.clear()


def test_position_lifecycle_with_sl_hit_reason(make_session) -> None:
    s = make_session()
    t = s.terminal
    after_poll(t, None, _snap())  # first cycle: baseline only
    after_poll(t, _snap(), _snap(positions=[_pos(11)]))
    after_poll(t, _snap(positions=[_pos(11)]), _snap(positions=[_pos(11, sl=1.095)]))
    after_poll(t, _snap(positions=[_pos(11, sl=1.095)]),
               _snap(positions=[], deals=[_deal(21, 11, reason=4)]))
    positions = [e["data"] for e in _events(s.id) if e["type"] == "position"]
    assert [p["event"] for p in positions] == ["opened", "modified", "closed"]
    assert positions[1]["changes"] == {"sl": [1.09, 1.095]}
    assert positions[2]["reason"] == "sl" and positions[2]["deal"]["ticket"] == 21
    assert positions[2]["price_close"] == 1.09


@pytest.mark.parametrize(("deal_reason", "expected"), [(5, "tp"), (6, "stop-out"), (3, "client"), (0, "client"),
                                                       (8, "other")])
def test_close_reasons(make_session, deal_reason: int, expected: str) -> None:
    s = make_session()
    after_poll(s.terminal, None, _snap(positions=[_pos(5)]))
    after_poll(s.terminal, _snap(positions=[_pos(5)]), _snap(deals=[_deal(6, 5, reason=deal_reason)]))
    closed = [e["data"] for e in _events(s.id) if e["type"] == "position"]
    assert [(c["event"], c["reason"]) for c in closed] == [("closed", expected)]


def test_close_waits_for_a_late_deal_then_gives_up_as_unknown(make_session, monkeypatch) -> None:
    s = make_session()
    after_poll(s.terminal, None, _snap(positions=[_pos(1), _pos(2)]))
    after_poll(s.terminal, _snap(positions=[_pos(1), _pos(2)]), _snap())  # both vanish, no deals yet
    assert [e for e in _events(s.id) if e["type"] == "position"] == []
    after_poll(s.terminal, _snap(), _snap(deals=[_deal(9, 1, reason=5)]))  # position 1's deal arrives
    monkeypatch.setattr(poll_events, "CLOSE_DEAL_WAIT", 0.0)
    after_poll(s.terminal, _snap(), _snap())
    closed = {e["data"]["ticket"]: e["data"]["reason"] for e in _events(s.id) if e["type"] == "position"}
    assert closed == {1: "tp", 2: "unknown"}


def test_pending_orders_from_the_broker(make_session) -> None:
    s = make_session()
    past = int(time.time()) - 5
    limit = {"ticket": 40, "symbol": "EURUSD", "type": 2, "price_open": 1.05, "time_expiration": past,
             "volume_current": 0.1}
    stop = {"ticket": 41, "symbol": "EURUSD", "type": 4, "price_open": 1.2, "time_expiration": 0,
            "volume_current": 0.1}
    gone = {"ticket": 42, "symbol": "EURUSD", "type": 2, "price_open": 1.0, "time_expiration": 0,
            "volume_current": 0.1}
    after_poll(s.terminal, None, _snap(orders=[gone]))
    after_poll(s.terminal, _snap(orders=[gone]), _snap(orders=[limit, stop, gone]))  # placed outside the bridge
    after_poll(s.terminal, _snap(orders=[limit, stop, gone]),
               _snap(orders=[], deals=[_deal(50, 60, reason=0, entry=0, order=41)]))
    orders = [(e["data"]["ticket"], e["data"]["event"]) for e in _events(s.id) if e["type"] == "order"]
    assert orders == [(40, "placed"), (41, "placed"), (40, "expired"), (41, "filled"), (42, "cancelled")]
    assert all(e["data"]["source"] == "terminal" for e in _events(s.id) if e["type"] == "order")


def test_account_changes_immediate_for_trades_throttled_for_equity(make_session, settings) -> None:
    settings.BRIDGE_EVENTS_ACCOUNT_INTERVAL = 60
    s = make_session()
    after_poll(s.terminal, None, _snap())
    after_poll(s.terminal, _snap(), _snap(account=_account(equity=1001.0)))  # drift: throttled
    after_poll(s.terminal, _snap(), _snap(account=_account(equity=1002.0, margin=10.0)))  # a trade: at once
    accounts = [e["data"] for e in _events(s.id) if e["type"] == "account"]
    assert [(a["equity"], a["margin"]) for a in accounts] == [(1000.0, 0.0), (1002.0, 10.0)]
    settings.BRIDGE_EVENTS_ACCOUNT_INTERVAL = 0
    after_poll(s.terminal, _snap(), _snap(account=_account(equity=1003.0, margin=10.0)))
    assert [e["data"]["equity"] for e in _events(s.id) if e["type"] == "account"][-1] == 1003.0


def test_nothing_leaks_when_the_terminal_is_on_another_account(make_session) -> None:
    s = make_session(login=5001)
    after_poll(s.terminal, None, _snap(account=_account(login=9999), positions=[_pos(1)]))
    after_poll(s.terminal, _snap(account=_account(login=9999), positions=[_pos(1)]),
               _snap(account=_account(login=9999, balance=5.0)))
    assert _events(s.id) == []


def test_profit_events_are_throttled_not_lost(make_session, settings) -> None:
    settings.BRIDGE_EVENTS_PROFIT_INTERVAL = 0.3
    s = make_session()
    r = redis.Redis.from_url(settings.REDIS_URL)
    fanout_before = r.xlen("bridge:ev:fanout")
    after_poll(s.terminal, None, _snap(positions=[_pos(1, profit=1.0)]))
    for p in (2.0, 3.0, 4.0):
        after_poll(s.terminal, _snap(positions=[_pos(1)]), _snap(positions=[_pos(1, profit=p)]))
    time.sleep(0.35)  # time itself is the subject: the throttle interval (0.3 s) is over
    after_poll(s.terminal, _snap(positions=[_pos(1)]), _snap(positions=[_pos(1, profit=4.0)]))
    profits = [e for _, e in r.xrange("bridge:ev:fanout", "-", "+")][fanout_before:]
    totals = [e for e in profits if e[b"c"] == b"profit" and s.id.encode() in e[b"e"]]
    import json

    assert [json.loads(e[b"e"])["data"]["total"] for e in totals] == [1.0, 4.0]


def test_a_new_session_on_the_terminal_gets_the_events_at_once_the_old_one_none(make_session) -> None:
    from sessions.models import BridgeSession
    from sessions.services import session_close
    from tests import factories

    old = make_session()
    after_poll(old.terminal, None, _snap())
    row = session_close(session=BridgeSession.objects.get(id=old.id))
    new = factories.make_session(row.workspace, row.terminal, login=5001)
    after_poll(old.terminal, _snap(), _snap(positions=[_pos(77)]))  # right after the switch
    assert [e["data"]["event"] for e in _events(new.id) if e["type"] == "position"] == ["opened"]
    assert [e for e in _events(old.id) if e["type"] == "position"] == []
