"""The backend contract: the few methods every backend implements, and the values crossing the seam.

A backend moves bytes; the bus owns everything else (validation, envelopes, keyed lanes, retries, dead
letters, publish results). The contract, which the conformance suite in :mod:`trio_eventbus.testing` checks:

Publishing
    :meth:`Backend.send` hands a batch of :class:`OutgoingMessage` to the broker (one bridge crossing per
    batch) and returns without waiting for broker acks. For every message the backend later reports exactly
    one verdict on the ``outcomes`` channel given to :meth:`Backend.open`: an :class:`Outcome` names one or
    many messages (``seqs``) that share a verdict (``error=None``: stored), so a batch acknowledged at once
    costs one object, not one per message. Every message appears in exactly one Outcome; batches may come in
    any order. Messages of one ``send`` call to one topic and key are stored in order. If ``send`` raises, the
    bus reports the whole batch as failed. A message whose id (``message_id``) the broker has already
    stored inside the topic's ``duplicate_window`` is acknowledged but not stored again (dedupe), where the
    backend's ``features.dedupes`` says so.

Consuming
    :meth:`Backend.subscribe` starts delivering messages of ``(topic, group)`` to ``sink`` in batches; the sink
    awaits while the bus's lanes are full (backpressure reaches the fetcher). Within a group each message goes
    to one subscriber; every group gets every message. Delivery is at least once: a message is redelivered
    until it is settled with ``ACK`` or ``TERM``, including after the subscriber goes away unsettled.
    :meth:`Backend.settle` never blocks: the number of unsettled deliveries is bounded by the fetch window.
    ``NAK`` asks for redelivery after ``delay`` seconds (backends that cannot delay redeliver on their own
    schedule and say so with ``features.redelivers``); ``attempt`` of a redelivered message is one higher.

Lifecycle
    A backend's lifetime is the block of :meth:`Backend.open`, an async context manager the bus nests inside
    (results task → ``async with backend.open(outcomes)`` → the bus's publisher, lanes and workers → the
    user's block), so shutdown order is the nesting order. Entering connects (raising
    :class:`BackendUnavailable` on failure) and starts the backend's own tasks (ack handler, fetchers) in a
    nursery the context manager owns; a failure of one of them cancels the block and comes out of ``open``.
    ``stop_consuming`` (awaited by the bus at the start of a graceful close) stops every fetcher; after it
    returns the sink is not called again.

    Exit (normal, error or cancellation) runs in :func:`exit_scope`: shielded, with a deadline of
    :data:`CLOSE_DEADLINE` seconds, or :data:`HARD_STOP_GRACE` seconds when the exit runs because of an outer
    cancellation (the bus's hard stop; the one grace of a hard stop, for every backend). It stops consuming,
    naks every delivery the bus never settled, sends every queued settlement, waits for the broker's answer
    to every message handed to ``send`` (as long as the deadline allows) and puts every outstanding outcome on
    ``outcomes``, then closes the connection; when the block is left, no task and no thread of the backend
    remains. Under a hard stop the backend's own tasks are already cancelled, so the exit forwards outcomes
    and flushes settlements inline instead of relying on them. ``outcomes`` is never closed by the backend:
    the bus closes it after the block; a message whose outcome never arrived gets a failed result from the
    bus. Cancellation inside the block (the bus's hard stop) never loses an ack of a handled message that was
    settled before it, unless the broker cannot take it within the grace (then it is redelivered: at least
    once).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs
import trio

from ._envelope import Envelope
from ._options import TopicOptions
from ._statistics import BackendStatistics

__all__ = [
    "CLOSE_DEADLINE",
    "HARD_STOP_GRACE",
    "Backend",
    "BackendFeatures",
    "Delivery",
    "DeliverySink",
    "Disposition",
    "Outcome",
    "OutgoingMessage",
    "being_cancelled",
    "exit_scope",
]

#: Seconds a backend's exit may take after a graceful close (flushing acks and outcomes, closing the
#: connection) before it is cut short.
CLOSE_DEADLINE = 10.0
#: Seconds a backend's exit may take after an outer cancellation (the bus's hard stop): the one grace of a
#: hard stop, in which acks of handled messages and the outcomes already known are still delivered.
HARD_STOP_GRACE = 3.0


def being_cancelled() -> bool:
    """Whether the calling task is being cancelled (an outer cancellation, or a failed task of the bus)."""
    return trio.current_effective_deadline() == -math.inf


def exit_scope() -> trio.CancelScope:
    """The shielded scope a backend's exit runs in: ``CLOSE_DEADLINE`` seconds from now, or
    ``HARD_STOP_GRACE`` seconds when the calling task is being cancelled (the bus's hard stop). An outer
    deadline that falls earlier bounds a graceful exit too (never below ``HARD_STOP_GRACE``): a caller's
    ``trio.move_on_after`` around ``open_bus`` holds for the whole close.

    Steps inside it may read ``scope.deadline`` to bound waits on the asyncio side. Code after the scope runs
    even if the deadline cut it short (then outcomes still missing are reported failed by the bus).
    """
    outer = trio.current_effective_deadline()
    now = trio.current_time()
    if outer == -math.inf:
        return trio.CancelScope(shield=True, deadline=now + HARD_STOP_GRACE)
    deadline = min(now + CLOSE_DEADLINE, max(outer, now + HARD_STOP_GRACE))
    return trio.CancelScope(shield=True, deadline=deadline)


@attrs.frozen(slots=True, kw_only=True)
class BackendFeatures:
    """What a backend guarantees; the conformance suite uses these flags to pick its checks."""

    persistent: bool = True
    consumer_groups: bool = True
    ordered_per_key: bool = True
    redelivers: bool = True
    dedupes: bool = False
    ephemeral_topics: bool = True
    #: Members of one group own disjoint partitions of a topic, so per-key order holds across instances.
    partitioned_groups: bool = True


@attrs.define(slots=True, eq=False)  # one per message: read-only by contract; not frozen (3x faster to build)
class OutgoingMessage:
    """A message on its way to the broker; ``seq`` identifies it in the :class:`Outcome`.

    ``envelope`` is the envelope ``body`` encodes (None for raw messages). In-process backends may hand it to
    the consumer as :attr:`Delivery.envelope` to skip decoding; brokers ignore it.
    """

    seq: int
    topic: str
    body: bytes
    headers: Mapping[str, str]
    key: str | None
    message_id: str | None
    envelope: Envelope | None = attrs.field(default=None, eq=False)


@attrs.define(slots=True, eq=False)  # read-only by contract; not frozen (3x faster to build)
class Outcome:
    """The broker's verdict on the messages with the sequence numbers ``seqs`` (``error=None``: stored)."""

    seqs: Sequence[int]
    error: BaseException | None = None


class Disposition(enum.Enum):
    """How a delivery is settled."""

    ACK = "ack"  #: handled (or dead-lettered): never deliver again
    NAK = "nak"  #: not handled: deliver again after the given delay
    TERM = "term"  #: stop delivering this message (it was dead-lettered or is poison)


@attrs.define(slots=True, eq=False)  # one per message: read-only by contract; not frozen (3x faster to build)
class Delivery:
    """One delivery of a stored message; ``token`` is the backend's handle for settling it.

    ``envelope``, when set, is the already-decoded envelope of ``body`` (see :class:`OutgoingMessage`).
    """

    topic: str
    body: bytes
    headers: Mapping[str, str]
    key: str | None
    message_id: str | None
    attempt: int
    token: object = attrs.field(eq=False)
    envelope: Envelope | None = attrs.field(default=None, eq=False)


class DeliverySink(Protocol):
    """Where a backend's fetcher puts deliveries (the bus's router for one subscription)."""

    async def deliver(self, deliveries: Sequence[Delivery]) -> None:
        """Route every delivery to a lane or worker; waits while they are full (backpressure)."""


class Backend(Protocol):
    """The seam between the bus and a broker client (see the module docstring for the contract)."""

    features: BackendFeatures

    def open(self, outcomes: trio.MemorySendChannel[Sequence[Outcome]]) -> AbstractAsyncContextManager[None]:
        """Connect (:class:`BackendUnavailable` on failure) and run the backend's own tasks for the block.

        On exit (normal, error or cancellation) stop consuming, deliver every outstanding outcome on
        ``outcomes`` and every settlement, close the connection: shielded and bounded by :func:`exit_scope`.
        ``outcomes`` is not closed by the backend. See "Lifecycle" in the module docstring.
        """
        ...

    async def ensure_topic(self, topic: str, options: TopicOptions) -> None:
        """Create the topic, or check/update an existing one, per ``options``."""

    async def send(self, batch: Sequence[OutgoingMessage]) -> None:
        """Hand ``batch`` to the broker; outcomes follow on the outcomes channel."""

    async def subscribe(self, topic: str, group: str, options: TopicOptions, sink: DeliverySink) -> None:
        """Start delivering ``(topic, group)`` to ``sink``; return once the subscription is live."""

    def settle(self, delivery: Delivery, disposition: Disposition, delay: float = 0.0) -> None:
        """Ack, nak (redeliver after ``delay`` seconds) or term one delivery. Never blocks."""

    async def stop_consuming(self) -> None:
        """Stop every fetcher; the sinks are not called after this returns. Idempotent; the exit of
        :meth:`open` does it too (the bus awaits it first on a graceful close, so lanes can drain)."""

    def delivery_info(self, delivery: Delivery) -> Mapping[str, object]:
        """The broker's raw metadata of ``delivery`` (``HandlerContext.delivery_info``: offsets, sequences,
        partition), built only when a handler context is; never blocks, never raises."""

    def statistics(self) -> BackendStatistics:
        """A frozen snapshot of live figures: the common ones of :class:`BackendStatistics` under the same names
        on every backend, in a backend-specific subclass that adds its own. Never awaits."""
