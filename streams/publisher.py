"""The seam through which the rest of the bridge hands events to the /events stream.

Owned by the events work (issue 6). Callers: ``trading`` on every task state change, the terminal
pollers for account/position/profit/quote/depth changes.
"""

from __future__ import annotations

from typing import Any


def publish_session_event(session_id: str, channel: str, data: dict[str, Any]) -> None:
    """Publish one event of ``channel`` ('order', 'position', 'account', ...) to a session's stream.

    To be implemented by the events work: assign the per-session seq, keep it for replay, fan out.
    """
    return None
