"""The write path of POST /orders on the embedded default (issue #13, phase 2 and 5 of bench/compare.py only).

    .venv/bin/python bench/writes.py [--single 200] [--load-seconds 10] [--clients 32] [--rounds 1]
                                     [--profile /tmp/daphne.txt]  (py-spy on daphne during the first load run:
                                      .txt raw stacks, .svg flame graph; py-spy from PATH or /tmp/pyspy)

It starts the stack as bench/compare.py does (``manage.py run_bridge``: SQLite WAL, its own redis-server,
daphne, the pinned worker draining meanwhile; and compare's direct baseline, idle here), opens a session,
then:

1. single orders, one client, one at a time: POST -> 202 at the client, and from the ledger's
   ``created_at`` the two halves (client sends POST -> task row created; row created -> 202 at the client);
2. ``--clients`` clients POST /orders for ``--load-seconds`` (each a new request id): accepted/s, p50, p99;
   the backlog is drained between rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import pct  # noqa: E402
from bench.compare import FINAL, ORDER, Bench, cpu_seconds, load, load_avg, say, wait_final  # noqa: E402


class WriteBench(Bench):
    def find_processes(self) -> dict[str, list[int]]:
        """As compare's, without requiring a reader and a poller process (they may run inside the worker)."""
        from bench.compare import stack_processes

        self.roles = stack_processes(self.bridge.pid, self.terminal, self.term_addr)
        self.started.remember([p for pids in self.roles.values() for p in pids])
        self.worker_pids = self.roles["worker"]
        return self.roles

    def single(self) -> None:
        from trading.models import TradeTask

        n = self.args.single
        say(f"1. single POST /orders, 1 client, {n} orders one at a time")
        answers, timeline = [], []
        for i in range(n):
            wall0, t0 = time.time(), time.perf_counter()
            status, task = self.ours.call("POST", "/mt5/client/orders", ORDER, {"x-request-id": f"one-{i}"})
            elapsed = time.perf_counter() - t0
            assert status == 202, (status, task)
            answers.append(elapsed * 1000)
            timeline.append((task["taskId"], wall0, wall0 + elapsed))
        created = dict(TradeTask.objects.filter(id__in=[t[0] for t in timeline]).values_list("id", "created_at"))
        before = [(created[t].timestamp() - w0) * 1000 for t, w0, _ in timeline]
        after = [(a - created[t].timestamp()) * 1000 for t, _, a in timeline]
        print(f"   POST -> 202 at the client            p50 {pct(answers, 50):6.1f} ms   p99 {pct(answers, 99):6.1f} ms")
        print(f"   client sends POST -> task row created p50 {pct(before, 50):6.1f} ms   p99 {pct(before, 99):6.1f} ms")
        print(f"   task row created -> 202 at the client p50 {pct(after, 50):6.1f} ms   p99 {pct(after, 99):6.1f} ms")
        wait_final([t[0] for t in timeline], 120)

    def writes_only(self, round_no: int) -> None:
        from trading.models import TradeTask

        clients, seconds = self.args.clients, self.args.load_seconds
        port = self.web_port
        say(f"2. round {round_no}: POST /orders, {clients} clients, {seconds:.0f} s (load average {load_avg()})")
        spy = None
        if self.args.profile and round_no == 1:
            daphne = self.roles.get("web (daphne)") or []
            py_spy = shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy"
            spy = subprocess.Popen([py_spy, "record", "--nonblocking", "--idle", "--threads", "-r", "50", "-d", str(int(seconds)), "-p", str(daphne[0]),
                                    "-o", self.args.profile, *(["-f", "raw"] if self.args.profile.endswith(".txt")
                                                               else [])],
                                   env={**os.environ, "PYTHONPATH": "/tmp/pyspy"})
            time.sleep(0.5)
        roles = {r: self.roles[r] for r in ("web (daphne)", "worker", "redis-server")}
        cpu0, t0 = {r: cpu_seconds(p) for r, p in roles.items()}, time.monotonic()
        o = load(port, "POST", "/mt5/client/orders", self.headers, ORDER, clients, seconds,
                 lambda s, b: s == 202)
        span = time.monotonic() - t0
        print(f"   mt5-bridge: {o.line()}" + (f"  e.g. {o.sample}" if o.sample else ""))
        print("   CPU during the run: " + ", ".join(f"{r} {(cpu_seconds(p) - cpu0[r]) / span * 100:.0f}%"
                                                  for r, p in roles.items()))
        if spy is not None:
            spy.wait(60)
            say(f"   profile of daphne written to {self.args.profile}")
        backlog = list(TradeTask.objects.filter(session_id=self.sid).exclude(state__in=FINAL)
                       .values_list("id", flat=True))
        t0 = time.monotonic()
        wait_final(backlog, 600)
        say(f"   backlog of {len(backlog)} drained in {time.monotonic() - t0:.1f} s")

    def run(self) -> None:
        self.start()
        self.open_session()
        self.warm_up()
        if self.args.single:
            self.single()
        for i in range(self.args.rounds):
            self.writes_only(i + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", default="", help="py-spy output (.svg flame graph, .txt raw) of the first run")
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args()
    args.orders, args.seconds, args.idle_seconds, args.drain = 0, 0.0, 0.0, 0
    args.postgres = getattr(args, "postgres", None)  # compare's --postgres (the compose tier): not here
    bench = WriteBench(args)
    try:
        bench.run()
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
