"""Append-only state journal (msgpack records) so a restarted terminal keeps the broker's history.

Why a journal and not SQLite: order_send must stay far below 0.3 ms; one buffered write of a
few packed records per trade, flushed to the OS at the end of the call, costs microseconds and
survives a process crash (like SQLite WAL with synchronous=NORMAL, a power cut may lose the
last writes). Records are upserts/deletes keyed by ticket, so replay is "last one wins". On
open and on close the journal is compacted into a snapshot (write temp file, fsync, rename).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator

import msgpack

JOURNAL_NAME = "state.journal"
LOCK_NAME = "terminal.lock"


class StateDirLocked(RuntimeError):
    """Another engine process already owns this state directory."""


class Journal:
    def __init__(self, state_dir: str):
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, JOURNAL_NAME)
        self._lock_file = open(os.path.join(state_dir, LOCK_NAME), "a+")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_file.close()
            raise StateDirLocked(f"state dir {state_dir} is used by another mt5sim terminal") from exc
        self._file = None
        self._pending: list[bytes] = []
        self._packer = msgpack.Packer(use_bin_type=True)

    def read(self) -> Iterator[list]:
        """All records; a torn record at the end (crash mid-write) is dropped."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
            try:
                yield from unpacker
            except (msgpack.OutOfData, ValueError, msgpack.ExtraData):
                return

    def rewrite(self, records: Iterable[list]) -> None:
        """Replace the journal by a compact snapshot."""
        if self._file is not None:
            self._file.close()
            self._file = None
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            packer = msgpack.Packer(use_bin_type=True)
            for rec in records:
                f.write(packer.pack(rec))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")

    def append(self, record: list) -> None:
        self._pending.append(self._packer.pack(record))

    def flush(self) -> None:
        if not self._pending:
            return
        if self._file is None:
            self._file = open(self.path, "ab")
        self._file.write(b"".join(self._pending))
        self._file.flush()
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
        finally:
            self._lock_file.close()
