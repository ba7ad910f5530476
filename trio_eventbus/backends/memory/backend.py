"""The memory backend's connection: configuration, statistics and the fetchers of one bus.

See :mod:`trio_eventbus.backends.memory` for the semantics (lifecycle included).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from ... import _validate as v
from ..._abc import BackendFeatures, Delivery, DeliverySink, Disposition, Outcome, OutgoingMessage, exit_scope
from ..._exceptions import BusClosedError
from ..._options import TopicOptions
from ..._statistics import BackendStatistics
from .groups import Group, backlog, join, leave
from .log import MemoryBroker, Token, Topic

__all__ = ["MemoryBackend", "MemoryConfig", "MemoryStatistics", "MemorySubscriptionStatistics"]

_FEATURES = BackendFeatures(
    persistent=True,
    consumer_groups=True,
    ordered_per_key=True,
    redelivers=True,
    dedupes=True,
    ephemeral_topics=True,
)
_subscriber_ids = itertools.count(1)
_FETCH_BYTES = 8 * 1024 * 1024  # MemoryConfig.fetch_bytes by default
_NAK = Disposition.NAK


@attrs.frozen(slots=True, kw_only=True)
class MemorySubscriptionStatistics:
    """One subscription of this bus: its place in its consumer group (see :mod:`.groups`)."""

    #: The topic consumed.
    topic: str
    #: The consumer group.
    group: str
    #: Partitions of the group's topic this subscription owns now, sorted (all of them when it is alone).
    partitions: tuple[int, ...]
    #: Owned partitions another member still holds unsettled deliveries of (revoked from it, not yet handed
    #: over): this subscription takes none of their messages until that member settled them.
    waiting: tuple[int, ...]
    #: The group's partition count (``TopicOptions.partitions`` when the group was last rebalanced idle).
    partition_count: int
    #: Live members of the group (buses subscribed to the topic in it), this one included.
    members: int
    #: Rebalances of the group since this subscription joined it, its own join included.
    rebalances: int
    #: Deliveries of this subscription handed to the bus and not settled yet.
    unsettled: int


@attrs.frozen(slots=True, kw_only=True)
class MemoryStatistics(BackendStatistics):
    """The memory backend's figures: those of :class:`~trio_eventbus.BackendStatistics` (``state`` is ``"open"``
    or ``"closed"``; outcomes are reported within ``send``, so ``pending_outcomes`` is always 0). Per-topic
    counters of the shared broker are in :meth:`MemoryBroker.topic_statistics`."""

    #: One entry per live subscription, in subscription order: owned partitions and rebalances.
    subscription_details: tuple[MemorySubscriptionStatistics, ...] = ()


@attrs.frozen(slots=True, kw_only=True)
class MemoryConfig:
    """Configuration of the memory backend.

    ``broker``: share one :class:`MemoryBroker` between buses (each bus gets a private broker when ``None``).
    ``fetch_batch``: most messages a fetcher hands to the bus at once (512 by default: a batch spread over 64 lanes
    wakes each lane once for ~8 messages; 256 cost ~2.5 % more instructions per message); ``fetch_bytes``: most
    bytes of bodies (``len(body)``) in one such batch, 8 MiB by default (a batch always holds at least one
    message, however large). The bus's ``BusOptions.max_buffered_bytes`` bounds what it holds beyond one batch.
    """

    broker: MemoryBroker | None = attrs.field(default=None, eq=False)
    fetch_batch: int = attrs.field(default=512, validator=v.positive_int)
    fetch_bytes: int = attrs.field(default=_FETCH_BYTES, validator=v.positive_int)

    def create_backend(self) -> MemoryBackend:
        """A backend on the shared broker, or on a new private one."""
        broker = self.broker if self.broker is not None else MemoryBroker()
        return MemoryBackend(broker, self.fetch_batch, self.fetch_bytes)


class MemoryBackend:
    """One bus's connection to a :class:`MemoryBroker` (see the module docstring)."""

    features = _FEATURES

    def __init__(self, broker: MemoryBroker, fetch_batch: int, fetch_bytes: int = _FETCH_BYTES) -> None:
        self.broker = broker
        self._fetch_batch = fetch_batch
        self._fetch_bytes = fetch_bytes
        self._subscriber = next(_subscriber_ids)
        self._nursery: trio.Nursery | None = None
        self._outcomes: trio.MemorySendChannel[Sequence[Outcome]] | None = None
        self._fetchers: list[trio.CancelScope] = []
        self._fetchers_alive = 0
        self._fetchers_done = trio.Event()
        self._subscribed: list[tuple[Topic, Group]] = []
        self._closed = False

    @asynccontextmanager
    async def open(self, outcomes: trio.MemorySendChannel[Sequence[Outcome]]) -> AsyncIterator[None]:
        """Run the fetchers for the block; on exit release everything this bus held (see module docstring)."""
        self._outcomes = outcomes
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    yield
                finally:
                    with exit_scope():  # the fetchers end at once: then nothing takes messages any more
                        await self.stop_consuming()
                    self._close()
        finally:
            self._nursery = None

    async def ensure_topic(self, topic: str, options: TopicOptions) -> None:
        self.broker.configure(topic, options)
        await trio.lowlevel.checkpoint()

    async def send(self, batch: Sequence[OutgoingMessage]) -> None:
        assert self._outcomes is not None
        outcomes = self._outcomes
        topic_of = self.broker._topic
        now = trio.current_time()
        done = start = 0  # batch[:done] stored and reported; batch[done:start] stored, not reported yet
        n = len(batch)
        while start < n:
            topic = topic_of(batch[start].topic)
            end = topic.append_many(batch, start, now)
            if end == start:  # the log is full: report what is stored before waiting (a cancel must not hide it)
                if done < start:
                    await outcomes.send([Outcome([m.seq for m in batch[done:start]])])
                    done = start
                await topic.wait_for_space()
                now = trio.current_time()
            start = end
        await outcomes.send([Outcome([m.seq for m in batch[done:]] if done else [m.seq for m in batch])])

    async def subscribe(self, topic: str, group: str, options: TopicOptions, sink: DeliverySink) -> None:
        """Start the fetcher of ``(topic, group)``. Cancelled, it subscribed nothing; once the fetcher is
        started, it returns normally (the bus records the subscription only when this returns)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._nursery is None or self._closed:
            raise BusClosedError("the memory backend is closed")
        t = self.broker._topic(topic)
        g = t.group(group)
        g.subscribers += 1
        self._subscribed.append((t, g))
        join(t, g, self._subscriber)
        scope = trio.CancelScope()
        self._fetchers.append(scope)
        self._fetchers_alive += 1
        self._fetchers_done = trio.Event()
        self._nursery.start_soon(self._fetch, t, g, sink, scope, name=f"teb-memory-fetch-{topic}-{group}")
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _fetch(self, topic: Topic, group: Group, sink: DeliverySink, scope: trio.CancelScope) -> None:
        try:
            with scope:
                while True:
                    now = trio.current_time()
                    taken = topic.take(group, self._subscriber, self._fetch_batch, self._fetch_bytes, now)
                    if not taken:
                        with trio.move_on_at(topic.next_due(group)):
                            await group.lot.park()
                        continue
                    await sink.deliver(taken)
        finally:
            self._fetchers_alive -= 1
            if self._fetchers_alive == 0:
                self._fetchers_done.set()

    def settle(self, delivery: Delivery, disposition: Disposition, delay: float = 0.0) -> None:
        token: Token = delivery.token  # type: ignore[assignment]  # this backend's (see .log)
        topic, group, offset = token
        if disposition is _NAK:
            topic.nak(group, offset, trio.current_time() + delay)
        else:
            topic.ack(group, offset)

    async def stop_consuming(self) -> None:
        for scope in self._fetchers:
            scope.cancel()
        self._leave()
        if self._fetchers_alive:
            await self._fetchers_done.wait()

    def _leave(self) -> None:
        """Leave every group (the fetchers are stopped): the partitions move once what this bus holds of them
        is settled (the bus drains its lanes on a graceful close; :meth:`_close` naks the rest)."""
        for topic, group in self._subscribed:
            leave(topic, group, self._subscriber)

    def _close(self) -> None:
        for scope in self._fetchers:
            scope.cancel()
        self._leave()
        now = trio.current_time()
        for topic, group in self._subscribed:
            group.subscribers -= 1
            topic.release(self._subscriber, now)
            if not topic.options.persistent and group.subscribers == 0:
                del topic.groups[group.name]
                topic.trim()
        self._subscribed.clear()
        self._closed = True

    def statistics(self) -> MemoryStatistics:
        """Live figures of this bus's connection to the broker (see :class:`MemoryStatistics`)."""
        me = self._subscriber
        return MemoryStatistics(
            state="closed" if self._closed else "open",
            connected=not self._closed,
            reconnects=0,
            pending_outcomes=0,
            subscriptions=len(self._subscribed),
            fetchers=self._fetchers_alive,
            unsettled=sum(holder == me for _, group in self._subscribed for holder in group.inflight.values()),
            subscription_details=tuple(
                MemorySubscriptionStatistics(
                    topic=topic.name,
                    group=group.name,
                    partitions=group.owned(me),
                    waiting=group.waiting(me),
                    partition_count=group.partitions,
                    members=len(group.members),
                    rebalances=group.generation - group.joined[me] + 1 if me in group.joined else 0,
                    unsettled=sum(holder == me for holder in group.inflight.values()),
                )
                for topic, group in self._subscribed
            ),
        )

    def backlog(self) -> int:
        """Messages of this bus's subscriptions that their group has not settled yet: not delivered, waiting
        for a redelivery, or delivered (to any member of the group) and unsettled. ``EventBus.wait_idle``
        waits for 0. Never awaits."""
        total = 0
        for topic, group in set(self._subscribed):
            base = topic.base
            total += max(0, topic.end - max(group.next, base)) + len(group.inflight)
            total += sum(off >= max(base, group.floor) and off not in group.acked for _, off in group.redeliver)
            total += backlog(topic, group)
        return total

    def delivery_info(self, delivery: Delivery) -> Mapping[str, object]:
        """Raw metadata of ``delivery``: its ``offset`` in the topic's log. Never blocks."""
        token: Token = delivery.token  # type: ignore[assignment]  # this backend's (see .log)
        return {"offset": token[2]}
