"""The Kafka wire format of the bus: where key and message id travel, and how native errors become bus errors.

Pure constants and functions, no I/O; shared by the publishing and consuming halves of the Kafka backend.

Key and message id (``OutgoingMessage.key`` / ``message_id``, ``Delivery.key`` / ``message_id``)
    The key is the record key (UTF-8): Kafka partitions by it (murmur2, as the Java client), so one key's
    messages stay in one partition, in order. The message id travels in the header ``X-Message-ID``, written
    for every message that has one; the envelope's own headers are never consulted to decide. On decoding,
    a record without ``X-Message-ID`` takes its id from ``X-Event-ID`` when present: the envelopes of producers
    that do not set the bus's header (the Go services of the seeds, earlier versions of this bus) keep their
    dedupe id. The bus refuses both names as user headers (see :func:`trio_eventbus._envelope.check_headers`),
    so the fallback cannot be spoofed through it.

Errors
    :data:`KAFKA_ERRORS` (connection, topic and group calls) and :data:`KAFKA_PUBLISH_ERRORS` (per-message
    outcomes) are the mappings given to :func:`~trio_eventbus._exceptions.map_exceptions` /
    :func:`~trio_eventbus._exceptions.translate_exception`; the native error stays in ``__cause__``.
"""

from __future__ import annotations

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

from ..._exceptions import (
    BackendUnavailable,
    ExceptionMapping,
    InvalidOptionError,
    MessageTooLargeError,
    PublishError,
    translate_exception,
)

__all__ = ["H_EVENT_ID", "H_MESSAGE_ID", "KAFKA_ERRORS", "KAFKA_PUBLISH_ERRORS", "KAFKA_TOPIC_ERRORS", "publish_error"]

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
