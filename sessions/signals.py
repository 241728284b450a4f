"""Signals of sessions and API keys, for the apps above that must act on them.

Sessions sit below streams and trading (they import sessions, never the other way), so a change here
is announced and the app that owns the reaction does it:

- ``session_ended(sender=BridgeSession, session=..., reason=...)`` is sent inside the transaction that
  ends the session (so a receiver's writes commit or roll back with it): trading cancels the
  session's queued tasks on it.
- ``session_changed(sender=BridgeSession, session_id=..., data=...)`` is sent after the commit of every
  status change: streams publishes it as the ``session`` event on the session's stream.
- ``api_key_revoked(sender=ApiKey, key_id=...)`` is sent after the revocation commits: streams closes
  the sockets opened with that key.
"""

from django.dispatch import Signal

session_ended = Signal()
session_changed = Signal()
api_key_revoked = Signal()
