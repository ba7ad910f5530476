"""Envelope and Message: the frozen values that travel through the bus.

An :class:`Envelope` is a domain event with the identity fields the Go services of the seeds use; a
:class:`Message` is what a raw (non-envelope) subscriber receives. Both are immutable; change them with
``attrs.evolve``. Validation happens at construction, so an ``Envelope`` that exists is a valid one.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
import types
from collections.abc import Mapping
from typing import Any

import attrs

from ._exceptions import InvalidEnvelopeError, InvalidHeaderError

__all__ = ["Envelope", "Message", "new_event_id"]

_AGGREGATE_ID_RE = re.compile(r"[A-Za-z0-9:_\-./]{1,256}")
_EMPTY_HEADERS: Mapping[str, str] = types.MappingProxyType({})


def new_event_id() -> str:
    """Return a new UUIDv7-style id (48-bit millisecond timestamp, version 7, 74 random bits).

    Ids sort by creation time, which keeps broker-side dedupe windows and outbox tables index-friendly.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _to_utc(value: _dt.datetime) -> _dt.datetime:
    if not isinstance(value, _dt.datetime):
        raise InvalidEnvelopeError(f"timestamp must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise InvalidEnvelopeError("timestamp must be timezone-aware (use datetime.now(UTC))")
    return value.astimezone(_dt.UTC)


def _check_text(name: str, value: object, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise InvalidEnvelopeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise InvalidEnvelopeError(f"{name} must not be blank")
    if "\r" in value or "\n" in value:
        raise InvalidEnvelopeError(f"{name} must not contain line breaks (it travels in a header)")


#: Names the bus writes itself, compared case-insensitively: the envelope's headers (:mod:`._codec`), the
#: NATS backend's message id, key and content encoding, the Kafka backend's message id.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "X-Event-ID",
        "X-Aggregate-ID",
        "X-Event-Type",
        "X-Event-Version",
        "X-Trace-ID",
        "X-Correlation-ID",
        "X-Tenant-ID",
        "X-Payload-Encoding",
        "X-Message-Key",
        "X-Message-ID",
        "X-Content-Encoding",
    )
)
#: Prefixes of reserved names: ``Nats-`` is the NATS server's own namespace (``Nats-Msg-Id`` is the dedupe id,
#: ``Nats-Expected-*`` and ``Nats-Rollup`` change what JetStream stores); ``X-DLQ-`` marks dead letters.
RESERVED_HEADER_PREFIXES = ("nats-", "x-dlq-")

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token characters (tchar)


def _bad_value(value: object) -> str | None:
    """Why ``value`` is not a valid header value, or None when it is."""
    if not isinstance(value, str):
        return f"must be a str, not {type(value).__name__}"
    if not value.isprintable():
        return "must not contain control characters (CR, LF, NUL, TAB, ...), line or paragraph separators"
    if value[:1] == " " or value[-1:] == " ":
        return "must not begin or end with a space"
    return None


#: Keys that passed :func:`check_key_and_id` (keys repeat: one set lookup instead of the checks). Bounded: it is
#: emptied when it reaches ``_CHECKED_KEYS_LIMIT`` entries, like the lanes' key memo.
_checked_keys: set[str] = set()
_CHECKED_KEYS_LIMIT = 4096


def check_key_and_id(key: object, message_id: object) -> None:
    """Raise :class:`InvalidHeaderError` unless ``key`` and ``message_id`` are each ``None`` or a non-empty str
    that follows the header-value rule (both travel in NATS headers; see :func:`freeze_headers`).

    On the publish path: a key checked recently costs one set lookup (the checks themselves cost about three
    times that); message ids, unique per message, are checked every time they are given.
    """
    if key is not None:
        try:
            known = key in _checked_keys
        except TypeError:  # unhashable: certainly not a str
            known = False
        if not known:
            _check_value("key", key)
            if len(_checked_keys) >= _CHECKED_KEYS_LIMIT:
                _checked_keys.clear()
            _checked_keys.add(key)  # type: ignore[arg-type]
    if message_id is not None:
        _check_value("message_id", message_id)


def _check_value(what: str, value: object) -> None:
    if not isinstance(value, str) or not value or not value.isprintable() or value[0] == " " or value[-1] == " ":
        reason = "must not be empty" if value == "" else _bad_value(value)
        raise InvalidHeaderError(f"{what} {value!r} {reason} (or be None)")


def freeze_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """Check user headers against the one rule every backend carries unchanged; return a read-only copy.

    Names are RFC 9110 tokens: 1+ characters of ``A-Z a-z 0-9 ! # $ % & ' * + - . ^ _ ` | ~``. That is what
    NATS clients accept (nats-py refuses any other name with ``BadHeaderError``; ``:``, whitespace and CR/LF
    would break the header line of every NATS client) and a subset of Kafka's (any string) and the memory
    backend's: the intersection, so a message that one backend takes every backend takes. Names are
    case-sensitive on every backend, but see below for the reserved ones.

    Values are ``str`` of printable characters (``str.isprintable``: no control characters, so no CR, LF, NUL
    or TAB; no line/paragraph separators or non-space Unicode spaces; no lone surrogates) that neither begin
    nor end with a space; empty values are fine. NATS clients end a header at CR/LF (nats-py turns them into
    spaces) and trim surrounding whitespace, and a lone surrogate cannot be encoded as UTF-8: each of those
    values would arrive changed, or not at all, on NATS while memory and Kafka kept it. The rule keeps exactly
    the values that arrive unchanged everywhere.

    Names the bus writes itself are refused, case-insensitively, so a user header can never become the key,
    the dedupe id, an envelope field, the content encoding or a dead-letter mark: :data:`RESERVED_HEADERS`
    and every name starting with one of :data:`RESERVED_HEADER_PREFIXES`.

    Raises :class:`InvalidHeaderError` (an ``InvalidEnvelopeError``, so a ``ValueError``). Cost: nothing for
    ``None`` or an empty mapping; otherwise one regex match, one ``lower()`` and one ``isprintable()`` per
    header; nothing is cached.
    """
    if not headers:
        return _EMPTY_HEADERS
    if not isinstance(headers, Mapping):
        raise InvalidHeaderError(f"headers must be a mapping of str to str, not {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
            raise InvalidHeaderError(
                f"invalid header name {name!r}: use 1+ of A-Z a-z 0-9 ! # $ % & ' * + - . ^ _ ` | ~ (an RFC 9110 token)"
            )
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower.startswith(RESERVED_HEADER_PREFIXES):
            raise InvalidHeaderError(f"header {name!r} is reserved: the bus writes it itself")
        reason = _bad_value(value)
        if reason is not None:
            raise InvalidHeaderError(f"header {name!r}: the value {value!r} {reason}")
    return types.MappingProxyType(dict(headers))


@attrs.frozen(slots=True, kw_only=True)
class Envelope:
    """A domain event.

    ``aggregate_id`` is the ordering key: envelopes of one aggregate are handled in publish order, envelopes
    of different aggregates concurrently. ``event_id`` identifies the event end to end (outbox row, broker
    dedupe id, :class:`PublishResult`); it is generated when omitted. ``payload`` is opaque bytes; when it is
    valid JSON it is embedded as JSON on the wire, as the Go services do.

    Raises :class:`InvalidEnvelopeError` (a ``ValueError``) when a field is invalid: ids and type blank,
    ``event_version`` not a positive int, empty or non-bytes payload, ``aggregate_id`` longer than 256
    characters or outside ``A-Z a-z 0-9 : _ - . /``, a naive timestamp.
    """

    aggregate_id: str
    event_type: str
    event_version: int
    payload: bytes
    event_id: str = attrs.field(factory=new_event_id)
    timestamp: _dt.datetime = attrs.field(factory=_utcnow, converter=_to_utc)
    trace_id: str | None = None
    correlation_id: str | None = None
    tenant_id: str | None = None

    def __attrs_post_init__(self) -> None:
        _check_text("event_id", self.event_id, required=True)
        _check_text("event_type", self.event_type, required=True)
        _check_text("aggregate_id", self.aggregate_id, required=True)
        if not _AGGREGATE_ID_RE.fullmatch(self.aggregate_id):
            raise InvalidEnvelopeError(
                f"aggregate_id {self.aggregate_id[:40]!r} must be 1-256 characters from A-Z a-z 0-9 : _ - . /"
            )
        if isinstance(self.event_version, bool) or not isinstance(self.event_version, int):
            raise InvalidEnvelopeError("event_version must be an int")
        if not 0 < self.event_version < 2**63:
            raise InvalidEnvelopeError(f"event_version must be > 0, got {self.event_version}")
        if not isinstance(self.payload, bytes):
            raise InvalidEnvelopeError(f"payload must be bytes, not {type(self.payload).__name__}")
        if not self.payload:
            raise InvalidEnvelopeError("payload must not be empty")
        for name in ("trace_id", "correlation_id", "tenant_id"):
            _check_text(name, getattr(self, name), required=False)


@attrs.frozen(slots=True, kw_only=True)
class Message:
    """A message as a raw subscriber sees it.

    ``key`` is the ordering key the publisher gave (``None`` for keyless messages, which run on the worker
    pool). ``delivery_attempt`` counts broker deliveries and in-place retries, starting at 1.
    """

    topic: str
    data: bytes
    key: str | None = None
    headers: Mapping[str, str] = _EMPTY_HEADERS
    message_id: str | None = None
    delivery_attempt: int = 1

    def header(self, name: str, default: Any = None) -> Any:
        """Return header ``name`` or ``default``."""
        return self.headers.get(name, default)


def _message_builder() -> Any:
    """A positional constructor of :class:`Message` for the delivery path.

    Same value as ``Message(...)`` (Message has no validators or converters) at about 60 % of the cost of the
    frozen attrs ``__init__``, which sets each field through ``object.__setattr__``: this sets the slots
    directly. The field order is checked against ``attrs.fields(Message)`` here and in the tests.
    """
    names = ("topic", "data", "key", "headers", "message_id", "delivery_attempt")
    assert tuple(f.name for f in attrs.fields(Message)) == names
    new = object.__new__
    s_topic, s_data, s_key, s_headers, s_id, s_attempt = (vars(Message)[n].__set__ for n in names)

    def build(
        topic: str,
        data: bytes,
        key: str | None,
        headers: Mapping[str, str],
        message_id: str | None,
        delivery_attempt: int,
    ) -> Message:
        message: Message = new(Message)
        s_topic(message, topic)
        s_data(message, data)
        s_key(message, key)
        s_headers(message, headers)
        s_id(message, message_id)
        s_attempt(message, delivery_attempt)
        return message

    return build


#: ``new_message(topic, data, key, headers, message_id, delivery_attempt)``, equal to ``Message(...)``.
new_message = _message_builder()
