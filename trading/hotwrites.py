"""The hot write path: ``POST /orders`` answered in front of Django, many orders per commit.

Through Django each accepted order costs a thread of its own (asgiref's per-request context), the
middleware and DRF, an API-key and a session query, the throttle's, the spec's and the metrics' Redis
calls, its own SQLite write transaction (writers queue on the database lock, SQLite's busy handler
sleeping between tries) and a kombu publish: about 60 accepted orders/s with 32 clients, p99 over 1 s.
Here, for every order the path can vouch for:

* the body is checked by the same serializer (``OrderCreateSerializer``) and the same spec rules
  (``trading.orders.validate_order_create``), against the spec the pinned worker published;
* the API key and the session come from ``sessions.access`` (cached, refused at once after a change:
  the access epoch is read in the same round trip, after the request arrived, as for the hot reads);
* the Redis work of every order waiting at once (the epoch, each order's count against its rate
  limits with the throttle's script and keys, the symbols' specs) is ONE pipelined round trip;
* the ledger work of every order waiting at once is ONE transaction on one writer thread
  (``trading.services.orders_place_batch``: the same fingerprint, replay and insert rules, the same
  single insert function, ``published_at`` stamped, the outbox), and the publishes of the batch ONE
  pipelined round trip after its commit (``trading.outbox.publish_tasks``).

Whatever it cannot vouch for goes the full way, unchanged, to Django, which gives the documented
answer: a query string, another content type, a body over 16 KB, an unknown or revoked key, a session
that is not active (or of another workspace, or past its expiry) or is paused, specs missing or taken for another
session, a body that fails validation (400 naming the field), a request id reused with another
payload (409), a bad or repeated ``x-request-id`` or ``Idempotency-Key``, a rate limit reached,
Redis or the database in trouble. A request counted against its rate limits here and then handed to
Django is marked in its scope, so Django does not count it again. Once an order is committed here it
is answered here (a hand-over could insert a request the bridge named itself a second time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from rest_framework import serializers
from rest_framework.utils import json as drf_json

from bridge_project import metrics, ratelimit
from bridge_project.errors import BridgeError
from bridge_project.parsers import max_depth, nesting_exceeds
from sessions.access import KeyGrant

from . import front
from .ledger import Outcome
from .orders import validate_order_create
from .serializers import OrderCreateSerializer, task_body
from .services import OrderWrite, SessionAccount, orders_place_batch, session_account
from .symbol_specs import META as SPEC_META, specs_key as spec_key

logger = logging.getLogger("bridge.trading.hotwrites")

ROUTE = "/mt5/client/orders"
ALLOW = b"GET, POST, HEAD, OPTIONS"  # the Allow header of OrderCollectionView
MAX_BODY = 16 * 1024  # an order is a few hundred bytes; anything larger goes the full way
MAX_BATCH = 256
SWITCH_INTERVAL = 0.0005  # seconds: see _Writer
STATS_EVERY = 10.0  # seconds between two log lines of the writer's work


class _HandOver(Exception):
    """The full path must answer this request."""


class _Committed(Exception):
    """Written, but its answer could not be made: a 500 (never the full path: it would write it again)."""


def _parse(scope: dict[str, Any]) -> front.Caller | None:
    """The parts of a hot write the path needs, or None when the full path must look at it."""
    if scope["method"] != "POST" or scope["path"] != ROUTE or scope.get("query_string"):
        return None
    seen = front.header_map(scope, settings.BRIDGE_MAX_HEADER_BYTES)
    if seen is None:
        return None  # 431, or a repeated header: the full path says so
    if b"transfer-encoding" in seen:
        return None
    if seen.get(b"content-type", b"").strip().lower() != b"application/json":
        return None
    length = seen.get(b"content-length", b"")
    if not length.isdigit() or not 0 < int(length) <= MAX_BODY:
        return None
    return front.caller(scope, seen, write=True)


async def _read_body(receive: Any) -> tuple[bytes | None, list[dict[str, Any]]]:
    """The whole body (None when it is larger than MAX_BODY or the client left) and the messages read,
    so that the full path can be handed the request as it came."""
    messages: list[dict[str, Any]] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        size += len(message.get("body", b""))
        if size > MAX_BODY:
            return None, messages
        if not message.get("more_body"):
            return b"".join(m.get("body", b"") for m in messages), messages


def _replaying(messages: list[dict[str, Any]], receive: Any) -> Any:
    """A ``receive`` that first gives back the messages already read."""
    pending = list(messages)

    async def replay() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def _order_body(raw: bytes) -> dict[str, Any] | None:
    """The validated body, as ``OrderCollectionView.post`` validates it, or None (the full path says why)."""
    if nesting_exceeds(raw, max_depth()):
        return None
    try:  # as BoundedJSONParser decodes it: UTF-8 (the content type has no charset), NaN and Infinity refused
        data = json.loads(raw.decode("utf-8"), parse_constant=drf_json.strict_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return dict(_order_serializer().run_validation(data))  # what is_valid() runs
    except (serializers.ValidationError, DjangoValidationError):
        return None


@lru_cache(maxsize=1)
def _order_serializer() -> OrderCreateSerializer:
    """One OrderCreateSerializer for the process: building one per request deep-copies every field
    (a third of a hot write's time). Used from the event loop's thread only; holds no request state."""
    return OrderCreateSerializer()


@dataclass
class _Write:
    session_id: str
    request_id: str
    data: dict[str, Any]
    fresh_id: bool
    done: asyncio.Future


class _Writer:
    """One thread that writes the ledger for the whole process: every order waiting at once is one
    ``orders_place_batch`` (one transaction), so the web process takes the database's write lock once
    per batch. Each order's answer is its task's body, rendered in that thread."""

    def __init__(self) -> None:
        # Each database or Redis call of this thread gives the GIL up; getting it back waits for the event
        # loop's thread to give it up, by default after up to 5 ms of its own work. A batch makes dozens of
        # calls, so that wait, not the work, bounded the batches (a third fewer orders/s measured with 5 ms
        # than with 0.5 ms, 32 clients). The event loop's own work is short steps between I/O: unaffected.
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hot-writes")
        # After each commit (its order events published), the batch's broker messages, in commit order,
        # while the writer takes the next batch (the answers do not wait for them: the outbox covers a crash).
        self.publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hot-writes-publish")
        self.pending: list[_Write] = []
        self.running = False
        self.accounts: dict[str, SessionAccount] = {}
        self.stats = [0, 0, 0.0, time.monotonic()]  # orders, batches, seconds in batches, since

    async def write(self, session_id: str, request_id: str, data: dict[str, Any], fresh_id: bool
                    ) -> tuple[Outcome, bytes]:
        loop = asyncio.get_running_loop()
        item = _Write(session_id, request_id, data, fresh_id, loop.create_future())
        self.pending.append(item)
        if not self.running:
            self.running = True
            loop.create_task(self._drain())
        return await item.done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                try:
                    results = await loop.run_in_executor(self.executor, self._write_batch, batch)
                except Exception as exc:  # nothing committed: each request goes the full way
                    logger.warning("hot writes: a batch of %d failed before its commit (%r); handed to the full "
                                   "path", len(batch), exc)
                    results = [_HandOver() for _ in batch]
                for item, result in zip(batch, results, strict=True):
                    if item.done.done():
                        continue
                    if isinstance(result, BaseException):
                        item.done.set_exception(result)
                    else:
                        item.done.set_result(result)
        finally:
            self.running = False

    def _account(self, session_id: str) -> SessionAccount | None:
        account = self.accounts.get(session_id)
        if account is None:
            account = session_account(session_id=session_id)
            if account is None:
                return None
            if len(self.accounts) >= 10_000:
                self.accounts.clear()
            self.accounts[session_id] = account
        return account

    def _write_batch(self, batch: list[_Write]) -> list[Any]:
        """In the writer thread: the batch's ledger work; per order (Outcome, body) or an exception."""
        results: list[Any] = [_HandOver() for _ in batch]
        writes, where = [], []
        started = time.perf_counter()
        try:
            for i, item in enumerate(batch):
                account = self._account(item.session_id)
                if account is not None:
                    writes.append(OrderWrite(account, item.request_id, item.data, item.fresh_id))
                    where.append(i)
            outcomes = orders_place_batch(writes=writes, after_commit=self.publisher.submit)
        except Exception:  # rolled back: nothing of the batch was written
            connection.close()  # a broken or locked connection is not kept for the next batch
            raise
        self._count(len(batch), time.perf_counter() - started)
        for i, outcome in zip(where, outcomes, strict=True):
            if not isinstance(outcome, Outcome):
                continue  # a conflict or a lost race: the full path answers it from the ledger
            try:
                results[i] = (outcome, _render(task_body(outcome.task)))
            except Exception as exc:  # committed: never handed over (an id the bridge made would insert twice)
                logger.exception("hot writes: rendering task %s failed", outcome.task.id)
                results[i] = exc if batch[i].fresh_id else _HandOver()
        return results


    def _count(self, orders: int, seconds: float) -> None:
        """Every STATS_EVERY seconds, a log line of what the writer did (orders, batches, time per batch)."""
        stats = self.stats
        stats[0] += orders
        stats[1] += 1
        stats[2] += seconds
        elapsed = time.monotonic() - stats[3]
        if elapsed >= STATS_EVERY:
            logger.info("hot writes: %d orders in %d batches over %.0f s (%.1f per batch, %.1f ms per batch, writer "
                        "busy %.0f%%)", stats[0], stats[1], elapsed, stats[0] / stats[1],
                        stats[2] / stats[1] * 1000, stats[2] / elapsed * 100)
            self.stats = [0, 0, 0.0, time.monotonic()]


def _render(data: dict[str, Any]) -> bytes:
    """As DRF's JSONRenderer renders it (compact, UTF-8, no NaN)."""
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _limits(grant: KeyGrant) -> tuple[list[str], list[Any]] | None:
    """The rate-limit script's keys and args, as ``sessions.throttling.WorkspaceRateThrottle`` counts."""
    return ratelimit.script_arguments([
        ("workspace", str(grant.workspace_id), settings.BRIDGE_THROTTLE_RATE),
        ("key", str(grant.key_id), getattr(settings, "BRIDGE_THROTTLE_KEY_RATE", "")),
    ])


def _headers(request: front.Caller, content_headers: list[tuple[bytes, bytes]], replayed: bool
             ) -> list[tuple[bytes, bytes]]:
    """Django's headers for this answer: DRF's (one renderer: no Vary of its own; ``Allow``), GZipMiddleware's
    (``trading.front.content``), the security and request-id middleware's."""
    headers = [*content_headers, (b"allow", ALLOW), (b"x-request-id", request.request_id.encode()),
               *front.security_headers(request.secure)]
    if replayed:
        headers.append((b"idempotent-replayed", b"true"))
    return headers


class HotWrites(front.FrontPath):
    """ASGI middleware: answers the ``POST /orders`` it can vouch for, hands everything else to ``app``."""

    def __init__(self, app: Any) -> None:
        super().__init__(app, settings.BRIDGE_HOT_WRITES)
        self._writer: _Writer | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.enabled and scope["type"] == "http":
            request = _parse(scope)
            if request is not None:
                started = time.perf_counter()
                raw, messages = await _read_body(receive)
                receive = _replaying(messages, receive)
                if raw is not None and await self._answer(scope, request, raw, send):
                    metrics.observe_buffered("bridge_http_request_seconds", time.perf_counter() - started,
                                             method="POST", status="2xx")
                    return
        await self.app(scope, receive, send)

    def new_loop(self, trips: front.RoundTrips) -> None:
        if self._writer is not None:  # its waiting orders belonged to the previous loop
            self._writer.pending, self._writer.running = [], False

    def writer(self) -> _Writer:
        if self._writer is None:
            self._writer = _Writer()
        return self._writer

    async def _answer(self, scope: dict[str, Any], request: front.Caller, raw: bytes, send: Any) -> bool:
        """True when the request was answered here. A request counted against its rate limits here and
        then handed to Django is marked in its scope, so Django does not count it again."""
        data = _order_body(raw)
        if data is None:
            return False
        try:
            grants = await self.vouchers.before(request.key, request.session_id)
            if grants is None:
                logger.debug("hot writes: handed over (unknown key, or a session not served)")
                return False
            epoch, (*waits, (meta_raw, spec_raw)) = await self.round_trips().ask([
                *front.rate_limit_command(_limits(grants[0])),
                ("hmget", (spec_key(grants[1].terminal), [SPEC_META, data["symbol"]])),
            ])
            if waits and int(waits[0]) > 0:
                logger.debug("hot writes: handed over (rate limit)")
                return False  # over a limit (not counted): the full path counts it and answers 429
            scope[ratelimit.SCOPE_CHECKED] = True
            grants = await self.vouchers.after(request.key, request.session_id, grants, epoch)
            if grants is None:
                logger.debug("hot writes: handed over (a key or session changed)")
                return False
            if grants[1].paused:  # as of the epoch read after the request arrived: a pause is seen at once
                logger.debug("hot writes: handed over (the session is paused)")
                return False
        except Exception:  # Redis (or the database) in trouble: the full path handles it
            logger.debug("hot writes: handed over (grants or Redis)", exc_info=True)
            return False
        session = grants[1]
        try:
            meta = json.loads(meta_raw) if meta_raw else None
            if meta is None or meta.get("sessionId") != session.session_id or spec_raw is None:
                return False  # specs not published for this session (the full path asks the worker)
            validate_order_create(data, json.loads(spec_raw))
        except (BridgeError, ValueError, TypeError):
            return False  # 400 naming the field: the full path answers it
        try:
            outcome, body = await self.writer().write(session.session_id, request.request_id, data,
                                                      request.fresh_id)
        except _HandOver:
            logger.debug("hot writes: handed over (by the ledger)")
            return False
        except BaseException:
            raise _Committed() from None
        body, content_headers = front.content(body, front.compressed(body), request.gzip_ok)
        await send({"type": "http.response.start", "status": outcome.status_code,
                    "headers": _headers(request, content_headers, outcome.replayed)})
        await send({"type": "http.response.body", "body": body})
        return True
