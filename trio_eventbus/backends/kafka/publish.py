"""The Kafka publishing path: bus publish batches → one record batch per partition → outcomes.

:meth:`AioPublisher.send` (Trio thread) queues a bus publish batch in a :class:`LoopInbox` and returns at once:
no round trip. The inbox's one worker on the asyncio loop takes everything queued meanwhile (several bus
batches when the loop is busy, one otherwise) and runs :meth:`AioPublisher.submit` on it. ``submit`` does what
``AIOKafkaProducer.send`` does per message (serialize, check the size, partition: a keyed record with the
function ``KafkaConfig.partitioner`` names, murmur2 as the Java client or FNV-1a as Go's sarama, remembered per
key and topic; a keyless one on a random available partition), but appends the records to one aiokafka
``BatchBuilder`` per partition and hands each builder over with ``send_batch``: one future and one callback
per partition instead of one coroutine, one future and one callback per message. The producer's idempotence
(sequence numbers per partition batch) applies unchanged.

Ordering: the worker submits in ``send`` order, one submit at a time; records of one partition are appended in
publish order and their builders handed over in that order (aiokafka keeps one queue per partition), so one
key's messages are stored in publish order.

Backpressure: ``send_batch`` waits while the partition's previous batch has not left for the broker (and fails
with ``KafkaTimeoutError`` after ``request_timeout_ms``): the worker waits with it, and what the bus sends
meanwhile stays queued in the inbox. The bus's publish window bounds that queue (a message's window slot is
freed only by its outcome), so the Trio side never waits for the loop.

Outcomes: every message of a builder shares the builder's delivery future; when all futures of one submit are
resolved, :class:`_AckBatch` puts one list of :class:`Outcome` into the outcome pipe, in submit order: one
Outcome for the whole submit when every message was stored, else one per message (failures translated).
Exactly one outcome per message, never none, never two: a failure inside ``submit`` fails the messages it had
not handed over; :meth:`AioPublisher.stop` (the backend's close, on the loop) cancels the worker — builders
already handed over still report, every other message of its submit gets a failed outcome — and fails what is
still queued.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from ..._abc import Outcome, OutgoingMessage
from ..._exceptions import PublishError
from .._bridge import BatchPipe, Bridge, BridgeError, LoopInbox
from .wire import H_MESSAGE_ID, KeyPartitioner, publish_error

__all__ = ["AioPublisher"]

logger = logging.getLogger("trio_eventbus.kafka")

_KEY_CACHE_LIMIT = 1 << 16  # remembered key -> partition mappings per topic
_SUBMIT_CHUNK = 4096  # messages per submit (one outcome list each) when the inbox holds a backlog
_estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes


class _AckBatch:
    """The delivery futures of one ``submit``; reports all their outcomes as one list once resolved."""

    __slots__ = ("failed", "groups", "order", "pipe", "remaining", "sealed")

    def __init__(self, pipe: BatchPipe[list[Outcome]], order: list[int]) -> None:
        self.pipe = pipe
        self.order = order  # every seq of the submit, in submit order
        self.groups: list[tuple[list[int], asyncio.Future[Any]]] = []
        self.failed: list[tuple[int, BaseException]] = []
        self.remaining = 0
        self.sealed = False

    def add(self, seqs: list[int], fut: asyncio.Future[Any]) -> None:
        self.groups.append((seqs, fut))
        self.remaining += 1
        fut.add_done_callback(self._one_done)

    def fail(self, seq: int, exc: BaseException) -> None:
        self.failed.append((seq, exc))

    def seal(self) -> None:
        self.sealed = True
        if self.remaining == 0:
            self._report()

    def _one_done(self, _fut: asyncio.Future[Any]) -> None:
        self.remaining -= 1
        if self.remaining == 0 and self.sealed:
            self._report()

    def _report(self) -> None:
        errors = {seq: publish_error(exc) for seq, exc in self.failed}
        for seqs, fut in self.groups:
            if fut.cancelled():
                error: BaseException | None = PublishError("the kafka producer dropped the message (it stopped)")
            else:
                exc = fut.exception()
                error = None if exc is None else publish_error(exc)
            if error is not None:
                errors.update(dict.fromkeys(seqs, error))
        if sum(len(seqs) for seqs, _ in self.groups) + len(self.failed) != len(self.order):  # a bug: fail safe
            covered = {seq for seqs, _ in self.groups for seq in seqs} | errors.keys()
            lost = PublishError("the kafka backend lost track of this message; it may or may not be stored")
            errors.update((seq, lost) for seq in self.order if seq not in covered)
        # in submit order (the bus's flush frontier then advances without bookkeeping), not partition order
        # the common case, every message stored: one object for the whole submit
        outcomes = [Outcome((seq,), errors.get(seq)) for seq in self.order] if errors else [Outcome(self.order)]
        try:
            if not self.pipe.put_nowait(outcomes):  # cannot happen: the bus's window bounds the pipe
                logger.error("kafka outcome pipe full: %d outcomes lost", len(outcomes))
        except BridgeError:
            logger.debug("kafka outcomes after close dropped: %d", len(outcomes))


class _Topic:
    """What partitioning needs to know about one topic; refreshed once per submit."""

    __slots__ = ("keys", "partitions")

    def __init__(self) -> None:
        self.partitions: list[int] = []
        self.keys: dict[bytes, int] = {}


class AioPublisher:
    """Turns bus publish batches into partition batches of one producer (runs on the bridge's loop)."""

    def __init__(
        self,
        bridge: Bridge,
        producer: AIOKafkaProducer,
        outcomes: BatchPipe[list[Outcome]],
        max_request_size: int,
        partitioner: KeyPartitioner,
    ):
        self._producer = producer
        self._partitioner = partitioner
        self._outcomes = outcomes
        self._max_size = max_request_size
        self._topics: dict[str, _Topic] = {}
        self._inbox: LoopInbox[OutgoingMessage] = LoopInbox(bridge, self._submit_queued)

    def send(self, batch: Sequence[OutgoingMessage]) -> None:
        """Trio thread: queue ``batch`` for submitting, in order; never waits (:class:`BridgeError` if the bridge
        is closed). Every message gets exactly one outcome through the outcome pipe."""
        self._inbox.put(batch)

    async def _submit_queued(self, queued: list[OutgoingMessage]) -> None:
        """The inbox's worker: submit what was queued, in order, in chunks of at most ``_SUBMIT_CHUNK`` (each
        chunk's outcomes come back as soon as its own partition batches are acknowledged, so a backlog frees
        the bus's window progressively). Cancelled, the chunks not yet submitted fail too."""
        for start in range(0, len(queued), _SUBMIT_CHUNK):
            try:
                await self.submit(queued[start : start + _SUBMIT_CHUNK])
            except asyncio.CancelledError:
                self._fail_unsubmitted(queued[start + _SUBMIT_CHUNK :])
                raise

    def _fail_unsubmitted(self, messages: Sequence[OutgoingMessage]) -> None:
        if messages:
            error = PublishError("the kafka backend closed before the message was handed to the producer")
            acks = _AckBatch(self._outcomes, [msg.seq for msg in messages])
            for msg in messages:
                acks.fail(msg.seq, error)
            acks.seal()

    async def flush(self) -> None:
        """Loop thread: wait until every message sent so far was submitted, then until the producer sent it."""
        await self._inbox.wait_idle()
        await self._producer.flush()

    async def stop(self) -> None:
        """Loop thread, at close: cancel the worker (its submit fails what it had not handed over) and fail what
        is still queued. Call before the producer stops and the outcome pipe closes."""
        self._fail_unsubmitted(await self._inbox.stop())

    async def _partitions(self, topic: str, fresh: dict[str, tuple[_Topic, list[int]]]) -> tuple[_Topic, list[int]]:
        """(topic state, available partitions), metadata checked once per topic and submit."""
        known = fresh.get(topic)
        if known is not None:
            return known
        await self._producer.partitions_for(topic)  # waits for metadata (KafkaTimeoutError if none)
        cluster = self._producer.client.cluster
        partitions = sorted(cluster.partitions_for_topic(topic) or ())
        available = sorted(cluster.available_partitions_for_topic(topic) or ()) or partitions
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic()
        if state.partitions != partitions or len(state.keys) > _KEY_CACHE_LIMIT:
            state.partitions = partitions
            state.keys = {}
        fresh[topic] = (state, available)
        return state, available

    async def submit(self, batch: Sequence[OutgoingMessage]) -> None:
        """Hand ``batch`` to the producer; one outcome per message follows through the outcome pipe."""
        producer = self._producer
        acks = _AckBatch(self._outcomes, [msg.seq for msg in batch])
        fresh: dict[str, tuple[_Topic, list[int]]] = {}
        open_batches: dict[tuple[str, int], tuple[Any, list[int]]] = {}
        sticky: dict[str, int] = {}  # keyless messages of one submit share one partition per topic
        done = 0
        try:
            for msg in batch:
                topic = msg.topic
                known = fresh.get(topic)  # no coroutine per message: metadata is awaited once per topic and submit
                if known is None:
                    try:
                        known = await self._partitions(topic, fresh)
                    except Exception as exc:
                        acks.fail(msg.seq, exc)
                        done += 1
                        continue
                state, available = known
                given = msg.headers
                headers = [(k, v.encode("utf-8", "surrogateescape")) for k, v in given.items()] if given else []
                mid = msg.message_id
                if mid is not None:
                    headers.append((H_MESSAGE_ID, mid.encode("utf-8", "surrogateescape")))
                key = None if msg.key is None else msg.key.encode("utf-8", "surrogateescape")
                body = msg.body
                size = _estimate(key, body, headers)
                if size > self._max_size:
                    acks.fail(
                        msg.seq,
                        MessageSizeTooLargeError(
                            f"the message is {size} bytes when serialized, above max_request_size={self._max_size}"
                        ),
                    )
                    done += 1
                    continue
                if key is None:
                    partition = sticky.get(topic)
                    if partition is None:
                        partition = sticky[topic] = random.choice(available)
                elif (cached := state.keys.get(key)) is not None:
                    partition = cached
                else:
                    partition = state.keys[key] = self._partitioner(key, state.partitions)
                slot = (topic, partition)
                entry = open_batches.get(slot)
                if entry is None:
                    entry = open_batches[slot] = (producer.create_batch(), [])
                if entry[0].append(timestamp=None, key=key, value=body, headers=headers) is None:
                    del open_batches[slot]  # full: hand it over, continue in a new one (order is kept)
                    await self._send(entry, slot, acks)
                    entry = open_batches[slot] = (producer.create_batch(), [])
                    if entry[0].append(timestamp=None, key=key, value=body, headers=headers) is None:
                        acks.fail(msg.seq, MessageSizeTooLargeError(f"a {size}-byte message fits no batch"))
                        done += 1
                        continue
                entry[1].append(msg.seq)
                done += 1
            while open_batches:
                slot, entry = next(iter(open_batches.items()))
                del open_batches[slot]
                await self._send(entry, slot, acks)
        except asyncio.CancelledError:  # the bus is stopping: what was not handed over fails
            self._fail_rest(acks, open_batches, batch[done:], None)
            raise
        except Exception as exc:  # a bug or an unexpected client error: fail the rest, keep the worker alive
            logger.error("kafka submit failed, %d messages fail with it", len(batch) - done, exc_info=True)
            self._fail_rest(acks, open_batches, batch[done:], exc)
        finally:
            acks.seal()

    @staticmethod
    def _fail_rest(
        acks: _AckBatch,
        open_batches: dict[tuple[str, int], tuple[Any, list[int]]],
        rest: Sequence[OutgoingMessage],
        exc: BaseException | None,
    ) -> None:
        error = (
            PublishError("publish cancelled: the bus stopped before the message reached kafka")
            if exc is None
            else publish_error(exc)
        )
        for _, seqs in open_batches.values():
            for seq in seqs:
                acks.fail(seq, error)
        for msg in rest:
            acks.fail(msg.seq, error)

    async def _send(self, entry: tuple[Any, list[int]], slot: tuple[str, int], acks: _AckBatch) -> None:
        builder, seqs = entry
        try:
            fut = await self._producer.send_batch(builder, slot[0], partition=slot[1])
        except asyncio.CancelledError:
            stopped = PublishError("publish cancelled: the bus stopped before the message reached kafka")
            for seq in seqs:
                acks.fail(seq, stopped)
            raise
        except Exception as exc:
            for seq in seqs:
                acks.fail(seq, exc)
        else:
            acks.add(seqs, fut)
