"""EventBus: the public face of a running bus (publish, subscribe, topics, statistics).

A bus is opened by :func:`trio_eventbus.open_bus` (module :mod:`trio_eventbus._lifecycle`, which describes the
nesting of its tasks, the graceful close and the hard stop); the ``_start`` / ``_close`` / ``_hard_stop``
steps below are the ones that lifecycle drives.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, NoReturn, overload

import trio

from ._abc import HARD_STOP_GRACE, Backend, being_cancelled
from ._codec import encode_envelope
from ._dispatch.dispatcher import Dispatcher, Handler, Subscription
from ._dispatch.middleware import HandlerContext
from ._envelope import _EMPTY_HEADERS, Envelope, Message, check_key_and_id, freeze_headers
from ._exceptions import (
    AlreadySubscribedError,
    BusClosedError,
    InvalidEnvelopeError,
    InvalidOptionError,
    MessageTooLargeError,
)
from ._idle import IDLE_POLL_INTERVAL, is_idle
from ._options import (
    BusOptions,
    DeadLetterPolicy,
    PublishResult,
    RetryPolicy,
    Statistics,
    TopicOptions,
    validate_group,
    validate_topic,
)
from ._publish.pipeline import PublishPipeline
from ._publish.results import ResultChannel
from ._topics import TopicRegistry
from ._util import NoPublicConstructor

__all__ = ["EventBus"]

logger = logging.getLogger("trio_eventbus.bus")


class EventBus(metaclass=NoPublicConstructor, factory="trio_eventbus.open_bus(config)"):
    """A running bus; obtain one from :func:`open_bus` (calling ``EventBus(...)`` raises ``TypeError``).

    Every method may be called from any task of the Trio run that opened the bus. Leaving the ``open_bus`` block
    closes it gracefully (stop fetching, let handlers finish and ack, deliver every pending publish and its
    result, within ``BusOptions.close_timeout``); an outer cancellation or deadline is a hard stop (handlers
    cancelled, their messages redelivered later), also when it arrives during the graceful close (README
    "Lifecycle"); :func:`trio_eventbus.run` / :func:`trio_eventbus.serve` add signal handling (README "Running a
    service"). Publishing: :meth:`publish`, :meth:`publish_envelope`, :meth:`flush`, :meth:`publish_results`
    (README "Publish results"); consuming: :meth:`subscribe`, :meth:`subscribe_envelope` (README "Ordering",
    "Retries and dead letters"); tests: :meth:`wait_idle`.

    Every ``async`` method is a Trio checkpoint on every path (it checks for cancellation first, and yields once
    even when it need not wait), as trio's own channels are; each docstring says what a ``Cancelled`` from it
    leaves behind. Hot loops publish with the synchronous :meth:`publish_nowait` /
    :meth:`publish_envelope_nowait` and await only on ``trio.WouldBlock``.
    """

    def __init__(self, backend: Backend, options: BusOptions) -> None:
        self._backend = backend
        self._options = options
        self._topics = TopicRegistry(backend)
        self._publisher = PublishPipeline(backend, options)
        self._dispatcher = Dispatcher(backend, options, self._publisher, self._topics.ensure)
        self._subscriptions: dict[tuple[str, str], Subscription] = {}
        self._closing = False
        self._closed = False
        self._max_message_bytes = options.max_message_bytes
        self._nursery: trio.Nursery | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        """Start the publisher task, lanes and workers in the inner nursery (inside the backend's block)."""
        self._nursery = nursery
        await self._publisher.start(nursery)
        await self._dispatcher.start(nursery)

    async def _close(self, nursery: trio.Nursery) -> None:
        """Graceful close (see the module docstring): the drain bounded by ``close_timeout`` and by any outer
        deadline or cancellation (which then propagates: the hard stop); the cleanup after it is shielded and
        bounded by ``HARD_STOP_GRACE``."""
        self._closing = True
        drain = trio.move_on_after(self._options.close_timeout)
        try:
            with drain:  # not shielded: an outer cancel or deadline ends the drain (the hard stop)
                await self._backend.stop_consuming()
                self._dispatcher.close_inputs()
                await self._dispatcher.wait_finished()
                self._publisher.close_queue()
                await self._publisher.flush()
        finally:
            if drain.cancelled_caught:
                logger.warning(
                    "close_timeout (%.1fs) passed: cancelling %d handlers, %d publishes still pending",
                    self._options.close_timeout,
                    self._dispatcher.in_flight,
                    self._publisher.pending,
                )
            elif being_cancelled():
                logger.warning(
                    "graceful close interrupted by an outer cancellation or deadline: hard stop (cancelling %d "
                    "handlers, %d publishes still pending)",
                    self._dispatcher.in_flight,
                    self._publisher.pending,
                )
            self._stop()
            # cancelled tasks end at once unless they shield
            with trio.CancelScope(shield=True, deadline=trio.current_time() + HARD_STOP_GRACE):
                await self._dispatcher.wait_finished()
                await self._publisher.wait_stopped()
        if leaked := list(nursery.child_tasks):
            nursery.cancel_scope.cancel()
            names = ", ".join(sorted(task.name for task in leaked))
            warnings.warn(
                f"{len(leaked)} bus task(s) still alive after the close deadline, cancelled: {names}",
                ResourceWarning,
                stacklevel=2,
            )

    def _hard_stop(self) -> None:
        """Outer cancellation: the handlers are cancelled already (their deliveries are nak'ed); refuse
        everything and stop blocking on the results reader. The backend's exit does the rest."""
        self._closing = True
        self._stop()

    def _stop(self) -> None:
        """Cancel what the close left running: handlers (held deliveries nak'ed), the publisher task."""
        self._publisher.close_queue()
        self._publisher.stop_blocking_on_results()
        self._dispatcher.cancel()
        self._publisher.stop_sending()

    # -- publishing ------------------------------------------------------------------------------------------
    #
    # Checkpoints: every async method of the bus is a Trio checkpoint on every path, in the shape of
    # trio.MemorySendChannel.send: ``checkpoint_if_cancelled()`` first (a cancelled caller gets Cancelled before
    # anything happens), then the synchronous path, then ``cancel_shielded_checkpoint()`` (a yield that cannot
    # undo what was done), or else the blocking path, which is itself a checkpoint. Hot loops that must not yield
    # per message use the synchronous ``publish_nowait`` / ``publish_envelope_nowait``.

    def _check_open(self) -> None:
        if self._closing:
            raise BusClosedError("the bus is closed" if self._closed else "the bus is closing")

    def _check_size(self, topic: str, body: bytes) -> None:
        if len(body) > self._options.max_message_bytes:
            raise MessageTooLargeError(
                f"message to {topic!r} is {len(body)} bytes; max_message_bytes is {self._options.max_message_bytes}"
            )

    def _raw(
        self,
        topic: str,
        data: bytes,
        key: str | None,
        headers: Mapping[str, str] | None,
        message_id: str | None,
    ) -> tuple[bytes, Mapping[str, str]]:
        """Check a raw publish: (body, frozen headers); BusClosedError or a ValueError subclass, nothing sent."""
        if self._closing:
            self._check_open()
        if type(data) is bytes:
            body = data
        elif isinstance(data, bytes | bytearray | memoryview):
            body = bytes(data)
        else:
            raise InvalidEnvelopeError(f"data must be bytes, not {type(data).__name__}")
        if key is not None or message_id is not None:
            check_key_and_id(key, message_id)
        if len(body) > self._max_message_bytes:
            self._check_size(topic, body)
        return body, _EMPTY_HEADERS if headers is None else freeze_headers(headers)

    def _encoded(
        self, topic: str, envelope: Envelope, extra: Mapping[str, str] | None
    ) -> tuple[bytes, Mapping[str, str]]:
        """Check and encode an envelope publish: (body, headers); BusClosedError or a ValueError subclass."""
        if self._closing:
            self._check_open()
        if not isinstance(envelope, Envelope):
            raise InvalidEnvelopeError(f"expected an Envelope, got {type(envelope).__name__}")
        body, headers = encode_envelope(envelope)
        if extra:
            headers.update(freeze_headers(extra))  # a fresh dict; reserved names (the envelope's own) refused
        if len(body) > self._max_message_bytes:
            self._check_size(topic, body)
        return body, headers

    def _unready(self, topic: str) -> NoReturn:
        """A ``*_nowait`` publish to a topic not provisioned yet: InvalidTopicError, or WouldBlock."""
        validate_topic(topic)
        raise trio.WouldBlock(
            f"topic {topic!r} is not provisioned on the broker yet: the first publish to it must be awaited "
            "(or subscribe / configure_topic first)"
        )

    async def publish(
        self,
        topic: str,
        data: bytes,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
        confirm: bool = False,
    ) -> None:
        """Publish raw bytes.

        ``key`` orders messages: subscribers handle messages with the same key in publish order (keyless ones
        run on the worker pool). ``message_id`` lets the broker drop duplicates (NATS ``Nats-Msg-Id``), and
        gives the message a :class:`PublishResult` (``event_id=message_id``, ``aggregate_id=key``,
        ``event_type=None``) on :meth:`publish_results` and ``BusOptions.on_publish_results``; without a
        ``message_id`` there is no result (``flush`` and ``confirm`` still report the outcome).
        Returns once the message is in the in-flight window (waits while the window is full, by count or by
        bytes, see ``BusOptions.max_pending_bytes``: backpressure).
        With ``confirm=True`` waits for the broker's ack and raises :class:`PublishError` on failure.
        Raises :class:`BusClosedError` after close, ``ValueError`` subclasses for bad input (nothing sent):
        :class:`InvalidHeaderError` for headers, ``key`` or ``message_id`` outside the one header rule every
        backend carries, or a header the bus writes itself (README "Bad input").
        The first publish to a topic provisions it on the broker (once, see :meth:`configure_topic`).

        Always a checkpoint (it yields to other tasks once, even when the window has room). Cancellation: if it
        raises ``Cancelled``, nothing was queued; except that with ``confirm=True`` a cancel arriving while it
        waits for the broker's ack abandons only the wait: the message was queued and gets its outcome as any
        other. For hot loops, :meth:`publish_nowait` does the same without yielding.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        body, frozen = self._raw(topic, data, key, headers, message_id)
        if topic not in self._topics.ready:
            await self._topics.ensure(topic)
        if confirm or not self._publisher.submit_nowait(topic, body, frozen, key, message_id, None):
            await self._publisher.submit(topic, body, frozen, key, message_id, None, confirm=confirm)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def publish_nowait(
        self,
        topic: str,
        data: bytes,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> None:
        """:meth:`publish` without waiting and without yielding: a synchronous call for hot loops.

        Queues the message into the in-flight window, or raises ``trio.WouldBlock`` and queues nothing: when
        the window is full (``BusOptions.max_pending_publishes`` in flight, or this body would pass
        ``BusOptions.max_pending_bytes``), or when ``topic`` has not been
        provisioned on the broker yet (that takes a broker round trip: await one :meth:`publish` to the topic,
        or :meth:`subscribe` / :meth:`configure_topic`, first). The usual loop falls back to the async form::

            try:
                bus.publish_nowait(topic, data, key=key)
            except trio.WouldBlock:
                await bus.publish(topic, data, key=key)   # waits for room (or provisions the topic)

        Raises :class:`BusClosedError` after close and the same ``ValueError`` subclasses as :meth:`publish`
        (:class:`InvalidTopicError` for a bad name), nothing sent. It never yields: a loop of these calls
        holds the scheduler until it awaits something.
        """
        body, frozen = self._raw(topic, data, key, headers, message_id)
        if topic not in self._topics.ready:
            self._unready(topic)
        if not self._publisher.submit_nowait(topic, body, frozen, key, message_id, None):
            raise trio.WouldBlock("the in-flight publish window is full")

    async def publish_envelope(
        self,
        topic: str,
        envelope: Envelope,
        *,
        headers: Mapping[str, str] | None = None,
        confirm: bool = False,
    ) -> None:
        """Publish an envelope, keyed by its ``aggregate_id``, with ``event_id`` as the broker dedupe id.

        ``headers`` travel beside the envelope's own wire headers (a W3C ``traceparent``, say): subscribers see
        them in ``Message.headers`` and in the handler context's ``headers``. They follow the one header rule
        of :meth:`publish`; the bus's own names (the envelope's fields among them) raise
        :class:`InvalidHeaderError`, nothing sent.

        Exactly one :class:`PublishResult` per call that returns (on ``publish_results()`` once opened, and to
        ``BusOptions.on_publish_results``). Backpressure, ``confirm``, errors and cancellation as in
        :meth:`publish`: always a checkpoint; if it raises ``Cancelled``, nothing was queued (and no result
        will come), except for a cancel during a ``confirm=True`` wait for the ack (queued: its result comes).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        body, headers = self._encoded(topic, envelope, headers)
        if topic not in self._topics.ready:
            await self._topics.ensure(topic)
        key = envelope.aggregate_id
        if confirm or not self._publisher.submit_nowait(topic, body, headers, key, envelope.event_id, envelope):
            await self._publisher.submit(topic, body, headers, key, envelope.event_id, envelope, confirm=confirm)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def publish_envelope_nowait(
        self, topic: str, envelope: Envelope, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """:meth:`publish_envelope` without waiting and without yielding; semantics of :meth:`publish_nowait`.

        Queued (exactly one :class:`PublishResult` will come), or ``trio.WouldBlock`` and nothing queued (window
        full, or ``topic`` not provisioned yet), or :class:`BusClosedError` / a ``ValueError`` subclass.
        ``headers`` as in :meth:`publish_envelope`.
        """
        body, headers = self._encoded(topic, envelope, headers)
        if topic not in self._topics.ready:
            self._unready(topic)
        if not self._publisher.submit_nowait(topic, body, headers, envelope.aggregate_id, envelope.event_id, envelope):
            raise trio.WouldBlock("the in-flight publish window is full")

    async def flush(self) -> None:
        """Wait until every publish accepted before this call has its broker ack or failure (and, with
        ``BusOptions.on_publish_results``, until the callback has been handed every result so far).

        Always a checkpoint. Cancelled, it abandons only the wait: the publishes go on and get their outcomes.
        """
        await self._publisher.flush()

    async def wait_idle(self) -> None:
        """Wait until this bus is idle: for tests ("everything published has been handled").

        First every publish accepted before the call has its outcome (:meth:`flush`); then it returns at the
        first moment when the bus holds nothing: no publish without its outcome, lanes and workers empty, no
        handler running, no delivery unsettled, and — where the backend can tell — nothing of this bus's
        subscriptions waiting on the broker (undelivered, waiting for a redelivery, or unsettled in the group).

        - **memory**: exact. On one bus that publishes and subscribes, one call covers the whole chain (a
          handler's own publishes included). With a publisher bus and a subscriber bus on one
          :class:`MemoryBroker`, call it on the publisher first, then on the subscriber:
          ``await pub.wait_idle(); await sub.wait_idle()``.
        - **NATS, Kafka**: covers the bus's own state only (publishes, lanes, workers, unsettled deliveries).
          A message the broker holds but has not sent to this bus yet is not seen: wait for the effect itself
          (an event your handler sets) instead.

        A redelivery scheduled with a backoff counts as not idle until it is handled (``autojump_clock`` makes
        that instant). Other tasks that keep publishing keep it waiting. The check is made every 5 ms (Trio's
        clock) after the flush; there is no per-message cost.

        Always a checkpoint. Cancelled, it abandons only the wait. Raises nothing of its own (after close it
        returns at once: a closed bus holds nothing).
        """
        await self._publisher.flush()
        while True:
            if self._closed or is_idle(self._publisher, self._dispatcher, self._backend):
                return
            await trio.sleep(IDLE_POLL_INTERVAL)

    def publish_results(self) -> ResultChannel[PublishResult]:
        """A :class:`ResultChannel` of :class:`PublishResult`, one per envelope (and per raw publish with a
        ``message_id``) published after the first call.

        Open it before publishing. While it is open, a full channel (``BusOptions.results_buffer``) holds
        publish window slots: read it, or publishing stops (backpressure, never a silent drop; one WARNING
        says so the first time); the bus resumes once the reader has drained half of it. The channel ends when
        the bus closes, after the last result, so iterate it (``async for``) in a task of a nursery opened
        outside the ``open_bus`` block: inside the block the loop could never end and raises
        :class:`ResultsReaderError` (``receive`` / ``receive_nowait`` work anywhere). Several calls return the
        same channel. Closing it (``aclose``) stops delivery; later results are counted in
        ``Statistics.results_dropped``. ``BusOptions.on_publish_results`` needs no reader task.
        """
        self._check_open()
        return self._publisher.results()

    # -- subscribing -----------------------------------------------------------------------------------------

    @overload
    async def subscribe(
        self,
        topic: str,
        handler: Callable[[Message], Awaitable[object]],
        *,
        group: str | None = None,
        context: Literal[False] = False,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterPolicy | None = None,
    ) -> None: ...

    @overload
    async def subscribe(
        self,
        topic: str,
        handler: Callable[[Message, HandlerContext], Awaitable[object]],
        *,
        group: str | None = None,
        context: Literal[True],
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterPolicy | None = None,
    ) -> None: ...

    async def subscribe(
        self,
        topic: str,
        handler: Callable[..., Awaitable[object]],
        *,
        group: str | None = None,
        context: bool = False,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterPolicy | None = None,
    ) -> None:
        """Handle every message of ``topic`` with ``handler(Message)`` (an async function).

        Ordering, retries and dead letters as the README describes ("Ordering", "Retries and dead letters",
        "Consumer groups and partitions"). Within ``group``
        (default ``BusOptions.service``; one of them is required, else :class:`InvalidOptionError`) each message
        goes to one subscriber; each group gets every message.

        ``context=True``: the handler is ``async def handler(message, ctx)`` and gets a
        :class:`HandlerContext` as well (topic, group, attempt, headers, key, message id and the broker's raw
        ``delivery_info``); without it no context is built. ``retry`` (a :class:`RetryPolicy`) and
        ``dead_letter`` (a :class:`DeadLetterPolicy`) replace ``BusOptions.retry`` / ``BusOptions.dead_letter``
        for this subscription: its own attempts, backoff and non-retryable types, its own dead-letter suffix,
        and whether a key is parked after a dead letter (see :meth:`parked_keys`, :meth:`release_key`).

        Raises :class:`AlreadySubscribedError` for a second subscription of this bus to (topic, group),
        :class:`InvalidHandlerError` for a handler that is not async, :class:`InvalidOptionError` for a policy of
        the wrong type. The first use of a topic provisions it on the broker.

        Always a checkpoint. Cancellation: if it raises ``Cancelled``, this bus records no subscription for
        (topic, group), so subscribing again is allowed (a cancel during the broker call may leave the topic, or
        a broker-side consumer, created); once it returns, messages flow to ``handler``.
        """
        await self._subscribe(
            topic, handler, group, envelopes=False, context=context, retry=retry, dead_letter=dead_letter
        )

    @overload
    async def subscribe_envelope(
        self,
        topic: str,
        handler: Callable[[Envelope], Awaitable[object]],
        *,
        group: str | None = None,
        context: Literal[False] = False,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterPolicy | None = None,
    ) -> None: ...

    @overload
    async def subscribe_envelope(
        self,
        topic: str,
        handler: Callable[[Envelope, HandlerContext], Awaitable[object]],
        *,
        group: str | None = None,
        context: Literal[True],
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterPolicy | None = None,
    ) -> None: ...

    async def subscribe_envelope(
        self,
        topic: str,
        handler: Callable[..., Awaitable[object]],
        *,
        group: str | None = None,
        context: bool = False,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetterPolicy | None = None,
    ) -> None:
        """Like :meth:`subscribe`, decoding each message into an :class:`Envelope` (undecodable ones are
        dead-lettered at once); envelopes of one aggregate are handled in publish order. ``context=True``:
        ``async def handler(envelope, ctx)``; ``retry`` and ``dead_letter`` as in :meth:`subscribe`. A
        checkpoint, with the cancellation semantics of :meth:`subscribe`."""
        await self._subscribe(
            topic, handler, group, envelopes=True, context=context, retry=retry, dead_letter=dead_letter
        )

    def parked_keys(self, topic: str, *, group: str | None = None) -> frozenset[str]:
        """The keys parked right now on this bus's subscription to ``(topic, group)``: their messages go to the
        dead-letter topic unhandled (``DeadLetterPolicy(after="park")``). Empty for a subscription that does not
        park, or that this bus does not have. The set lives in this bus instance (a restart forgets it; the
        parked messages are safe in the dead-letter topic). ``group`` defaults to ``BusOptions.service``."""
        sub = self._subscriptions.get((validate_topic(topic), self._group(topic, group)))
        return frozenset() if sub is None or sub.park is None else sub.park.snapshot()

    def release_key(self, topic: str, key: str, *, group: str | None = None) -> bool:
        """Release a parked ``key`` of this bus's subscription to ``(topic, group)``: its messages delivered
        from now on are handled again (those already dead-lettered stay in the dead-letter topic: replay them
        from there if needed). Returns ``False`` when the key was not parked. Synchronous, never blocks."""
        sub = self._subscriptions.get((validate_topic(topic), self._group(topic, group)))
        return sub is not None and sub.park is not None and sub.park.release(key)

    def _group(self, topic: str, group: str | None) -> str:
        """The consumer group of a subscription: ``group``, else ``BusOptions.service``, else an error."""
        if group is not None:
            return validate_group(group)
        if self._options.service is not None:
            return self._options.service
        raise InvalidOptionError(
            f"subscribing to {topic!r} needs a consumer group: pass group='<consuming service>' or open the bus "
            "with BusOptions(service='<this service>'); instances of one service share a group and split the "
            "messages, every group gets every message"
        )

    async def _subscribe(
        self,
        topic: str,
        handler: Handler,
        group: str | None,
        *,
        envelopes: bool,
        context: bool,
        retry: RetryPolicy | None,
        dead_letter: DeadLetterPolicy | None,
    ) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        validate_topic(topic)
        group = self._group(topic, group)
        sub = self._dispatcher.subscription(
            topic, group, handler, envelopes=envelopes, context=context, retry=retry, dead_letter=dead_letter
        )
        if (topic, group) in self._subscriptions:
            raise AlreadySubscribedError(f"this bus already subscribes to {topic!r} in group {group!r}")
        self._subscriptions[(topic, group)] = sub
        try:
            await self._topics.ensure(topic)
            await self._backend.subscribe(topic, group, self._topics.options(topic), sub)
        except BaseException:
            del self._subscriptions[(topic, group)]
            raise
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- topics ----------------------------------------------------------------------------------------------

    async def configure_topic(self, topic: str, options: TopicOptions) -> None:
        """Set ``options`` for ``topic`` and apply them on the broker now (create or update).

        Always a checkpoint. Cancellation: if it raises ``Cancelled`` before the broker call, nothing changed;
        during the broker call, the options are stored and the next publish or subscribe to the topic applies
        them again (the broker may or may not have them already). Once it returns, they are applied.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        await self._topics.configure(topic, options)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def topic_config(self, topic: str) -> TopicOptions:
        """The options in force for ``topic`` (the defaults unless configured)."""
        validate_topic(topic)
        return self._topics.options(topic)

    # -- introspection ---------------------------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """A frozen snapshot of counters and live state."""
        d = self._dispatcher
        c = d.counters
        p = self._publisher
        depths = d.lanes.depths()
        return Statistics(
            published=p.published,
            publish_failed=p.failed,
            pending_publishes=p.pending,
            pending_publish_bytes=p.pending_bytes,
            handled=c.handled,
            handler_errors=c.handler_errors,
            retries=c.retries,
            dead_lettered=c.dead_lettered,
            dead_letter_failed=c.dead_letter_failed,
            discarded=c.discarded,
            undecodable=c.undecodable,
            redelivered=c.redelivered,
            parked=c.parked,
            parked_keys=c.parked_keys,
            in_flight=d.in_flight,
            lane_depth_max=max(depths, default=0),
            lanes_busy=d.lanes.busy,
            worker_queue_depth=sum(d.workers.depths()),
            buffered_bytes=d.router.budget.held,
            buffered_bytes_max=d.router.budget.peak,
            results_dropped=p.results_dropped,
            callback_errors=p.callback_errors,
            tasks_alive=0 if self._nursery is None else len(self._nursery.child_tasks),
            subscriptions=len(self._subscriptions),
            closing=self._closing,
            backend=self._backend.statistics(),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        state = "closed" if self._closed else "closing" if self._closing else "open"
        return (
            f"<EventBus {state} backend={type(self._backend).__name__} subscriptions={s.subscriptions} "
            f"published={s.published} pending={s.pending_publishes} handled={s.handled} "
            f"in_flight={s.in_flight} lanes_busy={s.lanes_busy} lane_depth_max={s.lane_depth_max} "
            f"tasks={s.tasks_alive}>"
        )
