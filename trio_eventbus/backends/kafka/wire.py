"""The Kafka wire format of the bus: where key and message id travel, and how native errors become bus errors.

Pure constants and functions, no I/O; shared by the publishing and consuming halves of the Kafka backend.

Key and message id (``OutgoingMessage.key`` / ``message_id``, ``Delivery.key`` / ``message_id``)
    The key is the record key (UTF-8); the producer places it on a partition with the function
    ``KafkaConfig.partitioner`` names (:data:`PARTITIONERS`: murmur2 as the Java client, or FNV-1a as Go's
    sarama), so one key's messages stay in one partition, in order. The message id travels in the header
    ``X-Message-ID``, written for every message that has one; the envelope's own headers are never consulted
    to decide. On decoding, a record without ``X-Message-ID`` takes its id from ``X-Event-ID`` when present:
    the envelopes of producers that do not set the bus's header (the Go services of the seeds, earlier
    versions of this bus) keep their dedupe id. The bus refuses both names as user headers (see
    :func:`trio_eventbus._envelope.check_headers`), so the fallback cannot be spoofed through it.

Errors
    :data:`KAFKA_ERRORS` (connection, topic and group calls) and :data:`KAFKA_PUBLISH_ERRORS` (per-message
    outcomes) are the mappings given to :func:`~trio_eventbus._exceptions.map_exceptions` /
    :func:`~trio_eventbus._exceptions.translate_exception`; the native error stays in ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidConfigurationError,
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.partitioner import murmur2

from ..._exceptions import (
    BackendUnavailable,
    ExceptionMapping,
    InvalidOptionError,
    MessageTooLargeError,
    PublishError,
    translate_exception,
)
from ..._partition import fnv1a_32

__all__ = [
    "H_EVENT_ID",
    "H_MESSAGE_ID",
    "KAFKA_ERRORS",
    "KAFKA_PUBLISH_ERRORS",
    "KAFKA_TOPIC_ERRORS",
    "PARTITIONERS",
    "KeyPartitioner",
    "fnv1a_partition",
    "murmur2_partition",
    "publish_error",
]

#: Header carrying ``message_id`` (Kafka records have no id field of their own).
H_MESSAGE_ID = "X-Message-ID"
#: The envelope header decoding falls back to for records without ``X-Message-ID`` (see the module docstring).
H_EVENT_ID = "X-Event-ID"

#: The cluster cannot be reached, timed out, or refused us: the backend is unavailable.
KAFKA_ERRORS: ExceptionMapping = {(KafkaError, OSError, TimeoutError): BackendUnavailable}
#: Creating or checking a topic: a refused setting is the caller's option, the rest as :data:`KAFKA_ERRORS`.
KAFKA_TOPIC_ERRORS: ExceptionMapping = {
    (InvalidReplicationFactorError, InvalidPartitionsError, InvalidConfigurationError): InvalidOptionError,
    (TopicAuthorizationFailedError, ClusterAuthorizationFailedError): BackendUnavailable,
    **KAFKA_ERRORS,
}
#: One message's outcome: too large, not acknowledged in time, or otherwise refused; always a PublishError.
KAFKA_PUBLISH_ERRORS: ExceptionMapping = {
    MessageSizeTooLargeError: MessageTooLargeError,
    KafkaTimeoutError: PublishError,
    Exception: PublishError,
}


def publish_error(exc: BaseException) -> BaseException:
    """A native producer error as the bus's exception, the original in ``__cause__``."""
    return translate_exception(exc, KAFKA_PUBLISH_ERRORS, "kafka refused the message")


#: ``(key, all partitions sorted by id) -> partition``: where a keyed record goes (keys are never ``None`` here).
KeyPartitioner = Callable[[bytes, Sequence[int]], int]


def murmur2_partition(key: bytes, partitions: Sequence[int]) -> int:
    """The Java client's placement (aiokafka's ``DefaultPartitioner``, librdkafka's ``murmur2_random``):
    ``(murmur2(key) & 0x7fffffff) % n``."""
    h: int = murmur2(key)
    return partitions[(h & 0x7FFFFFFF) % len(partitions)]


def fnv1a_partition(key: bytes, partitions: Sequence[int]) -> int:
    """Go sarama's default hash partitioner (librdkafka's ``fnv1a_random``): ``|int32(fnv1a_32(key)) % n|``,
    the same as :func:`trio_eventbus._partition.partition_of`."""
    h = fnv1a_32(key)
    if h >= 0x80000000:  # |int32(h)|: Go's truncating % then negation is the same as % of the magnitude
        h = 0x100000000 - h
    return partitions[h % len(partitions)]


#: ``KafkaConfig.partitioner`` -> its function.
PARTITIONERS: dict[str, KeyPartitioner] = {"murmur2": murmur2_partition, "fnv1a": fnv1a_partition}
