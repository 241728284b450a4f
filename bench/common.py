"""Shared bench helpers: machine description, percentiles, a keep-alive HTTP load generator."""

from __future__ import annotations

import http.client
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass


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
