"""The memory broker's log: topics, their retention, dedupe, and the groups' cursors (the broker half of the backend).

See :mod:`trio_eventbus.backends.memory` for the semantics and :mod:`.groups` for the partitioned groups.

The log stores the publisher's :class:`~trio_eventbus.backends.OutgoingMessage` objects as they are (read-only by
contract; one allocation less per message), with the append time of each in a parallel deque (``max_age``); a
message's offset is its place in the log (``base`` + index). Deliveries carry ``(topic, group, offset)`` as their
token.

Dedupe memory: the ids of a topic's duplicate window live in a dict (id -> time first seen) plus a deque of the
same ids in arrival order, so that forgetting the oldest is O(1) whichever bound applies: the time bound
(``TopicOptions.duplicate_window``) and the count bound (``MemoryBroker(max_duplicate_ids=...)``, per topic).
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Sequence
from typing import TypeAlias

import trio

from ... import _validate as v
from ..._abc import Delivery, OutgoingMessage
from ..._options import TopicOptions
from .groups import Group, on_settle, take_partitioned

__all__ = ["DEFAULT_MAX_DUPLICATE_IDS", "MemoryBroker", "Token", "Topic"]

#: ``MemoryBroker(max_duplicate_ids=...)`` by default: the most message ids one topic remembers for dedupe.
DEFAULT_MAX_DUPLICATE_IDS = 20_000
#: ``Delivery.token`` of this backend: the topic, the group and the offset delivered.
Token: TypeAlias = "tuple[Topic, Group, int]"


class Topic:
    """One topic's log (see the module docstring)."""

    def __init__(self, name: str, options: TopicOptions, capacity: int, max_ids: int) -> None:
        self.name = name
        self.options = options
        self.capacity = capacity
        self.log: collections.deque[OutgoingMessage] = collections.deque()
        self.times: collections.deque[float] = collections.deque()  # append time of each message in ``log``
        self.base = 0  # offset of log[0]
        self.end = 0  # next offset to assign
        self.bytes = 0
        self.groups: dict[str, Group] = {}
        # dedupe: id -> time first seen, and the same ids oldest first (see the module docstring)
        self.seen: dict[str, float] = {}
        self.seen_order: collections.deque[str] = collections.deque()
        self.max_ids = max_ids
        self.space = trio.lowlevel.ParkingLot()
        self.space_waiters = 0  # publishers parked on ``space`` (full log)
        self.stored = 0
        self.duplicates = 0
        self.dropped = 0
        self.discarded = 0

    # -- publishing --

    def _forget_expired(self, now: float) -> None:
        """Forget the ids first seen ``duplicate_window`` seconds ago or earlier."""
        cutoff = now - self.options.duplicate_window
        seen, order = self.seen, self.seen_order
        while order and seen[order[0]] <= cutoff:
            del seen[order.popleft()]

    def _is_duplicate(self, message_id: str, now: float) -> bool:
        """Whether ``message_id`` is remembered; if not, remember it (forgetting the oldest id at the count bound).
        The caller checked ``duplicate_window > 0`` and forgot the expired ids."""
        seen = self.seen
        if message_id in seen:
            return True
        order = self.seen_order
        if len(order) >= self.max_ids:
            del seen[order.popleft()]
        seen[message_id] = now
        order.append(message_id)
        return False

    def full(self) -> bool:
        o = self.options
        return o.max_messages is None and o.max_bytes is None and len(self.log) >= self.capacity

    def append_many(self, batch: Sequence[OutgoingMessage], start: int, now: float) -> int:
        """Store ``batch[start:]`` up to the first message of another topic or until the log is full (publishers
        wait for room: ``space``); duplicates are acked, not stored. Returns the index of the first message not
        taken. Wakes the groups' fetchers once."""
        o = self.options
        dedupe = o.duplicate_window > 0
        if dedupe and self.seen_order:
            self._forget_expired(now)
        name = self.name
        i, n = start, len(batch)
        if o.max_messages is not None or o.max_bytes is not None or o.max_age is not None or not o.persistent:
            while i < n and batch[i].topic == name and not self.full():
                self._append_limited(batch[i], now, dedupe)
                i += 1
        else:
            # the plain path: a persistent topic without retention limits, bounded by ``capacity``
            room = self.capacity - len(self.log)
            log_append, times_append = self.log.append, self.times.append
            seen, order, max_ids = self.seen, self.seen_order, self.max_ids
            stored = size = duplicates = 0
            while i < n and room > stored:
                msg = batch[i]
                if msg.topic != name:
                    break
                i += 1
                mid = msg.message_id
                if mid is not None and dedupe:
                    if mid in seen:
                        duplicates += 1
                        continue
                    if len(order) >= max_ids:
                        del seen[order.popleft()]
                    seen[mid] = now
                    order.append(mid)
                log_append(msg)
                times_append(now)
                size += len(msg.body)
                stored += 1
            self.end += stored
            self.stored += stored
            self.bytes += size
            self.duplicates += duplicates
        for group in self.groups.values():
            if group.lot:
                group.lot.unpark_all()
        return i

    def _append_limited(self, msg: OutgoingMessage, now: float, dedupe: bool) -> None:
        """Store one message of a topic with retention limits or an ephemeral one."""
        if dedupe and msg.message_id is not None and self._is_duplicate(msg.message_id, now):
            self.duplicates += 1
            return
        if not self.options.persistent and not any(g.subscribers for g in self.groups.values()):
            self.dropped += 1
            return
        self.log.append(msg)
        self.times.append(now)
        self.end += 1
        self.stored += 1
        self.bytes += len(msg.body)
        self._apply_limits(now)

    def _apply_limits(self, now: float) -> None:
        o = self.options
        while self.log and (
            (o.max_messages is not None and len(self.log) > o.max_messages)
            or (o.max_bytes is not None and self.bytes > o.max_bytes)
            or (o.max_age is not None and self.times[0] <= now - o.max_age)
        ):
            self._pop_oldest()
            self.discarded += 1

    def _pop_oldest(self) -> None:
        stored = self.log.popleft()
        self.times.popleft()
        self.bytes -= len(stored.body)
        self.base += 1

    def trim(self) -> None:
        """Drop messages every group has acked (persistent retention)."""
        groups = self.groups
        if len(groups) == 1:
            floor = next(iter(groups.values())).floor
        elif not groups:
            if not self.options.persistent:
                while self.log:
                    self._pop_oldest()
            return
        else:
            floor = min(g.floor for g in groups.values())
        base = self.base
        if base >= floor or not self.log:
            return
        log, times = self.log, self.times
        size = 0
        while log and base < floor:
            size += len(log.popleft().body)
            times.popleft()
            base += 1
        self.base = base
        self.bytes -= size
        if self.space_waiters:
            self.space.unpark_all()

    async def wait_for_space(self) -> None:
        """Wait until the log is not :meth:`full` (the publisher side of ``capacity``)."""
        self.space_waiters += 1
        try:
            while self.full():
                await self.space.park()
        finally:
            self.space_waiters -= 1

    # -- consuming --

    def group(self, name: str) -> Group:
        group = self.groups.get(name)
        if group is None:
            start = self.base if self.options.persistent else self.end
            group = self.groups[name] = Group(name, start, start)
        return group

    def take(self, group: Group, subscriber: int, limit: int, max_bytes: int, now: float) -> list[Delivery]:
        """Hand out up to ``limit`` messages and ``max_bytes`` of bodies (always at least one message) of the
        partitions ``subscriber`` may take (see :mod:`.groups`); the plain cursor while it runs the fast path."""
        if self.options.max_age is not None:
            self._apply_limits(now)
        if group.fast != subscriber:
            return take_partitioned(self, group, subscriber, limit, max_bytes, now) if not group.fast else []
        out: list[Delivery] = []
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
            out.append(self.hand_out(group, subscriber, offset))
        if group.next < base:
            group.next = base
            group.floor = max(group.floor, base)
        # hand_out, inline: never delivered before (attempt 1); no byte count when the whole log fits max_bytes
        log, end, inflight, append, name = self.log, self.end, group.inflight, out.append, self.name
        offset = group.next
        room = limit - len(out)
        count_bytes = size + self.bytes > max_bytes
        while offset < end and room:
            m = log[offset - base]
            if count_bytes:
                size += len(m.body)
                if size > max_bytes and out:
                    break
            inflight[offset] = subscriber
            append(Delivery(name, m.body, m.headers, m.key, m.message_id, 1, (self, group, offset), m.envelope))
            offset += 1
            room -= 1
        group.next = offset
        return out

    def hand_out(self, group: Group, subscriber: int, offset: int) -> Delivery:
        """The delivery of ``offset`` to ``subscriber`` (in flight from now on)."""
        group.inflight[offset] = subscriber
        m = self.log[offset - self.base]
        attempt = group.counts.get(offset, 0) + 1
        return Delivery(self.name, m.body, m.headers, m.key, m.message_id, attempt, (self, group, offset), m.envelope)

    def ack(self, group: Group, offset: int) -> None:
        """ACK or TERM: never deliver ``offset`` to ``group`` again."""
        if group.inflight.pop(offset, None) is None:
            return  # already settled, or released when its subscriber left
        if group.tracking:
            on_settle(group, offset)
        if group.counts:
            group.counts.pop(offset, None)
        if offset != group.floor:
            group.acked.add(offset)
            return
        floor = offset + 1
        acked = group.acked
        if acked:
            while floor in acked:
                acked.remove(floor)
                floor += 1
        group.floor = floor
        self.trim()

    def nak(self, group: Group, offset: int, due: float) -> None:
        """NAK: deliver ``offset`` to ``group`` again at ``due``."""
        if offset < self.base:  # discarded by retention meanwhile: nothing to redeliver, settled for good
            self.ack(group, offset)
            return
        if group.inflight.pop(offset, None) is None:
            return  # already settled, or released when its subscriber left
        if group.tracking:
            on_settle(group, offset)
        group.counts[offset] = group.counts.get(offset, 0) + 1  # deliveries so far (see Group.counts)
        heapq.heappush(group.redeliver, (due, offset))
        group.lot.unpark_all()

    def release(self, subscriber: int, now: float) -> None:
        """A subscriber left: everything it held goes back to its group for redelivery."""
        for group in self.groups.values():
            held = [off for off, holder in group.inflight.items() if holder == subscriber]
            for offset in held:
                self.nak(group, offset, now)

    def next_due(self, group: Group) -> float:
        return group.redeliver[0][0] if group.redeliver else float("inf")


class MemoryBroker:
    """An in-process broker. Share one between buses (``MemoryConfig(broker=...)``) in the same Trio run.

    ``topic_capacity``: the most messages a topic without retention limits keeps (unacked by some group, or with
    no group yet); publishers wait for room beyond it (backpressure).

    ``max_duplicate_ids``: the most message ids a topic remembers for dedupe, per topic. The duplicate window is
    bounded in time by ``TopicOptions.duplicate_window`` (as JetStream's) and in count by this, whichever is
    shorter; the oldest id is forgotten first, so the broker's memory stays flat whatever the publish rate (an id
    costs ~140 bytes with its string: under 3 MB at the default). What a bound means: a message whose id is older
    than the newest ``max_duplicate_ids`` ids of its topic is accepted again, as by any broker with a bounded
    window; a duplicate of a recent message is still refused. The default, 20,000, is
    ``BusOptions.max_pending_publishes`` plus ``results_buffer`` at their defaults: every publish of one bus whose
    outcome the application may not have seen yet (in flight, or its result unread) and so may send again.
    Compared with the brokers: NATS JetStream bounds its window by time only (``duplicate_window``: the ids of two
    minutes, at any rate); Kafka's idempotent producer has no id window at all: the broker keeps the last five
    batches' sequence numbers per producer and partition, which drops the producer's own retries but not a
    message sent again by another producer or after a restart. Ours drops any re-send of a recent id on the
    topic, from any bus, like NATS, within both bounds.
    Raise it for applications that re-send older messages (an outbox replaying a backlog).
    """

    def __init__(self, *, topic_capacity: int = 100_000, max_duplicate_ids: int = DEFAULT_MAX_DUPLICATE_IDS) -> None:
        v.check(v.positive_int, "topic_capacity", topic_capacity)
        v.check(v.positive_int, "max_duplicate_ids", max_duplicate_ids)
        self._capacity = topic_capacity
        self._max_ids = max_duplicate_ids
        self._topics: dict[str, Topic] = {}

    def _topic(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = Topic(name, TopicOptions(), self._capacity, self._max_ids)
        return topic

    def configure(self, name: str, options: TopicOptions) -> None:
        """Create ``name`` or apply new options to it."""
        topic = self._topic(name)
        topic.options = options

    def topic_statistics(self, name: str) -> dict[str, int]:
        """Counters of one topic: stored, retained, duplicates, dropped, discarded, the message ids remembered for
        dedupe (``duplicate_ids``), and pending per group."""
        t = self._topic(name)
        stats = {
            "stored": t.stored,
            "retained": len(t.log),
            "duplicates": t.duplicates,
            "dropped": t.dropped,
            "discarded": t.discarded,
            "duplicate_ids": len(t.seen),
        }
        for name_, g in t.groups.items():
            stats[f"pending[{name_}]"] = t.end - g.floor - len(g.acked)
        return stats

    def __repr__(self) -> str:
        return f"<MemoryBroker topics={len(self._topics)}>"
