"""The Kafka backend: aiokafka driven through the asyncio bridge (:mod:`trio_eventbus.backends._bridge`).

Configure it with :class:`~trio_eventbus.backends.kafka.KafkaConfig`. Every aiokafka call crosses the
bridge in batches: one crossing per publish batch, one Trio wake-up per fetch batch, one crossing per commit
batch; pause/resume and rebalance answers are fire-and-forget posts.

Publishing
    ``send`` queues the batch for the idempotent producer and returns: no round trip (at most one posted
    crossing per loop pass, carrying everything queued meanwhile); on the loop the records go into one
    aiokafka record batch per partition (see :mod:`trio_eventbus.backends.kafka.publish`), in publish order,
    so one key's messages keep their order. When a submit's partition batches are acknowledged, their
    outcomes come back as one list of :class:`~trio_eventbus.Outcome` through a :class:`BatchPipe`; the
    ack-handler task forwards them to the bus. The record key is ``OutgoingMessage.key``, placed by
    ``KafkaConfig.partitioner`` (murmur2 as the Java client, or FNV-1a as Go's sarama: one key, one
    partition); headers go as given (UTF-8 values); a ``message_id`` travels in an ``X-Message-ID`` header.
    While a partition's previous batch has not left, the loop's submit waits and later batches stay queued:
    the bus's publish window (slots are freed by outcomes) is the backpressure. Broker failures become
    :class:`PublishError` outcomes (:class:`MessageTooLargeError` for oversized records; the native error
    in ``__cause__``); a broker that is away delays outcomes up to ``request_timeout_ms``.

Consuming
    One consumer per (bus, group) over every topic the bus subscribed with that group (see
    :mod:`trio_eventbus.backends.kafka.consume` for the ordering, commit frontier, NAK handling, rebalances
    and pause/resume). Kafka counts no deliveries: ``attempt`` is 1, or higher for a record fetched again
    after a NAK. ``features.redelivers`` is False (Kafka cannot redeliver one message with a delay), so the
    bus retries in place; a NAK means "not handled: never commit past it".

Topics
    ``ensure_topic`` creates a missing topic (``create_topics=True``) with ``TopicOptions.partitions`` and
    ``replicas``, ``max_age``/``max_bytes`` as ``retention.ms``/``retention.bytes`` (per partition, Kafka's
    unit); ``max_messages`` and ``duplicate_window`` have no Kafka equivalent and are ignored (logged).
    Existing topics are never altered. Kafka has no ephemeral topics: ``TopicOptions(persistent=False)`` is
    refused with :class:`InvalidOptionError` (``features.ephemeral_topics`` is False) rather than silently
    given persistent semantics.

Lifecycle
    :meth:`KafkaBackend.open` opens the bridge, starts the producer and an admin client, and raises
    :class:`BackendUnavailable` (native error in ``__cause__``) when the cluster cannot be reached or refuses
    the credentials: aiokafka only says "Unable to bootstrap", so the backend then opens one connection of
    its own with the same settings to find and report the real reason (authentication failed, unsupported
    SASL mechanism, TLS failure, connection refused). The ack handler and every group's reader, feeder and
    committer run in a nursery the context manager owns, for the block.

    Exit, in one :func:`~trio_eventbus._abc.exit_scope` (shielded; ``CLOSE_DEADLINE``, or the hard-stop grace
    after an outer cancellation), in two halves so that a slow broker cannot skip the second: first (at
    most half of the deadline) stop the consumers, commit the safe prefix of every partition and leave the
    groups, flush the producer and forward every outcome of the messages handed to ``send``; then stop the
    producer, admin client and any consumer still running, and forward the outcomes that came with that.
    Outcomes are forwarded inline: the exit never relies on the backend's Trio tasks (ack handler,
    readers, committers), which an outer cancellation has already cancelled; crossings still work in the
    shielded exit because the bridge runs its loop on callbacks. Messages whose outcome never came are
    reported failed by the bus. Leaving ``open_bridge`` tears down whatever is left on the asyncio side.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import trio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from ..._abc import BackendFeatures, Delivery, DeliverySink, Disposition, Outcome, OutgoingMessage, exit_scope
from ..._exceptions import BackendUnavailable, BusClosedError, InvalidOptionError, map_exceptions
from ..._options import BusOptions, TopicOptions
from .._bridge import BatchPipe, Bridge, BridgeError, open_bridge
from .config import KafkaConfig
from .consume import GroupConsumer
from .partition import Partition
from .publish import AioPublisher
from .stats import KafkaStatistics
from .wire import KAFKA_ERRORS, KAFKA_TOPIC_ERRORS, PARTITIONERS

__all__ = ["KafkaBackend", "KafkaConfig"]

logger = logging.getLogger("trio_eventbus.kafka")

_FEATURES = BackendFeatures(
    persistent=True,
    consumer_groups=True,
    ordered_per_key=True,
    redelivers=False,
    dedupes=False,
    ephemeral_topics=False,
)
_PROBE_TIMEOUT = 10.0
_ACK_PIPE_CAPACITY = 1 << 30  # outcome lists; the bus's publish window bounds what is really in flight
_backend_ids = itertools.count(1)


def _accepted(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls).parameters) - {"loop"}


class KafkaBackend:
    """One bus's connection to a Kafka cluster (see the module docstring). Created by ``KafkaConfig``."""

    features = _FEATURES

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self._id = next(_backend_ids)
        self._ssl = self._ssl_context(config)
        self._producer_kw, self._consumer_kw, self._admin_kw = self._client_options(config)
        self._bridge: Bridge | None = None
        self._tasks: trio.Nursery | None = None
        self._outcomes: trio.MemorySendChannel[Sequence[Outcome]] | None = None
        self._acks: BatchPipe[list[Outcome]] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._publisher: AioPublisher | None = None
        self._groups: dict[str, GroupConsumer] = {}
        self._subscribe_lock = trio.Lock()
        self._submitted = 0
        self._forwarded = 0
        self._ack_scope = trio.CancelScope()
        self._clients_stopped = False
        self._state = "new"
        self._topics: dict[str, int] = {}
        defaults = BusOptions()
        self._bus_sizes = (defaults.max_message_bytes, defaults.buffered_bytes_limit)
        self._mismatches: dict[str, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return (
            f"<KafkaBackend #{self._id} {self._state} {','.join(self.config.bootstrap_servers)} "
            f"groups={len(self._groups)} pending_outcomes={self._submitted - self._forwarded}>"
        )

    # -- configuration ---------------------------------------------------------------------------------

    @staticmethod
    def _ssl_context(config: KafkaConfig) -> ssl.SSLContext | None:
        if not config.security_protocol.endswith("SSL"):
            return None
        try:
            context = create_ssl_context(
                cafile=config.ssl_cafile,
                certfile=config.ssl_certfile,
                keyfile=config.ssl_keyfile,
                password=config.ssl_password,
            )
        except (OSError, ssl.SSLError) as exc:
            raise InvalidOptionError(f"cannot load the TLS files of KafkaConfig: {exc}") from exc
        context.check_hostname = config.ssl_check_hostname
        assert isinstance(context, ssl.SSLContext)
        return context

    def _client_options(self, c: KafkaConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        common: dict[str, Any] = {
            "bootstrap_servers": list(c.bootstrap_servers),
            "client_id": c.client_id,
            "request_timeout_ms": c.request_timeout_ms,
            "security_protocol": c.security_protocol,
            "ssl_context": self._ssl,
        }
        if c.sasl_mechanism is not None:
            common |= {
                "sasl_mechanism": c.sasl_mechanism,
                "sasl_plain_username": c.sasl_username,
                "sasl_plain_password": c.sasl_password,
            }
        producer = common | {
            "acks": c.acks,
            "enable_idempotence": c.enable_idempotence,
            "compression_type": c.compression,
            "linger_ms": c.linger_ms,
            "max_batch_size": c.max_batch_size,
            "max_request_size": c.max_request_size,
        }
        consumer = common | {
            "enable_auto_commit": False,
            "auto_offset_reset": c.auto_offset_reset,
            "fetch_min_bytes": c.fetch_min_bytes,
            "fetch_max_wait_ms": c.fetch_max_wait_ms,
            "max_poll_records": c.max_poll_records,
            "session_timeout_ms": c.session_timeout_ms,
            "heartbeat_interval_ms": c.heartbeat_interval_ms,
            "max_poll_interval_ms": c.max_poll_interval_ms,
            # the group waits for our revocation drain (plus the commit) before it proceeds
            "rebalance_timeout_ms": max(c.session_timeout_ms, int(c.rebalance_drain_timeout * 1000) + 10_000),
        }
        admin = dict(common)
        accepted = {
            "producer": _accepted(AIOKafkaProducer),
            "consumer": _accepted(AIOKafkaConsumer),
            "admin": _accepted(AIOKafkaAdminClient),
        }
        unknown = [k for k in c.client_options if not any(k in a for a in accepted.values())]
        unknown += [k for k in c.producer_options if k not in accepted["producer"]]
        unknown += [k for k in c.consumer_options if k not in accepted["consumer"]]
        if unknown:
            raise InvalidOptionError(f"aiokafka does not know the client options {sorted(set(unknown))}")
        for name, options in (("producer", producer), ("consumer", consumer), ("admin", admin)):
            options.update({k: v for k, v in c.client_options.items() if k in accepted[name]})
        producer.update(c.producer_options)
        consumer.update(c.consumer_options)
        return producer, consumer, admin

    # -- lifecycle -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def open(self, outcomes: trio.MemorySendChannel[Sequence[Outcome]]) -> AsyncIterator[None]:
        """Open the bridge, connect the producer and admin client (:class:`BackendUnavailable` if not) and run
        the backend for the block; on exit commit, flush and forward every outcome (see the module docstring)."""
        self._outcomes = outcomes
        self._state = "connecting"
        try:
            async with open_bridge(self.config.bridge, use_uvloop=self.config.use_uvloop) as bridge:
                self._bridge = bridge
                self._acks = BatchPipe(bridge, _ACK_PIPE_CAPACITY)
                try:
                    await bridge.run(self._aio_connect)
                except (TimeoutError, KafkaError, OSError) as exc:
                    unavailable = await self._unavailable(bridge, exc)  # its __cause__: the native reason
                    raise unavailable  # noqa: B904 - _unavailable set its __cause__ already
                try:
                    async with trio.open_nursery() as tasks:
                        self._tasks = tasks
                        tasks.start_soon(self._ack_handler, name=f"teb-kafka-acks-{self._id}")
                        self._state = "running"
                        try:
                            yield
                        finally:
                            self._state = "closing"
                            with exit_scope() as scope:
                                await self._shutdown(bridge, scope.deadline)
                            tasks.cancel_scope.cancel()
                finally:  # normally _shutdown stopped the clients; after a failure or a cut-short exit: now
                    if not self._clients_stopped:
                        with exit_scope(), contextlib.suppress(Exception):
                            await bridge.run(self._aio_stop_clients)
        finally:
            self._state = "closed"

    async def _shutdown(self, bridge: Bridge, deadline: float) -> None:
        """The exit's steps (shielded by the caller); none relies on the backend's Trio tasks."""
        with trio.move_on_after((deadline - trio.current_time()) / 2) as first_half:
            await self.stop_consuming()
            for group in list(self._groups.values()):
                try:
                    await group.close()
                except (KafkaError, BridgeError) as exc:
                    logger.warning("closing kafka consumer group %r failed: %r", group.name, exc)
            if self._publisher is not None:
                try:
                    await bridge.run(self._publisher.flush)
                except (KafkaError, BridgeError) as exc:
                    logger.warning("kafka producer flush failed: %r", exc)
            self._ack_scope.cancel()  # the ack handler holds no batch when cancelled (see _forward)
            while self._forwarded < self._submitted:
                await self._forward()
        if first_half.cancelled_caught:
            logger.warning("closing the kafka backend: commit and flush cut short at half the deadline")
        self._ack_scope.cancel()
        try:
            await bridge.run(self._aio_stop_clients)  # closes the ack pipe
        except (KafkaError, BridgeError) as exc:
            logger.warning("stopping the kafka clients failed: %r", exc)
            return
        while await self._forward():
            pass

    async def _aio_connect(self) -> None:
        producer = AIOKafkaProducer(**self._producer_kw)
        admin = AIOKafkaAdminClient(**self._admin_kw)
        try:
            await producer.start()
            await admin.start()
        except BaseException:
            await producer.stop()
            await admin.close()
            raise
        self._producer, self._admin = producer, admin
        assert self._acks is not None
        assert self._bridge is not None
        self._publisher = AioPublisher(
            self._bridge,
            producer,
            self._acks,
            self._producer_kw["max_request_size"],
            PARTITIONERS[self.config.partitioner],
        )

    async def _unavailable(self, bridge: Bridge, exc: BaseException) -> BackendUnavailable:
        """Find the real reason of a failed start (aiokafka logs it but raises "Unable to bootstrap")."""
        servers = ", ".join(self.config.bootstrap_servers)
        try:
            with trio.fail_after(_PROBE_TIMEOUT + 1):
                reason = await bridge.run(self._aio_probe)
        except (trio.TooSlowError, BridgeError):
            reason = None
        if reason is None:
            err = BackendUnavailable(f"cannot connect to Kafka at {servers}: {exc}")
            err.__cause__ = exc
            return err
        c = self.config
        if isinstance(reason, SaslAuthenticationFailed | AuthenticationFailedError | IllegalSaslStateError):
            text = (
                f"Kafka at {servers} refused the credentials: authentication failed for user "
                f"{c.sasl_username!r} with SASL mechanism {c.sasl_mechanism} ({reason})"
            )
        elif isinstance(reason, UnsupportedSaslMechanismError):
            text = f"Kafka at {servers} does not enable SASL mechanism {c.sasl_mechanism}: {reason}"
        elif isinstance(reason, ssl.SSLError):
            text = f"TLS handshake with Kafka at {servers} failed: {reason}"
        elif isinstance(reason, asyncio.TimeoutError):
            text = f"Kafka at {servers} did not answer within {_PROBE_TIMEOUT:.0f}s"
        else:
            text = f"cannot connect to Kafka at {servers}: {reason!r}"
        reason.__context__ = exc
        err = BackendUnavailable(text)
        err.__cause__ = reason
        return err

    async def _aio_probe(self) -> BaseException | None:
        """Connect once to each bootstrap server with the configured security; the first error, if any."""
        c = self.config
        first: BaseException | None = None
        for server in c.bootstrap_servers:
            host, _, port = server.rpartition(":")
            try:
                conn = await asyncio.wait_for(
                    create_conn(
                        host.strip("[]"),
                        int(port),
                        client_id=c.client_id,
                        request_timeout_ms=int(_PROBE_TIMEOUT * 1000),
                        ssl_context=self._ssl,
                        security_protocol=c.security_protocol,
                        sasl_mechanism=c.sasl_mechanism,
                        sasl_plain_username=c.sasl_username,
                        sasl_plain_password=c.sasl_password,
                    ),
                    _PROBE_TIMEOUT,
                )
            except Exception as exc:
                first = first or exc
                continue
            conn.close()
            return None if first is None else first
        return first

    async def stop_consuming(self) -> None:
        """Stop every group's fetch loop and feeder; the sinks are not called after this returns."""
        for group in list(self._groups.values()):
            await group.stop_fetching()

    async def _aio_stop_clients(self) -> None:
        """Stop the producer (failing what it never sent), any consumer still running and the admin client;
        close the ack pipe last, so every outcome the producer reports is in it."""
        self._clients_stopped = True
        try:
            if self._publisher is not None:
                await self._publisher.stop()  # fails what it never handed to the producer
            if self._producer is not None:
                await self._producer.stop()
            for group in list(self._groups.values()):
                await group.aio_stop()
        finally:
            if self._acks is not None:
                self._acks.close()
            if self._admin is not None:
                await self._admin.close()

    async def _ack_handler(self) -> None:
        """The ack handler task: forward outcome lists from the producer's futures to the bus, in batches."""
        with self._ack_scope:
            while await self._forward():
                pass

    async def _forward(self) -> bool:
        """Move one wake-up's worth of outcome lists to the bus; False once the ack pipe is closed and empty.

        Cancellation never loses a batch: what is taken from the pipe goes to the bus's channel without a
        checkpoint in between (the channel has room for one list per message in the bus's window).
        """
        assert self._acks is not None
        assert self._outcomes is not None
        try:
            lists = await self._acks.receive_batch(1024)
        except trio.EndOfChannel:
            return False
        batch = lists[0] if len(lists) == 1 else [o for lst in lists for o in lst]
        count = sum(len(o.seqs) for o in batch)
        self._forwarded += count
        try:
            self._outcomes.send_nowait(batch)
        except trio.WouldBlock:  # cannot happen while the bus's window bounds the outcomes
            await self._outcomes.send(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            logger.error("the bus stopped reading outcomes: %d dropped", count)
        return True

    # -- publishing ------------------------------------------------------------------------------------

    async def send(self, batch: Sequence[OutgoingMessage]) -> None:
        """Queue ``batch`` for the producer (see :mod:`.publish`); never waits for the loop. Outcomes follow
        through the ack handler, exactly one per message (failed ones for what the close finds unsubmitted)."""
        publisher = self._publisher
        if publisher is None or self._state != "running":
            raise BusClosedError("the kafka backend is not running")
        publisher.send(batch)  # BridgeError if the loop is gone: the bus reports the whole batch as failed
        self._submitted += len(batch)
        await trio.lowlevel.checkpoint()

    # -- topics ----------------------------------------------------------------------------------------

    async def ensure_topic(self, topic: str, options: TopicOptions) -> None:
        """Create ``topic`` if missing (``create_topics``), else check it; never alter an existing topic."""
        if not options.persistent:
            raise InvalidOptionError(
                f"topic {topic!r}: Kafka has no ephemeral topics (TopicOptions(persistent=False)); "
                "use a persistent topic, with max_age for a short retention"
            )
        if options.max_messages is not None:
            logger.warning("topic %r: Kafka has no max_messages retention; ignored", topic)
        bridge = self._bridge
        if bridge is None or self._state != "running":
            raise BusClosedError("the kafka backend is not running")
        with map_exceptions(KAFKA_TOPIC_ERRORS, f"cannot create or describe Kafka topic {topic!r}"):
            state, partitions = await bridge.run(self._aio_ensure_topic, topic, options)
        if state == "missing":
            raise BackendUnavailable(
                f"Kafka topic {topic!r} does not exist and KafkaConfig.create_topics is False: create it first"
            )
        self._topics[topic] = partitions
        if state == "exists" and partitions != options.partitions:
            self._mismatches[topic] = (partitions, options.partitions)
            logger.warning(
                "Kafka topic %r has %d partitions, TopicOptions asks for %d: left unchanged "
                "(changing partitions would move keys between partitions)",
                topic,
                partitions,
                options.partitions,
            )

    async def _aio_ensure_topic(self, topic: str, options: TopicOptions) -> tuple[str, int]:
        assert self._admin is not None
        admin = self._admin
        partitions = await self._aio_partitions(topic)
        if partitions is not None:
            return "exists", partitions
        if not self.config.create_topics:
            return "missing", 0
        configs: dict[str, str] = {}
        if options.max_age is not None:
            configs["retention.ms"] = str(max(1, int(options.max_age * 1000)))
        if options.max_bytes is not None:
            configs["retention.bytes"] = str(options.max_bytes)
        new = NewTopic(topic, options.partitions, options.replicas, topic_configs=configs)
        response = await admin.create_topics([new])
        for entry in response.topic_errors:
            code = entry[1]
            if code == TopicAlreadyExistsError.errno:
                partitions = await self._aio_partitions(topic)
                return "exists", partitions if partitions is not None else options.partitions
            if code != 0:
                message = entry[2] if len(entry) > 2 else None
                raise for_code(code)(message or f"CreateTopics {topic!r}")
        return "created", options.partitions

    async def _aio_partitions(self, topic: str) -> int | None:
        """Partition count of ``topic``, ``None`` if missing (never auto-creates it)."""
        assert self._admin is not None
        request = MetadataRequest([topic], allow_auto_topic_creation=False)
        response = await self._admin._send_request(request)
        for entry in response.to_object()["topics"]:
            if entry["topic"] != topic:
                continue
            code = entry["error_code"]
            if code == UnknownTopicOrPartitionError.errno:
                return None
            if code != 0:
                raise for_code(code)(f"Metadata {topic!r}")
            return len(entry["partitions"])
        return None

    # -- consuming -------------------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, options: TopicOptions, sink: DeliverySink) -> None:
        """Add ``topic`` to the bus's consumer of ``group`` (creating it on first use); return once an
        assignment that covers ``topic`` arrived (the group rebalanced with it)."""
        bridge, tasks = self._bridge, self._tasks
        if bridge is None or tasks is None or self._state != "running":
            raise BusClosedError("the kafka backend is not running")
        async with self._subscribe_lock:
            consumer = self._groups.get(group)
            with map_exceptions(KAFKA_ERRORS, f"cannot start the Kafka consumer of group {group!r}"):
                if consumer is None:
                    consumer = self._new_group(group, bridge, tasks)
                    live = await consumer.start(topic, sink)
                    self._groups[group] = consumer
                else:
                    live = await consumer.add(topic, sink)
        await live.wait()
        if self._state != "running":  # woken by close()
            raise BusClosedError(f"the bus closed before the subscription to {topic!r} went live")

    def configure_for_bus(self, options: BusOptions) -> None:
        """Derive the fetch byte bounds left ``None`` in the config from the bus's sizes (called by
        ``open_bus`` before the backend opens; without it, ``BusOptions()`` defaults are assumed)."""
        self._bus_sizes = (options.max_message_bytes, options.buffered_bytes_limit)

    def _new_group(self, group: str, bridge: Bridge, tasks: trio.Nursery) -> GroupConsumer:
        c = self.config
        partition, fetch, pause = c.fetch_sizes(*self._bus_sizes)
        # client_options/consumer_options (already in _consumer_kw) win over the derived sizes
        sizes = {"max_partition_fetch_bytes": partition, "fetch_max_bytes": fetch}
        return GroupConsumer(
            group,
            bridge,
            tasks,
            sizes | self._consumer_kw | {"group_id": group},
            pause_bytes=pause,
            max_poll_records=c.max_poll_records,
            batch_bytes=fetch,
            max_message_bytes=self._bus_sizes[0],
            fetch_timeout_ms=1000,
            retry_backoff=0.5,
            pause_threshold=c.effective_pause_threshold,
            commit_interval=c.commit_interval,
            commit_batch=c.commit_batch,
            drain_timeout=c.rebalance_drain_timeout,
        )

    def settle(self, delivery: Delivery, disposition: Disposition, delay: float = 0.0) -> None:
        """ACK/TERM: the offset may be committed once every earlier one is. NAK: never commit past it; while
        the bus runs, the partition is fetched again from it after ``delay`` (see ``kafka.consume``)."""
        token: tuple[Partition, int] = delivery.token  # type: ignore[assignment]
        token[0].settle(token[1], disposition is not Disposition.NAK, delay, len(delivery.body))

    # -- introspection ---------------------------------------------------------------------------------

    def statistics(self) -> KafkaStatistics:
        """Connection state, pending outcomes, topics, partition mismatches and per-group figures."""
        bridge = self._bridge
        groups = {name: g.statistics() for name, g in self._groups.items()}
        return KafkaStatistics(
            state=self._state,
            connected=self._state == "running",
            reconnects=0,
            pending_outcomes=self._submitted - self._forwarded,
            subscriptions=sum(len(g.topics) for g in groups.values()),
            fetchers=len(groups),
            unsettled=sum(g.in_flight for g in groups.values()),
            bootstrap_servers=self.config.bootstrap_servers,
            bridge=None if bridge is None else bridge.kind,
            topics=MappingProxyType(dict(self._topics)),
            partition_mismatches=MappingProxyType(dict(self._mismatches)),
            groups=MappingProxyType(groups),
        )

    def delivery_info(self, delivery: Delivery) -> dict[str, object]:
        """Raw metadata of ``delivery``: its ``partition`` and ``offset``. Never blocks."""
        token: tuple[Partition, int] = delivery.token  # type: ignore[assignment]
        return {"partition": token[0].tp.partition, "offset": token[1]}
