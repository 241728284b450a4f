"""What the sync and async clients share: configuration, request ids, the retry policy, request bodies and
the decoding of answers. No I/O here."""

from __future__ import annotations

import os
import random
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .errors import BridgeError, error_from_response, retry_after_of
from .models import Task

API_PATH = "/mt5/client"
ENV_KEY = "MT5BRIDGE_API_KEY"
ENV_URL = "MT5BRIDGE_URL"
DEFAULT_URL = "http://127.0.0.1:8000"

ORDER_TYPES = ("BUY", "SELL", "BUY_LIMIT", "SELL_LIMIT", "BUY_STOP", "SELL_STOP", "BUY_STOP_LIMIT",
               "SELL_STOP_LIMIT")
RETRY_STATUSES = frozenset({429, 502, 503})


def resolve_config(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    """The API key and the bridge's root URL: the arguments, else ``MT5BRIDGE_API_KEY`` / ``MT5BRIDGE_URL``
    (the URL defaults to ``http://127.0.0.1:8000``, ``make run``'s). A URL that already ends with the
    base path ``/mt5/client`` is accepted too."""
    key = api_key or os.environ.get(ENV_KEY)
    if not key:
        raise BridgeError(f"no API key: pass api_key=... or set {ENV_KEY}", code="Configuration")
    url = (base_url or os.environ.get(ENV_URL) or DEFAULT_URL).rstrip("/")
    if url.endswith(API_PATH):
        url = url[: -len(API_PATH)]
    return key, url


def ws_url(base_url: str) -> str:
    """``http(s)://host/prefix`` -> ``ws(s)://host/prefix/events``."""
    parts = urlsplit(base_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/events", "", ""))


def new_request_id() -> str:
    """A fresh idempotency key (``sdk_`` + 24 hex characters)."""
    return "sdk_" + secrets.token_hex(12)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    Retried, always with the same ``x-request-id``: connection errors (also a connection dropped after the
    request was sent: the bridge's idempotency makes that safe), ``429`` (waiting ``Retry-After``), ``502``
    and ``503`` (``Retry-After`` when given, else jittered exponential backoff). Never another 4xx.
    """

    max_attempts: int = 5
    backoff: float = 0.25
    """first delay in seconds; doubled per attempt, with full jitter between half and all of it"""
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    """a ``Retry-After`` longer than this is not waited for: the error is raised"""

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)


NO_RETRY = RetryPolicy(max_attempts=1)


def retry_decision(policy: RetryPolicy, attempt: int, response: httpx.Response | None) -> float | None:
    """Seconds to wait before retrying, or None to stop (give the answer or error to the caller).
    ``response`` None: the request failed at the transport."""
    if attempt >= policy.max_attempts:
        return None
    if response is None:
        return policy.delay(attempt)
    if response.status_code not in RETRY_STATUSES:
        return None
    after = retry_after_of(dict(response.headers))
    if after is not None and after > policy.max_retry_after:
        return None
    return policy.delay(attempt, after)


def decode(response: httpx.Response, request_id: str | None) -> Any:
    """The JSON of a successful answer, or raise the error of a failed one."""
    rid = response.headers.get("x-request-id") or request_id
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = {"text": response.text[:500]}
    if response.status_code >= 400:
        raise error_from_response(response.status_code, body, dict(response.headers), rid)
    return body


def task_of(response: httpx.Response, body: Any) -> Task:
    task = Task.from_dict(body)
    task.replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
    return task


def clean(values: dict[str, Any]) -> dict[str, Any]:
    """The entries that are not None."""
    return {k: v for k, v in values.items() if v is not None}


def order_body(symbol: str, type: str, volume: float, **fields: Any) -> dict[str, Any]:
    """The ``POST /orders`` body. ``type`` is one of :data:`ORDER_TYPES` (case-insensitive)."""
    order_type = type.upper()
    if order_type not in ORDER_TYPES:
        raise ValueError(f"type must be one of {', '.join(ORDER_TYPES)}, not {type!r}")
    for name in ("type_filling", "type_time"):
        if isinstance(fields.get(name), str):
            fields[name] = fields[name].upper()
    return clean({"symbol": symbol, "type": order_type, "volume": volume, **fields})


def time_param(value: Any) -> Any:
    """``from``/``to`` as the bridge takes them: unix seconds, ISO 8601, or a ``datetime`` (made ISO)."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def user_agent() -> str:
    from . import __version__

    return f"mt5bridge-python/{__version__}"
