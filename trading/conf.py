"""Settings of the order path, read from the environment (names documented in docs/orders.md).

They live here rather than in ``bridge_project/settings.py`` so the trading rules and their knobs sit
together; each can still be overridden in Django settings under the same name (tests do that).
"""

from __future__ import annotations

from typing import Any

import environ
from django.conf import settings

_env = environ.Env()

DEFAULTS: dict[str, Any] = {
    # Magic number stamped on every bridge order when the client gives none.
    "BRIDGE_MAGIC": _env.int("BRIDGE_MAGIC", default=770_001),
    # Default max deviation (points) for market orders and closes when the client gives none.
    "BRIDGE_DEFAULT_DEVIATION": _env.int("BRIDGE_DEFAULT_DEVIATION", default=20),
    # How many times a requote / price changed / price off is retried with a fresh price.
    "BRIDGE_ORDER_RETRIES": _env.int("BRIDGE_ORDER_RETRIES", default=3),
    # Longest time an order_send can still act at the terminal after it was sent (IPC timeout of
    # the MetaTrader5 module is 60 s): a sent task not found at the terminal before this is
    # ``unknown``, after it ``failed`` (it never executed).
    "BRIDGE_INFLIGHT_BOUND": _env.float("BRIDGE_INFLIGHT_BOUND", default=90.0),
    # The outbox sweeper re-publishes a task still ``queued`` this long after its last publish.
    "BRIDGE_OUTBOX_REPUBLISH_AFTER": _env.float("BRIDGE_OUTBOX_REPUBLISH_AFTER", default=15.0),
    # A task still queued behind a delivery (kombu "unacked") older than this was received by a worker
    # that died before its claim (a live one claims within milliseconds): the sweeper re-publishes it.
    "BRIDGE_OUTBOX_DELIVERY_GRACE": _env.float("BRIDGE_OUTBOX_DELIVERY_GRACE", default=15.0),
    # Beat period of the outbox sweep and of the reconciliation fan-out.
    "BRIDGE_OUTBOX_SWEEP_INTERVAL": _env.float("BRIDGE_OUTBOX_SWEEP_INTERVAL", default=5.0),
    "BRIDGE_RECONCILE_INTERVAL": _env.float("BRIDGE_RECONCILE_INTERVAL", default=30.0),
    # Periodic reconciliation only looks at dispatched/unknown tasks older than this.
    "BRIDGE_RECONCILE_AFTER": _env.float("BRIDGE_RECONCILE_AFTER", default=30.0),
    # Days of terminal history scanned for bridge-tagged orders no task owns.
    "BRIDGE_UNOWNED_SCAN_DAYS": _env.float("BRIDGE_UNOWNED_SCAN_DAYS", default=2.0),
    # Request ids (and their tasks) are kept this many days; then purged (docs/orders.md).
    "BRIDGE_REQUEST_ID_RETENTION_DAYS": _env.int("BRIDGE_REQUEST_ID_RETENTION_DAYS", default=30),
    # How long POST /orders waits for the terminal's symbol specs when none are cached.
    "BRIDGE_SYMBOL_SPEC_WAIT": _env.float("BRIDGE_SYMBOL_SPEC_WAIT", default=5.0),
    # A task whose execution raises an error of the bridge itself (not the terminal's, not the gateway's)
    # before it reached the terminal is tried again by reconciliation at most this many times in all;
    # then it ends ``failed`` with ``BridgeError`` (trading.task_errors).
    "BRIDGE_TASK_MAX_ERRORS": _env.int("BRIDGE_TASK_MAX_ERRORS", default=3),
    # Test-only: make the pinned worker SIGKILL itself at a point of the execution path
    # (after_claim, after_send). Acts only in test mode (BRIDGE_TEST_MODE, set by the test run);
    # production refuses to start with either set (bridge_project/settings.py).
    "BRIDGE_CRASH_AT": _env.str("BRIDGE_CRASH_AT", default=""),
    "BRIDGE_TEST_MODE": _env.bool("BRIDGE_TEST_MODE", default=False),
}


def conf(name: str) -> Any:
    """A trading setting: Django settings win (tests override there), else the environment."""
    return getattr(settings, name, DEFAULTS[name])
