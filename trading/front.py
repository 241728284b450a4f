"""What the hot paths in front of Django (trading/reads/hotpath.py, trading/hotwrites.py) share: the checks
and headers of Django's middleware they must repeat, one coalesced Redis round trip per batch of waiting
requests (``RoundTrips``), and the cached key and session grants (``Vouchers``).

Checks a hot path makes before answering (else it hands the request to Django, which answers it):
``Host`` in ``ALLOWED_HOSTS`` (Django: ``400``), and with ``SECURE_SSL_REDIRECT`` a secure request (Django:
``301`` to https), secure meaning ``SECURE_PROXY_SSL_HEADER`` says https or the server's own scheme is https.
Headers every answer gets (``SecurityMiddleware``, ``XFrameOptionsMiddleware``): ``X-Frame-Options``,
``X-Content-Type-Options``, ``Referrer-Policy``, ``Cross-Origin-Opener-Policy``, and on a secure request
``Strict-Transport-Security`` when ``SECURE_HSTS_SECONDS`` is set.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from redis.exceptions import NoScriptError

from bridge_project import ratelimit
from bridge_project.middleware import REQUEST_ID_RE, new_request_id
from sessions.access import (
    AccessCache,
    KeyGrant,
    SessionGrant,
    load_key_grant,
    load_session_grant,
    parse_bearer,
)
from sessions.epoch import ACCESS_EPOCH_KEY, new_epoch


def header_map(scope: dict[str, Any], limit: int) -> dict[bytes, bytes] | None:
    """The request's headers by (lower-case) name; None when one is over ``limit`` bytes (name + value) or
    sent twice (Django answers 431, or 400 for a repeated request id)."""
    seen: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if len(name) + len(value) > limit or name in seen:
            return None
        seen[name] = value
    return seen


@dataclass
class Caller:
    """Who calls a hot path and how to answer: what both hot paths read from the request's headers."""

    key: str
    session_id: str
    request_id: str
    fresh_id: bool  # the bridge made the request id (the client sent none)
    gzip_ok: bool
    secure: bool


def caller(scope: dict[str, Any], headers: dict[bytes, bytes], *, write: bool) -> Caller | None:
    """The caller of a request a hot path may answer, or None when Django must answer it: a Host not in
    ALLOWED_HOSTS (400), plain http under SECURE_SSL_REDIRECT (301), no bridge API key or no session
    header (401), ``Idempotency-Key`` (the middleware reconciles it with ``x-request-id``), a malformed or
    repeated ``x-request-id`` (400), none on a write while ``BRIDGE_REQUIRE_REQUEST_ID`` is on (400)."""
    if not host_allowed(headers) or redirect_due(scope, headers) or b"idempotency-key" in headers:
        return None
    key = parse_bearer(headers.get(b"authorization"))
    session_id = headers.get(b"x-session-id", b"").decode("latin-1")
    if key is None or not session_id:
        return None
    given = headers.get(b"x-request-id")
    if given is None:
        if write and settings.BRIDGE_REQUIRE_REQUEST_ID:
            return None
        request_id, fresh = new_request_id(), True
    else:
        request_id, fresh = given.decode("latin-1"), False
        if b"," in given or not REQUEST_ID_RE.match(request_id):
            return None
    return Caller(key, session_id, request_id, fresh, b"gzip" in headers.get(b"accept-encoding", b"").lower(),
                  request_is_secure(scope, headers))


def host_allowed(headers: dict[bytes, bytes]) -> bool:
    host, _ = split_domain_port(headers.get(b"host", b"").decode("latin-1"))
    return bool(host) and validate_host(host, settings.ALLOWED_HOSTS)


def request_is_secure(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    """``HttpRequest.is_secure()`` for an ASGI request."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        meta_name, secure_value = proxy
        given = headers.get(meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1"))
        if given is not None:
            return given.split(b",", 1)[0].strip().decode("latin-1") == secure_value
    return scope.get("scheme") == "https"


def redirect_due(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    """Django would redirect this request to https (``SECURE_SSL_REDIRECT``) instead of answering it."""
    return bool(getattr(settings, "SECURE_SSL_REDIRECT", False)) and not request_is_secure(scope, headers)


def security_headers(secure: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()),
        (b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()),
    ]
    seconds = getattr(settings, "SECURE_HSTS_SECONDS", 0)
    if secure and seconds:
        value = f"max-age={seconds}"
        if getattr(settings, "SECURE_HSTS_INCLUDE_SUBDOMAINS", False):
            value += "; includeSubDomains"
        if getattr(settings, "SECURE_HSTS_PRELOAD", False):
            value += "; preload"
        headers.append((b"strict-transport-security", value.encode()))
    return headers


GZIP_MIN_BYTES = 200  # as django.middleware.gzip.GZipMiddleware


def compressed(plain: bytes) -> bytes | None:
    """``plain`` gzipped once (Django's level and mtime), to be sent through ``content``; None when Django
    would not compress it (under GZIP_MIN_BYTES)."""
    return gzip.compress(plain, compresslevel=6, mtime=0) if len(plain) >= GZIP_MIN_BYTES else None


def content(plain: bytes, packed: bytes | None, gzip_ok: bool) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and its content headers, by django.middleware.gzip.GZipMiddleware's rules: a body of 200
    bytes or more varies on Accept-Encoding and is gzipped (when that is shorter) for a client that accepts
    it, with a random file name in the gzip header (Django's mitigation of compression side channels),
    added here to ``packed`` (``compressed(plain)``, made once)."""
    headers = [(b"content-type", b"application/json")]
    if packed is None:
        return plain, [*headers, (b"content-length", str(len(plain)).encode())]
    headers.append((b"vary", b"Accept-Encoding"))
    if gzip_ok:
        name = secrets.token_urlsafe(75)[: 1 + secrets.randbelow(100)].encode()
        header = bytearray(packed[:10])
        header[3] = gzip.FNAME
        body = bytes(header) + name + b"\x00" + packed[10:]
        if len(body) < len(plain):
            return body, [*headers, (b"content-length", str(len(body)).encode()), (b"content-encoding", b"gzip")]
    return plain, [*headers, (b"content-length", str(len(plain)).encode())]


# --- what both hot paths share: one Redis round trip for every request waiting at once, and the grants ---

def rate_limit_command(limits: tuple[list[str], list[Any]] | None) -> list[tuple[str, tuple]]:
    """The pipeline command counting one request against ``limits`` (``ratelimit.script_arguments``): the
    throttle's own sliding-window script and keys, so a limit is exact whichever path counts."""
    if limits is None:
        return []
    keys, args = limits
    return [("evalsha", (RATE_LIMIT_SHA, len(keys), *keys, secrets.token_hex(8), *args))]


RATE_LIMIT_SHA = hashlib.sha1(ratelimit.SLIDING_WINDOW_LUA.encode()).hexdigest()


@dataclass
class _Share:
    commands: list[tuple[str, tuple]]
    done: asyncio.Future


class RoundTrips:
    """Coalesces the Redis work of every request waiting at once into one pipelined round trip at a time,
    on one event loop. A request joins the next round trip that has not started yet, so what it reads is
    never older than the request itself (what read-your-writes and revocation need). Every round trip
    also reads the access epoch (``sessions.epoch``); a missing one (Redis restarted empty) is replaced."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.pending: list[_Share] = []
        self.running = False

    async def ask(self, commands: list[tuple[str, tuple]]) -> tuple[str, list[Any]]:
        """The current access epoch and the results of ``commands`` (pipeline method name, arguments)."""
        share = _Share(commands, self.loop.create_future())
        self.pending.append(share)
        if not self.running:
            self.running = True
            self.loop.create_task(self._drain())
        return await share.done

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    try:
                        answers = await self._round_trip(batch)
                    except NoScriptError:  # a Redis that never saw the script (or was restarted): load it
                        await self.client.script_load(ratelimit.SLIDING_WINDOW_LUA)
                        answers = await self._round_trip(batch)
                except Exception as exc:  # Redis unreachable or failing: every request goes the full way
                    for share in batch:
                        if not share.done.done():
                            share.done.set_exception(exc)
                    continue
                for share, answer in zip(batch, answers, strict=True):
                    if not share.done.done():
                        share.done.set_result(answer)
        finally:
            self.running = False

    async def _round_trip(self, batch: list[_Share]) -> list[tuple[str, list[Any]]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(ACCESS_EPOCH_KEY)
        for share in batch:
            for name, args in share.commands:
                getattr(pipe, name)(*args)
        results = await pipe.execute()
        epoch = results[0]
        if epoch is None:  # Redis lost it (a restart): a new epoch, so no cached grant is trusted
            await self.client.set(ACCESS_EPOCH_KEY, new_epoch(), nx=True)
            epoch = await self.client.get(ACCESS_EPOCH_KEY)
        text = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        answers, at = [], 1
        for share in batch:
            answers.append((text, results[at:at + len(share.commands)]))
            at += len(share.commands)
        return answers


Grants = tuple[KeyGrant, SessionGrant]


class Vouchers:
    """The cached grants of one hot path (``sessions.access``) and the epoch it last saw.

    ``before`` gives the grants under the last epoch seen (from the cache, else the database): they say
    which terminal to read and which limits to count. ``after`` takes the epoch the round trip read: when it
    moved on (a session or key changed somewhere), the grants are reloaded under it (the database then is
    at least as new as that epoch), and the round trip's reads may still answer if the reloaded grants allow
    the same key, the same terminal and an active session."""

    def __init__(self) -> None:
        self.access = AccessCache()
        self.last_epoch = ""
        self._loading: dict[tuple[Any, str, str], asyncio.Future] = {}

    async def load(self, key: str, session_id: str, epoch: str) -> Grants | None:
        key_grant = self.access.key(key, epoch)
        if key_grant is None:
            key_grant = await self._load(load_key_grant, key, epoch)
            if key_grant is None:
                return None
            self.access.keep_key(key, key_grant)
        session = self.access.session(session_id, epoch)
        if session is None:
            session = await self._load(load_session_grant, session_id, epoch)
            if session is None:
                return None
            self.access.keep_session(session)
        return key_grant, session

    async def _load(self, loader: Any, ident: str, epoch: str) -> Any:
        """One database load per grant at a time: the requests that find the same grant stale together
        (every BRIDGE_ACCESS_CACHE_TTL, or after a rotation: all the clients of a key at once) share it,
        instead of queueing one query each in asgiref's thread."""
        ticket = (loader, ident, epoch)
        future = self._loading.get(ticket)
        if future is None or future.get_loop() is not asyncio.get_running_loop():
            future = asyncio.ensure_future(sync_to_async(loader)(ident, epoch))
            self._loading[ticket] = future
            future.add_done_callback(lambda _: self._loading.pop(ticket, None))
        return await asyncio.shield(future)

    async def before(self, key: str, session_id: str) -> Grants | None:
        grants = await self.load(key, session_id, self.last_epoch)
        if grants is None or not grants[1].serves(grants[0].workspace_id, time.time()):
            return None
        return grants

    async def after(self, key: str, session_id: str, grants: Grants, epoch: str) -> Grants | None:
        self.last_epoch = epoch
        if grants[0].epoch == epoch and grants[1].epoch == epoch:
            return grants
        reloaded = await self.load(key, session_id, epoch)
        if (reloaded is None or reloaded[0].key_id != grants[0].key_id
                or reloaded[1].terminal != grants[1].terminal
                or not reloaded[1].serves(reloaded[0].workspace_id, time.time())):
            return None
        return reloaded


class FrontPath:
    """The base of an ASGI middleware in front of Django: the wrapped application, the path's switch, its
    grants and the round trips of the running event loop (a Redis connection belongs to one loop)."""

    def __init__(self, app: Any, enabled: bool) -> None:
        self.app = app
        self.enabled = enabled
        self.vouchers = Vouchers()
        self._round_trips: RoundTrips | None = None

    def round_trips(self) -> RoundTrips:
        loop = asyncio.get_running_loop()
        if self._round_trips is None or self._round_trips.loop is not loop:
            self._round_trips = RoundTrips(settings.REDIS_URL, loop)
            self.new_loop(self._round_trips)
        return self._round_trips

    def new_loop(self, trips: RoundTrips) -> None:
        """Called when the path starts on an event loop (what belongs to the previous loop goes)."""
