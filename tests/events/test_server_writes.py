"""``server_text_writer``: the events writer's synchronous path into daphne's WebSocket protocol is taken
only while the connection is open; otherwise (or with another server) the writer goes through ``send``.
The path itself carries every event of the socket tests (a real daphne)."""

from __future__ import annotations

from functools import partial

from daphne.ws_protocol import WebSocketProtocol

from streams.consumers import server_text_writer


class _Protocol:
    """What the writer uses of daphne's protocol: its states and ``serverSend``."""

    STATE_OPEN = WebSocketProtocol.STATE_OPEN
    STATE_CLOSING = WebSocketProtocol.STATE_CLOSING

    def __init__(self) -> None:
        self.state = self.STATE_OPEN
        self.sent: list[tuple[str, bool]] = []

    def serverSend(self, content: str, binary: bool = False) -> None:  # daphne's name
        self.sent.append((content, binary))


async def _handle_reply(protocol, message) -> None:  # the shape of daphne's Server.handle_reply
    raise AssertionError("not called by the synchronous path")


def test_writes_while_open_and_hands_back_once_closing() -> None:
    protocol = _Protocol()
    write = server_text_writer(partial(_handle_reply, protocol))
    assert write is not None
    assert write('{"type":"order","seq":1}') is True
    protocol.state = protocol.STATE_CLOSING
    assert write('{"type":"order","seq":2}') is False
    assert protocol.sent == [('{"type":"order","seq":1}', False)]


def test_another_server_gets_no_synchronous_path() -> None:
    async def send(message) -> None:
        return None

    assert server_text_writer(send) is None
    assert server_text_writer(partial(_handle_reply, object())) is None
