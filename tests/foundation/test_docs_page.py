"""/api/docs/ renders every operation in headless Chromium with no network but localhost.

The Swagger UI assets come from the bridge's own static files (drf-spectacular-sidecar, served by
WhiteNoise), so the page works on a host without internet access and runs no third-party script. Checked
against real server processes: daphne (the embedded stack, development settings) and gunicorn (the compose
web tier, production settings with a password-protected Redis). Chromium resolves no host name but
127.0.0.1 and sends everything else to a dead proxy; a control load of the old CDN URL must fail.
Chromium is Debian's (scripts/run_tests.sh installs ``chromium chromium-driver``); nothing is installed here.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.procs import PYTHON, Proc, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OFFLINE_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # No name resolves but 127.0.0.1, and any connection that is not to loopback (which Chromium never
    # proxies) goes to a proxy on the discard port, where nothing listens.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=127.0.0.1:9",
]
OPERATION = re.compile(r'class="opblock opblock-(get|post|put|patch|delete)[ "]')
PATH_OF_OPERATION = re.compile(r'class="opblock-summary-path" data-path="([^"]+)"')


def _dump_dom(chromium: str, url: str, tmp_path: Path) -> tuple[str, str]:
    """The DOM of ``url`` after scripts ran (virtual time budget), and Chromium's stderr."""
    profile = tmp_path / f"chromium-{secrets.token_hex(4)}"
    profile.mkdir()
    result = subprocess.run(
        [chromium, *OFFLINE_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    return result.stdout, result.stderr


def _wait_listening(proc: Proc, port: int) -> None:
    def listening() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    proc.wait_for(listening, 60, "listening")


def _schema_operations(base: str) -> set[tuple[str, str]]:
    with urllib.request.urlopen(f"{base}/api/schema/", timeout=30) as response:
        schema = yaml.safe_load(response.read())
    return {(method, path) for path, item in schema["paths"].items() for method in item
            if method in {"get", "post", "put", "patch", "delete"}}


def _test_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BRIDGE_CRASH_AT", None)
    return env


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("Debian's chromium is missing: scripts/run_tests.sh installs `chromium chromium-driver`")
    return CHROMIUM


@pytest.fixture
def daphne(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc(f"daphne-docs-{port}", [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                                        "bridge_project.asgi:application"], _test_env(), tmp_path).start()
    try:
        _wait_listening(proc, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
def production_gunicorn(tmp_path: Path) -> Iterator[str]:
    """gunicorn as compose runs it (BRIDGE_ENV=production), with a Redis that requires a password."""
    redis_port, port = free_port(), free_port()
    password = secrets.token_urlsafe(24)
    redis_proc = Proc(f"redis-docs-{redis_port}", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                                    "--save", "", "--appendonly", "no", "--requirepass", password],
                      dict(os.environ), tmp_path).start()
    env = _test_env()
    env.pop("BRIDGE_TEST_MODE", None)
    env.update({
        "BRIDGE_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "BRIDGE_CREDENTIALS_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "ALLOWED_HOSTS": "127.0.0.1",
        "REDIS_URL": f"redis://:{password}@127.0.0.1:{redis_port}/0",
        "SECURE_SSL_REDIRECT": "false",  # Chromium speaks plain HTTP to the test server (no TLS proxy here)
    })
    env.pop("CELERY_BROKER_URL", None)
    proc = Proc(f"gunicorn-docs-{port}", [PYTHON, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2", "-k", "sync",
                                          "bridge_project.wsgi:application"], env, tmp_path).start()
    try:
        _wait_listening(redis_proc, redis_port)
        _wait_listening(proc, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
        redis_proc.stop()


def _assert_docs_render_offline(base: str, chromium: str, tmp_path: Path) -> None:
    expected = _schema_operations(base)
    assert len(expected) >= 20
    started = time.monotonic()
    dom, stderr = _dump_dom(chromium, f"{base}/api/docs/", tmp_path)
    rendered = {(m.group(1), path) for m, path in zip(OPERATION.finditer(dom), PATH_OF_OPERATION.findall(dom),
                                                       strict=True)}
    assert rendered == expected, (f"rendered {len(rendered)} of {len(expected)} operations in "
                                  f"{time.monotonic() - started:.1f}s\n{stderr[-2000:]}\n{dom[:2000]}")
    assert "mt5-bridge API" in dom
    # Every asset of the page is the bridge's own, pinned by the sidecar's version.
    with urllib.request.urlopen(f"{base}/api/docs/", timeout=30) as response:
        page = response.read().decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/static/drf_spectacular_sidecar/") for a in assets), assets
    assert "cdn" not in page.lower()


def test_docs_page_renders_offline_under_daphne(daphne: str, chromium: str, tmp_path: Path) -> None:
    _assert_docs_render_offline(daphne, chromium, tmp_path)


def test_docs_page_renders_offline_under_production_gunicorn(production_gunicorn: str, chromium: str,
                                                            tmp_path: Path) -> None:
    _assert_docs_render_offline(production_gunicorn, chromium, tmp_path)
    # Behind the TLS proxy (it sets X-Forwarded-Proto): HSTS, and the security headers on every answer.
    request = urllib.request.Request(f"{production_gunicorn}/api/docs/", headers={"X-Forwarded-Proto": "https"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_browser_really_has_no_network(chromium: str, tmp_path: Path) -> None:
    """The control: what the page used to load (Swagger UI from a public CDN) does not load here."""
    dom, stderr = _dump_dom(chromium, "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css", tmp_path)
    assert "swagger" not in dom.lower()
    assert re.search(r"net::ERR_(PROXY_CONNECTION_FAILED|NAME_NOT_RESOLVED)", stderr), stderr[-2000:]
