"""The ``/events`` protocol as a state machine without I/O, shared by the sync and async streams.

Position: ``(epoch, last_seq)`` of the last replayable event handed to the caller (``order``,
``position``, ``account``, ``session``, ``deal``). On every (re)connect after the first one the client
sends ``resume`` with ``since=last_seq`` (and its epoch) for the replayable channels it wants, then
``subscribe``: the bridge replays every kept event after ``since`` in order, then live ones, with no gap
and no duplicate. Events at or below ``last_seq`` (of the same epoch) are dropped here too, in case.
``resync_required`` (events were lost: trimmed, or Redis restarted empty) is handed to the caller as an
event: reload state over REST, then go on.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from .errors import BridgeError, error_from_close, error_from_response
from .models import Event

REPLAYABLE = ("order", "position", "account", "session", "deal")

CLOSE_UNAUTHORIZED = 4401
CLOSE_SESSION_ENDED = 4410
CLOSE_TOO_SLOW = 4429
CLOSE_UNAVAILABLE = 4503


@dataclass
class Reconnect:
    delay: float


@dataclass
class Stop:
    """The stream ends normally (the session ended: 4410)."""


@dataclass
class StreamState:
    channels: list[str]
    last_seq: int | None = None
    epoch: int | None = None
    connects: int = 0
    resumes: list[dict[str, Any]] = field(default_factory=list)
    """every ``resume`` this stream sent (``since``, ``epoch``, ``channels``): what a reconnect asked for"""
    resumed: list[dict[str, Any]] = field(default_factory=list)
    """the bridge's answer to each resume (``since``, ``seq``, ``replayed``): how much the stream gave back"""
    closes: list[int] = field(default_factory=list)
    """the close code of each connection that ended (1006: dropped without a close frame)"""
    last_error: dict[str, Any] | None = None
    failures: int = 0
    max_backoff: float = 5.0
    awaiting_pong: bool = False
    pongs: int = 0
    subscribed: bool = False
    """the bridge confirmed this connection's subscription: events published from now on will come"""

    def hello(self) -> list[str]:
        """The messages to send right after a connect."""
        self.connects += 1
        self.subscribed = False
        self.awaiting_pong = False
        self.last_error = None
        messages: list[dict[str, Any]] = []
        if self.last_seq is not None:
            wanted = [c for c in REPLAYABLE if c in self.channels] or ["session"]
            resume: dict[str, Any] = {"type": "resume", "since": self.last_seq, "channels": wanted}
            if self.epoch:
                resume["epoch"] = self.epoch
            self.resumes.append(resume)
            messages.append(resume)
        messages.append({"type": "subscribe", "channels": list(self.channels)})
        return [json.dumps(m) for m in messages]

    def wants(self, channel: str) -> bool:
        return channel in self.channels or channel == "session"

    def on_text(self, text: str | bytes) -> Event | None:
        """One message from the bridge; the event to hand to the caller, if any."""
        self.awaiting_pong = False
        try:
            message = json.loads(text)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        kind = message.get("type")
        if kind in ("subscribed", "resumed"):
            self.failures = 0
            if kind == "resumed":
                self.resumed.append(message)
            else:
                self.subscribed = True
            if self.last_seq is None or kind == "resumed":
                self._position(message.get("seq"), message.get("epoch"))
            return None
        if kind == "pong":
            self.pongs += 1
            return None
        if kind == "unsubscribed":
            return None
        if kind == "error":
            self.last_error = message.get("error") if isinstance(message.get("error"), dict) else {}
            return None
        if kind == "resync_required":
            self.last_seq = message.get("seq") if isinstance(message.get("seq"), int) else 0
            if isinstance(message.get("epoch"), int):
                self.epoch = message["epoch"]
            return Event(raw=message, type="resync_required", seq=self.last_seq, epoch=self.epoch,
                         data={k: v for k, v in message.items() if k != "type"})
        if not isinstance(kind, str) or "seq" not in message:
            return None
        return self._event(kind, message)

    def _event(self, channel: str, message: dict[str, Any]) -> Event | None:
        seq, epoch = message.get("seq"), message.get("epoch")
        if channel in REPLAYABLE and isinstance(seq, int):
            same_epoch = not epoch or not self.epoch or epoch == self.epoch
            if same_epoch and self.last_seq is not None and seq <= self.last_seq:
                return None  # already handed on (a replay overlapping what came live)
            self._position(seq, epoch)
        if not self.wants(channel):
            return None
        return Event.from_dict(message)

    def _position(self, seq: Any, epoch: Any) -> None:
        if isinstance(seq, int):
            self.last_seq = seq
        if isinstance(epoch, int) and epoch:
            self.epoch = epoch

    def ping(self) -> str:
        self.awaiting_pong = True
        return json.dumps({"type": "ping"})

    def on_close(self, code: int | None, reason: str = "") -> Reconnect | Stop | BridgeError:
        """What to do once a connection ended with ``code``: reconnect after a delay, stop, or raise."""
        code = code or 1006
        self.closes.append(code)
        error = self.last_error or {}
        if code == CLOSE_UNAUTHORIZED:
            return error_from_close(code, reason, error)
        if code == CLOSE_SESSION_ENDED:
            return Stop()
        if code == CLOSE_TOO_SLOW:
            retry_after = (error.get("details") or {}).get("retryAfter")
            if isinstance(retry_after, int | float):
                return Reconnect(float(retry_after))
            return Reconnect(0.05)  # fell behind: come back at once with since=, the stream has the rest
        return Reconnect(self.backoff())

    def on_connect_failure(self) -> Reconnect:
        return Reconnect(self.backoff())

    def backoff(self) -> float:
        self.failures += 1
        ceiling = min(self.max_backoff, 0.1 * (2 ** (self.failures - 1)))
        return random.uniform(ceiling / 2, ceiling)


def handshake_refused(exc: BaseException) -> BridgeError | None:
    """The error for a WebSocket handshake the bridge refused for good (an HTTP 4xx other than 429: a wrong
    URL, a proxy's refusal), else None (retry: the bridge may be restarting)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if not isinstance(status, int) or status < 400 or status >= 500 or status == 429:
        return None
    try:
        body: Any = json.loads(bytes(response.body or b"").decode() or "null")
    except ValueError:
        body = None
    return error_from_response(status, body, dict(response.headers.raw_items()), None)
