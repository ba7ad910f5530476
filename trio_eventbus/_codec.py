"""Wire encoding of envelopes: a JSON body plus ``X-*`` headers, the format of the Go services (``jxt-core``).

Body: a JSON object with the snake_case fields ``event_id, aggregate_id, event_type, event_version,
timestamp, trace_id, correlation_id, tenant_id, payload`` (the three optional ones only when set, as Go's
``omitempty``), typed as the Go envelope: ``event_version`` and ``tenant_id`` JSON integers, ``timestamp`` an
RFC 3339 string, ``payload`` any JSON value.

- ``payload`` is embedded verbatim (Go's ``json.RawMessage``: inner whitespace kept byte for byte) when the bytes
  are UTF-8 JSON without surrounding whitespace and nested at most 500 deep; any other payload is a base64 JSON
  string and the header ``X-Payload-Encoding: base64`` says so. A Go consumer gets those bytes back with
  ``var b []byte; json.Unmarshal(env.Payload, &b)``. Without that header (a Go producer) a JSON-string payload
  is its JSON text, quotes included.
- ``timestamp`` is written as Go writes it (``RFC3339Nano``): UTC, ``Z``, the fraction to the nanosecond with
  trailing zeros dropped (none when zero). Decoding accepts any RFC 3339 offset and 0-9 fractional digits and
  keeps the nanoseconds (``Envelope.timestamp_nanosecond``): a Go timestamp in UTC re-encodes to the same text;
  one with another offset to the same instant in UTC.

Decoding (:func:`decode_envelope`) ignores JSON fields it does not know (forward compatibility, as the Go
decoder); a field given twice takes its last value (as Go). ``event_id`` may be absent, ``null`` or ``""``
(Go's zero value): the ``X-Event-ID`` header then gives it, else :func:`._ids.derived_event_id` of the body (the
same for every redelivery). ``tenant_id`` as a JSON string of ASCII digits (what this bus wrote up to 0.1) is
read as that integer; any other string is refused. ``trace_id`` / ``correlation_id`` ``""`` or ``null`` are
absent. Anything else that is not a valid envelope raises :class:`InvalidEnvelopeError` (never another
exception); the bus dead-letters it (reason ``undecodable``).

Headers: ``X-Event-ID, X-Aggregate-ID, X-Event-Type, X-Event-Version`` always; ``X-Trace-ID,
X-Correlation-ID, X-Tenant-ID`` (decimal text) when set. ``decode(encode(e)) == e`` for every valid envelope.

JSON is msgspec's: a typed decode of the body with the payload as ``msgspec.Raw`` (its exact source bytes, no
re-parse), and the embedding check is a parse that builds no objects.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from itertools import accumulate
from json.encoder import encode_basestring as _json_string  # C-accelerated; non-ASCII kept as is

import msgspec

from ._envelope import Envelope
from ._exceptions import InvalidEnvelopeError
from ._ids import derived_event_id

__all__ = ["decode_envelope", "encode_envelope", "format_timestamp", "parse_timestamp"]

H_EVENT_ID = "X-Event-ID"
H_AGGREGATE_ID = "X-Aggregate-ID"
H_EVENT_TYPE = "X-Event-Type"
H_EVENT_VERSION = "X-Event-Version"
H_TRACE_ID = "X-Trace-ID"
H_CORRELATION_ID = "X-Correlation-ID"
H_TENANT_ID = "X-Tenant-ID"
H_PAYLOAD_ENCODING = "X-Payload-Encoding"

_UTC = _dt.UTC


class _Wire(msgspec.Struct):
    """The body as the decoder reads it: unknown fields are skipped; ``payload`` is its exact source bytes."""

    aggregate_id: str
    event_type: str
    event_version: int
    timestamp: str
    payload: msgspec.Raw
    event_id: str | None = None
    trace_id: str | None = None
    correlation_id: str | None = None
    tenant_id: int | str | None = None


_decode_wire = msgspec.json.Decoder(_Wire).decode
_parse_json = msgspec.json.Decoder(msgspec.Raw).decode  # validates one JSON value, builds nothing
_decode_base64 = msgspec.json.Decoder(bytes).decode  # a JSON string of standard base64 -> bytes
_encode_base64 = msgspec.json.Encoder().encode  # bytes -> a JSON string of standard base64
_JSON_ERRORS = (msgspec.DecodeError, RecursionError)

# ---------------------------------------------------------------------------------------------------- timestamps

_TS_RE = re.compile(r"(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)")


_fromisoformat = _dt.datetime.fromisoformat
#: The last (second, minute, hour, day, month, year) formatted and its text: timestamps of consecutive envelopes
#: share their second, and formatting it costs several times the lookup. One tuple, replaced whole (threads).
_last_second: tuple[tuple[int, ...], str] = ((), "")


def format_timestamp(ts: _dt.datetime, nanosecond: int = 0) -> str:
    """Go's ``RFC3339Nano`` of a UTC datetime plus ``nanosecond`` (0-999): ``2026-11-29T15:59:37.555344067Z``,
    trailing zeros of the fraction dropped, no fraction when it is zero."""
    global _last_second
    key = (ts.second, ts.minute, ts.hour, ts.day, ts.month, ts.year)
    last_key, text = _last_second
    if key != last_key:
        text = f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}"
        _last_second = (key, text)
    fraction = ts.microsecond * 1000 + nanosecond
    if not fraction:
        return f"{text}Z"
    return f"{text}.{f'{fraction:09d}'.rstrip('0')}Z"


def parse_timestamp(text: str) -> tuple[_dt.datetime, int]:
    """Parse RFC 3339 (``Z`` or an offset, 0-9 fractional digits) into (UTC datetime to the microsecond, the
    remaining nanoseconds 0-999). Raises :class:`InvalidEnvelopeError`."""
    n = len(text)
    if (  # the shape Go and this bus write (UTC, 0-9 digits): one C parse
        text[-1:] == "Z"
        and (n == 20 or 22 <= n <= 30)
        and text[10] == "T"
        and text[19] in ".Z"
        and text[4] == "-"
        and text[7] == "-"
        and text[13] == ":"
        and text[16] == ":"
        and text.isascii()
        and (n == 20 or text[20:-1].isdigit())
    ):
        try:
            value = _fromisoformat(text)  # keeps the first six fractional digits
        except ValueError as exc:
            raise InvalidEnvelopeError(f"timestamp {text!r} is not a valid date: {exc}") from exc
        return value, int(text[26:-1].ljust(3, "0")) if n > 27 else 0
    m = _TS_RE.fullmatch(text)
    if m is None:
        raise InvalidEnvelopeError(f"timestamp {text[:40]!r} is not RFC 3339")
    date, clock, fraction, zone = m.groups()
    digits = (fraction or "").ljust(9, "0")
    try:
        value = _fromisoformat(f"{date}T{clock}.{digits[:6]}{'+00:00' if zone in 'Zz' else zone}").astimezone(_UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidEnvelopeError(f"timestamp {text[:40]!r} is not a valid date: {exc}") from exc
    return value, int(digits[6:])


# ---------------------------------------------------------------------------------------------------- encode

_WHITESPACE = frozenset(b" \t\n\r")
_MAX_EMBED_DEPTH = 500  # msgspec's decode depth follows Python's recursion limit (~990 at the top of a stack)
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def _depth(payload: bytes) -> int:
    """The nesting depth of a valid JSON value (C-level passes: strings removed, brackets summed)."""
    steps = _STRINGS.sub(b"", payload).translate(None, _NOT_BRACKETS).translate(_BRACKET_STEP)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def _embeddable(payload: bytes) -> bool:
    """Whether ``payload`` goes into the body verbatim: UTF-8 JSON, no surrounding whitespace, shallow enough
    for any decoder to read back (see ``_MAX_EMBED_DEPTH``)."""
    if payload[0] in _WHITESPACE or payload[-1] in _WHITESPACE:
        return False
    if not payload.isascii():
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return False
    try:
        _parse_json(payload)
    except _JSON_ERRORS:
        return False
    if payload.count(b"[") + payload.count(b"{") > _MAX_EMBED_DEPTH:
        return _depth(payload) <= _MAX_EMBED_DEPTH
    return True


def encode_envelope(env: Envelope) -> tuple[bytes, dict[str, str]]:
    """Encode an envelope into (body, headers). Pure and deterministic.

    Raises :class:`InvalidEnvelopeError` for a text field that UTF-8 cannot encode (a lone surrogate).
    """
    event_id = env.event_id
    aggregate_id = env.aggregate_id
    event_type = env.event_type
    version = str(env.event_version)
    stamp = format_timestamp(env.timestamp, env.timestamp_nanosecond)
    # aggregate_id's alphabet needs no escaping
    text = (
        f'{{"event_id":{_json_string(event_id)},"aggregate_id":"{aggregate_id}",'
        f'"event_type":{_json_string(event_type)},"event_version":{version},"timestamp":"{stamp}"'
    )
    headers = {H_EVENT_ID: event_id, H_AGGREGATE_ID: aggregate_id, H_EVENT_TYPE: event_type, H_EVENT_VERSION: version}
    if env.trace_id is not None:
        text += f',"trace_id":{_json_string(env.trace_id)}'
        headers[H_TRACE_ID] = env.trace_id
    if env.correlation_id is not None:
        text += f',"correlation_id":{_json_string(env.correlation_id)}'
        headers[H_CORRELATION_ID] = env.correlation_id
    if env.tenant_id is not None:
        tenant = str(env.tenant_id)
        text += f',"tenant_id":{tenant}'
        headers[H_TENANT_ID] = tenant
    payload = env.payload
    if not _embeddable(payload):
        payload = _encode_base64(payload)
        headers[H_PAYLOAD_ENCODING] = "base64"
    try:
        head = f'{text},"payload":'.encode()
    except UnicodeEncodeError as exc:
        raise InvalidEnvelopeError(f"envelope text fields must be encodable as UTF-8: {exc}") from exc
    return head + payload + b"}", headers


# ---------------------------------------------------------------------------------------------------- decode


def _tenant(value: int | str) -> int:
    """A wire ``tenant_id``: a JSON integer, or (older producers of this bus) a string of ASCII digits."""
    if type(value) is str:
        if not (value.isascii() and value.isdigit() and len(value) <= 20):
            raise InvalidEnvelopeError(f"tenant_id must be a JSON integer, got the string {value[:40]!r}")
        return int(value)
    return value  # type: ignore[return-value]  # msgspec: int


def decode_envelope(body: bytes, headers: Mapping[str, str] | None = None) -> Envelope:
    """Decode (body, headers) produced by :func:`encode_envelope` or by the Go services (see the module
    docstring for what is accepted). Raises :class:`InvalidEnvelopeError` for anything that is not a valid
    envelope; the bus dead-letters such messages at once instead of retrying them.
    """
    try:
        wire = _decode_wire(body)
    except _JSON_ERRORS as exc:
        raise InvalidEnvelopeError(f"undecodable envelope: {exc}") from exc
    except TypeError as exc:  # not a bytes-like body
        raise InvalidEnvelopeError(f"undecodable envelope: {exc}") from exc
    raw = wire.payload
    if headers and headers.get(H_PAYLOAD_ENCODING) == "base64":
        try:
            payload = _decode_base64(raw)
        except _JSON_ERRORS as exc:
            raise InvalidEnvelopeError(f"payload is not a base64 JSON string: {exc}") from exc
    else:
        payload = bytes(raw)
    timestamp, nanosecond = parse_timestamp(wire.timestamp)
    event_id = wire.event_id or (headers.get(H_EVENT_ID) if headers else None) or derived_event_id(body)
    tenant = wire.tenant_id
    return Envelope(
        event_id=event_id,
        aggregate_id=wire.aggregate_id,
        event_type=wire.event_type,
        event_version=wire.event_version,
        timestamp=timestamp,
        timestamp_nanosecond=nanosecond,
        trace_id=wire.trace_id or None,
        correlation_id=wire.correlation_id or None,
        tenant_id=None if tenant is None else _tenant(tenant),
        payload=payload,
    )
