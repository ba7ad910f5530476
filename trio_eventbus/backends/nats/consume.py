"""Consuming half of the NATS backend: credit-based pull fetching, held-message upkeep, core subscriptions.

Persistent topics (:class:`Puller`, on the asyncio loop). Each subscription owns an inbox subscription on the
bus's one connection and keeps pull requests outstanding on its durable consumer
(``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``, ``{"batch": n, "expires": fetch_max_wait, "max_bytes":
b}``). Messages are pushed into the inbox as soon as they are stored, so latency does not depend on a batch
filling up; a request that expires comes back as a ``408`` status with the number of messages it did not get,
one whose ``max_bytes`` is used up as a ``409 Message Size Exceeds MaxBytes``. Credits bound memory: at most
``2 * fetch_batch`` messages are requested or held (received but not yet routed into the bus's lanes) per
subscription; a new request of at least ``fetch_batch / 2`` goes out when the bus takes messages (a credit) or
a request ends. Bytes bound what is in flight: each request brings at most ``b`` bytes
(``NatsConfig.fetch_max_bytes``, at least the server's ``max_payload`` plus framing, so one message always
fits), and only a few requests are outstanding, far below the server's 64 MiB slow-consumer limit. Received
messages are handled inline by the connection's reader (:mod:`.protocol`: no nats-py ``Msg``, queue or task per
message), become :class:`Delivery` values on the loop and go into a :class:`BatchPipe` once per reader pass (one
put and at most one wake-up of Trio for everything one read brought); the Trio fetcher
(:meth:`Subscription.fetch`) takes everything buffered in one wake-up (up to ``fetch_batch``), hands it to the
bus's sink and then returns the credit (a fire-and-forget crossing per ``fetch_batch / 4`` messages).
``attempt`` is JetStream's delivery count from the ack subject.

Held messages (:attr:`Subscription.out`, loop thread only): every delivery put into the pipe stays there, by
stream sequence, until its settlement is sent (:mod:`.settle`), whether it waits in the pipe, in a lane or
runs in a handler; its size is the ``unsettled`` figure plus what the pipe holds. Every ``ack_wait / 3`` s the
janitor's tick starts :meth:`Puller.keep_alive`: one pass over that set on the loop, a progress ack
(``+WPI``) per held delivery, so JetStream restarts their ``ack_wait`` instead of redelivering a backlog that
waits in a lane (no crossing, nothing per message on the hot path: the set costs one dict insert when a
message arrives and one delete when its settlement is sent). A redelivery that comes anyway (progress acks
lost with the connection, or the loop blocked for ``ack_wait``) of a message still held here is recognised
by its stream sequence and dropped (counted as ``redelivered_held``; the held delivery's settlement acks the
message: JetStream acks by stream sequence), with a WARNING naming ``ack_wait``: another instance of the
group may have received and handled it, which this instance cannot prevent. So is a redelivery that crossed
the message's ack on the wire (its seq is in :attr:`Subscription.settled` for a while): it is acked again.

Ordering: one inbox, one fetcher: a subscriber sees the stream's order (a nak'ed message comes back later,
after the others). Backpressure: a full lane blocks the fetcher in ``deliver``, so no credits return and no
new requests go out (held messages keep getting progress acks meanwhile). Reconnects: outstanding requests
are forgotten and re-issued after the consumer was re-created if it is gone; see :class:`Puller` for requests
the server drops without an answer. Stopping: a stopping puller sends no more requests, puts what still
arrives until its requests are answered (at most ``fetch_max_wait + 0.5 s``) into the pipe after the rest (the
fetcher is stopped: the backend naks the pipe's contents in arrival order, after the naks of the lanes, so a
consumer's redeliveries keep each key's order), then unsubscribes.

Ephemeral topics (:class:`CoreListener`): a core NATS queue subscription (queue group = the bus group) feeding
the same kind of pipe; a full pipe drops (and counts) messages, like a NATS slow consumer. Core messages have
no broker acks; a ``NAK`` re-delivers the message locally after the delay with ``attempt + 1``.

Settlements travel through :class:`~.settle.Settler` (acks, naks, terms, in batches).

Pinned consumers and groups: :class:`~.pinned.PinnedPuller` (a subclass: pin ids, the gate of a new pin,
pin renewal, handover) and :class:`~.groups.PullerGroup` (several pullers feeding one subscription, sharing
its pipe, credits and window) build on the hooks here: ``paused`` (no new requests, arrivals still routed),
``_admit`` (a pinned puller's check of each arrival), ``_unpinned`` (a ``423``), per-puller ``out`` sets.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from ..._abc import Delivery, DeliverySink
from .._bridge import BatchPipe, Bridge, BridgeError
from .protocol import Wire, wire_for
from .stats import NatsSubscriptionStatistics
from .wire import NAK, PROGRESS, ack_info, to_delivery

__all__ = ["CoreListener", "CoreToken", "JsToken", "Puller", "Source", "Subscription", "Window"]

logger = logging.getLogger("trio_eventbus.nats")
_REQUEST_GRACE = 0.5  # seconds past a pull request's expiry after which it is forgotten
_WARN_EVERY = 10.0  # seconds between two warnings about redeliveries of held messages
_PROGRESS_CHUNK = 1024  # progress acks per write
#: 409s that end a request normally: its max_bytes is used up (the next message did not fit), or it was filled
#: (the server says so for requests with max_bytes)
_NORMAL_409 = frozenset({"Message Size Exceeds MaxBytes", "Batch Completed"})
_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"
_tiebreak = itertools.count()


class Source(Protocol):
    """What feeds a subscription's pipe (asyncio side): a puller, a group of pullers or a core listener."""

    @property
    def received(self) -> int: ...

    async def start(self) -> None: ...

    def credit(self, n: int) -> None: ...

    def check(self, now: float) -> None: ...

    def reset(self) -> None: ...

    async def stop(self) -> None: ...


class JsToken:
    """Settlement handle of a JetStream delivery: its ack subject, stream sequence, subscription and the held
    set of the puller that received it (loop thread; see :attr:`Subscription.out`)."""

    __slots__ = ("out", "reply", "seq", "sub")

    def __init__(self, reply: str, seq: int, sub: Subscription, out: dict[int, JsToken]) -> None:
        self.reply = reply
        self.seq = seq  # stream sequence (0: unknown)
        self.sub = sub
        self.out = out


class CoreToken:
    """Settlement handle of a core NATS delivery (no broker acks)."""

    __slots__ = ("sub",)

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub


class Subscription:
    """Trio-side state of one (topic, group) subscription: its pipe, fetcher and unsettled deliveries."""

    def __init__(
        self, topic: str, group: str, sink: DeliverySink, bridge: Bridge, capacity: int, *, persistent: bool
    ) -> None:
        self.topic = topic
        self.group = group
        self.sink = sink
        self.persistent = persistent
        self.pipe: BatchPipe[Delivery] = BatchPipe(bridge, capacity)
        self.source: Source | None = None
        self.held: set[JsToken] = set()  # handed to the bus, not settled yet (Trio thread)
        # loop thread only: stream seq -> token of every delivery put into the pipe and not settled yet (its
        # settlement not sent yet): what gets progress acks, and what a redelivery is recognised by
        self.out: dict[int, JsToken] = {}
        # loop thread only: the last acks/terms sent (stream seq -> payload), oldest first: a redelivery that
        # crossed its ack on the wire is acked again and dropped, not handled twice
        self.settled: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self._bridge = bridge
        self._requeued: list[tuple[float, int, Delivery]] = []  # core NAKs: (due, tiebreak, delivery)
        self._wait: trio.CancelScope | None = None

    async def fetch(self, batch: int) -> None:
        """The fetcher task: move batches from the pipe to the sink until stopped (see module docstring).

        Credits go back in lumps of at least ``batch / 4`` (one crossing each): the puller may then see up to
        that many more messages held than there are, which its window of ``2 * batch`` absorbs.
        """
        lump = max(1, batch // 4)
        unposted = 0
        try:
            with self.scope:
                while True:
                    deliveries, from_pipe = await self._next(batch)
                    if self.persistent:
                        self.held.update(d.token for d in deliveries)  # type: ignore[misc]
                    try:
                        await self.sink.deliver(deliveries)
                    finally:  # credits go back even when the delivery was cut short
                        unposted += from_pipe
                        if unposted >= lump and self.source is not None:
                            try:
                                self._bridge.call_soon(self.source.credit, unposted)
                            except BridgeError:
                                pass
                            unposted = 0
        except trio.EndOfChannel:
            pass
        finally:
            self.stopped.set()

    async def _next(self, batch: int) -> tuple[list[Delivery], int]:
        while True:
            if self._requeued and self._requeued[0][0] <= trio.current_time():
                ready: list[Delivery] = []
                while self._requeued and self._requeued[0][0] <= trio.current_time() and len(ready) < batch:
                    ready.append(heapq.heappop(self._requeued)[2])
                return ready, 0
            due = self._requeued[0][0] if self._requeued else math.inf
            with trio.CancelScope(deadline=due) as self._wait:
                got = await self.pipe.receive_batch(batch)
                return got, len(got)

    def statistics(self) -> NatsSubscriptionStatistics:
        """Live figures of this subscription and its fetcher."""
        source = self.source
        puller: Any = None if source is None or isinstance(source, CoreListener) else source
        ownership = getattr(source, "ownership", None)
        return NatsSubscriptionStatistics(
            topic=self.topic,
            group=self.group,
            persistent=self.persistent,
            running=not self.stopped.is_set(),
            received=0 if source is None else source.received,
            unsettled=len(self.held),
            pull_requests=0 if puller is None else puller.requests_sent,
            vanished_pull_requests=0 if puller is None else puller.vanished,
            consumer_recoveries=0 if puller is None else puller.recoveries,
            dropped=source.dropped if isinstance(source, CoreListener) else 0,
            redelivered_held=0 if puller is None else puller.redelivered_held,
            progress_acks=0 if puller is None else puller.progress_acks,
            ownership=None if ownership is None else ownership(),
        )

    def requeue(self, delivery: Delivery, delay: float) -> None:
        """Core NATS NAK: deliver again after ``delay`` seconds, as the next attempt."""
        due = trio.current_time() + delay
        again = attrs.evolve(delivery, attempt=delivery.attempt + 1)
        heapq.heappush(self._requeued, (due, next(_tiebreak), again))
        if self._wait is not None and due < self._wait.deadline:
            self._wait.deadline = due

    async def drain(self) -> list[Delivery]:
        """After the source closed the pipe: everything still buffered in it."""
        out: list[Delivery] = []
        while True:
            try:
                out += await self.pipe.receive_batch(1_000_000)
            except trio.EndOfChannel:
                return out


class Window:
    """Messages received and not yet taken by the bus, shared by the pullers feeding one pipe (loop thread)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0


class _Request:
    __slots__ = ("expires_at", "remaining")

    def __init__(self, expires_at: float, remaining: int) -> None:
        self.expires_at = expires_at
        self.remaining = remaining  # messages still owed, attributing deliveries to the oldest request


class Puller:
    """Keeps pull requests outstanding for one durable consumer (asyncio side; see module docstring).

    Each request has its own reply subject (``<inbox>.<n>``), so the ``408`` ending an expired request
    names it and says how many messages it did not get (``Nats-Pending-Messages``). Deliveries carry the
    stream subject, not the request's, so they are attributed to the oldest live request; the total owed
    stays exact and is corrected by every ``408`` and the ``409`` statuses ending a request normally
    (``Message Size Exceeds MaxBytes``: its ``max_bytes`` is used up; ``Batch Completed``: it was filled).
    Every request ends with such a status on the servers the bus supports (2.11+); one never answered (lost
    with a connection) is forgotten ``_REQUEST_GRACE`` s after its expiry and counted as vanished. No answer
    at all (no message, no status) for ``max(2 s, 4 * fetch_max_wait)`` while requests go out means the
    consumer may be gone (memory store after a restart, deleted): recover.
    """

    def __init__(
        self,
        nc: Any,
        sub: Subscription,
        stream: str,
        durable: str,
        batch: int,
        max_wait: float,
        recover: Callable[[], Awaitable[object]],
        *,
        max_bytes: int,
        ack_wait: float,
        window: Window | None = None,
        owns_pipe: bool = True,
    ) -> None:
        self._nc = nc
        self._sub = sub
        self._topic = sub.topic
        self._pipe = sub.pipe
        self.stream, self.durable = stream, durable
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = batch
        self._window = 2 * batch
        self._threshold = max(1, batch // 2)
        self._max_wait = max_wait
        self._renew = max(0.005, 0.2 * max_wait)  # send the next request this long before expiry
        self._expires = int(max_wait * 1e9)
        self._max_bytes = max_bytes
        self._ack_wait = ack_wait
        self._progress_every = ack_wait / 3  # +WPI for every held delivery this often (see keep_alive)
        self._progress_due = 0.0
        self._progressing = False
        # a puller of a group keeps its own held set (what it must see settled before handing over)
        self._out: dict[int, JsToken] = sub.out if window is None else {}
        self.window = Window() if window is None else window  # shared by the pullers of one pipe
        self._owns_pipe = owns_pipe
        self.paused = False  # no new pull requests; arrivals are still routed (a pinned puller's gate, handover)
        self.pinned = False  # a pinned puller: every arrival passes _admit
        self.last_request = 0.0
        self._settled = sub.settled
        self._recover = recover
        self._inbox = ""
        self._arrived: list[Delivery] = []  # routed, not yet in the pipe (one put per reader pass)
        self._wire: Wire | None = None
        self._nsub: Any = None
        self._requests: dict[str, _Request] = {}  # reply subject -> live request, oldest first
        self._request_ids = itertools.count()
        self.outstanding = 0  # sum of the live requests' remaining
        self.stopping = False
        self._quiet: asyncio.Event | None = None
        self._pulling = self._recovering = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.received = self.statuses = self.requests_sent = self.vanished = self.recoveries = 0
        self.redelivered_held = self.progress_acks = 0
        self._warned_at = -math.inf
        self._heard = self._sent_at_heard = 0  # messages + statuses, and requests sent, at the last answer
        self._heard_at = 0.0
        self._silence = max(2.0, 4 * max_wait)  # no answer at all for this long: the consumer may be gone

    async def start(self) -> None:
        self._heard_at = asyncio.get_running_loop().time()
        self._progress_due = self._heard_at + self._progress_every
        self._inbox = self._nc.new_inbox()
        self._wire = wire_for(self._nc)
        self._nsub = await self._wire.subscribe(self._inbox + ".*", self._on_msg)
        self._pulling = True
        await self._pull()

    def _on_msg(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        """A message or status on the inbox (loop thread, inline in the connection's reader: never blocks)."""
        if not reply:
            self._on_status(subject, headers or {})
            return
        self.received += 1
        for request in self._requests.values():
            if request.remaining > 0:
                request.remaining -= 1
                self.outstanding -= 1
                break
        if self.pinned and not self._admit(reply, data, headers):
            return
        self._deliver(reply, data, headers)
        if self.outstanding == 0:
            self._schedule_pull()

    def _admit(self, reply: str, data: bytes, headers: dict[str, str] | None) -> bool:
        """A pinned puller's check of an arrival (``False``: it keeps the message for now)."""
        return True

    def _deliver(self, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        """Route one received message into the pipe (or drop / settle a redelivery of one held here)."""
        attempt, seq = ack_info(reply)
        if seq in self._out:  # redelivered while still held here: the held one is acked/kept alive instead
            self._redelivered(seq)
        elif seq in self._settled:  # redelivered while its ack was on the way: settle the copy the same way
            self._redelivered(seq)
            self._spawn(self._settle_here([(reply, self._settled[seq])]))
        else:
            self.window.held += 1
            token = JsToken(reply, seq, self._sub, self._out)
            if seq:
                self._out[seq] = token
            if not self._arrived and self._wire is not None:
                self._wire.defer(self._flush_arrived)  # at the end of this read: one put, one wake-up
            self._arrived.append(to_delivery(self._topic, data, headers, attempt, token))

    def _flush_arrived(self) -> None:
        """Put what arrived into the pipe (loop thread; after each reader pass, and before the pipe closes)."""
        arrived, self._arrived = self._arrived, []
        if arrived:
            try:
                self._pipe.put_all_nowait(arrived)  # the pipe's capacity is far above the pull window
            except BridgeError:  # closed (not expected: stop() flushes first): nak them, nothing holds them
                logger.warning("%d messages of %r arrived after its pipe closed: nak'ed", len(arrived), self._topic)
                tokens = [d.token for d in arrived if isinstance(d.token, JsToken)]
                for token in tokens:
                    self._out.pop(token.seq, None)
                self._spawn(self._settle_here([(token.reply, NAK) for token in tokens]))

    async def _settle_here(self, messages: list[tuple[str, bytes]]) -> None:
        await self._send(messages)

    async def _send(self, messages: list[tuple[str, bytes]]) -> int:
        """Publish settlements or progress acks (one write; see :mod:`.protocol`); how many failed."""
        assert self._wire is not None
        return await self._wire.publish_many(messages)

    def _redelivered(self, seq: int) -> None:
        self.redelivered_held += 1
        now = asyncio.get_running_loop().time()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            logger.warning(
                "JetStream redelivered message %d of %r (group %r) while it was still held here (waiting, "
                "being handled or its ack on the way; %d such redeliveries so far): the duplicate was dropped, "
                "but another instance of the group may have handled it too; progress acks did not reach the "
                "server within ack_wait=%g s (connection lost or the event loop blocked?): raise "
                "NatsConfig.ack_wait",
                seq,
                self._topic,
                self._sub.group,
                self.redelivered_held,
                self._ack_wait,
            )

    def _on_status(self, subject: str, headers: dict[str, str]) -> None:
        self.statuses += 1
        status = headers.get(_STATUS)
        request = self._requests.get(subject)
        if request is None or status == "100":  # an old request's late status, or a heartbeat
            return
        pending = headers.get(_PENDING)
        unfilled = int(pending) if pending is not None and pending.isdigit() else request.remaining
        self._end(subject, request, unfilled)
        if status == "409" and headers.get("Description") in _NORMAL_409:
            pass
        elif status == "423":  # Nats-Wrong-Pin-Id: the pin moved on (a pinned puller)
            self._unpinned()
        elif status not in ("404", "408"):
            logger.info("pull request of %r ended with status %s %s", self._topic, status, headers)
            if status in ("409", "503"):
                self._start_recover()
        self._schedule_pull()

    def _unpinned(self) -> None:
        """The server says this puller's pin is no longer valid (a pinned puller forgets it)."""

    def _end(self, subject: str, request: _Request, unfilled: int) -> None:
        """Forget a request that the server says still owed ``unfilled`` messages."""
        del self._requests[subject]
        correction = request.remaining - unfilled  # > 0: it got more than attributed to it, others less
        for other in self._requests.values():
            if correction <= 0:
                break
            moved = min(correction, other.remaining)
            other.remaining -= moved
            correction -= moved
        self.outstanding = sum(r.remaining for r in self._requests.values())
        if self._quiet is not None and not self._requests:
            self._quiet.set()

    def credit(self, n: int) -> None:
        """The bus took ``n`` messages out of the pipe (loop thread, via ``call_soon``)."""
        self.window.held -= n
        self._schedule_pull()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wanted(self, now: float) -> int:
        """Messages to request now (0: none): keep the window full and, while it has room, one request waiting.

        A request is sent whenever none would still be waiting ``_renew`` s from now and the window has room,
        so no message waits on the server for a request to be renewed (latency).
        """
        free = self._window - self.outstanding - self.window.held
        if free <= 0:
            return 0
        waiting = any(r.remaining > 0 and r.expires_at - now > self._renew for r in self._requests.values())
        if not waiting:
            return min(self._batch, free)
        return min(self._batch, free) if free >= self._threshold else 0

    def _schedule_pull(self) -> None:
        if self._pulling or self.stopping or self._recovering or self.paused:
            return
        if self._wanted(asyncio.get_running_loop().time()) > 0:
            self._pulling = True
            self._spawn(self._pull())

    async def _pull(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.stopping and not self._recovering and not self.paused and self._nc.is_connected:
                now = loop.time()
                n = self._wanted(now)
                if n <= 0:
                    break
                reply = f"{self._inbox}.{next(self._request_ids)}"
                self._requests[reply] = _Request(now + self._max_wait, n)
                self.outstanding += n
                self.requests_sent += 1
                self.last_request = now
                loop.call_later(self._max_wait - self._renew, self._schedule_pull)
                await self._nc.publish(self._api, self._request(n), reply=reply)
        except Exception as exc:  # the connection went away: the janitor or the reconnect re-pulls
            logger.debug("pull request for %r not sent: %r", self._topic, exc)
        finally:
            self._pulling = False

    def _request(self, n: int) -> bytes:
        """The body of a pull request for ``n`` messages (a pinned priority group adds its fields here)."""
        return b'{"batch":%d,"expires":%d,"max_bytes":%d}' % (n, self._expires, self._max_bytes)

    def check(self, now: float) -> None:
        """Janitor tick (loop thread): forget ended requests, recover if the consumer looks gone."""
        heard = self.received + self.statuses
        if heard != self._heard:
            self._heard, self._heard_at, self._sent_at_heard = heard, now, self.requests_sent
        if self.stopping or not self._nc.is_connected:
            return
        if now >= self._progress_due and not self._progressing:
            self._progress_due = now + self._progress_every
            if self._out:
                self._progressing = True
                self._spawn(self.keep_alive())
        if self._recovering:
            return
        for subject, request in list(self._requests.items()):
            if request.remaining == 0 and request.expires_at < now:  # filled: the server sends no status
                self._end(subject, request, 0)
            elif request.expires_at + _REQUEST_GRACE < now:  # dropped without a 408 (see the class doc)
                self.vanished += 1
                self._end(subject, request, request.remaining)
        if self.requests_sent > self._sent_at_heard and now - self._heard_at > self._silence:
            logger.info("pull requests of %r get no answer at all: re-checking its consumer", self._topic)
            self._start_recover()
        else:
            self._schedule_pull()

    async def keep_alive(self) -> None:
        """Send a progress ack (``+WPI``) for every delivery held here (in the pipe, a lane or a handler).

        Runs every ``ack_wait / 3`` on the loop (started by :meth:`check`): one pass over the held set, no
        crossing, nothing per message on the hot path. The server restarts each message's ``ack_wait``, so a
        backlog waiting in a lane is not redelivered while it waits.
        """
        try:
            tokens = list(self._out.values())
            for i in range(0, len(tokens), _PROGRESS_CHUNK):
                chunk = [(token.reply, PROGRESS) for token in tokens[i : i + _PROGRESS_CHUNK]]
                failed = await self._send(chunk)
                self.progress_acks += len(chunk) - failed
                if failed:  # connection lost: the server may redeliver; recognised by sequence
                    logger.debug("%d progress acks for %r not sent", failed, self._topic)
                    break
        finally:
            self._progressing = False

    def reset(self) -> None:
        """After a reconnect: forget outstanding requests, make sure the consumer exists, pull again."""
        if not self.stopping:
            self._start_recover()

    def _start_recover(self) -> None:
        if self._recovering or self.stopping:
            return
        self._recovering = True
        self._forget_requests()
        self._spawn(self._do_recover())

    def _forget_requests(self) -> None:
        self._requests.clear()
        self.outstanding = 0

    async def _do_recover(self) -> None:
        try:
            await self._recover()
            self.recoveries += 1
        except Exception as exc:
            logger.warning("re-creating the consumer of %r failed (will retry): %r", self._topic, exc)
        finally:
            self._recovering = False
            self._forget_requests()
            self._heard_at, self._sent_at_heard = asyncio.get_running_loop().time(), self.requests_sent
            self._schedule_pull()

    async def stop(self) -> None:
        """Stop pulling, nak what still arrives until the requests are answered, unsubscribe, close."""
        self.stopping = True
        try:
            if self._requests and self._nc.is_connected:
                self._quiet = asyncio.Event()
                try:
                    async with asyncio.timeout(self._max_wait + _REQUEST_GRACE):
                        await self._quiet.wait()
                except TimeoutError:
                    pass
            for task in list(self._tasks):
                task.cancel()
            if self._nsub is not None and self._wire is not None:
                try:
                    await self._wire.unsubscribe(self._nsub)
                except Exception as exc:
                    logger.debug("unsubscribing the inbox of %r failed: %r", self._topic, exc)
        finally:
            self._flush_arrived()
            if self._owns_pipe:
                self._pipe.close()


class CoreListener:
    """A core NATS queue subscription feeding a subscription's pipe (asyncio side; ephemeral topics)."""

    def __init__(self, nc: Any, sub: Subscription, flush_timeout: float) -> None:
        self._nc = nc
        self._sub = sub
        self._pipe = sub.pipe
        self._flush_timeout = flush_timeout
        self._wire: Wire | None = None
        self._nsub: Any = None
        self.stopping = False
        self.received = self.dropped = 0

    async def start(self) -> None:
        self._wire = wire_for(self._nc)
        self._nsub = await self._wire.subscribe(self._sub.topic, self._on_msg, queue=self._sub.group)
        await self._nc.flush(self._flush_timeout)  # the server knows the interest before subscribe returns

    def _on_msg(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        if self.stopping:
            return
        self.received += 1
        token = CoreToken(self._sub)
        if not self._pipe.put_nowait(to_delivery(self._sub.topic, data, headers, 1, token)):
            self.dropped += 1

    def credit(self, n: int) -> None:
        """Core messages need no credits."""

    def check(self, now: float) -> None:
        """Nothing to supervise: the client re-subscribes after reconnects."""

    def reset(self) -> None:
        """Nothing to re-create after a reconnect."""

    async def stop(self) -> None:
        self.stopping = True
        try:
            if self._nsub is not None and self._wire is not None:
                await self._wire.unsubscribe(self._nsub)
        except Exception as exc:
            logger.debug("unsubscribing from %r failed: %r", self._sub.topic, exc)
        finally:
            self._pipe.close()
