"""The hot read path: ``GET /account``, ``/positions`` and ``/orders`` answered inside the ASGI server.

These three reads are the bulk of a trading client's traffic and are answered from the poller's snapshot
(``trading.reads.snapshots``). Through Django they cost a thread hop, the middleware, DRF, an API-key and
a session query and three Redis round trips each; here they cost a share of one Redis round trip:

* every request waiting at once is served by **one pipelined round trip** that starts after each of them
  arrived (``trading.front.RoundTrips``): it reads the access epoch, the terminal's snapshot version and
  last-change mark, and counts each request against its rate limits (the same sliding-window script and
  keys as ``bridge_project.ratelimit``, one call per request, so limits stay exact across processes); the
  snapshot itself is read only when its version changed;
* the API key and the session come from ``sessions.access`` (cached, invalidated at once by the epoch:
  ``trading.front.Vouchers``);
* the body is rendered once per snapshot and route (and gzipped once, for clients that accept it).

Whatever this path cannot vouch for goes the full way, unchanged, to Django, which gives the documented
answer: a query string, an unknown or revoked key, a session that is not active or past its expiry, a
snapshot missing, stale, older than the last change the bridge made at the terminal (read-your-writes),
of another session or from a disconnected terminal, a rate limit reached, a bad or repeated
``x-request-id``, an oversized header, a Host not allowed, plain http under ``SECURE_SSL_REDIRECT``, Redis
unreachable. So the answers are those of the full path:
the same body and headers (a test compares them), only sooner.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from bridge_project import metrics, ratelimit
from sessions.access import KeyGrant, SessionGrant
from trading import front
from trading.reads.snapshots import TerminalSnapshot, changed_key, snapshot_key, snapshot_version_key

logger = logging.getLogger("bridge.reads")

PREFIX = "/mt5/client/"
# route -> (what of the snapshot it answers, the Allow header of its Django view)
ROUTES: dict[str, tuple[str, bytes]] = {
    PREFIX + "account": ("account", b"GET, HEAD, OPTIONS"),
    PREFIX + "positions": ("positions", b"GET, HEAD, OPTIONS"),
    PREFIX + "orders": ("orders", b"GET, POST, HEAD, OPTIONS"),
}


def render_body(route: str, snapshot: TerminalSnapshot) -> bytes:
    """The JSON the full path's selectors and DRF's JSONRenderer give for this snapshot."""
    if route == "account":
        data: dict[str, Any] = {**snapshot.account, "asOf": snapshot.taken_at, "source": "snapshot"}
    elif route == "positions":
        data = {"positions": snapshot.positions, "orders": snapshot.orders, "asOf": snapshot.taken_at,
                "source": "snapshot"}
    else:
        data = {"orders": snapshot.orders, "asOf": snapshot.taken_at, "source": "snapshot"}
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


@dataclass
class _Rendered:
    """One terminal's last snapshot, parsed once, with its bodies rendered (and gzipped) on first use."""

    version: bytes  # its taken_at, as snapshots.store_snapshot wrote it beside the snapshot
    snapshot: TerminalSnapshot
    bodies: dict[str, tuple[bytes, bytes | None]] = field(default_factory=dict)  # route -> plain, gzipped

    def answer(self, route: str, gzip_ok: bool) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The body and its content headers (``trading.front.content``: Django's gzip rules)."""
        found = self.bodies.get(route)
        if found is None:
            plain = render_body(route, self.snapshot)
            found = self.bodies[route] = (plain, front.compressed(plain))
        return front.content(*found, gzip_ok)


class _Snapshots:
    """Each terminal's last snapshot as this process parsed it, read again only when its version changed."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.rendered: dict[str, _Rendered] = {}

    async def get(self, terminal: str, version: bytes | None) -> _Rendered | None:
        """The terminal's snapshot of ``version``; None when there is none (or it is unreadable)."""
        if version is None:
            return None
        rendered = self.rendered.get(terminal)
        if rendered is not None and rendered.version == version:
            return rendered
        raw = await self.client.get(snapshot_key(terminal))
        if raw is None:
            return None
        try:
            snapshot = TerminalSnapshot.from_json(raw)
        except (ValueError, TypeError):
            return None
        # Replaced between the two reads: this one is as new or newer, and carries its own taken_at.
        rendered = self.rendered[terminal] = _Rendered(repr(snapshot.taken_at).encode(), snapshot)
        return rendered


def _limits(grant: KeyGrant) -> tuple[list[str], list[Any]] | None:
    """The keys and args of the rate-limit script for this key's request, as the DRF throttle counts it
    (``sessions.throttling.WorkspaceRateThrottle``)."""
    return ratelimit.script_arguments([
        ("workspace", str(grant.workspace_id), settings.BRIDGE_THROTTLE_RATE),
        ("key", str(grant.key_id), getattr(settings, "BRIDGE_THROTTLE_KEY_RATE", "")),
    ])


def _parse(scope: dict[str, Any]) -> tuple[str, front.Caller] | None:
    """The route and caller of a hot read, or None when the full path must look at it."""
    route = scope["path"]
    if scope["method"] != "GET" or route not in ROUTES or scope.get("query_string"):
        return None
    seen = front.header_map(scope, settings.BRIDGE_MAX_HEADER_BYTES)
    if seen is None:
        return None  # 431, or a repeated header (x-request-id twice is a 400): the full path says so
    if b"transfer-encoding" in seen or seen.get(b"content-length", b"0") != b"0":
        return None
    who = front.caller(scope, seen, write=False)
    return (ROUTES[route][0], who) if who is not None else None


class HotReads(front.FrontPath):
    """ASGI middleware: answers the hot reads it can vouch for, hands everything else to ``app``."""

    def __init__(self, app: Any) -> None:
        super().__init__(app, settings.BRIDGE_HOT_READS)
        self._snapshots: _Snapshots | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.enabled and scope["type"] == "http":
            started = time.perf_counter()
            parsed = _parse(scope)
            answered = parsed is not None and await self._answer(scope, *parsed, send)
            if answered:
                metrics.observe_buffered("bridge_http_request_seconds", time.perf_counter() - started,
                                         method="GET", status="2xx")
                return
        await self.app(scope, receive, send)

    def new_loop(self, trips: front.RoundTrips) -> None:
        self._snapshots = _Snapshots(trips.client)

    async def _answer(self, scope: dict[str, Any], route: str, request: front.Caller, send: Any) -> bool:
        """True when the request was answered here. A request counted against its rate limits here and
        then handed to Django is marked in its scope, so Django does not count it again."""
        trips = self.round_trips()
        try:
            grants = await self.vouchers.before(request.key, request.session_id)
            if grants is None:
                return False
            terminal = grants[1].terminal
            epoch, (version, changed, *waits) = await trips.ask([
                ("get", (snapshot_version_key(terminal),)), ("get", (changed_key(terminal),)),
                *front.rate_limit_command(_limits(grants[0])),
            ])
            if waits and int(waits[0]) > 0:
                return False  # over a limit (not counted): the full path counts it and answers 429
            scope[ratelimit.SCOPE_CHECKED] = True
            grants = await self.vouchers.after(request.key, request.session_id, grants, epoch)
            if grants is None:
                return False
            rendered = await self._snapshots.get(terminal, version)
        except Exception:  # Redis (or the database) in trouble: the full path handles it
            logger.debug("hot read handed to the full path", exc_info=True)
            return False
        if rendered is None or not _servable(rendered.snapshot, float(changed or 0.0), grants[1]):
            return False
        try:
            body, headers = rendered.answer(route, request.gzip_ok)
        except ValueError:  # not JSON-compliant (NaN): the full path decides
            return False
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*headers, (b"allow", ROUTES[scope["path"]][1]),
                                (b"x-request-id", request.request_id.encode()),
                                *front.security_headers(request.secure)]})
        await send({"type": "http.response.body", "body": body})
        return True


def _servable(snapshot: TerminalSnapshot, changed_at: float, session: SessionGrant) -> bool:
    """The snapshot may answer this session: fresh, taken after the last change the bridge made at the
    terminal (read-your-writes), of this session's account, with the terminal connected to its broker."""
    return (snapshot.taken_at >= changed_at and snapshot.age() <= settings.BRIDGE_SNAPSHOT_MAX_AGE
            and snapshot.session_id == session.session_id and snapshot.account.get("login") == session.login
            and snapshot.connected)
