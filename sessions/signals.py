"""Signals of the session state machine, for apps that must act when a session ends.

``session_ended(sender=BridgeSession, session=..., reason=...)`` is sent inside the transaction that
ends the session (so a receiver's writes commit or roll back with it): trading cancels the session's
queued tasks on it.
"""

from django.dispatch import Signal

session_ended = Signal()
