"""One Kafka consumer group of a bus: a single aiokafka consumer over every topic the bus subscribed with it.

The seeds' pre-subscription design: a bus has one consumer per group, subscribed to all its topics of that
group; a later subscription extends the topic list (``consumer.subscribe``), which makes the group rebalance
but keeps every committed offset, so the other topics continue where they were.

Two halves, joined by one :class:`~trio_eventbus.backends._bridge.BatchPipe` (asyncio → Trio, FIFO):

* :class:`~trio_eventbus.backends.kafka.fetch.AioGroup` on the asyncio loop: the fetch loop and the
  rebalance listener put fetch batches and rebalance events into the pipe, in the order they happened (one
  Trio wake-up per batch, never per record).
* :class:`GroupConsumer` in Trio: a reader task drains the pipe into per-partition queues (it never blocks
  on the bus, so rebalance events are seen at once), a feeder task hands queued records to the
  subscription's sink in chunks of up to 1024 (awaiting while the bus's lanes are full), a committer task
  commits handled offsets in batches (one crossing per batch).

Ordering
    Records of one partition reach the sink in offset order, so one key's messages arrive in publish order;
    partitions are fed round-robin.

Commit frontier
    Kept per partition (:mod:`trio_eventbus.backends.kafka.partition`): a message that is still running,
    queued in a lane, or NAK'ed is never committed past. Commits are batched: ``commit_interval`` after the
    first advance, at once when ``commit_batch`` offsets advanced.

NAK
    At shutdown (handlers cancelled) a NAK only holds the frontier back: the message and every later one of
    its partition are redelivered after the restart or the next rebalance. While the bus runs (a dead-letter
    publish that failed), the partition is *rewound*: feeding stops, its in-flight messages finish (up to
    ``rebalance_drain_timeout``), after the NAK's delay the consumer seeks back to the frontier and the
    records come again — the NAK'ed one with ``attempt`` + 1, later ones as duplicates (at least once).

Rebalance
    On revoke the reader stops feeding the revoked partitions at once (their queued records are dropped:
    the next owner fetches them from the committed offset), waits up to ``rebalance_drain_timeout`` for
    their in-flight messages to settle, and hands the safe commit positions back to the listener, which
    commits them before the group proceeds. Records fetched for an older generation or rewind epoch are
    dropped.

Backpressure and memory
    A partition whose unsettled records (queued + in the bus) exceed ``pause_threshold`` is paused in
    aiokafka (its prefetched records are discarded there and fetched again on resume) and resumed once half
    of them settled; every partition of the group is paused while the group's unsettled record bytes exceed
    ``pause_bytes``, and resumed once half of them settled (or were dropped). The pipe holds at most 4 fetch
    batches; the fetch loop waits when it is full. What a group holds, buffer by buffer (``M`` is the bus's
    ``max_message_bytes``; the byte defaults are derived from the bus's options, see ``KafkaConfig``):

    ==========================================  ==============================  =================================
    buffer                                      count bound                     byte bound
    ==========================================  ==============================  =================================
    aiokafka's prefetched records               one fetch per partition         ``max_partition_fetch_bytes``
                                                                                per partition, ``fetch_max_bytes``
                                                                                per fetch response (defaults
                                                                                ``max(1 MiB, M)``, 16 of those);
                                                                                a larger record batch comes whole
    one ``getmany`` batch (one pipe item)       ``max_poll_records``            ~``fetch_max_bytes`` of values
                                                                                (records asked per ``getmany``
                                                                                follow the mean value size: wire
                                                                                limits count compressed bytes)
    the pipe (asyncio -> Trio)                  4 batches + rebalance events    4 batches (the reader empties it
                                                                                at once: it never waits on the bus)
    partition queues (fetched, not yet fed)     ``pause_threshold`` unsettled   ``pause_bytes`` unsettled per
    + records handed to the bus                 per partition (paused beyond)   group (paused beyond; default
                                                                                ``max_buffered_bytes`` +
                                                                                ``fetch_max_bytes``)
    one feeder hand-off (``sink.deliver``)      1,024 records                   taken from the queues above
    the bus's lanes and workers                 ``lanes * lane_buffer +         ``BusOptions.max_buffered_bytes``
                                                worker_buffer``                 (the router waits beyond it)
    ==========================================  ==============================  =================================

    Pausing is asynchronous (a post to the loop): what is already fetched or in the pipe still arrives, so a
    group's unsettled bytes may pass ``pause_bytes`` by the batches in flight (a few fetch responses).
    Pausing, not withholding ``getmany``, keeps the consumer polling (``max_poll_interval_ms``).

Lifecycle and cancellation
    The reader, feeder, committer (and revoke/rewind helpers) run in the backend's nursery, for the block of
    ``KafkaBackend.open``. ``stop_fetching`` cancels the fetch loop and the feeder; records not yet handed to
    the bus are dropped (not committed, so redelivered later). ``close`` (the backend's exit) stops the
    committer, answers pending revocations, commits the safe prefix of every partition still assigned, then
    leaves the group (LeaveGroup: the other members rebalance at once instead of after the session timeout).
    ``close`` relies on none of the group's Trio tasks: under a hard stop they are cancelled already, and it
    does its commit inline, in one crossing (the bridge still works in the shielded exit).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from typing import Any

import trio
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from ..._abc import Delivery, DeliverySink
from ..._exceptions import BackendUnavailable
from .._bridge import BatchPipe, Bridge, BridgeError
from .fetch import AioGroup, Assigned, Item, Records, Revoked, Rewound
from .partition import Partition, decode
from .stats import KafkaGroupStatistics

__all__ = ["GroupConsumer"]

logger = logging.getLogger("trio_eventbus.kafka")

_PIPE_ITEMS = 4  # fetch batches buffered between the loops (plus rebalance events)
_FEED_CHUNK = 1024  # records per sink.deliver call (one lane wake-up per lane and chunk)
_FINAL_COMMIT_TIMEOUT = 5.0


class GroupConsumer:
    """The Trio half of one consumer group (see the module docstring)."""

    def __init__(
        self,
        name: str,
        bridge: Bridge,
        nursery: trio.Nursery,
        consumer_options: Mapping[str, Any],
        *,
        max_poll_records: int,
        batch_bytes: int,
        max_message_bytes: int,
        fetch_timeout_ms: int,
        retry_backoff: float,
        pause_threshold: int,
        pause_bytes: int,
        commit_interval: float,
        commit_batch: int,
        drain_timeout: float,
    ) -> None:
        self.name = name
        self._bridge = bridge
        self._nursery = nursery
        self._options = consumer_options
        self._max_poll_records = max_poll_records
        self._batch_bytes = batch_bytes
        self._max_message_bytes = max_message_bytes
        self._fetch_timeout_ms = fetch_timeout_ms
        self._retry_backoff = retry_backoff
        self.pause_at = pause_threshold
        self.resume_at = pause_threshold // 2
        self.pause_bytes = pause_bytes
        self.resume_bytes = pause_bytes // 2
        self.unsettled_bytes = 0  # record values fetched and not settled (queued + in the bus), every partition
        self.unsettled_bytes_max = 0
        self.bytes_paused = False
        self._commit_interval = commit_interval
        self._commit_batch = commit_batch
        self._drain_timeout = drain_timeout
        # one put per fetch batch: nothing to coalesce, so wake Trio at once rather than after the loop's step
        self._pipe: BatchPipe[Item] = BatchPipe(bridge, _PIPE_ITEMS, eager_wake=True)
        self._aio: AioGroup | None = None
        self._sinks: dict[str, DeliverySink] = {}
        self._parts: dict[TopicPartition, Partition] = {}
        self._gen = 0
        self._live_waiters: list[tuple[str, trio.Event]] = []
        self._ready: collections.deque[Partition] = collections.deque()
        self._ready_lot = trio.lowlevel.ParkingLot()
        self._dirty: set[Partition] = set()
        self._advanced = 0
        self._commit_wanted = trio.Event()
        self._commit_urgent = trio.Event()
        self._fetch_scope = trio.CancelScope()
        self._commit_scope = trio.CancelScope()
        self._fetching_done = trio.Event()
        self._fetching = False
        self._pending_revokes: list[tuple[list[Partition], asyncio.Future[dict[Any, int]]]] = []
        self._stopped = False
        self._closed = False
        # statistics
        self.rebalances = 0
        self.commits = 0
        self.commit_failures = 0
        self.dropped = 0
        self.stale = 0
        self.rewinds = 0

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self, topic: str, sink: DeliverySink) -> trio.Event:
        """Create and start the consumer subscribed to ``topic``; start the Trio tasks.

        Returns an event set once an assignment covering ``topic`` arrived (the subscription is live).
        Raises the native error when the consumer cannot start (the caller translates it).
        """
        self._sinks[topic] = sink
        live = self._live_waiter(topic)
        self._aio = await self._bridge.run(AioGroup.create, self._options, [topic], self._pipe, self._drain_timeout)
        self._nursery.start_soon(self._reader, name=f"teb-kafka-reader-{self.name}")
        self._nursery.start_soon(self._committer, name=f"teb-kafka-committer-{self.name}")
        self._fetching = True
        self._nursery.start_soon(self._fetch_and_feed, name=f"teb-kafka-fetch-{self.name}")
        return live

    async def add(self, topic: str, sink: DeliverySink) -> trio.Event:
        """Extend the subscription by ``topic`` (the group rebalances; committed offsets are kept)."""
        assert self._aio is not None
        self._sinks[topic] = sink
        live = self._live_waiter(topic)
        await self._bridge.run(self._aio.subscribe, sorted(self._sinks))
        return live

    def _live_waiter(self, topic: str) -> trio.Event:
        event = trio.Event()
        self._live_waiters.append((topic, event))
        return event

    async def stop_fetching(self) -> None:
        """Stop the fetch loop and the feeder; the sinks are not called after this returns."""
        self._stopped = True
        self._fetch_scope.cancel()
        if self._fetching:
            await self._fetching_done.wait()

    async def close(self) -> None:
        """Commit the safe prefix of every partition, answer pending revocations, leave the group."""
        if self._closed or self._aio is None:
            return
        self._closed = True
        for _, event in self._live_waiters:  # subscribe() calls still waiting for an assignment
            event.set()
        self._live_waiters = []
        await self.stop_fetching()
        self._commit_scope.cancel()
        for parts, fut in self._pending_revokes:
            self._answer_revoke(parts, fut)
        offsets = self._collect_commits(every_partition=True)
        with trio.move_on_after(_FINAL_COMMIT_TIMEOUT) as cs:
            try:
                if await self._bridge.run(self._aio.final_commit, offsets):
                    self._mark_committed(offsets)
            except KafkaError as exc:
                logger.warning("final commit of group %r failed: %r", self.name, exc)
        if cs.cancelled_caught:
            logger.warning("final commit of group %r timed out", self.name)
        await self._bridge.run(self._aio.stop)

    async def aio_stop(self) -> None:
        """Loop thread: stop the aiokafka consumer if :meth:`close` did not get to it (idempotent)."""
        if self._aio is not None:
            await self._aio.stop()

    # -- tasks -----------------------------------------------------------------------------------------

    async def _fetch_and_feed(self) -> None:
        try:
            with self._fetch_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._feeder)
                    await self._fetch()
        finally:
            self._fetching_done.set()

    async def _fetch(self) -> None:
        assert self._aio is not None
        try:
            await self._bridge.run(
                self._aio.fetch_forever,
                self._fetch_timeout_ms,
                self._max_poll_records,
                self._retry_backoff,
                self._batch_bytes,
                self._max_message_bytes,
            )
        except KafkaError as exc:
            raise BackendUnavailable(f"kafka consumer of group {self.name!r} failed: {exc!r}") from exc
        raise BackendUnavailable(f"kafka consumer of group {self.name!r} stopped unexpectedly")

    async def _reader(self) -> None:
        pipe = self._pipe
        while True:
            try:
                items = await pipe.receive_batch(64)
            except trio.EndOfChannel:
                return
            for item in items:
                if type(item) is Records:
                    self._on_records(item)
                elif type(item) is Revoked:
                    self._on_revoked(item)
                elif type(item) is Rewound:
                    self._on_rewound(item)
                else:
                    assert isinstance(item, Assigned)
                    self._on_assigned(item)

    def _on_records(self, item: Records) -> None:
        parts = self._parts
        gen = item.gen
        epochs = item.epochs
        woke = False
        for tp, records in item.records.items():
            part = parts.get(tp)
            if (
                part is None
                or part.gen != gen
                or part.halted
                or self._stopped
                or (epochs.get(tp, 0) if epochs else 0) != part.epoch
            ):
                self.stale += len(records)
                continue
            part.queue.extend(records)
            part.unsettled += len(records)
            self.unsettled_bytes += item.sizes[tp]
            hw = item.highwater.get(tp)
            if hw is not None:
                part.highwater = hw
            if not part.in_ready:
                part.in_ready = True
                self._ready.append(part)
                woke = True
            if not part.paused and (part.unsettled > self.pause_at or self.bytes_paused):
                part.paused = True
                self.request_flow(part, pause=True)
        if self.unsettled_bytes > self.unsettled_bytes_max:
            self.unsettled_bytes_max = self.unsettled_bytes
        if self.unsettled_bytes > self.pause_bytes and not self.bytes_paused:
            self._pause_for_bytes()
        if woke:
            self._ready_lot.unpark_all()

    def _pause_for_bytes(self) -> None:
        """The group holds more than ``pause_bytes`` of unsettled records: pause every partition."""
        self.bytes_paused = True
        logger.debug("group %r holds %d unsettled bytes: pausing its partitions", self.name, self.unsettled_bytes)
        for part in self._parts.values():
            if not part.paused and not part.halted:
                part.paused = True
                self.request_flow(part, pause=True)

    def released_bytes(self, size: int) -> None:
        """``size`` bytes of records were settled or dropped (from ``Partition``; sync, never blocks; a settle
        subtracts inline and calls this with 0 only while paused): once half of ``pause_bytes`` is free,
        resume the partitions that their record counts do not hold paused."""
        left = self.unsettled_bytes = self.unsettled_bytes - size
        if self.bytes_paused and left <= self.resume_bytes:
            self.bytes_paused = False
            for part in self._parts.values():
                if part.paused and not part.halted and part.unsettled <= self.resume_at:
                    part.paused = False
                    self.request_flow(part, pause=False)

    def _on_revoked(self, item: Revoked) -> None:
        self.rebalances += 1
        parts = [p for tp in item.tps if (p := self._parts.pop(tp, None)) is not None]
        for part in parts:
            self.dropped += part.revoke()
        self._pending_revokes.append((parts, item.fut))
        self._nursery.start_soon(self._drain_revoked, parts, item.fut, name=f"teb-kafka-revoke-{self.name}")

    async def _drain_revoked(self, parts: list[Partition], fut: asyncio.Future[dict[Any, int]]) -> None:
        with trio.move_on_after(self._drain_timeout) as cs:
            for part in parts:
                await part.drained.wait()
        if cs.cancelled_caught:
            busy = sum(p.inflight for p in parts)
            logger.warning(
                "group %r: %d messages of revoked partitions still running after %.1fs; they may be redelivered",
                self.name,
                busy,
                self._drain_timeout,
            )
        self._answer_revoke(parts, fut)

    def _answer_revoke(self, parts: list[Partition], fut: asyncio.Future[dict[Any, int]]) -> None:
        entry = (parts, fut)
        if entry not in self._pending_revokes:
            return
        self._pending_revokes.remove(entry)
        offsets: dict[Any, int] = {}
        for part in parts:
            pos = part.pending_commit()
            if pos is not None:
                offsets[part.tp] = pos
                part.committed = pos
            self._dirty.discard(part)
        try:
            self._bridge.call_soon(_resolve, fut, offsets)
        except BridgeError:
            pass

    def _on_assigned(self, item: Assigned) -> None:
        self._gen = item.gen
        for tp in item.tps:
            sink = self._sinks.get(tp.topic)
            if sink is None:  # cannot happen: we subscribe only topics that have a sink
                logger.error("group %r was assigned %s, a topic it has no subscription for", self.name, tp)
                continue
            self._parts[tp] = Partition(self, tp, item.gen, sink)
        waiters = []
        for topic, event in self._live_waiters:
            if topic in item.topics:
                event.set()
            else:
                waiters.append((topic, event))
        self._live_waiters = waiters

    def rewind(self, part: Partition, delay: float) -> None:
        """A NAK outside shutdown (e.g. its dead-letter publish failed): stop feeding the partition, let its
        in-flight messages finish, then fetch it again from the NAK'ed offset (with later ones: duplicates).
        At shutdown a NAK only holds the commit frontier back (redelivered after the restart)."""
        if self._stopped or self._closed:
            return
        part.rewinding = True
        self.dropped += part.halt()
        if not part.paused:
            part.paused = True
            self.request_flow(part, pause=True, force=True)
        self.rewinds += 1
        self._nursery.start_soon(self._rewind, part, delay, name=f"teb-kafka-rewind-{self.name}")

    async def _rewind(self, part: Partition, delay: float) -> None:
        assert self._aio is not None
        with trio.move_on_after(self._drain_timeout):
            await part.drained.wait()
        await trio.sleep(max(0.0, delay))
        if part.revoked or self._stopped or self._parts.get(part.tp) is not part or not part.offsets:
            return  # a rebalance or the shutdown took over
        position = part.offsets[0]  # the commit frontier: the first NAK'ed (or still running) offset
        try:
            await self._bridge.run(self._aio.rewind, part.gen, part.tp, position)
        except (KafkaError, BridgeError) as exc:
            logger.warning("group %r: rewinding %s failed (redelivered after a rebalance): %r", self.name, part.tp, exc)

    def _on_rewound(self, item: Rewound) -> None:
        old = self._parts.get(item.tp)
        if old is None or old.gen != item.gen or not old.rewinding:
            return
        new = Partition(self, item.tp, item.gen, old.sink, item.epoch)
        new.committed, new.highwater, new.naks = old.committed, old.highwater, old.naks
        new.attempts = {offset: n + 1 for offset, n in old.attempts.items() if offset >= item.position}
        if old.pending_commit() is not None:
            new.commit_pos = old.commit_pos
            self.mark_dirty(new)
        self._parts[item.tp] = new
        logger.info("group %r: %s rewound to offset %d", self.name, item.tp, item.position)

    async def _feeder(self) -> None:
        """Hand queued records to the sinks: up to ``_FEED_CHUNK`` per call, taken round-robin from the ready
        partitions of one sink (in offset order per partition), so each lane wakes once for a run of records."""
        ready = self._ready
        while True:
            while not ready:
                await self._ready_lot.park()
            sink: DeliverySink | None = None
            deliveries: list[Delivery] = []
            budget = _FEED_CHUNK
            for _ in range(len(ready)):
                part = ready[0]
                if sink is not None and part.sink is not sink:
                    break  # another subscription's partition: its own call
                ready.popleft()
                part.in_ready = False
                queue = part.queue
                if part.halted or not queue:
                    continue
                n = min(len(queue), budget)
                popleft = queue.popleft
                records = [popleft() for _ in range(n)]
                if queue:
                    part.in_ready = True
                    ready.append(part)
                deliveries += decode(records, part)
                part.inflight += n
                sink = part.sink
                budget -= n
                if budget <= 0:
                    break
            if sink is None:
                continue
            try:
                await sink.deliver(deliveries)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # the bus's lanes are gone (hard stop): stop feeding; nothing undelivered is committed
                logger.debug("group %r: the bus stopped taking deliveries", self.name)
                return

    async def _committer(self) -> None:
        with self._commit_scope:
            while True:
                await self._commit_wanted.wait()
                with trio.move_on_after(self._commit_interval):
                    await self._commit_urgent.wait()
                self._commit_wanted = trio.Event()
                self._commit_urgent = trio.Event()
                self._advanced = 0
                await self._commit_now()

    async def _commit_now(self) -> None:
        assert self._aio is not None
        offsets = self._collect_commits()
        if not offsets:
            return
        gen = self._gen
        try:
            ok = await self._bridge.run(self._aio.commit, gen, offsets)
        except KafkaError as exc:
            ok = False
            logger.warning("commit of group %r failed, will retry: %r", self.name, exc)
        if ok:
            self._mark_committed(offsets)
        else:
            self.commit_failures += 1
            for tp in offsets:  # retry with the next batch, unless revoked meanwhile
                part = self._parts.get(tp)
                if part is not None and part.gen == gen:
                    self.mark_dirty(part)

    def _collect_commits(self, *, every_partition: bool = False) -> dict[TopicPartition, int]:
        """Commit positions that moved, of partitions of the current assignment only."""
        parts = self._parts
        candidates = list(parts.values()) if every_partition else self._dirty
        offsets: dict[TopicPartition, int] = {}
        for part in candidates:
            if part.revoked or parts.get(part.tp) is not part:
                continue
            pos = part.pending_commit()
            if pos is not None:
                offsets[part.tp] = pos
        self._dirty.clear()
        return offsets

    def _mark_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits += 1
        for tp, pos in offsets.items():
            part = self._parts.get(tp)
            if part is not None and (part.committed is None or pos > part.committed):
                part.committed = pos

    # -- called from settle (sync, never blocks) -------------------------------------------------------

    def mark_dirty(self, part: Partition) -> None:
        self._dirty.add(part)
        self._advanced += 1
        if self._advanced == 1:  # the first advance since the last commit: commit within commit_interval
            self._commit_wanted.set()
        if self._advanced == self._commit_batch:  # enough for a commit now
            self._commit_urgent.set()

    def request_flow(self, part: Partition, *, pause: bool, force: bool = False) -> None:
        """Pause or resume ``part`` in aiokafka (fire-and-forget; ignored there if the partition moved)."""
        aio = self._aio
        if aio is None or (part.halted and not force):
            return
        logger.debug(
            "group %r %s %s[%d] (%d records unsettled)",
            self.name,
            "paused" if pause else "resumed",
            part.topic,
            part.tp.partition,
            part.unsettled,
        )
        try:
            self._bridge.call_soon(aio.pause if pause else aio.resume, part.gen, [part.tp])
        except BridgeError:
            pass

    # -- introspection ---------------------------------------------------------------------------------

    def statistics(self) -> KafkaGroupStatistics:
        """Live figures of this group's consumer."""
        parts = list(self._parts.values())
        lag = 0
        for p in parts:
            base = p.commit_pos if p.commit_pos is not None else p.committed
            if p.highwater is not None and base is not None:
                lag += max(0, p.highwater - base)
        return KafkaGroupStatistics(
            topics=tuple(sorted(self._sinks)),
            assigned=tuple(sorted(f"{p.tp.topic}[{p.tp.partition}]" for p in parts)),
            paused=tuple(sorted(f"{p.tp.topic}[{p.tp.partition}]" for p in parts if p.paused)),
            unsettled=sum(p.unsettled for p in parts),
            in_flight=sum(p.inflight for p in parts),
            unsettled_bytes=self.unsettled_bytes,
            unsettled_bytes_max=self.unsettled_bytes_max,
            paused_for_bytes=self.bytes_paused,
            lag=lag,
            naks=sum(p.naks for p in parts),
            generation=self._gen,
            rebalances=self.rebalances,
            commits=self.commits,
            commit_failures=self.commit_failures,
            dropped_on_halt=self.dropped,
            rewinds=self.rewinds,
            stale_records=self.stale,
            fetch_errors=0 if self._aio is None else self._aio.fetch_errors,
            pipe=repr(self._pipe),
        )


def _resolve(fut: asyncio.Future[dict[Any, int]], offsets: dict[Any, int]) -> None:
    if not fut.done():
        fut.set_result(offsets)
