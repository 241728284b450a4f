"""Signals of sessions and API keys, for the apps above that must act on them.

Sessions sit below streams and trading (they import sessions, never the other way), so a change here
is announced and the app that owns the reaction does it:

- ``session_ended(sender=BridgeSession, session=..., reason=...)`` is sent inside the transaction that
  ends the session (so a receiver's writes commit or roll back with it): trading cancels the
  session's queued tasks on it.
- ``session_changed(sender=BridgeSession, session_id=..., data=...)`` is sent after the commit of every
  status change, and of every pause and resume: streams publishes it as the ``session`` event on the session's stream.
- ``session_paused(sender=BridgeSession, session=..., cancel_queued=...)`` is sent inside the transaction
  of a pause (``cancel_queued``: trading cancels the session's queued tasks on it, in that transaction);
  also for a pause asked again of a paused session with ``cancel_queued`` (nothing else changes then).
- ``session_resumed(sender=BridgeSession, session=...)`` is sent inside the transaction of a resume:
  trading re-publishes the session's queued tasks to its terminal after the commit.
- ``paused_write_replay(sender=BridgeSession, workspace_id=..., request_id=...)`` asks whether the ledger
  already holds a request id (a receiver answers True): a write to a paused session with such an id is a
  replay, answered from the ledger, not refused.
- ``api_key_revoked(sender=ApiKey, key_id=...)`` is sent after the revocation commits: streams closes
  the sockets opened with that key.
"""

from django.dispatch import Signal

session_ended = Signal()
session_changed = Signal()
session_paused = Signal()
session_resumed = Signal()
paused_write_replay = Signal()
api_key_revoked = Signal()
