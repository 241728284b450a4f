"""Limits that cannot be slipped (issue #11): an atomic Redis rate limiter, one script call per request.

Everything real: the concurrency and outage tests drive a gunicorn (3 worker processes x 8 threads)
started on a free port against the test database and the test Redis, with 16 client threads, each
with its own keep-alive connection. Client threads bind distinct loopback source addresses
(127.0.0.x), so the server sees distinct client IPs. The other tests use Django's test client on the
same real Redis. Every rate-limit key is cleared before and after each test.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from bridge_project import metrics, ratelimit
from sessions.api_keys import create_api_key
from sessions.models import Workspace
from tests.conftest import _db_env
from tests.faults.conftest import PrivateRedis, wait_until
from tests.procs import PYTHON, Proc, free_port

pytestmark = pytest.mark.django_db(transaction=True)
BASE = "/mt5/client"
UNKNOWN_TASK = f"{BASE}/tasks/tsk_unknown"  # authenticated: 404 from the database, nothing else involved
OPS_TOKEN = "ops-token-for-rate-limit-tests-0123456789"


# -- fixtures and helpers ------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def clean_limits() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)

    def clear() -> None:
        keys = list(client.scan_iter("bridge:rl:*", count=1000))
        if keys:
            client.delete(*keys)
        ratelimit.reset_hold_off()

    clear()
    yield client
    clear()


def new_key(name: str) -> tuple[Workspace, str]:
    workspace = Workspace.objects.create(name=name)
    return workspace, create_api_key(workspace)[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def assert_rate_limited(answer: Answer, max_wait: float) -> None:
    """429 with Retry-After (whole seconds, within the window) and the API's error body."""
    assert answer.status == 429, (answer.status, answer.body)
    wait = int(answer.headers["retry-after"])
    assert 1 <= wait <= max_wait, wait
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == "RateLimited", body
    assert body["error"]["details"]["retryAfter"] == wait, body


def answer_of(response) -> Answer:  # a Django test client response
    return Answer(response.status_code, {k.lower(): v for k, v in response.items()}, response.content)


@dataclass
class Web:
    """A gunicorn serving the bridge on ``port`` (its log: ``proc.log()``)."""

    port: int
    proc: Proc

    def connect(self, source: str = "127.0.0.1") -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(source, 0))

    def call(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None,
             source: str = "127.0.0.1", conn: http.client.HTTPConnection | None = None) -> Answer:
        own = conn is None
        conn = conn or self.connect(source)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            if own:
                conn.close()

    def flood(self, request: Callable[[int, int], tuple[str, str, dict[str, str]]], *, clients: int = 16,
              per_client: int = 10, source: str = "127.0.0.1") -> tuple[list[Answer], float]:
        """``clients`` threads, each with its own connection from ``source``, released together, each
        sending ``per_client`` requests (``request(client, n)`` -> method, path, headers)."""
        answers: list[list[Answer]] = [[] for _ in range(clients)]
        errors: list[BaseException] = []
        start = threading.Barrier(clients + 1)

        def run(i: int) -> None:
            conn = self.connect(source)
            conn.connect()
            try:
                start.wait()
                for n in range(per_client):
                    method, path, headers = request(i, n)
                    answers[i].append(self.call(method, path, headers, conn=conn))
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        start.wait(timeout=30)
        began = time.monotonic()
        for t in threads:
            t.join(120)
        assert not errors, errors
        return [a for per in answers for a in per], time.monotonic() - began


@pytest.fixture
def web(tmp_path: Path, django_db_blocker) -> Iterator[Callable[..., Web]]:
    """Start gunicorn with extra environment (the rates under test); stopped after the test."""
    procs: list[Proc] = []

    def start(**extra_env: str) -> Web:
        port = free_port()
        with django_db_blocker.unblock():
            env = {**os.environ, **_db_env(), "DB_CONN_MAX_AGE": "0", **extra_env}
        argv = [PYTHON, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "3", "--threads", "8",
                "--graceful-timeout", "2", "bridge_project.wsgi:application"]
        proc = Proc(f"gunicorn-{port}", argv, env, tmp_path).start()
        procs.append(proc)
        server = Web(port, proc)

        def answers() -> bool:
            try:
                server.call("GET", "/health")
                return True
            except OSError:
                return False

        proc.wait_for(answers, 60, "answering HTTP")
        return server

    yield start
    for proc in procs:
        proc.stop()


# -- the limiter itself --------------------------------------------------------------------------------
def test_rate_limit_hit_is_atomic_exact_and_says_how_long_to_wait() -> None:
    allowed: list[bool] = []
    start = threading.Barrier(16)

    def run() -> None:
        start.wait()
        for _ in range(10):
            allowed.append(ratelimit.rate_limit_hit(scope="t-atomic", key="k", rate="60/min") is None)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert Counter(allowed) == {True: 60, False: 100}

    # Other keys and scopes have their own budget; a disabled rate never limits.
    assert ratelimit.rate_limit_hit(scope="t-atomic", key="other", rate="60/min") is None
    assert ratelimit.rate_limit_hit(scope="t-other", key="k", rate="60/min") is None
    assert all(ratelimit.rate_limit_hit(scope="t-atomic", key="k", rate=r) is None for r in ("off", "0", ""))

    # The wait is exact: allowed again once it has passed (not before), and refusals are not counted.
    assert [ratelimit.rate_limit_hit(scope="t-window", key="k", rate="3/2s") for _ in range(3)] == [None] * 3
    refused_at = time.monotonic()
    wait = ratelimit.rate_limit_hit(scope="t-window", key="k", rate="3/2s")
    assert wait is not None and 0 < wait <= 2.0, wait
    wait_until(lambda: ratelimit.rate_limit_hit(scope="t-window", key="k", rate="3/2s") is None, 5,
               "allowed again", interval=0.02)
    assert time.monotonic() - refused_at >= wait - 0.05

    async def from_async() -> float | None:
        return await ratelimit.arate_limit_hit(scope="t-async", key="k", rate="1/min")

    assert asyncio.run(from_async()) is None
    assert asyncio.run(from_async()) is not None


def test_rate_limit_hit_fails_open_when_its_redis_is_unreachable(settings) -> None:
    before = metrics.read_counter("bridge_redis_unavailable").get(("throttle",), 0)
    settings.BRIDGE_THROTTLE_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    assert [ratelimit.rate_limit_hit(scope="t-down", key="k", rate="1/min") for _ in range(5)] == [None] * 5
    after = wait_until(lambda: metrics.read_counter("bridge_redis_unavailable").get(("throttle",), 0) >= before + 5
                       and metrics.read_counter("bridge_redis_unavailable"), 10, "counted")
    assert after[("throttle",)] >= before + 5


def test_client_ip_uses_forwarded_for_only_behind_the_configured_trusted_proxies(settings) -> None:
    class Req:
        def __init__(self, remote: str, forwarded: str | None = None):
            self.META = {"REMOTE_ADDR": remote}
            if forwarded is not None:
                self.META["HTTP_X_FORWARDED_FOR"] = forwarded

    settings.BRIDGE_TRUSTED_PROXY_COUNT = 0
    assert ratelimit.client_ip(Req("10.0.0.1", "203.0.113.5")) == "10.0.0.1"  # not trusted: ignored
    settings.BRIDGE_TRUSTED_PROXY_COUNT = 1
    assert ratelimit.client_ip(Req("10.0.0.1", "203.0.113.5")) == "203.0.113.5"
    assert ratelimit.client_ip(Req("10.0.0.1", "6.6.6.6, 203.0.113.5")) == "203.0.113.5"  # forged entry
    assert ratelimit.client_ip(Req("10.0.0.1")) == "10.0.0.1"
    assert ratelimit.client_ip(Req("10.0.0.1", "not-an-ip")) == "10.0.0.1"
    settings.BRIDGE_TRUSTED_PROXY_COUNT = 2
    assert ratelimit.client_ip(Req("10.0.0.2", "6.6.6.6, 203.0.113.5, 10.0.0.1")) == "203.0.113.5"
    assert ratelimit.client_ip(Req("10.0.0.2", "203.0.113.5")) == "10.0.0.2"  # fewer hops than proxies
    # IPv6 clients are counted by their /64 (one subscriber's allocation), mapped IPv4 as IPv4.
    settings.BRIDGE_TRUSTED_PROXY_COUNT = 0
    assert ratelimit.client_ip(Req("2001:db8:1:2:aaaa::1")) == ratelimit.client_ip(Req("2001:db8:1:2:bbbb::9"))
    assert ratelimit.client_ip(Req("2001:db8:1:2::1")) != ratelimit.client_ip(Req("2001:db8:1:3::1"))
    assert ratelimit.client_ip(Req("::ffff:192.0.2.1")) == "192.0.2.1"
    scope = {"client": ("10.0.0.1", 5555), "headers": [(b"x-forwarded-for", b"203.0.113.9")]}
    assert ratelimit.client_ip_from_scope(scope) == "10.0.0.1"
    settings.BRIDGE_TRUSTED_PROXY_COUNT = 1
    assert ratelimit.client_ip_from_scope(scope) == "203.0.113.9"


# -- the client API over a real server -------------------------------------------------------------------
def test_sixteen_concurrent_clients_get_exactly_the_workspace_limit_through(web) -> None:
    server = web(BRIDGE_THROTTLE_RATE="60/min")
    _, key = new_key("rl-sixteen")
    answers, seconds = server.flood(lambda i, n: ("GET", UNKNOWN_TASK, bearer(key)), clients=16, per_client=10)
    assert seconds < 50, seconds  # the whole flood inside one window: exactly 60 may pass
    assert Counter(a.status for a in answers) == {404: 60, 429: 100}
    for answer in answers:
        if answer.status == 429:
            assert_rate_limited(answer, max_wait=60)
    # Another workspace is not affected.
    _, other = new_key("rl-sixteen-other")
    assert server.call("GET", UNKNOWN_TASK, bearer(other)).status == 404


def test_unauthenticated_and_bad_key_floods_are_limited_per_client_ip(web) -> None:
    server = web(BRIDGE_THROTTLE_IP_RATE="30/min")
    _, key = new_key("rl-anon")
    bad = [{}, bearer("mt5b_abcdef123456_wrongsecret"), bearer("garbage"), {"Authorization": "Basic eDp5"},
           {"Authorization": "Bearer"}, bearer(key + "x")]
    answers, seconds = server.flood(lambda i, n: ("GET", UNKNOWN_TASK, bad[(i + n) % len(bad)]),
                                    clients=16, per_client=5, source="127.0.0.2")
    assert seconds < 50, seconds
    assert Counter(a.status for a in answers) == {401: 30, 429: 50}
    for answer in answers:
        if answer.status == 429:
            assert_rate_limited(answer, max_wait=60)
        else:
            assert answer.json()["error"]["code"] == "Unauthorized"

    # Another address has its own budget; a valid key from the flooding address is not held back.
    assert server.call("GET", UNKNOWN_TASK, source="127.0.0.3").status == 401
    assert server.call("GET", UNKNOWN_TASK, bearer(key), source="127.0.0.2").status == 404
    assert server.call("POST", f"{BASE}/session/open", {"Content-Type": "application/json"}, b"{}",
                       source="127.0.0.2").status == 429

    # Without a trusted proxy configured, X-Forwarded-For does not make a new client.
    forged = [server.call("GET", UNKNOWN_TASK, {"X-Forwarded-For": f"198.51.100.{n}"}, source="127.0.0.4")
              for n in range(31)]
    assert [a.status for a in forged] == [401] * 30 + [429]


def test_limits_per_api_key_and_per_workspace(settings) -> None:
    settings.BRIDGE_THROTTLE_RATE = "8/min"
    settings.BRIDGE_THROTTLE_KEY_RATE = "5/min"
    workspace, key_a = new_key("rl-keys")
    key_b = create_api_key(workspace, "second")[1]
    a, b = APIClient(), APIClient()
    a.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a}")
    b.credentials(HTTP_AUTHORIZATION=f"Bearer {key_b}")
    assert [a.get(UNKNOWN_TASK).status_code for _ in range(6)] == [404] * 5 + [429]  # key A's own limit
    assert [b.get(UNKNOWN_TASK).status_code for _ in range(4)] == [404] * 3 + [429]  # the workspace's 8
    assert_rate_limited(answer_of(b.get(UNKNOWN_TASK)), max_wait=60)
    _, key_c = new_key("rl-keys-other")
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {key_c}")
    assert c.get(UNKNOWN_TASK).status_code == 404


def test_trusted_proxy_count_limits_each_forwarded_client(settings) -> None:
    settings.BRIDGE_THROTTLE_IP_RATE = "2/min"
    settings.BRIDGE_TRUSTED_PROXY_COUNT = 1
    proxy = APIClient(REMOTE_ADDR="10.9.9.9")

    def get(forwarded: str) -> int:
        return proxy.get(UNKNOWN_TASK, HTTP_X_FORWARDED_FOR=forwarded).status_code

    assert [get("203.0.113.5") for _ in range(3)] == [401, 401, 429]
    assert get("203.0.113.6") == 401  # another client behind the same proxy
    assert get("6.6.6.6, 203.0.113.5") == 429  # a forged left-hand entry changes nothing


# -- admin login ---------------------------------------------------------------------------------------
def test_admin_login_brute_force_is_answered_429_per_ip_and_per_username(settings) -> None:
    settings.BRIDGE_THROTTLE_ADMIN_IP_RATE = "5/min"
    settings.BRIDGE_THROTTLE_ADMIN_USER_RATE = "3/min"
    users = get_user_model()
    users.objects.create_superuser("rl-admin", "a@example.com", "right-password-1")
    users.objects.create_superuser("rl-other", "o@example.com", "right-password-2")

    def attempt(browser: Client, username: str, password: str):
        return browser.post(reverse("admin:login"), {"username": username, "password": password, "next": reverse("admin:index")})

    first = Client(REMOTE_ADDR="198.51.100.7")
    assert first.get(reverse("admin:login")).status_code == 200
    for n in range(3):
        r = attempt(first, "rl-admin", f"wrong-{n}")
        assert r.status_code == 200 and b"Please enter the correct username" in r.content
    # Over the username's limit: refused before the password is tried (the right one too).
    r = attempt(first, "rl-admin", "right-password-1")
    assert_rate_limited(answer_of(r), max_wait=60)
    assert "too many login attempts" in r.json()["error"]["message"]
    assert "_auth_user_id" not in first.session
    assert first.get(reverse("admin:index")).status_code == 302  # still not logged in
    # From another address, and in another case: the same username is still refused.
    second = Client(REMOTE_ADDR="198.51.100.8")
    assert attempt(second, "rl-admin", "right-password-1").status_code == 429
    assert attempt(second, "RL-Admin", "x").status_code == 429
    # The first address has 3 counted attempts (refusals are not counted): 2 more names, then 429.
    assert attempt(first, "someone", "x").status_code == 200
    assert attempt(first, "someone-else", "x").status_code == 200
    assert attempt(first, "rl-other", "right-password-2").status_code == 429
    assert first.get(reverse("admin:login")).status_code == 200  # the form itself is never limited
    # Another user from another address logs in normally.
    third = Client(REMOTE_ADDR="198.51.100.9")
    r = attempt(third, "rl-other", "right-password-2")
    assert r.status_code == 302 and "_auth_user_id" in third.session


# -- ops endpoints ------------------------------------------------------------------------------------
def test_ops_endpoints_are_limited_per_token_and_per_ip(settings) -> None:
    settings.BRIDGE_OPS_TOKEN = OPS_TOKEN
    settings.BRIDGE_THROTTLE_OPS_RATE = "4/min"

    # The token's bucket: shared by /ops/... and /metrics, whatever address the tooling calls from.
    tool = APIClient(REMOTE_ADDR="192.0.2.10")
    tool.credentials(HTTP_AUTHORIZATION=f"Bearer {OPS_TOKEN}")
    got = [tool.get(f"{BASE}/ops/tasks").status_code, tool.get("/metrics").status_code,
           tool.get(f"{BASE}/ops/tasks").status_code, tool.get("/metrics").status_code]
    assert got == [200] * 4
    assert_rate_limited(answer_of(tool.get(f"{BASE}/ops/tasks")), max_wait=60)
    assert_rate_limited(answer_of(tool.get("/metrics")), max_wait=60)

    # Wrong tokens and no credentials: per address, 401 until the limit, then 429.
    guesser = APIClient(REMOTE_ADDR="192.0.2.11")
    guesser.credentials(HTTP_AUTHORIZATION="Bearer not-the-token")
    statuses = [guesser.get(path).status_code for path in [f"{BASE}/ops/tasks", "/metrics"] * 3]
    assert statuses == [401] * 4 + [429] * 2
    assert_rate_limited(answer_of(guesser.get("/metrics")), max_wait=60)
    assert APIClient(REMOTE_ADDR="192.0.2.12").get(f"{BASE}/ops/tasks").status_code == 401

    # A staff browser session: per address.
    staff = Client(REMOTE_ADDR="192.0.2.13")
    staff.force_login(get_user_model().objects.create_superuser("rl-ops", "ops@example.com", "pw-ops-rl-1"))
    assert [staff.get(f"{BASE}/ops/tasks").status_code for _ in range(5)] == [200] * 4 + [429]


# -- Redis down: fail open, never 500 -------------------------------------------------------------------
def _admin_login_post(server: Web, source: str, username: str, password: str) -> Answer:
    """A browser's login: GET the form (CSRF cookie and token), then POST it."""
    conn = server.connect(source)
    try:
        form = server.call("GET", reverse("admin:login"), conn=conn)
        assert form.status == 200, form.status
        cookie = re.search(r"csrftoken=([^;]+)", form.headers["set-cookie"]).group(1)
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', form.body).group(1).decode()
        body = urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password,
                          "next": reverse("admin:index")}).encode()
        return server.call("POST", reverse("admin:login"), {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookie}",
            "Referer": f"http://127.0.0.1:{server.port}{reverse('admin:login')}", "Host": f"127.0.0.1:{server.port}",
        }, body, conn=conn)
    finally:
        conn.close()


def test_redis_down_lets_every_request_through_and_nothing_is_500(web, tmp_path) -> None:
    limiter_redis = PrivateRedis(free_port(), tmp_path)
    limiter_redis.start()
    try:
        server = web(BRIDGE_THROTTLE_REDIS_URL=limiter_redis.url, BRIDGE_OPS_TOKEN=OPS_TOKEN,
                     BRIDGE_THROTTLE_RATE="2/min", BRIDGE_THROTTLE_IP_RATE="2/min",
                     BRIDGE_THROTTLE_OPS_RATE="2/min", BRIDGE_THROTTLE_ADMIN_IP_RATE="2/min",
                     BRIDGE_THROTTLE_ADMIN_USER_RATE="2/min")
        get_user_model().objects.create_superuser("rl-down", "d@example.com", "right-password-3")
        _, key = new_key("rl-down")
        ops = bearer(OPS_TOKEN)
        # Limited while the limiter's Redis is up.
        assert [server.call("GET", UNKNOWN_TASK, bearer(key)).status for _ in range(3)] == [404, 404, 429]
        assert [server.call("GET", UNKNOWN_TASK, source="127.0.0.5").status for _ in range(3)] == [401, 401, 429]
        assert [server.call("GET", "/metrics", ops).status for _ in range(3)] == [200, 200, 429]
        assert [_admin_login_post(server, "127.0.0.6", "rl-down", "wrong").status for _ in range(3)] == [
            200, 200, 429]

        before = metrics.read_counter("bridge_redis_unavailable").get(("throttle",), 0)
        limiter_redis.kill()
        requests = [
            ("GET", UNKNOWN_TASK, bearer(key), 404),
            ("GET", UNKNOWN_TASK, {}, 401),
            ("GET", UNKNOWN_TASK, bearer("mt5b_abcdef123456_wrongsecret"), 401),
            ("GET", "/metrics", ops, 200),
            ("GET", f"{BASE}/ops/tasks", ops, 200),
            ("GET", f"{BASE}/ops/tasks", bearer("wrong"), 401),
        ]
        answers, _ = server.flood(lambda i, n: requests[(i + n) % len(requests)][:3], clients=16, per_client=6,
                                  source="127.0.0.5")
        expected = Counter(requests[(i + n) % len(requests)][3] for i in range(16) for n in range(6))
        assert Counter(a.status for a in answers) == expected  # all through: no 429, no 5xx
        assert _admin_login_post(server, "127.0.0.6", "rl-down", "wrong").status == 200
        assert _admin_login_post(server, "127.0.0.6", "rl-down", "right-password-3").status == 302
        assert "rate limiter failing open" in server.proc.log()
        # Each request let through is counted (metrics live in the bridge's own Redis, still up).
        wait_until(lambda: metrics.read_counter("bridge_redis_unavailable").get(("throttle",), 0)
                   >= before + len(answers), 10, "counted as let through")

        limiter_redis.start()  # empty: the history is gone; the limiter uses it again after its hold-off
        # (Each of the 3 gunicorn processes comes back after its own hold-off: wait for one that has.)
        def limited() -> Answer | None:
            answer = server.call("GET", UNKNOWN_TASK, bearer(key))
            assert answer.status in (404, 429), answer
            return answer if answer.status == 429 else None

        assert_rate_limited(wait_until(limited, 20, "limited again"), max_wait=60)
    finally:
        limiter_redis.stop()
