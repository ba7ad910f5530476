"""The asyncio bridge (trio_eventbus.backends._bridge), for both strategies: a loop thread and trio-asyncio.

Synchronisation between the two sides is always explicit: the asyncio side signals Trio through the Trio
token, and a `bridge.run(noop)` round trip proves that everything posted earlier to the (FIFO) loop has run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

import pytest
import trio
import trio.testing
import trio_asyncio
import uvloop

from trio_eventbus.backends._bridge import BatchPipe, Bridge, BridgeError, LoopInbox, open_bridge

# "thread" uses uvloop (installed here); "thread-asyncio" is the fallback loop when uvloop is missing.
Kind = Literal["thread", "thread-asyncio", "trio-asyncio"]
each_kind = pytest.mark.parametrize("kind", ["thread", "thread-asyncio", "trio-asyncio"])
TIMEOUT = 10


@asynccontextmanager
async def loop_for(kind: Kind) -> AsyncIterator[None]:
    """For the trio-asyncio kind the application owns the loop; the bridge shares it."""
    if kind == "trio-asyncio":
        async with trio_asyncio.open_loop():
            yield
    else:
        yield


def open_kind(kind: Kind, **kwargs: Any) -> AbstractAsyncContextManager[Bridge]:
    """Open the bridge with kind="auto": it must pick the running trio-asyncio loop, else a thread."""
    return open_bridge("auto", use_uvloop=None if kind == "thread" else False, **kwargs)


@asynccontextmanager
async def bridge_for(kind: Kind, **kwargs: Any) -> AsyncIterator[Bridge]:
    async with loop_for(kind), open_kind(kind, **kwargs) as bridge:
        assert bridge.kind == ("trio-asyncio" if kind == "trio-asyncio" else "thread")
        assert isinstance(bridge.loop, uvloop.Loop) == (kind == "thread")
        yield bridge


class Signal:
    """A Trio event that the asyncio side (any thread) can set. Create it in Trio."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self._token = trio.lowlevel.current_trio_token()

    def set(self) -> None:
        self._token.run_sync_soon(self.event.set)

    async def wait(self) -> None:
        await self.event.wait()


async def noop() -> None:
    pass


def bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trio-eventbus-aio-bridge")]


@each_kind
@pytest.mark.trio
async def test_run_returns_value_and_propagates_original_exception(kind: Kind) -> None:
    error = KeyError("nope")

    async def add(a: int, b: int, *, scale: int) -> tuple[int, bool]:
        await asyncio.sleep(0)
        return (a + b) * scale, asyncio.get_running_loop() is bridge.loop

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            assert await bridge.run(add, 1, 2, scale=10) == (30, True)
            with pytest.raises(KeyError) as info:
                await bridge.run(fail)
            assert info.value is error
            stats = bridge.statistics()
            assert stats.crossings == 2
            assert stats.tasks == 0


@each_kind
@pytest.mark.trio
async def test_cancelling_trio_caller_cancels_and_awaits_asyncio_task(kind: Kind) -> None:
    started = Signal()
    seen: list[str] = []

    async def victim() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            for _ in range(3):  # asynchronous clean-up that the Trio side must wait for
                await asyncio.sleep(0)
            seen.append("cleaned up")
            raise

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(bridge.run, victim)
                    await started.wait()
                    scope.cancel()
            assert scope.cancelled_caught
            assert seen == ["cancelled", "cleaned up"]  # finished before bridge.run returned
            assert bridge.statistics().tasks == 0


@each_kind
@pytest.mark.trio
async def test_task_that_completes_despite_the_cancel_delivers_its_result(kind: Kind) -> None:
    started = Signal()
    got: list[object] = []

    async def finishes_anyway() -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return 42  # e.g. the publish had already happened: the result must not be lost
        return 0

    async def cancel_when_started(scope: trio.CancelScope) -> None:
        await started.wait()
        scope.cancel()

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge, trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_when_started, scope)
                got.append(await bridge.run(finishes_anyway))
                await trio.lowlevel.checkpoint()  # the cancellation is level-triggered: it fires here
                got.append("not reached")
    assert got == [42]
    assert scope.cancelled_caught


@each_kind
@pytest.mark.trio
async def test_cancel_swallowed_by_asyncio_task_is_bounded_and_closed_later(kind: Kind) -> None:
    started = Signal()
    seen: list[str] = []

    async def swallow_once() -> None:  # like asyncio.wait_for on 3.11
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("swallowed")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("second cancel")
            raise

    async def cancel_when_started(scope: trio.CancelScope) -> None:
        await started.wait()
        scope.cancel()

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind, cancel_timeout=0.2) as bridge:
            async with trio.open_nursery() as nursery:
                with trio.CancelScope() as scope:
                    nursery.start_soon(cancel_when_started, scope)
                    with pytest.raises(BridgeError, match="ignored cancellation"):
                        await bridge.run(swallow_once)
            assert seen == ["swallowed"]
            assert bridge.statistics().tasks == 1  # still owned by the bridge
        assert seen == ["swallowed", "second cancel"]  # the close cancelled it again, and waited


@each_kind
@pytest.mark.trio
async def test_task_ignoring_every_cancel_is_reported_and_torn_down(kind: Kind) -> None:
    started, finished = Signal(), Signal()
    released = asyncio.Event()
    seen: list[str] = []

    async def stubborn() -> None:
        started.set()
        try:
            while not released.is_set():
                try:
                    await released.wait()
                except asyncio.CancelledError:
                    seen.append("ignored")
        finally:
            seen.append("finally")
            finished.set()

    async def spawn_stubborn_and_leave() -> None:
        async with open_kind(kind, close_timeout=0.3) as bridge:
            bridge.spawn(stubborn, name="stubborn")
            await started.wait()

    with trio.fail_after(TIMEOUT):
        async with loop_for(kind):
            with pytest.raises(BridgeError, match="did not finish within close_timeout"):
                await spawn_stubborn_and_leave()
            if kind == "trio-asyncio":  # the application's loop: released by the application
                assert seen == ["ignored"]
                trio_asyncio.current_loop.get().call_soon(released.set)
            await finished.wait()  # thread kind: its coroutine was closed when the loop was torn down
            assert seen == ["ignored", "finally"]
    assert not bridge_threads()


@each_kind
@pytest.mark.trio
async def test_run_in_an_already_cancelled_scope_leaves_no_task(kind: Kind) -> None:
    calls: list[str] = []

    async def record() -> None:
        calls.append("called")
        await asyncio.sleep(0)

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            for _ in range(20):
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await bridge.run(record)  # Cancelled, or the result if the task won the race
                assert bridge.statistics().tasks == 0
            await bridge.run(record)  # the bridge is still healthy
    assert calls[-1:] == ["called"]


@each_kind
@pytest.mark.trio
async def test_asyncio_side_cancellation_is_a_bridge_error(kind: Kind) -> None:
    async def cancels_itself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            with pytest.raises(BridgeError, match="cancelled from the asyncio side") as info:
                await bridge.run(cancels_itself)
            assert isinstance(info.value.__cause__, asyncio.CancelledError)


@each_kind
@pytest.mark.trio
async def test_run_still_in_flight_when_the_bridge_closes_is_not_left_hanging(kind: Kind) -> None:
    started = Signal()
    errors: list[BaseException] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def call_forever(bridge: Bridge) -> None:
        try:
            await bridge.run(forever)
        except BridgeError as exc:
            errors.append(exc)

    with trio.fail_after(TIMEOUT):
        # misuse: the caller lives in a nursery outside the bridge
        async with loop_for(kind), trio.open_nursery() as nursery, open_kind(kind) as bridge:
            nursery.start_soon(call_forever, bridge)
            await started.wait()
    assert len(errors) == 1
    assert "the bridge closed" in str(errors[0])


@each_kind
@pytest.mark.trio
async def test_spawned_tasks_are_cancelled_and_awaited_on_exit(kind: Kind) -> None:
    started = Signal()
    seen: list[str] = []

    async def forever(label: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            seen.append(f"{label} cancelled")
            raise

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            bridge.spawn(forever, "fetcher")
            await started.wait()
            assert bridge.statistics().tasks == 1
        assert seen == ["fetcher cancelled"]
        assert bridge.statistics().tasks == 0


@each_kind
@pytest.mark.trio
async def test_spawned_task_failure_cancels_body_and_is_reraised(kind: Kind) -> None:
    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def spawn_boom() -> None:
        async with open_kind(kind) as bridge:
            bridge.spawn(boom)
            await trio.sleep_forever()  # cancelled by the failure

    with trio.fail_after(TIMEOUT):
        async with loop_for(kind):
            with pytest.raises(ValueError, match="boom"):
                await spawn_boom()


@each_kind
@pytest.mark.trio
async def test_call_soon_runs_on_the_loop_and_failures_surface(kind: Kind) -> None:
    ran = Signal()
    where: list[object] = []

    def record(value: int) -> None:
        where.append((value, asyncio.get_running_loop()))
        ran.set()

    def broken() -> None:
        raise RuntimeError("callback failed")

    async def call_soon_twice() -> None:
        async with open_kind(kind) as bridge:
            bridge.call_soon(record, 7)
            await ran.wait()
            assert where == [(7, bridge.loop)]
            ran.event = trio.Event()
            await trio.to_thread.run_sync(bridge.call_soon, record, 8)  # from a foreign thread
            await ran.wait()
            assert where == [(7, bridge.loop), (8, bridge.loop)]
            bridge.call_soon(broken)
            await trio.sleep_forever()  # cancelled by the failure

    with trio.fail_after(TIMEOUT):
        async with loop_for(kind):
            with pytest.raises(RuntimeError, match="callback failed"):
                await call_soon_twice()


@each_kind
@pytest.mark.trio
async def test_closed_bridge_refuses_work(kind: Kind) -> None:
    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            pass
        with pytest.raises(BridgeError, match="closed"):
            await bridge.run(noop)
        with pytest.raises(BridgeError, match="closed"):
            bridge.spawn(noop)
        with pytest.raises(BridgeError, match="closed"):
            bridge.call_soon(print)


@each_kind
@pytest.mark.trio
async def test_pipe_keeps_fifo_order_and_wakes_trio_per_batch_not_per_item(kind: Kind) -> None:
    n = 10_000

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            pipe: BatchPipe[int] = BatchPipe(bridge, capacity=1000)

            async def produce() -> None:
                for i in range(n):
                    await pipe.put(i)
                pipe.close()

            bridge.spawn(produce)
            received: list[int] = []
            while True:
                try:
                    batch = await pipe.receive_batch(500)
                except trio.EndOfChannel:
                    break
                assert 1 <= len(batch) <= 500
                received.extend(batch)
    assert received == list(range(n))
    stats = pipe.statistics()
    assert stats.items_put == n
    assert stats.closed
    assert stats.batches <= n // 50, stats  # typically 20: one per 500 items
    assert stats.trio_wakeups <= stats.batches + 1, stats  # +1: the wake-up that reports the close


@each_kind
@pytest.mark.trio
async def test_inbox_keeps_order_and_batches_what_arrives_while_the_worker_is_busy(kind: Kind) -> None:
    passes: list[list[int]] = []
    gate = asyncio.Event()
    started = Signal()

    async def handler(items: list[int]) -> None:
        passes.append(items)
        started.set()
        await gate.wait()  # the first pass holds the worker: later puts accumulate

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            inbox: LoopInbox[int] = LoopInbox(bridge, handler)
            inbox.put([0])
            await started.wait()  # the first pass has started and waits at the gate
            for i in range(1, 101):
                inbox.put([i])
            assert len(inbox) == 100
            await bridge.run(_set, gate)
            await bridge.run(inbox.wait_idle)
    assert passes == [[0], list(range(1, 101))]
    assert inbox.passes == 2


async def _set(event: asyncio.Event) -> None:
    event.set()


@each_kind
@pytest.mark.trio
async def test_inbox_stop_cancels_the_running_pass_and_returns_what_is_buffered(kind: Kind) -> None:
    cancelled: list[list[int]] = []
    started = Signal()

    async def handler(items: list[int]) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(items)
            raise

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            inbox: LoopInbox[int] = LoopInbox(bridge, handler)
            inbox.put([1, 2])
            await started.wait()
            inbox.put([3, 4])
            left = await bridge.run(inbox.stop)
            inbox.put([5])  # after stop: buffered, never handled
            await bridge.run(noop)
            assert inbox.take_all() == [5]
    assert cancelled == [[1, 2]]
    assert left == [3, 4]


@each_kind
@pytest.mark.trio
async def test_inbox_handler_failure_fails_the_bridge_instead_of_hanging(kind: Kind) -> None:
    async def handler(items: list[int]) -> None:
        raise ValueError(f"handler broke on {items}")

    async def put_and_wait() -> None:
        async with open_kind(kind) as bridge:
            LoopInbox(bridge, handler).put([7])
            await trio.sleep_forever()  # cancelled by the failure

    with trio.fail_after(TIMEOUT):
        async with loop_for(kind):
            with pytest.raises(ValueError, match=r"handler broke on \[7\]"):
                await put_and_wait()


@pytest.mark.trio
@pytest.mark.parametrize("eager", [True, False])
async def test_eager_pipe_wakes_trio_from_the_put_itself(eager: bool) -> None:
    """eager_wake: Trio gets the item while the loop's step that put it is still running (thread kind)."""
    received = threading.Event()

    async def put_then_hold_the_loop(pipe: BatchPipe[int]) -> bool:
        pipe.put_nowait(1)
        return received.wait(timeout=5.0 if eager else 0.2)  # blocks the loop: only an eager wake-up reaches Trio

    with trio.fail_after(TIMEOUT):
        async with bridge_for("thread") as bridge:
            pipe: BatchPipe[int] = BatchPipe(bridge, capacity=10, eager_wake=eager)
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    assert await pipe.receive_batch(10) == [1]
                    received.set()

                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()  # parked in receive_batch
                got_it_in_time = await bridge.run(put_then_hold_the_loop, pipe)
    assert got_it_in_time == eager


@each_kind
@pytest.mark.trio
async def test_pipe_applies_backpressure_and_resumes_after_receive(kind: Kind) -> None:
    accepted: list[int] = []
    reached = [trio.Event() for _ in range(11)]

    def on_accepted(i: int) -> None:  # Trio thread
        accepted.append(i)
        reached[len(accepted)].set()

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            pipe: BatchPipe[int] = BatchPipe(bridge, capacity=4)
            token = trio.lowlevel.current_trio_token()

            async def produce() -> None:
                for i in range(10):
                    await pipe.put(i)
                    token.run_sync_soon(on_accepted, i)
                pipe.close()

            bridge.spawn(produce)
            await reached[4].wait()
            await bridge.run(noop)  # the producer has run as far as it can: it is parked in put(4)
            assert accepted == [0, 1, 2, 3]
            stats = pipe.statistics()
            assert (stats.buffered, stats.put_waiters) == (4, 1)
            assert not await bridge.run(_put_nowait, pipe, -1)  # full: put_nowait refuses

            assert await pipe.receive_batch(3) == [0, 1, 2]
            await reached[7].wait()  # room for 3 more: the producer resumed
            await bridge.run(noop)
            assert accepted == list(range(7))
            assert pipe.statistics().put_waiters == 1  # and it is blocked again, on 7

            rest: list[int] = []
            while len(rest) < 7:
                rest.extend(await pipe.receive_batch(100))
            assert rest[:6] == [3, 4, 5, 6, 7, 8]
    assert pipe.statistics().space_wakeups >= 2


async def _put_nowait(pipe: BatchPipe[int], item: int) -> bool:
    return pipe.put_nowait(item)


async def _put_all(pipe: BatchPipe[int], items: list[int]) -> int:
    return pipe.put_all_nowait(items)


@each_kind
@pytest.mark.trio
async def test_pipe_put_all_takes_what_fits_in_order_with_one_wakeup(kind: Kind) -> None:
    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge, trio.open_nursery() as nursery:
            pipe: BatchPipe[int] = BatchPipe(bridge, capacity=5)
            got: list[list[int]] = []

            async def receive() -> None:
                got.append(await pipe.receive_batch(100))

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()  # parked in receive_batch
            assert await bridge.run(_put_all, pipe, [1, 2, 3]) == 3
            await trio.testing.wait_all_tasks_blocked()
            assert got == [[1, 2, 3]]
            assert pipe.statistics().trio_wakeups == 1
            assert await bridge.run(_put_all, pipe, [4, 5, 6, 7, 8, 9]) == 5  # room for 5: the rest is refused
            assert await bridge.run(_put_all, pipe, [10]) == 0
            assert await pipe.receive_batch(100) == [4, 5, 6, 7, 8]
            await bridge.run(_close, pipe)
            with pytest.raises(BridgeError, match="closed"):
                await bridge.run(_put_all, pipe, [11])


async def _close(pipe: BatchPipe[int]) -> None:
    pipe.close()


@each_kind
@pytest.mark.trio
async def test_pipe_close_drains_then_ends_and_refuses_puts(kind: Kind) -> None:
    async def fill_and_close(pipe: BatchPipe[str]) -> None:
        assert pipe.put_nowait("a")
        assert pipe.put_nowait("b")
        pipe.close()
        with pytest.raises(BridgeError, match="closed"):
            pipe.put_nowait("c")

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge:
            pipe: BatchPipe[str] = BatchPipe(bridge, capacity=10)
            with pytest.raises(ValueError, match="capacity"):
                BatchPipe(bridge, capacity=0)
            await bridge.run(fill_and_close, pipe)
            assert await pipe.receive_batch(1) == ["a"]
            assert await pipe.receive_batch(5) == ["b"]
            with pytest.raises(trio.EndOfChannel):
                await pipe.receive_batch(5)


@each_kind
@pytest.mark.trio
async def test_cancelled_receive_takes_nothing(kind: Kind) -> None:
    async def receive(pipe: BatchPipe[int], scope: trio.CancelScope) -> None:
        with scope:
            await pipe.receive_batch(10)
            raise AssertionError("receive_batch returned")  # pragma: no cover

    with trio.fail_after(TIMEOUT):
        async with bridge_for(kind) as bridge, trio.open_nursery() as nursery:
            pipe: BatchPipe[int] = BatchPipe(bridge, capacity=10)
            scope = trio.CancelScope()
            nursery.start_soon(receive, pipe, scope)
            await trio.testing.wait_all_tasks_blocked()  # parked in receive_batch
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            await bridge.run(_put_nowait, pipe, 1)
            await bridge.run(_put_nowait, pipe, 2)
            assert await pipe.receive_batch(10) == [1, 2]


@pytest.mark.trio
async def test_thread_kind_leaves_no_thread_behind_even_when_cancelled() -> None:
    before = set(threading.enumerate())
    started = Signal()

    async def uses_executor() -> None:  # the default executor's threads must be joined too
        await asyncio.get_running_loop().run_in_executor(None, int)

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    with trio.fail_after(TIMEOUT):
        async with open_bridge("thread") as bridge:
            assert len(bridge_threads()) == 1
            await bridge.run(uses_executor)
        assert not bridge_threads()

        with trio.CancelScope() as scope:
            async with open_bridge("thread") as bridge:
                bridge.spawn(forever)
                await started.wait()
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
    assert not bridge_threads()
    assert set(threading.enumerate()) <= before
    assert bridge.loop.is_closed()


@pytest.mark.trio
async def test_thread_kind_uses_uvloop_unless_told_not_to() -> None:
    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    with trio.fail_after(TIMEOUT):
        async with open_bridge("thread") as bridge:
            assert isinstance(bridge.loop, uvloop.Loop)
            assert await bridge.run(running_loop) is bridge.loop
        async with open_bridge("thread", use_uvloop=False) as bridge:
            # trio_asyncio (imported here) replaced the asyncio policy: the loop must not come from it
            assert not isinstance(bridge.loop, uvloop.Loop | trio_asyncio.BaseTrioEventLoop)
            assert isinstance(bridge.loop, asyncio.BaseEventLoop)
            assert await bridge.run(running_loop) is bridge.loop


@pytest.mark.trio
async def test_auto_detection_and_explicit_trio_asyncio_without_a_loop() -> None:
    with trio.fail_after(TIMEOUT):
        async with open_bridge() as bridge:
            assert bridge.kind == "thread"
        async with trio_asyncio.open_loop() as loop, open_bridge() as bridge:
            assert bridge.kind == "trio-asyncio"
            assert bridge.loop is loop
        with pytest.raises(BridgeError, match="open_loop"):
            async with open_bridge("trio-asyncio"):
                pass
