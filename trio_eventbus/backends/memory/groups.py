"""Partitioned consumer groups of the memory broker: which member owns which partition, and the hand-over.

The model is a Kafka consumer group with the eager rebalance protocol, on the broker's log:

- Each message belongs to one partition of the group: a keyed message to ``partition_of(key, partitions)`` (the
  bus's one key -> partition function), a keyless one to ``offset % partitions`` (round-robin over the log, as
  Kafka's round-robin partitioner spreads keyless records). ``partitions`` is the topic's
  ``TopicOptions.partitions`` (default 1), read when the group is rebalanced while it holds nothing.
- The members are the live subscriptions of the group (one per bus). Partition ``p`` is owned by
  ``members[p % len(members)]``, members sorted by id (ids grow in subscription order): deterministic and
  balanced (round-robin). The assignment is recomputed when a member joins (``subscribe``) or leaves (the bus
  stops consuming: a graceful close or a hard stop).
- A member takes only messages of partitions it owns, and of a partition only while no other member holds an
  unsettled delivery of it. So a partition that moves is revoked first: its old owner takes nothing more of
  it, settles (acks or naks) what it already took, and only then may the new owner take a message of it; a
  nak'ed message is queued again in offset order in front of everything later of its partition. Within a
  partition messages are handed out in offset order (redeliveries first, as they are earlier), so a later
  message never overtakes an earlier one that is ready. Hence one key is never handled by two members at once
  and never out of order across a rebalance (a NAK with a delay, ``RetryPolicy(strategy="redeliver")``, is the
  one exception, as on one bus: later messages do not wait for the delayed one).

Fast path: while one member owns every partition and nobody else holds a delivery (a single bus, or partitions=1
with stand-by members), the group runs the log's plain cursor exactly as without groups and keeps no
per-partition state (``fast`` names that member). Any other state switches to tracking: the holders of the
in-flight deliveries are read from ``inflight`` once, then every hand-out and settlement of the group updates
the per-partition counts. The group returns to the fast path when one member owns everything again, holds
alone and has no routed message waiting.

In tracking mode, a take routes every new message of the log (cursor ``next``) into its partition's ready heap
(min-heap of offsets; routing is once per message) and hands out from the partitions the taker may take, in a
rotating order. Members whose partitions got messages, or became free, are woken through the group's lot.

An in-flight message that retention (``max_messages``/``max_bytes``/``max_age``) discarded while the group
switched to tracking has no key left to place it by: it does not block its partition (retention already broke
the promise for it).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

import attrs
import trio

from ..._abc import Delivery
from ..._partition import partition_of

if TYPE_CHECKING:
    from .log import Topic

__all__ = ["Group", "join", "leave", "on_settle", "take_partitioned"]

_KEY_CACHE_LIMIT = 65_536


@attrs.define(slots=True, eq=False)
class Group:
    """One consumer group of one topic: its cursor, in-flight deliveries, redeliveries and partition owners."""

    name: str
    next: int  # next offset never delivered (tracking mode: never routed)
    floor: int  # every offset below is acked
    subscribers: int = 0
    acked: set[int] = attrs.field(factory=set)
    inflight: dict[int, int] = attrs.field(factory=dict)  # offset -> subscriber id holding it
    # offset -> deliveries so far, of the offsets nak'ed at least once (a first delivery needs no entry)
    counts: dict[int, int] = attrs.field(factory=dict)
    redeliver: list[tuple[float, int]] = attrs.field(factory=list)  # heap of (due time, offset)
    lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    # -- partitions (see the module docstring) --
    partitions: int = 1
    members: list[int] = attrs.field(factory=list)  # sorted subscriber ids
    joined: dict[int, int] = attrs.field(factory=dict)  # member -> generation at its join
    owner: list[int] = attrs.field(factory=lambda: [0])  # partition -> owning member (0: none)
    sole: int = 0  # the member owning every partition, if one does
    fast: int = 0  # the member running the plain cursor (not tracking), if any
    tracking: bool = False
    holder: list[int] = attrs.field(factory=lambda: [0])  # partition -> member holding deliveries of it
    held: list[int] = attrs.field(factory=lambda: [0])  # partition -> deliveries held
    part: dict[int, int] = attrs.field(factory=dict)  # in-flight offset -> partition (tracking mode)
    ready: list[list[int]] = attrs.field(factory=lambda: [[]])  # partition -> heap of offsets to hand out
    routed: int = 0  # offsets in the ready heaps
    keys: dict[str, int] = attrs.field(factory=dict)  # key -> partition cache
    turn: int = 0  # first partition the next take looks at (rotates)
    generation: int = 0  # rebalances so far

    def partition(self, key: str | None, offset: int) -> int:
        """The partition of the message at ``offset`` with ``key``."""
        if key is None:
            return offset % self.partitions
        p = self.keys.get(key)
        if p is None:
            if len(self.keys) >= _KEY_CACHE_LIMIT:
                self.keys.clear()
            p = self.keys[key] = partition_of(key, self.partitions)
        return p

    def owned(self, member: int) -> tuple[int, ...]:
        return tuple(p for p, m in enumerate(self.owner) if m == member)

    def waiting(self, member: int) -> tuple[int, ...]:
        """Partitions ``member`` owns that another member still holds deliveries of (revoked, not settled)."""
        if not self.tracking:
            return ()
        return tuple(p for p, m in enumerate(self.owner) if m == member and self.holder[p] not in (0, member))


def join(topic: Topic, group: Group, member: int) -> None:
    """``member`` subscribed: rebalance."""
    if member not in group.joined:
        group.members.append(member)
        group.members.sort()
        group.joined[member] = group.generation + 1
        _rebalance(topic, group)


def leave(topic: Topic, group: Group, member: int) -> None:
    """``member`` stops consuming (it may still settle what it holds): rebalance. Idempotent."""
    if group.joined.pop(member, None) is not None:
        group.members.remove(member)
        _rebalance(topic, group)


def _rebalance(topic: Topic, group: Group) -> None:
    group.generation += 1
    if not group.inflight and not group.routed and group.partitions != topic.options.partitions:
        _resize(group, topic.options.partitions)
    members = group.members
    n = len(members)
    group.owner = [members[p % n] if n else 0 for p in range(group.partitions)]
    group.sole = members[0] if n and all(m == members[0] for m in group.owner) else 0
    if group.tracking or group.fast != group.sole or not group.sole:
        _track(topic, group)
        _maybe_fast(group)
    group.lot.unpark_all()


def _resize(group: Group, partitions: int) -> None:
    group.partitions = partitions
    group.keys.clear()
    group.holder = [0] * partitions
    group.held = [0] * partitions
    group.ready = [[] for _ in range(partitions)]
    group.turn = 0


def _track(topic: Topic, group: Group) -> None:
    """Switch to tracking: per-partition holders from the in-flight deliveries (once)."""
    group.fast = 0
    if group.tracking:
        return
    group.tracking = True
    base, end, log = topic.base, topic.end, topic.log
    for offset, member in group.inflight.items():
        if base <= offset < end:
            p = group.part[offset] = group.partition(log[offset - base].key, offset)
            group.held[p] += 1
            group.holder[p] = member


def _maybe_fast(group: Group) -> None:
    """Back to the plain cursor when one member owns everything, holds alone and nothing is routed."""
    sole = group.sole
    if sole and not group.routed and all(h in (0, sole) for h in group.holder):
        group.tracking = False
        group.fast = sole
        group.part.clear()
        group.holder = [0] * group.partitions
        group.held = [0] * group.partitions


def on_settle(group: Group, offset: int) -> None:
    """A delivery of ``group`` was settled (tracking mode): a partition held by nobody may move."""
    p = group.part.pop(offset, None)
    if p is None:
        return
    held = group.held[p] = group.held[p] - 1
    if not held:
        if group.holder[p] != group.owner[p]:
            group.lot.unpark_all()
        group.holder[p] = 0


def take_partitioned(topic: Topic, group: Group, member: int, limit: int, max_bytes: int, now: float) -> list[Delivery]:
    """Tracking mode's take (see the module docstring): route, then hand out of the partitions ``member`` may
    take, at most ``limit`` messages and ``max_bytes`` of bodies (at least one)."""
    if group.sole == member:
        _maybe_fast(group)
        if group.fast == member:
            return topic.take(group, member, limit, max_bytes, now)
    base, log = topic.base, topic.log
    ready = group.ready
    woken = False
    inflight, acked = group.inflight, group.acked
    while group.redeliver and group.redeliver[0][0] <= now:
        offset = heapq.heappop(group.redeliver)[1]
        if offset < base or offset in inflight or offset in acked or offset < group.floor:
            continue
        p = group.partition(log[offset - base].key, offset)
        heapq.heappush(ready[p], offset)
        group.routed += 1
        woken = woken or group.owner[p] != member
    if group.next < base:
        group.next = base
        group.floor = max(group.floor, base)
    end = topic.end
    if group.next < end:
        owner = group.owner
        for offset in range(group.next, end):
            p = group.partition(log[offset - base].key, offset)
            ready[p].append(offset)  # larger than every offset routed before: still a heap
            woken = woken or owner[p] != member
        group.routed += end - group.next
        group.next = end
    if woken:
        group.lot.unpark_all()
    out: list[Delivery] = []
    size = 0
    n = group.partitions
    start = group.turn
    group.turn = (start + 1) % n
    owner, holder, held, part, counts = group.owner, group.holder, group.held, group.part, group.counts
    name = topic.name
    for i in range(n):
        p = (start + i) % n
        heap = ready[p]
        if not heap or owner[p] != member or holder[p] not in (0, member):
            continue
        while heap and len(out) < limit:
            offset = heap[0]
            if offset < base:  # discarded by retention while it waited
                heapq.heappop(heap)
                group.routed -= 1
                continue
            m = log[offset - base]
            size += len(m.body)
            if size > max_bytes and out:
                return out
            heapq.heappop(heap)
            group.routed -= 1
            inflight[offset] = member
            attempt = counts.get(offset, 0) + 1
            part[offset] = p
            held[p] += 1
            holder[p] = member
            out.append(
                Delivery(name, m.body, m.headers, m.key, m.message_id, attempt, (topic, group, offset), m.envelope)
            )
        if len(out) >= limit:
            break
    return out


def backlog(topic: Topic, group: Group) -> int:
    """Routed messages waiting in the ready heaps (not discarded)."""
    base = topic.base
    return sum(offset >= base for heap in group.ready for offset in heap) if group.routed else 0
