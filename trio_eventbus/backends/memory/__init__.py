"""The in-memory backend: a broker with broker semantics, inside one Trio run.

It is the reference implementation of the backend contract (:mod:`trio_eventbus._abc`) and the public test
double: tests of applications run on it instead of mocking the bus.

Semantics
    - A topic is a log. Persistent topics keep each message until every group that exists has acked it
      (a topic with no group yet keeps everything, up to ``MemoryConfig.topic_capacity``, after which
      publishers wait: backpressure). A group created later starts at the oldest retained message.
    - Ephemeral topics (``TopicOptions(persistent=False)``) keep messages only for groups that have a live
      subscriber at publish time; a message nobody listens to is dropped and counted (``dropped``).
    - Retention limits ``max_messages``, ``max_bytes`` and ``max_age`` drop the oldest messages (counted as
      ``discarded``), as JetStream's discard-old policy does.
    - Every group gets every message; within a group each message goes to one subscriber. Consumer groups are
      partitioned like Kafka's (:mod:`.groups`): a keyed message belongs to partition
      ``partition_of(key, TopicOptions.partitions)``, a keyless one to ``offset % partitions`` (round-robin);
      each partition is owned by one member (a bus's subscription) at a time, assigned round-robin over the
      members sorted by id and reassigned when one joins or leaves. A partition that moves is handed over only
      after its old owner settled what it took of it (nak'ed messages go back in offset order), so one key is
      handled by one member at a time, in publish order, across rebalances. Within a partition messages are
      handed out in log order. With ``partitions=1`` (the default) one member takes everything and the others
      stand by until it leaves.
    - At least once: a message stays pending until acked or termed; ``NAK`` redelivers it after the delay;
      messages a subscriber held when its bus closed are redelivered to the group. ``attempt`` counts
      deliveries to the group.
    - Dedupe: a ``message_id`` seen on the topic within ``duplicate_window`` seconds, and among the newest
      ``MemoryBroker(max_duplicate_ids=...)`` ids of the topic (20,000 by default), is acked, not stored. Both
      bounds forget the oldest id first; a forgotten id is accepted again (see :class:`MemoryBroker`).
    - A fetch batch holds at most ``MemoryConfig.fetch_batch`` messages and ``fetch_bytes`` bytes of bodies
      (at least one message); the fetcher hands it to the bus and waits while the bus's lanes are full (by
      count, or by bytes: ``BusOptions.max_buffered_bytes``) before it takes the next.

In-process, the envelope object of an envelope publish travels with its encoded bytes and is handed to
envelope subscribers as is (decoding would give an equal value: the codec round-trip is property-tested), so
the memory backend pays the encode cost but not the decode cost. Raw subscribers get the bytes.

All times are Trio's clock, so ``MockClock`` (autojump) drives redelivery delays and ``max_age``.

Lifecycle: :meth:`MemoryBackend.open` runs the fetchers in a nursery of its own for the block. ``send``
reports outcomes itself (no ack handler task), so every outcome is on the channel when ``send`` returns or
is cancelled. Exit (normal, error or cancellation; shielded, see :func:`~trio_eventbus._abc.exit_scope`):
the fetchers are cancelled and awaited (they end at once) and the bus leaves its groups (its partitions are
reassigned and move as soon as what it holds of them is settled: on a graceful close the bus first drains its
lanes), then every delivery this bus held and never settled goes back to its group for redelivery (at once,
not after a timeout), and the subscriptions are released.

Modules: :mod:`.log` (topics, retention, the groups' cursors, :class:`MemoryBroker`), :mod:`.groups`
(partition ownership and the hand-over), :mod:`.backend` (:class:`MemoryBackend`, config, statistics).
"""

from __future__ import annotations

from .backend import MemoryBackend, MemoryConfig, MemoryStatistics, MemorySubscriptionStatistics
from .log import MemoryBroker

__all__ = ["MemoryBackend", "MemoryBroker", "MemoryConfig", "MemoryStatistics", "MemorySubscriptionStatistics"]
