"""A pause and a resume of a session reach its sockets as ``session`` events (real daphne, channel layer and
Redis), and the sockets stay open: the session is still active (docs/sessions.md, "Pause and resume")."""

from __future__ import annotations

import pytest

from sessions.models import BridgeSession
from sessions.services import session_pause, session_resume

pytestmark = pytest.mark.django_db(transaction=True)


def _ping(client, rid: str) -> dict:
    client.send({"type": "ping", "request_id": rid})
    return client.recv_until(lambda m: m.get("request_id") == rid)[0]


def test_a_pause_and_a_resume_reach_every_socket_of_the_session_which_stays_open(ws, make_session) -> None:
    session, other = make_session(), make_session()
    mine, theirs = ws(session), ws(other)
    _ping(mine, "a"), _ping(theirs, "a")  # both sockets are set up before anything is published

    paused = session_pause(session=BridgeSession.objects.get(id=session.id))
    event = mine.recv_until(lambda m: m["type"] == "session")[0]
    assert event["sessionId"] == session.id
    assert event["data"] == {"sessionId": session.id, "status": "active", "from": "active", "paused": True,
                             "pausedAt": int(paused.paused_at.timestamp()), "change": "paused",
                             "cancelQueued": False}
    assert _ping(mine, "b")["seq"] == event["seq"]  # still open, and it followed the sequence

    session_pause(session=BridgeSession.objects.get(id=session.id))  # already paused: no event
    session_resume(session=BridgeSession.objects.get(id=session.id))
    resumed = mine.recv_until(lambda m: m["type"] == "session")[0]
    assert resumed["seq"] == event["seq"] + 1  # the repeated pause published nothing
    assert resumed["data"] == {"sessionId": session.id, "status": "active", "from": "active", "paused": False,
                               "pausedAt": None, "change": "resumed"}
    assert _ping(mine, "c")["seq"] == resumed["seq"]
    assert _ping(theirs, "b")["seq"] == 0  # the other session's socket saw none of it
