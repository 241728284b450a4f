"""One broker, several terminals: real ``python -m mt5sim broker`` and ``serve --broker`` processes.

Every process binds port 0 and reports the port it got; each fixture stops what it started. The
MetaTrader5-like module is one connection per process, so calls to two terminals from one test go
through ``Wire`` (the client's own wire protocol, arguments as the module sends them), and the
checks that depend on the module itself (``last_error()``) run it in a client subprocess.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge_project.processes import kill_group, start_group, stop_group
from mt5sim import protocol
from mt5sim.control import Control, ControlError

ROOT = Path(__file__).resolve().parents[2]
_TERMINAL = re.compile(r"mt5sim listening on (\S+?):(\d+)\b")
_BROKER = re.compile(r"mt5sim broker listening on (\S+?):(\d+)\b")
_logins = itertools.count(8_100_001 + (os.getpid() % 1000) * 1000)

AUTH_FAILED = [-6, "Terminal: Authorization failed"]
DEAL, BUY, SELL, IOC = 1, 0, 1, 1
DONE, NO_CONNECTION, REQUOTE = 10009, 10031, 10004


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Proc:
    """An mt5sim process in its own process group, logging to a file; restartable on the same port."""

    def __init__(self, workdir: Path, name: str, argv: list[str], pattern: re.Pattern) -> None:
        self.log_path = workdir / f"{name}.log"
        self.argv = argv
        self.pattern = pattern
        self.popen: subprocess.Popen | None = None
        self.address = argv[argv.index("--address") + 1]

    def start(self, wait: bool = True) -> Proc:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = list(self.argv)
        argv[argv.index("--address") + 1] = self.address
        self.popen = start_group([sys.executable, "-m", "mt5sim", *argv], log_path=self.log_path, cwd=ROOT)
        self.offset = offset
        if wait:
            self.wait_listening()
        return self

    def log(self) -> str:
        return self.log_path.read_bytes()[self.offset:].decode(errors="replace")

    def wait_listening(self) -> None:
        argv = self.argv

        def listening() -> str | None:
            if self.popen.poll() is not None:
                raise AssertionError(f"{argv[0]} exited: {self.log_path.read_text()[-3000:]}")
            match = self.pattern.search(self.log())
            return f"{match.group(1)}:{match.group(2)}" if match else None

        self.address = wait_for(listening, 60, f"{argv[0]} listening")

    def stop(self) -> None:
        """SIGTERM (the process writes its state), SIGKILL after a grace; nothing of its group survives."""
        if self.popen is not None:
            stop_group(self.popen, 20)

    def kill(self) -> None:
        """SIGKILL: a crash, only what was journaled survives."""
        if self.popen is not None:
            kill_group(self.popen)


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.broker: Proc | None = None

    def start_broker(self, *extra: str) -> Proc:
        self.broker = Proc(self.workdir, "broker", ["broker", "--address", "127.0.0.1:0", "--state",
                                                     str(self.workdir / "broker-state"), "--seed", "3", *extra],
                           _BROKER).start()
        self.procs.append(self.broker)
        return self.broker

    def start_terminal(self, name: str, *extra: str) -> Proc:
        assert self.broker is not None
        proc = Proc(self.workdir, name, ["serve", "--broker", self.broker.address, "--address", "127.0.0.1:0",
                                         "--state", str(self.workdir / f"{name}-state"), *extra], _TERMINAL).start()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


class Wire:
    """A client connection speaking mt5sim's wire protocol (what the module sends after its checks)."""

    def __init__(self, address: str) -> None:
        import socket

        host, port = protocol.parse_address(address)
        self.sock = socket.create_connection((host, port), timeout=30)
        self.reader = protocol.FrameReader(self.sock)
        self.ids = itertools.count(1)

    def raw(self, method: str, **kwargs: Any) -> tuple[str, Any]:
        self.sock.sendall(protocol.pack([next(self.ids), method, kwargs]))
        _, status, payload = self.reader.read()
        return status, payload

    def __call__(self, method: str, **kwargs: Any) -> Any:
        status, payload = self.raw(method, **kwargs)
        assert status == "ok", (method, status, payload)
        return payload

    def close(self) -> None:
        self.sock.close()


def request(**fields: Any) -> dict:
    base = {"action": 0, "magic": 0, "order": 0, "symbol": "", "volume": 0.0, "price": 0.0, "stoplimit": 0.0,
            "sl": 0.0, "tp": 0.0, "deviation": 0, "type": 0, "type_filling": 0, "type_time": 0, "expiration": 0,
            "comment": "", "position": 0, "position_by": 0}
    base.update(fields)
    return base


def buy(wire: Wire, volume: float = 0.1) -> list:
    tick = wire("symbol_info_tick", symbol="EURUSD")
    return wire("order_send", request=request(action=DEAL, symbol="EURUSD", volume=volume, type=BUY,
                                              price=tick[2], deviation=100, type_filling=IOC))


def close(wire: Wire, ticket: int, volume: float = 0.1) -> list:
    tick = wire("symbol_info_tick", symbol="EURUSD")
    return wire("order_send", request=request(action=DEAL, symbol="EURUSD", volume=volume, type=SELL,
                                              price=tick[1], deviation=100, type_filling=IOC, position=ticket))


def connect(address: str, login: int, password: str = "pw") -> Wire:
    wire = Wire(address)
    assert wire("initialize", login=login, password=password) is True
    return wire


def module_login(address: str, login: int, password: str) -> list:
    """initialize() through the real client module in its own process: [result, last_error()]."""
    code = ("import json, sys, mt5sim as mt5\n"
            "ok = mt5.initialize(sys.argv[1], login=int(sys.argv[2]), password=sys.argv[3])\n"
            "err = list(mt5.last_error())\n"
            "acct = mt5.account_info()\n"
            "print(json.dumps([ok, err, acct.login if acct else None]))\n")
    out = subprocess.run([sys.executable, "-c", code, address, str(login), password], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def two_terminals(stack: Stack) -> tuple[Stack, Proc, Proc]:
    stack.start_broker()
    return stack, stack.start_terminal("t1"), stack.start_terminal("t2")


def test_two_terminals_see_the_same_account_and_close_each_others_positions(two_terminals) -> None:
    stack, t1, t2 = two_terminals
    login = next(_logins)
    a, b = connect(t1.address, login), connect(t2.address, login)
    try:
        opened = buy(a)
        assert opened[0] == DONE
        ticket = opened[2]
        positions_b = b("positions_get")
        assert [p[0] for p in positions_b] == [ticket]
        assert a("account_info") == b("account_info")
        assert b("account_info")[0] == login

        closed = close(b, ticket)  # opened through t1, closed through t2
        assert closed[0] == DONE
        assert a("positions_get") == [] and b("positions_get") == []
        far = 4_000_000_000
        deals_a = a("history_deals_get", date_from=0, date_to=far)
        assert deals_a == b("history_deals_get", date_from=0, date_to=far)
        assert [d[1] for d in deals_a][-2:] == [ticket, closed[2]]  # the deals of both orders
        assert a("history_orders_total", date_from=0, date_to=far) == 2
        balance = a("account_info")[10]
        assert balance == b("account_info")[10]
        assert balance == pytest.approx(10_000.0 + deals_a[-1][13], abs=1e-6)  # the closing deal's profit
        # the broker's own view agrees
        with Control(stack.broker.address) as ctl:
            summary = ctl.state()["accounts"][str(login)]
        assert summary["positions"] == 0 and summary["deals"] == 3 and summary["balance"] == balance
    finally:
        a.close()
        b.close()


def test_wrong_password_fails_on_every_terminal(two_terminals) -> None:
    _, t1, t2 = two_terminals
    login = next(_logins)
    assert module_login(t1.address, login, "right") == [True, [1, "Success"], login]
    assert module_login(t2.address, login, "wrong") == [False, AUTH_FAILED, None]
    assert module_login(t1.address, login, "wrong") == [False, AUTH_FAILED, None]
    assert module_login(t2.address, login, "right") == [True, [1, "Success"], login]
    # login() too, and the terminal stays on the account it had
    wire = connect(t2.address, login, "right")
    try:
        assert wire.raw("login", login=login, password="wrong") == ("err", AUTH_FAILED)
        assert wire("account_info")[0] == login
    finally:
        wire.close()


def test_unknown_logins_fail_when_the_broker_creates_no_demo_accounts(stack: Stack) -> None:
    config = stack.workdir / "broker.yaml"
    config.write_text("server: {allow_unknown_logins: false}\naccounts: [{login: 5001, password: secret}]\n")
    stack.start_broker("--config", str(config))
    t1 = stack.start_terminal("t1")
    t2 = stack.start_terminal("t2")
    for terminal in (t1, t2):
        wire = Wire(terminal.address)
        try:
            assert wire.raw("initialize", login=next(_logins), password="x") == ("err", AUTH_FAILED)
            assert wire.raw("initialize", login=5001, password="nope") == ("err", AUTH_FAILED)
            # no password: the one this terminal saved; it has none yet
            assert wire.raw("initialize", login=5001) == ("err", AUTH_FAILED)
            assert wire("initialize", login=5001, password="secret") is True
            assert wire("account_info")[0] == 5001
            assert wire("login", login=5001) is True  # now it has one
        finally:
            wire.close()


def test_broker_restart_keeps_state_and_terminals_reconnect(two_terminals) -> None:
    stack, t1, t2 = two_terminals
    login = next(_logins)
    a = connect(t1.address, login)
    try:
        ticket = buy(a)[2]
        balance = a("account_info")[10]
        assert [p[0] for p in a("positions_get")] == [ticket]
        stack.broker.kill()  # a crash: only the journal survives

        # meanwhile the terminal answers like one without a trade server connection: what it last knew
        assert a("terminal_info")[2] is False
        assert a("account_info")[10] == balance
        assert [p[0] for p in a("positions_get")] == [ticket]
        assert a.raw("history_deals_total", date_from=0, date_to=1) == ("err", [-1, "Terminal: Call failed"])
        refused = a("order_send", request=request(action=DEAL, symbol="EURUSD", volume=0.1, type=BUY,
                                                  type_filling=IOC))
        assert refused[0] == NO_CONNECTION

        stack.broker.start()  # same port, same state dir
        assert wait_for(lambda: a("terminal_info")[2], what="terminal reconnected")
        assert [p[0] for p in a("positions_get")] == [ticket]
        assert a("account_info")[10] == balance
        b = connect(t2.address, login)
        try:
            assert close(b, ticket)[0] == DONE
        finally:
            b.close()
        assert a("positions_get") == []
    finally:
        a.close()


def test_terminal_restart_loses_nothing(two_terminals) -> None:
    stack, t1, _ = two_terminals
    login = next(_logins)
    a = connect(t1.address, login, "secret")
    try:
        ticket = buy(a)[2]
        assert a("symbol_select", symbol="NZDUSD", enable=True) is True
        assert a.raw("symbol_info_tick", symbol="DE40")[1] == [-4, "Terminal: Not found"]  # not in Market Watch
    finally:
        a.close()
    t1.stop()
    t1.start()  # same port, same terminal state dir
    fresh = Wire(t1.address)
    try:
        assert fresh("initialize") is True  # no login given: the account the terminal was logged in to
        assert fresh("account_info")[0] == login
        assert [p[0] for p in fresh("positions_get")] == [ticket]
        assert fresh("symbol_info", symbol="NZDUSD")[2] is True  # select: the Market Watch survived
        assert fresh("symbol_info_tick", symbol="NZDUSD")[1] > 0
        assert fresh("login", login=login) is True  # the saved password
    finally:
        fresh.close()


def test_control_faults_through_a_terminal(two_terminals) -> None:
    stack, t1, t2 = two_terminals
    login = next(_logins)
    a, b = connect(t1.address, login), connect(t2.address, login)
    c1, c2 = Control(t1.address), Control(t2.address)
    try:
        # market-level: set at the broker through t1, seen through t2
        c1.freeze_feed()
        c1.set_price("EURUSD", 1.2345, 1.2347)
        assert b("symbol_info_tick", symbol="EURUSD")[1:3] == [1.2345, 1.2347]
        # trade-level: the broker's next deal is requoted, whichever terminal sends it
        c1.requote(1)
        assert buy(b)[0] == REQUOTE
        assert buy(b)[0] == DONE
        # terminal-level: only t1 loses its trade server
        c1.trade_server(connected=False)
        assert a("terminal_info")[2] is False and b("terminal_info")[2] is True
        assert buy(a)[0] == NO_CONNECTION
        assert buy(b)[0] == DONE
        c1.trade_server(connected=True)
        assert buy(a)[0] == DONE
        # IPC-level, executed at the broker all the same: the position shows on the other terminal
        before = len(b("positions_get"))
        c1.ipc_timeout("order_send", 1, execute=True)
        tick = a("symbol_info_tick", symbol="EURUSD")
        assert a.raw("order_send", request=request(action=DEAL, symbol="EURUSD", volume=0.1, type=BUY,
                                                   price=tick[2], deviation=100, type_filling=IOC)) == \
            ("ipc_timeout", None)
        assert len(b("positions_get")) == before + 1
        # terminal properties are the terminal's
        c2.call("set_terminal", trade_allowed=False)
        assert buy(b)[0] == 10027 and buy(a)[0] == DONE
        # switch_account: the terminal logs itself in; a wrong password is refused
        other = next(_logins)
        switched = c2.switch_account(other, password="pw2")
        assert switched["login"] == other and switched["created"] is True
        assert b("account_info")[0] == other and a("account_info")[0] == login
        with pytest.raises(ControlError) as refused:
            c1.switch_account(other, password="bad")
        assert [refused.value.code, refused.value.message] == AUTH_FAILED
        state = c1.state()
        assert state["login"] == login and str(other) in state["accounts"]
        c1.reset()
        c2.reset()
        assert c1.state()["frozen"] == [] and buy(b)[0] == DONE
    finally:
        for x in (a, b, c1, c2):
            x.close()


def test_one_broker_several_server_names(stack: Stack) -> None:
    stack.start_broker("--server", "Demo-UTC2=7200", "--server", "Demo-UTC=0")
    t_plus2 = stack.start_terminal("plus2")  # the broker's first server name
    t_utc = stack.start_terminal("utc", "--server", "Demo-UTC")
    login = next(_logins)
    a, b = connect(t_plus2.address, login, "one"), connect(t_utc.address, login, "two")
    try:
        assert a("account_info")[25] == "Demo-UTC2" and b("account_info")[25] == "Demo-UTC"
        ta, tb = a("symbol_info_tick", symbol="BTCUSD"), b("symbol_info_tick", symbol="BTCUSD")
        assert abs((ta[0] - tb[0]) - 7200) <= 5  # each server name has its own clock
        assert buy(a)[0] == DONE
        assert b("positions_get") == []  # and its own accounts
        # logging in with another hosted server name moves the terminal there
        assert b("login", login=login, password="one", server="Demo-UTC2") is True
        assert len(b("positions_get")) == 1
    finally:
        a.close()
        b.close()


def test_controls_against_the_broker_address(stack: Stack) -> None:
    stack.start_broker("--server", "Demo-A=7200", "--server", "Demo-B=0")
    ta = stack.start_terminal("ta")
    tb = stack.start_terminal("tb", "--server", "Demo-B")
    login = next(_logins)
    a, b = connect(ta.address, login), connect(tb.address, login)
    try:
        with Control(stack.broker.address, server_name="Demo-B") as ctl_b:
            ctl_b.freeze_feed("EURUSD")
            ctl_b.set_price("EURUSD", 1.5, 1.5002)
            assert b("symbol_info_tick", symbol="EURUSD")[1:3] == [1.5, 1.5002]
            assert a("symbol_info_tick", symbol="EURUSD")[1] != 1.5  # another server name, its own prices
            assert buy(b)[0] == DONE
            assert ctl_b.state()["accounts"][str(login)]["positions"] == 1
            # the server name's trade server goes down for every terminal on it
            ctl_b.trade_server(connected=False)
            assert b("terminal_info")[2] is False and a("terminal_info")[2] is True
            assert buy(b)[0] == NO_CONNECTION and buy(a)[0] == DONE
            ctl_b.trade_server(connected=True)
            assert b("terminal_info")[2] is True
        cli = subprocess.run([sys.executable, "-m", "mt5sim", "control", "--address", stack.broker.address,
                              "--server-name", "Demo-A", "state"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, check=True)
        state_a = json.loads(cli.stdout)
        assert state_a["server_offset"] == 7200 and state_a["accounts"][str(login)]["positions"] == 1  # buy(a) only
        assert state_a["broker"] == {"servers": ["Demo-A", "Demo-B"], "default": "Demo-A"}
        # a full reset through a terminal wipes its server's accounts and keeps the terminal logged in
        with Control(tb.address) as ctl:
            ctl.reset(full=True)
        assert b("positions_get") == [] and b("account_info")[0] == login
        assert b("account_info")[10] == 10_000.0
    finally:
        a.close()
        b.close()


def test_a_terminal_started_before_its_broker_waits_for_it(stack: Stack) -> None:
    import socket

    with socket.socket() as probe:  # a free port, chosen now, for the broker that is not there yet
        probe.bind(("127.0.0.1", 0))
        broker_address = f"127.0.0.1:{probe.getsockname()[1]}"
    terminal = Proc(stack.workdir, "early", ["serve", "--broker", broker_address, "--address", "127.0.0.1:0",
                                             "--state", str(stack.workdir / "early-state")], _TERMINAL)
    stack.procs.append(terminal)
    terminal.start(wait=False)
    wait_for(lambda: "waiting for the broker" in terminal.log(), what="the terminal waiting")
    assert _TERMINAL.search(terminal.log()) is None  # not listening: not ready
    stack.broker = Proc(stack.workdir, "broker", ["broker", "--address", broker_address, "--seed", "3"], _BROKER)
    stack.procs.append(stack.broker)
    stack.broker.start()
    terminal.wait_listening()
    wire = connect(terminal.address, next(_logins))
    try:
        assert wire("terminal_info")[2] is True
        assert buy(wire)[0] == DONE
    finally:
        wire.close()
    # one terminal per state dir
    second = subprocess.run([sys.executable, "-m", "mt5sim", "serve", "--broker", broker_address, "--address",
                             "127.0.0.1:0", "--state", str(stack.workdir / "early-state")], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "used by another mt5sim terminal" in second.stderr
