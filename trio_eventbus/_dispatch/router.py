"""The router: the one path from a backend's fetcher to the lanes and the worker pool.

:meth:`Router.route` takes a fetched batch of one subscription and queues each delivery, in batch order, as
the work item ``(run, delivery)`` (``run`` is the subscription's composed pipeline, :mod:`.pipeline`): on the
lane of its key (:class:`~.lanes.KeyedLanes`: per-key order) or, keyless, on the worker pool
(:class:`~.workers.WorkerPool`: no order). It counts redeliveries (``attempt > 1``).

Keyless deliveries of an envelope subscription (``envelopes=True``; the Go services publish on NATS without
any header, so their messages arrive without a key) are decoded here, once, before routing
(:func:`~.decode.key_from_body`): the envelope's ``aggregate_id`` becomes the delivery's key, so they take
their aggregate's lane like every keyed envelope, and the decoded envelope stays on ``Delivery.envelope`` for
the decode step. A body that does not decode stays keyless and goes to the worker pool, where the decode step
dead-letters it (reason ``undecodable``). Keyed deliveries are not touched.

Backpressure: while a queue has room and the bytes fit a delivery is queued without awaiting; at a full queue
``route`` waits (the fetcher, hence the broker, waits with it) until the lane has drained to half its buffer.
Bytes: ``len(body)`` of every delivery queued and not yet finished counts against one
:class:`~.budget.ByteBudget` (``BusOptions.max_buffered_bytes``); when the next delivery would pass it,
``route`` waits until half of it is free (a delivery is always admitted when nothing is held). ``route`` is a
checkpoint once per batch, not per delivery.

Closing and cancellation: after :meth:`Router.close_inputs` lanes and workers finish what they hold and exit;
a delivery routed after that (or while the bus stops) is abandoned at once: nak'ed, so the broker redelivers
it. :meth:`Router.cancel` cancels every lane and worker; each naks the delivery it held and everything queued
behind it (``abandon``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from .._abc import Delivery
from .budget import ByteBudget
from .decode import key_from_body
from .lanes import KeyedLanes
from .settle import Counters
from .workers import WorkerPool

__all__ = ["Router", "Run"]

#: A subscription's pipeline: ``await run(delivery)`` handles and settles one delivery.
Run = Callable[[Delivery], Awaitable[None]]


class Router:
    """``lanes`` keyed lanes of ``lane_buffer`` and ``workers`` workers sharing ``worker_buffer``, holding at
    most ``max_buffered_bytes`` of bodies (see the module docstring); ``abandon`` naks a delivery that will not
    be handled."""

    def __init__(
        self,
        *,
        lanes: int,
        lane_buffer: int,
        workers: int,
        worker_buffer: int,
        abandon: Callable[[Delivery], None],
        counters: Counters,
        max_buffered_bytes: int,
    ) -> None:
        self._abandon = abandon
        self._counters = counters
        self.budget = ByteBudget(max_buffered_bytes)
        self.lanes: KeyedLanes[Delivery] = KeyedLanes(lanes, lane_buffer, abandon, self.budget)
        self.workers: WorkerPool[Delivery] = WorkerPool(workers, worker_buffer, abandon, self.budget)

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every lane and worker task in ``nursery``; returns when all run."""
        await self.lanes.start(nursery)
        await self.workers.start(nursery)

    async def route(self, run: Run, deliveries: Sequence[Delivery], envelopes: bool = False) -> None:
        """Queue ``(run, delivery)`` for each delivery, in order, on its key's lane or the worker pool; with
        ``envelopes``, a keyless delivery is keyed by its body's ``aggregate_id`` (see the module docstring)."""
        counters = self._counters
        by_key = self.lanes.by_key
        queue_of = self.lanes.queue_of
        pool = self.workers.queue
        budget = self.budget
        limit = budget.limit
        # the bytes held are kept in a local between awaits: lanes release only while this task waits
        held = budget.held
        for delivery in deliveries:
            if delivery.attempt > 1:
                counters.redelivered += 1
            size = len(delivery.body)
            held += size
            if held > limit and held != size:  # over the budget while something else is held: wait
                budget.held = held - size
                if held - size > budget.peak:
                    budget.peak = held - size
                await budget.acquire(size)
                held = budget.held
            key = delivery.key
            if key or (envelopes and (key := key_from_body(delivery))):
                queue = by_key.get(key)
                if queue is None:
                    queue = queue_of(key)
            else:
                queue = pool
            item = (run, delivery, size)
            try:
                queue.put_nowait(item)
            except trio.WouldBlock:
                budget.held = held
                if held > budget.peak:
                    budget.peak = held
                try:
                    await queue.put(item)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    budget.release(size)
                    self._abandon(delivery)
                except BaseException:  # cancelled while waiting: the fetcher still owns the delivery
                    budget.release(size)
                    raise
                held = budget.held
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                held -= size
                self._abandon(delivery)  # the bus is stopping: hand it back for redelivery
        budget.held = held
        if held > budget.peak:
            budget.peak = held
        await trio.lowlevel.checkpoint()

    def close_inputs(self) -> None:
        """Let lanes and workers finish what they hold, then exit."""
        self.lanes.close_inputs()
        self.workers.close_inputs()

    def cancel(self) -> None:
        """Cancel every lane and worker; held and queued deliveries are abandoned (nak'ed), and so is every
        delivery routed afterwards."""
        self.close_inputs()
        self.lanes.cancel()
        self.workers.cancel()

    async def wait_finished(self) -> None:
        """Wait until every lane and worker task has exited."""
        await self.lanes.wait_finished()
        await self.workers.wait_finished()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the deliveries queued in or processed by a lane or worker right now."""
        return self.budget.held

    @property
    def in_flight(self) -> int:
        """Deliveries being processed by a lane or worker task right now."""
        return self.lanes.busy + self.workers.busy
