"""The asyncio half of a Kafka consumer group (see :mod:`trio_eventbus.backends.kafka.consume`).

:class:`AioGroup` owns one ``AIOKafkaConsumer`` and runs on the bridge's asyncio loop: its fetch loop puts each
``getmany`` batch into the group's :class:`~trio_eventbus.backends._bridge.BatchPipe` as one item; its rebalance
listener puts "revoked"/"assigned" events into the same pipe, so the Trio side sees records and rebalances
in the order they happened. Every item carries the assignment *generation* current when it was made (and
records the partition's rewind *epoch*), so the Trio side can drop records fetched for an older assignment
or position. Everything here is called on the loop, by crossings or ``call_soon`` posts from Trio.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import OffsetAndMetadata

from .._bridge import BatchPipe, BridgeError

__all__ = ["AioGroup", "Assigned", "Item", "Records", "Revoked", "Rewound", "record_bytes"]

logger = logging.getLogger("trio_eventbus.kafka")


# ------------------------------------------------------------------------------------- pipe items


class Records:
    """One ``getmany`` batch; ``sizes``: the bytes of the record values, per partition."""

    __slots__ = ("epochs", "gen", "highwater", "records", "sizes")

    def __init__(
        self,
        gen: int,
        records: dict[TopicPartition, list[ConsumerRecord]],
        hw: dict[Any, Any],
        epochs: dict[TopicPartition, int] | None,
        sizes: dict[TopicPartition, int],
    ) -> None:
        self.gen, self.records, self.highwater, self.epochs, self.sizes = gen, records, hw, epochs, sizes


class Revoked:
    __slots__ = ("fut", "gen", "tps")

    def __init__(self, gen: int, tps: frozenset[TopicPartition], fut: asyncio.Future[dict[Any, int]]) -> None:
        self.gen, self.tps, self.fut = gen, tps, fut


class Assigned:
    __slots__ = ("gen", "topics", "tps")

    def __init__(self, gen: int, tps: frozenset[TopicPartition], topics: frozenset[str]) -> None:
        self.gen, self.tps, self.topics = gen, tps, topics


class Rewound:
    __slots__ = ("epoch", "gen", "position", "tp")

    def __init__(self, gen: int, tp: TopicPartition, position: int, epoch: int) -> None:
        self.gen, self.tp, self.position, self.epoch = gen, tp, position, epoch


Item = Records | Revoked | Assigned | Rewound


def record_bytes(records: Iterable[ConsumerRecord]) -> int:
    """The bytes of the values of ``records`` (what the bus's byte bounds count: ``len(Delivery.body)``)."""
    return sum([len(value) for record in records if (value := record.value) is not None])


# ----------------------------------------------------------------------------------- asyncio half


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, group: AioGroup) -> None:
        self._group = group

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._group.on_revoked(frozenset(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._group.on_assigned(frozenset(assigned))


class AioGroup:
    """The asyncio half (see the module docstring). Every method runs on the bridge's loop."""

    def __init__(self, consumer: AIOKafkaConsumer, pipe: BatchPipe[Item], drain_timeout: float) -> None:
        self.consumer = consumer
        self.pipe = pipe
        self.gen = 0
        self.closing = False
        self.listener = _Listener(self)
        self._drain_timeout = drain_timeout
        self.fetch_errors = 0
        self.epochs: dict[TopicPartition, int] = {}  # rewinds per partition in this generation

    @classmethod
    async def create(
        cls, options: Mapping[str, Any], topics: Sequence[str], pipe: BatchPipe[Item], drain_timeout: float
    ) -> AioGroup:
        consumer = AIOKafkaConsumer(**options)
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        group = cls(consumer, pipe, drain_timeout)
        consumer.subscribe(topics=list(topics), listener=group.listener)
        return group

    async def subscribe(self, topics: Sequence[str]) -> None:
        self.consumer.subscribe(topics=list(topics), listener=self.listener)

    async def on_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        self.gen += 1  # records fetched from now on belong to the next assignment
        self.epochs = {}
        if not revoked or self.closing:
            return
        fut: asyncio.Future[dict[Any, int]] = asyncio.get_running_loop().create_future()
        try:
            await self.pipe.put(Revoked(self.gen - 1, revoked, fut))
            offsets = await asyncio.wait_for(fut, self._drain_timeout + 5.0)
        except (TimeoutError, BridgeError):
            return  # closing, or Trio did not answer: commit nothing (the next owner may redo some work)
        if offsets:
            try:
                await self._commit_revoked(offsets)
            except KafkaError as exc:
                logger.warning("commit of revoked partitions failed (their messages will be redelivered): %r", exc)

    async def _commit_revoked(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit for the generation being revoked.

        ``consumer.commit`` checks the offsets against the *current* subscription, which a ``subscribe()``
        that extends the topic list has already replaced (its assignment is still empty), so this goes to
        the group coordinator directly, as aiokafka's own pre-rebalance auto-commit does (private API,
        aiokafka 0.11-0.14; the public call is the fallback).
        """
        coordinator = getattr(self.consumer, "_coordinator", None)
        if coordinator is None or not hasattr(coordinator, "commit_offsets"):
            await self.consumer.commit(offsets)
            return
        await coordinator.commit_offsets(None, {tp: OffsetAndMetadata(pos, "") for tp, pos in offsets.items()})

    async def on_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        if self.closing:
            return
        topics = frozenset(self.consumer.subscription())
        try:
            await self.pipe.put(Assigned(self.gen, assigned, topics))
        except BridgeError:
            return

    async def fetch_forever(
        self, timeout_ms: int, max_records: int, backoff: float, batch_bytes: int, max_message_bytes: int
    ) -> None:
        """Fetch until cancelled; each non-empty batch becomes one pipe item. Fatal errors propagate.

        A batch holds at most ``max_records`` records and about ``batch_bytes`` of values: aiokafka's fetch
        limits count bytes on the wire (compressed), so the records asked of one ``getmany`` follow the mean
        value size of the last batch (starting as if every record were ``max_message_bytes``).
        """
        consumer, pipe = self.consumer, self.pipe
        limit = max(1, min(max_records, batch_bytes // max_message_bytes))
        while True:
            try:
                records = await consumer.getmany(timeout_ms=timeout_ms, max_records=limit)
            except ConsumerStoppedError:
                return
            except KafkaError as exc:
                if not (exc.retriable or isinstance(exc, UnknownTopicOrPartitionError)):
                    raise
                self.fetch_errors += 1
                logger.warning("kafka fetch failed, retrying: %r", exc)
                await asyncio.sleep(backoff)
                continue
            if records:
                highwater = {tp: consumer.highwater(tp) for tp in records}
                ep = self.epochs
                epochs = {tp: ep[tp] for tp in records if tp in ep} if ep else None
                sizes = {tp: record_bytes(batch) for tp, batch in records.items()}
                total, count = sum(sizes.values()), sum(map(len, records.values()))
                limit = max(1, min(max_records, batch_bytes * count // total)) if total else max_records
                await pipe.put(Records(self.gen, records, highwater, epochs, sizes))

    def pause(self, gen: int, tps: Sequence[TopicPartition]) -> None:
        self._flow(gen, tps, self.consumer.pause)

    def resume(self, gen: int, tps: Sequence[TopicPartition]) -> None:
        self._flow(gen, tps, self.consumer.resume)

    def _flow(self, gen: int, tps: Sequence[TopicPartition], action: Any) -> None:
        if gen != self.gen or self.closing:
            return  # the partitions were revoked since: a new assignment starts unpaused
        try:
            assigned = self.consumer.assignment()
            if mine := [tp for tp in tps if tp in assigned]:
                action(*mine)
        except IllegalStateError:
            pass

    async def rewind(self, gen: int, tp: TopicPartition, position: int) -> bool:
        """Fetch ``tp`` again from ``position`` (it is paused: nothing of it is fetched meanwhile).

        The marker goes into the pipe *before* the seek: every record of the new epoch follows it.
        """
        if gen != self.gen or self.closing:
            return False
        epoch = self.epochs.get(tp, 0) + 1
        await self.pipe.put(Rewound(gen, tp, position, epoch))
        if gen != self.gen or self.closing:
            return False
        try:
            self.consumer.seek(tp, position)
        except IllegalStateError:
            return False
        self.epochs[tp] = epoch
        self._flow(gen, [tp], self.consumer.resume)
        return True

    async def commit(self, gen: int, offsets: dict[TopicPartition, int]) -> bool:
        if gen != self.gen or self.closing:
            return False
        return await self._commit(offsets, logging.DEBUG, "commit skipped, the group is rebalancing")

    async def final_commit(self, offsets: dict[TopicPartition, int]) -> bool:
        self.closing = True
        assigned = self.consumer.assignment()  # a revocation the Trio side never saw (hard stop) must not
        offsets = {tp: pos for tp, pos in offsets.items() if tp in assigned}  # fail the whole commit
        if not offsets:
            return True
        return await self._commit(offsets, logging.WARNING, "final commit failed (handled ones are redelivered)")

    async def _commit(self, offsets: dict[TopicPartition, int], level: int, failure: str) -> bool:
        """Commit ``offsets``; False (logged at ``level``) when the group refuses it (rebalancing or left)."""
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            logger.log(level, "%s: %r", failure, exc)
            return False
        return True

    async def stop(self) -> None:
        self.closing = True
        try:
            await self.consumer.stop()
        finally:
            self.pipe.close()
