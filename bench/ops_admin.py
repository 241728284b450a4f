"""Ops on a big ledger: the tasks admin, /ops/tasks, /ops/terminals and /metrics with 1,000,000 tasks.

Needs PostgreSQL: it creates (or reuses) the database named by ``--database`` (default
``bridge_ops_bench``), migrates it, fills it with ``--tasks`` rows by ``generate_series`` (once; reused
when already that size), ANALYZEs, and times each page with Django's test client (no HTTP server in
the way: this measures the queries and rendering). Prints one line per page: median and max of
``--repeat`` runs, and the number of SQL queries.

    .venv/bin/python bench/ops_admin.py --tasks 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILL_SQL = """
INSERT INTO trading_task (id, workspace_id, session_id, terminal_id, request_id, fingerprint, kind, state,
    request, tag, order_ticket, deal_ticket, position_ticket, attempts, status_code, created_at, updated_at,
    published_at, dispatched_at, finished_at)
SELECT
    'tsk_' || lpad(to_hex(g), 24, '0'),
    %(workspace)s,
    CASE WHEN g %% 2 = 0 THEN %(session_a)s ELSE %(session_b)s END,
    CASE WHEN g %% 2 = 0 THEN %(terminal_a)s ELSE %(terminal_b)s END,
    'req-' || g,
    lpad(to_hex(g), 64, '0'),
    (ARRAY['order.create','order.create','order.create','position.close','order.modify'])[1 + g %% 5],
    CASE WHEN g > %(n)s - 50 THEN 'queued'
         WHEN g %% 97 = 0 THEN 'rejected' WHEN g %% 13 = 0 THEN 'placed' ELSE 'filled' END,
    jsonb_build_object('symbol', 'EURUSD', 'type', 'BUY', 'volume', 0.1),
    CASE WHEN g > %(n)s - 50 THEN '' ELSE 'b' || to_hex(g) END,
    CASE WHEN g > %(n)s - 50 THEN NULL ELSE 100000000 + g END,
    CASE WHEN g > %(n)s - 50 THEN NULL ELSE 200000000 + g END,
    CASE WHEN g > %(n)s - 50 THEN NULL ELSE 300000000 + g END,
    1, 202,
    now() - make_interval(secs => (%(n)s - g) * 0.5),
    now() - make_interval(secs => (%(n)s - g) * 0.5),
    now() - make_interval(secs => (%(n)s - g) * 0.5),
    CASE WHEN g > %(n)s - 50 THEN NULL ELSE now() - make_interval(secs => (%(n)s - g) * 0.5 - 0.01) END,
    CASE WHEN g > %(n)s - 50 THEN NULL ELSE now() - make_interval(secs => (%(n)s - g) * 0.5 - 0.05 - (g %% 40) * 0.02) END
FROM generate_series(1, %(n)s) AS g
"""


def _setup(database: str) -> None:
    exists = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atqc",
                             f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
                            capture_output=True, text=True).stdout.strip()
    if exists != "1":
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", database], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--database", default="bridge_ops_bench")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    _setup(args.database)
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/5")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bridge_project.settings")
    os.environ["BRIDGE_OPS_TOKEN"] = "bench-ops-token"

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, reset_queries
    from django.test import Client
    from django.utils import timezone

    from bench.common import machine
    from bridge_project import metrics
    from sessions.models import BridgeSession, Workspace
    from terminals.models import Terminal
    from trading.models import TradeTask

    settings.DEBUG = True  # count queries
    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0)
    ws, _ = Workspace.objects.get_or_create(name="bench")
    terminals = [Terminal.objects.get_or_create(name=n, defaults={"backend": "sim", "address": "127.0.0.1:1"})[0]
                 for n in ("bench-a", "bench-b")]
    sessions = []
    for t in terminals:
        s = BridgeSession.objects.filter(terminal=t).first() or BridgeSession.objects.create(
            workspace=ws, terminal=t, account_id="bench", login=1, server="Demo", password_encrypted=b"x",
            status="active", expires_at=timezone.now() + timezone.timedelta(days=365))
        sessions.append(s)
    have = TradeTask.objects.count()
    if have != args.tasks:
        print(f"filling {args.tasks:,} tasks (had {have:,}) ...", flush=True)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE trading_task CASCADE")
            cursor.execute(FILL_SQL, {"workspace": ws.id, "session_a": sessions[0].id, "session_b": sessions[1].id,
                                      "terminal_a": terminals[0].id, "terminal_b": terminals[1].id, "n": args.tasks})
            cursor.execute("ANALYZE trading_task")
        print(f"filled in {time.perf_counter() - started:.1f}s", flush=True)
    user = get_user_model().objects.filter(username="bench-admin").first() or \
        get_user_model().objects.create_superuser("bench-admin", "b@example.com", "bench-pass-1")
    browser = Client()
    browser.force_login(user)
    ops = Client(HTTP_AUTHORIZATION="Bearer bench-ops-token")
    r = metrics.client()
    for key in r.scan_iter(f"{metrics.KEY_PREFIX}:latency*"):
        r.delete(key)

    mid = args.tasks // 2
    pages = [
        ("admin changelist (newest 100)", browser, "/admin/trading/task/"),
        ("admin filter state=queued", browser, "/admin/trading/task/?state__exact=queued"),
        ("admin filter state=rejected", browser, "/admin/trading/task/?state__exact=rejected"),
        ("admin filter kind=position.close", browser, "/admin/trading/task/?kind__exact=position.close"),
        ("admin filter terminal", browser, f"/admin/trading/task/?terminal__id__exact={terminals[1].id}"),
        ("admin filter session", browser, f"/admin/trading/task/?session={sessions[0].id}"),
        ("admin filter age>1d", browser, "/admin/trading/task/?age=1d"),
        ("admin page 50", browser, "/admin/trading/task/?p=50"),
        ("admin search request id", browser, f"/admin/trading/task/?q=req-{mid}"),
        ("admin search ticket", browser, f"/admin/trading/task/?q={200000000 + mid}"),
        ("admin change page", browser, f"/admin/trading/task/tsk_{mid:024x}/change/"),
        ("ops/tasks (in flight)", ops, "/mt5/client/ops/tasks"),
        ("ops/tasks state=filled", ops, "/mt5/client/ops/tasks?state=filled&limit=100"),
        ("ops/terminals", ops, "/mt5/client/ops/terminals"),
    ]
    print(f"machine: {machine()}")
    print(f"ledger: {TradeTask.objects.count():,} tasks (PostgreSQL {connection.pg_version})")
    started = time.perf_counter()
    reset_queries()
    first = ops.get("/metrics")
    assert first.status_code == 200, first.content[:300]
    print(f"{'/metrics first scrape (folds all finished tasks)':48s} {1000 * (time.perf_counter() - started):8.1f} ms"
          f"  {len(connection.queries):3d} queries")
    pages.append(("/metrics (steady scrape)", ops, "/metrics"))
    for label, who, url in pages:
        times = []
        for _ in range(args.repeat):
            reset_queries()
            t0 = time.perf_counter()
            response = who.get(url)
            times.append(1000 * (time.perf_counter() - t0))
            assert response.status_code == 200, (url, response.status_code, response.content[:300])
        print(f"{label:48s} {statistics.median(times):8.1f} ms median, {max(times):8.1f} ms max"
              f"  {len(connection.queries):3d} queries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
