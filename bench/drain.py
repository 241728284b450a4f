"""One pinned worker's drain rate and its per-order time, on its own small stack (issue #13, worker side).

    .venv/bin/python bench/drain.py [--db sqlite|postgres] [--drain 1000] [--single 100] [--rounds 1]
        (postgres: DATABASE_URL, default postgres://postgres@127.0.0.1:5432/bridge_drain_bench;
         REDIS_URL, default a redis-server of its own on a free port)

It starts (free ports, stopped at the end): one mt5sim terminal (large balance), the terminal's pinned
worker (``manage.py run_terminal_worker``) and one uvicorn process (only to open the session as a client
does). SQLite is the embedded default (a file in a temp ``BRIDGE_VAR_DIR``, as ``make run``). Then:

1. single orders, one at a time, inserted through ``trading.services.order_place`` (what POST /orders
   calls): per order, from the ledger's transitions, row created -> claimed -> sent mark -> final;
2. drain: the worker is paused (SIGSTOP), ``--drain`` tasks are inserted the same way, the worker resumes
   (SIGCONT): first claim to last final state (as bench/compare.py phase 4), against the raw mt5sim
   ``order_send`` rate of the same terminal measured in this process.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Procs, free_port, machine, open_session, pct, raw_order_send, request, wait_port  # noqa: E402

PYTHON = sys.executable
TERMINAL = "drain-1"
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.01, "deviation": 20}
FINAL = ("filled", "partial", "rejected", "cancelled", "failed", "placed")


def wait_final(ids: list[str], timeout: float) -> None:
    from trading.models import TradeTask

    deadline = time.monotonic() + timeout
    while TradeTask.objects.filter(id__in=ids).exclude(state__in=FINAL).exists():
        if time.monotonic() > deadline:
            raise SystemExit("tasks not final in time")
        time.sleep(0.005 if len(ids) == 1 else 0.2)


def main() -> None:  # noqa: C901 (one linear script)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--drain", type=int, default=1000)
    parser.add_argument("--single", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1, help="drain runs")
    parser.add_argument("--worker-args", default="", help="extra run_terminal_worker arguments, e.g. "
                        "'--without-reader --without-poller' (the worker process alone)")
    parser.add_argument("--profile", default="", help="py-spy binary: record the worker during the drain")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    sim_port, web_port = free_port(), free_port()
    (work / "sim.yaml").write_text("account_defaults:\n  balance: 1000000000.0\n  leverage: 500\n")
    (work / "terminals.yaml").write_text(
        f"terminals:\n  - name: {TERMINAL}\n    backend: sim\n    address: 127.0.0.1:{sim_port}\n    utc_offset: 0\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update({"BRIDGE_TERMINALS_FILE": str(work / "terminals.yaml"), "BRIDGE_VAR_DIR": str(work),
                "BRIDGE_THROTTLE_RATE": "100000000/min", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    if args.db == "postgres":
        env["DATABASE_URL"] = os.environ.get("DATABASE_URL",
                                             "postgres://postgres@127.0.0.1:5432/bridge_drain_bench")
    procs = Procs(work)
    try:
        if os.environ.get("REDIS_URL"):
            env["REDIS_URL"] = os.environ["REDIS_URL"]
        else:
            redis_port = free_port()
            procs.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], env)
            wait_port(redis_port)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        if args.db == "postgres":
            name = env["DATABASE_URL"].rsplit("/", 1)[1]
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"DROP DATABASE IF EXISTS {name}"],
                           check=True, capture_output=True)
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {name}"],
                           check=True, capture_output=True)
        for key in ("BRIDGE_TERMINALS_FILE", "BRIDGE_VAR_DIR", "BRIDGE_THROTTLE_RATE", "REDIS_URL"):
            os.environ[key] = env[key]
        os.environ.pop("DATABASE_URL", None)
        if "DATABASE_URL" in env:
            os.environ["DATABASE_URL"] = env["DATABASE_URL"]
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bridge_project.settings")
        subprocess.run([PYTHON, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        from django.db import connection

        from sessions.api_keys import create_api_key
        from sessions.models import BridgeSession, Workspace
        from trading.models import TaskTransition, TradeTask
        from trading.services import order_place

        print(f"machine: {machine()}")
        print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}")
        print(f"database: {connection.vendor} {connection.settings_dict['NAME']}; redis: {env['REDIS_URL']}")
        procs.start("sim", [PYTHON, "-m", "mt5sim", "serve", "--address", f"127.0.0.1:{sim_port}",
                            "--config", str(work / "sim.yaml"), "--seed", "3"], env)
        wait_port(sim_port)
        worker = procs.start("worker", [PYTHON, "manage.py", "run_terminal_worker", TERMINAL, "--loglevel",
                                        "WARNING", *args.worker_args.split()], env)
        procs.start("web", [PYTHON, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(web_port), "--log-level",
                            "warning", "bridge_project.asgi:application"], env)
        wait_port(web_port)
        workspace, _ = Workspace.objects.get_or_create(name=f"drain-{int(time.time())}")
        auth = {"Authorization": f"Bearer {create_api_key(workspace)[1]}"}
        session = open_session(web_port, auth, TERMINAL, "drain", 90, lambda: procs.log("worker"))
        bridge_session = BridgeSession.objects.select_related("terminal").get(id=session["sessionId"])
        stamp = int(time.time())

        def place(rid: str) -> str:
            return order_place(session=bridge_session, request_id=rid, data=dict(ORDER)).task.id

        wait_final([place(f"warm-{stamp}-{i}") for i in range(5)], 60)

        print(f"\n1. single orders, one at a time ({args.single}): ledger times per order (ms)")
        steps: dict[str, list[float]] = {"created->claimed": [], "claimed->sent": [], "sent->final": [],
                                         "claimed->final": [], "created->final": []}
        spy = None
        if args.profile:
            spy = subprocess.Popen([args.profile, "record", "-p", str(worker.pid), "-r", "1000", "-o",
                                    str(work / "single.txt"), "--format", "raw", "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        for i in range(args.single):
            task_id = place(f"single-{stamp}-{i}")
            wait_final([task_id], 30)
            task = TradeTask.objects.get(id=task_id)
            sent = TaskTransition.objects.filter(task_id=task_id, detail__change="sent").values_list("at", flat=True)
            created, claimed, final = task.created_at, task.dispatched_at, task.finished_at
            sent_at = sent[0] if sent else task.sent_at
            ms = lambda a, b: (b - a).total_seconds() * 1000  # noqa: E731
            steps["created->claimed"].append(ms(created, claimed))
            steps["claimed->sent"].append(ms(claimed, sent_at))
            steps["sent->final"].append(ms(sent_at, final))
            steps["claimed->final"].append(ms(claimed, final))
            steps["created->final"].append(ms(created, final))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            print(f"   profile: {work / 'single.txt'}")
        for name, values in steps.items():
            print(f"   {name:<18} mean {statistics.fmean(values):6.2f}   p50 {pct(values, 50):6.2f}   "
                  f"p99 {pct(values, 99):6.2f}")

        for round_ in range(args.rounds):
            print(f"\n2. drain {round_ + 1}: worker paused (SIGSTOP), {args.drain} tasks inserted, worker resumed")
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                ids = [place(f"drain-{stamp}-{round_}-{i}") for i in range(args.drain)]
                print(f"   {len(ids)} tasks queued in {time.monotonic() - t0:.1f} s")
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            spy = None
            if args.profile:
                spy = subprocess.Popen([args.profile, "record", "-p", str(worker.pid), "-r", "500", "-o",
                                        str(work / f"drain-{round_}.txt"), "--format", "raw", "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_final(ids, 600)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
                print(f"   profile: {work / f'drain-{round_}.txt'}")
            rows = list(TradeTask.objects.filter(id__in=ids).values_list("state", "dispatched_at", "finished_at"))
            span = (max(r[2] for r in rows) - min(r[1] for r in rows)).total_seconds()
            print(f"   {len(rows)} tasks drained in {span:.3f} s: {len(rows) / span:,.0f} orders/s "
                  f"(states {dict(Counter(r[0] for r in rows))})")
            events = TaskTransition.objects.filter(task_id__in=ids).count()
            print(f"   transitions recorded: {events} ({events / len(ids):.1f} per task)")

        raw = raw_order_send(f"127.0.0.1:{sim_port}", 1000)[1]
        print(f"\nraw mt5sim order_send, same terminal, one client in this process: {raw:,.0f} orders/s")
        print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")
        request(web_port, "DELETE", f"/mt5/client/session/{session['sessionId']}", None, auth)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
