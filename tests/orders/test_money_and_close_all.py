"""Issue #15: SL/TP given in money (PATCH /positions/{ticket} slMoney/tpMoney) and close-all
(POST /positions/close), against the real stack: pinned workers, the terminals' readers and pollers, mt5sim.

What the bridge computed is checked against the emulator's own figures (its open price, volume and tick
value, read with the mt5sim client), and what it closed against the emulator's positions and history."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from rest_framework.test import APIClient

import mt5sim
from bridge_project.errors import Conflict
from tests.orders.conftest import open_session, wait_final
from tests.waiting import wait_until
from trading.models import CallReceipt, TradeTask
from trading.services import OrderWrite, orders_place_batch, session_account

# the readers and pollers of tests/reads: the writes here read positions and symbols from the terminal
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("reads")]
BASE = "/mt5/client"
MONEY_LOGIN = 5151  # accounts of these tests alone: a close-all without filters must meet no other test's positions
CLOSE_LOGIN = 5152
CLOSE_EMPTY_LOGIN = 5153
CLOSE_RACE_LOGIN = 5154


def _post(client, sid, path, body, rid):
    return client.post(BASE + path, body, format="json", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=rid)


def _patch(client, sid, ticket, body, rid):
    return client.patch(f"{BASE}/positions/{ticket}", body, format="json", HTTP_X_SESSION_ID=sid,
                        HTTP_X_REQUEST_ID=rid)


@pytest.fixture
def frozen(control):
    """EURUSD and USDJPY at known prices (USDJPY's tick value in USD follows its price)."""
    ctl = control("sim-a")
    for symbol, bid, ask in (("EURUSD", 1.10000, 1.10010), ("USDJPY", 150.000, 150.012), ("GBPUSD", 1.27000, 1.27014)):
        ctl.freeze_feed(symbol)
        ctl.set_price(symbol, bid, ask)
    yield ctl
    for symbol in ("EURUSD", "USDJPY", "GBPUSD"):
        ctl.freeze_feed(symbol, frozen=False)


def _open(client, sid, rid, **body) -> int:
    task = wait_final(_post(client, sid, "/orders", body, rid).json()["taskId"])
    assert task.state == "filled", task.result
    return task.position_ticket


def _broker(sim, ticket):
    found = [p for p in sim("sim-a").positions() if p.ticket == ticket]
    return found[0] if found else None


def _symbol_info(sim, symbol):
    return sim("sim-a")._read(lambda: mt5sim.symbol_info(symbol))


def _on_grid(price: float, tick: float) -> bool:
    return abs(price / tick - round(price / tick)) < 1e-6


def _money_at(price: float, position, tick_value: float, tick_size: float) -> float:
    return abs(price - position.price_open) / tick_size * position.volume * tick_value


@pytest.mark.parametrize("symbol,side,volume", [("EURUSD", "BUY", 0.3), ("USDJPY", "SELL", 0.2)])
def test_money_levels_land_on_the_grid_on_the_safe_side_and_reach_the_broker(stack, client, sim, frozen,
                                                                               symbol, side, volume) -> None:
    sid = open_session(client, "sim-a", MONEY_LOGIN)
    ticket = _open(client, sid, f"m-open-{symbol}", symbol=symbol, type=side, volume=volume)
    position, info = _broker(sim, ticket), _symbol_info(sim, symbol)
    tick_size, tv_loss, tv_profit = info.trade_tick_size, info.trade_tick_value_loss, info.trade_tick_value_profit
    per_tick = position.volume * tv_loss
    asked_sl, asked_tp = 37.0, 61.5

    r = _patch(client, sid, ticket, {"slMoney": asked_sl, "tpMoney": asked_tp}, f"m-levels-{symbol}")
    assert r.status_code == 202, r.content
    body = r.json()
    assert body["kind"] == "position.modify"
    request, levels = body["request"], body["request"]["moneyLevels"]
    sl, tp = request["sl"], request["tp"]
    assert levels["sl"]["price"] == sl and levels["tp"]["price"] == tp
    assert levels["sl"]["asked"] == asked_sl and levels["tp"]["asked"] == asked_tp
    for price in (sl, tp):
        assert _on_grid(price, tick_size) and round(price, info.digits) == price
    # The sides: a BUY's SL below its open price and TP above, a SELL's the other way round.
    below, above = (sl, tp) if side == "BUY" else (tp, sl)
    assert below < position.price_open < above
    # The sums, by the emulator's own tick values: the SL's loss at most the sum asked, within one tick;
    # the TP's profit at least the sum asked, within one tick.
    loss, profit = _money_at(sl, position, tv_loss, tick_size), _money_at(tp, position, tv_profit, tick_size)
    assert asked_sl - per_tick < loss <= asked_sl + 1e-9
    assert asked_tp - 1e-9 <= profit < asked_tp + position.volume * tv_profit
    assert levels["sl"]["money"] == pytest.approx(loss, abs=1e-6)
    assert levels["tp"]["money"] == pytest.approx(profit, abs=1e-6)
    assert levels["sl"]["volume"] == position.volume and levels["sl"]["priceOpen"] == position.price_open

    task = wait_final(body["taskId"])
    assert task.state == "filled" and task.result["retcode"] == 10009, task.result
    at_broker = _broker(sim, ticket)
    assert (at_broker.sl, at_broker.tp) == (sl, tp)


def test_money_and_price_of_one_level_mix_with_the_other_level(stack, client, sim, frozen) -> None:
    sid = open_session(client, "sim-a", MONEY_LOGIN)
    ticket = _open(client, sid, "m-mix-open", symbol="EURUSD", type="BUY", volume=0.1)
    r = _patch(client, sid, ticket, {"sl": 1.09, "tpMoney": 12.0}, "m-mix")
    assert r.status_code == 202, r.content
    request = r.json()["request"]
    assert request["sl"] == 1.09 and set(request["moneyLevels"]) == {"tp"}
    task = wait_final(r.json()["taskId"])
    assert task.state == "filled", task.result
    assert (_broker(sim, ticket).sl, _broker(sim, ticket).tp) == (1.09, request["tp"])


def test_bad_money_bodies_are_400_or_404_and_write_nothing(stack, client, sim, frozen) -> None:
    sid = open_session(client, "sim-a", MONEY_LOGIN)
    ticket = _open(client, sid, "m-bad-open", symbol="EURUSD", type="BUY", volume=0.1)
    before = TradeTask.objects.count()
    cases = [
        ({"sl": 1.09, "slMoney": 10.0}, {"slMoney"}),
        ({"tp": 1.2, "tpMoney": 10.0}, {"tpMoney"}),
        ({"sl": 1.09, "slMoney": 10.0, "tp": 1.2, "tpMoney": 10.0}, {"slMoney", "tpMoney"}),
        ({"slMoney": 0}, {"slMoney"}),
        ({"tpMoney": -5.0}, {"tpMoney"}),
        ({"slMoney": "10"}, {"slMoney"}),
        ({"slMoney": 0.05}, {"slMoney"}),  # less than one tick's worth (0.1 lots: 0.1 per tick)
        ({"slMoney": 1_000_000.0}, {"slMoney"}),  # the stop would be below 0
    ]
    for i, (body, fields) in enumerate(cases):
        r = _patch(client, sid, ticket, body, f"m-bad-{i}")
        assert r.status_code == 400, (body, r.content)
        error = r.json()["error"]
        assert error["code"] == "ValidationError" and set(error["details"]) == fields, (body, error)
    r = _patch(client, sid, 987654321, {"slMoney": 10.0}, "m-bad-ticket")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NotFound", r.content
    assert TradeTask.objects.count() == before


def test_a_money_replay_is_the_same_task_after_the_price_moved_another_body_409(stack, client, sim, frozen) -> None:
    sid = open_session(client, "sim-a", MONEY_LOGIN)
    ticket = _open(client, sid, "m-replay-open", symbol="USDJPY", type="BUY", volume=0.1)
    first = _patch(client, sid, ticket, {"slMoney": 20.0}, "m-replay")
    assert first.status_code == 202, first.content
    wait_final(first.json()["taskId"])
    frozen.set_price("USDJPY", 120.000, 120.012)  # USDJPY's tick value in USD moved by a fifth
    moved = _symbol_info(sim, "USDJPY").trade_tick_value_loss
    assert moved != pytest.approx(first.json()["request"]["moneyLevels"]["sl"]["tickValue"])
    again = _patch(client, sid, ticket, {"slMoney": 20.0}, "m-replay")
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json()["taskId"] == first.json()["taskId"]
    assert again.json()["request"] == first.json()["request"]
    other = _patch(client, sid, ticket, {"slMoney": 21.0}, "m-replay")
    assert other.status_code == 409 and other.json()["error"]["code"] == "TaskConflict"
    assert TradeTask.objects.filter(request_id="m-replay").count() == 1


def _close_deals(sim, ticket):
    return [d for d in sim("sim-a").history_deals() if d.position_id == ticket and d.entry == 1]  # DEAL_ENTRY_OUT


def test_close_all_closes_exactly_the_matching_positions_once_and_replays(stack, client, sim, frozen) -> None:
    sid = open_session(client, "sim-a", CLOSE_LOGIN)
    a = _open(client, sid, "c-open-a", symbol="EURUSD", type="BUY", volume=0.1, magic=111)
    b = _open(client, sid, "c-open-b", symbol="EURUSD", type="BUY", volume=0.1, magic=222)
    c = _open(client, sid, "c-open-c", symbol="EURUSD", type="SELL", volume=0.1, magic=111)
    d = _open(client, sid, "c-open-d", symbol="USDJPY", type="BUY", volume=0.1, magic=111)

    r = _post(client, sid, "/positions/close", {"symbol": "eurusd", "side": "BUY", "magic": 111, "deviation": 30},
              "c-1")
    assert r.status_code == 202, r.content
    [task] = r.json()["tasks"]
    assert task["kind"] == "position.close" and task["requestId"] == f"c-1/{a}"
    assert task["request"] == {"deviation": 30}
    assert wait_final(task["taskId"]).state == "filled"
    assert _broker(sim, a) is None and all(_broker(sim, t) for t in (b, c, d))

    orders_before, tasks_before = len(sim("sim-a").history_orders()), TradeTask.objects.count()
    replay = _post(client, sid, "/positions/close", {"symbol": "eurusd", "side": "BUY", "magic": 111, "deviation": 30},
                   "c-1")
    assert replay.status_code == 202 and replay["Idempotent-Replayed"] == "true"
    assert [t["taskId"] for t in replay.json()["tasks"]] == [task["taskId"]]
    assert replay.json()["tasks"][0]["state"] == "filled"  # the task as it is now
    conflict = _post(client, sid, "/positions/close", {"symbol": "EURUSD", "side": "BUY", "magic": 111}, "c-1")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "TaskConflict", conflict.content
    assert conflict.json()["error"]["details"]["taskIds"] == [task["taskId"]]
    assert TradeTask.objects.count() == tasks_before
    assert len(sim("sim-a").history_orders()) == orders_before  # nothing new at the broker

    r = _post(client, sid, "/positions/close", {"magic": 111}, "c-2")
    assert r.status_code == 202, r.content
    tasks = r.json()["tasks"]
    assert [t["requestId"] for t in tasks] == [f"c-2/{t}" for t in sorted((c, d))]
    assert all(wait_final(t["taskId"]).state == "filled" for t in tasks)
    assert _broker(sim, c) is None and _broker(sim, d) is None and _broker(sim, b)

    r = _post(client, sid, "/positions/close", {}, "c-3")
    assert r.status_code == 202 and [t["requestId"] for t in r.json()["tasks"]] == [f"c-3/{b}"], r.content
    assert wait_final(r.json()["tasks"][0]["taskId"]).state == "filled"
    assert not sim("sim-a").positions()
    for ticket in (a, b, c, d):  # each closed once, by its task
        [deal] = _close_deals(sim, ticket)
        [closer] = TradeTask.objects.filter(kind="position.close", position_ticket=ticket)
        assert deal.comment.startswith(closer.tag)


def test_close_all_without_a_match_is_200_empty_and_its_replay_stays_empty(stack, client, sim, frozen) -> None:
    sid = open_session(client, "sim-a", CLOSE_EMPTY_LOGIN)
    wait_until(lambda: client.get(f"{BASE}/positions", HTTP_X_SESSION_ID=sid).json()["positions"] == [], 10,
               "an account without positions")
    r = _post(client, sid, "/positions/close", {"symbol": "GBPUSD"}, "c-empty")
    assert r.status_code == 200 and r.json() == {"tasks": []}, r.content
    assert CallReceipt.objects.filter(request_id="c-empty", task_ids=[]).exists()
    ticket = _open(client, sid, "c-empty-open", symbol="GBPUSD", type="BUY", volume=0.1)
    again = _post(client, sid, "/positions/close", {"symbol": "GBPUSD"}, "c-empty")
    assert again.status_code == 200 and again.json() == {"tasks": []} and again["Idempotent-Replayed"] == "true"
    assert _broker(sim, ticket) is not None  # the replay did not look at the positions again
    # The close-all holds its request id: no other write may use it, on the Django path or the hot one.
    taken = _post(client, sid, "/orders", {"symbol": "GBPUSD", "type": "BUY", "volume": 0.1}, "c-empty")
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "TaskConflict", taken.content
    taken = _patch(client, sid, ticket, {"sl": 1.2}, "c-empty")
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "TaskConflict", taken.content
    [hot] = orders_place_batch(writes=[OrderWrite(session_account(session_id=sid), "c-empty",
                                                  {"symbol": "GBPUSD", "type": "BUY", "volume": 0.1})])
    assert isinstance(hot, Conflict)
    assert not TradeTask.objects.filter(request_id="c-empty").exists()
    r = _post(client, sid, "/positions/close", {"symbol": "GBPUSD"}, "c-empty-2")
    assert r.status_code == 202 and [t["requestId"] for t in r.json()["tasks"]] == [f"c-empty-2/{ticket}"]
    assert wait_final(r.json()["tasks"][0]["taskId"]).state == "filled"


def test_close_all_request_ids_methods_and_bad_bodies(stack, client, sim, frozen) -> None:
    sid = open_session(client, "sim-a", CLOSE_EMPTY_LOGIN)
    before = (TradeTask.objects.count(), CallReceipt.objects.count())
    r = _post(client, sid, "/positions/close", {}, "x" * 109)  # 109 + "/" + 19 digits > 128
    assert r.status_code == 400 and set(r.json()["error"]["details"]) == {"x-request-id"}, r.content
    for body, field in (({"side": "LONG"}, "side"), ({"magic": "1"}, "magic"), ({"symbol": "EUR USD"}, "symbol"),
                        ({"volume": 0.1}, "volume"), ({"deviation": -1}, "deviation")):
        r = _post(client, sid, "/positions/close", body, "c-bad")
        assert r.status_code == 400 and field in r.json()["error"]["details"], (body, r.content)
    # A request id another write holds is not a close-all's: 409, nothing made.
    _open(client, sid, "c-held", symbol="GBPUSD", type="BUY", volume=0.1)
    r = _post(client, sid, "/positions/close", {}, "c-held")
    assert r.status_code == 409 and r.json()["error"]["code"] == "TaskConflict", r.content
    assert CallReceipt.objects.count() == before[1] and TradeTask.objects.count() == before[0] + 1
    for method in ("get", "put", "patch", "delete"):
        r = getattr(client, method)(f"{BASE}/positions/close", HTTP_X_SESSION_ID=sid)
        assert r.status_code == 405 and r.json()["error"]["code"] == "MethodNotAllowed", (method, r.content)
    # The x-request-id the bridge makes is short enough: a close-all without one works.
    r = client.post(f"{BASE}/positions/close", {"symbol": "GBPUSD"}, format="json", HTTP_X_SESSION_ID=sid)
    assert r.status_code == 202 and len(r.json()["tasks"]) >= 1, r.content
    rid = r["x-request-id"]
    assert all(t["requestId"].startswith(rid + "/") for t in r.json()["tasks"])
    assert all(wait_final(t["taskId"]).state == "filled" for t in r.json()["tasks"])


def test_concurrent_identical_close_alls_make_one_set_of_tasks(stack, client, api_key, sim, frozen) -> None:
    sid = open_session(client, "sim-a", CLOSE_RACE_LOGIN)
    tickets = sorted(_open(client, sid, f"c-race-open-{i}", symbol="EURUSD", type="BUY", volume=0.1) for i in range(2))
    barrier = threading.Barrier(6)

    def one(_: int) -> tuple[int, list[str], str | None]:
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
        try:
            barrier.wait()
            r = _post(api, sid, "/positions/close", {"symbol": "EURUSD"}, "c-race")
            return r.status_code, [t["taskId"] for t in r.json()["tasks"]], r.get("Idempotent-Replayed")
        finally:
            connection.close()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert {status for status, _, _ in results} == {202}, results
    assert len({tuple(ids) for _, ids, _ in results}) == 1
    assert sum(1 for _, _, replayed in results if replayed != "true") == 1  # exactly one call made them
    task_ids = results[0][1]
    assert [t.position_ticket for t in map(wait_final, task_ids)] == tickets
    assert TradeTask.objects.filter(request_id__startswith="c-race/").count() == 2
    for ticket in tickets:
        assert len(_close_deals(sim, ticket)) == 1
