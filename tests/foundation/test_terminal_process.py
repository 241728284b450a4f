"""One process per terminal: ``run_terminal_worker`` (the command line every launcher renders,
``workers.stack.terminal_process_argvs``) executes orders, serves reads and takes snapshots of one terminal at
once, its reader and poller being threads that share the worker's one terminal connection; and it exits when one
of those threads dies (the supervisor then restarts it, and it takes its lease again).

Real processes throughout: the stack's emulated broker, a terminal of its own (``sim-p``), the terminal's process
(a real Celery worker), PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml
from django.conf import settings as django_settings
from django.db import connections
from rest_framework.test import APIClient

from tests.conftest import SIM_SERVER_OF, SIM_SERVERS, SIM_TERMINALS, Stack, _db_env
from tests.procs import PYTHON, Proc, start_sim
from tests.waiting import wait_until
from trading.models import FINAL_STATES, TradeTask
from trading.reads.readqueue import reader_status
from trading.reads.snapshots import load_snapshot
from workers.stack import terminal_process_argvs
from workers.terminal_threads import THREAD_DIED_EXIT

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

T = "sim-p"  # on sim-a's server name of the stack's broker
LOGIN = 7_130_000 + os.getpid() % 10_000  # an account no other test knows
PASSWORD = "One-Proc-1"


@dataclass
class TerminalP:
    address: str
    env: dict[str, str]
    log_dir: Path


@pytest.fixture
def terminal_p(stack: Stack, tmp_path: Path, settings) -> Iterator[TerminalP]:
    """sim-p: one more terminal of the stack's broker, and the environment of its bridge process."""
    sim, address = start_sim(f"sim-{T}", tmp_path, tmp_path / "state", broker=stack.broker_address,
                             server=SIM_SERVER_OF["sim-a"])
    try:
        terminals_file = tmp_path / "terminals.yaml"
        terminals_file.write_text(yaml.safe_dump({
            "sim_broker": {"address": stack.broker_address, "servers": SIM_SERVERS},
            "terminals": [
                *({"name": name, "backend": "sim", "address": stack.addresses[name], "server": SIM_SERVER_OF[name],
                   "utc_offset": offset} for name, offset in SIM_TERMINALS),
                {"name": T, "backend": "sim", "address": address, "server": SIM_SERVER_OF["sim-a"]},
            ],
        }, sort_keys=False))
        settings.BRIDGE_TERMINALS_FILE = str(terminals_file)
        env = {**os.environ, **_db_env(), "BRIDGE_TERMINALS_FILE": str(terminals_file), "BRIDGE_TEST_MODE": "1"}
        env.pop("BRIDGE_CRASH_AT", None)
        yield TerminalP(address, env, tmp_path)
    finally:
        sim.stop()


def _start(terminal: TerminalP, **extra_env: str) -> Proc:
    """The terminal's process, with the very command line the supervisor, compose and the Windows plan run."""
    argv = terminal_process_argvs(T, PYTHON)
    assert list(argv) == ["worker"]  # one process per terminal
    return Proc(f"terminal-{T}-{time.time_ns()}", [*argv["worker"], "--loglevel", "INFO"],
                {**terminal.env, **extra_env}, terminal.log_dir).start()


def _processes_of(terminal: str) -> list[int]:
    """Every process of this machine whose command line is a bridge process of ``terminal``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if terminal.encode() in argv and {b"run_terminal_worker", b"run_terminal_reader",
                                          b"run_terminal_poller"} & set(argv):
            found.append(int(entry.name))
    return found


def _final(task_id: str) -> TradeTask:
    return wait_until(lambda: (t := TradeTask.objects.get(id=task_id)).state in FINAL_STATES and t, 30,
                      f"task {task_id} final")


def test_one_process_executes_orders_serves_reads_and_polls_one_terminal_at_once(terminal_p, client: APIClient):
    proc = _start(terminal_p)
    try:
        proc.wait_log("ready", timeout=60)  # the Celery worker's (the reader and poller say no "ready")
        assert _processes_of(T) == [proc.pid]
        r = redis.Redis.from_url(django_settings.REDIS_URL)
        # The reader's heartbeat comes from the worker's own process.
        status = wait_until(lambda: reader_status(r, T), 10, "the reader's heartbeat")
        assert status["reader"].endswith(f":{proc.pid}") and status["terminal_ok"], status

        opened = client.post("/mt5/client/session/open?wait=20", {"accountId": "one-proc", "server": "Demo",
                             "login": LOGIN, "password": PASSWORD, "terminal": T}, format="json")
        assert opened.status_code == 201 and opened.json()["status"] == "active", opened.content
        sid = opened.json()["sessionId"]
        wait_until(lambda: (s := load_snapshot(r, T)) is not None and s.session_id == sid, 10,
                   "a snapshot of the session")

        # At once: a client reading through the read queue, snapshots being taken, orders being executed.
        stop = threading.Event()
        read_statuses: list[tuple[str, int]] = []
        snapshots_seen: set[float] = set()

        def read_loop() -> None:
            reader = APIClient()
            reader.credentials(HTTP_AUTHORIZATION=client._credentials["HTTP_AUTHORIZATION"])
            try:
                while not stop.is_set():
                    for path in ("/mt5/client/symbols/EURUSD", "/mt5/client/ticks/EURUSD?count=5",
                                 "/mt5/client/account"):
                        read_statuses.append((path, reader.get(path, HTTP_X_SESSION_ID=sid).status_code))
            finally:
                connections.close_all()

        def snapshot_loop() -> None:
            while not stop.is_set():
                snapshot = load_snapshot(r, T)
                if snapshot is not None:
                    snapshots_seen.add(snapshot.taken_at)
                stop.wait(0.05)

        threads = [threading.Thread(target=read_loop), threading.Thread(target=snapshot_loop)]
        for thread in threads:
            thread.start()
        tasks = []
        started = time.monotonic()
        try:
            for i in range(6):
                accepted = client.post("/mt5/client/orders", {"symbol": "EURUSD", "type": "BUY", "volume": 0.01},
                                       format="json", HTTP_X_SESSION_ID=sid, HTTP_X_REQUEST_ID=f"one-proc-{time.time_ns()}-{i}")
                assert accepted.status_code == 202, accepted.content
                tasks.append(_final(accepted.json()["taskId"]))
            while time.monotonic() - started < 2.0:  # let reads and polls overlap the last order as well
                time.sleep(0.1)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert [t.state for t in tasks] == ["filled"] * 6, [(t.state, t.result) for t in tasks]
        assert len(read_statuses) >= 9 and {s for _, s in read_statuses} == {200}, read_statuses
        assert len(snapshots_seen) >= 3, snapshots_seen  # the poller went on meanwhile
        # The poller's snapshot shows what the worker executed (and GET /positions serves it).
        tickets = {t.position_ticket for t in tasks}
        wait_until(lambda: tickets <= {p["ticket"] for p in load_snapshot(r, T).positions}, 5,
                   "the positions in the snapshot")
        served = client.get("/mt5/client/positions", HTTP_X_SESSION_ID=sid)
        assert served.status_code == 200 and tickets <= {p["ticket"] for p in served.json()["positions"]}
        assert proc.alive() and _processes_of(T) == [proc.pid]  # still the one process

        # Stopped, the process takes its reader with it: reads are refused at once, not after a timeout.
        assert client.delete(f"/mt5/client/session/{sid}").status_code == 200
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(30) == 0, proc.log()[-3000:]
        assert reader_status(r, T) is None  # the heartbeat is removed on a clean stop
    finally:
        proc.stop()


def test_the_process_exits_when_its_poller_thread_dies_and_a_restart_takes_the_terminal_back(terminal_p):
    r = redis.Redis.from_url(django_settings.REDIS_URL)
    proc = _start(terminal_p, BRIDGE_CRASH_AT="poller_thread")  # test mode: the poller raises in its 8th cycle
    try:
        proc.wait_log("lease token", timeout=60)
        wait_until(lambda: reader_status(r, T), 20, "the reader's heartbeat")
        code = proc.popen.wait(60)
        assert code == THREAD_DIED_EXIT, (code, proc.log()[-3000:])
        assert "the poller thread died: exiting the process" in proc.log()
        # The reader died with it: its heartbeat expires (BRIDGE_READER_HEARTBEAT_TTL), so reads get 502 at once.
        wait_until(lambda: reader_status(r, T) is None, django_settings.BRIDGE_READER_HEARTBEAT_TTL + 3,
                   "the dead process's reader heartbeat gone")
    finally:
        proc.stop()
    # What the supervisor does next: the same command again; the dead holder's lease is taken back at once.
    again = _start(terminal_p)
    try:
        again.wait_log("ready", timeout=60)
        status = wait_until(lambda: reader_status(r, T), 10, "the new process's reader heartbeat")
        assert status["reader"].endswith(f":{again.pid}"), status
    finally:
        again.stop()
