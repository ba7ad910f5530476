"""ResultsCallback: the bus-owned task behind ``BusOptions.on_publish_results``.

The results task puts each :class:`~trio_eventbus.PublishResult` into a bounded queue (``results_buffer``);
this task takes whatever is ready (at most ``results_buffer`` results) and awaits
``on_publish_results(batch)``, batch after batch, in the order the results arrived. Backpressure: while the
callback runs, results queue; once the queue is full the results task waits, the in-flight window stops
freeing slots, and ``publish`` waits (the pipeline logs that once). The queue resumes the writer once half of
it is free, so a busy bus hands over big batches.

Errors: an exception from the callback is logged with its traceback (logger ``trio_eventbus.publish``) and
counted (``Statistics.callback_errors``); it never propagates and the batch is not retried: the callback owns
its retries.

Lifecycle: the task runs in the bus's outer nursery, so on a graceful close it sees the results produced while
the bus closes (the last broker acks, the failures of publishes never answered); the results task waits for
room in the queue even then, because this task keeps taking. Once the close deadline passed (or a hard stop
began) the task has ``max(close_timeout, HARD_STOP_GRACE)`` more seconds; then it is cancelled. An outer
cancellation (hard stop) or a failure of the bus cancels it at once, like the handlers. Either way its queue
closes, and the results it did not take are counted in ``Statistics.results_dropped`` and logged in one line.
``flush()`` waits until the callback has returned for every result produced before it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from .._options import PublishResult
from .._queue import BoundedQueue

__all__ = ["ResultsCallback"]

logger = logging.getLogger("trio_eventbus.publish")

_Fn = Callable[[Sequence[PublishResult]], Awaitable[object]]


class ResultsCallback:
    """The queue and the task that feed ``on_publish_results`` (see the module docstring)."""

    def __init__(self, fn: _Fn, capacity: int) -> None:
        self._fn = fn
        self._capacity = capacity
        self._queue: BoundedQueue[PublishResult] = BoundedQueue(capacity, resume_at=capacity // 2)
        self._scope = trio.CancelScope()
        self._progress = trio.lowlevel.ParkingLot()
        self._ended = False
        self.task: trio.lowlevel.Task | None = None
        #: results put into the queue / in batches the callback has returned from (or raised) / left over at the end
        self.enqueued = 0
        self.done = 0
        self.dropped = 0
        self.errors = 0

    @property
    def full(self) -> bool:
        """Whether the queue holds ``results_buffer`` results."""
        return len(self._queue) >= self._capacity

    def put_nowait(self, result: PublishResult) -> bool:
        """Queue ``result`` unless the queue is full (False); ``BrokenResourceError`` once the task ended."""
        try:
            if not self._queue.offer(result):
                return False
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError from None
        self.enqueued += 1
        return True

    async def put(self, result: PublishResult) -> None:
        """Queue ``result``, waiting while the queue is full; ``BrokenResourceError`` once the task ended.
        Cancelled while waiting, nothing was queued."""
        try:
            await self._queue.put(result)
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError from None
        self.enqueued += 1

    def close(self, grace: float) -> None:
        """No more results: the task hands over what is queued within ``grace`` seconds, then ends."""
        self._queue.close()
        self.limit(grace)

    def limit(self, grace: float) -> None:
        """The bus is closing: the task must end within ``grace`` seconds from now (then it is cancelled, its
        queue closes, and what is left is dropped and counted)."""
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace)

    async def wait_done(self, target: int) -> None:
        """Wait until the callback has returned from (or raised for) ``target`` results, or its task ended.
        Always a checkpoint."""
        await trio.lowlevel.checkpoint()
        while self.done < target and not self._ended:
            await self._progress.park()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The task: batches from the queue to the callback until the queue is closed and empty."""
        self.task = trio.lowlevel.current_task()
        task_status.started()
        queue = self._queue
        fn = self._fn
        capacity = self._capacity
        try:
            with self._scope:
                while await queue.wait_readable():
                    batch: list[PublishResult] = []
                    while len(batch) < capacity and (result := queue.poll(None)) is not None:
                        batch.append(result)
                    try:
                        await fn(batch)
                    except Exception:
                        self.errors += 1
                        logger.exception(
                            "on_publish_results raised for a batch of %d results (event ids %s ... %s); the batch "
                            "is not retried",
                            len(batch),
                            batch[0].event_id,
                            batch[-1].event_id,
                        )
                    self.done += len(batch)
                    if self._progress:
                        self._progress.unpark_all()
        finally:
            self._ended = True
            queue.close()
            left = 0
            while queue.poll(None) is not None:
                left += 1
            if left:
                self.dropped += left
                logger.error(
                    "on_publish_results: %d publish results not handed over: the bus was cancelled or its close "
                    "deadline passed (counted in Statistics.results_dropped)",
                    left,
                )
            self._progress.unpark_all()
