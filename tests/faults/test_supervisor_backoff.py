"""The ``run_bridge`` supervisor's restart back-off grows in a crash loop and starts again after a
healthy run (issue #10). A real child process is started, crashes, and is restarted by the
supervisor's own watch step; only the back-off's time scale is shortened for the test."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.faults.conftest import wait_until
from workers.supervisor import Child, Supervisor, backoff_reset_after

# Runs for the number of seconds written in the file given (0 when missing), then exits with 3.
FLAKY = "import pathlib, sys, time; p = pathlib.Path(sys.argv[1]); time.sleep(float(p.read_text() or 0)); sys.exit(3)"
BASE, MAX, RESET = 0.1, 0.4, 1.0


class Watched:
    """Drives ``Supervisor.watch_once`` and records each exit the supervisor saw, with its delay."""

    def __init__(self, supervisor: Supervisor, child: Child):
        self.supervisor, self.child = supervisor, child
        self.pids = [child.popen.pid]
        self.exits: list[tuple[float, float]] = []  # (how long the run lasted, delay scheduled)
        # When the pending restart was scheduled: kept across calls (a restart scheduled in one call may
        # only happen in the next).
        self.scheduled_at = time.monotonic()

    def next_exit(self, timeout: float = 10.0) -> float:
        """Run the watch loop until the child exits again; the restart delay the supervisor chose."""
        seen = len(self.exits)

        def step() -> bool:
            pending_before = self.child.next_start != 0.0
            started_before = self.child.started_at
            self.supervisor.watch_once()
            if self.child.started_at != started_before:  # restarted: a new process
                assert time.monotonic() - self.scheduled_at >= self.child.last_delay - 0.01
                self.pids.append(self.child.popen.pid)
            if not pending_before and self.child.next_start != 0.0:  # a new exit was just seen
                self.scheduled_at = time.monotonic()
                self.exits.append((self.scheduled_at - self.child.started_at, self.child.last_delay))
            return len(self.exits) > seen

        wait_until(step, timeout, "the child exited again", interval=0.01)
        return self.exits[-1][1]


@pytest.fixture
def supervisor(tmp_path: Path, settings):
    settings.VAR_DIR = tmp_path
    sup = Supervisor(port=0, backoff_base=BASE, backoff_max=MAX, backoff_reset_after=RESET)
    yield sup
    sup.stop_all(timeout=5)


def test_backoff_grows_in_a_crash_loop_and_resets_after_a_healthy_run(supervisor: Supervisor,
                                                                      tmp_path: Path) -> None:
    run_for = tmp_path / "run_for"
    run_for.write_text("0")
    child = supervisor.spawn("flaky", [sys.executable, "-c", FLAKY, str(run_for)])
    watched = Watched(supervisor, child)

    crash_loop = [watched.next_exit() for _ in range(5)]
    assert crash_loop == [0.1, 0.2, 0.4, 0.4, 0.4]  # doubling, capped

    run_for.write_text("1.5")  # the next run is healthy (longer than the reset threshold) then exits
    assert watched.next_exit() == BASE  # restarted quickly again: the crash count started over
    ran, _ = watched.exits[-1]
    assert ran >= RESET

    run_for.write_text("0")  # crashing again: the back-off grows again from the start
    assert [watched.next_exit(), watched.next_exit()] == [0.2, 0.4]
    assert len(set(watched.pids)) == len(watched.pids) == 8  # the first process and 7 restarts, each new
    assert child.restarts == 7 and child.popen.returncode == 3


def test_reset_threshold_is_a_setting(settings) -> None:
    assert backoff_reset_after() == 30.0
    settings.BRIDGE_SUPERVISOR_BACKOFF_RESET = 7
    assert backoff_reset_after() == 7.0
