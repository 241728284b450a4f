"""The client's event streams against the real embedded stack: a stream that survives its daphne processes
being SIGKILLed (run_bridge restarts them) and resumes with no gap and no duplicate; resync_required handed
on as an event; the close codes (4410: the stream ends after the session's final event; 4401: raises)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import mt5bridge
import pytest
import redis
from mt5bridge import AsyncClient, Client, RetryPolicy
from mt5bridge._api import Call

import mt5sim
from tests.waiting import wait_until

from .conftest import DEMO, Bridge

pytestmark = pytest.mark.timeout(300)

CHANNELS = ["order", "position", "account", "deal"]  # with `session`, always sent: every replayable channel


def _session_seq(bridge: Bridge, session_id: str) -> int:
    """The session's last event seq as the bridge's Redis holds it (bridge:ev:counter:<session>)."""
    value = redis.Redis.from_url(bridge.env["REDIS_URL"]).hget(f"bridge:ev:counter:{session_id}", "n")
    return int(value or 0)


def _trade_elsewhere(bridge: Bridge, terminal: str) -> int:
    """A market buy on the account from another terminal, straight at the emulator (not through the bridge):
    the session's poller publishes its position, deal and account events by itself."""
    address = bridge.terminals[terminal]
    assert mt5sim.initialize(address, login=DEMO["login"], password=DEMO["password"], server=DEMO["server"]), \
        mt5sim.last_error()
    try:
        result = mt5sim.order_send({"action": 1, "symbol": "EURUSD", "volume": 0.01, "type": 0})
        assert result is not None and result.retcode == 10009, mt5sim.last_error()
        return result.order
    finally:
        mt5sim.shutdown()


def test_event_stream_survives_killed_daphne_and_resumes_without_gap(bridge: Bridge) -> None:
    patient = RetryPolicy(max_attempts=60, backoff=0.1, max_backoff=1.0)

    async def main() -> None:
        async with AsyncClient(bridge.key, bridge.url, retry=patient) as client, client.session(**DEMO) as s:
            other = next(name for name in bridge.terminals if name != s.opened.terminal)
            stream = s.events(CHANNELS, ping_interval=2, ping_timeout=2)
            received: list[mt5bridge.Event] = []

            async def consume() -> None:
                async for event in stream:
                    received.append(event)

            consumer = asyncio.create_task(consume())
            await asyncio.wait_for(stream.connected.wait(), 20)
            before = [await s.buy("EURUSD", 0.01, wait=True) for _ in range(2)]
            await _until(lambda: _filled(received) >= {t.task_id for t in before}, 20, "the first fills as events")
            last_before_kill = stream.last_seq

            webs = bridge.web_pids()
            assert len(webs) == 2, webs
            for pid in webs.values():
                os.kill(pid, signal.SIGKILL)
            # While no daphne runs: a trade made outside the bridge, whose events only the stream can give back.
            ticket = await asyncio.to_thread(_trade_elsewhere, bridge, other)
            await _until(lambda: _session_seq(bridge, s.session_id) > last_before_kill, 20,
                         "the outside trade's events published")
            published_while_down = "restarted web" not in bridge.log()
            # Orders sent meanwhile: retried (same request id) until a restarted daphne answers.
            during = await asyncio.gather(*(s.buy("EURUSD", 0.01, wait=True) for _ in range(3)))
            assert {t.state for t in during} == {"filled"}, during
            await _until(lambda: _filled(received) >= {t.task_id for t in before + during}, 30,
                         "the fills after the restart as events")
            await _until(lambda: any(e.type == "position" and e.data.get("ticket") == ticket
                                     and e.data.get("event") == "opened" for e in received), 20,
                         "the outside position's event")
            restarted = bridge.web_pids()
            assert set(restarted.values()).isdisjoint(webs.values()), (webs, restarted)

            # The stream reconnected and resumed from the last seq it had handed on.
            assert stream.state.closes and stream.state.resumes, (stream.state.closes, stream.state.resumes)
            first_resume = stream.state.resumes[0]
            assert first_resume["since"] >= last_before_kill and first_resume["epoch"] == received[0].epoch
            assert set(first_resume["channels"]) == set(CHANNELS)

            # Every seq, once, in order, equal to what the bridge kept for the session.
            last, got = stream.last_seq, list(received)  # the consumer goes on while we await below
            seqs = [e.seq for e in got]
            assert seqs == list(range(seqs[0], last + 1)), seqs
            kept = await s._acall(Call("GET", "/events/recent", params={"since": seqs[0] - 1, "limit": 500}))
            assert [e["seq"] for e in kept["events"] if e["seq"] <= last] == seqs
            assert [e["type"] for e in kept["events"] if e["seq"] <= last] == [e.type for e in got]
            if published_while_down:  # the usual case: the restart takes a second or more, the poller less
                outside = [e.seq for e in received if e.type == "position" and e.data.get("ticket") == ticket]
                assert outside and outside[0] > last_before_kill
                assert stream.state.resumed[0]["replayed"] >= 1, stream.state.resumed  # given back by the resume
            await s.close_position(ticket, wait=True)
            for task in before + during:
                await s.close_position(task.order, wait=True)
            await stream.aclose()
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    asyncio.run(main())


def _filled(events: list[mt5bridge.Event]) -> set[str]:
    return {e.data["taskId"] for e in events if e.type == "order" and e.data.get("state") == "filled"}


async def _until(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what} not met within {timeout}s"
        await asyncio.sleep(0.05)


def test_sync_stream_resync_required_and_session_end(bridge: Bridge) -> None:
    with Client(bridge.key, bridge.url) as client:
        s = client.open_session(**DEMO)
        # A position beyond the session's sequence: the bridge cannot give what follows it.
        stream = s.events(["order"], since=10**9, ping_interval=0.3)
        events: list[mt5bridge.Event] = []
        done = threading.Event()

        def consume() -> None:
            for event in stream:
                events.append(event)
            done.set()  # the iteration ended by itself

        threading.Thread(target=consume, daemon=True).start()
        wait_until(lambda: events, 20, "the resync notice")
        assert events[0].resync_required and events[0].data["since"] == 10**9, events[0]
        reloaded = events[0].state  # the client reloaded the session's state over REST after the notice
        assert reloaded is not None and reloaded.account.login == DEMO["login"]
        assert reloaded.pending_tasks == [] and isinstance(reloaded.positions, list)
        # A quiet socket is kept alive: a ping after each quiet interval, each answered.
        wait_until(lambda: stream.state.pongs >= 2, 20, "pongs to the stream's pings")
        task = s.buy("EURUSD", 0.01, wait=True)
        wait_until(lambda: task.task_id in _filled(events), 20, "the order's events after the resync")
        s.close_position(task.order, wait=True)

        # The session ends: its final `session` event, then 4410, and the iteration stops.
        Client(bridge.key, bridge.url).attach(s.session_id, heartbeat=False).close()
        wait_until(done.is_set, 20, "the stream ended")
        assert events[-1].type == "session" and events[-1].data["status"] == "closed", events[-1]
        assert stream.state.closes[-1] == 4410
        s.ended = True
        s.close()

        # A session that is not live: the socket is refused with 4401, the stream raises.
        stale = client.attach(s.session_id, heartbeat=False)
        with pytest.raises(mt5bridge.Unauthorized):
            next(iter(stale.events(["order"])))


def test_sync_stream_survives_killed_daphne(bridge: Bridge) -> None:
    """The same with the sync client: the iterator (in a thread) reconnects and resumes, the sync writes
    are retried across the restart, and every seq arrives once."""
    patient = RetryPolicy(max_attempts=60, backoff=0.1, max_backoff=1.0)
    with Client(bridge.key, bridge.url, retry=patient) as client, client.session(**DEMO) as s:
        stream = s.events(CHANNELS, ping_interval=2, ping_timeout=2)
        received: list[mt5bridge.Event] = []
        threading.Thread(target=lambda: received.extend(stream), daemon=True).start()
        assert stream.connected.wait(20)
        first = s.buy("EURUSD", 0.01, wait=True)
        wait_until(lambda: first.task_id in _filled(list(received)), 20, "the first fill as an event")
        last_before_kill = stream.last_seq
        webs = bridge.web_pids()
        for pid in webs.values():
            os.kill(pid, signal.SIGKILL)
        during = [s.buy("EURUSD", 0.01) for _ in range(3)]  # each retried until a daphne answers
        wait_until(lambda: {t.task_id for t in during} <= _filled(list(received)), 40, "the fills as events")
        assert stream.state.resumes and stream.state.resumes[0]["since"] >= last_before_kill
        got = list(received)
        seqs = [e.seq for e in got]
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
        kept = client.request("GET", "/events/recent", params={"since": seqs[0] - 1, "limit": 500},
                              session_id=s.session_id)
        assert [e["seq"] for e in kept["events"] if e["seq"] <= seqs[-1]] == seqs
        assert set(bridge.web_pids().values()).isdisjoint(webs.values())
        stream.close()
        for task in [first, *during]:
            s.close_position(s.wait_task(task).order, wait=True)
