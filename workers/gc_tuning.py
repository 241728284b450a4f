"""The cyclic garbage collector of the bridge's long-running, latency-bound processes: every daphne
started through ``workers.stack`` and every pinned terminal worker (``run_terminal_worker``).

Measured with the events bench (``bench/events.py``, 1,000 sockets on 2 daphne processes, 2 market
orders/s, 10 ticks/s): with Python's thresholds (700, 10, 10), objects that live a few milliseconds
(queued messages, buffers, handles, query results) outlive two young collections at these allocation
rates, reach the old generation and set off full collections: in a daphne with 500 sockets every ~10 s,
150-300 ms over ~230,000 objects, with none of its sockets served meanwhile; in the pinned worker 70-100
ms, with orders and ticks waiting. So each process loads what it serves with first, freezes it (never
scanned again: it lives as long as the process) and runs a larger young generation (10,000), so
short-lived objects die young and full passes become rare (after 50 x 100 young ones). Young
collections then took 2-15 ms. Cyclic garbage waits longer for its collection: a little more memory
between passes.
"""

from __future__ import annotations

import gc
import os
import sys

DEFAULT_GC_THRESHOLDS = (10_000, 50, 100)


def gc_thresholds() -> tuple[int, int, int] | None:
    """``BRIDGE_GC_THRESHOLDS`` (environment, ``gen0,gen1,gen2``; ``python``: Python's own, nothing frozen)."""
    given = os.environ.get("BRIDGE_GC_THRESHOLDS", "").strip()
    if given.lower() == "python":
        return None
    if not given:
        return DEFAULT_GC_THRESHOLDS
    try:
        values = tuple(int(part) for part in given.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        sys.exit(f"BRIDGE_GC_THRESHOLDS must be three positive integers or 'python', not {given!r}")
    return values  # type: ignore[return-value]


def tune_gc(thresholds: tuple[int, int, int] | None) -> None:
    """Freeze what this process holds now and set ``thresholds`` (nothing when None). Call it once the
    process has loaded what it serves with, before it serves."""
    if thresholds is None:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
