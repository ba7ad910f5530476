"""BatchPipe: a bounded FIFO from the asyncio side of a :class:`~.bridge.Bridge` to Trio, with batched wake-ups.

Fetchers and ack handlers on the loop put items one by one; the Trio side takes them in batches, woken by one
crossing per batch (see :class:`BatchPipe` for ordering, backpressure and cancellation).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Generic, TypeVar

import attrs
import trio

from .bridge import Bridge, BridgeError

__all__ = ["BatchPipe", "PipeStatistics"]

T = TypeVar("T")


@attrs.frozen
class PipeStatistics:
    buffered: int
    capacity: int
    items_put: int
    batches: int  # receive_batch() calls that returned items
    trio_wakeups: int  # asyncio -> Trio wake-ups
    space_wakeups: int  # Trio -> asyncio wake-ups of waiting put() calls
    put_waiters: int
    closed: bool


class BatchPipe(Generic[T]):
    """A bounded FIFO from the asyncio side to the Trio side, with batched wake-ups.

    The asyncio side calls :meth:`put_nowait`, :meth:`put` and :meth:`close` on the loop thread; the Trio side
    calls :meth:`receive_batch`. Trio is woken (one crossing) only if it is parked in :meth:`receive_batch`,
    and only once per loop iteration: the wake-up is sent after the asyncio step that made the pipe
    non-empty, so a step that puts a whole fetch of 500 items wakes Trio once; items put while the wake-up
    travels or while Trio works on a batch just accumulate. ``eager_wake=True`` sends the wake-up from the
    put itself instead (one loop iteration sooner): for pipes whose every put is already a whole batch.
    Likewise a waiting :meth:`put` is woken by one crossing when a receive frees room. Backpressure: at
    ``capacity`` items ``put_nowait`` returns False and ``put`` waits, in asyncio. Cancellation on either side
    loses no item and adds none.
    """

    def __init__(self, bridge: Bridge, capacity: int, *, eager_wake: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self._bridge, self._capacity = bridge, capacity
        self._eager = eager_wake
        self._lock = threading.Lock()  # guards _buf, _closed, _receiver, _wake_pending, _space_wanted
        self._buf: collections.deque[T] = collections.deque()
        self._closed = self._wake_pending = self._space_wanted = False
        self._receiver: trio.Event | None = None  # armed while Trio is parked in receive_batch
        self._space = asyncio.Event()  # loop thread only
        self._items_put = self._batches = self._trio_wakeups = self._space_wakeups = self._put_waiters = 0

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<BatchPipe buffered={s.buffered}/{s.capacity} put={s.items_put} batches={s.batches} "
            f"wakeups={s.trio_wakeups} put_waiters={s.put_waiters} closed={s.closed}>"
        )

    def statistics(self) -> PipeStatistics:
        counts = (self._items_put, self._batches, self._trio_wakeups, self._space_wakeups, self._put_waiters)
        return PipeStatistics(len(self._buf), self._capacity, *counts, self._closed)

    def put_nowait(self, item: T) -> bool:
        """asyncio side: append ``item``, or return False if full. :class:`BridgeError` if closed."""
        return self._offer(item, want_space=False)

    def put_all_nowait(self, items: list[T]) -> int:
        """asyncio side: append as many of ``items`` as fit, in order, and wake a waiting receiver at once (one
        crossing for all of them: the caller batched them already); how many were appended.
        :class:`BridgeError` if closed."""
        with self._lock:
            if self._closed:
                raise BridgeError("put on a closed BatchPipe")
            room = self._capacity - len(self._buf)
            if room <= 0 or not items:
                return 0
            taken = items if len(items) <= room else items[:room]
            self._buf.extend(taken)
            self._items_put += len(taken)
            receiver, self._receiver = self._receiver, None
        if receiver is not None:
            self._trio_wakeups += 1
            self._bridge._to_trio(receiver.set)
        return len(taken)

    async def put(self, item: T) -> None:
        """asyncio side: append ``item``, waiting while the pipe is full. :class:`BridgeError` if closed."""
        while not self._offer(item, want_space=True):
            self._put_waiters += 1
            try:
                await self._space.wait()
            finally:
                self._put_waiters -= 1

    def _offer(self, item: T, *, want_space: bool) -> bool:
        with self._lock:
            if self._closed:
                raise BridgeError("put on a closed BatchPipe")
            if len(self._buf) >= self._capacity:
                if want_space:
                    self._space_wanted = True
                    self._space.clear()
                return False
            self._buf.append(item)
            self._items_put += 1
            if self._receiver is None or self._wake_pending:
                return True
            self._wake_pending = True
        if self._eager:
            self._wake()
        else:
            self._bridge.loop.call_soon(self._wake)  # after this step, which may put many more items
        return True

    def _wake(self) -> None:  # loop thread
        with self._lock:
            self._wake_pending = False
            receiver, self._receiver = self._receiver, None
        if receiver is not None:
            self._trio_wakeups += 1
            self._bridge._to_trio(receiver.set)

    def close(self) -> None:
        """asyncio side: no more items. Trio receives what is buffered, then ``trio.EndOfChannel``."""
        with self._lock:
            self._closed = True
            receiver, self._receiver = self._receiver, None
        if receiver is not None:
            self._bridge._to_trio(receiver.set)
        self._space.set()  # waiting put() calls wake up and raise BridgeError

    async def receive_batch(self, max_items: int) -> list[T]:
        """Trio side: wait for at least one item; return up to ``max_items`` of them, in FIFO order.

        Raises ``trio.EndOfChannel`` once the pipe is closed and drained. Always a checkpoint; cancelled while
        waiting, it takes no item.
        """
        if max_items < 1:
            raise ValueError(f"max_items must be > 0, got {max_items}")
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            with self._lock:
                if buf := self._buf:
                    if len(buf) <= max_items:
                        batch = list(buf)
                        buf.clear()
                    else:
                        batch = [buf.popleft() for _ in range(max_items)]
                    notify, self._space_wanted = self._space_wanted, False
                    break
                if self._closed:
                    raise trio.EndOfChannel
                if self._receiver is None:
                    self._receiver = trio.Event()
                receiver = self._receiver
            waited = True
            await receiver.wait()
        self._batches += 1
        if notify:
            self._space_wakeups += 1
            self._bridge._submit(self._space.set, quiet=True)
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return batch
