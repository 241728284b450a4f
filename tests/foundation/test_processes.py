"""bridge_project.processes: a child and everything it starts are stopped together, nothing outlives it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from bridge_project.processes import group_alive, kill_group, signal_group, start_group, stop_group
from tests.waiting import wait_until

# A child that says "ready" once its SIGTERM handling is in place, then waits forever.
EXITS_3_ON_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(1)\n"
)
IGNORES_TERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(1)\n"
)
# A leader that starts a grandchild ignoring SIGTERM, writes the grandchild's pid, and exits on SIGTERM.
WITH_STUBBORN_GRANDCHILD = (
    "import signal, subprocess, sys, time\n"
    f"gc = subprocess.Popen([sys.executable, '-c', {IGNORES_TERM!r}], stdout=subprocess.PIPE, text=True)\n"
    "assert gc.stdout.readline().strip() == 'ready'\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "print('grandchild', gc.pid, flush=True)\n"
    "while True: time.sleep(1)\n"
)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _start(tmp_path: Path, code: str):
    log = tmp_path / "child.log"
    popen = start_group([sys.executable, "-c", code], log_path=log)
    wait_until(lambda: "ready" in log.read_text() or "grandchild" in log.read_text(), 15, "the child ready")
    return popen, log


def test_child_leads_its_own_process_group_and_logs_to_the_file(tmp_path: Path) -> None:
    popen, log = _start(tmp_path, EXITS_3_ON_TERM)
    try:
        assert os.getpgid(popen.pid) == popen.pid != os.getpgid(0)
        assert os.getsid(popen.pid) == popen.pid
        assert "ready" in log.read_text()
    finally:
        stop_group(popen, 5)


def test_stop_returns_the_exit_code_of_a_clean_exit(tmp_path: Path) -> None:
    popen, _ = _start(tmp_path, EXITS_3_ON_TERM)
    t0 = time.monotonic()
    assert stop_group(popen, grace=10) == 3
    assert time.monotonic() - t0 < 5  # it exited on SIGTERM, not after the grace
    assert not group_alive(popen)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    popen, _ = _start(tmp_path, IGNORES_TERM)
    t0 = time.monotonic()
    assert stop_group(popen, grace=0.7) == -signal.SIGKILL
    elapsed = time.monotonic() - t0
    assert 0.7 <= elapsed < 6, elapsed
    assert not _running(popen.pid)


def test_a_grandchild_that_outlives_its_parent_dies_with_the_group(tmp_path: Path) -> None:
    popen, log = _start(tmp_path, WITH_STUBBORN_GRANDCHILD)
    grandchild = int(log.read_text().split("grandchild")[1].split()[0])
    assert _running(grandchild) and os.getpgid(grandchild) == popen.pid
    assert stop_group(popen, grace=10) == 0  # the leader exited cleanly on SIGTERM...
    assert not _running(grandchild)  # ...and the grandchild that ignored it was killed all the same
    assert not group_alive(popen)


def test_kill_group_kills_leader_and_grandchildren_at_once(tmp_path: Path) -> None:
    popen, log = _start(tmp_path, WITH_STUBBORN_GRANDCHILD)
    grandchild = int(log.read_text().split("grandchild")[1].split()[0])
    assert kill_group(popen) == -signal.SIGKILL
    wait_until(lambda: not _running(grandchild), 5, "the grandchild killed")
    assert signal_group(popen, 0) is False or not group_alive(popen)


def test_stopping_an_exited_child_returns_its_code(tmp_path: Path) -> None:
    popen = start_group([sys.executable, "-c", "raise SystemExit(7)"], log_path=tmp_path / "x.log")
    wait_until(lambda: popen.poll() is not None, 15, "the child exited")
    assert stop_group(popen) == 7
    assert signal_group(popen, signal.SIGTERM) is False  # nothing left to signal


def test_a_reaped_leaders_pid_taken_by_another_process_is_not_signalled() -> None:
    """PIDs wrap: once the leader is reaped, its number may name another process (here: this one)."""
    reaped = SimpleNamespace(pid=os.getpid(), returncode=0, poll=lambda: 0)
    assert signal_group(reaped, 0) is False
    assert group_alive(reaped) is False
    assert stop_group(reaped) == 0  # nothing signalled, the known exit code returned
