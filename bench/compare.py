"""mt5-bridge (``make run``) against a direct synchronous bridge, side by side, in one run (issue #13).

    .venv/bin/python bench/compare.py [--orders 200] [--seconds 5] [--load-seconds 10] [--drain 500] \\
        [--redis-url URL]

It starts, on free ports, and stops at the end (also on Ctrl-C or an error):

* the embedded stack the way ``make run`` does: ``manage.py run_bridge`` with its own ``BRIDGE_VAR_DIR``
  (a temp dir: SQLite there), ``BRIDGE_PORT`` and a terminals file with the emulated broker (``sim_broker``,
  server ``MT5Sim-Demo``) and one terminal on it; run_bridge starts the broker, the terminal, the terminal's
  pinned worker, reader and poller, the maintenance worker, beat and daphne. ``REDIS_URL`` names a free port,
  so run_bridge also starts its own ``redis-server`` there, as ``make run`` does where no Redis answers (a
  shared Redis DB may be flushed by someone else's tests mid-run; ``--redis-url`` to use one anyway).
  One setting differs from a bare ``make run``: ``BRIDGE_THROTTLE_RATE`` is raised (the default 6,000/min per
  workspace would answer 429 long before 500 writes/s);
* ``bench/direct_bridge.py``, the baseline: one waitress process calling mt5sim inline under one lock, on a
  second terminal of the same broker (its own ``python -m mt5sim serve --broker`` process).

Clients are what a real client does: an API key from ``manage.py create_api_key``, a session opened with
``POST /session/open?wait=``, heartbeats, keep-alive HTTP connections (``http.client``), the ``/events``
WebSocket (``websockets``) subscribed to ``order``. The two bridges trade on two demo accounts of the broker
(balance raised through mt5sim's control API so that thousands of 0.01-lot orders all fill). Measured, each
bridge in turn, on the same 2 cores as the load generator:

1. idle CPU (10 s, /proc utime+stime) and RSS of the bridge-side processes of the terminal (worker, reader,
   poller, found under run_bridge's process tree by their command lines) against the direct bridge's one;
2. a market order, one client, one at a time: POST until the client knows the result (ours: the ``order``
   event with ``state: "filled"`` on ``/events``; also polling ``GET /tasks/{id}``; direct: the answer), next to
   the terminal's own ``order_send`` time (a direct mt5sim call loop on each terminal): the difference is the
   time the bridge adds; and where our time goes, from the ledger's timestamps;
3. ``GET /account`` with 1 and 16 clients;
4. one pinned worker's drain rate: the worker is paused (SIGSTOP), ``--drain`` tasks are inserted through the
   service the endpoint uses, the worker resumes (SIGCONT): first claim to last final state, from the ledger;
5. ``POST /orders`` with 32 clients for ``--load-seconds``: accepted (ours: 202; direct: 200 with the order done)
   per second and p99;

then prints every figure with the ratio, the issue's goal and whether it is met, and the machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, machine, pct, raw_order_send, wait_port  # noqa: E402
from bridge_project.processes import start_group, stop_group  # noqa: E402

PYTHON = sys.executable
SERVER, OFFSET = "MT5Sim-Demo", 7200
LOGIN_BRIDGE, LOGIN_DIRECT, PASSWORD = 7001, 7002, "bench-pw"
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.01, "deviation": 20}
FINAL = {"filled", "partial", "rejected", "cancelled", "failed"}
# The bridge-side processes of one terminal: before #13 three (worker, reader, poller); since, the pinned
# worker runs the read and poll loops as threads and is the only one (the others are then not found).
ROLES = ("worker", "reader", "poller")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {text}", flush=True)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- HTTP clients -----------------------------------------------------------------------------------------
class Client:
    """One keep-alive HTTP connection speaking JSON, as a client library would keep."""

    def __init__(self, port: int, headers: dict[str, str]):
        self.port, self.headers = port, headers
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: dict | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {**self.headers, **(headers or {})}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=hdrs)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                # A keep-alive connection the server closed while idle: sent again once on a new one, as
                # client libraries do (writes carry x-request-id, so a repeat is a replay, not a new order).
                stale = isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
                if attempt == 2 or not stale:
                    raise
        try:
            return response.status, json.loads(raw or b"{}")
        except ValueError:
            return response.status, {"raw": raw[:200].decode(errors="replace")}

    def close(self) -> None:
        self.conn.close()


@dataclass
class Load:
    seconds: float
    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # ms, every answer
    accepted: int = 0
    sample: str = ""
    client_cpu: float = 0.0  # s of the load generator's CPU

    @property
    def rps(self) -> float:
        return sum(self.statuses.values()) / self.seconds

    @property
    def accepted_rps(self) -> float:
        return self.accepted / self.seconds

    def line(self) -> str:
        return (f"{self.rps:7.0f} req/s ({self.accepted_rps:.0f}/s accepted), p50 {pct(self.latencies, 50):6.1f} ms, "
                f"p99 {pct(self.latencies, 99):6.1f} ms, statuses {dict(sorted(self.statuses.items()))}, load "
                f"generator CPU {self.client_cpu / self.seconds * 100:.0f}% of a core")


class RawClient:
    """One keep-alive HTTP/1.1 connection on a bare socket: the load generator's client. ``http.client``
    costs ~0.3 ms of Python per request (header parsing through ``email``), so 16 threads of it, sharing
    one GIL, capped both bridges near the same rate: the figure measured the client. This one sends
    prebuilt request bytes and reads the status line, ``Content-Length`` and the body (~30 us)."""

    def __init__(self, port: int, method: str, path: str, headers: dict[str, str], body: dict | None):
        self.port = port
        data = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        self.head, self.data = "\r\n".join(head), data
        self.sock: socket.socket | None = None
        self.buffer = b""

    def call(self, extra: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        lines = "".join(f"\r\n{k}: {v}" for k, v in (extra or {}).items())
        self.sock.sendall(f"{self.head}{lines}\r\n\r\n".encode() + self.data)
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536) if self.sock is not None else b""
        if not chunk:
            self.close()
            raise ConnectionResetError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def load(port: int, method: str, path: str, headers: dict[str, str], body: dict | None, clients: int,
         seconds: float, accepted: Callable[[int, bytes], bool]) -> Load:
    """``clients`` threads, one keep-alive connection each (``RawClient``), as fast as answers come, for
    ``seconds``. The generator's own CPU time is kept (``client_cpu``): it shares the cores with the bridge."""
    per = [Load(seconds) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def run(i: int) -> None:
        client, mine = RawClient(port, method, path, headers, body), per[i]
        barrier.wait()
        while time.monotonic() < stop_at[0]:
            extra = {"x-request-id": f"ld-{uuid.uuid4().hex}"} if method == "POST" else None
            t0 = time.perf_counter()
            try:
                status, answer = client.call(extra)
            except (OSError, ValueError) as exc:
                client.close()
                status, answer = 0, repr(exc).encode()
            mine.latencies.append((time.perf_counter() - t0) * 1000)
            mine.statuses[status] += 1
            if accepted(status, answer):
                mine.accepted += 1
            elif not mine.sample:
                mine.sample = f"{status} {answer[:200].decode(errors='replace')}"
        client.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at.append(time.monotonic() + seconds)
    cpu0 = time.process_time()
    barrier.wait()
    t0 = time.monotonic()
    for thread in threads:
        thread.join()
    total = Load(time.monotonic() - t0)
    total.client_cpu = time.process_time() - cpu0
    for mine in per:
        total.statuses.update(mine.statuses)
        total.latencies.extend(mine.latencies)
        total.accepted += mine.accepted
        total.sample = total.sample or mine.sample
    return total


class OrderEvents:
    """The ``/events`` socket of the session, subscribed to ``order``; records when each task's final
    state event (``state`` final, no ``change`` key) reaches this client."""

    def __init__(self, url: str, headers: dict[str, str]):
        from websockets.sync.client import connect

        self._closing = ExitStack()
        self.ws = self._closing.enter_context(connect(url, additional_headers=headers, open_timeout=30,
                                                      max_size=None))
        self.ws.send(json.dumps({"type": "subscribe", "channels": ["order"], "request_id": "sub"}))
        while json.loads(self.ws.recv(timeout=30)).get("request_id") != "sub":
            pass
        self.final: dict[str, tuple[str, float, float]] = {}  # task id -> (state, perf_counter, time)
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for raw in self.ws:
                seen, wall = time.perf_counter(), time.time()
                message = json.loads(raw)
                data = message.get("data") or {}
                if (message.get("type") == "order" and data.get("taskId") and "change" not in data
                        and data.get("state") in FINAL):
                    with self.cond:
                        self.final.setdefault(data["taskId"], (data["state"], seen, wall))
                        self.cond.notify_all()
        except ConnectionClosed:
            pass

    def wait(self, task_id: str, timeout: float = 30) -> tuple[str, float, float]:
        with self.cond:
            if not self.cond.wait_for(lambda: task_id in self.final, timeout):
                raise SystemExit(f"no final order event for {task_id} within {timeout:.0f} s")
            return self.final[task_id]

    def close(self) -> None:
        self._closing.close()
        self.thread.join(10)


# --- processes -------------------------------------------------------------------------------------------
def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        table[int(entry.name)] = (int(stat[stat.rfind(")") + 2:].split()[1]), cmd)
    return table


def descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def stack_processes(root: int, terminal: str, terminal_address: str) -> dict[str, list[int]]:
    """Role -> pids (the process whose command line names it, and its own children) under run_bridge."""
    table = proc_table()
    under = descendants(root, table)
    marks = {
        "worker": f"run_terminal_worker {terminal}", "reader": f"run_terminal_reader {terminal}",
        "poller": f"run_terminal_poller {terminal}", "web (daphne)": "workers.stack daphne",
        "maintenance worker": "run_maintenance_worker", "beat": " beat ", "sim-broker": "mt5sim broker",
        "mt5sim terminal": f"mt5sim serve --address {terminal_address}", "redis-server": "redis-server",
    }
    roles: dict[str, list[int]] = {}
    for role, mark in marks.items():
        heads = [pid for pid in under if mark in table[pid][1]
                 and not any(p in under and mark in table[p][1] for p in [table[pid][0]])]
        roles[role] = [p for head in heads for p in [head, *descendants(head, table)]]
    roles["run_bridge (supervisor)"] = [root]
    return roles


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


class Started:
    """What this bench started (process groups), stopped in reverse order, also on Ctrl-C and errors."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.procs = log_dir, []
        self.seen: dict[int, str] = {}  # every pid found under run_bridge, checked gone at the end

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = start_group(argv, log_path=self.log_dir / f"{name}.log", env=env, cwd=ROOT)
        self.procs.append((name, proc))
        say(f"started {name} (pid {proc.pid}, log {self.log_dir / (name + '.log')})")
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def remember(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                self.seen[pid] = Path(f"/proc/{pid}/stat").read_text().split()[21]  # start time
            except OSError:
                pass

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            say(f"stopping {name} (pid {proc.pid})")
            stop_group(proc, grace=40)
        for pid, started in self.seen.items():  # run_bridge's children live in their own groups
            try:
                if Path(f"/proc/{pid}/stat").read_text().split()[21] == started:
                    say(f"pid {pid} outlived run_bridge: killing it")
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.procs = []


# --- phases ------------------------------------------------------------------------------------------------
def wait_final(task_ids: list[str], timeout: float) -> None:
    from trading.models import TradeTask

    deadline, last_note = time.monotonic() + timeout, 0.0
    while (left := TradeTask.objects.filter(id__in=task_ids).exclude(state__in=FINAL).count()):
        if time.monotonic() > deadline:
            raise SystemExit(f"{left} tasks still not final after {timeout:.0f} s")
        if time.monotonic() - last_note > 5:
            say(f"  ... {left} of {len(task_ids)} tasks not final yet")
            last_note = time.monotonic()
        time.sleep(0.2)


def fmt(value: float, unit: str = "ms") -> str:
    if value != value:  # nan
        return "n/a"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "%":
        return f"{value:.2f}%"
    return f"{value:g}{unit}"


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


class Bench:
    """One run: both bridges started, each phase a method, every figure kept in ``results``."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started_at = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
        self.terminal = f"cmp-{uuid.uuid4().hex[:6]}"  # fresh queue and snapshot keys in Redis for every run
        self.web_port, broker_port, term_port, self.dterm_port, self.direct_port = (free_port() for _ in range(5))
        self.broker, self.term_addr, self.dterm_addr = (f"127.0.0.1:{p}" for p in (broker_port, term_port,
                                                                                  self.dterm_port))
        (self.work / "terminals.yaml").write_text(
            f"sim_broker:\n  address: {self.broker}\n  servers:\n    {SERVER}: {OFFSET}\n"
            f"terminals:\n  - name: {self.terminal}\n    backend: sim\n    address: {self.term_addr}\n"
            f"    server: {SERVER}\n    utc_offset: {OFFSET}\n")
        self.env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # make run's SQLite in the var dir
        self.database = ""  # --postgres: the fresh database of this run, dropped at the end
        if args.postgres:
            self.database = f"bench_compare_{uuid.uuid4().hex[:8]}"
            _postgres(args.postgres, f'CREATE DATABASE "{self.database}"')
            self.env["DATABASE_URL"] = args.postgres.rsplit("/", 1)[0] + "/" + self.database
        self.redis_url = args.redis_url or f"redis://127.0.0.1:{free_port()}/0"
        self.env.update({"BRIDGE_VAR_DIR": str(self.work), "BRIDGE_PORT": str(self.web_port),
                         "BRIDGE_TERMINALS_FILE": str(self.work / "terminals.yaml"), "REDIS_URL": self.redis_url,
                         "BRIDGE_THROTTLE_RATE": "100000000/min", "PYTHONUNBUFFERED": "1"})
        self.started = Started(self.work)
        self.results: dict[str, float] = {"load_seconds": args.load_seconds, "idle_seconds": args.idle_seconds}
        self.notes: list[str] = [f"database: PostgreSQL ({self.database}), as the compose tier" if self.database
                                 else "database: the embedded SQLite, as make run"]
        self.worker_pids: list[int] = []
        self.beat_stop = threading.Event()

    # -- setup ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        print(f"machine: {machine()}")
        print(f"load average at start: {load_avg()} (2 cores shared with other work: figures are noisy)")
        print(f"work dir: {self.work}; Redis {self.redis_url}; terminal {self.terminal}; database "
              f"{'PostgreSQL ' + self.database + ' (the compose tier' + chr(39) + 's database)' if self.database else 'SQLite (make run)'}\n")
        say("starting the embedded stack: manage.py run_bridge (redis-server if none answers at REDIS_URL, "
            "broker, terminal, worker, reader, poller, maintenance, beat, daphne)")
        self.bridge = self.started.start("run_bridge", [PYTHON, "manage.py", "run_bridge"], self.env)
        deadline = time.monotonic() + 180
        while "Ctrl-C stops everything" not in self.started.log("run_bridge"):
            if self.bridge.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("run_bridge did not come up:\n" + self.started.log("run_bridge")[-3000:])
            time.sleep(0.2)
        say(f"run_bridge is up on 127.0.0.1:{self.web_port}")
        say("starting the direct baseline's terminal (python -m mt5sim serve --broker, same broker) and "
            "bench/direct_bridge.py")
        self.started.start("direct-terminal", [
            PYTHON, "-m", "mt5sim", "serve", "--broker", self.broker, "--server", SERVER, "--address",
            self.dterm_addr, "--state", str(self.work / "direct-terminal")], self.env)
        wait_port(self.dterm_port)
        self.direct_proc = self.started.start("direct-bridge", [
            PYTHON, "bench/direct_bridge.py", "--terminal", self.dterm_addr, "--port", str(self.direct_port),
            "--login", str(LOGIN_DIRECT), "--password", PASSWORD, "--server", SERVER], self.env)
        wait_port(self.direct_port)

    def open_session(self) -> None:
        say("an API key (manage.py create_api_key) and a session (POST /session/open?wait=20)")
        key = subprocess.run([PYTHON, "manage.py", "create_api_key", "--workspace", f"bench-{self.terminal}"],
                             cwd=ROOT, env=self.env, check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        self.auth = {"Authorization": f"Bearer {key}"}
        opener = Client(self.web_port, self.auth)
        deadline = time.monotonic() + 90
        while True:
            status, session = opener.call("POST", "/mt5/client/session/open?wait=20", {
                "accountId": "compare", "server": SERVER, "login": LOGIN_BRIDGE, "password": PASSWORD,
                "terminal": self.terminal})
            if status == 201 and session.get("status") == "active":
                break
            if status == 201:
                opener.call("DELETE", f"/mt5/client/session/{session['sessionId']}")
            if time.monotonic() > deadline:
                raise SystemExit(f"no active session: {status} {session}\n" + self.started.log("run_bridge")[-2000:])
            time.sleep(1)  # a retry pace: the worker may still be starting
        self.sid = session["sessionId"]
        self.headers = {**self.auth, "x-session-id": self.sid}
        say(f"session {self.sid} active on {session['terminal']}; raising both demo accounts' balance "
            "(mt5sim control: set_account) so every order fills")
        from mt5sim.control import Control

        with Control(self.broker, server_name=SERVER) as control:
            for login in (LOGIN_BRIDGE, LOGIN_DIRECT):
                control.call("set_account", login=login, balance=1e9, leverage=500)
        interval = min(30.0, float(session.get("heartbeatInterval") or 30))
        threading.Thread(target=self._heartbeat, args=(interval,), daemon=True).start()
        self.ours, self.direct = Client(self.web_port, self.headers), Client(self.direct_port, {})

    def _heartbeat(self, interval: float) -> None:
        """As a client keeps its session alive (the run outlasts the session TTL)."""
        client = Client(self.web_port, self.auth)
        while not self.beat_stop.wait(interval):
            try:
                client.call("POST", f"/mt5/client/session/{self.sid}/heartbeat")
            except (OSError, http.client.HTTPException):
                pass

    def warm_up(self) -> None:
        say("warm-up: 5 orders and 5 GET /account on each")
        warm = []
        for i in range(5):
            status, task = self.ours.call("POST", "/mt5/client/orders", ORDER, {"x-request-id": f"warm-{i}"})
            assert status == 202, (status, task)
            warm.append(task["taskId"])
            status, answer = self.direct.call("POST", "/orders", ORDER)
            assert status == 200 and answer.get("retcode") == 10009, (status, answer)
            assert self.ours.call("GET", "/mt5/client/account")[0] == 200
            assert self.direct.call("GET", "/account")[0] == 200
        os.environ.update({k: self.env[k] for k in ("BRIDGE_VAR_DIR", "BRIDGE_TERMINALS_FILE", "REDIS_URL",
                                                    "BRIDGE_THROTTLE_RATE")})
        os.environ.pop("DATABASE_URL", None)
        if "DATABASE_URL" in self.env:
            os.environ["DATABASE_URL"] = self.env["DATABASE_URL"]
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bridge_project.settings")
        import django

        django.setup()  # the ledger (run_bridge's SQLite), read here for timings and the drain
        wait_final(warm, 60)
        self.find_processes()

    @property
    def terminal_roles(self) -> list[str]:
        return [role for role in ROLES if role in self.roles]

    def find_processes(self) -> dict[str, list[int]]:
        self.roles = stack_processes(self.bridge.pid, self.terminal, self.term_addr)
        self.started.remember([p for pids in self.roles.values() for p in pids])
        if not self.roles["worker"]:
            raise SystemExit(f"no pinned worker process found under run_bridge (pid {self.bridge.pid})")
        for role in ROLES:
            if not self.roles[role]:
                del self.roles[role]  # this role runs inside the pinned worker
        self.worker_pids = self.roles["worker"]
        return self.roles

    # -- phases -----------------------------------------------------------------------------------------------
    def idle(self) -> None:
        time.sleep(2)
        roles, direct_pids = self.roles, [self.direct_proc.pid]
        say(f"1. idle CPU over {self.args.idle_seconds:.0f} s (session open, no requests) and RSS of every process")
        before = {role: cpu_seconds(pids) for role, pids in roles.items()}
        direct_before = cpu_seconds(direct_pids)
        t0 = time.monotonic()
        time.sleep(self.args.idle_seconds)
        span = time.monotonic() - t0
        idle = {role: (cpu_seconds(pids) - before[role]) / span * 100 for role, pids in roles.items()}
        idle_direct = (cpu_seconds(direct_pids) - direct_before) / span * 100
        self.rss_idle = {role: rss_mb(pids) for role, pids in roles.items()}
        for role in roles:
            tag = "per terminal" if role in self.terminal_roles else "shared"
            print(f"   {role:<24} {tag:<12} pids {str(roles[role]):<9} RSS {self.rss_idle[role]:6.1f} MB   "
                  f"idle CPU {idle[role]:5.2f}% of a core")
        print(f"   {'direct bridge (waitress)':<24} {'per terminal':<12} pids {str(direct_pids):<9} RSS "
              f"{rss_mb(direct_pids):6.1f} MB   idle CPU {idle_direct:5.2f}% of a core")
        self.results.update(idle_cpu=sum(idle[r] for r in self.terminal_roles), idle_cpu_direct=idle_direct,
                            rss_idle=sum(self.rss_idle[r] for r in self.terminal_roles),
                            rss_stack=sum(self.rss_idle.values()))

    def market_order(self) -> None:
        n = self.args.orders
        say(f"2. market order, 1 client, {n} orders each way; first the terminals' own order_send "
            "(mt5sim called directly, same broker)")
        raw_ours, raw_rate = raw_order_send(self.term_addr, n)
        raw_direct, raw_rate_direct = raw_order_send(self.dterm_addr, n)
        print(f"   mt5sim order_send, the bridge's terminal: p50 {pct(raw_ours, 50):.2f} ms, p99 "
              f"{pct(raw_ours, 99):.2f} ms, {raw_rate:,.0f}/s;  the direct bridge's terminal: p50 "
              f"{pct(raw_direct, 50):.2f} ms, p99 {pct(raw_direct, 99):.2f} ms, {raw_rate_direct:,.0f}/s")
        say("   direct bridge: POST /orders until its synchronous answer")
        direct_ms = []
        for _ in range(n):
            t0 = time.perf_counter()
            status, answer = self.direct.call("POST", "/orders", ORDER)
            direct_ms.append((time.perf_counter() - t0) * 1000)
            assert status == 200 and answer.get("retcode") == 10009, (status, answer)
        print(f"   direct: p50 {pct(direct_ms, 50):.1f} ms, p99 {pct(direct_ms, 99):.1f} ms")
        ws_ms, timeline = self._orders_by_event(n)
        poll_ms = self._orders_by_polling(max(20, n // 2))
        self.results.update(
            order_direct_p50=pct(direct_ms, 50), order_direct_p99=pct(direct_ms, 99), order_ws_p50=pct(ws_ms, 50),
            order_ws_p99=pct(ws_ms, 99), order_poll_p50=pct(poll_ms, 50), order_poll_p99=pct(poll_ms, 99),
            raw_p50=pct(raw_ours, 50), raw_p99=pct(raw_ours, 99), raw_rate=raw_rate,
            raw_direct_p50=pct(raw_direct, 50), raw_direct_p99=pct(raw_direct, 99))
        self._where_time_goes(timeline)

    def _orders_by_event(self, n: int) -> tuple[list[float], list[tuple[str, float, float, float]]]:
        say("   mt5-bridge: POST /orders (202) until the 'filled' order event on /events")
        events = OrderEvents(f"ws://127.0.0.1:{self.web_port}/events", self.headers)
        ws_ms, answer_ms, timeline = [], [], []
        try:
            for i in range(n):
                wall0, t0 = time.time(), time.perf_counter()
                status, task = self.ours.call("POST", "/mt5/client/orders", ORDER, {"x-request-id": f"ws-{i}"})
                answered = time.perf_counter()
                assert status == 202, (status, task)
                state, seen, seen_wall = events.wait(task["taskId"])
                assert state == "filled", (state, task)
                ws_ms.append((seen - t0) * 1000)
                answer_ms.append((answered - t0) * 1000)
                timeline.append((task["taskId"], wall0, wall0 + (answered - t0), seen_wall))
        finally:
            events.close()
        print(f"   events: p50 {pct(ws_ms, 50):.1f} ms, p99 {pct(ws_ms, 99):.1f} ms (of which the 202 answer: p50 "
              f"{pct(answer_ms, 50):.1f} ms, p99 {pct(answer_ms, 99):.1f} ms)")
        return ws_ms, timeline

    def _orders_by_polling(self, n: int) -> list[float]:
        say("   mt5-bridge: POST /orders then GET /tasks/{id} back to back until final")
        poll_ms, polls = [], 0
        for i in range(n):
            t0 = time.perf_counter()
            status, task = self.ours.call("POST", "/mt5/client/orders", ORDER, {"x-request-id": f"poll-{i}"})
            assert status == 202, (status, task)
            while task.get("state") not in FINAL:
                status, task = self.ours.call("GET", f"/mt5/client/tasks/{task['taskId']}")
                polls += 1
                assert status == 200, (status, task)
            poll_ms.append((time.perf_counter() - t0) * 1000)
        print(f"   polling: p50 {pct(poll_ms, 50):.1f} ms, p99 {pct(poll_ms, 99):.1f} ms "
              f"({polls / len(poll_ms):.1f} GETs per order)")
        return poll_ms

    def _where_time_goes(self, timeline: list[tuple[str, float, float, float]]) -> None:
        """The event-path orders, step by step, from the ledger's timestamps and the client's clock."""
        from trading.models import TradeTask

        rows = {r["id"]: r for r in TradeTask.objects.filter(id__in=[t[0] for t in timeline]).values(
            "id", "created_at", "dispatched_at", "sent_at", "finished_at")}
        steps: dict[str, list[float]] = {k: [] for k in (
            "client sends POST -> task row created", "task row created -> 202 at the client",
            "task row created -> claimed by the worker", "claimed -> sent mark (before order_send)",
            "sent mark -> final state (order_send + commit)", "final state -> event at the client")}
        for task_id, wall0, answered, seen in timeline:
            r = rows.get(task_id)
            if r is None or None in r.values():
                continue
            created, claimed, sent, final = (r[k].timestamp() for k in ("created_at", "dispatched_at", "sent_at",
                                                                       "finished_at"))
            for name, value in zip(steps, (created - wall0, answered - created, claimed - created, sent - claimed,
                                           final - sent, seen - final), strict=True):
                steps[name].append(value * 1000)
        print("   where the time of an order goes (ledger timestamps and the client's clock, one machine):")
        for name, values in steps.items():
            print(f"      {name:<48} p50 {pct(values, 50):6.1f} ms   p99 {pct(values, 99):6.1f} ms")

    def account(self) -> None:
        for clients in (1, 16):
            say(f"3. GET /account, {clients} client(s), {self.args.seconds:.0f} s each")
            d = load(self.direct_port, "GET", "/account", {}, None, clients, self.args.seconds, lambda s, b: s == 200)
            print(f"   direct:     {d.line()}")
            o = load(self.web_port, "GET", "/mt5/client/account", self.headers, None, clients, self.args.seconds,
                     lambda s, b: s == 200)
            print(f"   mt5-bridge: {o.line()}" + (f"  e.g. {o.sample}" if o.sample else ""))
            for name, res in (("direct", d), ("ours", o)):
                self.results[f"account{clients}_{name}_rps"] = res.accepted_rps
                self.results[f"account{clients}_{name}_p50"] = pct(res.latencies, 50)

    def drain(self) -> None:
        from sessions.models import BridgeSession
        from trading.execution import BATCH_GRACE
        from trading.models import TradeTask
        from trading.services import order_place

        say(f"4. drain: pausing the pinned worker (SIGSTOP {self.worker_pids}), inserting {self.args.drain} tasks "
            "through trading.services.order_place (what POST /orders calls), resuming it (SIGCONT) once the newest "
            "is older than the batch grace")
        bridge_session = BridgeSession.objects.select_related("terminal").get(id=self.sid)
        ids = []
        for pid in self.worker_pids:
            os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            while len(ids) < self.args.drain and time.monotonic() - t0 < 8:  # the worker's lease lasts 15 s
                ids.append(order_place(session=bridge_session, request_id=f"drain-{len(ids)}",
                                       data=dict(ORDER)).task.id)
            # A backlog is older than the worker's batch grace (trading.execution.BATCH_GRACE, 0.5 s: a task
            # younger than that joins no batch, its own message claims it alone, so that its `queued` event
            # is out before a batch's `dispatched`); the drain measures the backlog, not the grace.
            time.sleep(BATCH_GRACE.total_seconds())
        finally:
            for pid in self.worker_pids:
                os.kill(pid, signal.SIGCONT)
        say(f"   {len(ids)} tasks queued in {time.monotonic() - t0:.1f} s; worker resumed, waiting for all final")
        wait_final(ids, 300)
        rows = list(TradeTask.objects.filter(id__in=ids).values_list("state", "dispatched_at", "finished_at"))
        span = (max(r[2] for r in rows) - min(r[1] for r in rows)).total_seconds()
        self.results["drain"] = len(rows) / span
        print(f"   {len(rows)} tasks drained in {span:.2f} s: {self.results['drain']:,.0f} orders/s "
              f"(states {dict(Counter(r[0] for r in rows))}); raw mt5sim order_send: {self.results['raw_rate']:,.0f}/s")

    def writes(self) -> None:
        from trading.models import TradeTask

        seconds = self.args.load_seconds
        say(f"5. POST /orders, 32 clients, {seconds:.0f} s: mt5-bridge (202 = accepted; the worker drains meanwhile)")
        o = load(self.web_port, "POST", "/mt5/client/orders", self.headers, ORDER, 32, seconds, lambda s, b: s == 202)
        print(f"   mt5-bridge: {o.line()}" + (f"  e.g. {o.sample}" if o.sample else ""))
        backlog = list(TradeTask.objects.filter(session_id=self.sid).exclude(state__in=FINAL)
                       .values_list("id", flat=True))
        say(f"   {len(backlog)} accepted tasks still to drain; waiting for them before the direct run")
        t0 = time.monotonic()
        wait_final(backlog, 600)
        print(f"   backlog drained in {time.monotonic() - t0:.1f} s")
        say("   direct bridge (200 with the order done = accepted)")
        d = load(self.direct_port, "POST", "/orders", {}, ORDER, 32, seconds,
                 lambda s, b: s == 200 and json.loads(b).get("retcode") == 10009)
        print(f"   direct:     {d.line()}" + (f"  e.g. {d.sample}" if d.sample else ""))
        self.results.update(writes_ours=o.accepted_rps, writes_ours_p99=pct(o.latencies, 99),
                            writes_direct=d.accepted_rps, writes_direct_p99=pct(d.latencies, 99))
        shed = sum(n for s, n in d.statuses.items() if s != 200)
        self.notes.append(
            f"direct bridge, 32 clients: {d.accepted} orders done, {shed} answers other than 200 "
            f"({dict(d.statuses)}): {'it sheds load with 503' if shed else 'every request waits its turn at the lock'}")

    def memory_after(self) -> None:
        roles = self.find_processes()
        self.rss_after = {role: rss_mb(pids) for role, pids in roles.items()}
        say("6. RSS after the load: " + ", ".join(f"{r} {self.rss_after[r]:.0f} MB" for r in roles))
        self.results["rss_after"] = sum(self.rss_after[r] for r in self.terminal_roles)
        self.results["rss_direct"] = rss_mb([self.direct_proc.pid])
        self.beat_stop.set()
        status, _ = self.ours.call("DELETE", f"/mt5/client/session/{self.sid}")
        say(f"session closed: DELETE /session/{{id}} answered {status}")

    def run(self) -> None:
        self.start()
        self.open_session()
        self.warm_up()
        self.idle()
        self.market_order()
        self.account()
        self.drain()
        self.writes()
        self.memory_after()
        report(self.results, self.rss_idle, self.rss_after, self.notes, time.monotonic() - self.started_at)

    def stop(self) -> None:
        self.beat_stop.set()
        for pid in self.worker_pids:  # never leave the worker paused
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        say("stopping everything this bench started")
        self.started.stop_all()
        if self.database:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # Django was never set up
                pass
            _postgres(self.args.postgres, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            say(f"dropped database {self.database}")
        say("stopped")


def _postgres(url: str, statement: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE) on the server of ``url``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200, help="market orders timed one at a time, per variant")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each GET /account run")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="duration of the 32-client write run")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--drain", type=int, default=500, help="tasks queued for the drain run")
    parser.add_argument("--redis-url", default="",
                        help="default: a free port, where run_bridge starts its own redis-server (as make run does "
                             "when no Redis answers), so no other user of a shared Redis can flush this run's keys")
    parser.add_argument("--postgres", nargs="?", const="postgres://postgres@127.0.0.1:5432/postgres", default="",
                        help="run the bridge on PostgreSQL, the compose tier's database (a fresh database on this "
                             "server, dropped at the end), instead of make run's SQLite")
    args = parser.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or stopped from outside (also when started with &)
        signal.signal(sig, _interrupted)
    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        bench.stop()


def report(r: dict[str, float], rss_idle: dict[str, float], rss_after: dict[str, float], notes: list[str],
           elapsed: float) -> None:
    """The issue's table and goals, side by side."""
    roles = [role for role in ROLES if role in rss_idle]  # the per-terminal processes found
    def ratio(ours: float, direct: float) -> str:
        return f"{ours / direct:.2f}x" if direct and direct == direct and ours == ours else ""

    added_p50 = r["order_ws_p50"] - r["raw_p50"]
    added_p99 = r["order_ws_p99"] - r["raw_p99"]
    rows = [
        ("market order 1 client p50 (ours: POST -> `filled` event)", fmt(r["order_direct_p50"]), fmt(r["order_ws_p50"]),
         ratio(r["order_ws_p50"], r["order_direct_p50"]), "<= 1.5x direct",
         r["order_ws_p50"] <= 1.5 * r["order_direct_p50"]),
        ("market order 1 client p99 (ours: POST -> `filled` event)", fmt(r["order_direct_p99"]), fmt(r["order_ws_p99"]),
         ratio(r["order_ws_p99"], r["order_direct_p99"]), "<= 2x direct", r["order_ws_p99"] <= 2 * r["order_direct_p99"]),
        ("market order 1 client, polling GET /tasks/{id} p50 / p99", "", f"{fmt(r['order_poll_p50'])} / "
         f"{fmt(r['order_poll_p99'])}", ratio(r["order_poll_p50"], r["order_direct_p50"]), "", None),
        ("terminal's own order_send p50 (mt5sim direct loop)", fmt(r["raw_direct_p50"]), fmt(r["raw_p50"]), "", "", None),
        ("added time per order p50 (end to end - order_send)", fmt(r["order_direct_p50"] - r["raw_direct_p50"]),
         fmt(added_p50), "", "ours <= 3 ms", added_p50 <= 3),
        ("added time per order p99", "", fmt(added_p99), "", "", None),
        ("GET /account 1 client p50", fmt(r["account1_direct_p50"]), fmt(r["account1_ours_p50"]),
         ratio(r["account1_ours_p50"], r["account1_direct_p50"]), "<= direct",
         r["account1_ours_p50"] <= r["account1_direct_p50"]),
        ("GET /account 1 client req/s", fmt(r["account1_direct_rps"], "/s"), fmt(r["account1_ours_rps"], "/s"),
         ratio(r["account1_ours_rps"], r["account1_direct_rps"]), "", None),
        ("GET /account 16 clients req/s", fmt(r["account16_direct_rps"], "/s"), fmt(r["account16_ours_rps"], "/s"),
         ratio(r["account16_ours_rps"], r["account16_direct_rps"]), ">= 2x direct",
         r["account16_ours_rps"] >= 2 * r["account16_direct_rps"]),
        ("GET /account 16 clients p50", fmt(r["account16_direct_p50"]), fmt(r["account16_ours_p50"]),
         ratio(r["account16_ours_p50"], r["account16_direct_p50"]), "", None),
        (f"POST /orders 32 clients {r['load_seconds']:.0f} s: accepted/s", fmt(r["writes_direct"], "/s"), fmt(r["writes_ours"], "/s"),
         ratio(r["writes_ours"], r["writes_direct"]), ">= 500/s", r["writes_ours"] >= 500),
        (f"POST /orders 32 clients {r['load_seconds']:.0f} s: p99", fmt(r["writes_direct_p99"]), fmt(r["writes_ours_p99"]),
         ratio(r["writes_ours_p99"], r["writes_direct_p99"]), "<= 100 ms", r["writes_ours_p99"] <= 100),
        ("one pinned worker drains (orders/s)", "", fmt(r["drain"], "/s"), "", ">= 1,000/s", r["drain"] >= 1000),
        ("raw mt5sim order_send (1 client, same terminal)", "", fmt(r["raw_rate"], "/s"), "", "", None),
        ("bridge processes per terminal, RSS idle", f"1 process, {fmt(r['rss_direct'], 'MB')}",
         f"{len(roles)}: " + " + ".join(f"{role} {rss_idle[role]:.0f}" for role in roles)
         + f" = {r['rss_idle']:.0f} MB", "",
         "<= 120 MB", r["rss_idle"] <= 120),
        ("every process under run_bridge (broker, terminal, web, beat...), RSS idle", "", fmt(r["rss_stack"], "MB"), "", "", None),
        ("RSS per terminal after the load", "", " + ".join(f"{rss_after[role]:.0f}" for role in roles)
         + f" = {r['rss_after']:.0f} MB", "", "<= 120 MB", r["rss_after"] <= 120),
        (f"idle CPU per terminal ({r['idle_seconds']:.0f} s, % of a core)", fmt(r["idle_cpu_direct"], "%"), fmt(r["idle_cpu"], "%"), "",
         "<= 1%", r["idle_cpu"] <= 1),
    ]
    print(f"\n## mt5-bridge (make run) vs a direct synchronous bridge, one run ({elapsed:.0f} s)\n")
    print(f"machine: {machine()}; load average now: {load_avg()}\n")
    print("| figure | direct synchronous bridge | mt5-bridge (`make run`) | ours ÷ direct | goal | met |")
    print("|---|---|---|---|---|---|")
    for name, direct, ours, rat, goal, met in rows:
        mark = "" if met is None else ("yes" if met else "**no**")
        print(f"| {name} | {direct} | {ours} | {rat} | {goal} | {mark} |")
    goals = [row[5] for row in rows if row[5] is not None]
    print(f"\ngoals met: {sum(goals)} of {len(goals)}")
    for note in notes:
        print(f"note: {note}")
    print("note: the load generator, both bridges and the emulated broker share this machine's cores; "
          "other work on it moves every figure: compare the two columns of one run, not runs of different days")


if __name__ == "__main__":
    main()
