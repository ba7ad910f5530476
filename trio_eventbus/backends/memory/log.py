"""The memory broker's log: topics, their retention, and the groups' cursors (the broker half of the backend).

See :mod:`trio_eventbus.backends.memory` for the semantics and :mod:`.groups` for the partitioned groups.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Mapping

import attrs
import trio

from ... import _validate as v
from ..._abc import Disposition, OutgoingMessage
from ..._envelope import Envelope
from ..._options import TopicOptions
from .groups import Group, on_settle, take_partitioned

__all__ = ["MemoryBroker", "Stored", "Topic"]


@attrs.define(slots=True, eq=False)
class Stored:
    offset: int
    body: bytes
    headers: Mapping[str, str]
    key: str | None
    message_id: str | None
    time: float
    envelope: Envelope | None


class Topic:
    def __init__(self, name: str, options: TopicOptions, capacity: int) -> None:
        self.name = name
        self.options = options
        self.capacity = capacity
        self.log: collections.deque[Stored] = collections.deque()
        self.base = 0  # offset of log[0]
        self.end = 0  # next offset to assign
        self.bytes = 0
        self.groups: dict[str, Group] = {}
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
        self.log.append(Stored(self.end, msg.body, msg.headers, msg.key, msg.message_id, now, msg.envelope))
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

    def group(self, name: str) -> Group:
        group = self.groups.get(name)
        if group is None:
            start = self.base if self.options.persistent else self.end
            group = self.groups[name] = Group(name, start, start)
        return group

    def take(self, group: Group, subscriber: int, limit: int, max_bytes: int, now: float) -> list[tuple[Stored, int]]:
        """Hand out up to ``limit`` messages and ``max_bytes`` of bodies (always at least one message) of the
        partitions ``subscriber`` may take (see :mod:`.groups`); the plain cursor while it runs the fast path."""
        if self.options.max_age is not None:
            self._apply_limits(now)
        if group.fast != subscriber:
            return take_partitioned(self, group, subscriber, limit, max_bytes, now) if not group.fast else []
        out: list[tuple[Stored, int]] = []
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

    def _hand_out(self, group: Group, subscriber: int, offset: int) -> tuple[Stored, int]:
        group.inflight[offset] = subscriber
        count = group.counts[offset] = group.counts.get(offset, 0) + 1
        return self.log[offset - self.base], count

    def settle(self, group: Group, offset: int, disposition: Disposition, due: float) -> None:
        if group.inflight.pop(offset, None) is None:
            return  # already settled, or released when its subscriber left
        if group.tracking:
            on_settle(group, offset)
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

    def next_due(self, group: Group) -> float:
        return group.redeliver[0][0] if group.redeliver else float("inf")


class MemoryBroker:
    """An in-process broker. Share one between buses (``MemoryConfig(broker=...)``) in the same Trio run."""

    def __init__(self, *, topic_capacity: int = 100_000) -> None:
        v.check(v.positive_int, "topic_capacity", topic_capacity)
        self._capacity = topic_capacity
        self._topics: dict[str, Topic] = {}

    def _topic(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = Topic(name, TopicOptions(), self._capacity)
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
