"""Read path benchmark: one command, starts its own stack, prints the machine and the figures.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bridge_reads REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/reads.py [--seconds 5] [--deals 300] [--gzip] [--server gunicorn|uvicorn]

It starts (free ports, stopped at the end): one mt5sim terminal, its pinned worker, its read process
and its poller, and the REST tier as deployed (gunicorn, 4 sync WSGI workers; ``--server uvicorn`` for one
ASGI process instead); it migrates the
database named by DATABASE_URL and makes a workspace, an API key and a session; it makes ``--deals``
deals at the terminal so /history/deals has something to carry. Then, with 1 and 16 concurrent
keep-alive clients, it measures p50/p99 latency and requests per second of:

* ``GET /account``                  (snapshot in Redis, kept by the poller)
* ``GET /quotes/history`` 1,000 M1 bars (request/reply over the terminal's read queue)
* ``GET /history/deals``             (request/reply; the last 7 days: every deal made above)

next to the web tier's own floor (``GET /session/{id}``: API-key auth and one session row) and the same
reads called in this process through Django's test client (no HTTP server: the read path's own cost);
and, in the same run, the same figures for a direct call of the mt5sim function the read stands for
(``account_info``, ``copy_rates_from_pos(..., 1000)``, ``history_deals_get``) by 1 and 16 client
processes, each with its own connection to the terminal (the MetaTrader5 module is one connection per
process).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import LoadResult, Procs, free_port, request, setup_django, wait_port  # noqa: E402

PYTHON = sys.executable
TERMINAL = "bench-reads"
OFFSET = 10800  # the terminal runs at UTC+3, as many brokers do: times are converted on every read
CLIENTS = (1, 16)


def http_load(port: int, path: str, headers: dict[str, str], clients: int, seconds: float) -> LoadResult:
    """``clients`` threads with a keep-alive connection each; non-200 answers are kept (status, body)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[tuple[int, bytes]] = []
    start = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def run(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        while time.monotonic() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    failures.append((response.status, body[:300]))
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                failures.append((0, repr(exc).encode()))
            latencies[i].append((time.perf_counter() - t0) * 1000)
        conn.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at.append(time.monotonic() + seconds)
    start.wait()
    t0 = time.monotonic()
    for thread in threads:
        thread.join()
    result = LoadResult(sum(map(len, latencies)), len(failures), time.monotonic() - t0,
                        [x for per in latencies for x in per])
    result.failures = failures  # type: ignore[attr-defined]
    return result


def inprocess_load(path: str, headers: dict[str, str], seconds: float) -> LoadResult:
    """One client calling the Django app in this process (no HTTP server, one persistent DB connection):
    the cost of the read path itself, apart from the web server and its per-request DB connections."""
    from django.test import Client

    meta = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    client = Client(**meta)
    latencies, failures = [], 0
    stop_at = time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        response = client.get(path)
        latencies.append((time.perf_counter() - started) * 1000)
        failures += response.status_code != 200
    return LoadResult(len(latencies), failures, time.monotonic() - t0, latencies)


def _sizes(port: int, path: str, headers: dict[str, str]) -> tuple[int, int]:
    """Body size of one answer, plain and gzipped."""
    sizes = []
    for extra in ({}, {"Accept-Encoding": "gzip"}):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path, headers={**headers, **extra})
        sizes.append(len(conn.getresponse().read()))
        conn.close()
    return sizes[0], sizes[1]


# --- direct mt5sim calls, one process per client ---------------------------------------------------------
def _direct_call(name: str):
    import mt5sim

    if name == "account_info":
        return lambda: mt5sim.account_info()
    if name == "copy_rates_from_pos":
        return lambda: mt5sim.copy_rates_from_pos("EURUSD", mt5sim.TIMEFRAME_M1, 0, 1000)
    now = int(time.time()) + OFFSET
    return lambda: mt5sim.history_deals_get(now - 7 * 86400, now + 60)


def _direct_worker(address: str, name: str, seconds: float, barrier, results) -> None:
    import mt5sim

    assert mt5sim.initialize(address), mt5sim.last_error()
    call = _direct_call(name)
    assert call() is not None, mt5sim.last_error()  # attached and warm before the clock starts
    latencies = []
    barrier.wait()
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        assert call() is not None, mt5sim.last_error()
        latencies.append((time.perf_counter() - t0) * 1000)
    mt5sim.shutdown()
    results.put(latencies)


def direct_load(address: str, name: str, clients: int, seconds: float) -> LoadResult:
    """``clients`` processes calling the mt5sim function as fast as they can, all starting together."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(clients + 1), ctx.Queue()
    workers = [ctx.Process(target=_direct_worker, args=(address, name, seconds, barrier, results))
               for _ in range(clients)]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=120)
    t0 = time.monotonic()
    runs = [results.get(timeout=seconds + 60) for _ in workers]
    elapsed = time.monotonic() - t0
    for worker in workers:
        worker.join(10)
    flat = [x for run in runs for x in run]
    return LoadResult(len(flat), 0, elapsed, flat)


# --- the run -------------------------------------------------------------------------------------------------
READS = [
    ("GET /account (snapshot)", "/mt5/client/account", "account_info"),
    ("GET /quotes/history 1000 M1 bars", "/mt5/client/quotes/history?symbol=EURUSD&timeframe=M1&count=1000",
     "copy_rates_from_pos"),
    ("GET /history/deals (7 days)", "/mt5/client/history/deals", "history_deals_get"),
]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--deals", type=int, default=300, help="deals made at the terminal before measuring")
    parser.add_argument("--gzip", action="store_true", help="clients send Accept-Encoding: gzip")
    parser.add_argument("--server", choices=["gunicorn", "uvicorn"], default="gunicorn",
                        help="REST server: gunicorn sync workers (as deployed) or one uvicorn process")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers (docker-compose: 4)")
    return parser.parse_args()


def _start_stack(procs: Procs, args: argparse.Namespace, env: dict[str, str], work: Path, address: str,
                 sim_port: int, web_port: int) -> None:
    """The terminal, its one bridge process (the pinned worker, running the read loop and the poller as
    threads), and the REST tier; ready when this returns."""
    procs.start("sim", [PYTHON, "-m", "mt5sim", "serve", "--address", address, "--config",
                        str(work / "sim.yaml"), "--state", str(work / "state"), "--seed", "5"], env)
    wait_port(sim_port)
    procs.start("worker", [PYTHON, "manage.py", "run_terminal_worker", TERMINAL, "--loglevel", "WARNING",
                           "--settings=bridge_project.settings_terminal"], env)
    if args.server == "gunicorn":  # the REST tier of docker-compose: sync WSGI workers
        procs.start("web", [PYTHON, "-m", "gunicorn", "-b", f"127.0.0.1:{web_port}", "-w", str(args.web_workers),
                            "-k", "sync", "--log-level", "warning", "bridge_project.wsgi:application"], env)
    else:
        procs.start("web", [PYTHON, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(web_port),
                            "--log-level", "warning", "--no-access-log", "bridge_project.asgi:application"], env)
    wait_port(web_port)
    procs.wait_log("reader", "ready")
    procs.wait_log("poller", "ready")


def _open_session(procs: Procs, web_port: int, auth: dict[str, str]) -> dict:
    """A live session on the bench terminal (the pinned worker needs a few seconds to start)."""
    from sessions.models import LIVE_STATUSES, BridgeSession

    # An earlier, interrupted run may have left its session live on the bench terminal.
    BridgeSession.objects.filter(terminal__name=TERMINAL, status__in=LIVE_STATUSES).update(status="closed")
    deadline = time.monotonic() + 90
    while True:
        status, session = request(web_port, "POST", "/mt5/client/session/open?wait=20",
                                  {"accountId": "bench", "server": "Demo", "login": 5001, "password": "pw",
                                   "terminal": TERMINAL}, auth)
        if status == 201 and session.get("status") == "active":
            return session
        if status == 201:
            request(web_port, "DELETE", f"/mt5/client/session/{session['sessionId']}", None, auth)
        if time.monotonic() > deadline:
            raise SystemExit(f"could not open a session: {status} {session}\n{procs.log('worker')[-2000:]}")
        time.sleep(1)  # a retry pace, not a wait for a condition: the next open is the check


def _make_deals(address: str, count: int) -> None:
    """``count`` deals at the terminal, so /history/deals has that many to carry."""
    import mt5sim

    assert mt5sim.initialize(address), mt5sim.last_error()
    for i in range(count):
        result = mt5sim.order_send({"action": mt5sim.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.01,
                                    "type": i % 2, "type_filling": mt5sim.ORDER_FILLING_IOC})
        assert result is not None and result.retcode == mt5sim.TRADE_RETCODE_DONE, (result, mt5sim.last_error())
    mt5sim.shutdown()


def _check_reads(web_port: int, headers: dict[str, str], deals: int) -> int:
    """Warm-up, and a check that each read answers what it should; the deals /history/deals carries."""
    deal_count = 0
    for _label, path, _ in READS:
        status, body = request(web_port, "GET", path, None, headers)
        assert status == 200, (path, status, body)
        if "bars" in body:
            assert body["count"] == 1000
        if "deals" in body:
            assert body["count"] >= deals, body["count"]
            deal_count = body["count"]
        if "login" in body:
            assert body["source"] == "snapshot", body
    return deal_count


def _measure(web_port: int, address: str, session_id: str, headers: dict[str, str], seconds: float) -> None:
    print(f"{'':<44} {'throughput':>15}   {'latency':>14}")
    # The web tier's own floor: API-key auth and the session lookup, no terminal involved.
    print("GET /session/{id} (web tier only: auth + session row, for reference)")
    for clients in CLIENTS:
        result = http_load(web_port, f"/mt5/client/session/{session_id}", headers, clients, seconds)
        print("   " + result.line(f"bridge, {clients:>2} client(s)"))
    result = inprocess_load(f"/mt5/client/session/{session_id}", headers, seconds)
    print("   " + result.line("in-process Django, 1 client"))
    for label, path, function in READS:
        print(label)
        for clients in CLIENTS:
            result = http_load(web_port, path, headers, clients, seconds)
            print("   " + result.line(f"bridge, {clients:>2} client(s)"))
            if result.failures:
                statuses = sorted({status for status, _ in result.failures})
                print(f"      failed answers: statuses {statuses}, e.g. {result.failures[0][1][:200]!r}")
        result = inprocess_load(path, headers, seconds)
        print("   " + result.line("in-process Django, 1 client"))
        for clients in CLIENTS:
            result = direct_load(address, function, clients, seconds)
            print("   " + result.line(f"mt5sim.{function}, {clients:>2} process(es)"))


def main() -> None:
    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="bench-reads-"))
    sim_port, web_port = free_port(), free_port()
    address = f"127.0.0.1:{sim_port}"
    (work / "sim.yaml").write_text(f"server:\n  offset_seconds: {OFFSET}\naccount_defaults:\n  balance: 100000000.0\n")
    (work / "terminals.yaml").write_text(
        f"terminals:\n  - name: {TERMINAL}\n    backend: sim\n    address: {address}\n    utc_offset: {OFFSET}\n")
    env = {**os.environ, "BRIDGE_TERMINALS_FILE": str(work / "terminals.yaml"), "BRIDGE_VAR_DIR": str(work),
           "BRIDGE_THROTTLE_RATE": "100000000/min", "LOG_LEVEL": "WARNING"}
    procs = Procs(work)
    try:
        setup_django(env, ("BRIDGE_TERMINALS_FILE", "BRIDGE_VAR_DIR", "BRIDGE_THROTTLE_RATE"))
        from sessions.api_keys import create_api_key
        from sessions.models import Workspace
        from trading.reads import conf

        web = (f"gunicorn, {args.web_workers} sync workers (bridge_project.wsgi)" if args.server == "gunicorn"
               else "1 uvicorn process (bridge_project.asgi)")
        print(f"web tier: {web}; per terminal: pinned worker, read process, "
              f"poller (every {conf.get('BRIDGE_POLL_INTERVAL')} s); 1 mt5sim terminal at UTC+3")
        print(f"clients: keep-alive HTTP, {'gzip accepted' if args.gzip else 'no compression'}; "
              "everything shares this machine's cores (load generator included)\n")
        _start_stack(procs, args, env, work, address, sim_port, web_port)
        workspace, _ = Workspace.objects.get_or_create(name=f"bench-reads-{int(time.time())}")
        auth = {"Authorization": f"Bearer {create_api_key(workspace)[1]}"}
        session = _open_session(procs, web_port, auth)
        _make_deals(address, args.deals)
        headers = {**auth, "x-session-id": session["sessionId"]}
        deal_count = _check_reads(web_port, headers, args.deals)
        if args.gzip:
            headers["Accept-Encoding"] = "gzip"
        sizes = _sizes(web_port, READS[1][1], {**auth, "x-session-id": session["sessionId"]})
        print(f"/history/deals carries {deal_count} deals; /quotes/history 1000 bars = {sizes[0] / 1024:.0f} KiB "
              f"JSON, {sizes[1] / 1024:.0f} KiB gzipped\n")
        _measure(web_port, address, session["sessionId"], headers, args.seconds)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
