"""Which server for the REST tier? daphne vs uvicorn on the same Django app, same database.

One command: ``.venv/bin/python bench/http_servers.py``. It makes a throwaway SQLite database in a
temp dir (or uses DATABASE_URL), creates a workspace, key and session row, then loads
``GET /mt5/client/session/{id}`` (API-key auth + two queries: a typical light REST call) against
each server with 1 and 16 keep-alive clients, and prints req/s and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, http_load, machine, wait_port  # noqa: E402
from bridge_project.processes import start_group, stop_group  # noqa: E402


def prepare(env: dict[str, str]) -> tuple[str, str]:
    """Migrate and create a key and a session; returns (key, session id)."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    code = (
        "import django,os;django.setup();"
        "from sessions.models import Workspace,BridgeSession;from sessions.api_keys import create_api_key;"
        "from terminals.models import Terminal;from django.utils import timezone;import datetime;"
        "ws,_=Workspace.objects.get_or_create(name='bench');_,k=create_api_key(ws);"
        "t,_=Terminal.objects.get_or_create(name='bench-t',defaults=dict(backend='sim',address='127.0.0.1:1'));"
        "BridgeSession.objects.filter(terminal=t).delete();"
        "s=BridgeSession.objects.create(workspace=ws,terminal=t,account_id='a',login=1,server='s',"
        "password_encrypted=b'x',status='active',expires_at=timezone.now()+datetime.timedelta(days=1));"
        "print(k);print(s.id)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "bridge_project.settings"},
        check=True, capture_output=True, text=True,
    ).stdout.split()
    return out[-2], out[-1]


SERVERS = {
    "daphne (1 process)": lambda port: [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                        "bridge_project.asgi:application"],
    "uvicorn (1 process)": lambda port: [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                                         "--no-access-log", "--log-level", "warning", "bridge_project.asgi:application"],
    "uvicorn (2 workers)": lambda port: [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                                         "--workers", "2", "--no-access-log", "--log-level", "warning",
                                         "bridge_project.asgi:application"],
    "gunicorn WSGI (2 sync workers)": lambda port: [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}",
                                                    "-w", "2", "-k", "sync", "bridge_project.wsgi:application"],
    "gunicorn WSGI (2 workers x 4 threads)": lambda port: [sys.executable, "-m", "gunicorn", "-b",
                                                           f"127.0.0.1:{port}", "-w", "2", "--threads", "4",
                                                           "bridge_project.wsgi:application"],
}
# WSGI workers keep their database connection between requests (one thread each, reused).
PERSISTENT_DB = {"gunicorn WSGI (2 sync workers)", "gunicorn WSGI (2 workers x 4 threads)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BRIDGE_VAR_DIR": tmp, "LOG_LEVEL": "WARNING", "BRIDGE_THROTTLE_RATE": "100000000/s"}
        print(f"database: {env.get('DATABASE_URL', 'SQLite (temp)')}; preparing…", flush=True)
        key, session_id = prepare(env)
        headers = {"Authorization": f"Bearer {key}"}
        path = f"/mt5/client/session/{session_id}"
        for name, argv in SERVERS.items():
            port = free_port()
            server_env = {**env, "DB_CONN_MAX_AGE": "60"} if name in PERSISTENT_DB else env
            proc = start_group(argv(port), cwd=ROOT, env=server_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            try:
                wait_port(port)
                http_load("127.0.0.1", port, "GET", path, headers, clients=2, seconds=1.0)  # warm-up
                for clients in (1, 16):
                    print(f"  {name}: {clients} client(s) for {args.seconds:.0f}s…", flush=True)
                    result = http_load("127.0.0.1", port, "GET", path, headers, clients=clients, seconds=args.seconds)
                    print(result.line(f"{name}, {clients:>2} clients"), flush=True)
            finally:
                stop_group(proc, grace=10)


if __name__ == "__main__":
    main()
