"""The NATS JetStream backend: nats-py on an asyncio loop behind the batched bridge (:mod:`.._bridge`).

One connection per bus (the NATS maintainers' recommendation): publishing, every subscription and all acks
share it. Every call into nats-py goes through the bridge, one crossing per *batch*: a publish batch, a
fetched batch (the pipe wakes Trio once per loop pass), an ack batch.

Server version
    nats-server 2.11 or newer (``wire.MIN_SERVER_VERSION``; the tests, demo and bench run the pinned release
    that ``tools/provision.py`` builds). The first connect reads the version from the server's INFO and
    refuses an older server with :class:`BackendUnavailable` naming the version found and the minimum: 2.11
    brought the priority groups with pinned clients that partitioned consumer groups build on.

Names
    ======================  =======================================================================
    subject                 the topic itself (``orders.created``): topics are literal NATS subjects;
                            partitioned topics add ``<p>.orders.created`` per partition (:mod:`.partitions`)
    stream (persistent)     ``NatsConfig.stream_prefix`` + topic with ``.`` → ``_``
                            (``TEB_orders_created``), capturing exactly the topic's subjects; with
                            ``NatsConfig.streams="existing"`` whichever stream captures the subject
                            (:mod:`.streams`)
    dead letters            topic ``orders.created.dlq`` → subject ``orders.created.dlq`` →
                            its own stream ``TEB_orders_created_dlq`` (or the stream capturing it)
    durable consumer        the group name, inside the topic's stream (``<group>~p<n>`` per partition);
                            ``<group>~<topic with . → _>`` in a stream that is not the topic's own
    ephemeral topics        core NATS subject ``topic``, queue group = group name, no stream
    ======================  =======================================================================

    Streams capture literal subjects only, so two streams of the bus never overlap. Two topics that
    differ only by ``.`` versus ``_`` (``a.b`` and ``a_b``) would share a stream name: the second one is
    refused with :class:`InvalidTopicError`, as is a topic whose subject another stream (not made by the
    bus) already captures, or whose stream name would be too long.

Topics (:mod:`.streams`)
    ``NatsConfig.streams`` chooses between the topic's own stream (default ``"per_topic"``), the existing
    stream capturing its subject (``"existing"``: never created or changed by the bus; none is
    :class:`InvalidTopicError` at the topic's first use), or the existing one if any, else its own
    (``"existing_or_per_topic"``). For its own stream, ``TopicOptions`` become the stream config: limits
    retention (``max_age``, ``max_bytes``, ``max_messages``, discard old; unset limits fall back to
    ``NatsConfig.stream_max_*``), ``replicas``, ``duplicate_window`` (JetStream cannot turn dedupe off: ``0``
    becomes 1 ms). An existing own stream is updated when those differ (under ``"per_topic"``; a stream found
    by the existing modes is never changed). ``partitions = P > 1`` gives the topic ``P`` partition subjects; a keyed
    message is published on its key's (``partition_of``, the Go services' function), a keyless one on the
    topic itself (:mod:`.partitions`).

Publishing (:mod:`.publish`)
    JetStream async publish (reply inbox per bus, at most ``max_pending_publishes`` PubAcks awaited), one
    ack handler; ``Nats-Msg-Id`` = the message id (``event_id`` for envelopes): JetStream acks a duplicate
    inside the window without storing it. The key travels in ``X-Message-Key`` (see :mod:`.wire`). A
    message whose body and headers pass the server's advertised ``max_payload`` fails alone with
    :class:`MessageTooLargeError` (a ``PublishError``) before it is written (the server would close the
    connection); the rest of its batch goes through.

Consuming (:mod:`.consume`, :mod:`.consumers`, :mod:`.pinned`, :mod:`.groups`)
    Every durable consumer is a ``pinned_client`` priority-group consumer: the server serves one instance of
    the group at a time (a second instance stands by and takes over when the first leaves or dies). A
    partitioned topic has one consumer per partition plus one for its base subject, shared among the group's
    live members by heartbeats and a balanced assignment, handed over after the held messages are acked;
    a dead member's share moves on after ``max(group_session_timeout, pinned_ttl)``, its unacked deliveries
    first and in order (consumer reset); :mod:`.consumers` creates them (explicit acks, ``ack_wait``,
    ``max_ack_pending``, ``max_deliver``). One fetcher per subscription; ``Delivery.attempt`` = JetStream's
    delivery count; ``NAK`` carries the retry delay; acks travel in batches (:mod:`.settle`). Pull requests
    are bounded by count and by bytes (``fetch_max_bytes``). Deliveries held by the bus (in a lane or a handler) get
    progress acks every ``ack_wait / 3`` s, and a redelivery of a held message is dropped (recognised by
    stream sequence). A disconnect is logged with the client's last error and the knob to change if the
    server dropped us as a slow consumer.

Reconnects
    nats-py reconnects by itself (``max_reconnect_attempts=-1`` = forever). After a reconnect every pull
    consumer is checked and re-created if it is gone, and fetching resumes. A publish whose PubAck does not
    arrive within ``publish_timeout`` (lost in the restart) is reported as failed: its id makes a retry
    safe. If the client gives up reconnecting, the bus fails with :class:`BackendUnavailable`.
    ``statistics()`` shows the connection state, reconnects and pending publishes.

Lifecycle, cancellation and close
    :meth:`NatsBackend.open` opens the bridge, connects (:class:`BackendUnavailable` on failure), subscribes
    the PubAck inbox and runs the ack handler (a Trio task) and the janitor (an asyncio task) for the block.
    ``send`` never waits for the loop (it queues, one crossing per loop pass), so a cancelled publisher
    cannot leave a batch half handed over; ``ensure_topic`` and ``subscribe`` are one awaited crossing each
    (a cancel cancels the asyncio side and waits for it, :meth:`Bridge.run`).

    Exit, in one :func:`~trio_eventbus._abc.exit_scope` (shielded; ``CLOSE_DEADLINE``, or the hard-stop grace
    after an outer cancellation): stop every fetcher and source (what arrives meanwhile is nak'ed), nak every
    delivery the bus never settled, send all queued settlements, wait for every outstanding PubAck (at most
    ``min(publish_timeout, 5 s)`` and half of what the deadline leaves; what is still missing then is
    reported as failed), forward every outcome to the bus, and only then close the connection; leaving
    ``open_bridge`` joins the loop thread: no task and no thread remain. None of it relies on the backend's
    Trio tasks, which an outer cancellation has already cancelled: the ack handler is stopped and the exit
    forwards the outcomes inline (the bridge runs its loop on callbacks, so crossings still work in the
    shielded exit). An asyncio-side failure (a bug, or the client giving up) fails the bus through the
    bridge; the exit then still tries the same steps, each failure logged. nats-py traps avoided here:
    publishing and fetching speak the JetStream protocol directly (:mod:`.publish`,
    :class:`~.consume.Puller`), so neither ``publish_async`` (whose cancel surfaces as
    ``TooManyStalledMsgsError``) nor ``fetch()`` (whose empty batch is a bare ``asyncio.TimeoutError``) is
    used; a cancel swallowed by ``asyncio.wait_for`` inside nats-py's API requests is bounded by the bridge's
    ``cancel_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from nats.aio.client import Client
from nats.errors import SlowConsumerError
from nats.js import api

from ..._abc import BackendFeatures, Delivery, DeliverySink, Disposition, Outcome, OutgoingMessage, exit_scope
from ..._exceptions import (
    BackendUnavailable,
    BusClosedError,
    map_exceptions,
)
from ..._options import TopicOptions
from .._bridge.bridge import Bridge, BridgeError, open_bridge
from .config import NatsConfig, _mask_url
from .consume import CoreListener, Source, Subscription
from .consumers import pinned_source
from .groups import PullerGroup
from .partitions import stream_subjects, subject_for
from .pinned import PinnedPuller
from .publish import Publisher, WireItem
from .settle import Settler
from .stats import NatsStatistics
from .streams import stream_config, use_stream
from .wire import NATS_ERRORS, durable_name, server_version_error, stream_name, wire_message

__all__ = ["NatsBackend"]

logger = logging.getLogger("trio_eventbus.nats")

_FEATURES = BackendFeatures(
    persistent=True,
    consumer_groups=True,
    ordered_per_key=True,
    redelivers=True,
    dedupes=True,
    ephemeral_topics=True,
)
_JANITOR_TICK = 0.1
_MESSAGE_OVERHEAD = 4096  # a delivery's subject, ack subject and framing beyond max_payload (pull max_bytes)
_CLOSE_PUBACK_WAIT = 5.0


class _Topic:
    __slots__ = ("config", "name", "own", "partitions", "persistent", "stream", "subjects")

    def __init__(
        self,
        name: str,
        persistent: bool,
        stream: str | None,
        config: api.StreamConfig | None,
        partitions: int = 1,
        own: bool = True,
    ) -> None:
        # config: what the bus re-creates the stream with if it vanishes (None: a stream it does not own)
        self.name, self.persistent, self.stream, self.config = name, persistent, stream, config
        self.partitions = partitions
        self.own = own  # the topic's per-topic stream: its consumers are named after the group alone
        # the publisher's subjects (base, then one per partition) of a partitioned topic, else None
        self.subjects = stream_subjects(name, partitions) if persistent and partitions > 1 else None


class NatsBackend:
    """One bus's connection to NATS JetStream (see the module docstring). Create with ``NatsConfig``."""

    features = _FEATURES

    def __init__(self, config: NatsConfig) -> None:
        self._config = config
        self._compress_min = config.compression_min_bytes if config.compression == "lz4" else None
        self._bridge: Bridge | None = None
        self._nc: Any = None  # nats.aio.client.Client, used on the loop only
        self._js: Any = None
        self._publisher: Publisher | None = None
        self._settler = Settler()
        self._outcomes: trio.MemorySendChannel[Sequence[Outcome]] | None = None
        self._tasks: trio.Nursery | None = None
        self._topics: dict[str, _Topic] = {}
        self._warned_ignored: set[tuple[str, str]] = set()
        self._subs: list[Subscription] = []
        self._pullers: set[Source] = set()  # loop thread only
        self._closing = False
        self._consuming_stopped = False
        self._unrouted: list[Delivery] = []  # drained from the pipes when consuming stopped; nak'ed at the exit
        self._forwarder = trio.CancelScope()
        self._lost: BackendUnavailable | None = None
        # connection figures, written by nats-py callbacks on the loop thread
        self._state = "connecting"
        self._reconnects = 0
        self._disconnects = 0
        self._errors = 0
        self._last_error: Exception | None = None

    def __repr__(self) -> str:
        servers = ",".join(_mask_url(u) for u in self._config.servers)
        return f"<NatsBackend {servers} {self._state} subscriptions={len(self._subs)} topics={len(self._topics)}>"

    # -- lifecycle -----------------------------------------------------------------------------------------

    @asynccontextmanager
    async def open(self, outcomes: trio.MemorySendChannel[Sequence[Outcome]]) -> AsyncIterator[None]:
        """Connect (``BackendUnavailable`` on failure) and run the backend for the block; on exit flush
        settlements and every outcome, close the connection and the bridge (see the module docstring)."""
        cfg = self._config
        self._outcomes = outcomes
        try:
            async with open_bridge(cfg.bridge, use_uvloop=cfg.use_uvloop) as bridge:
                self._bridge = bridge
                try:
                    await bridge.run(self._aio_connect)
                except BackendUnavailable:
                    raise
                except Exception as exc:
                    raise self._connect_error(exc) from exc
                try:
                    self._publisher = Publisher(bridge, self._nc, cfg.publish_timeout, cfg.max_pending_publishes)
                    await bridge.run(self._publisher.start)
                    self._settler.attach(bridge, self._nc)
                    async with trio.open_nursery() as tasks:
                        self._tasks = tasks
                        await tasks.start(self._forward, name="teb-nats-ack-handler")
                        bridge.spawn(self._aio_janitor, name="teb-nats-janitor")
                        try:
                            yield
                        finally:
                            self._closing = True
                            with exit_scope() as scope:
                                await self._shutdown(bridge, scope.deadline)
                            tasks.cancel_scope.cancel()
                finally:  # normally _shutdown closed the connection; after a failure or a cut-short exit: now
                    if self._state != "closed":
                        with exit_scope(), contextlib.suppress(Exception):
                            await bridge.run(self._aio_close)
        finally:
            self._closing = True
            self._state = "closed"

    async def _forward(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._publisher is not None
        assert self._outcomes is not None
        with self._forwarder:
            await self._publisher.forward(self._outcomes, task_status=task_status)

    async def _shutdown(self, bridge: Bridge, deadline: float) -> None:
        """The exit's steps (shielded by the caller); none relies on the backend's Trio tasks."""
        publisher, outcomes = self._publisher, self._outcomes
        assert publisher is not None
        assert outcomes is not None
        try:
            await self.stop_consuming()
            for sub in self._subs:
                self._settler.nak_held(sub)
            # the un-routed deliveries are the newest of their consumers: nak'ed after the held ones (the
            # server redelivers nak'ed messages in the order of the naks: each key stays in order)
            self._settler.nak_all(self._unrouted)
            self._unrouted.clear()
            await self._settler.flush()
            await bridge.run(self._aio_unpin, max(0.0, (deadline - trio.current_time()) / 4))
            budget = max(0.0, (deadline - trio.current_time()) / 2)
            await bridge.run(self._aio_finish_publishing, budget)  # closes the outcome pipe
            self._forwarder.cancel()  # the ack handler holds no batch when cancelled (Publisher.forward)
            await publisher.forward(outcomes)  # the rest, inline: every outcome is on the bus's channel now
            await bridge.run(self._aio_close)
        except BridgeError as exc:  # the asyncio side failed meanwhile; that failure ends open_bridge
            logger.warning("closing the NATS backend: %r", exc)

    async def stop_consuming(self) -> None:
        """Stop every fetcher; un-routed deliveries are nak'ed at the exit, after the deliveries the lanes
        still hold. The sinks are not called after this."""
        if self._consuming_stopped:
            return
        self._consuming_stopped = True
        subs = list(self._subs)
        for sub in subs:
            sub.scope.cancel()
        for sub in subs:
            await sub.stopped.wait()
        if self._bridge is None or not subs:
            return
        try:
            await self._bridge.run(self._aio_stop_sources, [s.source for s in subs if s.source is not None])
        except Exception as exc:
            logger.warning("stopping the NATS subscriptions failed: %r", exc)
            return
        for sub in subs:
            self._unrouted += await sub.drain()

    def _connect_error(self, exc: BaseException) -> BackendUnavailable:
        servers = ", ".join(_mask_url(u) for u in self._config.servers)
        text = str(getattr(exc, "description", None) or exc) or type(exc).__name__
        if "authorization" in text.lower() or "authentication" in text.lower():
            return BackendUnavailable(f"NATS at {servers} refused the credentials: {text}")
        if type(exc).__name__ in ("NoRespondersError", "ServiceUnavailableError", "NoStreamResponseError"):
            return BackendUnavailable(f"NATS at {servers} has no JetStream (start nats-server with -js): {text}")
        return BackendUnavailable(f"cannot connect to NATS at {servers}: {type(exc).__name__}: {text}")

    # -- topics ----------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing or self._bridge is None:
            raise BusClosedError("the NATS backend is closed")

    async def ensure_topic(self, topic: str, options: TopicOptions) -> None:
        """Find, create or update the topic's stream as ``NatsConfig.streams`` says (persistent; see
        :mod:`.streams`), or just note the topic (ephemeral)."""
        self._check_open()
        assert self._bridge is not None
        if not options.persistent:
            self._topics[topic] = _Topic(topic, False, None, None)
            await trio.lowlevel.checkpoint()
            return
        cfg = self._config
        name = stream_name(cfg.stream_prefix, topic)
        config = stream_config(cfg, topic, name, options)
        with map_exceptions(NATS_ERRORS, f"cannot find or create the stream of topic {topic!r}"):
            use = await self._bridge.run(use_stream, self._js, cfg.streams, config)
        if use.ignored and (topic, use.name) not in self._warned_ignored:
            self._warned_ignored.add((topic, use.name))
            logger.warning(
                "topic %r uses the stream %r, which this bus does not manage (NatsConfig.streams=%r): its "
                "settings are kept, the topic's options are not applied (%s)",
                topic,
                use.name,
                cfg.streams,
                "; ".join(use.ignored),
            )
        self._topics[topic] = _Topic(topic, True, use.name, use.config, options.partitions, use.own)

    # -- publishing ------------------------------------------------------------------------------------------

    async def send(self, batch: Sequence[OutgoingMessage]) -> None:
        """Hand ``batch`` to nats-py in one crossing; outcomes follow (see :mod:`.publish`)."""
        self._check_open()
        topics, compress = self._topics, self._compress_min
        items: list[WireItem] = []
        for m in batch:
            info = topics.get(m.topic)
            body, headers = wire_message(m.topic, m.body, m.headers, m.key, m.message_id, compress)
            if info is None:
                items.append((m.seq, m.topic, body, headers, True))
            elif info.subjects is None:
                items.append((m.seq, m.topic, body, headers, info.persistent))
            else:  # a partitioned topic: the key's partition subject (see .partitions)
                items.append((m.seq, subject_for(m.topic, info.subjects, m.key), body, headers, True))
        assert self._publisher is not None
        self._publisher.send(items)
        await trio.lowlevel.checkpoint()

    # -- consuming -------------------------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, options: TopicOptions, sink: DeliverySink) -> None:
        """Create (or reuse) the durable consumer / queue subscription and start the fetcher."""
        self._check_open()
        assert self._bridge is not None
        assert self._tasks is not None
        info = self._topics.get(topic)
        if info is None:
            await self.ensure_topic(topic, options)
            info = self._topics[topic]
        cfg = self._config
        capacity = 1_000_000 if info.persistent else 10 * cfg.fetch_batch
        sub = Subscription(topic, group, sink, self._bridge, capacity, persistent=info.persistent)
        source: Source
        with map_exceptions(NATS_ERRORS, f"cannot subscribe to {topic!r} in group {group!r}"):
            if info.persistent:
                assert info.stream is not None
                max_bytes = max(cfg.fetch_max_bytes, self._nc.max_payload + _MESSAGE_OVERHEAD)
                durable = durable_name(group, None if info.own else topic)
                args = (cfg, self._nc, self._js, sub, info.stream, info.config, info.partitions, max_bytes, durable)
                source = await self._bridge.run(pinned_source, *args)
                await self._bridge.run(self._aio_subscribe, source)
            else:
                source = CoreListener(self._nc, sub, cfg.request_timeout)
                await self._bridge.run(source.start)
        sub.source = source
        if self._consuming_stopped:  # the bus began closing while the consumer was being created
            await self._bridge.run(self._aio_stop_sources, [source])
            self._settler.nak_all(await sub.drain())
            raise BusClosedError("the bus is closing")
        self._subs.append(sub)
        self._tasks.start_soon(sub.fetch, cfg.fetch_batch, name=f"teb-nats-fetch-{topic}-{group}")

    async def _aio_subscribe(self, source: Source) -> None:
        await source.start()
        self._pullers.add(source)

    def settle(self, delivery: Delivery, disposition: Disposition, delay: float = 0.0) -> None:
        """Queue an ack / nak (after ``delay`` s) / term; they cross to the loop in batches. Never blocks."""
        self._settler.settle(delivery, disposition, delay)

    # -- asyncio side ----------------------------------------------------------------------------------------

    async def _aio_connect(self) -> None:
        cfg = self._config
        options: dict[str, Any] = {
            "servers": list(cfg.servers),
            "name": cfg.name,
            "connect_timeout": cfg.connect_timeout,
            "reconnect_time_wait": cfg.reconnect_time_wait,
            "ping_interval": cfg.ping_interval,
            "pending_size": cfg.reconnect_buffer_bytes,
            # the first connect fails fast (each server tried twice); reconnects are enabled afterwards
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        if cfg.user is not None:
            options["user"], options["password"] = cfg.user, cfg.password
        if cfg.token is not None:
            options["token"] = cfg.token
        if cfg.creds_file is not None:
            options["user_credentials"] = cfg.creds_file
        if cfg.tls_ca_file or cfg.tls_cert_file:
            context = ssl.create_default_context(cafile=cfg.tls_ca_file)
            if cfg.tls_cert_file is not None:
                context.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
            options["tls"] = context
        if cfg.tls_hostname is not None:
            options["tls_hostname"] = cfg.tls_hostname
        options.update(cfg.client_options)
        nc = Client()
        try:
            await nc.connect(**options)
            servers = ", ".join(_mask_url(u) for u in cfg.servers)
            too_old = server_version_error(str(getattr(nc, "_server_info", {}).get("version", "")), servers)
            if too_old is not None:
                raise too_old
            js = nc.jetstream(timeout=cfg.request_timeout)
            await js.account_info()  # JetStream is enabled and answers
        except BaseException:
            with contextlib.suppress(Exception):
                await nc.close()  # nats-py leaks the socket of a failed connect otherwise
            raise
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = cfg.max_reconnect_attempts
        self._nc, self._js = nc, js
        self._state = "connected"

    async def _on_error(self, exc: Exception) -> None:
        self._errors += 1
        self._last_error = exc
        if isinstance(exc, SlowConsumerError):
            logger.warning(
                "NATS client dropped messages of a slow subscription (%s): the bus did not take them fast enough; "
                "lower NatsConfig.fetch_batch / fetch_max_bytes",
                exc,
            )
        elif self._state == "connected":
            logger.warning("NATS connection error: %r", exc)
        else:
            logger.debug("NATS connection error (%s): %r", self._state, exc)

    async def _on_disconnected(self) -> None:
        if self._state == "connected":
            self._disconnects += 1
            self._state = "reconnecting"
            last, self._last_error = self._last_error, None
            logger.warning(
                "disconnected from NATS (last error: %r); reconnecting. If the server logged 'Slow Consumer' "
                "for this client, it had more than its max_pending bytes in flight to us: lower "
                "NatsConfig.fetch_max_bytes (now %d) or fetch_batch",
                last,
                self._config.fetch_max_bytes,
            )

    async def _on_reconnected(self) -> None:
        self._reconnects += 1
        self._state = "connected"
        url = getattr(self._nc, "connected_url", None)
        logger.warning("reconnected to NATS at %s", _mask_url(url.geturl()) if url is not None else "?")
        for source in list(self._pullers):
            source.reset()

    async def _on_closed(self) -> None:
        if not self._closing and self._lost is None:
            self._lost = BackendUnavailable("NATS connection closed: the client gave up reconnecting")
        self._state = "closed"

    async def _aio_janitor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_JANITOR_TICK)
            if self._lost is not None and not self._closing:
                raise self._lost
            now = loop.time()
            if self._publisher is not None:
                self._publisher.sweep(now)
            for source in list(self._pullers):
                source.check(now)

    async def _aio_stop_sources(self, sources: list[Source]) -> None:
        await asyncio.gather(*(s.stop() for s in sources))
        self._pullers.difference_update(sources)

    async def _aio_unpin(self, budget: float) -> None:
        """At close, after the settlements went out: unpin what this bus holds, so the group's next member
        is served at once instead of after ``pinned_ttl``."""
        sources = [s.source for s in self._subs if isinstance(s.source, PinnedPuller | PullerGroup)]
        if not sources or not self._nc.is_connected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(budget, self._config.request_timeout)):
                await asyncio.gather(*(s.unpin(confirm=False) for s in sources), return_exceptions=True)

    async def _aio_finish_publishing(self, budget: float) -> None:
        """Wait for outstanding PubAcks (bounded by ``budget`` too), fail the rest, close the outcome pipe."""
        publisher = self._publisher
        assert publisher is not None
        try:
            try:
                async with asyncio.timeout(min(self._config.publish_timeout, _CLOSE_PUBACK_WAIT, budget)):
                    await publisher.wait_idle()
            except TimeoutError:
                logger.warning("closing with %d publishes unacknowledged: reporting them failed", publisher.pending)
                publisher.abandon()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(1.0, budget / 2)):
                        await publisher.wait_idle()
                publisher.fail_queued()
        finally:
            publisher.close_pipe()

    async def _aio_close(self) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        self._state = "closing"
        if nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.flush(max(1, int(self._config.request_timeout)))
        with contextlib.suppress(Exception):
            await nc.close()

    # -- introspection ---------------------------------------------------------------------------------------

    def statistics(self) -> NatsStatistics:
        """Live figures: connection state, reconnects, pending publishes, subscriptions, acks."""
        p, s = self._publisher, self._settler
        details = tuple(sub.statistics() for sub in self._subs)
        return NatsStatistics(
            state=self._state,
            connected=self._state == "connected",
            reconnects=self._reconnects,
            pending_outcomes=0 if p is None else p.pending,
            subscriptions=len(self._subs),
            fetchers=sum(d.running for d in details),
            unsettled=sum(d.unsettled for d in details),
            bridge=None if self._bridge is None else self._bridge.kind,
            disconnects=self._disconnects,
            connection_errors=self._errors,
            publish_acked=0 if p is None else p.acked,
            publish_duplicates=0 if p is None else p.duplicates,
            publish_failed=0 if p is None else p.failed,
            publish_timeouts=0 if p is None else p.timeouts,
            core_published=0 if p is None else p.core_sent,
            received=sum(d.received for d in details),
            acks=s.acks,
            naks=s.naks,
            terms=s.terms,
            acks_queued=s.queued,
            ack_batches=s.batches,
            subscription_details=details,
        )

    def delivery_info(self, delivery: Delivery) -> dict[str, object]:
        """Raw metadata from a JetStream ack subject (``$JS.ACK[.domain.account].stream.consumer.delivered.
        sseq.cseq.ts.pending``); empty for core NATS (no ack subject). Never blocks."""
        t = str(getattr(delivery.token, "reply", "")).split(".")
        i = 2 if len(t) == 9 else 4
        try:
            d, s, c, _, p = (int(x) for x in t[i + 2 : i + 7])
            return {"stream": t[i], "consumer": t[i + 1], "num_delivered": d, "stream_seq": s, "consumer_seq": c,
                    "num_pending": p}  # fmt: skip
        except (IndexError, ValueError):
            return {}
