"""A socket's outgoing queue: never drops an ordered message, keeps only the newest quote/depth/profit.

What happens to a client that cannot keep up (documented in docs/events.md):

* ``quote:X``, ``depth:X`` and ``profit`` are latest-value channels: while a socket is behind, a newer
  value replaces the one still waiting (it keeps its place in the queue), so a slow client gets fewer,
  but always the newest, quotes, and its backlog of them is bounded by the number of channels.
* everything else (``order``, ``position``, ``account``, ``session`` events and replies) is never
  dropped; when more than ``max_pending`` of them wait, the socket is closed with code 4429 and the
  client resumes with ``?since=<last seq it got>``: the stream gives it back what it did not receive.
* a close (``put_close``) takes its place in the queue like an ordered message: the socket is closed
  only after everything queued before it was written (a final ``session`` event, then 4410).
"""

from __future__ import annotations

import asyncio
from collections import deque


class SendQueue:
    def __init__(self, max_pending: int):
        # ("m", text) ordered message | ("l", key) latest slot | ("x", code) close the socket
        self._items: deque[tuple[str, str | int]] = deque()
        self._latest: dict[str, str] = {}
        self._ordered = 0
        self._wake = asyncio.Event()
        self.max_pending = max_pending
        self.replaced = 0  # latest-value messages replaced before they were sent (coalesced)

    @property
    def overflowed(self) -> bool:
        return self._ordered > self.max_pending

    @property
    def ordered_pending(self) -> int:
        return self._ordered

    def put(self, text: str) -> None:
        self._items.append(("m", text))
        self._ordered += 1
        self._wake.set()

    def put_latest(self, key: str, text: str) -> None:
        if key in self._latest:
            self.replaced += 1
        else:
            self._items.append(("l", key))
        self._latest[key] = text
        self._wake.set()

    def put_close(self, code: int) -> None:
        """Close the socket with ``code`` once everything queued so far is written."""
        self._items.append(("x", code))
        self._wake.set()

    def pop(self) -> str | int | None:
        """The next text to write, an int (a close code: close the socket), or None when empty."""
        if not self._items:
            self._wake.clear()
            return None
        kind, value = self._items.popleft()
        if kind == "m":
            self._ordered -= 1
            return value
        if kind == "x":
            return value
        return self._latest.pop(value)

    async def wait(self) -> None:
        await self._wake.wait()
