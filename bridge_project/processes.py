"""Child processes in a process group of their own: started together, signalled together, stopped
with nothing left behind.

The one place that knows how the bridge's processes are started and stopped: the supervisor
(``workers/supervisor.py``), the tests (``tests/procs.py``, mt5sim's test fixtures) and the benches.
A child is started in a new session, so it leads a process group that its own children (a
Celery pool, a shell's commands) join; every signal goes to that whole group. Stopping is SIGTERM
to the group, a grace for a clean exit, then SIGKILL to the group, and a last SIGKILL to whatever
of the group outlived its leader (a grandchild that ignored SIGTERM): no orphans.

Standard library only, and no Django import: mt5sim's tests and the benches use it without the
bridge's settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_GRACE = 10.0  # seconds a group has to exit after SIGTERM before it is killed
KILL_WAIT = 5.0  # seconds to wait for the leader after SIGKILL (it cannot refuse; this only bounds the wait)


def start_group(argv: Sequence[str], *, log_path: Path | str | None = None, env: Mapping[str, str] | None = None,
                cwd: Path | str | None = None, **popen_kwargs: object) -> subprocess.Popen:
    """Start ``argv`` as the leader of a new session (and process group).

    With ``log_path`` the child's stdout and stderr are appended to that file; otherwise they go
    wherever ``popen_kwargs`` (``stdout=``, ``stderr=``) send them, by default this process's own.
    """
    if log_path is None:
        return subprocess.Popen(list(argv), env=None if env is None else dict(env), cwd=cwd,
                                start_new_session=True, **popen_kwargs)
    with open(log_path, "ab") as log:  # the child holds its own copy of the descriptor
        return subprocess.Popen(list(argv), env=None if env is None else dict(env), cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, **popen_kwargs)


def _group_is_ours(popen: subprocess.Popen) -> bool:
    """Whether the group id ``popen.pid`` still names the group this child led.

    Until the leader is reaped its pid (the group id) stays reserved. Once reaped, a member that
    outlived it keeps the group alive, but the pid itself is free: a process that now has it (PIDs
    wrap, at 32768 on small machines) leads a group of its own that is not ours to signal.
    """
    if popen.returncode is None:
        return True
    proc = Path("/proc")
    return not proc.is_dir() or not (proc / str(popen.pid)).exists()


def signal_group(popen: subprocess.Popen, sig: int) -> bool:
    """Send ``sig`` to every process of ``popen``'s group. False when the group is gone (or its id
    now belongs to someone else).

    The group is signalled even when its leader has exited: a member that outlived the leader keeps
    the group (and its id) alive.
    """
    if not _group_is_ours(popen):
        return False
    try:
        os.killpg(popen.pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_alive(popen: subprocess.Popen) -> bool:
    """Whether a live process of ``popen``'s group still exists.

    A killed member reparented to init is a zombie until init reaps it, which some inits do only
    every few seconds; a zombie runs nothing, so it does not count (where ``/proc`` tells).
    """
    if not signal_group(popen, 0):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    return any(state != "Z" for state in _group_states(proc, popen.pid))


def _group_states(proc: Path, pgid: int) -> list[str]:
    """The states (``R``, ``S``, ``Z``...) of the processes in group ``pgid``, from ``/proc``."""
    states = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid):
            states.append(fields[0])
    return states


def _wait_group_gone(popen: subprocess.Popen, timeout: float) -> bool:
    """Wait until nothing of the group runs any more (members reparented to init are reaped there)."""
    deadline = time.monotonic() + timeout
    while group_alive(popen):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def kill_group(popen: subprocess.Popen, wait: float = KILL_WAIT) -> int | None:
    """SIGKILL the whole group at once (no chance to clean up: crash tests) and reap the leader.

    Returns the leader's exit code (``-9`` when the signal killed it), None if it outlived ``wait``.
    """
    signal_group(popen, signal.SIGKILL)
    try:
        return popen.wait(wait)
    except subprocess.TimeoutExpired:
        return None


def stop_group(popen: subprocess.Popen, grace: float = STOP_GRACE, *, kill_wait: float = KILL_WAIT) -> int | None:
    """Stop the group: SIGTERM, up to ``grace`` seconds for the leader to exit, then SIGKILL.

    Whatever of the group is still there once the leader has exited is killed too, so nothing the
    child started outlives it. Returns the leader's exit code (negative: the signal that ended it),
    None if it did not even die of SIGKILL within ``kill_wait``.
    """
    if popen.poll() is None:
        signal_group(popen, signal.SIGTERM)
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            signal_group(popen, signal.SIGKILL)
            try:
                popen.wait(kill_wait)
            except subprocess.TimeoutExpired:
                return None
    if signal_group(popen, signal.SIGKILL):  # members that outlived the leader
        _wait_group_gone(popen, kill_wait)
    return popen.returncode
