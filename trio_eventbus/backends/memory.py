"""The in-memory backend: a broker with broker semantics, inside one Trio run.

It is the reference implementation of the backend contract (:mod:`trio_eventbus._abc`) and the public test
double: tests of applications run on it instead of mocking the bus.

Semantics
    - A topic is a log. Persistent topics keep each message until every group that exists has acked it
      (a topic with no group yet keeps everything, up to ``MemoryConfig.topic_capacity``, after which
      publishers wait: backpressure). A group created later starts at the oldest retained message.
    - Ephemeral topics (``TopicOptions(persistent=False)``) keep messages only for groups that have a live
      subscriber at publish time; a message nobody listens to is dropped and counted (``dropped``).
    - Retention limits ``max_messages``, ``max_bytes`` and ``max_age`` drop the oldest messages (counted as
      ``discarded``), as JetStream's discard-old policy does.
    - Every group gets every message; within a group each message goes to one subscriber. Messages are handed
      out in log order, so one subscriber sees one key's messages in publish order.
    - At least once: a message stays pending until acked or termed; ``NAK`` redelivers it after the delay;
      messages a subscriber held when its bus closed are redelivered to the group. ``attempt`` counts
      deliveries to the group.
    - Dedupe: a ``message_id`` seen on the topic within ``duplicate_window`` seconds is acked, not stored.
    - A fetch batch holds at most ``MemoryConfig.fetch_batch`` messages and ``fetch_bytes`` bytes of bodies
      (at least one message); the fetcher hands it to the bus and waits while the bus's lanes are full (by
      count, or by bytes: ``BusOptions.max_buffered_bytes``) before it takes the next.

In-process, the envelope object of an envelope publish travels with its encoded bytes and is handed to
envelope subscribers as is (decoding would give an equal value: the codec round-trip is property-tested), so
the memory backend pays the encode cost but not the decode cost. Raw subscribers get the bytes.

All times are Trio's clock, so ``MockClock`` (autojump) drives redelivery delays and ``max_age``.

Lifecycle: :meth:`MemoryBackend.open` runs the fetchers in a nursery of its own for the block. ``send``
reports outcomes itself (no ack handler task), so every outcome is on the channel when ``send`` returns or
is cancelled. Exit (normal, error or cancellation; shielded, see :func:`~trio_eventbus._abc.exit_scope`):
the fetchers are cancelled and awaited (they end at once), then every delivery this bus held and never
settled goes back to its group for redelivery (at once, not after a timeout), and the subscriptions are
released.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from .. import _validate as v
from .._abc import BackendFeatures, Delivery, DeliverySink, Disposition, Outcome, OutgoingMessage, exit_scope
from .._envelope import Envelope
from .._exceptions import BusClosedError
from .._options import TopicOptions
from .._statistics import BackendStatistics

__all__ = ["MemoryBackend", "MemoryBroker", "MemoryConfig", "MemoryStatistics"]

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


@attrs.define(slots=True, eq=False)
class _Stored:
    offset: int
    body: bytes
    headers: Mapping[str, str]
    key: str | None
    message_id: str | None
    time: float
    envelope: Envelope | None


@attrs.define(slots=True, eq=False)
class _Group:
    name: str
    next: int  # next never-delivered offset
    floor: int  # every offset below is acked
    subscribers: int = 0
    acked: set[int] = attrs.field(factory=set)
    inflight: dict[int, int] = attrs.field(factory=dict)  # offset -> subscriber id holding it
    counts: dict[int, int] = attrs.field(factory=dict)  # offset -> deliveries so far
    redeliver: list[tuple[float, int]] = attrs.field(factory=list)  # heap of (due time, offset)
    lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)


class _Topic:
    def __init__(self, name: str, options: TopicOptions, capacity: int) -> None:
        self.name = name
        self.options = options
        self.capacity = capacity
        self.log: collections.deque[_Stored] = collections.deque()
        self.base = 0  # offset of log[0]
        self.end = 0  # next offset to assign
        self.bytes = 0
        self.groups: dict[str, _Group] = {}
        self.seen: dict[str, float] = {}
        self.seen_order: collections.deque[tuple[float, str]] = collections.deque()
        self.space = trio.lowlevel.ParkingLot()
        self.stored = 0
        self.duplicates = 0
        self.dropped = 0
        self.discarded = 0

    # -- publishing --

    def _is_duplicate(self, message_id: str | None, now: float) -> bool:
        window = self.options.duplicate_window
        if message_id is None or window <= 0:
            return False
        while self.seen_order and self.seen_order[0][0] <= now - window:
            _, old = self.seen_order.popleft()
            if self.seen.get(old, now) <= now - window:
                del self.seen[old]
        if message_id in self.seen:
            return True
        self.seen[message_id] = now
        self.seen_order.append((now, message_id))
        return False

    def full(self) -> bool:
        o = self.options
        return o.max_messages is None and o.max_bytes is None and len(self.log) >= self.capacity

    def append(self, msg: OutgoingMessage, now: float) -> None:
        if self._is_duplicate(msg.message_id, now):
            self.duplicates += 1
            return
        if not self.options.persistent and not any(g.subscribers for g in self.groups.values()):
            self.dropped += 1
            return
        self.log.append(_Stored(self.end, msg.body, msg.headers, msg.key, msg.message_id, now, msg.envelope))
        self.end += 1
        self.stored += 1
        self.bytes += len(msg.body)
        self._apply_limits(now)
        for group in self.groups.values():
            if group.lot:
                group.lot.unpark_all()

    def _apply_limits(self, now: float) -> None:
        o = self.options
        while self.log and (
            (o.max_messages is not None and len(self.log) > o.max_messages)
            or (o.max_bytes is not None and self.bytes > o.max_bytes)
            or (o.max_age is not None and self.log[0].time <= now - o.max_age)
        ):
            self._pop_oldest()
            self.discarded += 1

    def _pop_oldest(self) -> None:
        stored = self.log.popleft()
        self.bytes -= len(stored.body)
        self.base += 1

    def trim(self) -> None:
        """Drop messages every group has acked (persistent retention)."""
        if not self.groups:
            if not self.options.persistent:
                while self.log:
                    self._pop_oldest()
            return
        floor = min(g.floor for g in self.groups.values())
        trimmed = False
        while self.log and self.base < floor:
            self._pop_oldest()
            trimmed = True
        if trimmed:
            self.space.unpark_all()

    # -- consuming --

    def group(self, name: str) -> _Group:
        group = self.groups.get(name)
        if group is None:
            start = self.base if self.options.persistent else self.end
            group = self.groups[name] = _Group(name, start, start)
        return group

    def take(self, group: _Group, subscriber: int, limit: int, max_bytes: int, now: float) -> list[tuple[_Stored, int]]:
        """Hand out up to ``limit`` messages and ``max_bytes`` of bodies (always at least one message)."""
        if self.options.max_age is not None:
            self._apply_limits(now)
        out: list[tuple[_Stored, int]] = []
        size = 0
        base = self.base
        while group.redeliver and group.redeliver[0][0] <= now and len(out) < limit:
            offset = group.redeliver[0][1]
            if offset < base or offset in group.inflight or offset in group.acked or offset < group.floor:
                heapq.heappop(group.redeliver)
                continue
            size += len(self.log[offset - base].body)
            if size > max_bytes and out:
                return out
            heapq.heappop(group.redeliver)
            out.append(self._hand_out(group, subscriber, offset))
        if group.next < base:
            group.next = base
            group.floor = max(group.floor, base)
        # _hand_out, inline: one deque index per message; no byte count when the whole log fits max_bytes
        log, end, inflight, counts, append = self.log, self.end, group.inflight, group.counts, out.append
        offset = group.next
        room = limit - len(out)
        count_bytes = size + self.bytes > max_bytes
        while offset < end and room:
            stored = log[offset - base]
            if count_bytes:
                size += len(stored.body)
                if size > max_bytes and out:
                    break
            inflight[offset] = subscriber
            count = counts[offset] = counts.get(offset, 0) + 1
            append((stored, count))
            offset += 1
            room -= 1
        group.next = offset
        return out

    def _hand_out(self, group: _Group, subscriber: int, offset: int) -> tuple[_Stored, int]:
        group.inflight[offset] = subscriber
        count = group.counts[offset] = group.counts.get(offset, 0) + 1
        return self.log[offset - self.base], count

    def settle(self, group: _Group, offset: int, disposition: Disposition, due: float) -> None:
        if group.inflight.pop(offset, None) is None:
            return  # already settled, or released when its subscriber left
        if disposition is Disposition.NAK and offset >= self.base:
            heapq.heappush(group.redeliver, (due, offset))
            group.lot.unpark_all()
            return
        group.counts.pop(offset, None)
        if offset != group.floor:
            group.acked.add(offset)
            return
        floor = offset + 1
        while floor in group.acked:
            group.acked.remove(floor)
            floor += 1
        group.floor = floor
        self.trim()

    def release(self, subscriber: int, now: float) -> None:
        """A subscriber left: everything it held goes back to its group for redelivery."""
        for group in self.groups.values():
            held = [off for off, holder in group.inflight.items() if holder == subscriber]
            for offset in held:
                self.settle(group, offset, Disposition.NAK, now)

    def next_due(self, group: _Group) -> float:
        return group.redeliver[0][0] if group.redeliver else float("inf")


class MemoryBroker:
    """An in-process broker. Share one between buses (``MemoryConfig(broker=...)``) in the same Trio run."""

    def __init__(self, *, topic_capacity: int = 100_000) -> None:
        v.check(v.positive_int, "topic_capacity", topic_capacity)
        self._capacity = topic_capacity
        self._topics: dict[str, _Topic] = {}

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic(name, TopicOptions(), self._capacity)
        return topic

    def configure(self, name: str, options: TopicOptions) -> None:
        """Create ``name`` or apply new options to it."""
        topic = self._topic(name)
        topic.options = options

    def topic_statistics(self, name: str) -> dict[str, int]:
        """Counters of one topic: stored, retained, duplicates, dropped, discarded, and pending per group."""
        t = self._topic(name)
        stats = {
            "stored": t.stored,
            "retained": len(t.log),
            "duplicates": t.duplicates,
            "dropped": t.dropped,
            "discarded": t.discarded,
        }
        for name_, g in t.groups.items():
            stats[f"pending[{name_}]"] = t.end - g.floor - len(g.acked)
        return stats

    def __repr__(self) -> str:
        return f"<MemoryBroker topics={len(self._topics)}>"


@attrs.frozen(slots=True, kw_only=True)
class MemoryStatistics(BackendStatistics):
    """The memory backend's figures: those of :class:`~trio_eventbus.BackendStatistics` (``state`` is ``"open"``
    or ``"closed"``; outcomes are reported within ``send``, so ``pending_outcomes`` is always 0). Per-topic
    counters of the shared broker are in :meth:`MemoryBroker.topic_statistics`."""


@attrs.frozen(slots=True, kw_only=True)
class MemoryConfig:
    """Configuration of the memory backend.

    ``broker``: share one :class:`MemoryBroker` between buses (each bus gets a private broker when ``None``).
    ``fetch_batch``: most messages a fetcher hands to the bus at once; ``fetch_bytes``: most bytes of bodies
    (``len(body)``) in one such batch, 8 MiB by default (a batch always holds at least one message, however
    large). The bus's ``BusOptions.max_buffered_bytes`` bounds what it holds beyond one batch.
    """

    broker: MemoryBroker | None = attrs.field(default=None, eq=False)
    fetch_batch: int = attrs.field(default=256, validator=v.positive_int)
    fetch_bytes: int = attrs.field(default=_FETCH_BYTES, validator=v.positive_int)

    def create_backend(self) -> MemoryBackend:
        """A backend on the shared broker, or on a new private one."""
        broker = self.broker if self.broker is not None else MemoryBroker()
        return MemoryBackend(broker, self.fetch_batch, self.fetch_bytes)


@attrs.define(slots=True, eq=False)  # one per delivery: read-only by use (not frozen: 3x faster to build)
class _Token:
    topic: _Topic
    group: _Group
    offset: int


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
        self._subscribed: list[tuple[_Topic, _Group]] = []
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
        now = trio.current_time()
        stored: list[int] = []
        for msg in batch:
            topic = self.broker._topic(msg.topic)
            if topic.full():
                if stored:  # report what is stored before waiting for room (a cancel must not hide it)
                    await self._outcomes.send([Outcome(stored)])
                    stored = []
                while topic.full():
                    await topic.space.park()
                now = trio.current_time()
            topic.append(msg, now)
            stored.append(msg.seq)
        await self._outcomes.send([Outcome(stored)])

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
        scope = trio.CancelScope()
        self._fetchers.append(scope)
        self._fetchers_alive += 1
        self._fetchers_done = trio.Event()
        self._nursery.start_soon(self._fetch, t, g, sink, scope, name=f"teb-memory-fetch-{topic}-{group}")
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _fetch(self, topic: _Topic, group: _Group, sink: DeliverySink, scope: trio.CancelScope) -> None:
        try:
            with scope:
                while True:
                    now = trio.current_time()
                    taken = topic.take(group, self._subscriber, self._fetch_batch, self._fetch_bytes, now)
                    if not taken:
                        with trio.move_on_at(topic.next_due(group)):
                            await group.lot.park()
                        continue
                    name = topic.name
                    await sink.deliver(
                        [
                            Delivery(
                                name,
                                s.body,
                                s.headers,
                                s.key,
                                s.message_id,
                                count,
                                _Token(topic, group, s.offset),
                                s.envelope,
                            )
                            for s, count in taken
                        ]
                    )
        finally:
            self._fetchers_alive -= 1
            if self._fetchers_alive == 0:
                self._fetchers_done.set()

    def settle(self, delivery: Delivery, disposition: Disposition, delay: float = 0.0) -> None:
        token = delivery.token
        assert isinstance(token, _Token)
        token.topic.settle(token.group, token.offset, disposition, trio.current_time() + delay)

    async def stop_consuming(self) -> None:
        for scope in self._fetchers:
            scope.cancel()
        if self._fetchers_alive:
            await self._fetchers_done.wait()

    def _close(self) -> None:
        for scope in self._fetchers:
            scope.cancel()
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
        return total

    def delivery_info(self, delivery: Delivery) -> Mapping[str, object]:
        """Raw metadata of ``delivery``: its ``offset`` in the topic's log. Never blocks."""
        token = delivery.token
        assert isinstance(token, _Token)
        return {"offset": token.offset}
