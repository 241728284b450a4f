"""Faults for "honest outcomes": answers that do not tell what happened at the broker.

Each control (docs/mt5sim.md, "Control API") is played through the real client against a
``python -m mt5sim serve`` process, and the broker's truth is read back with the ordinary calls
(orders_get, positions_get, history_*), as a bridge proving exactly-once execution would do.
Waits are conditions polled until a deadline, never fixed sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from mt5sim.control import Control, ControlError
from mt5sim.tests.conftest import DEMO_PASSWORD, ROOT, next_demo_login

FAR_PAST = 1  # 0 is not a valid date for the history calls
FAR_FUTURE = 2**31 - 1


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value {value!r})")
        time.sleep(0.02)


@pytest.fixture
def market(mt5, sim_control):
    """Frozen feed with EURUSD at 1.10000/1.10010."""
    sim_control.freeze_feed()
    sim_control.set_price("EURUSD", 1.10000, 1.10010)
    return sim_control


def send_buy(mt5, comment: str, volume: float = 0.1, **extra):
    request = {"action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": volume, "type": mt5.ORDER_TYPE_BUY,
               "type_filling": mt5.ORDER_FILLING_FOK, "comment": comment, **extra}
    return mt5.order_send(request)


def deals_with(mt5, comment: str) -> list:
    return [d for d in mt5.history_deals_get(FAR_PAST, FAR_FUTURE) if d.comment == comment]


def orders_with(mt5, comment: str) -> list:
    return [o for o in mt5.history_orders_get(FAR_PAST, FAR_FUTURE) if o.comment == comment]


def positions_with(mt5, comment: str) -> list:
    return [p for p in mt5.positions_get() if p.comment == comment]


# ---------------------------------------------------------------- retcode_fault
def test_timeout_answer_but_executed_leaves_exactly_one_deal(mt5, market):
    market.retcode_fault(mt5.TRADE_RETCODE_TIMEOUT, count=1, execute=True)
    res = send_buy(mt5, "honest-1")
    assert res is not None, mt5.last_error()
    assert (res.retcode, res.order, res.deal, res.volume) == (10012, 0, 0, 0.0)
    assert res.comment == "Request canceled by timeout" and res.request.comment == "honest-1"
    # ... and yet the broker has it, exactly once, with the request's comment
    (deal,) = deals_with(mt5, "honest-1")
    (order,) = orders_with(mt5, "honest-1")
    (pos,) = positions_with(mt5, "honest-1")
    assert deal.order == order.ticket == pos.ticket and order.state == mt5.ORDER_STATE_FILLED
    assert deal.entry == mt5.DEAL_ENTRY_IN and deal.volume == 0.1 and deal.price == 1.1001
    # the fault is used up: the next request answers normally
    again = send_buy(mt5, "honest-2")
    assert again.retcode == mt5.TRADE_RETCODE_DONE and again.order > 0 and again.deal > 0
    assert len(deals_with(mt5, "honest-1")) == 1 and len(deals_with(mt5, "honest-2")) == 1


def test_error_answer_without_execution(mt5, market):
    market.retcode_fault(mt5.TRADE_RETCODE_ERROR, count=2)  # execute=False by default
    for _ in range(2):
        res = send_buy(mt5, "not-done")
        assert (res.retcode, res.order, res.deal) == (10011, 0, 0)
        assert res.comment == "Request processing error"
    assert deals_with(mt5, "not-done") == [] and positions_with(mt5, "not-done") == []
    assert orders_with(mt5, "not-done") == [] and mt5.positions_total() == 0
    assert send_buy(mt5, "not-done").retcode == mt5.TRADE_RETCODE_DONE
    assert len(deals_with(mt5, "not-done")) == 1


@pytest.mark.parametrize(("retcode", "execute"), [(10008, True), (10010, False), (10009, False)])
def test_any_retcode_with_or_without_execution(mt5, market, retcode, execute):
    market.retcode_fault(retcode, execute=execute)
    res = send_buy(mt5, f"rc-{retcode}")
    assert (res.retcode, res.order, res.deal) == (retcode, 0, 0)
    assert len(deals_with(mt5, f"rc-{retcode}")) == (1 if execute else 0)


# ---------------------------------------------------------------- slow_execution
def test_slow_execution_shows_a_started_order_then_fills_after_the_delay(mt5, market):
    market.slow_execution(1.0, count=1, visible=True)  # answer="ipc_timeout"
    started = time.monotonic()
    assert send_buy(mt5, "slow-1", magic=7) is None
    assert mt5.last_error() == (-10005, "IPC timeout")
    assert time.monotonic() - started < 0.5  # the failure is immediate; the execution is not
    (inflight,) = mt5.orders_get()
    assert inflight.state == mt5.ORDER_STATE_STARTED and inflight.ticket > 0
    assert (inflight.symbol, inflight.type, inflight.volume_initial, inflight.volume_current) == ("EURUSD", 0, 0.1, 0.1)
    assert inflight.comment == "slow-1" and inflight.magic == 7
    assert mt5.orders_total() == 1 and mt5.orders_get(ticket=inflight.ticket) == (inflight,)
    assert mt5.positions_total() == 0 and deals_with(mt5, "slow-1") == []
    market.set_price("EURUSD", 1.10100, 1.10110)  # it executes at the price of its time, not of the request's
    (pos,) = wait_for(lambda: positions_with(mt5, "slow-1"), what="the slow request to fill")
    assert time.monotonic() - started >= 0.9
    assert pos.ticket == inflight.ticket and pos.price_open == 1.1011 and pos.magic == 7
    assert mt5.orders_get() == () and mt5.orders_total() == 0
    (deal,) = deals_with(mt5, "slow-1")
    assert deal.order == inflight.ticket and deal.price == 1.1011
    (order,) = mt5.history_orders_get(ticket=inflight.ticket)
    assert order.state == mt5.ORDER_STATE_FILLED and order.comment == "slow-1"


def test_slow_execution_invisible_with_a_timeout_answer(mt5, market):
    market.slow_execution(0.8, visible=False, answer="timeout")
    res = send_buy(mt5, "slow-2")
    assert (res.retcode, res.order, res.deal) == (mt5.TRADE_RETCODE_TIMEOUT, 0, 0)
    assert res.comment == "Request canceled by timeout"
    assert mt5.orders_get() == () and mt5.orders_total() == 0 and mt5.positions_total() == 0
    wait_for(lambda: deals_with(mt5, "slow-2"), what="the slow request to fill")
    assert len(deals_with(mt5, "slow-2")) == 1 and len(positions_with(mt5, "slow-2")) == 1
    assert send_buy(mt5, "slow-3").retcode == mt5.TRADE_RETCODE_DONE  # count=1: used up


def test_slow_execution_goes_through_the_trade_rules_when_it_runs(mt5, market):
    def results() -> list[int]:
        return [r["retcode"] for r in market.state()["faults"]["slow_results"]]

    market.slow_execution(0.5)
    assert send_buy(mt5, "slow-disconnected") is None
    assert [o.comment for o in mt5.orders_get()] == ["slow-disconnected"]
    market.trade_server(connected=False)  # still disconnected when it is due
    assert wait_for(results, what="the slow request to run") == [mt5.TRADE_RETCODE_CONNECTION]
    market.trade_server(connected=True)
    market.slow_execution(0.5)
    assert send_buy(mt5, "slow-invalid", volume=0.001) is None  # below volume_min: refused when it runs
    wait_for(lambda: len(results()) == 2, what="the second slow request to run")
    assert results() == [mt5.TRADE_RETCODE_CONNECTION, mt5.TRADE_RETCODE_INVALID_VOLUME]
    assert mt5.orders_get() == () and mt5.positions_total() == 0
    assert deals_with(mt5, "slow-disconnected") == [] and deals_with(mt5, "slow-invalid") == []


def test_reset_drops_slow_requests_not_yet_executed(mt5, market):
    market.slow_execution(1.0)
    assert send_buy(mt5, "slow-dropped") is None
    assert mt5.orders_total() == 1
    market.reset()
    assert mt5.orders_total() == 0 and mt5.orders_get() == ()
    assert market.state()["faults"]["slow_pending"] == []
    # a later request proves the fault is gone and the engine is still running; nothing else executed
    assert send_buy(mt5, "after-reset").retcode == mt5.TRADE_RETCODE_DONE
    assert deals_with(mt5, "slow-dropped") == []


# ---------------------------------------------------------------- history_delay
def test_history_delay_hides_young_orders_and_deals_then_shows_them(mt5, market):
    deals_before = mt5.history_deals_total(FAR_PAST, FAR_FUTURE)
    orders_before = mt5.history_orders_total(FAR_PAST, FAR_FUTURE)
    market.history_delay(1.5)
    # the account's deposit deal may itself be young: wait until history shows what it showed before
    wait_for(lambda: mt5.history_deals_total(FAR_PAST, FAR_FUTURE) == deals_before, what="the old history")
    res = send_buy(mt5, "synced-later")
    traded = time.monotonic()
    assert res.retcode == mt5.TRADE_RETCODE_DONE
    # positions and orders are live: unaffected
    assert [p.ticket for p in mt5.positions_get()] == [res.order]
    # every form of the history calls hides the new order and deal
    assert mt5.history_deals_get(ticket=res.order) == () and mt5.history_deals_get(position=res.order) == ()
    assert mt5.history_orders_get(ticket=res.order) == () and mt5.history_orders_get(position=res.order) == ()
    assert deals_with(mt5, "synced-later") == [] and orders_with(mt5, "synced-later") == []
    assert mt5.history_deals_total(FAR_PAST, FAR_FUTURE) == deals_before
    assert mt5.history_orders_total(FAR_PAST, FAR_FUTURE) == orders_before
    # ... until they are old enough
    (deal,) = wait_for(lambda: mt5.history_deals_get(ticket=res.order), what="the deal to show")
    assert time.monotonic() - traded >= 1.4
    assert deal.ticket == res.deal
    assert [o.ticket for o in mt5.history_orders_get(position=res.order)] == [res.order]
    assert mt5.history_deals_total(FAR_PAST, FAR_FUTURE) == deals_before + 1
    assert mt5.history_orders_total(FAR_PAST, FAR_FUTURE) == orders_before + 1
    market.history_delay(0)
    assert len(deals_with(mt5, "synced-later")) == 1


def test_history_delay_zero_shows_everything_at_once(mt5, market):
    market.history_delay(30)
    res = send_buy(mt5, "hidden")
    assert mt5.history_deals_get(ticket=res.order) == ()
    market.history_delay(0)
    assert [d.ticket for d in mt5.history_deals_get(ticket=res.order)] == [res.deal]


# ---------------------------------------------------------------- comment_fault
def test_comment_cut_in_orders_deals_and_positions(mt5, market):
    market.comment_fault("cut", length=6)
    res = send_buy(mt5, "bridge:0123456789")
    assert res.retcode == mt5.TRADE_RETCODE_DONE and res.request.comment == "bridge:0123456789"
    (pos,) = mt5.positions_get(ticket=res.order)
    (deal,) = mt5.history_deals_get(ticket=res.order)
    (order,) = mt5.history_orders_get(ticket=res.order)
    assert pos.comment == deal.comment == order.comment == "bridge"
    pend = mt5.order_send({"action": mt5.TRADE_ACTION_PENDING, "symbol": "EURUSD", "volume": 0.1,
                           "type": mt5.ORDER_TYPE_BUY_LIMIT, "price": 1.09, "type_filling": mt5.ORDER_FILLING_RETURN,
                           "comment": "pending-abcdef"})
    assert pend.retcode == mt5.TRADE_RETCODE_DONE
    assert mt5.orders_get(ticket=pend.order)[0].comment == "pendin"
    market.comment_fault(None)
    res = send_buy(mt5, "bridge:whole")
    assert mt5.positions_get(ticket=res.order)[0].comment == "bridge:whole"


def test_comment_rewrite_for_a_count_then_until_turned_off(mt5, market):
    market.comment_fault("rewrite", text="[sl 1.08]", count=1)
    first = send_buy(mt5, "mine-1")
    second = send_buy(mt5, "mine-2")
    assert mt5.positions_get(ticket=first.order)[0].comment == "[sl 1.08]"
    assert mt5.history_deals_get(ticket=first.order)[0].comment == "[sl 1.08]"
    assert mt5.history_orders_get(ticket=first.order)[0].comment == "[sl 1.08]"
    assert mt5.positions_get(ticket=second.order)[0].comment == "mine-2"  # count used up
    market.comment_fault("rewrite", text="")  # count=0: until turned off
    third = send_buy(mt5, "mine-3")
    closed = mt5.order_send({"action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.1,
                             "type": mt5.ORDER_TYPE_SELL, "position": second.order,
                             "type_filling": mt5.ORDER_FILLING_FOK, "comment": "close-2"})
    assert closed.retcode == mt5.TRADE_RETCODE_DONE
    assert mt5.positions_get(ticket=third.order)[0].comment == ""
    assert [d.comment for d in mt5.history_deals_get(position=second.order)] == ["mine-2", ""]
    assert market.state()["faults"]["comment"]["mode"] == "rewrite"
    market.comment_fault(None)
    assert market.state()["faults"]["comment"] is None


# ---------------------------------------------------------------- switch_account
def second_client(address: str, login: int) -> subprocess.Popen:
    """Another process attached to the terminal: it reports its view each time it reads a line."""
    code = textwrap.dedent("""
        import json, sys
        import mt5sim as mt5
        assert mt5.initialize(sys.argv[1], login=int(sys.argv[2]), password=sys.argv[3]), mt5.last_error()
        for _ in sys.stdin:
            info = mt5.account_info()
            print(json.dumps({"login": info.login, "balance": info.balance, "positions": mt5.positions_total(),
                              "deals": [d.comment for d in mt5.history_deals_get(1, 2**31 - 1)]}), flush=True)
    """)
    return subprocess.Popen([sys.executable, "-c", code, address, str(login), DEMO_PASSWORD], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ask(proc: subprocess.Popen) -> dict:
    proc.stdin.write("?\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return json.loads(line)


def test_switch_account_is_seen_by_every_attached_client(mt5, market, sim_server):
    first = mt5.account_info().login
    assert send_buy(mt5, "on-first").retcode == mt5.TRADE_RETCODE_DONE
    other = second_client(sim_server, first)
    try:
        assert ask(other)["login"] == first and ask(other)["positions"] == 1
        new_login = next_demo_login()
        switched = market.switch_account(new_login, password="by-hand")
        assert switched == {"login": new_login, "server": "MT5Sim-Demo", "created": True}
        view = ask(other)  # the other process did nothing, and yet it is on the new account
        assert view == {"login": new_login, "balance": 10000.0, "positions": 0, "deals": ["Initial deposit"]}
        assert mt5.account_info().login == new_login and mt5.positions_total() == 0
        assert market.state()["login"] == new_login
        with pytest.raises(ControlError) as refused:
            market.switch_account(first, password="wrong")
        assert (refused.value.code, refused.value.message) == (-6, "Terminal: Authorization failed")
        assert ask(other)["login"] == new_login
        # back to the first account, its saved password: its position is still there
        assert market.switch_account(first)["created"] is False
        view = ask(other)
        assert view["login"] == first and view["positions"] == 1 and "on-first" in view["deals"]
        assert positions_with(mt5, "on-first")
    finally:
        other.stdin.close()
        other.wait(30)
    assert other.returncode == 0, other.stderr.read()


# ---------------------------------------------------------------- slow login (ctl.delay)
def test_slow_login_is_played_with_delay(mt5, sim_control):
    before = mt5.account_info().login
    new_login = next_demo_login()
    sim_control.delay(1.0, ["login"])
    try:
        started = time.monotonic()
        assert mt5.account_info() is not None
        assert time.monotonic() - started < 0.5  # other calls are not delayed
        assert sim_control.state()["login"] == before
        started = time.monotonic()
        assert mt5.login(new_login, password="slow-pw"), mt5.last_error()
        assert time.monotonic() - started >= 0.95
        assert mt5.account_info().login == new_login
    finally:
        sim_control.delay(0)


def test_slow_login_past_the_client_timeout_still_switches_the_terminal(sim_server, sim_control):
    import mt5sim as mt5

    first = next_demo_login()
    assert mt5.initialize(sim_server, login=first, password=DEMO_PASSWORD, timeout=500), mt5.last_error()
    try:
        second = next_demo_login()
        sim_control.delay(1.5, ["login"])
        started = time.monotonic()
        assert mt5.login(second, password="late") is False
        assert mt5.last_error() == (-10005, "IPC timeout")
        assert time.monotonic() - started < 1.4
        assert sim_control.state()["login"] == first  # not yet ...
        wait_for(lambda: sim_control.state()["login"] == second, what="the late login to land")  # ... but it does
        assert time.monotonic() - started >= 1.4
    finally:
        mt5.shutdown()
        sim_control.reset()


# ---------------------------------------------------------------- state, reset, CLI
def test_state_shows_every_outcome_fault_and_reset_clears_them(mt5, market):
    market.comment_fault("cut", length=3, count=2)
    market.history_delay(2.5)
    market.retcode_fault(10012, count=3, execute=True)
    market.slow_execution(4.0, count=2, visible=False, answer="timeout")
    faults = market.state()["faults"]
    assert faults["comment"] == {"mode": "cut", "length": 3, "text": "", "remaining": 2}
    assert faults["history_delay"] == 2.5
    assert faults["retcode"] == {"retcode": 10012, "remaining": 3, "execute": True}
    assert faults["slow_execution"] == {"seconds": 4.0, "remaining": 2, "visible": False, "answer": "timeout"}
    market.reset()
    faults = market.state()["faults"]
    assert faults["comment"] is None and faults["history_delay"] == 0.0
    assert faults["retcode"] is None and faults["slow_execution"] is None and faults["slow_pending"] == []
    res = send_buy(mt5, "plain")
    assert res.retcode == mt5.TRADE_RETCODE_DONE and mt5.positions_get(ticket=res.order)[0].comment == "plain"
    assert mt5.history_deals_get(ticket=res.order)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("comment_fault", {"mode": "shorten"}),
    ("comment_fault", {"mode": "cut", "length": -1}),
    ("history_delay", {"seconds": -1.0}),
    ("retcode_fault", {"retcode": 10012, "count": -1}),
    ("slow_execution", {"seconds": 1.0, "answer": "never"}),
])
def test_bad_arguments_are_refused(sim_control, name, kwargs):
    with pytest.raises(ControlError) as refused:
        sim_control.call(name, **kwargs)
    assert refused.value.code == -2


def test_outcome_faults_from_the_command_line(mt5, market, sim_server):
    def control(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "mt5sim", "control", "--address", sim_server, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert control("retcode-fault", "10011", "--execute") == {"retcode": 10011, "remaining": 1, "execute": True}
    assert control("comment-fault", "cut", "--length", "2")["mode"] == "cut"
    res = send_buy(mt5, "cli-test")
    assert res.retcode == 10011 and deals_with(mt5, "cl")
    control("comment-fault", "off")
    assert control("history-delay", "0") == 0.0
    assert control("slow-execution", "1", "--invisible", "--answer", "timeout")["visible"] is False
    with Control(sim_server) as ctl:
        assert ctl.state()["faults"]["slow_execution"]["answer"] == "timeout"
