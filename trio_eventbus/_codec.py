"""Wire encoding of envelopes: JSON body plus ``X-*`` headers, compatible with the Go services of the seeds.

Body: a JSON object with exactly the snake_case fields ``event_id, aggregate_id, event_type, event_version,
timestamp, trace_id, correlation_id, tenant_id, payload`` (the three optional ids only when set, as Go's
``omitempty``). ``payload`` is embedded verbatim as JSON when the bytes are UTF-8 JSON without surrounding
whitespace; otherwise it is a base64 string and the header ``X-Payload-Encoding: base64`` says so. Decoding
reads the payload's exact source text, so ``decode(encode(e)) == e`` for every valid envelope.

Headers: ``X-Event-ID, X-Aggregate-ID, X-Event-Type, X-Event-Version`` always; ``X-Trace-ID,
X-Correlation-ID, X-Tenant-ID`` when set. Timestamps are RFC 3339 in UTC with microseconds (``...Z``);
decoding accepts any RFC 3339 offset and up to nine fractional digits (Go's ``RFC3339Nano``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import re
from collections.abc import Mapping
from typing import Any

from ._envelope import Envelope
from ._exceptions import InvalidEnvelopeError

__all__ = ["decode_envelope", "encode_envelope"]

H_EVENT_ID = "X-Event-ID"
H_AGGREGATE_ID = "X-Aggregate-ID"
H_EVENT_TYPE = "X-Event-Type"
H_EVENT_VERSION = "X-Event-Version"
H_TRACE_ID = "X-Trace-ID"
H_CORRELATION_ID = "X-Correlation-ID"
H_TENANT_ID = "X-Tenant-ID"
H_PAYLOAD_ENCODING = "X-Payload-Encoding"

_OPTIONAL = (("trace_id", H_TRACE_ID), ("correlation_id", H_CORRELATION_ID), ("tenant_id", H_TENANT_ID))
_FIELDS = frozenset(
    ("event_id", "aggregate_id", "event_type", "event_version", "timestamp", "payload", *(n for n, _ in _OPTIONAL))
)
_TS_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", re.IGNORECASE)
_decoder = json.JSONDecoder(parse_constant=lambda name: _reject_constant(name))
_pairs_decoder = json.JSONDecoder(object_pairs_hook=list, parse_constant=lambda name: _reject_constant(name))
_WS = " \t\n\r"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def format_timestamp(ts: _dt.datetime) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-01-02T03:04:05.123456Z``."""
    iso = ts.astimezone(_dt.UTC).isoformat()
    return f"{iso[:-6]}Z" if len(iso) == 32 else f"{iso[:-6]}.000000Z"


def parse_timestamp(text: str) -> _dt.datetime:
    """Parse RFC 3339 (``Z`` or offset, 0-9 fractional digits; nanoseconds are truncated)."""
    if len(text) == 27 and text[26] == "Z" and text[19] == ".":  # our own format: the fast path
        try:
            return _dt.datetime.fromisoformat(text[:26]).replace(tzinfo=_dt.UTC)
        except ValueError:
            pass
    m = _TS_RE.fullmatch(text)
    if m is None:
        raise InvalidEnvelopeError(f"timestamp {text[:40]!r} is not RFC 3339")
    base, frac, zone = m.groups()
    micros = int((frac or "0")[:6].ljust(6, "0"))
    zone = "+00:00" if zone.upper() == "Z" else zone
    try:
        value = _dt.datetime.fromisoformat(f"{base}.{micros:06d}{zone}")
    except ValueError as exc:
        raise InvalidEnvelopeError(f"timestamp {text[:40]!r} is not a valid date") from exc
    return value.astimezone(_dt.UTC)


def _embeddable(payload: bytes) -> str | None:
    """The payload as JSON source text when it can be embedded verbatim, else None."""
    if payload[:1] in (b" ", b"\t", b"\n", b"\r") or payload[-1:] in (b" ", b"\t", b"\n", b"\r"):
        return None
    try:
        text = payload.decode("utf-8")
        _decoder.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return text


_PLAIN = re.compile(r"[A-Za-z0-9:_\-./ ]*")  # needs no JSON escaping
_json_string = json.encoder.encode_basestring  # C-accelerated, no ASCII escaping


def _quote(value: str) -> str:
    return f'"{value}"' if _PLAIN.fullmatch(value) else _json_string(value)


def encode_envelope(env: Envelope) -> tuple[bytes, dict[str, str]]:
    """Encode an envelope into (body, headers). Pure and deterministic."""
    stamp = format_timestamp(env.timestamp)
    # the Envelope converter guarantees a UTC timestamp; aggregate_id's alphabet needs no escaping
    text = (
        f'{{"event_id":{_quote(env.event_id)},"aggregate_id":"{env.aggregate_id}",'
        f'"event_type":{_quote(env.event_type)},"event_version":{env.event_version},'
        f'"timestamp":"{stamp}"'
    )
    headers = {
        H_EVENT_ID: env.event_id,
        H_AGGREGATE_ID: env.aggregate_id,
        H_EVENT_TYPE: env.event_type,
        H_EVENT_VERSION: str(env.event_version),
    }
    if env.trace_id is not None:
        text += f',"trace_id":{_quote(env.trace_id)}'
        headers[H_TRACE_ID] = env.trace_id
    if env.correlation_id is not None:
        text += f',"correlation_id":{_quote(env.correlation_id)}'
        headers[H_CORRELATION_ID] = env.correlation_id
    if env.tenant_id is not None:
        text += f',"tenant_id":{_quote(env.tenant_id)}'
        headers[H_TENANT_ID] = env.tenant_id
    raw = _embeddable(env.payload)
    if raw is None:
        headers[H_PAYLOAD_ENCODING] = "base64"
        text += f',"payload":"{base64.b64encode(env.payload).decode("ascii")}"}}'
    else:
        text += f',"payload":{raw}}}'
    return text.encode("utf-8"), headers


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _scan_object(text: str) -> dict[str, tuple[Any, str]]:
    """Parse a top-level JSON object into {key: (value, exact source text of the value)}."""
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("envelope body is not a JSON object")
    out: dict[str, tuple[Any, str]] = {}
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "}":
        i += 1
    else:
        while True:
            key, i = _decoder.raw_decode(text, i)
            if not isinstance(key, str):
                raise ValueError("object key is not a string")
            i = _skip_ws(text, i)
            if text[i : i + 1] != ":":
                raise ValueError("expected ':'")
            start = _skip_ws(text, i + 1)
            value, i = _decoder.raw_decode(text, start)
            if key in out:
                raise ValueError(f"duplicate field {key!r}")
            out[key] = (value, text[start:i])
            i = _skip_ws(text, i)
            sep = text[i : i + 1]
            i += 1
            if sep == "}":
                break
            if sep != ",":
                raise ValueError("expected ',' or '}'")
            i = _skip_ws(text, i)
    if _skip_ws(text, i) != len(text):
        raise ValueError("trailing data after the envelope object")
    return out


def _fast_fields(text: str) -> dict[str, tuple[Any, str]] | None:
    """The common case in C speed: ``payload`` is the last field (our encoder and Go's put it there).

    The payload's source text is the suffix after the last ``"payload":`` key; that key cannot occur inside
    a JSON string (its quote would be escaped), and a match inside a nested object leaves unbalanced closing
    brackets, which fail to parse. Returns None when the fast path does not apply.
    """
    if not text.lstrip(_WS).startswith("{"):
        return None
    try:
        pairs = _pairs_decoder.decode(text)  # objects as lists of pairs: duplicates stay visible
    except (ValueError, RecursionError):
        return None
    obj = dict(pairs)
    if len(obj) != len(pairs) or "payload" not in obj:
        return None
    at = text.rfind('"payload":')
    end = text.rstrip(_WS)
    if at < 0 or not end.endswith("}"):
        return None
    raw = end[at + 10 : -1].strip(_WS)
    try:
        if _pairs_decoder.decode(raw) != obj["payload"]:
            return None
    except (ValueError, RecursionError):
        return None
    fields = {key: (value, "") for key, value in pairs}
    fields["payload"] = (obj["payload"], raw)
    return fields


def decode_envelope(body: bytes, headers: Mapping[str, str] | None = None) -> Envelope:
    """Decode (body, headers) produced by :func:`encode_envelope` or by the Go services.

    Raises :class:`InvalidEnvelopeError` for anything that is not a valid envelope; the bus dead-letters such
    messages at once instead of retrying them.
    """
    try:
        text = body.decode("utf-8")
        fields = _fast_fields(text) or _scan_object(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidEnvelopeError(f"undecodable envelope: {exc}") from exc
    unknown = fields.keys() - _FIELDS
    if unknown:
        raise InvalidEnvelopeError(f"unknown envelope fields: {sorted(unknown)}")
    try:
        payload_value, payload_text = fields["payload"]
        timestamp = fields["timestamp"][0]
        kwargs: dict[str, Any] = {
            "event_id": fields["event_id"][0],
            "aggregate_id": fields["aggregate_id"][0],
            "event_type": fields["event_type"][0],
            "event_version": fields["event_version"][0],
        }
    except KeyError as exc:
        raise InvalidEnvelopeError(f"envelope field {exc.args[0]!r} is missing") from exc
    for name, _ in _OPTIONAL:
        if name in fields and fields[name][0] not in (None, ""):
            kwargs[name] = fields[name][0]
    if not isinstance(timestamp, str):
        raise InvalidEnvelopeError("timestamp must be an RFC 3339 string")
    if headers is not None and headers.get(H_PAYLOAD_ENCODING) == "base64":
        if not isinstance(payload_value, str):
            raise InvalidEnvelopeError("base64 payload must be a JSON string")
        try:
            payload = base64.b64decode(payload_value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidEnvelopeError("payload is not valid base64") from exc
    else:
        payload = payload_text.encode("utf-8")
    return Envelope(payload=payload, timestamp=parse_timestamp(timestamp), **kwargs)
