"""The NATS layout of partitioned topics: subjects, consumers and the publisher's key -> subject choice.

Pure functions, no I/O (see :mod:`.groups` for how a group consumes them).

Subjects
    A topic with ``TopicOptions.partitions = P > 1`` keeps its base subject ``topic`` and gets ``P`` partition
    subjects ``<p>.<topic>`` (``0.orders.created`` … ``5.orders.created``): the partition number as the first
    token, the layout of the NATS "(Partitioned) Consumer Groups" ADR and of the ``pcgroups`` libraries' static
    groups (whose stream subject transforms write ``{{partition(n, …)}}.<subject>``). The topic's one stream
    captures exactly these ``P + 1`` literal subjects, so streams of other topics never overlap with it unless
    a topic is literally named ``<digits>.<topic>``: JetStream refuses that overlap and the bus raises
    :class:`~trio_eventbus.InvalidTopicError` naming it (``orders.created.dlq``, the dead letters, has its
    own stream and never clashes).

Publishing
    A keyed message goes to ``<partition_of(key, P)>.<topic>`` (:func:`trio_eventbus._partition.partition_of`,
    sarama's FNV-1a: the Go services' Kafka partitioner, the same on every backend); a keyless one to the base
    subject. Plain NATS or Go publishers keep publishing on ``topic`` (no partition, maybe no headers): the
    base subject is consumed too (its own consumer, owned by one member at a time), so their messages stay
    consumable and keep their order among themselves.

Consumers
    Per (topic, group): the base consumer is named after the group (the durable of an unpartitioned topic,
    so an existing one is reused) and filters ``topic``; partition ``p``'s consumer is ``<group>~p<p>`` and
    filters ``<p>.<topic>`` (``~`` is not allowed in group names, so these never clash with another group's
    consumer). Every one has ``priority_policy: pinned_client`` with the priority group :data:`PIN_GROUP`.

Slots
    A group's unit of ownership is a *slot*: ``-1`` for the base consumer, ``0..P-1`` for the partitions.
"""

from __future__ import annotations

import functools

from ..._partition import partition_of

__all__ = [
    "BASE",
    "PIN_GROUP",
    "consumer_name",
    "filter_subject",
    "partition_subject",
    "slots",
    "stream_subjects",
    "subject_for",
]

#: The slot of the base subject (keyless messages, plain NATS and Go publishers).
BASE = -1
#: The priority group every consumer of a group pins its members in.
PIN_GROUP = "teb"


def partition_subject(topic: str, partition: int) -> str:
    """The subject of ``partition`` of ``topic``: ``<partition>.<topic>``."""
    return f"{partition}.{topic}"


def stream_subjects(topic: str, partitions: int) -> list[str]:
    """The subjects a topic's stream captures: the base subject, then one per partition (when ``P > 1``)."""
    if partitions <= 1:
        return [topic]
    return [topic, *(partition_subject(topic, p) for p in range(partitions))]


def slots(partitions: int) -> list[int]:
    """The slots a group of a topic with ``partitions`` owns: the base, then the partitions (when ``P > 1``)."""
    return [BASE] if partitions <= 1 else [BASE, *range(partitions)]


def consumer_name(group: str, slot: int) -> str:
    """The durable consumer of ``slot`` for ``group`` (the base consumer is the group's name)."""
    return group if slot == BASE else f"{group}~p{slot}"


def filter_subject(topic: str, slot: int) -> str:
    """The filter subject of ``slot``'s consumer."""
    return topic if slot == BASE else partition_subject(topic, slot)


@functools.lru_cache(maxsize=65536)
def _partition(key: str, partitions: int) -> int:
    return partition_of(key, partitions)


def subject_for(topic: str, subjects: list[str], key: str | None) -> str:
    """The subject a message with ``key`` is published on (``subjects`` = :func:`stream_subjects`)."""
    if key is None or len(subjects) == 1:
        return topic
    return subjects[1 + _partition(key, len(subjects) - 1)]
