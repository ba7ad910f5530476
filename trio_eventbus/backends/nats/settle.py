"""Settlements of the NATS backend: acks, naks and terms sent in batches, never blocking the bus.

``settle`` queues the ack/nak/term in a :class:`LoopInbox` and never blocks; its worker on the loop publishes
whatever accumulated as one write (:meth:`.protocol.Wire.publish_many`), so acks cross in batches while the
previous batch is sent. Sending a settlement also
ends the delivery's progress acks (it leaves :attr:`Subscription.out`); an ack or term is remembered for a
while (the last ``_REMEMBERED`` per subscription, :attr:`Subscription.settled`), so a redelivery that crossed
it on the wire is settled the same way and dropped instead of handled twice; after a nak a redelivery is a new
delivery again. A settlement that cannot reach the server (connection lost, backend closed) means
redelivery after ``ack_wait``: at least once. Deliveries the bus never routed (held in a pipe) or never
settled are nak'ed when the backend closes (:meth:`Settler.nak_all`, :meth:`Settler.nak_held`), so another
subscriber gets them at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..._abc import Delivery, Disposition
from .._bridge import Bridge, BridgeError
from .._bridge.inbox import LoopInbox
from .consume import CoreToken, JsToken, Subscription
from .protocol import wire_for
from .wire import ACK, NAK, TERM, nak_delay

__all__ = ["Settler"]

logger = logging.getLogger("trio_eventbus.nats")
#: Final settlements remembered per subscription: a redelivery that crossed its ack on the wire arrives within
#: a round trip, while at most a few pull batches arrive in between.
_REMEMBERED = 4096


class Settler:
    """Sends acks, naks and terms in batches without ever blocking (see module docstring)."""

    def __init__(self) -> None:
        self._bridge: Bridge | None = None
        self._nc: Any = None
        self._inbox: LoopInbox[tuple[JsToken, bytes]] | None = None
        self.acks = self.naks = self.terms = self.failed = self.dropped = 0

    @property
    def queued(self) -> int:
        return 0 if self._inbox is None else len(self._inbox)

    @property
    def batches(self) -> int:
        return 0 if self._inbox is None else self._inbox.passes

    def attach(self, bridge: Bridge, nc: Any) -> None:
        self._bridge, self._nc = bridge, nc
        self._inbox = LoopInbox(bridge, self._send)

    def _queue(self, items: list[tuple[JsToken, bytes]]) -> None:
        if self._inbox is None or not items:
            return
        try:
            self._inbox.put(items)
        except BridgeError:  # the connection is closed: the server redelivers after ack_wait
            self.dropped += len(items)

    def settle(self, delivery: Delivery, disposition: Disposition, delay: float) -> None:
        """Queue one settlement; never blocks. Settling a delivery twice is ignored."""
        token = delivery.token
        if type(token) is JsToken:
            held = token.sub.held
            if token not in held:
                return
            held.remove(token)
            if disposition is Disposition.ACK:
                self.acks += 1
                payload = ACK
            elif disposition is Disposition.NAK:
                self.naks += 1
                payload = nak_delay(delay)
            else:
                self.terms += 1
                payload = TERM
            self._queue([(token, payload)])
        elif type(token) is CoreToken and disposition is Disposition.NAK:
            self.naks += 1
            token.sub.requeue(delivery, delay)

    def nak_all(self, deliveries: Sequence[Delivery]) -> None:
        """Nak deliveries the bus never saw or never settled (redelivered to the group at once)."""
        out = []
        for delivery in deliveries:
            token = delivery.token
            if type(token) is JsToken:
                token.sub.held.discard(token)
                out.append((token, NAK))
        self.naks += len(out)
        self._queue(out)

    def nak_held(self, sub: Subscription) -> None:
        """Nak every delivery of ``sub`` handed to the bus and never settled, in stream order: the server
        redelivers nak'ed messages in the order of the naks, so each key stays in order."""
        out = [(token, NAK) for token in sorted(sub.held, key=_seq)]
        sub.held.clear()
        self.naks += len(out)
        self._queue(out)

    async def flush(self) -> None:
        """Wait until every settlement queued so far was handed to the connection."""
        if self._bridge is not None and self._inbox is not None:
            await self._bridge.run(self._inbox.wait_idle)

    async def _send(self, batch: list[tuple[JsToken, bytes]]) -> None:  # loop thread
        self.failed += await _send(self._nc, batch)


def _seq(token: JsToken) -> int:
    return token.seq


async def _send(nc: Any, batch: list[tuple[JsToken, bytes]]) -> int:
    messages = []
    for token, payload in batch:
        out = token.out  # settled: no more progress acks
        if out.get(token.seq) is token:
            del out[token.seq]
            if payload is ACK or payload is TERM:  # final: remember it briefly (a crossing redelivery)
                settled = token.sub.settled
                settled[token.seq] = payload
                if len(settled) > _REMEMBERED:
                    settled.popitem(last=False)
        messages.append((token.reply, payload))
    failed = await wire_for(nc).publish_many(messages)  # one write for the batch (see .protocol)
    if failed:  # connection closed: the server redelivers after ack_wait
        logger.debug("%d of %d acks could not be sent", failed, len(batch))
    return failed
