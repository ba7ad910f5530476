"""Dispatcher: what the bus holds of dispatch — the router, the counters, and a pipeline per subscription.

The per-delivery procedure (decode, handler, retries, dead letters, acks) and its ordering and cancellation
semantics are described in :mod:`trio_eventbus._dispatch`; this module wires the pieces:
:meth:`Dispatcher.subscription` composes a subscription's pipeline (:func:`.pipeline.compose`) over the bus's
backend (``settle``, ``delivery_info``), publisher (dead letters) and options (the retry and dead-letter
policies, the subscription's own or the bus's, and middleware), and
:class:`.router.Router` runs every subscription's deliveries on the shared lanes and workers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import trio

from .._abc import Backend, Delivery
from .._exceptions import InvalidOptionError
from .._options import BusOptions, DeadLetterPolicy, RetryPolicy
from .._publish.pipeline import PublishPipeline
from .dead_letter import DeadLetter, dead_letter_topic
from .lanes import KeyedLanes
from .middleware import Describe, Handler, Middleware, check_async
from .park import Park
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
        self._redelivers = backend.features.redelivers
        self._describe: Describe | None = getattr(backend, "delivery_info", None)
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

    def subscription(
        self,
        topic: str,
        group: str,
        handler: Handler,
        *,
        envelopes: bool,
        context: bool = False,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterPolicy | None = None,
    ) -> Subscription:
        """A new subscription routed through this dispatcher: ``retry`` and ``dead_letter`` override the bus's
        policies. Validates the handler, the policies' types and the DLQ name (typed errors, at the call)."""
        check_async(handler)
        if not isinstance(context, bool):
            raise InvalidOptionError(f"context must be a bool, got {context!r}", field="context")
        if retry is None:
            retry = self._options.retry
        elif not isinstance(retry, RetryPolicy):
            raise InvalidOptionError(f"retry must be a RetryPolicy or None, got {retry!r}", field="retry")
        if dead_letter is None:
            dead_letter = self._options.dead_letter
        elif not isinstance(dead_letter, DeadLetterPolicy):
            raise InvalidOptionError(
                f"dead_letter must be a DeadLetterPolicy or None, got {dead_letter!r}", field="dead_letter"
            )
        park = Park(topic, group, dead_letter.max_parked_keys, self.counters) if dead_letter.after == "park" else None
        step = DeadLetter(
            topic,
            group,
            dead_letter_topic(topic, dead_letter.suffix),
            self._publish_dead_letter,
            self._settle,
            retry.max_backoff,
            park=park,
            envelopes=envelopes,
        )
        run = compose(
            handler,
            envelopes=envelopes,
            middleware=self._middleware,
            retry=retry,
            redeliver=retry.strategy == "redeliver" and self._redelivers,
            dead_letter=step,
            settle=self._settle,
            context=context,
            describe=self._describe,
        )
        return Subscription(topic, group, run, self.router, park, envelopes)

    async def _publish_dead_letter(
        self, topic: str, body: bytes, headers: Mapping[str, str], key: str | None, message_id: str | None
    ) -> None:
        await self._ensure_topic(topic)
        await self._publisher.submit(topic, body, headers, key, message_id, None, confirm=True, result=False)

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
