"""A pinned worker whose lease row is re-created keeps its terminal, however many of its threads notice.

The fault: the heartbeat thread and a task find the lease gone at the same moment. The first retakes it;
the second must not take that (its own process's) lease for another worker's and exit. Played in a real
worker-like process, since the losing path ends the process (``os._exit``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from terminals.models import Terminal
from tests.conftest import _db_env

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys, threading
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bridge_project.settings")
import django
django.setup()
from terminals import runtime
from terminals.lease import lease_acquire, lease_holder_name
from terminals.models import Terminal

name = sys.argv[1]
runtime._lease = lease_acquire(terminal_name=name, holder=lease_holder_name(name), ttl=60)
assert runtime._lease is not None
# The row re-created (a restore, or a table flush followed by the terminals file's sync): the token is gone.
Terminal.objects.filter(name=name).delete()
Terminal.objects.create(name=name, backend="sim", address="127.0.0.1:1")
start = threading.Barrier(8)

def refresh():
    start.wait()
    runtime.refresh_lease()

threads = [threading.Thread(target=refresh) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("kept token", runtime.held_lease().token, flush=True)
"""


def test_threads_refreshing_a_recreated_lease_at_once_keep_it() -> None:
    Terminal.objects.create(name="lease-race", backend="sim", address="127.0.0.1:1")
    done = subprocess.run([sys.executable, "-c", SCRIPT, "lease-race"], cwd=ROOT, env={**os.environ, **_db_env()},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "kept token 1" in done.stdout, done.stdout
    row = Terminal.objects.get(name="lease-race")
    assert row.lease_token == 1 and row.lease_holder.startswith("lease-race@")
