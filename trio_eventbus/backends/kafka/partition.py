"""The Trio-side state of one assigned Kafka partition: fetched records, the commit frontier, settlement.

A :class:`Partition` lives for one assignment generation (and one rewind epoch) of one partition of a
:class:`~trio_eventbus.backends.kafka.consume.GroupConsumer`, which feeds its queued records to the bus
(:func:`decode` turns them into deliveries) and commits what its frontier allows.

Commit frontier
    Per partition the offsets handed to the bus are kept in order; ``settle`` marks one done (ACK or TERM,
    i.e. handled or dead-lettered), and the commit position is the end of the contiguous done prefix. A
    message that is still running, queued in a lane, or NAK'ed is never committed past. Commits are batched:
    ``commit_interval`` after the first advance, at once when ``commit_batch`` offsets advanced.

Settling (from the bus's lanes, synchronous, never blocks): ACK/TERM advance the frontier and mark the
partition for the group's next commit; NAK holds it back and, while the bus runs, asks the group to rewind
the partition (see the group's module docstring). A halted partition (revoked, or rewinding) is fed no more;
its queued records are dropped (fetched again later) and ``drained`` is set once nothing of it is in flight.
Flow control: the partition is resumed in aiokafka once its unsettled records fell to the group's
``resume_at`` (unless the group holds its partitions paused for bytes). Every settled or dropped record's
value size goes back to the group's byte count (``GroupConsumer.released_bytes``).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import trio
from aiokafka import ConsumerRecord, TopicPartition

from ..._abc import Delivery, DeliverySink
from .fetch import record_bytes
from .wire import H_EVENT_ID, H_MESSAGE_ID

if TYPE_CHECKING:
    from .consume import GroupConsumer

__all__ = ["Partition", "decode"]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Partition:
    """Trio-side state of one assigned partition in one assignment generation."""

    __slots__ = (
        "attempts",
        "commit_pos",
        "committed",
        "drained",
        "epoch",
        "gen",
        "group",
        "highwater",
        "in_ready",
        "inflight",
        "naks",
        "offsets",
        "paused",
        "queue",
        "revoked",
        "rewinding",
        "settled",
        "sink",
        "topic",
        "tp",
        "unsettled",
    )

    def __init__(self, group: GroupConsumer, tp: TopicPartition, gen: int, sink: DeliverySink, epoch: int = 0) -> None:
        self.group, self.tp, self.topic, self.gen, self.sink, self.epoch = group, tp, tp.topic, gen, sink, epoch
        self.queue: collections.deque[ConsumerRecord] = collections.deque()  # fetched, not yet fed
        self.offsets: collections.deque[int] = collections.deque()  # fed, not yet in the done prefix
        self.settled: set[int] = set()  # done, but behind an unsettled offset
        self.commit_pos: int | None = None  # end of the done prefix (next offset to read)
        self.committed: int | None = None
        self.unsettled = 0  # queued + fed and not settled
        self.inflight = 0  # fed and not settled
        self.naks = 0
        self.highwater: int | None = None
        self.paused = self.revoked = self.rewinding = self.in_ready = False
        self.drained = trio.Event()  # set once halted (revoked/rewinding) and nothing is in flight
        self.attempts: dict[int, int] = {}  # offset -> delivery attempt, for redelivered (NAK'ed) offsets

    @property
    def halted(self) -> bool:
        return self.revoked or self.rewinding

    def settle(self, offset: int, done: bool, delay: float, size: int) -> None:
        """Settle the record at ``offset`` whose value is ``size`` bytes (``done``: ACK/TERM, else NAK)."""
        self.inflight -= 1
        self.unsettled -= 1
        group = self.group
        group.unsettled_bytes -= size
        if group.bytes_paused:
            group.released_bytes(0)
        if done:
            offsets = self.offsets
            if offsets and offsets[0] == offset:
                offsets.popleft()
                pos = offset + 1
                settled = self.settled
                while offsets and offsets[0] in settled:
                    pos = offsets.popleft() + 1
                    settled.discard(pos - 1)
                self.commit_pos = pos
                if not self.revoked:
                    group.mark_dirty(self)
            else:
                self.settled.add(offset)
        else:
            self.naks += 1
            self.attempts[offset] = self.attempts.get(offset, 1)
            if not self.halted:
                group.rewind(self, delay)
        halted = self.revoked or self.rewinding
        if self.paused and not halted and self.unsettled <= group.resume_at and not group.bytes_paused:
            self.paused = False
            group.request_flow(self, pause=False)
        if halted and self.inflight <= 0:
            self.drained.set()

    def halt(self) -> int:
        """Stop feeding: drop the queued records (fetched again later); the number dropped."""
        dropped = len(self.queue)
        size = record_bytes(self.queue)
        self.queue.clear()
        self.unsettled -= dropped
        self.group.released_bytes(size)
        if self.inflight <= 0:
            self.drained.set()
        return dropped

    def revoke(self) -> int:
        self.revoked = True
        return self.halt()

    def pending_commit(self) -> int | None:
        pos = self.commit_pos
        return pos if pos is not None and pos != self.committed else None


def decode(records: list[ConsumerRecord], part: Partition) -> list[Delivery]:
    """Deliveries of ``records`` (one partition, offset order); appends their offsets to ``part.offsets``."""
    topic, attempts = part.topic, part.attempts
    out: list[Delivery] = []
    append, offsets = out.append, part.offsets
    for record in records:
        offset = record.offset
        raw = record.headers
        headers: Mapping[str, str]
        if raw:
            decoded = {k: "" if v is None else v.decode("utf-8", "surrogateescape") for k, v in raw}
            message_id = decoded.pop(H_MESSAGE_ID, None) or decoded.get(H_EVENT_ID)
            headers = decoded
        else:
            headers, message_id = _NO_HEADERS, None
        key = record.key
        value = record.value
        append(
            Delivery(
                topic,
                b"" if value is None else value,
                headers,
                None if key is None else key.decode("utf-8", "surrogateescape"),
                message_id,
                attempts.get(offset, 1) if attempts else 1,
                (part, offset),
            )
        )
        offsets.append(offset)
    return out
