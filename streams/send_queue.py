"""A socket's outgoing queue: never drops an ordered message; coalesces quote/depth/profit/candle values
only for a socket that is behind.

What happens to a client that cannot keep up (documented in docs/events.md):

* ``quote:X``, ``depth:X``, ``candle:X:TF`` and ``profit`` are latest-value channels. A socket that keeps
  up gets every value (every tick): up to ``LATEST_BURST`` values of one channel may wait at once, so a
  poll cycle's burst of ticks, handed to the socket before its writer runs, is written whole. A socket
  with more than that waiting is behind: a newer value then replaces the newest one still waiting (which
  keeps its place in the queue), so a slow client gets fewer, but always the newest, values, and its
  backlog of them is bounded by ``LATEST_BURST`` per channel.
* everything else (``order``, ``position``, ``account``, ``deal``, ``session`` events and replies) is never
  dropped; when more than ``max_pending`` of them wait, the socket is closed with code 4429 and the
  client resumes with ``?since=<last seq it got>``: the stream gives it back what it did not receive.
* a close (``put_close``) takes its place in the queue like an ordered message: the socket is closed
  only after everything queued before it was written (a final ``session`` event, then 4410).
"""

from __future__ import annotations

import asyncio
from collections import deque

LATEST_BURST = 64  # values of one latest-value channel that may wait before newer ones replace the newest


class SendQueue:
    def __init__(self, max_pending: int, latest_burst: int = LATEST_BURST):
        # ("m", text) ordered message | ("l", slot) a latest value | ("x", code) close the socket
        self._items: deque[tuple[str, str | int]] = deque()
        self._slots: dict[int, tuple[str, str]] = {}  # slot -> (key, text) of a latest value waiting
        self._waiting: dict[str, list[int]] = {}  # key -> [values waiting, newest slot]
        self._next_slot = 0
        self._ordered = 0
        self._wake = asyncio.Event()
        self.max_pending = max_pending
        self.latest_burst = max(1, latest_burst)
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
        waiting = self._waiting.get(key)
        if waiting is not None and waiting[0] >= self.latest_burst:  # behind: the newest waiting one is replaced
            self._slots[waiting[1]] = (key, text)
            self.replaced += 1
        else:
            slot = self._next_slot
            self._next_slot += 1
            self._slots[slot] = (key, text)
            self._items.append(("l", slot))
            if waiting is None:
                self._waiting[key] = [1, slot]
            else:
                waiting[0], waiting[1] = waiting[0] + 1, slot
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
        key, text = self._slots.pop(value)
        waiting = self._waiting[key]
        waiting[0] -= 1
        if not waiting[0]:
            del self._waiting[key]
        return text

    async def wait(self) -> None:
        await self._wake.wait()
