"""Chaos bench: exactly-once order execution under faults. One command; it starts its own stack.

    .venv/bin/python bench/chaos.py [--orders 1000] [--clients 4] [--kills 10] [--ipc-timeouts 50] [--seed 1]

What it starts (free ports, fresh state, everything stopped on exit, Ctrl-C and failure included):

* PostgreSQL database ``bridge_chaos`` on 127.0.0.1:5432 (user ``postgres``, trust auth), dropped and
  created again, then migrated (``--database-url`` for another server; the database is kept after
  the run so its ledger can be inspected);
* its own ``redis-server`` (no persistence) on a free port: it is killed and restarted empty mid-run;
* one mt5sim terminal (in-memory state, a demo account with a large balance);
* the terminal's pinned worker (``manage.py run_terminal_worker``);
* the maintenance worker with beat embedded (``manage.py run_maintenance_worker --beat``): the outbox
  sweeper and the reconciliation fan-out run as in production, on short periods;
* the REST tier as deployed (gunicorn, 4 sync workers, ``DB_CONN_MAX_AGE=60``);

all with ``BRIDGE_INFLIGHT_BOUND=5`` (a sent order not found at the terminal after 5 s is proven not
executed) so a run ends in minutes.

Then it opens a session and submits ``--orders`` market orders (EURUSD BUY 0.01) from ``--clients``
threads. Each client behaves as a careful user: every order has its own ``x-request-id``, and a
connection error, a 5xx, a 429 or a 503 is retried with the same request id and body until a 202.
Meanwhile, at random moments (seeded by ``--seed``):

* ``--kills`` SIGKILLs of the pinned worker (the lease holder), each followed by a restart, as the
  supervisor would do;
* one SIGKILL of Redis and a restart of an empty one on the same port;
* a second worker started mid-run: it must wait for the lease, and take over at the next kill (from
  then on a standby always waits: every replacement started after a kill waits for the lease);
* ``--ipc-timeouts`` order_send calls answered with an IPC timeout (mt5sim
  ``ipc_timeout("order_send", 1, execute=<random>)``): executed or not, the bridge cannot tell.

At the end it waits (bounded) for every task to be final, asking the terminal's worker to reconcile
the ``dispatched``/``unknown`` ones once they are older than the in-flight bound, then counts from
mt5sim's own history (not the bridge's records) and prints: duplicates, lost and untracked orders,
tasks by final state, accept-to-final time, and tasks still ``unknown``; and the tasks stranded in
``queued`` (the live worker idle for 15 s while they wait: see docs/orders.md "Chaos run"). The exit status is non-zero
when any of duplicates, lost, untracked, final states that contradict the broker, or 500 answers is
non-zero.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Procs, free_port, machine, pct, setup_django, wait_port  # noqa: E402
from bridge_project.processes import kill_group  # noqa: E402

PYTHON = sys.executable
TERMINAL = "chaos-1"
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.01}
INFLIGHT_BOUND = 5.0
RETRYABLE = {429, 500, 502, 503, 504}  # plus any other 5xx and connection errors
STRANDED_AFTER = 15.0  # s without a claim, worker alive, outbox republish due long since (3 s)
WORKER_READY = " ready."  # celery's "celery@<name> ready." line
WAITING_FOR_LEASE = "another worker holds the lease"

T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


# --- HTTP -------------------------------------------------------------------------------------------
def call(port: int, method: str, path: str, body: dict | None, headers: dict[str, str],
         timeout: float = 30) -> tuple[int, dict, dict[str, str]]:
    """One request on a fresh connection: (status, JSON body or {}, headers). Raises OSError/HTTPException."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"raw": raw[:200].decode(errors="replace")}
        return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


class Clients:
    """``clients`` threads submitting orders; each retries one request id until it is accepted."""

    def __init__(self, port: int, headers: dict[str, str], orders: int, clients: int, seed: int,
                 give_up_after: float) -> None:
        self.port, self.headers, self.orders, self.clients = port, headers, orders, clients
        self.seed, self.give_up_after = seed, give_up_after
        self.request_ids = [f"chaos-{seed}-{i:05d}" for i in range(orders)]
        self.accepted: dict[str, str] = {}  # request id -> task id of its 202
        self.replayed = 0  # 202s answered with Idempotent-Replayed: a retry of an accepted request
        self.refused: dict[str, tuple[int, dict]] = {}  # a non-retryable answer (4xx): no task
        self.gave_up: list[str] = []
        self.statuses: Counter[str] = Counter()
        self.errors_500: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True, name=f"client-{c}")
                        for c in range(clients)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self.threads)

    def _run(self, c: int) -> None:
        rng = random.Random(self.seed * 1000 + c)
        for i in range(c, self.orders, self.clients):
            if self.stop.is_set():
                return
            self._submit(self.request_ids[i], rng)

    def _submit(self, rid: str, rng: random.Random) -> None:
        headers = {**self.headers, "x-request-id": rid}
        deadline, attempt = time.monotonic() + self.give_up_after, 0
        while not self.stop.is_set():
            attempt += 1
            try:
                status, body, resp_headers = call(self.port, "POST", "/mt5/client/orders", ORDER, headers)
            except (OSError, http.client.HTTPException) as exc:
                status, body, resp_headers = -1, {"error": repr(exc)}, {}
            with self.lock:
                self.statuses["conn-error" if status == -1 else str(status)] += 1
                if status == 500:
                    self.errors_500.append((rid, body))
                if status == 202:
                    self.accepted[rid] = body["taskId"]
                    self.replayed += resp_headers.get("idempotent-replayed", "").lower() == "true"
                    return
                if status != -1 and status not in RETRYABLE and status < 500:
                    self.refused[rid] = (status, body)
                    return
                if time.monotonic() > deadline:
                    self.gave_up.append(rid)
                    return
            try:
                retry_after = float(resp_headers.get("retry-after", "0"))
            except ValueError:
                retry_after = 0.0
            backoff = min(2.0, 0.1 * 2 ** min(attempt, 5)) * (0.5 + rng.random())
            self.stop.wait(min(5.0, max(retry_after, backoff)))


# --- the stack --------------------------------------------------------------------------------------
class Stack:
    def __init__(self, procs: Procs, env: dict[str, str], redis_port: int, sim_port: int) -> None:
        self.procs, self.env, self.redis_port, self.sim_port = procs, env, redis_port, sim_port
        self.redis_runs = 0
        self.worker_runs = 0
        self.workers: dict[str, subprocess.Popen] = {}  # live pinned workers (holder and standby)
        self.standby: str | None = None

    # Redis
    def start_redis(self) -> None:
        import redis

        self.redis_runs += 1
        self.procs.start(f"redis-{self.redis_runs}",
                         ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no"], self.env)
        client, deadline = redis.Redis(port=self.redis_port), time.monotonic() + 15
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"redis did not start:\n{self.procs.log(f'redis-{self.redis_runs}')}") from None
                time.sleep(0.05)

    def kill_redis(self) -> None:
        kill_group(self.procs.procs[f"redis-{self.redis_runs}"], wait=30)

    # pinned workers
    def start_worker(self, *, standby: bool, timeout: float = 120) -> str:
        """Start one pinned worker; wait until it is ready (it holds the lease) or, for a standby,
        until it says it waits for the lease. Returns its name."""
        self.worker_runs += 1
        name = f"worker-{self.worker_runs}"
        proc = self.procs.start(name, [PYTHON, "manage.py", "run_terminal_worker", TERMINAL, "--loglevel", "INFO"],
                                self.env)
        self.workers[name] = proc
        self.procs.wait_log(name, WAITING_FOR_LEASE if standby else WORKER_READY, timeout)
        if standby:
            self.standby = name
        return name

    def holder(self) -> tuple[str, int] | None:
        """(name, lease token) of the worker of ours holding the terminal's lease, if any."""
        from terminals.models import Terminal

        row = Terminal.objects.filter(name=TERMINAL).values_list("lease_holder", "lease_token").first()
        if not row or not row[0]:
            return None
        pid = row[0].rpartition(":")[2]
        for name, proc in self.workers.items():
            if str(proc.pid) == pid and proc.poll() is None:
                return name, int(row[1])
        return None

    def wait_holder(self, name: str | None = None, timeout: float = 120) -> tuple[str, int]:
        """Wait until ``name`` (or any worker of ours) holds the lease and is ready."""
        deadline = time.monotonic() + timeout
        while True:
            held = self.holder()
            if held and (name is None or held[0] == name) and WORKER_READY in self.procs.log(held[0]):
                return held
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}\n{self.procs.log(n)[-1500:]}" for n in self.workers)
                raise SystemExit(f"no worker holds the lease of {TERMINAL} after {timeout}s ({held}):\n{logs}")
            time.sleep(0.05)

    def kill_worker(self, name: str) -> None:
        # reaped: the lease names a process that no longer exists on this host
        kill_group(self.workers.pop(name), wait=30)


class IpcFaults(threading.Thread):
    """Arms one ``ipc_timeout("order_send", 1, execute=<random>)`` at a time on the terminal, each once
    the worker has taken its threshold of tasks, and waits until an order_send consumed it."""

    def __init__(self, address: str, thresholds: list[float], taken, seed: int) -> None:
        super().__init__(daemon=True, name="ipc-faults")
        from mt5sim.control import Control

        self.ctl, self.thresholds, self.taken = Control(address), thresholds, taken
        self.rng = random.Random(seed)
        self.done: list[bool] = []  # the execute flag of each consumed fault
        self.armed: bool | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        from django.db import connection

        try:
            for threshold in self.thresholds:
                while not self.stop.is_set() and self.taken() < threshold:
                    self.stop.wait(0.02)
                if self.stop.is_set():
                    return
                self.armed = self.rng.random() < 0.5
                self.ctl.ipc_timeout("order_send", 1, execute=self.armed)
                while not self.stop.is_set() and "order_send" in self.ctl.call("server_state")["ipc_timeout"]:
                    self.stop.wait(0.01)
                if self.stop.is_set():
                    return
                self.done.append(self.armed)
                self.armed = None
        finally:
            connection.close()

    def finish(self) -> None:
        """Stop arming; disarm a fault no order_send consumed."""
        self.stop.set()
        self.join(10)
        self.ctl.ipc_timeout("order_send", 0)
        self.ctl.close()


def create_database(url: str) -> str:
    """Drop and create the database named by ``url`` (PostgreSQL); returns its name."""
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def broker_records(address: str) -> tuple[list, list]:
    """The terminal's own working orders and history orders, read with the mt5sim client."""
    import mt5sim

    if not mt5sim.initialize(address):
        raise SystemExit(f"cannot attach to the terminal: {mt5sim.last_error()}")
    try:
        working = list(mt5sim.orders_get() or ())
        history = list(mt5sim.history_orders_get(1, int(time.time()) + 3 * 86400) or ())
    finally:
        mt5sim.shutdown()
    return working, history


# --- the run ----------------------------------------------------------------------------------------
def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the pinned worker")
    parser.add_argument("--ipc-timeouts", type=int, default=50, help="order_send calls answered with an IPC timeout")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bridge_chaos",
                        help="PostgreSQL database of the run: dropped and created again")
    parser.add_argument("--settle-timeout", type=float, default=420,
                        help="bound on the final wait (s): above the broker's 300 s visibility timeout")
    return parser.parse_args()


class ChaosRun:
    """One run: the stack, the chaos phase, the settling phase and the figures, in that order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rng = args, random.Random(args.seed)
        self.load_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
        self.work = work = Path(tempfile.mkdtemp(prefix="bench-chaos-"))
        self.redis_port, self.sim_port, self.web_port = free_port(), free_port(), free_port()
        self.sim_address = f"127.0.0.1:{self.sim_port}"
        (work / "sim.yaml").write_text("account_defaults:\n  balance: 1000000000.0\n  leverage: 500\n")
        (work / "terminals.yaml").write_text(
            f"terminals:\n  - name: {TERMINAL}\n    backend: sim\n    address: {self.sim_address}\n    utc_offset: 0\n")
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.env = {
            **os.environ,
            "DATABASE_URL": args.database_url, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
            "BRIDGE_TERMINALS_FILE": str(work / "terminals.yaml"), "BRIDGE_VAR_DIR": str(work),
            "BRIDGE_THROTTLE_RATE": "100000000/min", "BRIDGE_SESSION_TTL": "3600", "LOG_LEVEL": "INFO",
            # Short bounds so the run ends in minutes (production: 90 s, 30 s, 30 s, 5 s, 15 s).
            "BRIDGE_INFLIGHT_BOUND": str(INFLIGHT_BOUND), "BRIDGE_RECONCILE_AFTER": str(INFLIGHT_BOUND),
            "BRIDGE_RECONCILE_INTERVAL": "3", "BRIDGE_OUTBOX_SWEEP_INTERVAL": "1", "BRIDGE_OUTBOX_REPUBLISH_AFTER": "3",
        }
        self.procs = Procs(work)
        self.stack = Stack(self.procs, self.env, self.redis_port, self.sim_port)
        self.clients: Clients | None = None
        self.ipc: IpcFaults | None = None
        self.db_name = ""
        self.workspace = None
        self.sid = ""
        # the chaos phase's progress and findings
        self.kills_done, self.redis_done = 0, False
        self.idle_since, self.last_taken = time.monotonic(), -1
        self.unplanned: list[str] = []
        self.orphans: list[str] = []  # tasks left dispatched by a killed worker
        self.takeover_seconds: list[float] = []
        self.stranded: dict[str, float] = {}  # task id -> seconds since the bench started, when first seen stranded

    # -- the stack ---------------------------------------------------------------------------------
    def start(self) -> None:
        say(f"work directory (logs): {self.work}")
        self.db_name = create_database(self.args.database_url)
        say(f"database: PostgreSQL {self.db_name} dropped and created; migrating")
        setup_django(self.env, ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "BRIDGE_TERMINALS_FILE",
                                "BRIDGE_VAR_DIR", "BRIDGE_INFLIGHT_BOUND", "BRIDGE_RECONCILE_AFTER",
                                "BRIDGE_THROTTLE_RATE"))
        say(f"starting redis-server on port {self.redis_port} (no persistence)")
        self.stack.start_redis()
        say(f"starting mt5sim terminal {TERMINAL} on {self.sim_address} (in-memory state)")
        self.procs.start("sim", [PYTHON, "-m", "mt5sim", "serve", "--address", self.sim_address,
                                 "--config", str(self.work / "sim.yaml"), "--seed", str(self.args.seed)], self.env)
        wait_port(self.sim_port)
        say("starting the pinned worker")
        first = self.stack.start_worker(standby=False)
        say(f"{first} ready (pid {self.stack.workers[first].pid}); starting gunicorn (4 sync workers) on port "
            f"{self.web_port} and the maintenance worker with beat (outbox sweep every 1 s, reconcile fan-out "
            "every 3 s)")
        self.procs.start("web", self._web_argv(), self._env_of("web"))
        self.procs.start("maintenance", [PYTHON, "manage.py", "run_maintenance_worker", "--beat", "--loglevel", "INFO"],
                         self.env)
        wait_port(self.web_port, 60)

    def _web_argv(self) -> list[str]:
        return [PYTHON, "-m", "gunicorn", "-b", f"127.0.0.1:{self.web_port}", "-w", "4", "-k", "sync",
                "--log-level", "warning", "bridge_project.wsgi:application"]

    def _env_of(self, name: str) -> dict[str, str]:
        return {**self.env, "DB_CONN_MAX_AGE": "60"} if name == "web" else self.env

    def open_session(self) -> dict[str, str]:
        """A live session on the terminal; the auth headers of its workspace's key."""
        from sessions.api_keys import create_api_key
        from sessions.models import Workspace

        self.workspace = Workspace.objects.create(name=f"chaos-{self.args.seed}")
        auth = {"Authorization": f"Bearer {create_api_key(self.workspace)[1]}"}
        deadline = time.monotonic() + 90
        while True:
            status, session, _ = call(self.web_port, "POST", "/mt5/client/session/open?wait=20",
                                      {"accountId": "chaos", "server": "Demo", "login": 7001, "password": "pw",
                                       "terminal": TERMINAL}, auth)
            if status == 201 and session.get("status") == "active":
                break
            if status == 201:
                call(self.web_port, "DELETE", f"/mt5/client/session/{session['sessionId']}", None, auth)
            if time.monotonic() > deadline:
                raise SystemExit(f"could not open a session: {status} {session}")
            time.sleep(1)  # a retry pace: the next open is the check
        self.sid = session["sessionId"]
        say(f"session {self.sid} active on {TERMINAL} (login 7001)")
        return auth

    # -- the chaos phase ---------------------------------------------------------------------------
    def plan(self) -> None:
        """The chaos plan, in units of progress. Kills and IPC timeouts are placed by how many tasks the
        worker has taken (not queued any more), so each one hits a worker that is trading."""
        n, args, rng = self.args.orders, self.args, self.rng
        self.kill_at = sorted(rng.uniform(0.04, 0.92) * n for _ in range(args.kills))
        self.standby_after = rng.randint(2, max(2, args.kills - 3)) if args.kills >= 4 else None  # after that kill
        self.redis_at = rng.uniform(0.35, 0.65) * n  # by accepted orders: the web tier is writing
        self.ipc_at = sorted(rng.uniform(0.02, 0.9) * n for _ in range(args.ipc_timeouts))
        say(f"plan: {args.kills} worker kills at taken-task counts {[int(x) for x in self.kill_at]}; a second "
            f"worker after kill {self.standby_after}; Redis killed at {int(self.redis_at)} accepted; "
            f"{args.ipc_timeouts} IPC timeouts")

    def _session_tasks(self):
        from trading.models import TradeTask

        return TradeTask.objects.filter(session_id=self.sid)

    def chaos_phase(self, auth: dict[str, str]) -> None:
        n = self.args.orders
        self.clients = Clients(self.web_port, {**auth, "x-session-id": self.sid}, n, self.args.clients,
                               self.args.seed, give_up_after=600)
        say(f"submitting {n} orders ({ORDER['symbol']} {ORDER['type']} {ORDER['volume']}) from "
            f"{self.args.clients} clients")
        self.clients.start()
        self.ipc = IpcFaults(self.sim_address, self.ipc_at,
                             lambda: self._session_tasks().exclude(state="queued").count(), self.args.seed + 1)
        self.ipc.start()
        last_report = 0.0
        while True:
            taken = self._session_tasks().exclude(state="queued").count()
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                say(f"progress: {len(self.clients.accepted)} accepted, {taken} taken by a worker, kills "
                    f"{self.kills_done}/{self.args.kills}, IPC timeouts {len(self.ipc.done)}/{self.args.ipc_timeouts}, "
                    f"Redis restarted: {self.redis_done}")
            self._restart_what_died()
            if not self.redis_done and len(self.clients.accepted) >= self.redis_at:
                self._restart_redis()
            if self.kills_done < len(self.kill_at) and taken >= self.kill_at[self.kills_done]:
                self._kill_worker()
            if taken != self.last_taken:
                self.idle_since, self.last_taken = time.monotonic(), taken
            if self._chaos_over():
                break
            time.sleep(0.05)  # the loop's pace
        self.ipc.finish()
        say(f"chaos phase done: {len(self.clients.accepted)} accepted, {len(self.ipc.done)} IPC timeouts dealt; "
            f"HTTP answers {dict(sorted(self.clients.statuses.items()))}")

    def _chaos_over(self) -> bool:
        """Every fault was dealt, or the worker has taken nothing for 10 s after the last order was
        accepted (what is still queued then waits in the next phase)."""
        return (self.clients.done() and self.kills_done >= len(self.kill_at) and self.redis_done
                and (len(self.ipc.done) >= len(self.ipc_at) or time.monotonic() - self.idle_since > 10))

    def _restart_what_died(self) -> None:
        """A supervisor restarts what died on its own (counted: the chaos is ours, not theirs)."""
        for pname in ("web", "maintenance"):
            proc = self.procs.procs[pname]
            if proc.poll() is not None:
                self.unplanned.append(f"{pname} exited with {proc.returncode}")
                say(f"!! {pname} exited on its own ({proc.returncode}): restarting it")
                self.procs.start(pname, proc.args, self._env_of(pname))
        for wname, proc in list(self.stack.workers.items()):
            if proc.poll() is not None:
                self.unplanned.append(f"{wname} exited with {proc.returncode}")
                say(f"!! {wname} exited on its own ({proc.returncode}):\n{self.procs.log(wname)[-1500:]}")
                self.stack.workers.pop(wname)
                if self.stack.standby == wname:
                    self.stack.standby = None
                self.stack.start_worker(standby=bool(self.stack.workers))

    def _restart_redis(self) -> None:
        queued = self._session_tasks().filter(state="queued").count()
        say(f"SIGKILL redis-server ({queued} tasks queued, their messages in Redis)")
        self.stack.kill_redis()
        time.sleep(self.rng.uniform(1.0, 3.0))  # Redis stays down a while: the chaos plan, not a wait
        self.stack.start_redis()
        self.redis_done = True
        say("redis-server restarted empty on the same port")

    def _kill_worker(self) -> None:
        time.sleep(self.rng.uniform(0.0, 0.3))  # a random moment: the chaos plan, not a wait
        victim, token = self.stack.wait_holder()
        self.stack.kill_worker(victim)
        self.kills_done += 1
        # Nothing executes between the kill and the next worker's start: what is dispatched now was in
        # the killed worker's hands.
        in_flight = list(self._session_tasks().filter(state="dispatched").values_list("id", "sent_at"))
        self.orphans.extend(t for t, _ in in_flight)
        flight = ", ".join(f"{t} ({'send mark committed' if s else 'not sent'})" for t, s in in_flight)
        say(f"kill {self.kills_done}/{self.args.kills}: SIGKILL {victim} (lease token {token}); orphaned: "
            f"{flight or 'none'}")
        if self.stack.standby is not None:
            standby, t_kill = self.stack.standby, time.monotonic()
            self.stack.standby = None
            new, new_token = self.stack.wait_holder(standby)
            self.takeover_seconds.append(time.monotonic() - t_kill)
            say(f"   standby {new} took the lease over (token {new_token}) and is ready after "
                f"{self.takeover_seconds[-1]:.1f} s; starting a replacement standby")
            self.stack.start_worker(standby=True)
        else:
            t_kill = time.monotonic()
            new = self.stack.start_worker(standby=False)
            say(f"   restarted as {new} (ready after {time.monotonic() - t_kill:.1f} s)")
        if self.kills_done == self.standby_after:
            second = self.stack.start_worker(standby=True)
            say(f"second worker {second} started: it logged {WAITING_FOR_LEASE!r}")

    # -- settling ----------------------------------------------------------------------------------
    def settle(self) -> None:
        """Every task final; reconciliation is driven once a task is past the in-flight bound. A task
        still queued while the live worker has taken nothing for STRANDED_AFTER seconds is stranded:
        nothing but the broker's visibility timeout will bring its message back."""
        from trading.models import FINAL_STATES, TradeTask

        ids = list(self.clients.accepted.values())
        deadline = time.monotonic() + self.args.settle_timeout
        last_ask = last_report = 0.0
        while True:
            pending = list(TradeTask.objects.filter(id__in=ids).exclude(state__in=FINAL_STATES)
                           .values_list("id", "state", "sent_at", "dispatched_at"))
            if not pending or time.monotonic() > deadline:
                break
            now = time.monotonic()
            taken = self._session_tasks().exclude(state="queued").count()
            if taken != self.last_taken:
                self.idle_since, self.last_taken = now, taken
            if now - self.idle_since > STRANDED_AFTER:
                self._note_stranded(pending, now)
            if now - last_report > 10:
                last_report = now
                queued = [tid for tid, state, _, _ in pending if state == "queued"]
                say(f"settling: {dict(Counter(state for _, state, _, _ in pending))} not final yet"
                    + (f"; queued: {queued[:5]}" if queued else ""))
            if now - last_ask > 5 and self._ask_reconciliation(pending):
                last_ask = now
            time.sleep(0.5)  # the loop's pace

    def _note_stranded(self, pending: list[tuple], now: float) -> None:
        for tid, state, _, _ in pending:
            if state == "queued" and tid not in self.stranded:
                self.stranded[tid] = now - T0
                say(f"!! {tid} is stranded: queued, while the worker has taken nothing for "
                    f"{now - self.idle_since:.0f} s")

    def _ask_reconciliation(self, pending: list[tuple]) -> bool:
        """Ask the terminal to reconcile the dispatched/unknown tasks past the in-flight bound; whether any."""
        from django.utils import timezone

        from trading.reconciliation import reconciliation_request

        old = [tid for tid, state, sent, disp in pending if state in ("dispatched", "unknown")
               and (timezone.now() - (sent or disp)).total_seconds() > INFLIGHT_BOUND + 1]
        if old:
            say(f"asking the terminal to reconcile {len(old)} dispatched/unknown task(s) past the in-flight bound")
            reconciliation_request(task_ids=old)
        return bool(old)

    # -- the figures, from the ledger and from mt5sim's own history -----------------------------------
    def report(self) -> int:
        findings = self._findings()
        self._print_figures(findings)
        return self._print_problems(findings)

    def _findings(self) -> dict:
        from django.db.models import Count

        from trading.models import FINAL_STATES, TaskTransition, TradeTask
        from trading.orders import tag_of

        working, history = broker_records(self.sim_address)
        by_tag: Counter[str] = Counter()
        untagged = []
        for order in working + history:
            tag = tag_of(str(order.comment))
            if tag is None:
                untagged.append(order)
            else:
                by_tag[tag] += 1
        tasks = list(TradeTask.objects.filter(workspace=self.workspace).values(
            "id", "request_id", "tag", "state", "created_at", "dispatched_at", "finished_at"))
        task_tags = {t["tag"] for t in tasks}
        rids_with_task = {t["request_id"] for t in tasks}
        executed_states = ("filled", "partial", "placed")
        waits = sorted(((t["dispatched_at"] - t["created_at"]).total_seconds(), t["id"]) for t in tasks
                       if t["dispatched_at"])
        return {
            "working": working, "history": history, "untagged": untagged, "tasks": tasks,
            "dup_orders": {t["id"]: by_tag[t["tag"]] for t in tasks if by_tag[t["tag"]] > 1},
            "dup_requests": list(TradeTask.objects.filter(workspace=self.workspace).values("request_id")
                                 .annotate(n=Count("id")).filter(n__gt=1).values_list("request_id", "n")),
            "no_task": [rid for rid in self.clients.request_ids if rid not in rids_with_task],
            "left": [t["id"] for t in tasks if t["state"] in ("queued", "dispatched")],
            "untracked_tagged": {tag: c for tag, c in by_tag.items() if tag not in task_tags},
            "mismatched": [t["id"] for t in tasks if t["state"] in FINAL_STATES
                           and by_tag[t["tag"]] != (1 if t["state"] in executed_states else 0)],
            "unknown": [t["id"] for t in tasks if t["state"] == "unknown"],
            "times": sorted(((t["finished_at"] - t["created_at"]).total_seconds(), t["id"]) for t in tasks
                            if t["state"] in FINAL_STATES and t["finished_at"]),
            "waits": waits, "wait_of": {tid: w for w, tid in waits},
            "ipc_tasks": list(TaskTransition.objects.filter(task__workspace=self.workspace, to_state="unknown",
                                                            detail__mt5=-10005).values_list("task__state", flat=True)),
            "paths": {tid: " > ".join(TaskTransition.objects.filter(task_id=tid).order_by("at", "id")
                                      .values_list("to_state", flat=True)) for tid in self.orphans},
        }

    def _print_figures(self, f: dict) -> None:
        args, clients, ipc = self.args, self.clients, self.ipc
        duplicates = len(f["dup_orders"]) + len(f["dup_requests"])
        lost = len(f["no_task"]) + len(f["left"])
        untracked = sum(f["untracked_tagged"].values()) + len(f["untagged"])
        print()
        print(f"chaos run (seed {args.seed}) on: {machine()}; load average at start {self.load_start}, at the end "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"stack: PostgreSQL (database {self.db_name}), own redis-server, 1 mt5sim terminal, pinned worker(s), "
              "maintenance worker + beat, gunicorn 4 sync workers; BRIDGE_INFLIGHT_BOUND=5 s, broker visibility "
              f"timeout {os.environ.get('BRIDGE_VISIBILITY_TIMEOUT', '300')} s")
        takeover = (f"a second worker that waited for the lease and took it over {len(self.takeover_seconds)} time(s) "
                    f"(max {max(self.takeover_seconds):.1f} s from kill to ready)" if self.takeover_seconds
                    else "no standby takeover")
        print(f"faults: {self.kills_done} SIGKILLs of the pinned worker (restarted each time), 1 Redis SIGKILL + "
              f"empty restart, {takeover}")
        print(f"        {len(ipc.done)} order_send IPC timeouts ({sum(ipc.done)} executed by the terminal, "
              f"{len(ipc.done) - sum(ipc.done)} not); unplanned exits: {len(self.unplanned)} {self.unplanned or ''}")
        print(f"submitted:            {args.orders} orders ({args.clients} clients), HTTP answers "
              f"{dict(sorted(clients.statuses.items()))}")
        print(f"accepted tasks:       {len(f['tasks'])} (clients saw {len(clients.accepted)} request ids accepted, "
              f"{clients.replayed} of them on a replayed retry)")
        print(f"duplicates:           {duplicates} (tasks with >1 broker order: {len(f['dup_orders'])}; request ids "
              f"with >1 task: {len(f['dup_requests'])})")
        print(f"lost:                 {lost} (request ids without a task: {len(f['no_task'])}; tasks left "
              f"queued/dispatched: {len(f['left'])})")
        print(f"untracked orders:     {untracked} (tagged, no task: {sum(f['untracked_tagged'].values())}; "
              f"untagged: {len(f['untagged'])}); broker orders in all: {len(f['working']) + len(f['history'])}")
        print(f"final state vs broker mismatches: {len(f['mismatched'])}; 500 answers: {len(clients.errors_500)}")
        print(f"tasks by state:       {dict(sorted(Counter(t['state'] for t in f['tasks']).items()))}")
        print(f"tasks answered an IPC timeout: {len(f['ipc_tasks'])} -> {dict(sorted(Counter(f['ipc_tasks']).items()))}")
        print(f"orphaned by a kill:   {len(self.orphans)} -> {dict(sorted(Counter(f['paths'].values()).items()))}")
        times, waits, wait_of = f["times"], f["waits"], f["wait_of"]
        seconds = [x for x, _ in times]
        print(f"accept -> final:      max {seconds[-1] if seconds else float('nan'):.1f} s "
              f"({times[-1][1] if times else '-'}), p50 {pct(seconds, 50):.2f} s, p99 {pct(seconds, 99):.1f} s")
        print(f"longest wait for a claim: {waits[-1][0] if waits else float('nan'):.1f} s; stranded (queued, worker "
              f"idle > {STRANDED_AFTER:.0f} s): {len(self.stranded)} "
              f"{[(tid, round(wait_of.get(tid, float('nan')))) for tid in self.stranded][:10] or ''}")
        print(f"still unknown:        {len(f['unknown'])} {f['unknown'][:10] or ''}")
        print(f"run time:             {time.monotonic() - T0:.0f} s; logs in {self.work}")

    def _print_problems(self, f: dict) -> int:
        clients, wait_of = self.clients, f["wait_of"]
        problems = {"stranded queued tasks (seconds queued)": {t: round(wait_of.get(t, -1)) for t in self.stranded},
                    "duplicate tasks (>1 broker order)": f["dup_orders"], "request ids with >1 task": f["dup_requests"],
                    "request ids without a task": f["no_task"], "tasks left queued/dispatched": f["left"],
                    "tagged broker orders without a task": f["untracked_tagged"],
                    "untagged broker orders": [(o.ticket, o.comment) for o in f["untagged"]],
                    "final state contradicts the broker": f["mismatched"], "500 answers": clients.errors_500,
                    "refused (4xx)": clients.refused, "gave up": clients.gave_up}
        for label, items in problems.items():
            if items:
                print(f"  {label}: {list(items.items())[:10] if isinstance(items, dict) else list(items)[:10]}")
        failed = (f["dup_orders"] or f["dup_requests"] or f["no_task"] or f["left"] or f["untracked_tagged"]
                  or f["untagged"] or f["mismatched"] or clients.errors_500)
        note = (f" (but {len(self.stranded)} task(s) stranded in queued until the broker's visibility timeout)"
                if self.stranded else "")
        print("RESULT:", ("FAIL" if failed else "OK: exactly once") + note)
        return 1 if failed else 0

    def stop(self) -> None:
        if self.clients is not None:
            self.clients.stop.set()
        if self.ipc is not None and self.ipc.is_alive():
            self.ipc.stop.set()
        stop_in_order(self.procs, self.stack)


def main() -> int:
    run = ChaosRun(_arguments())

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        run.start()
        auth = run.open_session()
        run.plan()
        run.chaos_phase(auth)
        run.settle()
        return run.report()
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        return 130
    finally:
        run.stop()


def stop_in_order(procs: Procs, stack: Stack) -> None:
    """Standby workers first (so none takes the lease over while the holder stops), then the holder,
    the web tier, the maintenance worker, the terminal and Redis last; then anything left."""
    holder = None
    try:
        held = stack.holder()
        holder = held[0] if held else None
    except Exception:  # the database may be what failed
        pass
    workers = sorted(stack.workers, key=lambda name: name == holder)
    for name in [*workers, "web", "maintenance", "sim", f"redis-{stack.redis_runs}"]:
        procs.stop(name)
    procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
