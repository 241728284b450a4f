"""Events benchmark (issue #14): one command, starts its own stack, prints the machine and the figures.

    REDIS_URL=redis://127.0.0.1:6379/4 .venv/bin/python bench/events.py [--clients 1,300,1000] \
        [--processes 1,2] [--rate 10] [--orders 20] [--order-rate 2] [--poll 0.05]

It starts (free ports, stopped at the end): one mt5sim terminal (UTC+3), its pinned worker with the
terminal's poller (every ``--poll`` s), and for each count of ``--processes`` that many daphne processes
on ONE listening socket, as ``run_bridge`` runs them (``BRIDGE_WEB_PROCESSES``; ``python -m workers.stack
daphne --fd``); it migrates the database (SQLite in a temp dir unless ``DATABASE_URL`` is set), makes a
workspace, an API key and a session. For each socket count, the sockets (in 1-2 client processes,
asyncio + websockets) subscribe to ``order`` and ``quote:EURUSD``; the driver drives EURUSD with mt5sim's
``set_price`` at ``--rate`` ticks/s (the random feed frozen, each tick a distinct price) and places
``--orders`` market orders at ``--order-rate``/s over REST. Per row:

* ``filled`` p50/p99: from the driver's clock just before each POST to each socket's receive of that
  task's ``filled`` event (socket x order); under it, where that time goes: POST -> the task final in
  the ledger (``finished_at``: web tier, queue, worker, terminal; per order), and ledger -> socket
  (publish, relay, fan-out, client; per socket x order);
* ``quote`` p50/p99: from the tick's own ``time_msc`` (real UTC) to the socket's receive;
* ticks missed per socket (ticks driven that a socket did not get: 0 means every tick reached it);
* ``lost``: kept events of the session's log (``order``, ``session``) published during the row that a
  socket did not get, summed over sockets; ``misordered``: a seq not above the one before.

``--fanout`` measures the delivery path alone (no terminal, worker or poller), for issue #14:

    .venv/bin/python bench/events.py --fanout \\
        [--sockets 1,300] [--processes 1,2] [--events 100] [--event-rate 20] [--burst 1000]

It starts its own ``redis-server`` (free port, no persistence) and, for each process count, that many
daphne processes on it; the sockets (one session, each subscribed to ``order``) are spread over them
round robin. This process publishes with ``streams.publisher`` as a worker does. Printed per row: p50,
p99 and max delay of ``--events`` order events published at ``--event-rate``/s, from ``time.time()``
just before the publish (one EVALSHA: INCR, XADD to the session stream and to the fan-out stream) to
the client's receive; then a burst of ``--burst`` events (pipelined, 50 per round trip): deliveries per
second summed over sockets, events per second (per socket), p99 delay; and over both phases, summed
over sockets: events missing when the bench stopped waiting (3 s + 1 s per 10,000 deliveries of the
burst, at most 60 s: late or lost), delivered twice, and seq gaps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Procs, free_port, machine, open_session, pct, request, setup_django, wait_port  # noqa: E402
from bridge_project.processes import start_group  # noqa: E402

PYTHON = sys.executable
TERMINAL = "bench-events"
OFFSET = 10800


# --- clients (separate processes) ------------------------------------------------------------------------
CHANNELS = ["order", "quote:EURUSD"]  # as the table: every socket subscribed to these two
KEPT = ("order", "session")  # of what they get, the seq-kept channels: each must arrive, in seq order


async def _client(url: str, headers: dict, ready: asyncio.Event, stop: asyncio.Event, out: dict) -> None:
    import websockets

    async with websockets.connect(url, additional_headers=headers, open_timeout=120, max_size=None,
                                  ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": CHANNELS, "request_id": "s"}))
        while True:
            message = json.loads(await ws.recv())
            if message.get("request_id") == "s":
                break
        out["connected"] += 1
        if out["connected"] >= out["target"]:
            ready.set()
        ticks: list[int] = []
        seqs: list[int] = []
        filled: dict[str, float] = {}
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=0.25)
            except TimeoutError:
                continue
            now_ms = time.time() * 1000
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "quote:EURUSD":
                at = message["data"]["time_msc"]
                if at >= out["phase_start_ms"]:  # not the latest value a socket gets when it subscribes
                    ticks.append(at)
                    out["quote_delays"].append(now_ms - at)
            elif kind in KEPT:
                seqs.append(message["seq"])
                data = message.get("data") or {}
                if kind == "order" and data.get("state") == "filled" and "change" not in data:
                    filled[data["taskId"]] = now_ms
        out["sockets"].append({"ticks": ticks, "seqs": seqs, "filled": filled})


async def _raw_client(url: str, headers: dict, ready: asyncio.Event, stop: asyncio.Event, out: dict) -> None:
    """The same as ``_client`` on ``bench.raw_ws`` (what a socket got, parsed with orjson)."""
    import orjson

    from bench.raw_ws import RawSocket

    ticks: list[int] = []
    seqs: list[int] = []
    filled: dict[str, float] = {}
    subscribed = asyncio.get_running_loop().create_future()

    def on_text(raw: bytes, now: float) -> None:
        message = orjson.loads(raw)
        kind = message.get("type")
        if kind == "quote:EURUSD":
            at = message["data"]["time_msc"]
            if at >= out["phase_start_ms"]:
                ticks.append(at)
                out["quote_delays"].append(now * 1000 - at)
        elif kind in KEPT:
            seqs.append(message["seq"])
            data = message.get("data") or {}
            if kind == "order" and data.get("state") == "filled" and "change" not in data:
                filled[data["taskId"]] = now * 1000
        elif message.get("request_id") == "s" and not subscribed.done():
            subscribed.set_result(None)

    ws = await RawSocket.connect(url, headers, on_text)
    try:
        ws.send_text(json.dumps({"type": "subscribe", "channels": CHANNELS, "request_id": "s"}))
        await asyncio.wait_for(subscribed, 120)
        out["connected"] += 1
        if out["connected"] >= out["target"]:
            ready.set()
        await stop.wait()
    finally:
        ws.close()
    out["sockets"].append({"ticks": ticks, "seqs": seqs, "filled": filled})


def client_process(url: str, headers: dict, count: int, conn, control, start_ms: float,
                   kind: str = "raw") -> None:
    """Open ``count`` sockets (at most 50 handshakes at once), report ready, record until told to stop,
    send what each socket received back."""

    async def main() -> None:
        out = {"target": count, "connected": 0, "quote_delays": [], "phase_start_ms": start_ms, "errors": [],
               "sockets": []}
        ready, stop = asyncio.Event(), asyncio.Event()
        sem = asyncio.Semaphore(50)

        async def one() -> None:
            try:
                async with sem:
                    await asyncio.sleep(0)
                await (_raw_client if kind == "raw" else _client)(url, headers, ready, stop, out)
            except Exception as exc:  # counted and shown, not hidden
                out["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
                out["target"] -= 1  # a socket that failed is not waited for
                if out["connected"] >= out["target"]:
                    ready.set()

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        await asyncio.wait_for(ready.wait(), timeout=300)
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, control.wait)  # set by the driver: stop
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(out)

    asyncio.run(main())


def _kept_seqs(session_id: str, after: int) -> list[int]:
    """The seqs of the session's kept events after ``after`` on the channels the sockets get (the log)."""
    from streams.keys import log_key
    from streams.publisher import sync_redis

    seqs = []
    for entry_id, fields in sync_redis().xrange(log_key(session_id), f"{after + 1}-0", "+"):
        if (fields.get(b"c") or b"").decode() in KEPT:
            seqs.append(int(entry_id.decode().split("-", 1)[0]))
    return seqs


def _session_seq(session_id: str) -> int:
    from streams.keys import seq_key
    from streams.publisher import sync_redis

    return int(sync_redis().hget(seq_key(session_id), "n") or 0)


def run_phase(url: str, web_port: int, auth: dict, sid: str, ctl, sockets: int, args: argparse.Namespace) -> dict:
    """``sockets`` sockets on the session; ticks at ``args.rate``/s and ``args.orders`` market orders at
    ``args.order_rate``/s; what each socket received, against the ticks and the session's log."""
    procs = 1 if sockets < 50 else 2
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    pipes, children = [], []
    start_ms = time.time() * 1000
    headers = {**auth, "x-session-id": sid}
    for i in range(procs):
        parent, child = ctx.Pipe()
        share = sockets // procs + (1 if i < sockets % procs else 0)
        p = ctx.Process(target=client_process, args=(f"{url}/events", headers, share, child, done, start_ms,
                                                     args.client))
        p.start()
        pipes.append(parent)
        children.append(p)
    for parent in pipes:
        assert parent.recv() == "ready"
    time.sleep(0.5)
    seq_before = _session_seq(sid)
    base = 1.10000
    posted: dict[str, float] = {}  # task id -> wall ms just before its POST
    started = time.monotonic()
    next_order, order_gap = started, 1.0 / args.order_rate
    i = 0
    while len(posted) < args.orders:
        target = started + i / args.rate
        while (delay := min(target, next_order) - time.monotonic()) > 0:
            time.sleep(delay)
        if time.monotonic() >= target:
            bid = round(base + (i % 500) * 0.00001 + (0.01 if (i // 500) % 2 else 0), 5)
            ctl.set_price("EURUSD", bid, round(bid + 0.0001, 5))
            i += 1
        if time.monotonic() >= next_order:
            sent_at = time.time() * 1000
            status, body = request(web_port, "POST", "/mt5/client/orders",
                                   {"symbol": "EURUSD", "type": "BUY" if len(posted) % 2 == 0 else "SELL",
                                    "volume": 0.01},
                                   {**headers, "x-request-id": f"bench-ev-{sockets}-{len(posted)}-{time.time_ns()}"})
            assert status == 202, body
            posted[body["taskId"]] = sent_at
            next_order += order_gap
    elapsed = time.monotonic() - started
    # Every socket should now get the last orders' events: wait for the log to settle, then give the
    # sockets until every kept event reached all of them (or args.drain seconds: late, reported as missing).
    from trading.models import TradeTask

    deadline = time.monotonic() + 30
    while (TradeTask.objects.filter(id__in=list(posted)).exclude(state__in=("filled", "failed", "rejected",
                                                                          "cancelled")).exists()
           and time.monotonic() < deadline):
        time.sleep(0.1)
    time.sleep(1.0)
    expected = _kept_seqs(sid, seq_before)
    time.sleep(min(args.drain, 2.0 + sockets / 500))
    done.set()
    outs = [parent.recv() for parent in pipes]
    for p in children:
        p.join(30)
    per_socket = [sock for o in outs for sock in o["sockets"]]
    want = set(expected)
    filled_delays = [at - posted[task] for sock in per_socket for task, at in sock["filled"].items() if task in posted]
    # Where the time goes: POST -> the task final in the ledger (web tier, queue, worker, terminal), then
    # ledger -> each socket (publish, relay, fan-out, client).
    finished = {t.id: t.finished_at.timestamp() * 1000
                for t in TradeTask.objects.filter(id__in=list(posted), finished_at__isnull=False)}
    ledger_delays = [finished[task] - posted[task] for task in finished]
    delivery_delays = [at - finished[task] for sock in per_socket for task, at in sock["filled"].items()
                       if task in finished]
    return {
        "sockets": len(per_socket), "ticks": i, "orders": len(posted), "elapsed": elapsed,
        "filled_p50": pct(filled_delays, 50), "filled_p99": pct(filled_delays, 99),
        "ledger_p50": pct(ledger_delays, 50), "ledger_p99": pct(ledger_delays, 99),
        "delivery_p50": pct(delivery_delays, 50), "delivery_p99": pct(delivery_delays, 99),
        "filled_missing": sum(len(posted) - len(set(sock["filled"]) & set(posted)) for sock in per_socket),
        "quote_p50": pct([d for o in outs for d in o["quote_delays"]], 50),
        "quote_p99": pct([d for o in outs for d in o["quote_delays"]], 99),
        "ticks_missed": (sum(max(0, i - len(set(sock["ticks"]))) for sock in per_socket) / len(per_socket)
                         if per_socket else float("nan")),
        "kept": len(expected),
        "lost": sum(len(want - set(sock["seqs"])) for sock in per_socket),
        "out_of_order": sum(1 for sock in per_socket for a, b in zip(sock["seqs"], sock["seqs"][1:], strict=False)
                            if b <= a),
        "errors": [e for o in outs for e in o["errors"]],
    }


# --- fan-out mode: XADD -> socket latency and throughput, 1..N daphne processes on one stream ---------------
async def _fanout_connect(url: str, headers: dict):
    import websockets

    ws = await websockets.connect(url, additional_headers=headers, open_timeout=120, max_size=None,
                                  ping_interval=None)
    await ws.send(json.dumps({"type": "subscribe", "channels": ["order"], "request_id": "s"}))
    while True:
        if json.loads(await ws.recv()).get("request_id") == "s":
            return ws


async def _fanout_read(ws, out: dict, stop: asyncio.Event) -> None:
    seen: dict[int, int] = {}
    last_seq = None
    try:
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=0.25)
            except TimeoutError:
                continue
            now = time.time()
            message = json.loads(raw)
            if message.get("type") != "order":
                continue
            data = message["data"]
            seen[data["n"]] = seen.get(data["n"], 0) + 1
            if last_seq is not None and message["seq"] != last_seq + 1:
                out["seq_gaps"] += 1
            last_seq = message["seq"]
            out["delays"][data["phase"]].append((now - data["t"]) * 1000)
            out["last_at"][data["phase"]] = max(out["last_at"].get(data["phase"], 0.0), now)
    finally:
        out["received"].append(seen)
        await ws.close()


async def _fanout_raw(url: str, headers: dict, out: dict, stop: asyncio.Event, handshakes: asyncio.Semaphore,
                      connected: Callable[[], None]) -> None:
    """The fan-out socket on ``bench.raw_ws``: the same records as ``_fanout_read``."""
    import orjson

    from bench.raw_ws import RawSocket

    seen: dict[int, int] = {}
    last = {"seq": None}
    subscribed = asyncio.get_running_loop().create_future()

    def on_text(raw: bytes, now: float) -> None:
        message = orjson.loads(raw)
        if message.get("type") != "order":
            if message.get("request_id") == "s" and not subscribed.done():
                subscribed.set_result(None)
            return
        data = message["data"]
        seen[data["n"]] = seen.get(data["n"], 0) + 1
        if last["seq"] is not None and message["seq"] != last["seq"] + 1:
            out["seq_gaps"] += 1
        last["seq"] = message["seq"]
        out["delays"][data["phase"]].append((now - data["t"]) * 1000)
        if now > out["last_at"].get(data["phase"], 0.0):
            out["last_at"][data["phase"]] = now

    async with handshakes:
        ws = await RawSocket.connect(url, headers, on_text)
        ws.send_text(json.dumps({"type": "subscribe", "channels": ["order"], "request_id": "s"}))
        await asyncio.wait_for(subscribed, 120)
    connected()
    try:
        await stop.wait()
    finally:
        out["received"].append(seen)
        ws.close()


def fanout_client_process(urls: list[str], headers: dict, count: int, conn, control, kind: str = "raw") -> None:
    """``count`` sockets spread over ``urls`` (round robin), each subscribed to ``order``."""

    async def main() -> None:
        out = {"target": count, "connected": 0, "delays": {"latency": [], "burst": []}, "last_at": {},
               "seq_gaps": 0, "received": [], "errors": []}
        ready, stop = asyncio.Event(), asyncio.Event()
        sem = asyncio.Semaphore(25)

        def connected() -> None:
            out["connected"] += 1
            if out["connected"] >= out["target"]:
                ready.set()

        def failed(exc: Exception) -> None:  # counted and shown
            out["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
            out["target"] -= 1
            if out["connected"] >= out["target"]:
                ready.set()

        async def one(i: int) -> None:
            if kind == "raw":
                try:  # at most 25 handshakes at once
                    await _fanout_raw(urls[i % len(urls)], headers, out, stop, sem, connected)
                except Exception as exc:
                    failed(exc)
                return
            try:
                async with sem:
                    ws = await _fanout_connect(urls[i % len(urls)], headers)
            except Exception as exc:
                failed(exc)
                return
            connected()
            await _fanout_read(ws, out, stop)

        tasks = [asyncio.create_task(one(i)) for i in range(count)]
        await asyncio.wait_for(ready.wait(), timeout=300)
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, control.wait)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(out)

    asyncio.run(main())


def fanout_phase(urls: list[str], headers: dict, session_id: str, sockets: int, events: int, rate: float,
                 burst: int, client: str = "raw") -> dict:
    from streams.publisher import publish_session_event, publish_session_events

    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    n_clients = 1 if sockets < 50 else 2
    pipes, children = [], []
    for i in range(n_clients):
        parent, child = ctx.Pipe()
        share = sockets // n_clients + (1 if i < sockets % n_clients else 0)
        # each client process starts its round robin at another daphne: sockets spread evenly
        mine = urls[i % len(urls):] + urls[:i % len(urls)]
        p = ctx.Process(target=fanout_client_process, args=([f"{u}/events" for u in mine], headers, share, child,
                                                           done, client))
        p.start()
        pipes.append(parent)
        children.append(p)
    for parent in pipes:
        assert parent.recv() == "ready"
    time.sleep(1.0)
    # 1) latency: one event every 1/rate s
    n = 0
    started = time.monotonic()
    for i in range(events):
        target = started + i / rate
        while (delay := target - time.monotonic()) > 0:
            time.sleep(delay)
        publish_session_event(session_id, "order", {"taskId": f"tsk_bench_{n}", "state": "filled", "n": n,
                                                    "phase": "latency", "t": time.time()})
        n += 1
    time.sleep(1.0)
    # 2) throughput: ``burst`` events as fast as this process publishes them (pipelines of 50)
    burst_start = time.time()
    for first in range(0, burst, 50):
        publish_session_events(session_id, [
            ("order", {"taskId": f"tsk_bench_{n + first + k}", "state": "filled", "n": n + first + k,
                       "phase": "burst", "t": time.time()}, None) for k in range(min(50, burst - first))])
    n += burst
    publish_seconds = time.time() - burst_start
    total = n

    # the clients stop once every socket has had the time to receive the burst (or 60 s at most)
    time.sleep(min(60.0, 3.0 + burst * sockets / 10000))
    done.set()
    outs = [parent.recv() for parent in pipes]
    for p in children:
        p.join(30)
    received = [seen for o in outs for seen in o["received"]]
    lost = sum(total - len(seen) for seen in received)
    dups = sum(c - 1 for seen in received for c in seen.values() if c > 1)
    last_burst = max((o["last_at"].get("burst", 0.0) for o in outs), default=0.0)
    burst_delivered = sum(len(o["delays"]["burst"]) for o in outs)
    lat = [d for o in outs for d in o["delays"]["latency"]]
    bdel = [d for o in outs for d in o["delays"]["burst"]]
    span = last_burst - burst_start if last_burst else float("nan")
    return {"sockets": len(received), "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat, default=float("nan")),
            "burst": burst, "burst_per_s": burst_delivered / span,
            "burst_events_per_s": burst_delivered / max(1, len(received)) / span, "publish_s": publish_seconds,
            "burst_p99": pct(bdel, 99), "lost": lost, "dups": dups, "seq_gaps": sum(o["seq_gaps"] for o in outs),
            "errors": [e for o in outs for e in o["errors"]]}


def fanout_main(args: argparse.Namespace) -> None:
    """XADD -> socket: one private redis-server, 1..N daphne processes on it, sockets spread over them."""
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    redis_port = free_port()
    procs = Procs(work)
    # The database: DATABASE_URL if set, else SQLite in the work dir (never the checkout's own var/).
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "LOG_LEVEL": "WARNING",
           "BRIDGE_VAR_DIR": str(work), "BRIDGE_SESSION_TTL": "3600",  # the session outlives every row
           "BRIDGE_EVENTS_CONNECT_RATE": "off", "BRIDGE_EVENTS_CONNECT_FAIL_RATE_IP": "off"}
    try:
        procs.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)], env)
        wait_port(redis_port)
        setup_django(env, ("REDIS_URL", "BRIDGE_VAR_DIR", "BRIDGE_SESSION_TTL"))
        from tests.factories import make_api_key, make_session
        from workers.stack import daphne_argv

        session = make_session()
        key = make_api_key(session.workspace)[1]
        headers = {"Authorization": f"Bearer {key}", "x-session-id": session.id}
        try:
            rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
            commit = rev.stdout.strip()
        except OSError:
            commit = "?"
        print(f"code: {ROOT} (git HEAD {commit or '?'} plus its working tree); "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"fan-out: private redis-server; publisher = this process (streams.publisher, as a worker does); "
              f"every socket subscribed to order; latency: {args.events} events at {args.event_rate:g}/s, "
              f"from the publisher's time.time() just before the XADD script to the client's recv; "
              f"throughput: a burst of {args.burst} events (pipelines of 50); clients in 1-2 processes "
              f"({args.client} client)\n")
        print(f"{'daphne':>6} {'sockets':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'burst deliv/s':>13} "
              f"{'burst ev/s':>10} {'burst p99 ms':>12} {'missing':>7} {'dup':>4} {'gaps':>5}")
        for n_procs in (int(x) for x in args.processes.split(",")):
            urls = []
            for i in range(n_procs):
                port = free_port()
                procs.start(f"daphne-{n_procs}-{i}", daphne_argv("127.0.0.1", port, PYTHON), env)
                urls.append(f"ws://127.0.0.1:{port}")
            for url in urls:
                wait_port(int(url.rsplit(":", 1)[1]), timeout=60)
            for sockets in (int(x) for x in args.sockets.split(",")):
                r = fanout_phase(urls, headers, session.id, sockets, args.events, args.event_rate, args.burst,
                                 args.client)
                print(f"{n_procs:>6} {r['sockets']:>7} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.1f} "
                      f"{r['burst_per_s']:>13.0f} {r['burst_events_per_s']:>10.0f} {r['burst_p99']:>12.1f} "
                      f"{r['lost']:>7} {r['dups']:>4} {r['seq_gaps']:>5}", flush=True)
                for error in sorted(set(r["errors"]))[:5]:
                    print(f"        client error: {error}")
            for i in range(n_procs):
                procs.stop(f"daphne-{n_procs}-{i}")
    finally:
        procs.stop_all()


def main() -> None:  # one linear script
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="ticks per second driven at the terminal")
    parser.add_argument("--orders", type=int, default=20, help="market orders per row")
    parser.add_argument("--order-rate", type=float, default=2.0, help="market orders per second")
    parser.add_argument("--clients", default="1,300,1000", help="socket counts")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds at most for the last events to arrive")
    parser.add_argument("--poll", type=float, default=0.05, help="poller interval, seconds")
    parser.add_argument("--fanout", action="store_true",
                        help="the fan-out path alone: XADD -> socket latency and throughput (no terminal)")
    parser.add_argument("--sockets", default="1,300", help="--fanout: socket counts")
    parser.add_argument("--processes", default="1,2", help="daphne process counts")
    parser.add_argument("--events", type=int, default=100, help="--fanout: events of the latency phase")
    parser.add_argument("--event-rate", type=float, default=20.0, help="--fanout: events/s of the latency phase")
    parser.add_argument("--burst", type=int, default=1000, help="--fanout: events of the throughput burst")
    parser.add_argument("--client", choices=("raw", "websockets"), default="raw",
                        help="the bench's socket client: bench.raw_ws (default: a few microseconds of Python per "
                             "message, so the figures are the server's) or the websockets library")
    args = parser.parse_args()
    if args.fanout:
        fanout_main(args)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-events-"))
    sim_port = free_port()
    address = f"127.0.0.1:{sim_port}"
    (work / "sim.yaml").write_text(f"server:\n  offset_seconds: {OFFSET}\naccount_defaults:\n  balance: 100000000.0\n")
    (work / "terminals.yaml").write_text(
        f"terminals:\n  - name: {TERMINAL}\n    backend: sim\n    address: {address}\n    utc_offset: {OFFSET}\n")
    env = {**os.environ, "BRIDGE_TERMINALS_FILE": str(work / "terminals.yaml"), "BRIDGE_VAR_DIR": str(work),
           "BRIDGE_THROTTLE_RATE": "100000000/min", "LOG_LEVEL": "WARNING", "BRIDGE_SESSION_TTL": "3600",
           # One API key and one address open every socket of the bench: the connect limits would refuse most.
           "BRIDGE_EVENTS_CONNECT_RATE": "off", "BRIDGE_EVENTS_CONNECT_FAIL_RATE_IP": "off"}
    procs = Procs(work)
    try:
        setup_django(env, ("BRIDGE_TERMINALS_FILE", "BRIDGE_VAR_DIR", "BRIDGE_THROTTLE_RATE", "BRIDGE_SESSION_TTL"))
        from mt5sim.control import Control
        from sessions.api_keys import create_api_key
        from sessions.models import LIVE_STATUSES, BridgeSession, Workspace
        from workers.stack import daphne_fd_argv

        print(f"code: git HEAD {_commit()} (plus its working tree); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"stack: per terminal the pinned worker with its poller (every {args.poll} s); 1 mt5sim terminal at "
              "UTC+3; N daphne processes on one listening socket (as run_bridge's BRIDGE_WEB_PROCESSES); clients "
              f"in 1-2 separate processes ({args.client} client); all on this machine's cores")
        print(f"load: EURUSD set_price at {args.rate:g} ticks/s and {args.orders} market orders at "
              f"{args.order_rate:g}/s over REST; every socket subscribed to {', '.join(CHANNELS)}; filled: from the "
              "client's time just before the POST to the socket's receive of the task's `filled` event; quote: "
              "from the tick's own time_msc (real UTC) to the socket's receive; lost: kept events (order, session) "
              "of the session's log a socket did not get\n")
        procs.start("sim", [PYTHON, "-m", "mt5sim", "serve", "--address", address, "--config",
                            str(work / "sim.yaml"), "--state", str(work / "state"), "--seed", "5"], env)
        wait_port(sim_port)
        procs.start("worker", [PYTHON, "manage.py", "run_terminal_worker", TERMINAL, "--loglevel", "WARNING",
                               "--poll-interval", str(args.poll), "--settings=bridge_project.settings_terminal"],
                    env)
        procs.wait_log("worker", "running in this process")  # its reader and poller threads
        # a previous run that was interrupted may have left its session open on the bench's terminal
        BridgeSession.objects.filter(terminal__name=TERMINAL, status__in=LIVE_STATUSES).update(status="closed")
        workspace, _ = Workspace.objects.get_or_create(name=f"bench-events-{int(time.time())}")
        auth = {"Authorization": f"Bearer {create_api_key(workspace)[1]}"}
        ctl = Control(address)
        ctl.freeze_feed("EURUSD")
        sid = ""
        header = (f"{'daphne':>6} {'sockets':>7} {'filled p50':>10} {'filled p99':>10} {'quote p50':>9} "
                  f"{'quote p99':>9} {'ticks':>5} {'missed/socket':>13} {'kept events':>11} {'lost':>5} "
                  f"{'misordered':>10}")
        rows = []
        for n_web in (int(x) for x in args.processes.split(",")):
            listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
            web_port = listener.getsockname()[1]
            fd = listener.fileno()
            os.set_inheritable(fd, True)
            names = [f"web-{n_web}-{k}" for k in range(n_web)]
            for name in names:
                proc = start_group(daphne_fd_argv(fd, PYTHON), log_path=work / f"{name}.log", env=env, cwd=ROOT,
                                   pass_fds=(fd,))
                procs.procs[name] = proc
            _wait_serving(web_port)
            if not sid:
                sid = open_session(web_port, auth, TERMINAL, "bench", 90, lambda: procs.log("worker"))["sessionId"]
            for sockets in (int(c) for c in args.clients.split(",")):
                print(f"[events {time.strftime('%H:%M:%S')}] {n_web} daphne, {sockets} sockets ...", flush=True)
                r = run_phase(f"ws://127.0.0.1:{web_port}", web_port, auth, sid, ctl, sockets, args)
                row = (f"{n_web:>6} {r['sockets']:>7} {r['filled_p50']:>8.1f}ms {r['filled_p99']:>8.1f}ms "
                       f"{r['quote_p50']:>7.1f}ms {r['quote_p99']:>7.1f}ms {r['ticks']:>5} {r['ticks_missed']:>13.2f} "
                       f"{r['kept']:>11} {r['lost']:>5} {r['out_of_order']:>10}")
                split = (f"        filled = POST -> final in the ledger {r['ledger_p50']:.1f} / {r['ledger_p99']:.1f} ms "
                         f"(p50 / p99, per order) + ledger -> socket {r['delivery_p50']:.1f} / "
                         f"{r['delivery_p99']:.1f} ms (per socket x order)")
                rows.extend([row, split])
                print(header + "\n" + row + "\n" + split, flush=True)
                if r["filled_missing"]:
                    print(f"        filled events not received: {r['filled_missing']} (socket x order)")
                for error in sorted(set(r["errors"]))[:5]:
                    print(f"        client error ({r['errors'].count(error)}x): {error}")
            for name in names:
                procs.stop(name)
            listener.close()
        print(f"\nmachine: {machine()}; load average now: {' '.join(open('/proc/loadavg').read().split()[:3])}")
        print(header)
        print("\n".join(rows))
    finally:
        procs.stop_all()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def _wait_serving(port: int, timeout: float = 60) -> None:
    """Until daphne answers on ``port`` (the socket is listening before any process serves it)."""
    import http.client

    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            connection.getresponse().read()
            connection.close()
            return
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    main()
