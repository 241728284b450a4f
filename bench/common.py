"""Shared bench helpers: machine description, percentiles, a keep-alive HTTP load generator."""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge_project.processes import start_group, stop_group


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.system()} {platform.release()}, {cpu or 'unknown CPU'}, {os.cpu_count()} cores{mem}, "
        f"Python {sys.version.split()[0]}"
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self, label: str) -> str:
        return (
            f"{label:<44} {self.rps:>9.0f} req/s   p50 {pct(self.latencies_ms, 50):7.2f} ms   "
            f"p99 {pct(self.latencies_ms, 99):7.2f} ms   errors {self.errors}"
        )

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")


def http_load(
    host: str, port: int, method: str, path: str, headers: dict[str, str], *,
    clients: int, seconds: float, body: bytes | None = None, expect: tuple[int, ...] = (200,),
) -> LoadResult:
    """``clients`` threads, each with one keep-alive connection, for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.monotonic() + seconds
    start = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        start.wait()
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status in expect
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                ok = False
            latencies[i].append((time.perf_counter() - t0) * 1000)
            if not ok:
                errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    flat = [x for per in latencies for x in per]
    return LoadResult(len(flat), sum(errors), elapsed, flat)


# --- processes and HTTP helpers shared by the stack benchmarks ------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


class Procs:
    """Child processes in their own process groups, logs in ``log_dir``, all stopped at the end."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.procs = log_dir, {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = start_group(argv, log_path=self.log_dir / f"{name}.log", env=env, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if time.monotonic() > deadline or self.procs[name].poll() is not None:
                raise SystemExit(f"{name} did not log {text!r}:\n{self.log(name)[-2000:]}")
            time.sleep(0.1)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            stop_group(proc, grace=15)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def request(port: int, method: str, path: str, body: dict | None, headers: dict[str, str]) -> tuple[int, dict]:
    """One JSON request on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def setup_django(env: dict[str, str], exported: tuple[str, ...]) -> None:
    """Migrate the bench database and set Django up in this process (for fixtures and ledger reads),
    with ``exported`` keys of ``env`` visible here too; prints the machine and the database."""
    os.environ.update({k: env[k] for k in exported})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bridge_project.settings")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    import django

    django.setup()
    from django.db import connection

    print(f"machine: {machine()}")
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}; redis: {os.environ.get('REDIS_URL')}")


def raw_order_send(address: str, count: int) -> tuple[list[float], float]:
    """``count`` market orders through mt5sim directly, one at a time: per-call ms, and calls per second."""
    import mt5sim

    assert mt5sim.initialize(address), mt5sim.last_error()
    times = []
    t_start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        result = mt5sim.order_send({"action": mt5sim.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.01,
                                    "type": mt5sim.ORDER_TYPE_BUY, "deviation": 20,
                                    "type_filling": mt5sim.ORDER_FILLING_IOC})
        times.append((time.perf_counter() - t0) * 1000)
        assert result is not None and result.retcode == mt5sim.TRADE_RETCODE_DONE, (result, mt5sim.last_error())
    rate = count / (time.perf_counter() - t_start)
    mt5sim.shutdown()
    return times, rate


def open_session(web_port: int, auth: dict[str, str], terminal: str, account_id: str = "bench",
                 timeout: float = 90, log: Callable[[], str] | None = None) -> dict:
    """An active session on ``terminal`` (account 5001/pw on server Demo), retried while the worker starts;
    a session that came back still ``opening`` is closed before the next try."""
    deadline = time.monotonic() + timeout
    while True:
        status, session = request(web_port, "POST", "/mt5/client/session/open?wait=20",
                                  {"accountId": account_id, "server": "Demo", "login": 5001, "password": "pw",
                                   "terminal": terminal}, auth)
        if status == 201 and session.get("status") == "active":
            return session
        if status == 201:
            request(web_port, "DELETE", f"/mt5/client/session/{session['sessionId']}", None, auth)
        if time.monotonic() > deadline:
            raise SystemExit(f"could not open a session: {status} {session}\n{(log() if log else '')[-2000:]}")
        time.sleep(1)
