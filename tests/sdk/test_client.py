"""The mt5bridge client against the real embedded stack (run_bridge: daphne, pinned workers, mt5sim).

Writes retried through a dropped connection make one order; ``wait=True`` returns the final task; the retry
policy (429 with Retry-After waited, other 4xx never retried) and the exception of each error code as the
bridge answers them; sessions heartbeat and close; reads; the README's quick start runs as written.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mt5bridge
import pytest
from mt5bridge import AsyncClient, Client, RetryPolicy

from tests.procs import ROOT
from tests.waiting import wait_until

from .conftest import DEMO, Bridge, DropProxy, RecordingTransport

pytestmark = pytest.mark.timeout(300)

FAST_RETRY = RetryPolicy(max_attempts=5, backoff=0.05, max_backoff=0.5)


def _tag_of(s: mt5bridge.Session, task: mt5bridge.Task) -> str:
    """The bridge's tag of a filled market order: the comment of its broker order."""
    [order] = [o for o in s.history_orders() if o.ticket == task.order]
    tag = order.comment.split("|", 1)[0]
    assert re.fullmatch(r"b:[a-z0-9]{10}", tag), order
    return tag


def test_a_write_retried_through_a_dropped_connection_makes_one_order(bridge: Bridge) -> None:
    proxy = DropProxy(upstream=int(bridge.url.rsplit(":", 1)[1]))
    try:
        with Client(bridge.key, proxy.url, retry=FAST_RETRY) as client, client.session(**DEMO) as s:
            task = s.buy("EURUSD", 0.01, comment="drop-1")
            # The bridge answered the first POST, the proxy dropped the connection before a byte of it: the
            # client sent the same request again, with the same request id, and got the task it had made.
            assert proxy.dropped == 1
            assert len(proxy.seen) == 2, proxy.seen
            request_ids = [h["x-request-id"] for h in proxy.seen]
            assert request_ids == [task.request_id, task.request_id]
            assert task.replayed is True
            with Client(bridge.key, bridge.url) as direct:  # what the bridge holds, not through the proxy
                reader = direct.attach(s.session_id, heartbeat=False)
                tasks = reader.tasks.list(request_id=task.request_id).tasks
                assert [t.task_id for t in tasks] == [task.task_id]
                final = reader.wait_task(task.task_id, 30)
                assert final.state == "filled", final
                tag = _tag_of(reader, final)
                orders = [o for o in reader.history_orders() if (o.comment or "").startswith(tag)]
                deals = [d for d in reader.history_deals() if (d.comment or "").startswith(tag)]
                assert [o.ticket for o in orders] == [final.order]  # one order at the broker
                assert len(deals) == 1
    finally:
        proxy.close()


def test_wait_true_returns_the_filled_task_from_the_order_stream(bridge: Bridge) -> None:
    transport = RecordingTransport()
    with Client(bridge.key, bridge.url, transport=transport) as client, client.session(**DEMO) as s:
        first = s.buy("EURUSD", 0.01, wait=True)  # opens the session's order watcher
        assert first.state == "filled"
        wait_until(lambda: s._watcher.connected, 10, "the order watcher connected")
        task = s.buy("EURUSD", 0.01, wait=True)
        assert task.state == "filled" and task.retcode == 10009 and task.final, task
        assert task.result["volume"] == 0.01 and task.order
        # The stream told it: the watcher's socket carried the task's final state, and the wait read the task
        # at most twice (once after the POST, once after the event): no polling loop.
        wait_until(lambda: s._watcher.final_state(task.task_id) == "filled", 10, "the filled event")
        assert 1 <= len(transport.of("GET", f"/tasks/{task.task_id}")) <= 2
        s.close_position(first.order, wait=True)
        position = s.position(task.order)
        assert position.volume == 0.01 and position.symbol == "EURUSD"
        closed = s.close_position(task.order, wait=10)
        assert closed.kind == "position.close" and closed.state == "filled", closed
        assert task.order not in [p.ticket for p in s.positions()]

        # A pending order, modified at the broker and cancelled: each a task of its own, waited for.
        quote = s.quote("EURUSD")
        price = round(quote.bid - 0.0100, 5)
        placed = s.place_order("EURUSD", "buy_limit", 0.01, price=price, wait=True)
        assert placed.state == "placed", placed
        assert [o.ticket for o in s.orders("EURUSD") if o.ticket == placed.order] == [placed.order]
        modified = s.modify_order(placed.task_id, price=round(price - 0.0010, 5), wait=True)
        assert modified.kind == "order.modify" and modified.state == "filled", modified
        cancelled = s.cancel_order(placed.task_id, wait=True)
        assert cancelled.kind == "order.cancel" and cancelled.state == "filled", cancelled
        assert s.tasks.reconcile() == []


def test_async_client_places_waits_and_reads(bridge: Bridge) -> None:
    async def main() -> None:
        async with AsyncClient(bridge.key, bridge.url) as client, client.session(**DEMO) as s:
            task = await s.sell("EURUSD", 0.02, wait=True)
            assert task.state == "filled" and task.request["type"] == "SELL", task
            # The second wait is told by the session's order watcher (its socket is up by now).
            await asyncio.wait_for(s._watcher.stream.connected.wait(), 10)
            hedge = await s.buy("EURUSD", 0.01, wait=True)
            assert hedge.state == "filled"
            for _ in range(200):
                if s._watcher.final_state(hedge.task_id) == "filled":
                    break
                await asyncio.sleep(0.05)
            assert s._watcher.final_state(hedge.task_id) == "filled"
            await s.close_position(hedge.order, wait=True)
            position = await s.position(task.order)
            assert position.type == 1 and position.volume == 0.02
            modified = await s.modify_position(task.order, sl=round(position.price_open + 0.05, 5), wait=True)
            assert modified.state == "filled", modified
            closed = await s.close_position(task.order, 0.01, wait=True)  # partial
            assert closed.state == "filled"
            assert (await s.position(task.order)).volume == 0.01
            await s.close_position(task.order, wait=True)
            account = await s.account()
            assert account.currency == "USD" and account.login == DEMO["login"]
            page = await s.tasks.list(limit=2)
            assert len(page.tasks) == 2 and page.next_cursor
            assert await s.tasks.reconcile() == []

    asyncio.run(main())


def test_errors_map_to_exceptions_and_4xx_are_not_retried(bridge: Bridge) -> None:
    transport = RecordingTransport()
    with Client(bridge.key, bridge.url, transport=transport, retry=FAST_RETRY) as client, \
            client.session(**DEMO) as s:
        first = s.buy("EURUSD", 0.01, request_id="sdk-conflict-1")
        with pytest.raises(mt5bridge.TaskConflict) as conflict:
            s.sell("EURUSD", 0.01, request_id="sdk-conflict-1")
        assert conflict.value.status == 409 and conflict.value.code == "TaskConflict"
        assert conflict.value.task_id == first.task_id
        assert conflict.value.request_id == "sdk-conflict-1"
        replay = s.buy("EURUSD", 0.01, request_id="sdk-conflict-1")
        assert replay.task_id == first.task_id and replay.replayed

        with pytest.raises(mt5bridge.ValidationError) as invalid:
            s.buy("EURUSD", 0.0123456, request_id="sdk-invalid-1")
        assert invalid.value.status == 400 and "volume" in invalid.value.details, invalid.value.details

        with pytest.raises(mt5bridge.NotFound):
            s.tasks.get("tsk_000000000000000000000000")
        with pytest.raises(mt5bridge.NotFound):
            s.symbol("NOSUCH")
        # Each refused write was sent once: 4xx are never retried.
        posts = transport.of("POST", "/mt5/client/orders")
        counts = {rid: sum(1 for e in posts if e.request_headers["x-request-id"] == rid)
                  for rid in ("sdk-conflict-1", "sdk-invalid-1")}
        assert counts == {"sdk-conflict-1": 3, "sdk-invalid-1": 1}, counts
        s.wait_task(first.task_id, 30)
        s.close_position(s.wait_task(first.task_id).order, wait=True)

    with Client(bridge.key, bridge.url) as client, pytest.raises(mt5bridge.SessionExpired):
        client.attach(s.session_id, heartbeat=False).account()  # the session is closed now

    with Client("mt5b_wrong_key", bridge.url) as bad, pytest.raises(mt5bridge.Unauthorized) as unauthorized:
        bad.session(**DEMO).open()
    assert unauthorized.value.status == 401


def test_429_waits_retry_after_then_gives_the_final_answer(bridge: Bridge) -> None:
    """Requests with a wrong key are counted per address (BRIDGE_THROTTLE_IP_RATE, 3 per 4 s in this stack):
    the fourth is 429 with Retry-After. The client waits that long and sends the same request again."""
    transport = RecordingTransport()
    patient = RetryPolicy(max_attempts=3, backoff=0.05, max_retry_after=10)
    with Client("mt5b_wrong_key", bridge.url, transport=transport, retry=patient) as bad:
        # Until the address's window is full (earlier wrong keys may already count in it).
        wait_until(lambda: _status_of(bad) == 429, 10, "the address's limit reached")
        transport.log.clear()
        with pytest.raises(mt5bridge.Unauthorized):
            bad.send(mt5bridge._api.Call("GET", "/account"))
        statuses = [e.status for e in transport.log]
        assert statuses[0] == 429 and statuses[-1] == 401 and 2 <= len(statuses) <= 3, statuses
        for before, after in zip(transport.log, transport.log[1:], strict=False):
            if before.status == 429:
                waited = after.sent_at - before.sent_at
                assert waited >= float(before.response_headers["retry-after"]) - 0.05, (waited, before)

        # A Retry-After longer than the policy accepts is not waited for: RateLimited, with retry_after.
        impatient = Client("mt5b_wrong_key", bridge.url, retry=RetryPolicy(max_retry_after=0.5))
        with impatient:
            wait_until(lambda: _status_of(impatient) == 429, 10, "the address's limit reached again")
            started = time.monotonic()
            with pytest.raises(mt5bridge.RateLimited) as limited:
                impatient.send(mt5bridge._api.Call("GET", "/account"))
            assert time.monotonic() - started < 0.5
            assert limited.value.status == 429 and limited.value.retry_after >= 1


def _status_of(client: Client) -> int:
    try:
        client.send(mt5bridge._api.Call("GET", "/account"), retry=RetryPolicy(max_attempts=1))
    except mt5bridge.BridgeError as exc:
        return exc.status or 0
    return 200


def test_session_heartbeats_in_the_background_and_closes_on_exit(bridge: Bridge) -> None:
    with Client(bridge.key, bridge.url) as client:
        with client.session(**DEMO) as s:
            opened = s.opened
            assert opened.status == "active" and opened.heartbeat_interval == 5  # BRIDGE_SESSION_TTL 15 / 3
            # Past the expiry the open answer gave: only the background heartbeats keep it alive.
            wait_until(lambda: time.time() > opened.expires_at + 2, 30, "the first expiry passed", interval=0.5)
            info = s.info()
            assert info.status == "active" and info.last_heartbeat_at > opened.last_heartbeat_at, info
        assert s.ended
        ended = Client(bridge.key, bridge.url).attach(s.session_id, heartbeat=False).info()
        assert ended.status == "closed", ended


def test_reads(bridge: Bridge) -> None:
    with Client(bridge.key, bridge.url) as client, client.session(**DEMO) as s:
        symbols = s.symbols(group="*USD*")
        assert "EURUSD" in [sym.name for sym in symbols]
        eurusd = s.symbol("EURUSD")
        assert eurusd.digits == 5 and eurusd.volume_step == 0.01
        assert eurusd.get("trade_contract_size") == eurusd.trade_contract_size  # unknown fields stay readable
        bars = s.bars("EURUSD", "M1", count=5)
        assert bars.timeframe == "M1" and len(bars.bars) == 5 and bars.bars[0].time < bars.bars[-1].time
        ticks = s.ticks("EURUSD", count=3)
        assert len(ticks.ticks) == 3 and ticks.ticks[-1].bid > 0
        depth = s.depth("EURUSD")
        assert depth.book and {e.side for e in depth.book} <= {"buy", "sell"}
        quote = s.quote("EURUSD")
        assert quote.ask >= quote.bid > 0
        both = s.positions_and_orders()
        assert both.source in ("snapshot", "terminal") and both.as_of
        deals = s.history_deals(from_=time.time() - 3600, to=time.time() + 60)
        assert any(d.comment == "Initial deposit" or d.symbol == "EURUSD" for d in deals)


def test_readme_quick_start_runs_as_written(bridge: Bridge) -> None:
    readme = (ROOT / "sdk" / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", quick, re.S)
    assert len(blocks) == 1, "the quick start has one python block"
    env = {**os.environ, "MT5BRIDGE_URL": bridge.url, "MT5BRIDGE_API_KEY": bridge.key}
    run = subprocess.run([sys.executable, "-c", blocks[0]], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(ROOT))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "filled" in run.stdout and "closed: filled" in run.stdout, run.stdout
    # The asyncio example of "Sessions" too.
    sessions = readme.split("## Sessions", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```python\n(.*?)```", sessions, re.S)
    run = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(ROOT))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("filled ") and "closed: filled" in run.stdout, run.stdout


def _route_exists(fragment: str) -> bool:
    return any(fragment in p.read_text() for p in (ROOT / "trading").glob("*urls.py")) or any(
        fragment in p.read_text() for p in (ROOT / "sessions").glob("urls.py"))


@pytest.mark.skipif(not _route_exists('"positions/close"'), reason="POST /positions/close not in the tree yet")
def test_close_all(bridge: Bridge) -> None:
    with Client(bridge.key, bridge.url) as client, client.session(**DEMO) as s:
        a = s.buy("EURUSD", 0.01, magic=4242, wait=True)
        b = s.sell("GBPUSD", 0.01, magic=4242, wait=True)
        c = s.buy("GBPUSD", 0.01, magic=4242, wait=True)
        assert s.close_all(magic=4343) == []  # none matches: nothing queued
        sells = s.close_all(magic=4242, side="sell", request_id="sdk-close-sells", wait=True)
        assert [t.request_id for t in sells] == [f"sdk-close-sells/{b.order}"]
        assert sells[0].state == "filled", sells
        tasks = s.close_all(magic=4242, wait=True)
        assert {t.state for t in tasks} == {"filled"} and len(tasks) == 2, tasks
        assert not [p for p in s.positions() if p.ticket in (a.order, b.order, c.order)]
        with pytest.raises(mt5bridge.TaskConflict) as conflict:
            s.close_all(magic=1, request_id="sdk-close-sells")
        assert conflict.value.task_ids == [sells[0].task_id]


@pytest.mark.skipif(not _route_exists("/pause"), reason="POST /session/{id}/pause not in the tree yet")
def test_pause_and_resume(bridge: Bridge) -> None:
    with Client(bridge.key, bridge.url) as client, client.session(**DEMO) as s:
        paused = s.pause()
        assert paused.session_id == s.session_id
        with pytest.raises(mt5bridge.SessionPaused) as refused:
            s.buy("EURUSD", 0.01)
        assert refused.value.status == 409
        assert s.info().paused is True
        resumed = s.resume()
        assert resumed.paused is False
        task = s.buy("EURUSD", 0.01, wait=True)
        assert task.state == "filled"
        # A stop loss and take profit given in money: the bridge turns them into prices.
        modified = s.modify_position(task.order, sl_money=5.0, tp_money=7.5, wait=True)
        assert modified.state == "filled", modified
        levels = modified.request["moneyLevels"]
        assert levels["sl"]["asked"] == 5.0 and levels["sl"]["money"] <= 5.0 and levels["tp"]["money"] >= 7.5
        position = s.position(task.order)
        assert (position.sl, position.tp) == (levels["sl"]["price"], levels["tp"]["price"])
        s.close_position(task.order, wait=True)


@pytest.mark.skipif(not _route_exists('"stats"'), reason="GET /stats not in the tree yet")
def test_stats(bridge: Bridge) -> None:
    with Client(bridge.key, bridge.url) as client, client.session(**DEMO) as s:
        task = s.buy("EURUSD", 0.01, wait=True)
        s.close_position(task.order, wait=True)
        stats = s.stats(from_=time.time() - 3600, to=time.time() + 60)
        assert stats.trades >= 1 and stats.raw["trades"] == stats.trades
        assert stats.wins + stats.losses <= stats.trades


def test_502_while_the_terminal_process_is_frozen_is_retried(bridge: Bridge) -> None:
    """SIGSTOP the session's terminal process (its pinned worker and reader thread): reads of the terminal
    answer 502 BridgeUnavailable (the reader's heartbeat lapses). A client that retries keeps sending the
    read with backoff and returns the answer once the process runs again (SIGCONT)."""
    transport = RecordingTransport()
    patient = RetryPolicy(max_attempts=60, backoff=0.2, max_backoff=0.5)
    with Client(bridge.key, bridge.url, transport=transport, retry=patient) as client, \
            client.session(**DEMO) as s:
        name = s.opened.terminal
        pid = int(re.findall(rf"(?:re)?started worker-{re.escape(name)} \(pid (\d+)", bridge.log())[-1])
        os.kill(pid, signal.SIGSTOP)
        try:
            def refused() -> bool:
                try:
                    client.send(mt5bridge._api.Call("GET", "/symbols/EURUSD"), session_id=s.session_id,
                                retry=RetryPolicy(max_attempts=1))
                except mt5bridge.BridgeUnavailable as exc:
                    return exc.status == 502
                return False

            wait_until(refused, 30, "a 502 for the read while the terminal process is stopped")
            transport.log.clear()
            answer: list[mt5bridge.Symbol] = []
            reader = threading.Thread(target=lambda: answer.append(s.symbol("EURUSD")), daemon=True)
            reader.start()
            wait_until(lambda: [e for e in transport.log if e.status == 502], 30, "the retrying read's 502")
        finally:
            os.kill(pid, signal.SIGCONT)
        reader.join(60)
        assert answer and answer[0].name == "EURUSD"
        statuses = [e.status for e in transport.log if e.path.endswith("/symbols/EURUSD")]
        assert statuses[0] == 502 and statuses[-1] == 200 and set(statuses[:-1]) == {502}, statuses
