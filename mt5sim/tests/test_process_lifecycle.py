"""The terminal process and the IPC link: several clients, crashes, restarts, IPC faults, fork, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import mt5sim as mt5
from mt5sim.control import Control
from mt5sim.tests.conftest import DEMO_PASSWORD, ROOT, next_demo_login

PYTHON = sys.executable


def client_process(address: str, body: str, login: int, password: str = "pw") -> subprocess.Popen:
    """A separate Python process running ``body`` with ``mt5`` initialized on ``address``.

    A terminal is logged into one account at a time, shared by every process attached to it (as a
    real MetaTrader 5 terminal): client processes of one test use the same login.
    """
    code = textwrap.dedent("""
        import json, sys, time
        import mt5sim as mt5
        ADDRESS, LOGIN, PASSWORD = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        assert mt5.initialize(ADDRESS, login=LOGIN, password=PASSWORD), mt5.last_error()
    """) + textwrap.dedent(body)
    return subprocess.Popen([PYTHON, "-c", code, address, str(login), password], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def buy(symbol: str = "EURUSD", volume: float = 0.1, **extra):
    tick = mt5.symbol_info_tick(symbol)
    request = {"action": mt5.TRADE_ACTION_DEAL, "symbol": symbol, "volume": volume, "type": mt5.ORDER_TYPE_BUY,
               "price": tick.ask, "deviation": 20, "type_filling": mt5.ORDER_FILLING_IOC, **extra}
    result = mt5.order_send(request)
    assert result is not None and result.retcode == mt5.TRADE_RETCODE_DONE, (result, mt5.last_error())
    return result


@pytest.fixture
def detached():
    mt5.shutdown()
    yield
    mt5.shutdown()


def test_sigterm_and_sigint_stop_the_terminal_cleanly(sim_factory):
    server = sim_factory("term")
    assert server.stop() == 0
    assert "mt5sim: stopped" in server.log()
    server.start()
    server.signal(signal.SIGINT)
    assert server.popen.wait(15) == 0


def test_several_client_processes_at_once(sim_factory, detached):
    server = sim_factory("multi")
    body = """
        ok = 0
        for _ in range(40):
            tick = mt5.symbol_info_tick("EURUSD")
            r = mt5.order_send({"action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.01,
                                "type": mt5.ORDER_TYPE_BUY, "price": tick.ask, "deviation": 50,
                                "type_filling": mt5.ORDER_FILLING_IOC})
            ok += r is not None and r.retcode == mt5.TRADE_RETCODE_DONE
        print(json.dumps({"ok": ok, "login": mt5.account_info().login}))
    """
    login = next_demo_login()
    procs = [client_process(server.address, body, login) for _ in range(4)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert [o["ok"] for o in outputs] == [40] * 4
    assert [o["login"] for o in outputs] == [login] * 4
    assert mt5.initialize(server.address, login=login, password="pw")
    positions = mt5.positions_get()
    assert len(positions) == 160 and len({p.ticket for p in positions}) == 160


def test_sigkill_of_a_client_mid_session_loses_nothing(sim_factory, detached):
    server = sim_factory("crash-client")
    login = next_demo_login()
    body = """
        tick = mt5.symbol_info_tick("EURUSD")
        base = {"symbol": "EURUSD", "volume": 0.1, "deviation": 20, "type_filling": mt5.ORDER_FILLING_IOC}
        a = mt5.order_send(dict(base, action=mt5.TRADE_ACTION_DEAL, type=mt5.ORDER_TYPE_BUY, price=tick.ask))
        b = mt5.order_send(dict(base, action=mt5.TRADE_ACTION_DEAL, type=mt5.ORDER_TYPE_SELL, price=tick.bid))
        p = mt5.order_send(dict(base, action=mt5.TRADE_ACTION_PENDING, type=mt5.ORDER_TYPE_BUY_LIMIT,
                                price=round(tick.ask - 0.02, 5), type_filling=mt5.ORDER_FILLING_RETURN))
        print(json.dumps({"positions": [a.order, b.order], "deals": [a.deal, b.deal], "order": p.order,
                          "retcodes": [a.retcode, b.retcode, p.retcode]}), flush=True)
        mt5.symbol_info_tick("EURUSD")
        print("busy", flush=True)
        while True:
            mt5.symbol_info_tick("EURUSD")   # busy with the terminal when the kill lands
    """
    proc = client_process(server.address, body, login)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    before = json.loads(line)
    assert before["retcodes"] == [10009, 10009, 10009]
    assert proc.stdout.readline().strip() == "busy", proc.stderr.read()  # in its loop of calls now
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()

    assert mt5.initialize(server.address, login=login, password="pw"), mt5.last_error()
    assert sorted(p.ticket for p in mt5.positions_get()) == sorted(before["positions"])
    assert [o.ticket for o in mt5.orders_get()] == [before["order"]]
    for position, deal in zip(before["positions"], before["deals"], strict=True):
        assert [d.ticket for d in mt5.history_deals_get(position=position)] == [deal]


def test_restart_with_the_same_state_keeps_everything_and_the_client_reconnects(sim_factory, detached):
    server = sim_factory("restart")
    login = next_demo_login()
    assert mt5.initialize(server.address, login=login, password="pw"), mt5.last_error()
    kept = buy(comment="kept")
    closed = buy()
    sell = mt5.order_send({"action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.1,
                           "type": mt5.ORDER_TYPE_SELL, "price": mt5.symbol_info_tick("EURUSD").bid,
                           "position": closed.order, "type_filling": mt5.ORDER_FILLING_IOC})
    assert sell.retcode == mt5.TRADE_RETCODE_DONE
    balance = mt5.account_info().balance
    deals_before = mt5.history_deals_get(position=closed.order)

    server.restart()  # same port, same --state

    # the old connection is gone: the next call reconnects and logs in again by itself
    positions = mt5.positions_get()
    assert positions is not None, mt5.last_error()
    assert [p.ticket for p in positions] == [kept.order] and positions[0].comment == "kept"
    assert mt5.account_info().login == login
    assert mt5.account_info().balance == pytest.approx(balance)
    assert mt5.history_deals_get(position=closed.order) == deals_before


def test_sigkill_of_the_terminal_keeps_history(sim_factory, detached):
    server = sim_factory("crash-terminal")
    login = next_demo_login()
    assert mt5.initialize(server.address, login=login, password="pw"), mt5.last_error()
    opened = buy()
    mt5.shutdown()
    server.kill()
    server.start()
    assert mt5.initialize(server.address, login=login, password="pw"), mt5.last_error()
    assert [p.ticket for p in mt5.positions_get()] == [opened.order]
    assert [d.ticket for d in mt5.history_deals_get(position=opened.order)] == [opened.deal]


def test_connection_dropped_mid_call_then_reconnect(sim_factory, detached):
    server = sim_factory("drop")
    login = next_demo_login()
    assert mt5.initialize(server.address, login=login, password="pw")
    Control(server.address).delay(5.0, ["account_info"])
    threading.Timer(0.5, server.kill).start()
    started = time.monotonic()
    assert mt5.account_info() is None
    assert mt5.last_error() == (-10002, "IPC recv failed")
    assert time.monotonic() - started < 4.5
    assert mt5.version() is None
    assert mt5.last_error() == (-10004, "No IPC connection")  # nothing to reconnect to
    server.start()  # same port
    assert mt5.account_info() is not None, mt5.last_error()
    assert mt5.account_info().login == login
    assert mt5.last_error() == (1, "Success")


def test_ipc_timeout_with_and_without_execution(mt5, sim_control):
    before = mt5.positions_total()
    sim_control.ipc_timeout("order_send", count=1, execute=True)
    tick = mt5.symbol_info_tick("EURUSD")
    request = {"action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.1, "type": mt5.ORDER_TYPE_BUY,
               "price": tick.ask, "deviation": 50, "type_filling": mt5.ORDER_FILLING_IOC, "comment": "unknown-outcome"}
    assert mt5.order_send(request) is None
    assert mt5.last_error() == (-10005, "IPC timeout")
    assert mt5.positions_total() == before + 1  # it was executed all the same
    assert [p.comment for p in mt5.positions_get()][-1] == "unknown-outcome"

    sim_control.ipc_timeout("order_send", count=2, execute=False)
    assert mt5.order_send(request) is None and mt5.last_error() == (-10005, "IPC timeout")
    assert mt5.order_send(request) is None and mt5.last_error() == (-10005, "IPC timeout")
    assert mt5.positions_total() == before + 1  # not executed
    assert mt5.order_send(request).retcode == mt5.TRADE_RETCODE_DONE  # the fault is used up

    sim_control.ipc_timeout("symbol_info_tick", count=1, execute=False)
    assert mt5.symbol_info_tick("EURUSD") is None and mt5.last_error() == (-10005, "IPC timeout")
    assert mt5.symbol_info_tick("EURUSD") is not None


def test_delay_holds_neither_the_engine_nor_other_connections(mt5, sim_server, sim_control):
    sim_control.delay(1.5, ["symbol_info_tick"])
    body = """
        print(json.dumps({"calling": time.time()}), flush=True)
        start = time.monotonic()
        assert mt5.symbol_info_tick("EURUSD") is not None
        print(json.dumps({"elapsed": time.monotonic() - start, "returned": time.time()}))
    """
    login = mt5.account_info().login
    procs = [client_process(sim_server, body, login, DEMO_PASSWORD) for _ in range(2)]
    # Both clients are about to send their call; each is then held in its 1.5 s delay.
    calling = [json.loads(proc.stdout.readline() or "{}").get("calling") for proc in procs]
    assert None not in calling, [proc.stderr.read() for proc in procs]
    window_start, started = time.time(), time.monotonic()
    assert mt5.account_info() is not None and mt5.positions_get() is not None
    assert time.monotonic() - started < 0.5  # neither the lock nor this connection was held
    window_end = time.time()
    elapsed, returned = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        elapsed.append(result["elapsed"])
        returned.append(result["returned"])
    assert all(1.4 <= e < 2.9 for e in elapsed), elapsed  # concurrent, not one after the other
    # This connection was served while both delayed calls were under way, not before or after them.
    assert max(calling) <= window_start and window_end <= min(returned), (calling, window_start, window_end, returned)
    sim_control.delay(0)


def test_client_timeout_gives_ipc_timeout_and_the_link_recovers(sim_server, sim_control, detached):
    assert mt5.initialize(sim_server, login=next_demo_login(), password="pw", timeout=1000)
    sim_control.delay(2.0, ["terminal_info"])
    try:
        started = time.monotonic()
        assert mt5.terminal_info() is None
        assert mt5.last_error() == (-10005, "IPC timeout")
        assert time.monotonic() - started < 1.8
    finally:
        sim_control.delay(0)
    assert mt5.terminal_info() is not None, mt5.last_error()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_must_initialize_its_own_connection(mt5, sim_server):
    assert mt5.version() is not None
    login = mt5.account_info().login
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            report = {"before": [mt5.version(), list(mt5.last_error())]}
            report["init"] = mt5.initialize(sim_server, login=login, password=DEMO_PASSWORD)
            report["after"] = mt5.version() is not None
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = json.loads(os.read(read_end, 65536))
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"before": [None, [-10004, "No IPC connection"]], "init": True, "after": True}
    assert mt5.version() is not None and mt5.account_info().login == login  # the parent's link is intact


def test_control_cli(sim_server, mt5):
    def control(*args: str) -> str:
        done = subprocess.run([PYTHON, "-m", "mt5sim", "control", "--address", sim_server, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    control("freeze-feed", "EURUSD")
    control("set-price", "EURUSD", "1.1", "1.1002")
    tick = mt5.symbol_info_tick("EURUSD")
    assert (tick.bid, tick.ask) == (1.1, 1.1002)
    state = json.loads(control("state"))
    assert isinstance(state, dict) and "ipc_faults" in state
    control("ipc-timeout", "--method", "version", "--count", "1", "--no-execute")
    assert mt5.version() is None and mt5.last_error() == (-10005, "IPC timeout")
    control("reset")
    bad = subprocess.run([PYTHON, "-m", "mt5sim", "control", "--address", sim_server, "set-price", "NOPE", "1", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error:")


def test_run_aliases_metatrader5_and_passes_argv(sim_server, tmp_path: Path):
    script = tmp_path / "bot.py"
    script.write_text(textwrap.dedent("""
        import sys
        import MetaTrader5 as mt5
        assert mt5.initialize(), mt5.last_error()
        print("args", sys.argv[1:], mt5.__version__, mt5.symbol_info_tick("EURUSD").bid > 0)
        mt5.shutdown()
        sys.exit(int(sys.argv[1]))
    """))
    env = {k: v for k, v in os.environ.items() if k != "MT5SIM_ADDRESS"}
    done = subprocess.run([PYTHON, "-m", "mt5sim", "run", "--address", sim_server, str(script), "3", "--x"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == "args ['3', '--x'] 5.0.6231 True"
    env["MT5SIM_ADDRESS"] = sim_server
    done = subprocess.run([PYTHON, "-m", "mt5sim", "run", str(script), "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
