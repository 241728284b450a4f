"""deploy/grafana/mt5-bridge.json: every PromQL expression reads metrics that /metrics really exposes.

The names exposed are taken from a real scrape of ``/metrics`` (its ``# TYPE`` lines, with the sample
names each type gives: ``_total`` for a counter, ``_bucket``/``_sum``/``_count`` for a histogram), so a
metric renamed in ``ops/metrics.py`` or ``bridge_project/metrics.py`` breaks this test, not a dashboard
in production.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from bridge_project import metrics
from terminals.services import record_worker_heartbeat
from tests import factories
from trading.models import TaskState, UnownedOrder

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "mt5-bridge.json"

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                   "gauge": ("",), "summary": ("", "_sum", "_count"), "untyped": ("",), "info": ("_info",)}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values(...)`` query) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, regexes, Grafana variables in them
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors ([5m], [$__rate_interval])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\w+", "", text)  # Grafana variables outside strings
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name, rest = match.group(0), text[match.end():].lstrip()
        if rest.startswith("(") or name.lower() in PROMQL_KEYWORDS:
            continue  # a function (sum, rate, histogram_quantile, label_values) or a keyword
        if re.fullmatch(r"\d[\w.]*", name) or (match.start() and text[match.start() - 1].isdigit()):
            continue
        names.add(name)
    # label_values(metric, label): the second argument is a label, not a metric.
    for metric, label in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)", text):
        names.discard(label)
        names.add(metric)
    return names


def expressions(dashboard: dict) -> list[str]:
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def labels_by_sample_name(exposition: str) -> dict[str, set[str]]:
    """Each sample name of the exposition and the label names its samples carry."""
    found: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})? \S+$", exposition, re.MULTILINE):
        found.setdefault(name, set()).update(re.findall(r'(\w+)="', labels))
    return found


def labels_used(expr: str, legend: str) -> set[str]:
    """Label names an expression groups or matches by, and those its legend shows."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", " ".join(re.findall(r"\{([^}]*)\}", text))))
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        used.update(label.strip() for label in group.split(",") if label.strip())
    used.update(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    return used


def exposed_sample_names(exposition: str) -> set[str]:
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        base = name.removesuffix("_total") if kind == "counter" else name
        names.update(base + suffix for suffix in SAMPLE_SUFFIXES[kind])
    return names


def test_the_expression_parser_finds_metric_names_only() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, kind) (rate(bridge_x_bucket{terminal=~"$terminal", a="b{c}"}'
            '[$__rate_interval]))) / on (kind) group_left bridge_y offset 5m > bool 2e3')
    assert metric_names(expr) == {"bridge_x_bucket", "bridge_y"}
    assert metric_names("label_values(bridge_worker_up, terminal)") == {"bridge_worker_up"}


@pytest.mark.django_db
def test_every_expression_reads_a_metric_that_metrics_exposes(ops_client: APIClient, clean_metrics: None) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "mt5-bridge" and dashboard["panels"]
    response = ops_client.get("/metrics")
    assert response.status_code == 200
    exposed = exposed_sample_names(response.content.decode())
    assert {"bridge_queue_depth", "bridge_tasks_finished_total", "bridge_http_request_seconds_bucket"} <= exposed
    exprs = expressions(dashboard)
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exposed, f"{expr!r} reads {sorted(names - exposed)}, which /metrics does not expose"
        used |= names
    # The panels the operators asked for are there.
    for name in ("bridge_queue_depth", "bridge_worker_up", "bridge_tasks_finished_total",
                 "bridge_task_accept_to_final_seconds_bucket", "bridge_http_request_seconds_bucket",
                 "bridge_events_published_total", "bridge_oldest_queued_task_age_seconds"):
        assert name in used, name


@pytest.mark.django_db
def test_every_label_a_panel_groups_by_or_shows_is_one_its_metrics_carry(
    ops_client: APIClient, clean_metrics: None, settings,
) -> None:
    """With every family populated (a session, a task in flight, one finished, an orphan, each process
    counter counted once through ``bridge_project.metrics``), a ``by (stat)`` or ``{{termnial}}`` typo
    that would leave a panel empty fails here."""
    settings.BRIDGE_METRICS_SETTLE_SECONDS = 0.0
    with metrics._held_lock:  # Redis is up: no hold-off left by an earlier test's outage delays the counts
        metrics._held.clear()
        metrics._down_until = 0.0
    session = factories.make_session()
    record_worker_heartbeat(session.terminal.name, f"{session.terminal.name}@tests.ops.test_grafana:0")
    factories.make_task(session)
    factories.make_task(session, state=TaskState.FILLED)
    UnownedOrder.objects.create(terminal=session.terminal, source="orders", ticket=1, tag="b:x")
    metrics.reconciliation_outcome("filled")
    metrics.broker_order_orphaned(session.terminal.name)
    metrics.task_republished("sweeper")
    metrics.redis_unavailable("publish")
    metrics.observe("bridge_http_request_seconds", 0.01, method="GET", status="2xx")
    exposition = ops_client.get("/metrics").content.decode()
    carried = labels_by_sample_name(exposition)
    dashboard = json.loads(DASHBOARD.read_text())
    checked = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert all(carried.get(name) is not None for name in names), (target["expr"], exposition[:3000])
            available = set().union(*(carried[name] for name in names))
            used = labels_used(target["expr"], target.get("legendFormat", ""))
            assert used <= available, f"{panel['title']}: {sorted(used - available)} not a label of {sorted(names)}"
            checked += 1
    assert checked >= 15
    assert labels_used('sum by (stat) (rate(x{terminal=~"$t"}[5m]))', "{{termnial}}") == {"stat", "terminal",
                                                                                          "termnial"}


def test_a_renamed_metric_would_be_caught() -> None:
    """The control: the check above fails for a name that is not exposed."""
    exposed = exposed_sample_names("# TYPE bridge_tasks_finished counter\n# TYPE bridge_queue_depth gauge\n")
    assert exposed >= {"bridge_tasks_finished_total", "bridge_queue_depth"}
    assert not metric_names("rate(bridge_tasks_finished[5m])") <= exposed  # counters are read as _total
    assert not metric_names("bridge_queue_depths") <= exposed


def test_panels_have_unique_ids_and_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
