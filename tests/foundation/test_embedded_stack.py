"""The embedded stack as a user runs it: `manage.py run_bridge` on SQLite, real processes.

Proves: it comes up (migrations, the emulated broker and its sim terminals, pinned workers, beat,
daphne), its web processes share one port and cover for each other, a session opens over HTTP, SQLite survives concurrent writers (web threads + workers + beat)
without "database is locked", a broker that dies is restarted with its journal (positions kept), and
Ctrl-C stops every child (no orphans).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from bridge_project.processes import start_group, stop_group
from tests.procs import ROOT, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)


def _call(method: str, url: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,pgid="], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        nxt = {p for p, pp, _ in rows if pp in frontier and p not in found}
        found |= nxt
        frontier = nxt
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_run_bridge_serves_survives_concurrent_writes_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    terminals = tmp_path / "terminals.yaml"
    terminals.write_text(
        yaml.safe_dump(
            {
                # one broker, a server name per clock (as terminals.yaml declares it)
                "sim_broker": {"address": f"127.0.0.1:{free_port()}", "servers": {"MT5Sim-Demo": 7200, "MT5Sim-UTC": 0}},
                "terminals": [
                    {"name": "emb-1", "backend": "sim", "address": f"127.0.0.1:{free_port()}", "utc_offset": 7200},
                    {"name": "emb-2", "backend": "sim", "address": f"127.0.0.1:{free_port()}", "server": "MT5Sim-UTC",
                     "utc_offset": 0},
                ],
            },
            sort_keys=False,
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # the embedded default: SQLite
    env.update(
        BRIDGE_VAR_DIR=str(tmp_path / "var"),
        BRIDGE_TERMINALS_FILE=str(terminals),
        BRIDGE_PORT=str(port),
        BRIDGE_WORKER_HEARTBEAT_INTERVAL="0.5",  # workers write the database often, on purpose
        BRIDGE_SESSION_EXPIRY_SWEEP="0.5",  # and so does beat's sweep
    )
    log_path = tmp_path / "run_bridge.log"
    proc = start_group([sys.executable, "manage.py", "run_bridge"], log_path=log_path, cwd=ROOT, env=env)
    children: set[int] = set()
    try:

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return "the bridge is up" in log_path.read_text()

        wait_until(up, 120, "run_bridge up")
        children = _descendants(proc.pid)
        import mt5sim

        for entry in yaml.safe_load(terminals.read_text())["terminals"]:  # each sim runs the declared offset
            assert mt5sim.initialize(entry["address"]), mt5sim.last_error()
            try:
                mt5sim.symbol_select("BTCUSD", True)
                tick = mt5sim.symbol_info_tick("BTCUSD")  # trades all week: every minute has a tick
                # The feed gives every open minute at least one tick, so the last one is under 2 minutes old.
                age = time.time() + entry["utc_offset"] - tick.time
                assert -5 < age < 125, (entry, tick, age)
            finally:
                mt5sim.shutdown()
        assert len(children) >= 8  # broker, 2 sims, 2 terminal processes, maintenance, beat, web
        # One bridge process per terminal: the pinned worker, with the terminal's reader and poller as its threads.
        argvs = [Path(f"/proc/{pid}/cmdline").read_text().split("\0") for pid in children if _alive(pid)]
        for name in ("emb-1", "emb-2"):
            workers = [a for a in argvs if a[2:4] == ["run_terminal_worker", name]]
            assert len(workers) == 1 and "--settings=bridge_project.settings_terminal" in workers[0], argvs
        assert not [a for a in argvs if {"run_terminal_reader", "run_terminal_poller"} & set(a)], argvs
        broker_line = re.search(r"started sim-broker \(pid (\d+)", log_path.read_text())
        assert broker_line, log_path.read_text()
        broker_pid = int(broker_line.group(1))
        argv = Path(f"/proc/{broker_pid}/cmdline").read_text().split("\0")
        assert argv[1:4] == ["-m", "mt5sim", "broker"] and str(tmp_path / "var" / "sim" / "broker") in argv, argv

        key = subprocess.run(
            [sys.executable, "manage.py", "create_api_key", "--workspace", "emb"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        base = f"http://127.0.0.1:{port}/mt5/client"
        body = {"accountId": "a", "server": "Demo", "login": 424242, "password": "pw-emb"}
        status, session = _call("POST", f"{base}/session/open?wait=20", key, body)
        assert status == 201 and session["status"] == "active", session
        status, session2 = _call("POST", f"{base}/session/open?wait=20", key, {**body, "login": 434343})
        assert status == 201 and session2["status"] == "active", session2

        def hammer(i: int) -> list[int]:
            sid = (session if i % 2 else session2)["sessionId"]
            return [_call("POST", f"{base}/session/{sid}/heartbeat", key)[0] for _ in range(25)]

        with ThreadPoolExecutor(8) as pool:
            statuses = [s for batch in pool.map(hammer, range(8)) for s in batch]
        assert statuses == [200] * 200
        assert _call("GET", f"{base}/session/{session['sessionId']}", key)[1]["status"] == "active"
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "var" / "log").glob("*.log"))
        assert "database is locked" not in logs

        # The broker dies: the supervisor restarts it, and its journal keeps the account's position.
        emb_1 = yaml.safe_load(terminals.read_text())["terminals"][0]["address"]
        assert mt5sim.initialize(emb_1, login=424242, password="pw-emb", server="Demo"), mt5sim.last_error()
        try:
            bought = mt5sim.order_send({"action": 1, "symbol": "EURUSD", "volume": 0.01, "type": 0})
            assert bought is not None and bought.retcode == 10009, mt5sim.last_error()
            os.kill(broker_pid, signal.SIGKILL)
            wait_until(lambda: "restarted sim-broker" in log_path.read_text(), 30, "sim-broker restarted")
            # A call never made before (the terminal answers a read it made while the broker was away
            # from its last answer): the broker's own answer, once it is back.
            held = wait_until(lambda: mt5sim.positions_get(ticket=bought.order), 30, "the position after the restart")
            assert [p.ticket for p in held] == [bought.order]
        finally:
            mt5sim.shutdown()
        assert not _alive(broker_pid)
        children |= _descendants(proc.pid)  # the new broker too: nothing may outlive the bridge
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C to the supervisor alone: it stops its children itself
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            stop_group(proc)  # the test fails below; nothing of it outlives the run
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "stopped" in output
    # run_bridge returns only once every child's process group is gone: nothing may be left now
    orphans = [pid for pid in children if _alive(pid)]
    assert orphans == [], f"processes left behind: {orphans}"


def _established_on(pid: int, port: int) -> int:
    """Established TCP connections to local ``port`` whose socket ``pid`` holds (/proc: fd inodes
    matched against the kernel's TCP table)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and state == "01" and inode in inodes:
                count += 1
    return count


def test_web_processes_share_one_port_and_cover_for_each_other(tmp_path: Path) -> None:
    """BRIDGE_WEB_PROCESSES=2: two daphne processes accept on the one socket the supervisor bound; the
    kernel gives each a share of the connections; while one is killed and restarted, every request is
    answered by the other (the listening socket never closes)."""
    import http.client

    port = free_port()
    terminals = tmp_path / "terminals.yaml"
    terminals.write_text("terminals: []\n")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(BRIDGE_VAR_DIR=str(tmp_path / "var"), BRIDGE_TERMINALS_FILE=str(terminals), BRIDGE_PORT=str(port),
               BRIDGE_WEB_PROCESSES="2")
    log_path = tmp_path / "run_bridge.log"
    proc = start_group([sys.executable, "manage.py", "run_bridge"], log_path=log_path, cwd=ROOT, env=env)
    try:
        wait_until(lambda: "the bridge is up" in log_path.read_text() or proc.poll() is not None, 120, "run_bridge up")
        assert proc.poll() is None, log_path.read_text()
        assert "2 web process(es)" in log_path.read_text()
        webs = {name: int(pid) for name, pid in re.findall(r"started (web-\d) \(pid (\d+)", log_path.read_text())}
        assert sorted(webs) == ["web-1", "web-2"], log_path.read_text()
        for pid in webs.values():
            argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
            assert argv[1:5] == ["-m", "workers.stack", "daphne", "--fd"], argv

        connections = []
        for _ in range(40):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/health")
            assert connection.getresponse().status == 200
            connections.append(connection)
        shares = {name: _established_on(pid, port) for name, pid in webs.items()}
        assert sum(shares.values()) == 40 and min(shares.values()) > 0, shares
        for connection in connections:
            connection.close()

        os.kill(webs["web-1"], signal.SIGKILL)
        wait_until(lambda: not _alive(webs["web-1"]), 10, "web-1 gone")
        statuses = []
        while "restarted web-1" not in log_path.read_text():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/health")
            statuses.append(connection.getresponse().status)
            connection.close()
            assert len(statuses) < 20_000, "web-1 was not restarted"
        assert statuses and set(statuses) == {200}, statuses[:20]
        restarted = int(re.search(r"restarted web-1 \(pid (\d+)", log_path.read_text()).group(1))
        assert restarted != webs["web-1"] and _alive(restarted)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            stop_group(proc)
    assert proc.returncode == 0, log_path.read_text()
