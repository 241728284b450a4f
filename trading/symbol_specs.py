"""Symbol specs for validating orders in the web tier, which never calls the terminal itself.

The terminal's pinned worker publishes the specs of every symbol (``symbols_get``) to Redis after a
session logs in, and again on demand; the web tier reads them to check volume limits/step, price
digits and that the symbol exists *before* a task is created (DESIGN.md "Reads": the web tier never
calls MetaTrader5). The cache is stamped with the session it was taken for, so a terminal that
changed account never validates against the previous account's symbols.

When Redis itself cannot be reached the specs cannot be had: ``get_spec`` raises ``Unavailable``
(503, ``Retry-After``), and a write that needs them is refused with nothing written; the client
retries with the same request id (docs/orders.md "When Redis is down"). ``BridgeUnavailable`` (502)
stays for the terminal side: its worker did not publish the specs in time.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

import kombu.exceptions
import redis
from django.conf import settings

from bridge_project.celery import app, terminal_queue
from bridge_project.errors import BridgeUnavailable, Unavailable
from sessions.models import BridgeSession
from terminals import runtime

SPEC_FIELDS = (
    "name", "digits", "point", "trade_tick_size", "volume_min", "volume_max", "volume_step", "volume_limit",
    "trade_mode", "trade_exemode", "filling_mode", "order_mode", "expiration_mode", "trade_stops_level",
    "trade_freeze_level", "select", "visible",
)
META = "__meta__"


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def redis_client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def specs_key(terminal_name: str) -> str:
    """The Redis hash of the symbol specs the pinned worker published for this terminal."""
    return f"bridge:symspec:{terminal_name}"


def spec_of(symbol: Any) -> dict[str, Any]:
    """The validation-relevant fields of one SymbolInfo (a struct or a dict)."""
    data = symbol._asdict() if hasattr(symbol, "_asdict") else dict(symbol)
    return {name: data.get(name) for name in SPEC_FIELDS}


def store_specs(terminal_name: str, session_id: str, symbols: list[Any]) -> int:
    """Replace the terminal's cached specs (worker side); returns how many symbols were stored."""
    mapping = {spec["name"]: json.dumps(spec) for spec in map(spec_of, symbols)}
    mapping[META] = json.dumps({"sessionId": session_id, "at": time.time(), "count": len(mapping)})
    key = specs_key(terminal_name)
    pipe = redis_client().pipeline()
    pipe.delete(key)
    pipe.hset(key, mapping=mapping)
    pipe.execute()
    return len(mapping) - 1


def _meta(terminal_name: str) -> dict[str, Any] | None:
    raw = redis_client().hget(specs_key(terminal_name), META)
    return json.loads(raw) if raw else None


def _request_refresh(terminal_name: str, session_id: str) -> None:
    """Ask the pinned worker to publish specs (at most once per few seconds per terminal)."""
    if redis_client().set(f"bridge:symspec-req:{terminal_name}", session_id, nx=True, ex=5):
        # Sent by name (workers.tasks.refresh_symbol_specs_task): this module does not import the task module.
        app.send_task("trading.refresh_symbol_specs", args=[session_id], queue=terminal_queue(terminal_name))


def get_spec(terminal_name: str, session_id: str, symbol: str) -> dict[str, Any] | None:
    """The spec of ``symbol`` on the session's terminal; None when the terminal has no such symbol.

    Raises BridgeUnavailable (502) when the terminal's specs for this session are not (yet) known
    and the worker did not publish them within BRIDGE_SYMBOL_SPEC_WAIT seconds; Unavailable (503)
    when Redis (the spec cache, or the broker for the refresh request) cannot be reached.
    """
    try:
        # The stamp and the symbol in one round trip (the common case: specs already published).
        raw_meta, raw = redis_client().hmget(specs_key(terminal_name), [META, symbol])
        meta = json.loads(raw_meta) if raw_meta else None
        if meta is None or meta.get("sessionId") != session_id:
            _request_refresh(terminal_name, session_id)
            deadline = time.monotonic() + settings.BRIDGE_SYMBOL_SPEC_WAIT
            while (meta is None or meta.get("sessionId") != session_id) and time.monotonic() < deadline:
                time.sleep(0.05)
                meta = _meta(terminal_name)
            if meta is None or meta.get("sessionId") != session_id:
                raise BridgeUnavailable(
                    "the terminal did not publish its symbol specifications in time",
                    {"terminal": terminal_name},
                )
            raw = redis_client().hget(specs_key(terminal_name), symbol)
    except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
        raise Unavailable(
            "symbol specifications cannot be read: the bridge's Redis is unreachable; retry with the same "
            "request id",
            {"terminal": terminal_name, "dependency": "redis"},
        ) from exc
    return json.loads(raw) if raw else None


def symbol_specs_refresh(*, session_id: str) -> int:
    """Publish this terminal's symbol specs, stamped with ``session_id`` (the account logged in now).

    Runs on the terminal's pinned worker; a session of another terminal, or ended, publishes nothing.
    """
    session = BridgeSession.objects.select_related("terminal").filter(id=session_id).first()
    if session is None or not session.live or session.terminal.name != runtime.pinned_terminal():
        return 0
    return store_specs(session.terminal.name, session.id, runtime.gateway().symbols_get())
