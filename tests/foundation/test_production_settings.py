"""BRIDGE_ENV=production refuses to start with development values and test switches, and turns the
security settings on; test-only crash points act only in test mode.

Each case loads the settings in a fresh interpreter (``django.setup()``) with exactly the environment given.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from tests.procs import PYTHON, ROOT

SHOW = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({k: getattr(s, k, None) for k in ('SECURE_SSL_REDIRECT', 'SECURE_HSTS_SECONDS', "
    "'SECURE_PROXY_SSL_HEADER', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SECURE_CONTENT_TYPE_NOSNIFF', "
    "'X_FRAME_OPTIONS', 'ALLOWED_HOSTS', 'BRIDGE_ADMIN_PATH', 'BRIDGE_TEST_MODE', 'SECURE_REDIRECT_EXEMPT', "
    "'DEBUG')}))"
)
# Variables of the surrounding test run that must not leak into the environments built here.
CLEARED = ("BRIDGE_ENV", "SECRET_KEY", "BRIDGE_CREDENTIALS_KEY", "ALLOWED_HOSTS", "REDIS_URL", "CELERY_BROKER_URL",
           "DEBUG", "BRIDGE_CRASH_AT", "BRIDGE_TEST_MODE", "BRIDGE_ADMIN_PATH", "SECURE_SSL_REDIRECT",
           "BRIDGE_CREDENTIALS_OLD_KEYS")


def _production(var_dir: Path, **overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update({
        "DJANGO_SETTINGS_MODULE": "bridge_project.settings",
        "BRIDGE_VAR_DIR": str(var_dir),
        "BRIDGE_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "BRIDGE_CREDENTIALS_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "ALLOWED_HOSTS": "bridge.example.com",
        "REDIS_URL": f"redis://:{secrets.token_urlsafe(16)}@redis:6379/0",
    })
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _run(env: dict[str, str], code: str = SHOW) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_production_starts_with_real_secrets_and_turns_the_security_settings_on(tmp_path: Path) -> None:
    result = _run(_production(tmp_path))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown == {
        "SECURE_SSL_REDIRECT": True, "SECURE_HSTS_SECONDS": 31_536_000,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True, "SECURE_CONTENT_TYPE_NOSNIFF": True,
        "X_FRAME_OPTIONS": "DENY", "ALLOWED_HOSTS": ["bridge.example.com"], "BRIDGE_ADMIN_PATH": "admin/",
        "BRIDGE_TEST_MODE": False, "SECURE_REDIRECT_EXEMPT": ["^health$", "^metrics$"], "DEBUG": False,
    }


def test_development_keeps_its_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update({"DJANGO_SETTINGS_MODULE": "bridge_project.settings", "BRIDGE_VAR_DIR": str(tmp_path)})
    result = _run(env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["ALLOWED_HOSTS"] == ["*"] and shown["SECURE_SSL_REDIRECT"] is False
    assert shown["SESSION_COOKIE_SECURE"] is False and shown["BRIDGE_TEST_MODE"] is False


REFUSED = {
    "no secret key": ({"SECRET_KEY": None}, "SECRET_KEY must be set"),
    "the development secret key": ({"SECRET_KEY": "dev-insecure-secret-key-change-me"}, "SECRET_KEY is the development"),
    "a placeholder secret key": ({"SECRET_KEY": "CHANGE-ME"}, "SECRET_KEY is the development key or too weak"),
    "no credentials key": ({"BRIDGE_CREDENTIALS_KEY": None}, "BRIDGE_CREDENTIALS_KEY must be set"),
    "a placeholder credentials key": ({"BRIDGE_CREDENTIALS_KEY": "CHANGE-ME"}, "BRIDGE_CREDENTIALS_KEY must be a random"),
    "no allowed hosts": ({"ALLOWED_HOSTS": None}, "ALLOWED_HOSTS must list"),
    "allowed hosts *": ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS must list"),
    "allowed hosts with *": ({"ALLOWED_HOSTS": "bridge.example.com,*"}, "'*' is refused"),
    "redis without a password": ({"REDIS_URL": "redis://redis:6379/0"}, "REDIS_URL must carry the Redis password"),
    "a broker without a password": ({"CELERY_BROKER_URL": "redis://redis:6379/1"}, "CELERY_BROKER_URL must carry"),
    "a crash switch": ({"BRIDGE_CRASH_AT": "after_claim"}, "BRIDGE_CRASH_AT is a test-only switch"),
    "test mode": ({"BRIDGE_TEST_MODE": "1"}, "BRIDGE_TEST_MODE is a test-only switch"),
    "debug": ({"DEBUG": "true"}, "DEBUG must be off"),
}


@pytest.mark.parametrize("overrides,message", REFUSED.values(), ids=REFUSED.keys())
def test_production_refuses_to_start(tmp_path: Path, overrides: dict[str, str | None], message: str) -> None:
    result = _run(_production(tmp_path, **overrides))
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr[-2000:]


def test_production_refuses_the_development_credentials_key_file(tmp_path: Path) -> None:
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    (tmp_path / "credentials.key").write_text(key + "\n")  # what development generated on this host
    result = _run(_production(tmp_path, BRIDGE_CREDENTIALS_KEY=key))
    assert result.returncode != 0 and "not the development key" in result.stderr, result.stderr[-2000:]


def test_admin_path_is_configurable(tmp_path: Path) -> None:
    code = ("import django; django.setup(); from django.urls import resolve, Resolver404\n"
            "print(resolve('/ops-7f3a/login/').view_name)\n"
            "try:\n    resolve('/admin/login/'); print('admin/ still served')\n"
            "except Resolver404:\n    print('admin/ gone')")
    result = _run(_production(tmp_path, BRIDGE_ADMIN_PATH="/ops-7f3a"), code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["admin:login", "admin/", "gone"]
    refused = _run(_production(tmp_path, BRIDGE_ADMIN_PATH="api/"))
    assert refused.returncode != 0 and "BRIDGE_ADMIN_PATH" in refused.stderr


CRASH = ("import django; django.setup(); from trading.execution import crash_point; "
         "crash_point('after_claim'); print('survived')")


def test_crash_points_act_only_in_test_mode(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update({"DJANGO_SETTINGS_MODULE": "bridge_project.settings", "BRIDGE_VAR_DIR": str(tmp_path),
                "BRIDGE_CRASH_AT": "after_claim"})
    ignored = _run(env, CRASH)  # development, not a test run
    assert ignored.returncode == 0 and "survived" in ignored.stdout, ignored.stderr
    assert "crash points act only in test mode" in ignored.stderr
    killed = _run({**env, "BRIDGE_TEST_MODE": "1"}, CRASH)  # what the processes the tests start inherit
    assert killed.returncode == -signal.SIGKILL and "survived" not in killed.stdout, killed.stderr
