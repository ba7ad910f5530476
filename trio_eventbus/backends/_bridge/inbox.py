"""LoopInbox: a FIFO from Trio to one serial worker on the asyncio loop, one crossing per wake-up.

The mirror image of :class:`~trio_eventbus.backends._bridge.BatchPipe`. :meth:`LoopInbox.put` (Trio thread, never
blocks, never awaits) appends items to a buffer; only when no worker pass is already scheduled does it post one
callable to the loop (:meth:`Bridge.call_soon`). On the loop a single worker task takes *everything* buffered
and awaits ``handler(items)``, then looks again; items put meanwhile ride along in its next pass. So a busy
loop sees few large batches, an idle one gets each item after one hop, and Trio never waits for a round trip.

Ordering: items reach ``handler`` in ``put`` order, one call at a time. Backpressure is the caller's job (the
bus's publish window bounds what can be buffered). ``handler`` must not raise: an exception is a bug and
fails the bridge. Cancellation (the bridge closing, or :meth:`stop`) may leave items buffered: :meth:`take_all`
(or :meth:`stop`) hands them back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from .bridge import Bridge

__all__ = ["LoopInbox"]

T = TypeVar("T")


class LoopInbox(Generic[T]):
    """See the module docstring."""

    def __init__(self, bridge: Bridge, handler: Callable[[list[T]], Awaitable[object]]) -> None:
        self._bridge = bridge
        self._handler = handler
        self._lock = threading.Lock()
        self._buf: list[T] = []
        self._scheduled = False  # a worker pass is posted or running: put() need not post
        self._idle: asyncio.Event | None = None  # loop thread only
        self._task: asyncio.Future[None] | None = None
        self.passes = 0

    def __len__(self) -> int:
        return len(self._buf)

    def put(self, items: Iterable[T]) -> None:
        """Trio thread: queue ``items``; post a worker pass unless one is pending. ``BridgeError`` if closed."""
        with self._lock:
            self._buf.extend(items)
            if self._scheduled or not self._buf:
                return
            self._scheduled = True
        try:
            self._bridge.call_soon(self._start)
        except BaseException:
            with self._lock:
                self._scheduled = False
            raise

    def _start(self) -> None:  # loop thread
        self._task = task = asyncio.ensure_future(self._work())
        task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Future[None]) -> None:  # loop thread
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._bridge._fail(exc)  # a handler that raised is a bug: fail the bridge, never hang silently

    async def _work(self) -> None:  # loop thread: the only worker
        while True:
            with self._lock:
                batch, self._buf = self._buf, []
                if not batch:
                    self._scheduled = False
                    idle = self._idle
                    break
            self.passes += 1
            await self._handler(batch)
        if idle is not None:
            idle.set()

    async def wait_idle(self) -> None:
        """Loop thread: wait until everything put so far went through ``handler``."""
        while True:
            with self._lock:
                if not self._scheduled:
                    return
                if self._idle is None or self._idle.is_set():
                    self._idle = asyncio.Event()
                idle = self._idle
            await idle.wait()

    async def stop(self) -> list[T]:
        """Loop thread: cancel the worker (the ``handler`` call it is in sees ``CancelledError``), wait for it to
        end, and return what is still buffered. A later :meth:`put` only buffers (nothing takes it)."""
        with self._lock:
            self._scheduled = True  # put() posts no new worker pass from now on
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # not `await task`: its cancellation is not ours
        return self.take_all()

    def take_all(self) -> list[T]:
        """Any thread: remove and return what is still buffered (after the loop stopped working on it)."""
        with self._lock:
            batch, self._buf = self._buf, []
            return batch
