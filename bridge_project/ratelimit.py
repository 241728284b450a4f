"""Atomic rate limits in Redis: one Lua script call per request, shared by every web process.

Each limit is a *sliding-window log*: a Redis sorted set per (scope, key) holding the Redis-clock
time (microseconds) of every request it let through in the last window. A request is allowed when
every limit it is subject to has fewer than ``limit`` entries in its window; it is then added to all
of them, in the same script. Check and add are one ``EVALSHA`` (``register_script``, loaded once per
process and Redis URL), so concurrent requests from any number of processes cannot slip past a limit:
``60/min`` lets exactly 60 requests through in any 60 seconds. A refused request is not recorded
(retrying does not extend the wait), and the answer carries the exact time until the oldest entry
leaves the window: the ``Retry-After``. Memory: at most ``limit`` entries per key, expiring with the
window.

Rates are ``<count>/<period>``: ``60/min``, ``6000/minute``, ``10/s``, ``20/10min``, ``100/h``,
``1000/day``; empty, ``0`` or ``off``: no limit.

The Redis is ``BRIDGE_THROTTLE_REDIS_URL`` (default: ``REDIS_URL``). When it cannot be reached the
limiter **fails open**: the request goes on unlimited, a warning is logged (once per outage) and
``bridge_redis_unavailable{where="throttle"}`` counts each request let through. After a failure the
limiter leaves that Redis alone for ``REDIS_HOLD_OFF_SECONDS`` (requests pass without trying it), so an
outage costs no connection attempt per request.

For other parts of the bridge (the WebSocket's connects and messages)::

    from bridge_project.ratelimit import arate_limit_hit, client_ip_from_scope, rate_limit_hit
    wait = rate_limit_hit(scope="ws-connect", key=client_ip_from_scope(scope), rate="30/min")
    if wait is not None:  # over the limit: retry after ``wait`` seconds (float, > 0)
        ...
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from redis.backoff import NoBackoff
from redis.retry import Retry
from rest_framework import exceptions as drf

from . import metrics
from .errors import error_body

logger = logging.getLogger("bridge.ratelimit")

KEY_PREFIX = "bridge:rl"
REDIS_HOLD_OFF_SECONDS = 2.0
REDIS_TIMEOUT_SECONDS = 1.0

# KEYS: one sorted set per limit. ARGV[1]: this request's member (unique); then per key its limit
# and its window (microseconds). Returns 0 when allowed (and recorded in every key), else the
# microseconds until the strictest refusing limit lets one more in (nothing recorded).
SLIDING_WINDOW_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now
    if w < 1 then w = 1 end
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[2 * i + 1]) / 1000))
end
return 0
"""

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")
_DISABLED = {"", "0", "off", "none"}


@dataclass(frozen=True)
class Rate:
    limit: int
    window: float  # seconds

    def __str__(self) -> str:
        return f"{self.limit}/{self.window:g}s"


@lru_cache(maxsize=64)
def parse_rate(text: str | None) -> Rate | None:
    """``"60/min"`` -> Rate(60, 60.0); ``"20/10min"`` -> Rate(20, 600.0); empty/``0``/``off`` -> None."""
    value = (text or "").strip().lower()
    if value in _DISABLED:
        return None
    match = _RATE_RE.match(value)
    if not match or match.group(3) not in _UNITS:
        raise ValueError(f"invalid rate {text!r}: expected <count>/<period>, e.g. 60/min, 20/10min, 10/s")
    limit, multiple, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3)
    if limit == 0:
        return None
    if multiple == 0:
        raise ValueError(f"invalid rate {text!r}: the period is zero")
    return Rate(limit, float(multiple * _UNITS[unit]))


# -- the Redis side ---------------------------------------------------------------------------------
_lock = threading.Lock()
_scripts: dict[str, Any] = {}  # Redis URL -> registered Script (one per process and URL)
_down_until: dict[str, float] = {}  # Redis URL -> monotonic time the hold-off ends


def redis_url() -> str:
    return getattr(settings, "BRIDGE_THROTTLE_REDIS_URL", "") or settings.REDIS_URL


def _script(url: str):  # redis.commands.core.Script
    script = _scripts.get(url)
    if script is None:
        with _lock:
            script = _scripts.get(url)
            if script is None:
                client = redis.Redis.from_url(
                    url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                    health_check_interval=30,
                    # One quick retry: a pooled connection that died with a Redis restart reconnects at
                    # once; an outage is not retried with back-off while the request waits.
                    retry=Retry(NoBackoff(), 1),
                )
                script = _scripts[url] = client.register_script(SLIDING_WINDOW_LUA)
    return script


def _holding_off(url: str) -> bool:
    return time.monotonic() < _down_until.get(url, 0.0)


def _note_redis_down(url: str, exc: Exception) -> None:
    with _lock:
        first = not _holding_off(url)
        _down_until[url] = time.monotonic() + REDIS_HOLD_OFF_SECONDS
    if first:
        logger.warning("rate limiter failing open: Redis unreachable (%s: %s)", type(exc).__name__, exc)


def reset_hold_off() -> None:
    """Forget past outages (tests that restart Redis)."""
    with _lock:
        _down_until.clear()


def _redis_key(scope: str, key: str) -> str:
    if len(key) > 100 or not key.isprintable():
        key = "h:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{KEY_PREFIX}:{scope}:{key}"


Limit = tuple[str, str, "str | Rate | None"]  # (scope, key, rate)


def script_arguments(limits: Iterable[Limit]) -> tuple[list[str], list[Any]] | None:
    """The sliding-window script's keys and limit/window args for ``limits`` (without the request's
    member, ``ARGV[1]``: a fresh random token per call); None when no limit applies."""
    keys: list[str] = []
    args: list[Any] = []
    for scope, key, rate in limits:
        parsed = rate if isinstance(rate, Rate) else parse_rate(rate)
        if parsed is None:
            continue
        keys.append(_redis_key(scope, key))
        args += [parsed.limit, int(parsed.window * 1_000_000)]
    return (keys, args) if keys else None


def check(limits: Iterable[Limit]) -> float | None:
    """Count one request against every ``(scope, key, rate)`` at once (one script call).

    Returns None when the request is allowed (it is then recorded under every limit), else the
    seconds until the strictest refusing limit allows one more (nothing recorded). Fails open (None)
    when Redis cannot be reached."""
    arguments = script_arguments(limits)
    if arguments is None:
        return None
    keys, args = arguments[0], [secrets.token_hex(8), *arguments[1]]
    url = redis_url()
    if _holding_off(url):
        metrics.redis_unavailable("throttle")
        return None
    try:
        wait_us = int(_script(url)(keys=keys, args=args))
    except redis.RedisError as exc:
        _note_redis_down(url, exc)
        metrics.redis_unavailable("throttle")
        return None
    return wait_us / 1_000_000 if wait_us > 0 else None


def rate_limit_hit(*, scope: str, key: str, rate: str) -> float | None:
    """Count one hit of ``key`` in ``scope`` against ``rate`` (e.g. ``"60/min"``).

    None: allowed (and counted). A float: over the limit, retry after that many seconds (not
    counted). Fails open (None) when Redis is down; a disabled rate (``off``) is always None."""
    return check([(scope, key, rate)])


async def arate_limit_hit(*, scope: str, key: str, rate: str) -> float | None:
    """``rate_limit_hit`` for async code (runs the Redis call in a thread, off the event loop)."""
    return await asyncio.to_thread(rate_limit_hit, scope=scope, key=key, rate=rate)


# -- who is asking ------------------------------------------------------------------------------------
def _ip_bucket(address: str) -> str:
    """The bucket of a client address: IPv4 as is, IPv6 by its /64 (one host's usual allocation)."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return address.strip()[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _client_address(remote: str | None, forwarded_for: str | None) -> str:
    hops = int(getattr(settings, "BRIDGE_TRUSTED_PROXY_COUNT", 0) or 0)
    address = remote or "unknown"
    if hops > 0 and forwarded_for:
        # Each trusted proxy appends the address it received the request from: the client is the
        # entry ``hops`` from the right. Entries left of it are whatever the client sent (forgeable).
        entries = [e.strip() for e in forwarded_for.split(",") if e.strip()]
        if len(entries) >= hops:
            candidate = entries[-hops]
            try:
                ipaddress.ip_address(candidate.strip("[]"))
                address = candidate
            except ValueError:
                pass
    return _ip_bucket(address)


def client_ip(request: Any) -> str:
    """The client address of a Django/DRF request for rate limiting: ``REMOTE_ADDR``, or, when
    ``BRIDGE_TRUSTED_PROXY_COUNT`` is N > 0, the N-th ``X-Forwarded-For`` entry from the right."""
    meta = getattr(getattr(request, "_request", request), "META", {})
    return _client_address(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"))


def client_ip_from_scope(scope: dict[str, Any]) -> str:
    """``client_ip`` for an ASGI scope (WebSocket): ``scope["client"]`` and its headers."""
    client = scope.get("client") or (None, None)
    forwarded = b",".join(v for k, v in scope.get("headers", ()) if k.lower() == b"x-forwarded-for")
    return _client_address(client[0], forwarded.decode("latin-1") if forwarded else None)


def digest(value: str) -> str:
    """A short stable digest of a credential or name used as a key (never stored in clear)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# -- answers ------------------------------------------------------------------------------------------
def retry_after(wait: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, at least 1."""
    return max(1, math.ceil(wait))


class RateLimited(drf.Throttled):
    """429 ``RateLimited`` from DRF code (the API's exception handler adds ``Retry-After``);
    ``message`` says which limit (for the error body's ``message``)."""

    def __init__(self, wait: float, message: str = "rate limit exceeded"):
        super().__init__(wait=retry_after(wait), detail=message)
        self.message = message


def limited_response(wait: float, message: str = "rate limit exceeded") -> JsonResponse:
    """The 429 for plain Django views: the API's error body and ``Retry-After``."""
    seconds = retry_after(wait)
    return JsonResponse(error_body("RateLimited", message, {"retryAfter": seconds}), status=429,
                        headers={"Retry-After": str(seconds)})


# -- one call per request -------------------------------------------------------------------------------
_CHECKED = "_bridge_rate_limit_checked"
# Set in an ASGI scope by code in front of Django that already counted the request (the hot read path,
# trading.reads.hotpath, when it counted a request and then handed it to Django): not counted twice.
SCOPE_CHECKED = "bridge.rate_limit_checked"


def check_request(request: Any, limits: Sequence[Limit]) -> float | None:
    """``check`` for an HTTP request, at most once: a later call for the same request (e.g. the
    failed-auth limit after the ops limit) is allowed without another script call."""
    http: HttpRequest = getattr(request, "_request", request)
    if getattr(http, _CHECKED, False) or getattr(http, "scope", {}).get(SCOPE_CHECKED):
        return None
    setattr(http, _CHECKED, True)
    return check(limits)


def limit_anonymous(request: Any) -> float | None:
    """A request without valid credentials (none, malformed or a bad API key): counted per client
    IP against ``BRIDGE_THROTTLE_IP_RATE``."""
    return check_request(request, [("ip", client_ip(request), settings.BRIDGE_THROTTLE_IP_RATE)])
