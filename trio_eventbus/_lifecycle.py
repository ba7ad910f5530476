"""open_bus(): the lifecycle that owns every task of a bus.

Lifecycle (structured concurrency): the shutdown order is the nesting order of ``open_bus``::

    outer nursery: the results task (outcomes -> results)
        async with backend.open(outcomes):          connection, ack handler, fetchers (the backend's nursery)
            inner nursery: publisher task, lanes, workers
                the user's block

Every task starts with ``nursery.start`` and the backend's ``open`` returns only when connected, so
``open_bus`` returns only when the bus is ready, and start-up errors (a broker that is down, wrong
credentials) come out of ``open_bus``.

Graceful close, on leaving the ``async with`` block normally or with an exception:

1. refuse new publishes and subscriptions (:class:`BusClosedError`, checked without awaiting);
2. stop every fetcher (``backend.stop_consuming()``);
3. lanes and workers finish what they hold, and ack it (dead letters included);
4. queued publishes are handed to the broker and every outcome so far is turned into its result (and
   handed to ``on_publish_results``); steps 2-4 share ``BusOptions.close_timeout``; past it, handlers are
   cancelled and their messages nak'ed, and the publisher task stops handing over. An outer deadline that
   expires, or an outer cancellation that arrives, during steps 2-4 ends them at once and turns the close into
   the hard stop below (a second Ctrl-C, a ``trio.move_on_after`` around ``open_bus``). A task of the bus
   still alive once that is done is a bug (a handler that shields itself from cancellation, say): it is
   reported with a ``ResourceWarning`` naming it and cancelled, never silently;
5. the inner nursery ends; the backend's exit (shielded, bounded by its own deadline) delivers the
   outstanding outcomes and settlements and closes the connection;
6. the bus closes the outcomes channel; the results task turns the last outcomes into results and ends;
   every publish still without an outcome gets a failed result; the results channel ends; the
   ``on_publish_results`` task hands over the rest and ends. No task is left.

Hard stop: an outer cancellation (``Cancelled`` arriving in the block) cancels handlers at once; the lanes
nak what they held; nothing unhandled is acked (it is redelivered later: at-least-once). The cancellation
then unwinds the nesting: the backend's exit runs within the one hard-stop grace
(:data:`~trio_eventbus._abc.HARD_STOP_GRACE`), flushing acks of messages already handled and forwarding the
outcomes already known; the results task, shielded, still turns them into results; what has no outcome gets
a failed result (the ``on_publish_results`` task is cancelled with the handlers: results it did not take are
counted in ``Statistics.results_dropped``). So a hard stop takes at most the moment it starts plus
``HARD_STOP_GRACE`` for the bus's tasks to end plus ``HARD_STOP_GRACE`` for the backend's exit.

Exception policy: handler exceptions never escape (they are retried and dead-lettered). An error of the bus's
own tasks (say, the broker going away for good) cancels the block and comes out of ``open_bus``; an exception
raised in the block comes out as itself. ``open_bus`` unwraps an ``ExceptionGroup`` that holds one exception,
so ``except teb.BackendUnavailable`` works; several unrelated errors stay grouped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from ._abc import Backend, being_cancelled
from ._bus import EventBus
from ._options import BusOptions

__all__ = ["BackendConfig", "open_bus"]


class BackendConfig(Protocol):
    """A backend configuration value (``MemoryConfig``, ``NatsConfig``, ``KafkaConfig``)."""

    def create_backend(self) -> Backend:
        """A new, unstarted backend for one bus."""


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def open_bus(config: BackendConfig, *, options: BusOptions | None = None) -> AsyncIterator[EventBus]:
    """Open a bus on ``config``'s backend; leaving the block closes it (see the module docstring).

    Raises :class:`BackendUnavailable` when the broker cannot be reached or refuses the credentials. An outer
    cancellation or deadline, in the block or during the graceful close, is a hard stop.
    """
    options = BusOptions() if options is None else options
    if not isinstance(options, BusOptions):
        raise TypeError(f"options must be a BusOptions, not {type(options).__name__}")
    backend = config.create_backend()
    if (configure := getattr(backend, "configure_for_bus", None)) is not None:
        configure(options)  # optional backend hook: sizes derived from the bus's (the Kafka fetch byte bounds)
    bus = EventBus._create(backend, options)
    publisher = bus._publisher
    try:
        try:
            async with trio.open_nursery() as outer:
                await publisher.start_results(outer)
                try:
                    async with backend.open(publisher.outcomes_send), trio.open_nursery() as inner:
                        await bus._start(inner)
                        publisher.guard.enter(trio.lowlevel.current_task(), inner)
                        try:
                            yield bus
                        finally:
                            publisher.guard.leave()
                            if being_cancelled():
                                bus._hard_stop()
                            else:
                                await bus._close(inner)
                finally:
                    bus._closing = bus._closed = True
                    publisher.stop_blocking_on_results()  # (start-up failures: nothing else ran)
                    publisher.close_outcomes()  # the results task ends once it has handled the last outcomes
        finally:
            with trio.CancelScope(shield=True):
                await publisher.finish()
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__
        raise
