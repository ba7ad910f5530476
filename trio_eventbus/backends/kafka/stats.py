"""KafkaStatistics: the Kafka backend's live figures (importable without aiokafka, like :mod:`.config`)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ..._statistics import BackendStatistics

__all__ = ["KafkaGroupStatistics", "KafkaStatistics"]


@attrs.frozen(slots=True, kw_only=True)
class KafkaGroupStatistics:
    """One consumer group's consumer (one aiokafka consumer per group and bus)."""

    #: Topics this bus consumes in the group, sorted.
    topics: tuple[str, ...]
    #: Partitions assigned to this member, as ``"topic[partition]"``, sorted.
    assigned: tuple[str, ...]
    #: Assigned partitions paused because the bus holds too many of their records or bytes (backpressure).
    paused: tuple[str, ...]
    #: Records fetched and not settled: queued for the bus or handed to it (what ``pause_threshold`` counts).
    unsettled: int
    #: Records handed to the bus and not settled yet.
    in_flight: int
    #: Bytes (record values) of the unsettled records: what ``KafkaConfig.pause_bytes`` bounds.
    unsettled_bytes: int
    #: The highest ``unsettled_bytes`` since the group started.
    unsettled_bytes_max: int
    #: Whether the group's partitions are paused because ``unsettled_bytes`` passed ``pause_bytes``.
    paused_for_bytes: bool
    #: Records between the committed (or committable) offset and the high-water mark, over the assignment.
    lag: int
    #: Naks (the partition is rewound to the nak'ed record: Kafka redelivers by seeking).
    naks: int
    #: The group generation of the current assignment.
    generation: int
    #: Rebalances this member went through.
    rebalances: int
    #: Offset commits that succeeded.
    commits: int
    #: Offset commits that failed (retried with the next commit).
    commit_failures: int
    #: Queued records dropped when their partition was revoked or rewound (they are fetched again).
    dropped_on_halt: int
    #: Seeks back to a nak'ed record.
    rewinds: int
    #: Fetched records of a partition no longer assigned (or of an older assignment), ignored.
    stale_records: int
    #: Fetch errors the consumer recovered from.
    fetch_errors: int
    #: The fetch pipe between the loops, as its ``repr`` (depth, waiters).
    pipe: str


@attrs.frozen(slots=True, kw_only=True)
class KafkaStatistics(BackendStatistics):
    """The Kafka backend's figures: those of :class:`~trio_eventbus.BackendStatistics` (``state`` is ``"new"``,
    ``"connecting"``, ``"running"``, ``"closing"`` or ``"closed"``; aiokafka reconnects by itself without
    telling, so ``reconnects`` is 0; ``fetchers`` counts group consumers) and the following."""

    #: The bootstrap servers of the cluster.
    bootstrap_servers: tuple[str, ...]
    #: The asyncio bridge in use (``"thread"`` or ``"trio-asyncio"``; ``None`` before it opened).
    bridge: str | None
    #: Partition count of every topic this bus provisioned or checked.
    topics: Mapping[str, int]
    #: Topics whose partition count differs from ``TopicOptions.partitions``: ``(actual, asked)``.
    partition_mismatches: Mapping[str, tuple[int, int]]
    #: One entry per consumer group of this bus.
    groups: Mapping[str, KafkaGroupStatistics]
