"""mt5sim round trips: symbol_info_tick and order_send per second, p50/p99, from 1 and from 4 clients.

    .venv/bin/python bench/mt5sim_bench.py [--seconds 5]

Measures two layouts in one run: a single-process terminal (``python -m mt5sim serve``) and a
terminal connected to a trade server (``python -m mt5sim broker`` + ``serve --broker``), each on
free ports with a temporary state dir. Each phase runs in client *processes* (the MetaTrader5
module is one connection per process); it prints the machine and the figures side by side, then
stops every process it started. About a minute with the default phase length.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, pct  # noqa: E402
from bridge_project.processes import start_group, stop_group  # noqa: E402

_LISTENING = re.compile(r"mt5sim listening on (\S+?):(\d+)\b")
_BROKER_LISTENING = re.compile(r"mt5sim broker listening on (\S+?):(\d+)\b")
LAYOUTS = {"single": "one process (serve)", "broker": "terminal + broker"}


def worker(address: str, method: str, seconds: float, login: int, start_at: float) -> None:
    """One client process: hammer ``method`` for ``seconds`` from ``start_at``; print count and latencies."""
    import mt5sim as mt5

    if not mt5.initialize(address, login=login, password="bench"):
        print(json.dumps({"error": list(mt5.last_error())}))
        return
    tick = mt5.symbol_info_tick("EURUSD")
    base = {"action": mt5.TRADE_ACTION_DEAL, "symbol": "EURUSD", "volume": 0.01, "deviation": 1000,
            "type_filling": mt5.ORDER_FILLING_IOC, "magic": 42, "comment": "bench"}
    latencies: list[float] = []
    errors = 0
    open_ticket = 0
    perf = time.perf_counter
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = perf() + seconds
    if method == "symbol_info_tick":
        while True:
            t0 = perf()
            if mt5.symbol_info_tick("EURUSD") is None:
                errors += 1
            t1 = perf()
            latencies.append(t1 - t0)
            if t1 >= deadline:
                break
    else:
        while True:
            if open_ticket:  # close what the previous call opened: positions stay bounded
                request = dict(base, type=mt5.ORDER_TYPE_SELL, price=tick.bid, position=open_ticket)
            else:
                request = dict(base, type=mt5.ORDER_TYPE_BUY, price=tick.ask)
            t0 = perf()
            result = mt5.order_send(request)
            t1 = perf()
            latencies.append(t1 - t0)
            if result is None or result.retcode != mt5.TRADE_RETCODE_DONE:
                errors += 1
                open_ticket = 0
            else:
                open_ticket = 0 if open_ticket else result.order
            if t1 >= deadline:
                break
    mt5.shutdown()
    print(json.dumps({"count": len(latencies), "errors": errors, "seconds": seconds,
                      "lat_ms": [round(x * 1000, 4) for x in latencies]}))


def _start(argv: list[str], log_path: Path, pattern: re.Pattern) -> tuple[subprocess.Popen, str]:
    """Start an mt5sim process and wait for its "listening on" line: (process, address)."""
    proc = start_group([sys.executable, "-m", "mt5sim", *argv], log_path=log_path, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = pattern.search(log_path.read_text(errors="replace"))
        if match:
            return proc, f"{match.group(1)}:{match.group(2)}"
        if proc.poll() is not None:
            raise SystemExit(f"{argv[0]} exited before listening:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    _stop(proc)
    raise SystemExit(f"{argv[0]} not listening after 60 s")


def _stop(proc: subprocess.Popen) -> None:
    stop_group(proc, grace=20)


def start_layout(layout: str, workdir: str) -> tuple[list[subprocess.Popen], str]:
    """``single``: one ``serve``; ``broker``: a ``broker`` and one ``serve --broker``. (processes, terminal address)"""
    base = Path(workdir) / layout
    base.mkdir()
    if layout == "single":
        proc, address = _start(["serve", "--address", "127.0.0.1:0", "--state", str(base / "state"), "--seed", "7"],
                               base / "terminal.log", _LISTENING)
        return [proc], address
    broker, broker_address = _start(["broker", "--address", "127.0.0.1:0", "--state", str(base / "broker"),
                                     "--seed", "7"], base / "broker.log", _BROKER_LISTENING)
    try:
        terminal, address = _start(["serve", "--broker", broker_address, "--address", "127.0.0.1:0", "--state",
                                    str(base / "terminal")], base / "terminal.log", _LISTENING)
    except BaseException:
        _stop(broker)
        raise
    return [terminal, broker], address


def run_phase(address: str, method: str, clients: int, seconds: float, login: int) -> dict:
    """``clients`` processes on one account: a terminal is logged in to one account at a time (clients on
    different logins would switch it under each other and close positions of the wrong account)."""
    start_at = time.time() + 1.5  # every client connected and logged in before the clock starts
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", address, method, str(seconds),
                               str(login), str(start_at)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(clients)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        line = out.strip().splitlines()[-1] if out.strip() else "{}"
        results.append(json.loads(line))
    failed = [r for r in results if "count" not in r]
    if failed:
        raise SystemExit(f"client failed: {failed}")
    latencies = [x for r in results for x in r["lat_ms"]]
    total = sum(r["count"] for r in results)
    return {"method": method, "clients": clients, "calls": total, "errors": sum(r["errors"] for r in results),
            "per_second": total / seconds, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured phase")
    parser.add_argument("--worker", nargs=5, metavar=("ADDRESS", "METHOD", "SECONDS", "LOGIN", "START_AT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        address, method, seconds, login, start_at = args.worker
        worker(address, method, float(seconds), int(login), float(start_at))
        return 0

    seconds = max(1.0, min(args.seconds, 20.0))
    print(f"machine: {machine()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mt5sim-bench-") as workdir:
        login = 90_000_000
        for layout, title in LAYOUTS.items():
            print(f"starting {title} ...", flush=True)
            procs, address = start_layout(layout, workdir)
            print(f"terminal at {address} (pids {', '.join(str(p.pid) for p in procs)})", flush=True)
            try:
                for method in ("symbol_info_tick", "order_send"):
                    for clients in (1, 4):
                        print(f"  {method:<17} {clients} client(s), {seconds:.0f} s ...", flush=True)
                        row = run_phase(address, method, clients, seconds, login)
                        login += 10
                        row["layout"] = layout
                        rows.append(row)
                        print(f"    {row['per_second']:>8.0f} calls/s  p50 {row['p50_ms']:.3f} ms  "
                              f"p99 {row['p99_ms']:.3f} ms  errors {row['errors']}", flush=True)
            finally:
                for proc in procs:
                    _stop(proc)
    print()
    print(f"mt5sim round trips ({machine()})")
    print(f"{'call':<18} {'clients':>7} | {'one process (serve)':^37} | {'terminal + broker':^37}")
    print(f"{'':<18} {'':>7} | {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
          f" | {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    by_key = {(r["layout"], r["method"], r["clients"]): r for r in rows}
    for method in ("symbol_info_tick", "order_send"):
        for clients in (1, 4):
            cells = []
            for layout in LAYOUTS:
                r = by_key[(layout, method, clients)]
                cells.append(f"{r['per_second']:>9.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['errors']:>7}")
            print(f"{method:<18} {clients:>7} | {cells[0]} | {cells[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
