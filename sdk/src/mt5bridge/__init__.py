"""mt5bridge: the Python client of mt5-bridge (sessions, idempotent writes with retries, reads, live events).

    from mt5bridge import Client

    with Client() as client, client.session(login=5001, password="secret", server="Demo",
                                            account_id="demo-1") as s:
        task = s.buy("EURUSD", 0.1, wait=True)

See sdk/README.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._core import RetryPolicy, new_request_id
from .aio import AsyncClient, AsyncEventStream, AsyncSession
from .client import Client, EventStream, Session
from .errors import (
    BridgeError,
    BridgeUnavailable,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InternalError,
    LoginFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    SessionExpired,
    SessionNotReady,
    SessionPaused,
    StreamClosed,
    TaskConflict,
    TaskTimeout,
    TerminalBusy,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from .models import (
    FINAL_STATES,
    Account,
    Bar,
    Bars,
    BookEntry,
    Deal,
    Depth,
    Event,
    Order,
    Position,
    Positions,
    Quote,
    SessionInfo,
    State,
    Stats,
    Symbol,
    Task,
    TaskPage,
    Ticks,
)

__all__ = [
    "FINAL_STATES", "Account", "AsyncClient", "AsyncEventStream", "AsyncSession", "Bar", "Bars", "BookEntry",
    "BridgeError", "BridgeUnavailable", "Client", "Conflict", "ConnectionFailed", "Deal", "Depth", "Event",
    "EventStream", "Forbidden", "InternalError", "LoginFailed", "NotFound", "Order", "PayloadTooLarge",
    "Position", "Positions", "Quote", "RateLimited", "RetryPolicy", "Session", "SessionExpired", "SessionInfo",
    "SessionNotReady", "SessionPaused", "State", "Stats", "StreamClosed", "Symbol", "Task", "TaskConflict", "TaskPage",
    "TaskTimeout", "TerminalBusy", "Ticks", "Unauthorized", "Unavailable", "ValidationError", "new_request_id",
]
