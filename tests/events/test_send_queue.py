"""The socket's outgoing queue: latest values coalesce only for a socket that is behind."""

from __future__ import annotations

from streams.send_queue import SendQueue


def _drain(queue: SendQueue) -> list:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item)
    return out


def test_a_burst_of_ticks_within_the_allowance_is_written_whole_and_in_order() -> None:
    queue = SendQueue(max_pending=10, latest_burst=8)
    for n in range(8):
        queue.put_latest("quote:EURUSD", f"q{n}")
    queue.put("order-1")
    assert _drain(queue) == [f"q{n}" for n in range(8)] + ["order-1"]
    assert queue.replaced == 0


def test_a_socket_behind_gets_the_newest_value_in_the_newest_waiting_place() -> None:
    queue = SendQueue(max_pending=10, latest_burst=3)
    queue.put_latest("quote:EURUSD", "q0")
    queue.put("order-1")
    for n in range(1, 7):
        queue.put_latest("quote:EURUSD", f"q{n}")
        queue.put_latest("depth:EURUSD", f"d{n}")
    queue.put("order-2")
    # three values of a channel wait at most: q3..q6 went into the third quote's place (q2's, which kept
    # its place), d4..d6 into the third book's (d3's); ordered messages are never dropped
    assert _drain(queue) == ["q0", "order-1", "q1", "d1", "q6", "d2", "d6", "order-2"]
    assert queue.replaced == 4 + 3


def test_once_written_a_channel_has_its_whole_allowance_again() -> None:
    queue = SendQueue(max_pending=10, latest_burst=2)
    for n in range(4):
        queue.put_latest("quote:X", f"a{n}")
    assert _drain(queue) == ["a0", "a3"]
    for n in range(2):
        queue.put_latest("quote:X", f"b{n}")
    assert _drain(queue) == ["b0", "b1"]
