"""Pinned consumers: JetStream priority groups with ``pinned_client`` (ADR-42), one member served at a time.

Every durable consumer of the bus has ``priority_policy: "pinned_client"``, the priority group
:data:`~.partitions.PIN_GROUP` and ``priority_timeout`` = ``NatsConfig.pinned_ttl``. The server serves one
client of such a consumer at a time: the first pull request without a pin id is *pinned* (every message it gets
carries the pin id in ``Nats-Pin-Id``); from then on only requests carrying that id get messages, others wait
(without an id) or are refused with ``423`` (a stale id). The pin ends when the pinned client sends no request
for ``pinned_ttl`` (dead), or when the unpin API (``$JS.API.CONSUMER.UNPIN``) is called; a waiting request is
then pinned at once. This is the server-side guarantee that at most one instance receives a consumer's messages
at a time, whatever each instance believes about the group's membership.

:class:`PinnedPuller` (a :class:`~.consume.Puller`, asyncio side):

- standing by: a puller pulls only while the pin is free or its own (it looks at the consumer's pin every
  ``min(0.5, pinned_ttl / 4)`` s, at start and after losing the pin): a request waiting while another client
  is pinned makes the server rotate the consumer's redelivery queue (it takes a redelivery off, finds no
  eligible request and appends it again), and what the previous member nak'ed would come back out of order;
- requests carry ``"group"`` and, once pinned, ``"id"``; a ``423`` forgets the pin (pulling goes on without
  one, so the puller waits for the pin to come back to it);
- renewal: while pinned, a request goes out at least every ``pinned_ttl / 3`` s even when the window is full
  (backpressure): a ``no_wait`` request with ``max_bytes: 1`` that renews the pin and can bring no message;
- the gate of a new pin: everything that arrives with a new pin id is kept back: first the redeliveries
  (the server serves them before anything new: what the previous member nak'ed when it closed, or what was
  on its way to a member that died), up to the first *new* message (delivery count 1, or a request ending
  unfilled); then new requests wait and the outstanding ones are let end; then the
  consumer's ``num_ack_pending`` beyond what this puller holds says whether a previous member left deliveries
  neither acked nor nak'ed (it was killed with messages in its hands: they would come back only after
  ``ack_wait``, behind newer messages of the same keys: an order violation). If so the consumer is *reset* to
  its ack floor (``$JS.API.CONSUMER.RESET``, nats-server 2.14) and what was kept back is dropped: the server
  delivers again from the first unacked message, in stream order, so the new member handles the dead
  member's unacked messages before anything newer. Messages the dead member acked above its ack floor come
  again too: the duplicates are bounded by what it had received past its ack floor. Otherwise the kept-back
  messages are routed in stream order. On a server without the reset API the reset fails, is logged, and the
  kept-back messages are routed (order then rests on ``ack_wait``);
- handover (:meth:`PinnedPuller.release`): no new requests, the outstanding ones end (what they bring is
  routed and handled), every delivery of this puller is settled and its settlement sent, the server shows no
  ack pending, then unpin: the next member is pinned at once and its gate finds nothing unacked.

The one place where two members can handle one key concurrently: a member that sends nothing for
``pinned_ttl`` while it still holds messages (its event loop blocked, or its connection down, for that long)
loses its pin; the next member resets the consumer and handles those messages again while the first may still
be finishing them. Raise ``pinned_ttl`` where that matters more than failover time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from .consume import Puller
from .partitions import PIN_GROUP
from .stats import NatsGroupStatistics
from .wire import H_PIN, ack_info

__all__ = ["PinnedPuller", "api_request", "create_consumer", "unpin"]

logger = logging.getLogger("trio_eventbus.nats")
_SETTLE_POLL = 0.01  # seconds between two looks at a releasing puller's held set
_ACK_CONFIRM = 2.0  # at most this long waiting for the server to show the acks of a handover
_FLOOR_RECHECKS = 3  # looks at the ack floor before a reset (acks of a handover may still be in flight)


def _consumer_seq(reply: str) -> int:
    """The consumer sequence of an ack subject (0 if it cannot be parsed)."""
    tokens = reply.split(".")
    try:
        return int(tokens[6] if len(tokens) == 9 else tokens[8])
    except (IndexError, ValueError):
        return 0


async def api_request(js: Any, subject: str, body: dict[str, Any] | None, wait: float) -> dict[str, Any]:
    """One JetStream API request (raises nats-py's ``APIError`` subclasses on an error answer)."""
    payload = b"" if body is None else json.dumps(body).encode()
    answer: dict[str, Any] = await js._api_request(f"$JS.API.{subject}", payload, timeout=wait)
    return answer


async def create_consumer(js: Any, stream: str, config: dict[str, Any], wait: float) -> dict[str, Any]:
    """Create (or update) a durable consumer from a raw config (nats-py's ``ConsumerConfig`` has no priority
    fields)."""
    name = config["durable_name"]
    return await api_request(js, f"CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": config}, wait)


async def unpin(js: Any, stream: str, consumer: str, wait: float) -> None:
    """Unpin whichever client ``consumer`` has pinned (the next waiting request is pinned at once)."""
    await api_request(js, f"CONSUMER.UNPIN.{stream}.{consumer}", {"group": PIN_GROUP}, wait)


class Received:
    """A message received on a pinned puller's inbox and kept back by its gate."""

    __slots__ = ("data", "headers", "reply")

    def __init__(self, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        self.reply = reply
        self.data = data
        self.headers = headers


class PinnedPuller(Puller):
    """A puller of a ``pinned_client`` consumer (see the module docstring). Loop thread only."""

    def __init__(self, *args: Any, js: Any, pinned_ttl: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinned = True
        self._js = js
        self._stream, self._consumer = self.stream, self.durable
        self._timeout = 5.0
        self._renew_every = pinned_ttl / 3
        self._poll = min(0.5, pinned_ttl / 4)  # looks at a pin held by another client (standing by)
        self._standby = False
        self._keepalive_ids = 0
        self.pin: str | None = None
        self._gate: list[Received] | None = None
        self._after_reset = False  # reset: drop deliveries made before it (see _admit)
        self.stale = 0
        self._collecting = False  # the gate collects redeliveries until the first new message
        self._armed = False  # pinned anew: the first new message checks for a previous member's unacked ones
        self.releasing = False
        self.pins = self.pin_losses = self.resets = 0

    # -- requests ------------------------------------------------------------------------------------

    def _request(self, n: int) -> bytes:
        if self.pin is None:
            return b'{"batch":%d,"expires":%d,"max_bytes":%d,"group":"%s"}' % (
                n,
                self._expires,
                self._max_bytes,
                PIN_GROUP.encode(),
            )
        return b'{"batch":%d,"expires":%d,"max_bytes":%d,"group":"%s","id":"%s"}' % (
            n,
            self._expires,
            self._max_bytes,
            PIN_GROUP.encode(),
            self.pin.encode(),
        )

    def check(self, now: float) -> None:
        super().check(now)
        if self.pin is not None and not self.stopping and now - self.last_request >= self._renew_every:
            self.last_request = now
            self._spawn(self._renew_pin())

    async def _renew_pin(self) -> None:
        """A request that renews the pin and brings nothing (``max_bytes`` 1 fits no message)."""
        if self.pin is None or not self._nc.is_connected:
            return
        self._keepalive_ids += 1
        body = b'{"batch":1,"max_bytes":1,"no_wait":true,"group":"%s","id":"%s"}' % (
            PIN_GROUP.encode(),
            self.pin.encode(),
        )
        try:
            await self._nc.publish(self._api, body, reply=f"{self._inbox}.k{self._keepalive_ids}")
        except Exception as exc:
            logger.debug("renewing the pin of %s/%s failed: %r", self._stream, self._consumer, exc)

    def _unpinned(self) -> None:
        if self.pin is not None:
            self.pin_losses += 1
            logger.info("consumer %s/%s pinned another member (423): this one stops receiving from it",
                        self._stream, self._consumer)  # fmt: skip
        self.pin = None
        self._stand_by()

    # -- standing by ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.paused = True  # the base start's first pull waits for _wait_free
        await super().start()
        self._stand_by()

    def _stand_by(self) -> None:
        if self._standby or self.stopping or self.releasing:
            return
        self._standby = True
        self.paused = True
        self._spawn(self._wait_free())

    async def _wait_free(self) -> None:
        """Pull only once no other client holds the consumer's pin (or it is ours).

        A pull request that waits while another client is pinned makes the server take each redelivery off
        the consumer's redelivery queue, find no eligible request and put it back at the end: the queue
        rotates, and what the previous member nak'ed would come back out of order. So a member looks (every
        ``min(0.5, pinned_ttl / 4)`` s) and pulls only when the pin is free; the server then serves the
        redeliveries in the order of the naks.
        """
        try:
            while not self.stopping and not self.releasing:
                try:
                    info = await api_request(self._js, f"CONSUMER.INFO.{self._stream}.{self._consumer}", None,
                                             self._timeout)  # fmt: skip
                    holder = next(
                        (
                            g.get("pinned_client_id")
                            for g in info.get("priority_groups") or ()
                            if g.get("group") == PIN_GROUP
                        ),
                        None,
                    )
                    if not holder or holder == self.pin:
                        break
                except Exception as exc:  # connection down, consumer gone: the next look (or recovery) sees
                    logger.debug("looking at the pin of %s/%s failed: %r", self._stream, self._consumer, exc)
                await asyncio.sleep(self._poll)
        finally:
            self._standby = False
        self.resume()

    # -- the gate of a new pin --------------------------------------------------------------------------

    def _admit(self, reply: str, data: bytes, headers: dict[str, str] | None) -> bool:
        if self._gate is not None:
            self._gate.append(Received(reply, data, headers))
            if self._collecting and ack_info(reply)[0] == 1:
                self._close_gate()
            return False
        if self._after_reset:
            # the server sends a consumer's deliveries in order, and the first one after a reset has consumer
            # sequence 1: anything before it was delivered before the reset (a request that outlived the gate's
            # wait) and comes again from the ack floor: dropped, it would jump the redeliveries
            if _consumer_seq(reply) != 1:
                self.stale += 1
                return False
            self._after_reset = False
        pin = headers.get(H_PIN) if headers else None
        if pin is not None and pin != self.pin:
            self.pin = pin
            self.pins += 1
            self._armed = True
        if not self._armed:
            return True
        # pinned anew: collect the redeliveries (served first, in the order of the previous member's naks, or
        # sent to a member that died meanwhile) up to the first new message, then decide (see _open_gate)
        self._armed = False
        self._gate = [Received(reply, data, headers)]
        self._collecting = True
        if ack_info(reply)[0] == 1:
            self._close_gate()
        return False

    def _close_gate(self) -> None:
        """Stop collecting: no new requests; once the outstanding ones ended, check and reset or route."""
        self._collecting = False
        self.paused = True
        self._spawn(self._open_gate())

    def _on_status(self, subject: str, headers: dict[str, str]) -> None:
        super()._on_status(subject, headers)
        if self._collecting and headers.get("Status") in ("404", "408"):
            self._close_gate()  # only redeliveries came, and a request ended unfilled: nothing more to collect

    async def _open_gate(self) -> None:
        try:
            await self._quiet_requests()
            if await self._left_unacked():
                answer = await api_request(self._js, f"CONSUMER.RESET.{self._stream}.{self._consumer}", None,
                                           self._timeout)  # fmt: skip
                self.resets += 1
                logger.warning(
                    "consumer %s/%s: pinned here after a member that left messages unacknowledged; reset to its "
                    "ack floor (redelivered from stream sequence %s, in order)",
                    self._stream,
                    self._consumer,
                    answer.get("reset_seq"),
                )
                self._gate = None
                self._after_reset = True
                self.resume()
                return
        except Exception as exc:
            logger.warning("consumer %s/%s: checking its pending acks after a new pin failed (%r); delivering on",
                           self._stream, self._consumer, exc)  # fmt: skip
        kept, self._gate = self._gate or [], None
        # in stream order: a redelivery of an older message (a nak of the previous member processed while the
        # gate was closed) may have arrived after newer ones
        kept.sort(key=lambda m: ack_info(m.reply)[1])
        for msg in kept:
            self._deliver(msg.reply, msg.data, msg.headers)
        self.resume()

    async def _left_unacked(self) -> bool:
        """Whether the consumer has deliveries pending that are neither held here nor queued for redelivery.

        Called at the first new message (not a redelivery) since this puller was pinned: the server serves
        redeliveries first, so pending deliveries beyond the ones held here are a previous member's, received
        and never settled (it was killed). Looked at a few times: acks sent by this member or by one that just
        handed over may still be on their way.
        """
        for attempt in range(_FLOOR_RECHECKS):
            info = await api_request(self._js, f"CONSUMER.INFO.{self._stream}.{self._consumer}", None, self._timeout)
            others = int(info.get("num_ack_pending", 0)) - len(self._out) - len(self._gate or ())
            if others <= 0:
                return False
            if attempt < _FLOOR_RECHECKS - 1:
                await asyncio.sleep(0.05 * (attempt + 1))
        return True

    async def _quiet_requests(self) -> None:
        """Wait until every outstanding pull request ended (at most their expiry plus a grace)."""
        if not self._requests:
            return
        self._quiet = asyncio.Event()
        try:
            async with asyncio.timeout(self._max_wait + 0.5):
                await self._quiet.wait()
        except TimeoutError:
            self._forget_requests()
        finally:
            self._quiet = None

    def resume(self) -> None:
        """Pull again (after a gate, or once the pin is free)."""
        if self._gate is None and not self.releasing and not self._standby and not self.stopping:
            self.paused = False
            self._schedule_pull()

    async def stop(self) -> None:
        """Stop (see :meth:`Puller.stop`); messages kept back by an open gate go into the pipe first, so they
        are nak'ed in order with the rest."""
        self.stopping = True
        kept, self._gate = self._gate or [], None
        for msg in kept:
            self._deliver(msg.reply, msg.data, msg.headers)
        await super().stop()

    # -- handover -------------------------------------------------------------------------------------

    async def release(self) -> None:
        """Hand this consumer over (see the module docstring); returns once unpinned (or stopped)."""
        self.releasing = True
        self.paused = True
        await self._quiet_requests()
        # polled, only during a handover: the settlement path (per message) stays free of notifications
        while (self._out or self._gate is not None) and not self.stopping:  # noqa: ASYNC110
            await asyncio.sleep(_SETTLE_POLL)
        if self.pin is not None and not self.stopping:
            await self.unpin()

    async def unpin(self, *, confirm: bool = True) -> None:
        """Unpin this consumer if it has pinned us; with ``confirm``, once the server shows no ack pending
        (bounded by ``_ACK_CONFIRM``: a handover). At close (``confirm=False``) the deliveries nak'ed there stay
        pending: the next member's gate resets to them."""
        if self.pin is None:
            return
        if confirm:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ACK_CONFIRM):
                    while True:
                        info = await api_request(self._js, f"CONSUMER.INFO.{self._stream}.{self._consumer}",
                                                 None, self._timeout)  # fmt: skip
                        if not info.get("num_ack_pending"):
                            break
                        await asyncio.sleep(0.02)
        try:
            await unpin(self._js, self._stream, self._consumer, self._timeout)
        except Exception as exc:
            logger.info("unpinning %s/%s failed (%r): the next member waits pinned_ttl", self._stream,
                        self._consumer, exc)  # fmt: skip
        self.pin = None

    def ownership(self) -> NatsGroupStatistics:
        """The ownership figures of an unpartitioned subscription (one pinned consumer; every member pulls it
        and the server serves one)."""
        return NatsGroupStatistics(
            member="",
            members=1,
            owned=("base",),
            pinned=("base",) if self.pin is not None else (),
            releasing=(),
            handovers=0,
            pins=self.pins,
            pin_losses=self.pin_losses,
            resets=self.resets,
        )
