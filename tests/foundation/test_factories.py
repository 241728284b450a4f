"""tests/factories.py builds rows the way the product does: transitions, binding, lease and all."""

from __future__ import annotations

import pytest

from sessions.api_keys import authenticate_key
from sessions.models import SessionStatus, SessionTransition
from terminals.lease import lease_acquire
from terminals.models import Terminal
from tests.factories import make_api_key, make_session, make_task, make_terminal, make_workspace
from trading.models import TaskState, TaskTransition, TradeTask

pytestmark = pytest.mark.django_db


def _task_path(task: TradeTask) -> list[str]:
    return list(TaskTransition.objects.filter(task=task).order_by("id").values_list("to_state", flat=True))


def test_an_api_key_authenticates_for_its_workspace() -> None:
    workspace = make_workspace()
    row, key = make_api_key(workspace)
    assert authenticate_key(key).id == row.id and row.workspace_id == workspace.id


def test_an_active_session_went_through_opening_and_is_bound_to_its_terminal() -> None:
    session = make_session(login=4242)
    assert session.status == SessionStatus.ACTIVE and session.login == 4242
    path = list(SessionTransition.objects.filter(session=session).order_by("id").values_list("to_status", flat=True))
    assert path == [SessionStatus.OPENING, SessionStatus.ACTIVE]
    terminal = Terminal.objects.get(id=session.terminal_id)
    assert terminal.bound_session_id == session.id and terminal.bound_login == 4242
    # The factories gave the lease back: a worker (or the test) can take it.
    assert lease_acquire(terminal_name=terminal.name, holder="someone@else:1", ttl=5) is not None


@pytest.mark.parametrize("status", [SessionStatus.CLOSED, SessionStatus.EXPIRED, SessionStatus.LOGIN_FAILED,
                                    SessionStatus.OPENING])
def test_sessions_reach_other_statuses_through_the_services(status: str) -> None:
    session = make_session(status=status)
    assert session.status == status
    assert SessionTransition.objects.filter(session=session, to_status=status).exists()


def test_a_second_live_session_on_one_terminal_is_refused_as_in_the_product() -> None:
    terminal = make_terminal()
    make_session(terminal=terminal)
    with pytest.raises(Exception, match="already has a live session"):
        make_session(terminal=terminal)


@pytest.mark.parametrize(("state", "path"), [
    (TaskState.QUEUED, ["queued"]),
    (TaskState.DISPATCHED, ["queued", "dispatched"]),
    (TaskState.FILLED, ["queued", "dispatched", "filled"]),
    (TaskState.UNKNOWN, ["queued", "dispatched", "unknown"]),
    (TaskState.CANCELLED, ["queued", "cancelled"]),
])
def test_tasks_reach_their_state_through_the_ledger_and_the_state_functions(state: str, path: list[str]) -> None:
    session = make_session()
    task = make_task(session, state=state)
    assert task.state == state and _task_path(task) == path
    assert task.workspace_id == session.workspace_id and task.terminal_id == session.terminal_id
    assert len(task.fingerprint) == 64 and task.tag
    assert task.attempts == (1 if "dispatched" in path else 0)
    assert (task.finished_at is not None) == (state in (TaskState.FILLED, TaskState.CANCELLED))


def test_task_fields_and_age() -> None:
    session = make_session()
    filled = make_task(session, state=TaskState.FILLED, order_ticket=77, result={"retcode": 10009})
    assert filled.order_ticket == 77 and filled.result == {"retcode": 10009}
    queued = make_task(session, order_ticket=78, age=120)
    assert queued.order_ticket == 78 and _task_path(queued) == ["queued"]
    assert (filled.created_at - queued.created_at).total_seconds() >= 119
