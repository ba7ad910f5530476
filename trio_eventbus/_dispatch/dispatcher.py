"""Dispatcher: routes deliveries to keyed lanes or the worker pool, runs handlers, retries, dead-letters, acks.

Per delivery, on its lane or worker:

1. Envelope subscriptions decode the body; an undecodable body is dead-lettered at once (no retries).
2. The handler is awaited. Returning = handled: the delivery is acked (only now, never before).
3. Raising an ``Exception`` is a failed attempt. With ``RetryPolicy.strategy == "in_place"`` the task sleeps
   the backoff and tries again, holding its lane (per-key order is kept; other lanes keep running). With
   ``"redeliver"`` the delivery is nak'ed with the backoff delay and the lane moves on.
4. After ``max_attempts`` failed attempts the message is published to the dead-letter topic and waits for the
   broker's ack of that publish; then the original is settled with ``TERM``. If the dead-letter publish fails,
   the original is nak'ed (redelivered later) — a message is never acked unless handled or dead-lettered.

Cancellation (hard stop, or the close deadline): the handler is cancelled and the delivery nak'ed, as is
everything still queued on the lane, so the broker redelivers them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from .._abc import Backend, Delivery, Disposition
from .._codec import decode_envelope
from .._envelope import Envelope, Message, new_message
from .._exceptions import InvalidEnvelopeError, InvalidHandlerError
from .._options import BusOptions
from .._publish.pipeline import PublishPipeline
from .dead_letter import dead_letter_headers, dead_letter_topic
from .lanes import KeyedLanes
from .workers import WorkerPool

__all__ = ["Dispatcher", "Subscription", "check_handler"]

logger = logging.getLogger("trio_eventbus")

Handler = Callable[[Any], Awaitable[object]]
_ACK = Disposition.ACK
_message = new_message
_Item = tuple["Subscription", Delivery]


def check_handler(handler: object) -> None:
    """Raise :class:`InvalidHandlerError` unless ``handler`` is an async function or async callable."""
    if inspect.iscoroutinefunction(handler):
        return
    call = getattr(handler, "__call__", None)  # noqa: B004 - we need the bound __call__ itself
    if call is not None and inspect.iscoroutinefunction(call):
        return
    raise InvalidHandlerError(f"handler must be an async function, got {handler!r}")


@attrs.define(slots=True, eq=False)
class Subscription:
    """One (topic, group) subscription of a bus and its handler; also the backend's delivery sink."""

    topic: str
    group: str
    handler: Handler
    envelopes: bool
    dead_letter_topic: str | None
    dispatcher: Dispatcher

    async def deliver(self, deliveries: Sequence[Delivery]) -> None:
        """Route each delivery to its lane (by key) or to the worker pool; waits while they are full."""
        await self.dispatcher.route_many(self, deliveries)


class Dispatcher:
    """Lanes, workers and the per-delivery procedure (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        options: BusOptions,
        publisher: PublishPipeline,
        ensure_topic: Callable[[str], Awaitable[None]],
    ) -> None:
        self._backend = backend
        self._settle = backend.settle
        self._options = options
        self._retry = options.retry
        self._redeliver = options.retry.strategy == "redeliver" and backend.features.redelivers
        self._publisher = publisher
        self._ensure_topic = ensure_topic
        self.lanes: KeyedLanes[_Item] = KeyedLanes(options.lanes, options.lane_buffer, self._process, self._abandon)
        self.workers: WorkerPool[_Item] = WorkerPool(
            options.workers, options.worker_buffer, self._process, self._abandon
        )
        self.handled = 0
        self.handler_errors = 0
        self.retries = 0
        self.dead_lettered = 0
        self.dead_letter_failed = 0
        self.discarded = 0
        self.undecodable = 0
        self.redelivered = 0

    async def start(self, nursery: trio.Nursery) -> None:
        """Start every lane and worker task."""
        await self.lanes.start(nursery)
        await self.workers.start(nursery)

    def subscription(self, topic: str, group: str, handler: Handler, *, envelopes: bool) -> Subscription:
        """A new subscription routed through this dispatcher (validates the handler and DLQ name)."""
        check_handler(handler)
        dlq = dead_letter_topic(topic, self._options.dead_letter_suffix)
        return Subscription(topic, group, handler, envelopes, dlq, self)

    async def route(self, sub: Subscription, delivery: Delivery) -> None:
        """Queue one delivery on the lane of its key, or on the worker pool when keyless."""
        if delivery.attempt > 1:
            self.redelivered += 1
        key = delivery.key
        try:
            if key:
                await self.lanes.send(key, (sub, delivery))
            else:
                await self.workers.send((sub, delivery))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._abandon((sub, delivery))  # the bus is stopping: hand it back for redelivery

    async def route_many(self, sub: Subscription, deliveries: Sequence[Delivery]) -> None:
        """:meth:`route` for a batch, in order: queues without awaiting while there is room; one checkpoint."""
        queue_of = self.lanes.queue_of
        pool = self.workers.queue
        for delivery in deliveries:
            if delivery.attempt > 1:
                self.redelivered += 1
            key = delivery.key
            queue = queue_of(key) if key else pool
            item = (sub, delivery)
            try:
                queue.put_nowait(item)
            except trio.WouldBlock:
                try:
                    await queue.put(item)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._abandon(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._abandon(item)  # the bus is stopping: hand it back for redelivery
        await trio.lowlevel.checkpoint()

    def close_inputs(self) -> None:
        """Let lanes and workers finish what they hold, then exit."""
        self.lanes.close_inputs()
        self.workers.close_inputs()

    def cancel(self) -> None:
        """Cancel every handler; held and queued deliveries are nak'ed (redelivered later)."""
        self.lanes.cancel()
        self.workers.cancel()

    async def wait_finished(self) -> None:
        """Wait until every lane and worker task has exited."""
        await self.lanes.wait_finished()
        await self.workers.wait_finished()

    def _abandon(self, item: _Item) -> None:
        self._backend.settle(item[1], Disposition.NAK, 0.0)

    @property
    def in_flight(self) -> int:
        """Deliveries being processed by a lane or worker task right now."""
        return self.lanes.busy + self.workers.busy

    async def _process(self, item: _Item) -> None:
        sub, delivery = item
        value: Envelope | Message
        if sub.envelopes:
            try:
                value = delivery.envelope or decode_envelope(delivery.body, delivery.headers)
            except InvalidEnvelopeError as exc:
                self.undecodable += 1
                await self._dead_letter(sub, delivery, exc, delivery.attempt, "undecodable")
                return
        else:
            value = _message(
                delivery.topic, delivery.body, delivery.key, delivery.headers, delivery.message_id, delivery.attempt
            )
        try:
            await sub.handler(value)
        except Exception as exc:
            await self._failed(sub, delivery, value, exc)
        else:
            self.handled += 1
            self._settle(delivery, _ACK)

    async def _failed(self, sub: Subscription, delivery: Delivery, value: Envelope | Message, exc: Exception) -> None:
        """The handler raised: retry per the policy (in place, or nak to redeliver), then dead-letter."""
        attempt = delivery.attempt
        retry = self._retry
        while True:
            self.handler_errors += 1
            if attempt >= retry.max_attempts:
                logger.warning("handler for %r failed %d times, dead-lettering: %r", sub.topic, attempt, exc)
                await self._dead_letter(sub, delivery, exc, attempt, "handler-failed")
                return
            self.retries += 1
            delay = retry.backoff(attempt)
            logger.debug("handler for %r failed (attempt %d), retry in %.3fs: %r", sub.topic, attempt, delay, exc)
            if self._redeliver:
                self._backend.settle(delivery, Disposition.NAK, delay)
                return
            await trio.sleep(delay)
            attempt += 1
            if isinstance(value, Message):
                value = attrs.evolve(value, delivery_attempt=attempt)
            try:
                await sub.handler(value)
            except Exception as again:
                exc = again
                continue
            self.handled += 1
            self._backend.settle(delivery, Disposition.ACK)
            return

    async def _dead_letter(
        self, sub: Subscription, delivery: Delivery, error: BaseException, attempts: int, reason: str
    ) -> None:
        topic = sub.dead_letter_topic
        if topic is None:
            self.discarded += 1
            logger.error(
                "dead-lettering disabled: discarding message %s of %r after %d attempts (%s): %r",
                delivery.message_id,
                sub.topic,
                attempts,
                reason,
                error,
            )
            self._backend.settle(delivery, Disposition.ACK)
            return
        headers = dead_letter_headers(
            delivery.headers, topic=sub.topic, group=sub.group, reason=reason, error=error, attempts=attempts
        )
        message_id = None if delivery.message_id is None else f"{delivery.message_id}.dlq"
        try:
            await self._ensure_topic(topic)
            await self._publisher.submit(topic, delivery.body, headers, delivery.key, message_id, None, confirm=True)
        except Exception as exc:
            self.dead_letter_failed += 1
            logger.error("dead-letter publish to %r failed, message will be redelivered: %r", topic, exc)
            self._backend.settle(delivery, Disposition.NAK, self._retry.max_backoff)
            return
        self.dead_lettered += 1
        self._backend.settle(delivery, Disposition.TERM)
