"""BoundedQueue (trio_eventbus._queue): FIFO, backpressure with a resume point, cancellation, close."""

from __future__ import annotations

import collections

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_eventbus._queue import BoundedQueue


async def _put_all(queue: BoundedQueue[int], items: range, done: list[int]) -> None:
    for item in items:
        await queue.put(item)
        done.append(item)


def test_fifo_and_nowait_limits() -> None:
    queue: BoundedQueue[int] = BoundedQueue(3)
    with pytest.raises(trio.WouldBlock):
        queue.get_nowait()
    for i in range(3):
        queue.put_nowait(i)
    with pytest.raises(trio.WouldBlock):
        queue.put_nowait(3)
    assert len(queue) == 3
    assert [queue.get_nowait() for _ in range(3)] == [0, 1, 2]
    assert queue.poll("empty") == "empty"


async def test_put_waits_while_full_and_resumes_at_once_by_default() -> None:
    queue: BoundedQueue[int] = BoundedQueue(2)
    done: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_put_all, queue, range(4), done)
        await trio.testing.wait_all_tasks_blocked()
        assert done == [0, 1]  # the third put waits: backpressure
        assert queue.get_nowait() == 0  # one slot free: the writer goes on at once
        await trio.testing.wait_all_tasks_blocked()
        assert done == [0, 1, 2]
        assert [await queue.get(), await queue.get(), await queue.get()] == [1, 2, 3]
    assert done == [0, 1, 2, 3]


async def test_a_waiting_put_resumes_only_once_drained_to_resume_at() -> None:
    queue: BoundedQueue[int] = BoundedQueue(4, resume_at=1)
    done: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_put_all, queue, range(8), done)
        await trio.testing.wait_all_tasks_blocked()
        assert done == [0, 1, 2, 3]
        for expected_len in (3, 2):  # drained to 3, then 2: above the resume point, the writer sleeps on
            queue.get_nowait()
            await trio.testing.wait_all_tasks_blocked()
            assert len(queue) == expected_len
            assert len(done) == 4
        assert queue.poll(-1) == 2  # poll wakes the writer too, once at the resume point
        await trio.testing.wait_all_tasks_blocked()
        assert done == [0, 1, 2, 3, 4, 5, 6]  # refilled in one go, up to capacity
        while len(done) < 8:
            await queue.get()
            await trio.testing.wait_all_tasks_blocked()


async def test_cancelled_put_adds_nothing_and_cancelled_get_takes_nothing() -> None:
    queue: BoundedQueue[str] = BoundedQueue(1)
    queue.put_nowait("held")
    with trio.move_on_after(1) as put_scope:  # the deadline is never reached: cancelled below
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.put, "never")
            await trio.testing.wait_all_tasks_blocked()
            put_scope.cancel()
    assert [queue.get_nowait()] == ["held"]
    with pytest.raises(trio.WouldBlock):
        queue.get_nowait()  # the cancelled put left nothing behind

    got: list[str] = []

    async def getter() -> None:
        got.append(await queue.get())

    with trio.CancelScope() as get_scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(getter)
            await trio.testing.wait_all_tasks_blocked()
            get_scope.cancel()
    queue.put_nowait("kept")
    assert got == []
    assert queue.get_nowait() == "kept"  # the cancelled get took nothing


async def test_close_drains_then_ends_and_wakes_both_sides() -> None:
    queue: BoundedQueue[int] = BoundedQueue(1)
    outcomes: list[str] = []

    async def putter() -> None:
        try:
            await queue.put(99)
        except trio.ClosedResourceError:
            outcomes.append("put refused")

    async def getter() -> None:
        try:
            await queue.get()
        except trio.EndOfChannel:
            outcomes.append("get ended")

    queue.put_nowait(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(putter)
        await trio.testing.wait_all_tasks_blocked()
        queue.close()
    assert outcomes == ["put refused"]
    with pytest.raises(trio.ClosedResourceError):
        queue.put_nowait(2)
    assert await queue.wait_readable() is True
    assert queue.get_nowait() == 1  # what was queued is drained
    assert await queue.wait_readable() is False
    with pytest.raises(trio.EndOfChannel):
        queue.get_nowait()
    assert queue.poll(None) is None

    empty: BoundedQueue[int] = BoundedQueue(1)
    queue = empty
    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        queue.close()
    assert outcomes == ["put refused", "get ended"]


async def test_wait_readable_waits_for_an_item_and_takes_nothing() -> None:
    queue: BoundedQueue[int] = BoundedQueue(2)
    seen: list[bool] = []

    async def reader() -> None:
        seen.append(await queue.wait_readable())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == []
        queue.put_nowait(7)
    assert seen == [True]
    assert len(queue) == 1


@given(
    capacity=st.integers(1, 5),
    ops=st.lists(st.one_of(st.integers(0, 100), st.none(), st.just("close")), max_size=60),
)
def test_nowait_operations_match_a_bounded_deque(capacity: int, ops: list[int | str | None]) -> None:
    """Any sequence of put_nowait (an int), get_nowait (None) and close behaves like a bounded deque."""
    queue: BoundedQueue[int] = BoundedQueue(capacity)
    model: collections.deque[int] = collections.deque()
    closed = False
    for op in ops:
        if op == "close":
            queue.close()
            closed = True
        elif op is None:
            if model:
                assert queue.get_nowait() == model.popleft()
            else:
                with pytest.raises(trio.EndOfChannel if closed else trio.WouldBlock):
                    queue.get_nowait()
        else:
            assert isinstance(op, int)
            if closed:
                with pytest.raises(trio.ClosedResourceError):
                    queue.put_nowait(op)
            elif len(model) >= capacity:
                with pytest.raises(trio.WouldBlock):
                    queue.put_nowait(op)
            else:
                queue.put_nowait(op)
                model.append(op)
        assert len(queue) == len(model)
