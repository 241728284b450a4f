"""Rate limits of the /events socket.

* Connects, in Redis (shared by every daphne process), with the bridge's atomic limiter
  (``bridge_project.ratelimit``, the one REST uses): per API key ``BRIDGE_EVENTS_CONNECT_RATE``
  (scope ``ws-connect``), and per client IP the failed ones (bad key, ticket or session)
  ``BRIDGE_EVENTS_CONNECT_FAIL_RATE_IP`` (scope ``ws-connect-fail``). Like REST, it fails open when Redis
  cannot be reached (the socket then fails on Redis anyway: 4503).
* Client messages, per socket, here: a token bucket in the process that holds the socket (no Redis
  round trip per message).
"""

from __future__ import annotations

import time

from bridge_project.ratelimit import parse_rate

CONNECT_SCOPE = "ws-connect"
CONNECT_FAIL_SCOPE = "ws-connect-fail"


class MessageBucket:
    """A socket's client messages: ``limit`` per ``period`` with a burst of ``limit`` (token bucket).
    ``rate`` as the other limits (``20/s``); empty, ``0`` or ``off``: no limit."""

    def __init__(self, rate: str):
        parsed = parse_rate(rate)
        self.limit, self.period = (parsed.limit, parsed.window) if parsed else (0, 1.0)
        self.tokens = float(self.limit)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 when the message may be handled (a token taken), else seconds until the next token."""
        if self.limit <= 0:
            return 0.0
        now = time.monotonic()
        rate = self.limit / self.period
        self.tokens = min(float(self.limit), self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate
