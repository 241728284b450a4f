"""Ops fixtures: the ops token, a staff browser session, task rows, clean metric and queue keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from bridge_project import metrics
from ops import selectors as ops
from sessions.models import BridgeSession, SessionStatus, Workspace
from terminals.models import Terminal
from tests import factories
from trading.models import TaskState, TradeTask

OPS_TOKEN = "ops-token-for-tests-0123456789"


@pytest.fixture
def ops_token(settings) -> str:
    settings.BRIDGE_OPS_TOKEN = OPS_TOKEN
    return OPS_TOKEN


@pytest.fixture
def ops_client(ops_token: str) -> APIClient:
    """A client with the ops token, whose rate-limit bucket starts empty: every test of the suite uses
    the same token, so within one minute the earlier tests' reads would count against this one's."""
    import redis

    from bridge_project import ratelimit

    bucket = ratelimit._redis_key("ops", "token:" + ratelimit.digest(ops_token))
    redis.Redis.from_url(ratelimit.redis_url()).delete(bucket)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {ops_token}")
    return api


@pytest.fixture
def staff_client(db) -> Client:
    user = get_user_model().objects.create_superuser("ops-admin", "ops@example.com", "pw-ops-admin-1")
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.fixture
def clean_metrics() -> Iterator[None]:
    """Metric hashes in this test's Redis start empty (counters are cumulative across tests)."""
    def wipe() -> None:
        r = metrics.client()
        keys = list(r.scan_iter(f"{metrics.KEY_PREFIX}:*"))
        if keys:
            r.delete(*keys)
    wipe()
    yield
    wipe()


def drain_queue(terminal_name: str) -> None:
    """Remove any message left in a terminal's Celery queue by a test."""
    ops.broker().delete(*ops.queue_keys(f"terminal.{terminal_name}"))


def make_session(workspace: Workspace, terminal: Terminal, status: str = SessionStatus.ACTIVE) -> BridgeSession:
    """A session of ``workspace`` on ``terminal`` (a row with no worker), through the session services."""
    return factories.make_session(workspace, terminal, status=status)


def make_task(session: BridgeSession, *, state: str = TaskState.QUEUED, kind: str = "order.create",
              age: float = 0.0, **fields) -> TradeTask:
    """A ledger row as the API would insert it, moved to ``state`` by the state functions, ``age`` seconds old."""
    return factories.make_task(session, state=state, kind=kind, age=age, **fields)
