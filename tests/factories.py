"""Test factories: workspaces, API keys, sessions and tasks built through the code the product runs.

A session is opened with ``sessions.services.session_open`` and activated with ``session_activate``
under a lease of its terminal (as the pinned worker's login does), so it has its transition rows and
its terminal binding; a task is inserted by the ledger (``trading.ledger.insert_or_replay``: the row
and its first transition together) and moved on by ``trading.states`` (the claim under the lease, then
the one change function), so every state it reaches has its transition row and its event.

The terminals these factories make are rows with no process behind them; never point a factory at a
terminal of the test stack (``sim-a``, ``sim-b``): its lease belongs to the stack's pinned worker.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.utils import timezone

from bridge_project.celery import terminal_queue
from bridge_project.errors import NotFound
from ops.selectors import broker, queue_keys
from sessions.api_keys import create_api_key
from sessions.models import ApiKey, BridgeSession, SessionStatus, Workspace
from sessions.services import (
    session_activate,
    session_close,
    session_fail_login,
    session_open,
    sessions_expire,
)
from terminals.lease import Lease, lease_acquire, lease_release
from terminals.models import Terminal
from terminals.services import sync_terminals
from trading.ledger import fingerprint, insert_or_replay
from trading.models import FINAL_STATES, TaskKind, TaskState, TradeTask
from trading.orders import new_tag
from trading.states import task_change, task_claim

_seq = itertools.count(1)
PASSWORD = "pw-factory"
ORDER = {"symbol": "EURUSD", "type": "BUY", "volume": 0.1}
LEASE_HOLDER = "{terminal}@tests.factories:0"  # never a process of this host: no worker takes it for dead


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_seq)}"


def make_workspace(name: str | None = None) -> Workspace:
    """A tenant (workspaces have no service of their own: an admin or ``create_api_key --workspace`` makes them)."""
    return Workspace.objects.create(name=name or _unique("ws"))


def make_api_key(workspace: Workspace | None = None, name: str = "") -> tuple[ApiKey, str]:
    """An API key of ``workspace`` (a new one if None): the stored row and the plain key, once."""
    return create_api_key(workspace or make_workspace(), name)


def make_terminal(name: str | None = None) -> Terminal:
    """A terminal row with no process behind it (not in the terminals file)."""
    sync_terminals()  # the file's terminals first: a later sync must not take this row for one gone from it
    return Terminal.objects.create(name=name or _unique("t"), backend="sim", address="127.0.0.1:1")


@contextmanager
def terminal_lease(terminal_name: str) -> Iterator[Lease]:
    """The terminal's lease, held by the factories for one step (as a pinned worker holds it) and given
    back after it, so a test may take the lease itself next."""
    lease = lease_acquire(terminal_name=terminal_name, holder=LEASE_HOLDER.format(terminal=terminal_name), ttl=60)
    assert lease is not None, f"the lease of {terminal_name} is held by someone else"
    try:
        yield lease
    finally:
        lease_release(lease=lease)


def _drop_login_message(terminal_name: str) -> None:
    """The login ``session_open`` published to the terminal's queue (on commit, so only outside a test
    transaction): no worker serves a factory terminal, and a left message would count in its queue depth."""
    broker().delete(*queue_keys(terminal_queue(terminal_name)))


def _open_on_own_terminal(workspace: Workspace, terminal: Terminal, **fields: Any) -> BridgeSession:
    """``session_open`` on a terminal row the test made (not in the terminals file). Another process of the
    test stack that re-syncs the file at that moment (a worker whose heartbeat found its own row gone after
    the test database was flushed: ``record_worker_heartbeat`` -> ``sync_terminals(force=True)``) disables
    every row not in the file, this one included; it is enabled again and the open retried (seen in CI as
    ``NotFound: unknown terminal 't-...'`` at a test's setup)."""
    for attempt in range(3):
        try:
            return session_open(workspace=workspace, terminal=terminal.name, **fields)
        except NotFound:
            if attempt == 2:
                raise
            Terminal.objects.filter(pk=terminal.pk, enabled=False).update(enabled=True)
    raise AssertionError("unreachable")


def make_session(workspace: Workspace | None = None, terminal: Terminal | None = None, *,
                 status: str = SessionStatus.ACTIVE, login: int | None = None, server: str = "Demo",
                 account_id: str | None = None, password: str = PASSWORD) -> BridgeSession:
    """A session opened by ``session_open`` on ``terminal`` (a new row if None) and, unless ``opening``,
    logged in: ``session_activate`` under the terminal's lease binds the terminal to it. ``closed``,
    ``expired`` and ``login_failed`` are reached through their own service functions."""
    workspace = workspace or make_workspace()
    if terminal is None:
        terminal = make_terminal()
    else:  # a row the test made itself: the open's sync must find it enabled (not a terminal gone from the file)
        sync_terminals()
        Terminal.objects.filter(pk=terminal.pk, enabled=False).update(enabled=True)
    login = login if login is not None else 5000 + next(_seq)
    session = _open_on_own_terminal(workspace, terminal, account_id=account_id or f"acc-{login}", server=server,
                                    login=login, password=password)
    _drop_login_message(terminal.name)
    if status == SessionStatus.OPENING:
        return session
    if status == SessionStatus.LOGIN_FAILED:
        failed = session_fail_login(session_id=session.id, code=-6, message="Terminal: Authorization failed")
        assert failed is not None
        return failed
    with terminal_lease(terminal.name) as lease:
        active = session_activate(session_id=session.id, broker={"server": server, "login": login}, lease=lease)
    assert active is not None, f"session {session.id} could not be bound to {terminal.name}"
    if status == SessionStatus.CLOSED:
        return session_close(session=active)
    if status == SessionStatus.EXPIRED:
        assert sessions_expire(session_ids=[active.id], by="tests.factories") == 1
        return BridgeSession.objects.get(id=active.id)
    assert status == SessionStatus.ACTIVE, f"make_session does not make {status!r} sessions"
    return active


# The states a task goes through to reach each state, after queued (dispatched is the claim).
_PATHS: dict[str, list[str]] = {
    TaskState.QUEUED: [],
    TaskState.CANCELLED: [TaskState.CANCELLED],
    TaskState.DISPATCHED: [TaskState.DISPATCHED],
    TaskState.UNKNOWN: [TaskState.DISPATCHED, TaskState.UNKNOWN],
    **{state: [TaskState.DISPATCHED, state] for state in FINAL_STATES if state != TaskState.CANCELLED},
}


def make_task(session: BridgeSession, *, state: str = TaskState.QUEUED, kind: str = TaskKind.ORDER_CREATE,
              request: dict[str, Any] | None = None, request_id: str | None = None, age: float = 0.0,
              **fields: Any) -> TradeTask:
    """A task of ``session`` inserted by the ledger and moved to ``state`` by ``trading.states``: the
    claim under the terminal's lease, then the change function for each later step. ``fields`` (e.g.
    ``order_ticket``, ``result``) are written by the step that reaches ``state`` (by the insert for a
    ``queued`` or ``dispatched`` task). Nothing is published to the terminal's queue.

    ``age``: the task was accepted that many seconds ago (``created_at`` set back: the test's time
    travel, not a change of the task).
    """
    request = dict(request if request is not None else {**ORDER, "n": next(_seq)})
    path = _PATHS[state]
    at_insert = fields if state in (TaskState.QUEUED, TaskState.DISPATCHED) else {}
    task = TradeTask(
        workspace_id=session.workspace_id, session=session, terminal_id=session.terminal_id,
        request_id=request_id or _unique("req"), kind=kind, request=request, tag=new_tag(),
        published_at=timezone.now(), **at_insert,
        fingerprint=fingerprint(kind, "", request, account=f"{session.login}@{session.server}"),
    )
    outcome = insert_or_replay(task, after_insert=lambda _task: None)
    assert not outcome.replayed, f"request id {task.request_id} was used before"
    task = outcome.task
    for to_state in path:
        if to_state == TaskState.DISPATCHED:
            with terminal_lease(session.terminal.name) as lease:
                moved = task_claim(task_id=task.id, lease=lease)
        else:
            moved = task_change(task_id=task.id, from_states=[task.state], to_state=to_state,
                                fields=fields if to_state == state else None)
        assert moved is not None, f"task {task.id} could not move {task.state} -> {to_state}"
        task = moved
    if age:
        TradeTask.objects.filter(pk=task.pk).update(created_at=timezone.now() - timedelta(seconds=age))
    task.refresh_from_db()
    return task
