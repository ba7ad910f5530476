"""NatsStatistics: the NATS backend's live figures (importable without nats-py, like :mod:`.config`)."""

from __future__ import annotations

import attrs

from ..._statistics import BackendStatistics

__all__ = ["NatsGroupStatistics", "NatsStatistics", "NatsSubscriptionStatistics"]


@attrs.frozen(slots=True, kw_only=True)
class NatsGroupStatistics:
    """This instance's share of a group's consumers (pinned consumers; see :mod:`~.groups`).

    Slots are named ``"base"`` (the topic's own subject) and ``"p<n>"`` (partition ``n``).
    """

    #: This member's id in the group (``""`` for a topic without partitions: no membership there).
    member: str
    #: Live members of the group this instance knows of, itself included (1 without partitions).
    members: int
    #: Slots this instance is assigned and pulls (or, without partitions, stands by for), sorted.
    owned: tuple[str, ...]
    #: Slots whose consumer has pinned this instance (it receives their messages), sorted.
    pinned: tuple[str, ...]
    #: Slots being handed over: no new pulls, waiting for the held messages to be settled before unpinning.
    releasing: tuple[str, ...]
    #: Slots handed over to another member after a rebalance (held messages settled, then unpinned).
    handovers: int
    #: Pins gained (a consumer started delivering to this instance).
    pins: int
    #: Pins lost without a handover (``423``: the server pinned another member).
    pin_losses: int
    #: Consumer resets to the ack floor on gaining a pin that a previous member left with unacked messages.
    resets: int


@attrs.frozen(slots=True, kw_only=True)
class NatsSubscriptionStatistics:
    """One subscription's fetcher: a JetStream puller (persistent topic) or a core queue subscription."""

    #: The topic (subject) consumed.
    topic: str
    #: The consumer group (durable consumer / queue group).
    group: str
    #: ``True`` for a JetStream pull consumer, ``False`` for a core NATS queue subscription (ephemeral topic).
    persistent: bool
    #: Whether its fetcher task is still running.
    running: bool
    #: Messages received from the server.
    received: int
    #: Deliveries handed to the bus and not settled yet.
    unsettled: int
    #: Pull requests sent (0 for core subscriptions).
    pull_requests: int
    #: Pull requests the server never answered (expired or lost in a reconnect) and that were written off.
    vanished_pull_requests: int
    #: Times the durable consumer was re-created after it went missing.
    consumer_recoveries: int
    #: Core messages dropped because the subscription's buffer was full (0 for JetStream).
    dropped: int
    #: Redeliveries of a message still held here (queued or running), recognised by stream sequence and dropped.
    redelivered_held: int
    #: Progress acks (``+WPI``) sent for held deliveries (every ``ack_wait / 3`` s).
    progress_acks: int
    #: The group share of a persistent subscription (``None`` for core NATS subscriptions).
    ownership: NatsGroupStatistics | None = None


@attrs.frozen(slots=True, kw_only=True)
class NatsStatistics(BackendStatistics):
    """The NATS backend's figures: those of :class:`~trio_eventbus.BackendStatistics` (``state`` is
    ``"connecting"``, ``"connected"``, ``"reconnecting"`` or ``"closed"``; ``pending_outcomes`` counts JetStream
    publishes awaiting their PubAck) and the following."""

    #: The asyncio bridge in use (``"thread"`` or ``"trio-asyncio"``; ``None`` before it opened).
    bridge: str | None
    #: Connection losses seen (each is followed by reconnect attempts).
    disconnects: int
    #: Errors the client reported through its error callback.
    connection_errors: int
    #: JetStream publishes acknowledged (stored, or recognised as duplicates).
    publish_acked: int
    #: Publishes JetStream acknowledged as duplicates of a ``Nats-Msg-Id`` inside the window (not stored again).
    publish_duplicates: int
    #: Publishes that failed (refused by the client or answered with an error).
    publish_failed: int
    #: Publishes without a PubAck within ``NatsConfig.publish_timeout`` (reported as failed).
    publish_timeouts: int
    #: Messages published with core NATS (ephemeral topics: no PubAck).
    core_published: int
    #: Messages received by every subscription.
    received: int
    #: Acks sent.
    acks: int
    #: Naks sent (redelivery requests).
    naks: int
    #: Terms sent (stop redelivering).
    terms: int
    #: Settlements waiting to be sent.
    acks_queued: int
    #: Settlement batches sent (each crosses the bridge once).
    ack_batches: int
    #: One entry per subscription, in subscription order.
    subscription_details: tuple[NatsSubscriptionStatistics, ...]
