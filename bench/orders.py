"""Order path benchmark: one command, starts its own stack, prints the machine and the figures.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bridge_orders REDIS_URL=redis://127.0.0.1:6379/2 \\
        .venv/bin/python bench/orders.py [--seconds 5] [--latency-samples 200] [--drain 1000] \\
            [--server gunicorn|uvicorn] [--web-workers 4]

It starts (free ports, stopped at the end): one mt5sim terminal (a large-balance demo account), its
pinned worker, and the REST tier as deployed (docker-compose ``web``: gunicorn, 4 sync WSGI workers,
``DB_CONN_MAX_AGE=60``; ``--server uvicorn`` for one uvicorn process on ``bridge_project.asgi``); it migrates the
database named by DATABASE_URL (PostgreSQL; SQLite works but is not what production runs) and makes
a workspace, an API key and a session. Then it measures:

1. accepted ``POST /orders`` per second with 1, 8 and 32 concurrent keep-alive clients (no request
   id: every request is a new task; the worker drains at the same time, as in production);
2. end-to-end latency from POST to the task's final state (client clock before the POST → the
   task's ``finished_at``), one order at a time, p50/p99;
3. replay latency (same request id and payload again), p50/p99;
4. orders per second one pinned worker drains (tasks queued while the worker is stopped, then
   first claim → last final state, from the ledger's own times), against the raw ``order_send`` rate
   of the same mt5sim terminal measured in this process with the mt5sim client.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Procs,
    free_port,
    http_load,
    open_session,
    pct,
    raw_order_send,
    request,
    setup_django,
    wait_port,
)

PYTHON = sys.executable
TERMINAL = "bench-1"
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.01}


def wait_drained(tasks, timeout: float) -> None:  # a TradeTask queryset
    deadline = time.monotonic() + timeout
    while tasks.filter(state__in=["queued", "dispatched", "unknown"]).exists():
        if time.monotonic() > deadline:
            raise SystemExit("tasks not final in time: " + str(
                list(tasks.values_list("state", flat=True).distinct())))
        time.sleep(0.5)


def main() -> None:  # one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each acceptance run")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--drain", type=int, default=1000, help="tasks queued for the drain run")
    parser.add_argument("--server", choices=["gunicorn", "uvicorn"], default="gunicorn",
                        help="REST server: gunicorn sync workers (as deployed) or one uvicorn process")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers (docker-compose: 4)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-orders-"))
    sim_port, web_port = free_port(), free_port()
    (work / "sim.yaml").write_text("account_defaults:\n  balance: 1000000000.0\n  leverage: 500\n")
    (work / "terminals.yaml").write_text(
        f"terminals:\n  - name: {TERMINAL}\n    backend: sim\n    address: 127.0.0.1:{sim_port}\n    utc_offset: 0\n")
    env = {**os.environ, "BRIDGE_TERMINALS_FILE": str(work / "terminals.yaml"), "BRIDGE_VAR_DIR": str(work),
           "BRIDGE_THROTTLE_RATE": "100000000/min", "LOG_LEVEL": "WARNING"}
    if args.server == "gunicorn":
        # docker-compose's web service: each sync worker keeps its one database connection.
        web_env = {**env, "DB_CONN_MAX_AGE": "60"}
        web_argv = [PYTHON, "-m", "gunicorn", "-b", f"127.0.0.1:{web_port}", "-w", str(args.web_workers),
                    "-k", "sync", "--log-level", "warning", "bridge_project.wsgi:application"]
        web_label = f"gunicorn, {args.web_workers} sync workers (bridge_project.wsgi, DB_CONN_MAX_AGE=60)"
    else:
        # Sync Django views run in asgiref's thread pool and each thread keeps its own database
        # connection: bound the pool, or 32 clients exhaust PostgreSQL's max_connections.
        web_env = {**env, "ASGI_THREADS": os.environ.get("ASGI_THREADS", "8")}
        web_argv = [PYTHON, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(web_port), "--log-level", "warning",
                    "--no-access-log", "bridge_project.asgi:application"]
        web_label = f"1 uvicorn process (bridge_project.asgi, ASGI_THREADS={web_env['ASGI_THREADS']})"
    procs = Procs(work)
    try:
        setup_django(env, ("BRIDGE_TERMINALS_FILE", "BRIDGE_VAR_DIR", "BRIDGE_THROTTLE_RATE"))
        from sessions.api_keys import create_api_key
        from sessions.models import Workspace
        from trading.models import TradeTask

        print(f"web tier: {web_label}; 1 pinned worker (-P solo); beat + maintenance worker; 1 mt5sim terminal")
        print("note: everything shares this machine's cores (load generator included)\n")

        procs.start("sim", [PYTHON, "-m", "mt5sim", "serve", "--address", f"127.0.0.1:{sim_port}",
                            "--config", str(work / "sim.yaml"), "--seed", "3"], env)
        wait_port(sim_port)
        procs.start("worker", [PYTHON, "manage.py", "run_terminal_worker", TERMINAL, "--loglevel", "WARNING"], env)
        procs.start("web", web_argv, web_env)
        # Beat + maintenance worker, as in production: the outbox sweeper and reconciliation fan-out.
        procs.start("maintenance", [PYTHON, "manage.py", "run_maintenance_worker", "--beat", "--loglevel", "WARNING"],
                    env)
        wait_port(web_port)
        from sessions.models import LIVE_STATUSES, BridgeSession

        # The bench terminal is the bench's own: a session left live by an interrupted run is closed.
        BridgeSession.objects.filter(terminal__name=TERMINAL, status__in=LIVE_STATUSES).update(status="closed")
        workspace, _ = Workspace.objects.get_or_create(name=f"bench-{int(time.time())}")
        key = create_api_key(workspace)[1]
        auth = {"Authorization": f"Bearer {key}"}
        session = open_session(web_port, auth, TERMINAL, "bench", 60, lambda: procs.log("worker"))
        headers = {**auth, "x-session-id": session["sessionId"], "Content-Type": "application/json"}
        body = json.dumps(ORDER).encode()
        # Warm-up (symbol specs, connections).
        status, task = request(web_port, "POST", "/mt5/client/orders", ORDER, headers)
        assert status == 202, task

        print("1. accepted POST /orders (202), new task per request, worker draining meanwhile")
        for clients in (1, 8, 32):
            result = http_load("127.0.0.1", web_port, "POST", "/mt5/client/orders", headers, clients=clients,
                               seconds=args.seconds, body=body, expect=(202,))
            print("   " + result.line(f"{clients:>2} client(s)"))

        print("   (waiting for the worker to drain the backlog ...)")
        wait_drained(TradeTask.objects.filter(session_id=session["sessionId"]), 900)

        print("2. POST -> final state, one order at a time")
        latencies = []
        for i in range(args.latency_samples):
            t0 = time.time()
            status, task = request(web_port, "POST", "/mt5/client/orders", ORDER, {**headers, "x-request-id": f"lat-{i}-{t0}"})
            assert status == 202, task
            while True:
                row = TradeTask.objects.filter(id=task["taskId"]).values_list("state", "finished_at").first()
                if row[1] is not None:
                    break
                time.sleep(0.001)
            assert row[0] == "filled", row
            latencies.append((row[1].timestamp() - t0) * 1000)
        print(f"   {len(latencies)} orders: p50 {pct(latencies, 50):.1f} ms   p99 {pct(latencies, 99):.1f} ms")

        print("3. replay (same request id and payload)")
        replay = http_load("127.0.0.1", web_port, "POST", "/mt5/client/orders", {**headers, "x-request-id": "lat-0-replay"},
                           clients=1, seconds=args.seconds, body=body, expect=(202,))
        print("   " + replay.line("1 client"))

        print(f"4. drain: {args.drain} tasks queued with the worker stopped, then drained by one pinned worker")
        procs.stop("worker")
        from sessions.models import BridgeSession
        from trading.services import order_place

        bridge_session = BridgeSession.objects.select_related("terminal").get(id=session["sessionId"])
        ids = [order_place(session=bridge_session, request_id=f"drain-{i}-{time.time()}", data=dict(ORDER)).task.id for i in range(args.drain)]
        procs.start("worker", [PYTHON, "manage.py", "run_terminal_worker", TERMINAL, "--loglevel", "WARNING"], env)
        wait_drained(TradeTask.objects.filter(id__in=ids), 900)
        rows = list(TradeTask.objects.filter(id__in=ids).values_list("state", "dispatched_at", "finished_at"))
        first = min(r[1] for r in rows)
        last = max(r[2] for r in rows)
        states = {s for s, _, _ in rows}
        span = (last - first).total_seconds()
        print(f"   {len(rows)} tasks in {span:.2f} s: {len(rows) / span:.0f} orders/s (final states: {sorted(states)})")

        raw = raw_order_send(f"127.0.0.1:{sim_port}", args.drain)[1]
        print(f"   raw mt5sim order_send, same terminal, one client in this process: {raw:.0f} orders/s")
        print(f"   the pinned worker drains at {len(rows) / span / raw * 100:.1f}% of the raw order_send rate")
        request(web_port, "DELETE", f"/mt5/client/session/{session['sessionId']}", None, auth)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
