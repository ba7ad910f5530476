"""Dispatcher: what the bus holds of dispatch — the router, the counters, and a pipeline per subscription.

The per-delivery procedure (decode, handler, retries, dead letters, acks) and its ordering and cancellation
semantics are described in :mod:`trio_eventbus._dispatch`; this module wires the pieces:
:meth:`Dispatcher.subscription` composes a subscription's pipeline (:func:`.pipeline.compose`) over the bus's
backend (``settle``), publisher (dead letters) and options (retry policy, dead-letter suffix, middleware), and
:class:`.router.Router` runs every subscription's deliveries on the shared lanes and workers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import trio

from .._abc import Backend, Delivery
from .._options import BusOptions
from .._publish.pipeline import PublishPipeline
from .dead_letter import DeadLetter, dead_letter_topic
from .lanes import KeyedLanes
from .middleware import Handler, Middleware, check_async
from .pipeline import Subscription, compose
from .router import Router
from .settle import Counters, Settle
from .workers import WorkerPool

__all__ = ["Dispatcher", "Handler", "Subscription"]


class Dispatcher:
    """Lanes, workers, counters and the subscriptions' pipelines of one bus (see the module docstring).

    Raises :class:`~trio_eventbus.InvalidHandlerError` when a ``BusOptions.middleware`` is not async.
    """

    def __init__(
        self,
        backend: Backend,
        options: BusOptions,
        publisher: PublishPipeline,
        ensure_topic: Callable[[str], Awaitable[None]],
    ) -> None:
        for middleware in options.middleware:
            check_async(middleware, "middleware")
        self._middleware = cast(tuple[Middleware, ...], options.middleware)  # checked async just above
        self._options = options
        self._redeliver = options.retry.strategy == "redeliver" and backend.features.redelivers
        self._publisher = publisher
        self._ensure_topic = ensure_topic
        self.counters = Counters()
        self._settle = Settle(backend.settle, self.counters)
        self.router = Router(
            lanes=options.lanes,
            lane_buffer=options.lane_buffer,
            workers=options.workers,
            worker_buffer=options.worker_buffer,
            abandon=self._settle.abandon,
            counters=self.counters,
            max_buffered_bytes=options.buffered_bytes_limit,
        )

    @property
    def lanes(self) -> KeyedLanes[Delivery]:
        """The keyed lanes (for statistics)."""
        return self.router.lanes

    @property
    def workers(self) -> WorkerPool[Delivery]:
        """The worker pool (for statistics)."""
        return self.router.workers

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every lane and worker task."""
        await self.router.start(nursery)

    def subscription(self, topic: str, group: str, handler: Handler, *, envelopes: bool) -> Subscription:
        """A new subscription routed through this dispatcher (validates the handler and DLQ name)."""
        check_async(handler)
        options = self._options
        dead_letter = DeadLetter(
            topic,
            group,
            dead_letter_topic(topic, options.dead_letter_suffix),
            self._publish_dead_letter,
            self._settle,
            options.retry.max_backoff,
        )
        run = compose(
            handler,
            envelopes=envelopes,
            middleware=self._middleware,
            retry=options.retry,
            redeliver=self._redeliver,
            dead_letter=dead_letter,
            settle=self._settle,
        )
        return Subscription(topic, group, run, self.router)

    async def _publish_dead_letter(
        self, topic: str, body: bytes, headers: Mapping[str, str], key: str | None, message_id: str | None
    ) -> None:
        await self._ensure_topic(topic)
        await self._publisher.submit(topic, body, headers, key, message_id, None, confirm=True)

    def close_inputs(self) -> None:
        """Let lanes and workers finish what they hold, then exit."""
        self.router.close_inputs()

    def cancel(self) -> None:
        """Cancel every handler; held and queued deliveries are nak'ed (redelivered later)."""
        self.router.cancel()

    async def wait_finished(self) -> None:
        """Wait until every lane and worker task has exited."""
        await self.router.wait_finished()

    @property
    def in_flight(self) -> int:
        """Deliveries being processed by a lane or worker task right now."""
        return self.router.in_flight
