"""``make bench``: every benchmark of bench/, one after another, each printing its figures and the machine.

Each runs in its own process with its default arguments (see the file's docstring for its options); a
failing bench is reported and the others still run. The exit status is non-zero if any failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["mt5sim_bench.py", "http_servers.py", "orders.py", "drain.py", "writes.py", "reads.py", "events.py", "ops_admin.py",
           "chaos.py", "compare.py"]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"\n=== bench/{name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / name)], cwd=HERE.parent)
        print(f"=== bench/{name}: exit {code} after {time.monotonic() - started:.0f} s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
