"""Envelope and Message: the frozen values that travel through the bus.

An :class:`Envelope` is a domain event with the identity fields the Go services of the seeds use (the
``jxt-core`` envelope: same names, same types, see docs/go-interop.md); a :class:`Message` is what a raw
(non-envelope) subscriber receives. Both are immutable; change them with ``attrs.evolve``. Validation happens at
construction, so an ``Envelope`` that exists is a valid one.

Cost: an envelope is built once per event, so its constructor is written by hand (attrs generates the rest):
the checks run once, aggregate ids and event types seen recently cost one set lookup each, and a new id is
:func:`._ids.new_event_id` (no system call per id).
"""

from __future__ import annotations

import datetime as _dt
import re
import types
from collections.abc import Mapping
from typing import Any

import attrs

from ._exceptions import InvalidEnvelopeError, InvalidHeaderError
from ._ids import new_event_id

__all__ = ["Envelope", "Message", "new_event_id"]

_AGGREGATE_ID_RE = re.compile(r"[A-Za-z0-9:_\-./]{1,256}")
_EMPTY_HEADERS: Mapping[str, str] = types.MappingProxyType({})


_UTC = _dt.UTC
_now = _dt.datetime.now
_MAX_INT64 = 2**63  # event_version and tenant_id are Go int64s: 0 < event_version < 2**63, 0 <= tenant_id < 2**63


def _utcnow() -> _dt.datetime:
    return _now(_UTC)


def _to_utc(value: object) -> _dt.datetime:
    if not isinstance(value, _dt.datetime):
        raise InvalidEnvelopeError(f"timestamp must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEnvelopeError("timestamp must be timezone-aware (use datetime.now(UTC))")
    return value.astimezone(_UTC)


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


#: Aggregate ids and event types that passed their checks (they repeat: one set lookup instead of the checks).
#: Bounded: each is emptied when it reaches ``_KNOWN_LIMIT`` entries.
_known_aggregates: set[str] = set()
_known_types: set[str] = set()
_KNOWN_LIMIT = 16384


def _check_aggregate_id(value: object) -> None:
    _check_text("aggregate_id", value, required=True)
    assert isinstance(value, str)
    if not _AGGREGATE_ID_RE.fullmatch(value):
        raise InvalidEnvelopeError(f"aggregate_id {value[:40]!r} must be 1-256 characters from A-Z a-z 0-9 : _ - . /")
    if type(value) is str:
        if len(_known_aggregates) >= _KNOWN_LIMIT:
            _known_aggregates.clear()
        _known_aggregates.add(value)


def _check_event_type(value: object) -> None:
    _check_text("event_type", value, required=True)
    if type(value) is str:
        if len(_known_types) >= _KNOWN_LIMIT:
            _known_types.clear()
        _known_types.add(value)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " (a JSON number on the wire, as in the Go envelope)" if name == "tenant_id" else ""
        raise InvalidEnvelopeError(f"{name} must be an int{hint}, not {type(value).__name__} {value!r:.40}")
    if not low <= value < _MAX_INT64:
        raise InvalidEnvelopeError(f"{name} must be {'> 0' if low else '>= 0'} and < 2**63, got {value}")


@attrs.frozen(slots=True, kw_only=True, init=False)
class Envelope:
    """A domain event, with the fields (names and types) of the Go services' envelope.

    ``aggregate_id`` is the ordering key: envelopes of one aggregate are handled in publish order, envelopes
    of different aggregates concurrently. ``event_id`` identifies the event end to end (outbox row, broker
    dedupe id, :class:`PublishResult`); omitted (or ``None``) a new UUIDv7 is generated. ``payload`` is opaque
    bytes; when it is UTF-8 JSON it is embedded verbatim as JSON on the wire, as the Go services do, otherwise
    it travels as base64 (see :mod:`._codec`).

    ``timestamp`` is an aware ``datetime`` (stored in UTC; omitted: now, to the microsecond) and
    ``timestamp_nanosecond`` (0-999) the nanoseconds it cannot hold: a Go timestamp such as
    ``...37.555344067Z`` decodes to ``timestamp=...37.555344``, ``timestamp_nanosecond=67`` and encodes back to
    the same text. :attr:`timestamp_ns` is both as one integer. ``attrs.evolve(env, timestamp=t)`` keeps the
    old ``timestamp_nanosecond``; pass ``timestamp_nanosecond=0`` with a new timestamp to drop it.

    ``tenant_id`` is an ``int`` (a JSON number on the wire, as the Go envelope's), ``0 <= tenant_id < 2**63``.
    Equality compares every field.

    Raises :class:`InvalidEnvelopeError` (a ``ValueError``) when a field is invalid: ids and type blank or
    not ``str``, ``event_version`` not an int in ``1 .. 2**63-1``, empty or non-bytes payload,
    ``aggregate_id`` longer than 256 characters or outside ``A-Z a-z 0-9 : _ - . /``, a naive timestamp,
    ``timestamp_nanosecond`` outside ``0 .. 999``, ``tenant_id`` not an int in ``0 .. 2**63-1`` (``bool`` and
    ``str`` refused), line breaks in a text field.
    """

    aggregate_id: str
    event_type: str
    event_version: int
    payload: bytes
    event_id: str = attrs.field(factory=new_event_id)
    timestamp: _dt.datetime = attrs.field(factory=_utcnow)
    timestamp_nanosecond: int = 0
    trace_id: str | None = None
    correlation_id: str | None = None
    tenant_id: int | None = None

    def __init__(
        self,
        *,
        aggregate_id: str,
        event_type: str,
        event_version: int,
        payload: bytes,
        event_id: str | None = None,
        timestamp: _dt.datetime | None = None,
        timestamp_nanosecond: int = 0,
        trace_id: str | None = None,
        correlation_id: str | None = None,
        tenant_id: int | None = None,
    ) -> None:
        # the common case costs a type test and a set lookup per field; anything unusual takes the full check
        if type(aggregate_id) is not str or aggregate_id not in _known_aggregates:
            _check_aggregate_id(aggregate_id)
        if type(event_type) is not str or event_type not in _known_types:
            _check_event_type(event_type)
        if type(event_version) is not int or not 0 < event_version < _MAX_INT64:
            _check_int("event_version", event_version, 1)
        if type(payload) is not bytes or not payload:
            if not isinstance(payload, bytes):
                raise InvalidEnvelopeError(f"payload must be bytes, not {type(payload).__name__}")
            if not payload:
                raise InvalidEnvelopeError("payload must not be empty")
        if event_id is None:
            event_id = new_event_id()
        else:
            _check_text("event_id", event_id, required=True)
        if timestamp is None:
            timestamp = _now(_UTC)
        elif type(timestamp) is not _dt.datetime or timestamp.tzinfo is not _UTC:
            try:
                timestamp = _to_utc(timestamp)
            except OverflowError as exc:
                raise InvalidEnvelopeError(f"timestamp {timestamp} is out of range in UTC") from exc
        if timestamp_nanosecond and (type(timestamp_nanosecond) is not int or not 0 <= timestamp_nanosecond < 1000):
            if isinstance(timestamp_nanosecond, bool) or not isinstance(timestamp_nanosecond, int):
                raise InvalidEnvelopeError(
                    f"timestamp_nanosecond must be an int, not {type(timestamp_nanosecond).__name__}"
                )
            if not 0 <= timestamp_nanosecond < 1000:
                raise InvalidEnvelopeError(f"timestamp_nanosecond must be 0-999, got {timestamp_nanosecond}")
        if trace_id is not None:
            _check_text("trace_id", trace_id, required=False)
        if correlation_id is not None:
            _check_text("correlation_id", correlation_id, required=False)
        if tenant_id is not None and (type(tenant_id) is not int or not 0 <= tenant_id < _MAX_INT64):
            _check_int("tenant_id", tenant_id, 0)
        _set_aggregate_id(self, aggregate_id)
        _set_event_type(self, event_type)
        _set_event_version(self, event_version)
        _set_payload(self, payload)
        _set_event_id(self, event_id)
        _set_timestamp(self, timestamp)
        _set_timestamp_nanosecond(self, timestamp_nanosecond)
        _set_trace_id(self, trace_id)
        _set_correlation_id(self, correlation_id)
        _set_tenant_id(self, tenant_id)

    @property
    def timestamp_ns(self) -> int:
        """``timestamp`` and ``timestamp_nanosecond`` as one integer: nanoseconds since the Unix epoch (as
        ``time.time_ns()``)."""
        delta = self.timestamp - _EPOCH
        return (
            (delta.days * 86_400 + delta.seconds) * 1_000_000_000
            + delta.microseconds * 1000
            + self.timestamp_nanosecond
        )


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_ENVELOPE_FIELDS = (
    "aggregate_id",
    "event_type",
    "event_version",
    "payload",
    "event_id",
    "timestamp",
    "timestamp_nanosecond",
    "trace_id",
    "correlation_id",
    "tenant_id",
)
assert tuple(f.name for f in attrs.fields(Envelope)) == _ENVELOPE_FIELDS
# The frozen class's slots, set directly (as attrs' own __init__ does through object.__setattr__, but cheaper).
(
    _set_aggregate_id,
    _set_event_type,
    _set_event_version,
    _set_payload,
    _set_event_id,
    _set_timestamp,
    _set_timestamp_nanosecond,
    _set_trace_id,
    _set_correlation_id,
    _set_tenant_id,
) = (vars(Envelope)[name].__set__ for name in _ENVELOPE_FIELDS)


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
