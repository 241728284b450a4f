"""Tasks admin: filters, search, read-only detail and actions, with a query-count bound (no N+1)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from bridge_project import metrics
from ops import selectors as ops
from sessions.models import Workspace
from terminals.models import Terminal
from tests.ops.conftest import drain_queue, make_session, make_task
from trading import admin as task_admin
from trading.models import TaskState, TaskTransition, TradeTask

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/trading/tradetask/"
# Whatever the number of rows: session, user, the page's rows, the capped count, filters' choices
# (terminals, live sessions), plus a small constant. A per-row query would blow through it.
MAX_QUERIES = 12


@pytest.fixture
def world(db) -> dict:
    """Two terminals (names no running worker consumes), two workspaces, a session on each terminal."""
    t1 = Terminal.objects.create(name="ops-t1", backend="sim", address="127.0.0.1:1")
    t2 = Terminal.objects.create(name="ops-t2", backend="sim", address="127.0.0.1:2")
    w1, w2 = Workspace.objects.create(name="ops-w1"), Workspace.objects.create(name="ops-w2")
    s1, s2 = make_session(w1, t1), make_session(w2, t2)
    yield {"t1": t1, "t2": t2, "s1": s1, "s2": s2}
    drain_queue("ops-t1")
    drain_queue("ops-t2")


def _rows(response) -> set[str]:
    return {t.id for t in response.context["cl"].result_list}


def _get(browser: Client, url: str, max_queries: int = MAX_QUERIES):
    with CaptureQueriesContext(connection) as queries:
        response = browser.get(url)
    assert response.status_code == 200, response.content[:500]
    assert len(queries) <= max_queries, "\n".join(q["sql"][:200] for q in queries.captured_queries)
    return response, len(queries)


def test_changelist_query_count_does_not_grow_with_rows(staff_client: Client, world: dict) -> None:
    for i in range(5):
        make_task(world["s1" if i % 2 else "s2"], order_ticket=1000 + i)
    _, few = _get(staff_client, CHANGELIST)
    for i in range(60):
        make_task(world["s1" if i % 2 else "s2"], state=TaskState.FILLED, order_ticket=2000 + i)
    response, many = _get(staff_client, CHANGELIST)
    assert len(response.context["cl"].result_list) == 65
    assert many == few, (few, many)
    print(f"changelist queries: {few} with 5 rows, {many} with 65 rows")
    body = response.content.decode()
    assert "ops-t1" in body and "ops-w2" in body  # related names rendered from the joined rows


@pytest.mark.parametrize("query, expect", [
    ("state__exact=queued", {"q1", "q2"}),
    ("kind__exact=position.close", {"c1"}),
    ("terminal__id__exact={t2}", {"q2", "f2"}),
    ("session={s1}", {"q1", "c1", "old1"}),
    ("age=1h", {"old1"}),
    ("state__exact=queued&terminal__id__exact={t1}", {"q1"}),
])
def test_filters(staff_client: Client, world: dict, query: str, expect: set[str]) -> None:
    s1, s2 = world["s1"], world["s2"]
    named = {
        "q1": make_task(s1), "q2": make_task(s2), "f2": make_task(s2, state=TaskState.FILLED),
        "c1": make_task(s1, kind="position.close", state=TaskState.FILLED),
        "old1": make_task(s1, state=TaskState.REJECTED, age=2 * 3600),
    }
    url = f"{CHANGELIST}?" + query.format(t1=world["t1"].id, t2=world["t2"].id, s1=s1.id)
    response, _ = _get(staff_client, url)
    assert _rows(response) == {named[k].id for k in expect}


def test_search_by_task_id_request_id_and_tickets(staff_client: Client, world: dict) -> None:
    a = make_task(world["s1"], order_ticket=424242, deal_ticket=525252, position_ticket=626262)
    b = make_task(world["s2"])
    for term, expect in [(a.id, {a.id}), (b.request_id, {b.id}), ("424242", {a.id}), ("525252", {a.id}),
                         ("626262", {a.id}), ("999", set()), ("req-ops", set()), ("x' OR 1=1 --", set())]:
        response, _ = _get(staff_client, f"{CHANGELIST}?q={term}")
        assert _rows(response) == expect, term


def test_change_page_shows_request_result_and_history_read_only(staff_client: Client, world: dict) -> None:
    task = make_task(world["s1"], result={"retcode": 10009, "retcodeText": "Request completed", "deal": 77})
    for to_state in ("dispatched", "filled"):
        TaskTransition.objects.create(task=task, from_state="queued", to_state=to_state, detail={"n": to_state})
    response, _ = _get(staff_client, f"{CHANGELIST}{task.id}/change/", max_queries=20)
    body = response.content.decode()
    assert "Request completed" in body and "EURUSD" in body
    assert body.count("dispatched") >= 1 and "filled" in body
    # Read-only: no editable input for the ledger's fields, no add/delete of transitions.
    for name in ("request", "result", "state", "transitions-0-to_state", "transitions-0-detail"):
        assert f'name="{name}"' not in body
    assert "transitions-__prefix__" not in body
    assert staff_client.get(f"{CHANGELIST}add/").status_code == 403
    assert staff_client.post(f"{CHANGELIST}{task.id}/delete/", {"post": "yes"}).status_code == 403


def test_action_cancel_queued_moves_only_queued_tasks(staff_client: Client, world: dict) -> None:
    queued, filled = make_task(world["s1"]), make_task(world["s1"], state=TaskState.FILLED)
    response = staff_client.post(CHANGELIST, {"action": "cancel_queued", "_selected_action": [queued.id, filled.id]},
                                 follow=True)
    assert response.status_code == 200
    queued.refresh_from_db()
    filled.refresh_from_db()
    assert queued.state == "cancelled" and queued.finished_at is not None
    assert filled.state == "filled"
    last = TaskTransition.objects.filter(task=queued).order_by("-id").first()
    assert (last.from_state, last.to_state, last.detail["by"]) == ("queued", "cancelled", "admin")
    messages = [str(m) for m in response.context["messages"]]
    assert any("cancelled 1 task" in m for m in messages) and any("not queued" in m for m in messages)


def test_action_republish_puts_queued_tasks_back_on_the_broker(staff_client: Client, world: dict,
                                                              clean_metrics: None) -> None:
    stuck = make_task(world["s1"], age=120)
    done = make_task(world["s1"], state=TaskState.FILLED)
    drain_queue("ops-t1")
    response = staff_client.post(CHANGELIST, {"action": "republish", "_selected_action": [stuck.id, done.id]},
                                 follow=True)
    assert response.status_code == 200
    assert ops.queue_depths(["terminal.ops-t1"]) == {"terminal.ops-t1": 1}  # one message, for the queued one
    stuck.refresh_from_db()
    assert stuck.published_at is not None and stuck.state == "queued"
    assert metrics.read_counter("bridge_tasks_republished") == {("admin",): 1.0}


def test_action_reconcile_asks_the_tasks_terminal(staff_client: Client, world: dict) -> None:
    dispatched = make_task(world["s2"], state=TaskState.DISPATCHED)
    make_task(world["s1"], state=TaskState.FILLED)
    drain_queue("ops-t2")
    response = staff_client.post(CHANGELIST, {"action": "reconcile", "_selected_action": [dispatched.id]},
                                 follow=True)
    assert response.status_code == 200
    assert any("ops-t2" in str(m) for m in response.context["messages"])
    # The reconciliation request travels to that terminal's own queue (its pinned worker runs it).
    assert ops.queue_depths(["terminal.ops-t2", "terminal.ops-t1"]) == {"terminal.ops-t2": 1, "terminal.ops-t1": 0}


def test_counts_stay_bounded(staff_client: Client, world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_admin, "COUNT_CAP", 5)
    for _ in range(8):
        make_task(world["s1"])
    response, _ = _get(staff_client, f"{CHANGELIST}?state__exact=queued")
    assert response.context["cl"].result_count == 5  # filtered: counted up to the cap only
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE trading_task")
    response, _ = _get(staff_client, CHANGELIST)
    assert response.context["cl"].result_count == 8  # unfiltered: the planner's estimate (exact after ANALYZE)
    assert TradeTask.objects.count() == 8


def test_non_staff_cannot_open_the_tasks_admin(client) -> None:
    assert Client().get(CHANGELIST).status_code == 302  # to the admin login


def test_terminals_admin_shows_worker_and_bound_session_without_n_plus_1(staff_client: Client, world: dict) -> None:
    from django.utils import timezone

    Terminal.objects.filter(pk=world["t1"].pk).update(worker_heartbeat_at=timezone.now(), worker_hostname="t1@vm")
    response, first = _get(staff_client, "/admin/terminals/terminal/")
    body = response.content.decode()
    assert world["s1"].id in body and world["s2"].id in body and "t1@vm" in body
    rows = {t.name: t for t in response.context["cl"].result_list}
    assert rows["ops-t1"].live_session_id == world["s1"].id
    for i in range(10):
        Terminal.objects.create(name=f"ops-x{i}", backend="sim", address="127.0.0.1:9")
    _, more = _get(staff_client, "/admin/terminals/terminal/")
    assert more == first
