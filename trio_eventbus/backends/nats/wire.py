"""The NATS wire format of the bus: names, headers, compression, ack payloads, error mapping.

Pure functions and constants, no I/O; shared by the publishing and consuming halves of the NATS backend.

Names (see also :mod:`trio_eventbus.backends.nats`)
    subject = the topic itself (topics are already literal NATS subjects: dot-separated tokens of
    ``A-Z a-z 0-9 _ -``); stream = ``NatsConfig.stream_prefix`` + the topic with ``.`` replaced by ``_``;
    durable consumer = the group name (a consumer lives inside its topic's stream, so the group alone
    identifies it and the bus already restricts groups to ``A-Z a-z 0-9 _ -``), or ``<group>~<topic with
    . → _>`` in a stream the bus found capturing the topic (``NatsConfig.streams``), which may hold other topics.

Headers added on the wire and removed again before the bus sees a delivery
    ``Nats-Msg-Id``: the message id (``event_id`` of envelopes), JetStream's dedupe key;
    ``X-Message-Key``: the key, written for every keyed message (NATS messages have no key field); the
    envelope's own headers are never consulted to decide. On decoding, a message without ``X-Message-Key``
    takes its key from ``X-Aggregate-ID`` when present, so envelopes of producers that do not set the bus's
    header (the Go services of the seeds, earlier versions of this bus) keep their per-aggregate order. The bus
    refuses all these names as user headers (:func:`trio_eventbus._envelope.check_headers`), so neither the
    key nor the dedupe id can be spoofed through headers;
    ``X-Content-Encoding: lz4``: the body is an LZ4 frame (only when that made it smaller).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import nats.errors

from ..._abc import Delivery
from ..._codec import H_AGGREGATE_ID
from ..._exceptions import BackendUnavailable, ExceptionMapping, InvalidTopicError, PublishError

__all__ = [
    "ACK",
    "H_ENCODING",
    "H_KEY",
    "H_MSG_ID",
    "H_PIN",
    "MIN_SERVER_VERSION",
    "NAK",
    "NATS_ERRORS",
    "NATS_PUBLISH_ERRORS",
    "PROGRESS",
    "TERM",
    "ack_info",
    "durable_name",
    "nak_delay",
    "server_version_error",
    "stream_name",
    "to_delivery",
    "too_large",
    "wire_message",
]

logger = logging.getLogger("trio_eventbus.nats")

H_MSG_ID = "Nats-Msg-Id"
H_KEY = "X-Message-Key"
H_ENCODING = "X-Content-Encoding"
H_PIN = "Nats-Pin-Id"  # set by the server on every message of a pinned_client consumer
_LZ4 = "lz4"
_INTERNAL = (H_MSG_ID, H_KEY, H_ENCODING)
_MAX_STREAM_NAME = 255  # the stream name is a directory name in the server's store

ACK = b"+ACK"
NAK = b"-NAK"
TERM = b"+TERM"
PROGRESS = b"+WPI"  # "work in progress": the server restarts the message's ack_wait

#: Oldest nats-server the backend accepts: priority groups with pinned clients (what partitioned consumer groups
#: build on) arrived in 2.11. The first connect refuses an older server with BackendUnavailable.
MIN_SERVER_VERSION = (2, 11, 0)


def stream_name(prefix: str, topic: str) -> str:
    """The JetStream stream of ``topic`` (the topic must already be valid: ``validate_topic``)."""
    name = prefix + topic.replace(".", "_")
    if len(name) > _MAX_STREAM_NAME:
        raise InvalidTopicError(
            f"topic {topic!r} is too long for NATS: its stream name would have {len(name)} characters "
            f"(limit {_MAX_STREAM_NAME} including the prefix {prefix!r})"
        )
    return name


def durable_name(group: str, topic: str | None = None) -> str:
    """The durable pull consumer of ``group`` inside a topic's stream: the group's name in the topic's own
    stream (``topic=None``), ``<group>~<topic with . → _>`` in a stream holding other topics too (``~`` is
    not allowed in group names, so this never clashes with another group's consumer)."""
    return group if topic is None else f"{group}~{topic.replace('.', '_')}"


def nak_delay(delay: float) -> bytes:
    """The NAK payload asking for redelivery after ``delay`` seconds."""
    if delay <= 0:
        return NAK
    return b'-NAK {"delay": %d}' % int(delay * 1e9)


def wire_message(
    topic: str,
    body: bytes,
    headers: Mapping[str, str],
    key: str | None,
    message_id: str | None,
    compress_min: int | None,
) -> tuple[bytes, dict[str, str] | None]:
    """The (body, headers) put on the wire for one outgoing message (``compress_min=None``: no lz4)."""
    out = dict(headers)
    if message_id is not None:
        out[H_MSG_ID] = message_id
    if key is not None:
        out[H_KEY] = key
    if compress_min is not None and len(body) >= compress_min:
        import lz4.frame

        packed: bytes = lz4.frame.compress(body)
        if len(packed) < len(body):
            body = packed
            out[H_ENCODING] = _LZ4
    return body, out or None


def too_large(body: bytes, headers: Mapping[str, str] | None, limit: int) -> int:
    """0 if ``body`` with the NATS header block of ``headers`` fits in ``limit`` bytes, else its size.

    The header block is ``NATS/1.0\\r\\n``, ``Name: value\\r\\n`` per header and ``\\r\\n``. Usually decided by
    character counts alone (a character is at most 4 bytes of UTF-8); the exact count only near the limit.
    """
    size = len(body)
    if headers:
        chars = sum(map(len, headers)) + sum(map(len, headers.values()))
        if size + 4 * chars + 4 * len(headers) + 12 <= limit:
            return 0
        size += 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    return size if size > limit else 0


def ack_info(reply: str) -> tuple[int, int]:
    """(delivery count, stream sequence) from an ack subject (``$JS.ACK.<stream>.<consumer>.<delivered>.
    <stream seq>...``); ``(1, 0)`` when it cannot be parsed (then the delivery is not recognised again)."""
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:  # v1: $JS.ACK.stream.consumer.delivered.sseq.cseq.ts.pending
            return int(tokens[4]), int(tokens[5])
        if len(tokens) >= 11:  # v2: $JS.ACK.domain.account.stream.consumer.delivered.sseq...
            return int(tokens[6]), int(tokens[7])
    except ValueError:
        pass
    return 1, 0


def to_delivery(topic: str, body: bytes, headers: Mapping[str, str] | None, attempt: int, token: object) -> Delivery:
    """A :class:`Delivery` from a received message: internal headers removed, body decompressed. A ``dict`` of
    headers is the received message's own (parsed for it) and is reused, not copied."""
    if not headers:
        return Delivery(topic, body, {}, None, None, attempt, token)
    clean = headers if type(headers) is dict else dict(headers)  # a dict parsed for this message: ours to change
    message_id = clean.pop(H_MSG_ID, None)
    key = clean.pop(H_KEY, None)
    if key is None:  # a producer that does not set the bus's key header (see the module docstring)
        key = clean.get(H_AGGREGATE_ID)
    clean.pop(H_PIN, None)
    encoding = clean.pop(H_ENCODING, None)
    if encoding is not None:
        try:
            if encoding != _LZ4:
                raise ValueError(f"unknown content encoding {encoding!r}")
            import lz4.frame

            body = lz4.frame.decompress(body)
        except Exception as exc:  # lz4 missing or corrupt frame: hand over the raw bytes, say why
            logger.warning("cannot decompress a message of %r (%r): delivering it as it is", topic, exc)
            clean[H_ENCODING] = encoding
    return Delivery(topic, body, clean, key or None, message_id, attempt, token)


def server_version_error(found: str, servers: str) -> BackendUnavailable | None:
    """The error refusing a server older than :data:`MIN_SERVER_VERSION` (``None``: new enough)."""
    numbers: list[int] = []
    for part in found.split("-", 1)[0].split(".")[:3]:
        if not part.isdigit():
            break
        numbers.append(int(part))
    if len(numbers) == 3 and tuple(numbers) >= MIN_SERVER_VERSION:
        return None
    minimum = ".".join(map(str, MIN_SERVER_VERSION))
    return BackendUnavailable(
        f"NATS at {servers} runs nats-server {found or 'of unknown version'}; trio_eventbus needs {minimum} or "
        "newer (JetStream priority groups with pinned clients): upgrade the server"
    )


#: Errors of the connection and JetStream API calls (nats-py's own, socket errors, timeouts) as bus errors,
#: for :func:`~trio_eventbus._exceptions.map_exceptions` around topic, subscription and connection calls.
NATS_ERRORS: ExceptionMapping = {(nats.errors.Error, OSError, TimeoutError): BackendUnavailable}
#: Any failure to hand a message to NATS is a failed publish (reported in its outcome, never raised).
NATS_PUBLISH_ERRORS: ExceptionMapping = {Exception: PublishError}


def api_error_code(exc: BaseException) -> int | None:
    """JetStream's ``err_code`` of an API error, if it has one."""
    code: Any = getattr(exc, "err_code", None)
    return code if isinstance(code, int) else None
