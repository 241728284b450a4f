"""Poll-cycle hooks called by the terminal pollers (placeholder: the events work replaces this file).

``after_poll`` receives the previous and the current ``TerminalSnapshot`` of a terminal after each
poll cycle; ``watched_symbols`` names the symbols whose ticks and books the poller must keep.
"""

from __future__ import annotations

from typing import Any


def after_poll(terminal_name: str, previous: Any, current: Any) -> None:
    return None


def watched_symbols(terminal_name: str) -> set[str]:
    return set()
