"""Reading a session's replayable events back from its stream (``resume``, ``?since=``, REST)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .keys import log_key, seq_key


@dataclass
class ReplayPage:
    """Events after ``since`` (JSON texts in seq order) and what the stream says about the gap."""

    since: int
    current: int  # the session's last seq when read
    oldest: int | None  # the oldest seq still kept, None when nothing is kept
    epoch: int = 0  # the epoch of the session's sequence (0: no counter yet)
    events: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)

    @property
    def resync_required(self) -> bool:
        """True when events after ``since`` were published but are no longer all kept.

        A ``since`` beyond the current seq (a counter that was reset, or a made-up number) also asks
        for a resync: the client's view cannot be continued from the stream. (A ``since`` of another
        epoch is the caller's check: ``epoch_differs``.)
        """
        if self.since >= self.current:
            return self.since > self.current
        if self.oldest is None:
            return True
        return self.since + 1 < self.oldest

    def epoch_differs(self, epoch: int | None) -> bool:
        """True when a client's ``epoch`` (None or 0: not known) is not the stream's: its seqs count
        another sequence (one from before Redis restarted empty), which cannot be continued."""
        return bool(epoch) and epoch != self.epoch

    @property
    def whole_epoch_kept(self) -> bool:
        """Every event of the current epoch is still in the stream (a replay from 0 is complete)."""
        return self.current == 0 or self.oldest == 1

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else self.since

    @property
    def complete(self) -> bool:
        """Every event up to ``current`` is in this page."""
        return self.last >= self.current


def _commands(session_id: str, since: int, limit: int) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    log = log_key(session_id)
    return [
        ("hmget", (seq_key(session_id), "n", "e"), {}),
        ("xrange", (log, "-", "+"), {"count": 1}),
        ("xrange", (log, f"{since + 1}-0", "+"), {"count": limit}),
    ]


def _page(since: int, results: list[Any]) -> ReplayPage:
    (current_raw, epoch_raw), first, entries = results
    current = int(current_raw or 0)
    oldest = _entry_seq(first[0][0]) if first else None
    page = ReplayPage(since=since, current=current, oldest=oldest, epoch=int(epoch_raw or 0))
    for entry_id, fields in entries:
        page.seqs.append(_entry_seq(entry_id))
        page.events.append(_text(fields.get(b"e", fields.get("e"))))
        page.channels.append(_text(fields.get(b"c", fields.get("c"))))
    return page


def _entry_seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_since(client, session_id: str, since: int, limit: int = 1000) -> ReplayPage:
    """Synchronous read (REST view) in one MULTI so the seq, the oldest entry and the page agree."""
    pipe = client.pipeline(transaction=True)
    for name, args, kwargs in _commands(session_id, since, limit):
        getattr(pipe, name)(*args, **kwargs)
    return _page(since, pipe.execute())


async def aread_since(client, session_id: str, since: int, limit: int = 1000) -> ReplayPage:
    """The same read on an asyncio Redis client (the consumer)."""
    pipe = client.pipeline(transaction=True)
    for name, args, kwargs in _commands(session_id, since, limit):
        getattr(pipe, name)(*args, **kwargs)
    return _page(since, await pipe.execute())


async def acurrent_state(client, session_id: str) -> tuple[int, int]:
    """(last seq, epoch) of the session; (0, 0) when it has no counter."""
    seq, epoch = await client.hmget(seq_key(session_id), "n", "e")
    return int(seq or 0), int(epoch or 0)


async def acurrent_states(client, session_ids: set[str]) -> dict[str, tuple[int, int]]:
    """``acurrent_state`` of several sessions in one round trip."""
    ordered = list(session_ids)
    pipe = client.pipeline(transaction=False)
    for session_id in ordered:
        pipe.hmget(seq_key(session_id), "n", "e")
    replies = await pipe.execute()
    return {session_id: (int(seq or 0), int(epoch or 0)) for session_id, (seq, epoch) in zip(ordered, replies,
                                                                                          strict=True)}
