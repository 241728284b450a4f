"""Events benchmark: one command, starts its own stack, prints the machine and the figures.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bridge_events REDIS_URL=redis://127.0.0.1:6379/4 \\
        .venv/bin/python bench/events.py [--seconds 10] [--rate 10] [--clients 1,100,1000] [--poll 0.05]

It starts (free ports, stopped at the end): one mt5sim terminal (UTC+3), its pinned worker and its
poller, and ONE daphne process (``bridge_project.asgi``: /events and the REST API); it migrates the
database, makes a workspace, an API key and a session. For each client count, every client opens a
socket on that session and subscribes to ``quote:EURUSD`` and ``order``; the bench then drives EURUSD
with mt5sim's ``set_price`` at ``--rate`` ticks per second (the random feed frozen, each tick a distinct
price) for ``--seconds``, and places one market order per second over REST (each goes queued ->
dispatched -> filled: three ``order`` events). It prints:

* events delivered per second (quotes + orders, summed over clients);
* p50/p99 delay from the tick at the terminal (the tick's own ``time_msc``, real UTC) to the client;
* quotes missed per client (ticks not seen: coalesced by the poll interval or by a slow socket);
* ``order`` events lost: expected (3 per order per client) minus received, and seq gaps (must be 0).

Clients run in separate processes (asyncio + websockets) on the same machine as everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Procs, free_port, pct, request, setup_django, wait_port  # noqa: E402

PYTHON = sys.executable
TERMINAL = "bench-events"
OFFSET = 10800


# --- clients (separate processes) ------------------------------------------------------------------------
async def _client(url: str, headers: dict, ready: asyncio.Event, stop: asyncio.Event, out: dict) -> None:
    import websockets

    async with websockets.connect(url, additional_headers=headers, open_timeout=60, max_size=None,
                                  ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["quote:EURUSD", "order", "position", "account"],
                                  "request_id": "s"}))
        while True:
            message = json.loads(await ws.recv())
            if message.get("request_id") == "s":
                break
        out["connected"] += 1
        if out["connected"] == out["target"]:
            ready.set()
        ticks, seqs, orders = set(), [], 0
        while not (stop.is_set() and (orders >= out["expected"] or time.monotonic() > out["drain_deadline"])):
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
            except TimeoutError:
                continue
            now_ms = time.time() * 1000
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "quote:EURUSD":
                if stop.is_set():
                    continue  # the phase is over: only order events are still awaited
                if message["data"]["time_msc"] >= out["phase_start_ms"]:  # not the initial latest value
                    ticks.add(message["data"]["bid"])
                    out["delays"].append(now_ms - message["data"]["time_msc"])
                out["quotes"] += 1
            elif kind in ("order", "position", "account"):
                seqs.append(message["seq"])
                if kind == "order" and message["data"].get("taskId"):
                    out["orders"] += 1
                    orders += 1
                else:
                    out["others"] += 1
        out["per_client_ticks"].append(len(ticks))
        out["seq_gaps"] += sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b != a + 1)
        out["per_client_orders"].append(orders)


def client_process(url: str, headers: dict, count: int, conn, control, expected, start_ms: float) -> None:
    """Open ``count`` sockets, report ready, record until told to stop, send the figures back."""

    async def main() -> None:
        out = {"target": count, "connected": 0, "delays": [], "quotes": 0, "orders": 0, "others": 0, "seq_gaps": 0,
               "phase_start_ms": start_ms, "errors": [], "expected": 1 << 30, "drain_deadline": 0.0,
               "per_client_ticks": [], "per_client_orders": []}
        ready, stop = asyncio.Event(), asyncio.Event()
        sem = asyncio.Semaphore(50)

        async def one() -> None:
            async with sem:
                pass
            try:
                await _client(url, headers, ready, stop, out)
            except Exception as exc:  # counted and shown, not hidden
                out["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
                out["target"] -= 1  # a socket that failed is not waited for
                if out["connected"] >= out["target"]:
                    ready.set()

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.wait_for(ready.wait(), timeout=300)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, control.wait)  # the driver sets it when the phase is over
        # Quotes count only until now + 2 s; order events are awaited until each client has all of them
        # (or 60 s): a late order event is late, not lost.
        out["expected"] = expected.value
        out["drain_deadline"] = time.monotonic() + 60
        await asyncio.sleep(2.0)
        out["quotes_closed_at"] = time.time() * 1000
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(out)

    asyncio.run(main())


def run_phase(url: str, web_port: int, auth: dict, sid: str, ctl, clients: int, seconds: float,
              rate: float) -> dict:
    procs = 1 if clients < 50 else 2
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    expected = ctx.Value("i", 0)
    pipes, children = [], []
    start_ms = time.time() * 1000  # ticks from here on count (not the latest value a socket gets first)
    headers = {**auth, "x-session-id": sid}
    for i in range(procs):
        parent, child = ctx.Pipe()
        share = clients // procs + (1 if i < clients % procs else 0)
        p = ctx.Process(target=client_process, args=(f"{url}/events", headers, share, child, done, expected,
                                                             start_ms))
        p.start()
        pipes.append(parent)
        children.append(p)
    for parent in pipes:
        assert parent.recv() == "ready"
    time.sleep(0.5)
    base = 1.10000
    n_ticks = int(seconds * rate)
    orders = 0
    started = time.monotonic()
    next_order = started
    for i in range(n_ticks):
        target = started + i / rate
        while (delay := target - time.monotonic()) > 0:
            time.sleep(delay)
        bid = round(base + (i % 500) * 0.00001 + (0.01 if (i // 500) % 2 else 0), 5)
        ctl.set_price("EURUSD", bid, round(bid + 0.0001, 5))
        if time.monotonic() >= next_order:
            status, body = request(web_port, "POST", "/mt5/client/orders",
                                   {"symbol": "EURUSD", "type": "BUY" if orders % 2 == 0 else "SELL", "volume": 0.01},
                                   {**headers, "x-request-id": f"bench-ev-{clients}-{orders}-{time.time_ns()}"})
            assert status == 202, body
            orders += 1
            next_order += 1.0
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # the last orders finish
    expected.value = 3 * orders
    done.set()
    outs = [parent.recv() for parent in pipes]
    for p in children:
        p.join(30)
    delays = [d for o in outs for d in o["delays"]]
    per_ticks = [t for o in outs for t in o["per_client_ticks"]]
    per_orders = [t for o in outs for t in o["per_client_orders"]]
    return {
        "clients": clients, "ticks": n_ticks, "orders": orders, "elapsed": elapsed,
        "delivered": sum(o["quotes"] + o["orders"] + o["others"] for o in outs),
        "p50": pct(delays, 50), "p99": pct(delays, 99),
        "ticks_missed_avg": (sum(n_ticks - t for t in per_ticks) / len(per_ticks)) if per_ticks else float("nan"),
        "orders_lost": sum(max(0, 3 * orders - t) for t in per_orders),
        "seq_gaps": sum(o["seq_gaps"] for o in outs),
        "reporting": len(per_ticks),
        "errors": [e for o in outs for e in o["errors"]],
    }


def main() -> None:  # one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=10.0, help="ticks per second driven at the terminal")
    parser.add_argument("--clients", default="1,100,1000")
    parser.add_argument("--poll", type=float, default=0.05, help="poller interval, seconds")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-events-"))
    sim_port, web_port = free_port(), free_port()
    address = f"127.0.0.1:{sim_port}"
    (work / "sim.yaml").write_text(f"server:\n  offset_seconds: {OFFSET}\naccount_defaults:\n  balance: 100000000.0\n")
    (work / "terminals.yaml").write_text(
        f"terminals:\n  - name: {TERMINAL}\n    backend: sim\n    address: {address}\n    utc_offset: {OFFSET}\n")
    env = {**os.environ, "BRIDGE_TERMINALS_FILE": str(work / "terminals.yaml"), "BRIDGE_VAR_DIR": str(work),
           "BRIDGE_THROTTLE_RATE": "100000000/min", "LOG_LEVEL": "WARNING", "BRIDGE_SESSION_TTL": "3600",
           # One API key opens every socket of the bench: the per-key connect limit would refuse most.
           "BRIDGE_EVENTS_CONNECT_RATE": "off"}
    procs = Procs(work)
    try:
        setup_django(env, ("BRIDGE_TERMINALS_FILE", "BRIDGE_VAR_DIR", "BRIDGE_THROTTLE_RATE", "BRIDGE_SESSION_TTL"))
        from mt5sim.control import Control
        from sessions.api_keys import create_api_key
        from sessions.models import Workspace

        print(f"stack: 1 daphne process; per terminal: pinned worker, poller (every {args.poll} s); "
              "1 mt5sim terminal at UTC+3; clients in 1-2 separate processes; all on this machine's cores")
        print(f"load: EURUSD set_price at {args.rate:g} ticks/s for {args.seconds:g} s, 1 market order/s over REST; "
              "every client subscribed to quote:EURUSD, order, position, account\n")
        procs.start("sim", [PYTHON, "-m", "mt5sim", "serve", "--address", address, "--config",
                            str(work / "sim.yaml"), "--state", str(work / "state"), "--seed", "5"], env)
        wait_port(sim_port)
        procs.start("worker", [PYTHON, "manage.py", "run_terminal_worker", TERMINAL, "--loglevel", "WARNING"], env)
        procs.start("poller", [PYTHON, "manage.py", "run_terminal_poller", TERMINAL, "--interval", str(args.poll)],
                    env)
        procs.start("web", [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port),
                            "bridge_project.asgi:application"], env)
        wait_port(web_port)
        procs.wait_log("poller", "ready")
        from sessions.models import LIVE_STATUSES, BridgeSession

        # a previous run that was interrupted may have left its session open on the bench's terminal
        BridgeSession.objects.filter(terminal__name=TERMINAL, status__in=LIVE_STATUSES).update(status="closed")
        workspace, _ = Workspace.objects.get_or_create(name=f"bench-events-{int(time.time())}")
        auth = {"Authorization": f"Bearer {create_api_key(workspace)[1]}"}
        deadline = time.monotonic() + 90
        while True:
            status, session = request(web_port, "POST", "/mt5/client/session/open?wait=20",
                                      {"accountId": "bench", "server": "Demo", "login": 5001, "password": "pw",
                                       "terminal": TERMINAL}, auth)
            if status == 201 and session.get("status") == "active":
                break
            if status == 201:
                request(web_port, "DELETE", f"/mt5/client/session/{session['sessionId']}", None, auth)
            if time.monotonic() > deadline:
                raise SystemExit(f"could not open a session: {status} {session}")
            time.sleep(1)
        sid = session["sessionId"]
        ctl = Control(address)
        ctl.freeze_feed("EURUSD")
        print(f"{'clients':>7} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'ticks':>6} {'missed/client':>13} "
              f"{'orders':>6} {'order ev lost':>13} {'seq gaps':>8}")
        for clients in (int(c) for c in args.clients.split(",")):
            r = run_phase(f"ws://127.0.0.1:{web_port}", web_port, auth, sid, ctl, clients, args.seconds, args.rate)
            print(f"{r['clients']:>7} {r['delivered'] / r['elapsed']:>10.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
                  f"{r['ticks']:>6} {r['ticks_missed_avg']:>13.2f} {r['orders']:>6} {r['orders_lost']:>13} "
                  f"{r['seq_gaps']:>8}" + ("" if r["reporting"] == clients else f"  ({r['reporting']} reported)"),
                  flush=True)
            for error in sorted(set(r["errors"]))[:5]:
                print(f"        client error: {error}")
        request(web_port, "DELETE", f"/mt5/client/session/{sid}", None, auth)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
