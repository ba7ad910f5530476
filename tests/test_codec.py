"""The wire codec: round trip is a property, Go-produced bodies decode, tolerant reading (unknown fields, legacy
tenant ids, absent event ids), timestamps to the nanosecond, and malformed input only ever raises
InvalidEnvelopeError (fuzzed). Envelope validation and ids: tests/test_envelope.py; the captured Go vectors:
tests/test_go_interop_vectors.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_go_interop_vectors import GO_FIELDS

import trio_eventbus as teb
from trio_eventbus._codec import decode_envelope, encode_envelope, format_timestamp, parse_timestamp

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_-./"
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=1).filter(str.strip)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
_payloads = (
    st.binary(min_size=1)
    | _json_values.map(lambda v: json.dumps(v).encode())
    | _json_values.map(lambda v: json.dumps(v, indent=1, ensure_ascii=False).encode())
)
_timestamps = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)
)
_BODY = (
    b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
    b'"payload":1%s}'
)


@st.composite
def envelopes(draw: st.DrawFn) -> teb.Envelope:
    return teb.Envelope(
        event_id=draw(_text),
        aggregate_id=draw(st.text(_ID_ALPHABET, min_size=1, max_size=256)),
        event_type=draw(_text),
        event_version=draw(st.integers(1, 2**63 - 1)),
        timestamp=draw(_timestamps),
        timestamp_nanosecond=draw(st.integers(0, 999)),
        payload=draw(_payloads),
        trace_id=draw(st.none() | _text),
        correlation_id=draw(st.none() | _text),
        tenant_id=draw(st.none() | st.integers(0, 2**63 - 1)),
    )


@given(envelopes())
@settings(max_examples=300)
def test_round_trip(env: teb.Envelope) -> None:
    body, headers = encode_envelope(env)
    assert decode_envelope(body, headers) == env
    obj = json.loads(body)  # always valid JSON with exactly the agreed field names
    assert set(obj) <= GO_FIELDS
    assert headers["X-Event-ID"] == env.event_id
    assert headers["X-Aggregate-ID"] == env.aggregate_id
    assert headers["X-Event-Type"] == env.event_type
    assert headers["X-Event-Version"] == str(env.event_version)
    assert headers.get("X-Trace-ID") == env.trace_id
    assert headers.get("X-Correlation-ID") == env.correlation_id
    assert headers.get("X-Tenant-ID") == (None if env.tenant_id is None else str(env.tenant_id))


def test_json_payload_is_embedded_and_binary_is_base64() -> None:
    env = teb.Envelope(aggregate_id="order-1", event_type="OrderCreated", event_version=1, payload=b'{"total": 5}')
    body, headers = encode_envelope(env)
    assert json.loads(body)["payload"] == {"total": 5}
    assert "X-Payload-Encoding" not in headers
    binary = teb.Envelope(aggregate_id="order-1", event_type="Blob", event_version=2, payload=b"\x00\xff")
    body, headers = encode_envelope(binary)
    assert json.loads(body)["payload"] == "AP8="
    assert headers["X-Payload-Encoding"] == "base64"


def test_decodes_a_go_service_body() -> None:
    # as Go's encoding/json writes the seeds' Envelope struct: RFC3339Nano with an offset, RawMessage payload
    body = (
        b'{"event_id":"evt-1","aggregate_id":"order-9","event_type":"OrderPaid","event_version":3,'
        b'"timestamp":"2026-01-02T11:04:05.123456789+08:00","trace_id":"t-1","correlation_id":"c-1",'
        b'"payload":{"amount":12.50,"items":[1,2]}}'
    )
    env = decode_envelope(body, {"X-Event-ID": "evt-1"})
    assert env.event_id == "evt-1"
    assert env.aggregate_id == "order-9"
    assert env.event_version == 3
    assert env.timestamp == dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    assert env.timestamp_nanosecond == 789
    assert env.payload == b'{"amount":12.50,"items":[1,2]}'  # the exact source text, not a re-serialisation
    assert (env.trace_id, env.correlation_id, env.tenant_id) == ("t-1", "c-1", None)


def test_decodes_payload_not_in_last_position() -> None:
    body = (
        b'{ "payload" : [1, 2.0] , "event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,'
        b'"timestamp":"2026-01-02T03:04:05Z"}'
    )
    assert decode_envelope(body).payload == b"[1, 2.0]"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"event_id":"e"}',
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"yesterday","payload":1}',
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":0,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":1}',
        b'{"event_id":"e","aggregate_id":"a b","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":1}',
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":NaN}',
        _BODY % b',"event_version":1.0',  # Go: cannot unmarshal number 1.0 into int64
        _BODY % b',"event_version":true',
        _BODY % b',"event_version":"1"',
        _BODY % b',"event_version":1e400',
        _BODY % b',"event_version":99999999999999999999999',
        _BODY % b',"tenant_id":-1',
        _BODY % b',"tenant_id":9223372036854775808',
        _BODY % b',"tenant_id":1.5',
        _BODY % b',"tenant_id":true',
        _BODY % b',"tenant_id":"acme"',
        _BODY % b',"tenant_id":" 1"',
        _BODY % b',"tenant_id":""',
        _BODY % b',"tenant_id":"\\u0661"',  # an Arabic-Indic digit: not ASCII
        _BODY % b',"tenant_id":{}',
        _BODY % b',"trace_id":5',
        _BODY % b',"aggregate_id":null',
        _BODY % b',"timestamp":null',
        _BODY % b',"timestamp":"2026-01-02T03:04:05"',  # no offset
        _BODY % b',"timestamp":"2026-01-02 03:04:05Z"',
        _BODY % b',"timestamp":"2026-01-02T03:04:05.1234567890Z"',  # ten digits
        _BODY % b',"timestamp":"2026-02-30T03:04:05Z"',
        _BODY % b',"timestamp":"2026-01-02T24:00:00Z"',
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z"}',
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":[1,2}',
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":1} trailing',
    ],
)
def test_undecodable_bodies_raise_invalid_envelope(body: bytes) -> None:
    with pytest.raises(teb.InvalidEnvelopeError):
        decode_envelope(body)


def test_a_deeply_nested_payload_decodes_verbatim_or_is_refused_typed() -> None:
    """5,000 levels of nesting: valid JSON (Go's decoder allows 10,000). Whether msgspec takes it depends on the
    interpreter's recursion limit (refused on 3.11 and 3.12, decoded on 3.13); either way the payload is the
    exact source text or the error is InvalidEnvelopeError, never a RecursionError out of the codec."""
    nested = b"[" * 5000 + b"]" * 5000
    body = (
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":' + nested + b"}"
    )
    try:
        env = decode_envelope(body, {})
    except teb.InvalidEnvelopeError:
        return
    assert env.payload == nested


def test_bad_base64_payload_is_refused() -> None:
    body = (
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":"not base64!"}'
    )
    with pytest.raises(teb.InvalidEnvelopeError, match="base64"):
        decode_envelope(body, {"X-Payload-Encoding": "base64"})


def test_timestamp_parsing_accepts_rfc3339_variants() -> None:
    assert parse_timestamp("2026-01-02T03:04:05Z") == (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), 0)
    assert parse_timestamp("2026-01-02T03:04:05.5-01:30") == (
        dt.datetime(2026, 1, 2, 4, 34, 5, 500000, tzinfo=dt.UTC),
        0,
    )
    assert parse_timestamp("2026-01-02T03:04:05.12345678+08:00") == (
        dt.datetime(2026, 1, 1, 19, 4, 5, 123456, tzinfo=dt.UTC),
        780,
    )
    assert parse_timestamp("2026-01-02t03:04:05.1z") == (dt.datetime(2026, 1, 2, 3, 4, 5, 100000, tzinfo=dt.UTC), 0)
    for bad in ("2026-13-02T03:04:05Z", "2026-01-02T03:04:05.Z", "2026-01-02T03:04Z", "2026-01-02T03:04:05,5Z"):
        with pytest.raises(teb.InvalidEnvelopeError):
            parse_timestamp(bad)


def test_timestamps_are_written_as_go_writes_them_and_keep_nanoseconds() -> None:
    base = dt.datetime(2026, 11, 29, 15, 59, 37, tzinfo=dt.UTC)
    cases = [
        (base, 0, "2026-11-29T15:59:37Z"),
        (base.replace(microsecond=500000), 0, "2026-11-29T15:59:37.5Z"),
        (base.replace(microsecond=555344), 67, "2026-11-29T15:59:37.555344067Z"),
        (base.replace(microsecond=555750), 890, "2026-11-29T15:59:37.55575089Z"),
        (base, 1, "2026-11-29T15:59:37.000000001Z"),
    ]
    for ts, ns, text in cases:
        assert format_timestamp(ts, ns) == text
        assert parse_timestamp(text) == (ts, ns)
        env = teb.Envelope(
            aggregate_id="a", event_type="T", event_version=1, payload=b"1", timestamp=ts, timestamp_nanosecond=ns
        )
        body, headers = encode_envelope(env)
        assert json.loads(body)["timestamp"] == text
        assert decode_envelope(body, headers) == env


def test_a_go_timestamp_with_an_offset_is_the_same_instant_in_utc() -> None:
    body = _BODY.replace(b"2026-01-02T03:04:05Z", b"2026-01-02T11:04:05.000000009+08:00") % b""
    env = decode_envelope(body)
    assert (env.timestamp, env.timestamp_nanosecond) == (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), 9)
    assert json.loads(encode_envelope(env)[0])["timestamp"] == "2026-01-02T03:04:05.000000009Z"


def test_unknown_fields_are_ignored() -> None:
    # forward compatibility, as the Go decoder: new fields of any JSON type, anywhere in the object
    extra = b',"schema":"v2","meta":{"a":[1,{"b":null}]},"flags":[true,false],"n":1.5e300'
    body = b'{"x_first":1,' + (_BODY % extra)[1:]
    env = decode_envelope(body)
    assert (env.event_id, env.aggregate_id, env.event_type, env.event_version, env.payload) == ("e", "a", "T", 1, b"1")


def test_a_field_given_twice_takes_its_last_value() -> None:
    # documented: Go's decoder does the same (duplicates are not detected; it would cost a second parse)
    env = decode_envelope(_BODY % b',"event_type":"U","event_id":"f"')
    assert (env.event_type, env.event_id) == ("U", "f")


@pytest.mark.parametrize(("wire", "tenant"), [(b"0", 0), (b"7", 7), (b'"42"', 42), (b'"007"', 7), (b"null", None)])
def test_tenant_id_integers_and_legacy_digit_strings(wire: bytes, tenant: int | None) -> None:
    env = decode_envelope(_BODY % (b',"tenant_id":' + wire))
    assert env.tenant_id == tenant
    body, headers = encode_envelope(env)
    if tenant is None:
        assert "tenant_id" not in json.loads(body)
        assert "X-Tenant-ID" not in headers
    else:
        assert json.loads(body)["tenant_id"] == tenant  # re-encoded as a JSON number
        assert headers["X-Tenant-ID"] == str(tenant)


def test_tenant_id_limits_on_the_wire() -> None:
    assert decode_envelope(_BODY % b',"tenant_id":9223372036854775807').tenant_id == 2**63 - 1
    assert decode_envelope(_BODY % b',"tenant_id":"9223372036854775807"').tenant_id == 2**63 - 1
    for bad in (b"9223372036854775808", b'"9223372036854775808"', b'"' + b"9" * 5000 + b'"'):
        with pytest.raises(teb.InvalidEnvelopeError, match="tenant_id"):
            decode_envelope(_BODY % (b',"tenant_id":' + bad))


def test_an_absent_event_id_comes_from_the_header_else_from_the_body() -> None:
    body = b'{"aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z","payload":1}'
    assert decode_envelope(body, {"X-Event-ID": "from-header"}).event_id == "from-header"
    derived = decode_envelope(body).event_id
    assert uuid.UUID(derived).version == 5
    assert decode_envelope(body, {}).event_id == derived  # a redelivery gets the same id
    for blank in (b'"event_id":"",', b'"event_id":null,'):  # Go's zero value, JSON null
        other = body.replace(b"{", b"{" + blank, 1)
        env = decode_envelope(other)
        assert uuid.UUID(env.event_id).version == 5
        assert env.event_id != derived
    assert decode_envelope(body.replace(b"T", b"U", 1)).event_id != derived
    with pytest.raises(teb.InvalidEnvelopeError, match="event_id"):
        decode_envelope(body, {"X-Event-ID": "  "})


def test_blank_optional_ids_are_absent() -> None:
    env = decode_envelope(_BODY % b',"trace_id":"","correlation_id":null')
    assert (env.trace_id, env.correlation_id) == (None, None)


def test_payloads_travel_verbatim_or_as_base64_by_the_rules() -> None:
    embedded = [b'{"a": 1,  "b" : [1, 2]}', b'"h\\u00e9llo"', b'"h\xc3\xa9llo \xe2\x9c\x93"', b"null", b"1e999", b"[]"]
    for payload in embedded:
        body, headers = encode_envelope(
            teb.Envelope(aggregate_id="a", event_type="T", event_version=1, payload=payload)
        )
        assert "X-Payload-Encoding" not in headers
        assert body.endswith(b',"payload":' + payload + b"}")  # byte for byte, inner whitespace kept
    deep = b"[" * 501 + b"]" * 501
    shallow_but_long = b"[" + b",".join([b"[1]"] * 600) + b"]"
    base64_payloads = [b" 1", b"1\n", b"\x00\xff", b"not json", b'"\xff"', b"{'a': 1}", b"NaN", deep, b'"unterminated']
    for payload in base64_payloads:
        body, headers = encode_envelope(
            teb.Envelope(aggregate_id="a", event_type="T", event_version=1, payload=payload)
        )
        assert headers["X-Payload-Encoding"] == "base64"
        wire = json.loads(body)["payload"]
        assert isinstance(wire, str)
        assert base64.b64decode(wire, validate=True) == payload
        assert decode_envelope(body, headers).payload == payload
    body, headers = encode_envelope(
        teb.Envelope(aggregate_id="a", event_type="T", event_version=1, payload=shallow_but_long)
    )
    assert "X-Payload-Encoding" not in headers


def test_without_the_base64_header_a_string_payload_is_its_json_text() -> None:
    # a Go producer sends no X-Payload-Encoding: a JSON string payload is delivered as its JSON text, quotes included
    body = _BODY.replace(b'"payload":1', b'"payload":"AP8="') % b""
    assert decode_envelope(body).payload == b'"AP8="'
    assert decode_envelope(body, {"X-Payload-Encoding": "base64"}).payload == b"\x00\xff"


def test_text_fields_utf8_cannot_encode_are_refused_at_encode() -> None:
    env = teb.Envelope(aggregate_id="a", event_type="T\ud800", event_version=1, payload=b"1")
    with pytest.raises(teb.InvalidEnvelopeError, match="UTF-8"):
        encode_envelope(env)


_json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
_FIELDS = ["event_id", "aggregate_id", "event_type", "event_version", "timestamp", "trace_id", "correlation_id"]


@st.composite
def _mangled_bodies(draw: st.DrawFn) -> bytes:
    """A valid body, then one of: truncated, a byte changed, a field of another JSON type, a field dropped, deep
    nesting, a huge number, NaN or Infinity spliced in."""
    env = draw(envelopes())
    body, _ = encode_envelope(env)
    how = draw(st.sampled_from(["truncate", "byte", "retype", "drop", "deep", "huge", "nan"]))
    if how == "truncate":
        return body[: draw(st.integers(0, len(body) - 1))]
    if how == "byte":
        i = draw(st.integers(0, len(body) - 1))
        return body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1 :]
    obj = json.loads(body)
    field = draw(st.sampled_from([*_FIELDS, "tenant_id", "payload"]))
    if how == "retype":
        obj[field] = draw(_json_text)
    elif how == "drop":
        obj.pop(field, None)
    elif how == "deep":
        depth = draw(st.integers(900, 3000))
        obj[field] = None
        return json.dumps(obj).replace("null", "[" * depth + "]" * depth, 1).encode()
    elif how == "huge":
        obj[field] = None
        return (
            json.dumps(obj).replace("null", draw(st.sampled_from(["1" * 5000, "-1e99999", "1.5e-99999"])), 1).encode()
        )
    else:
        obj[field] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return json.dumps(obj).encode()  # NaN/Infinity written as Python's json does: not JSON


@given(_mangled_bodies(), st.sampled_from([None, {}, {"X-Payload-Encoding": "base64"}, {"X-Event-ID": " "}]))
@settings(max_examples=400)
def test_malformed_input_only_raises_invalid_envelope(body: bytes, headers: dict[str, str] | None) -> None:
    try:
        env = decode_envelope(body, headers)
    except teb.InvalidEnvelopeError:
        return
    assert isinstance(env, teb.Envelope)  # a mangling that still decodes is a valid envelope


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_only_raise_invalid_envelope(body: bytes) -> None:
    with pytest.raises(teb.InvalidEnvelopeError):
        decode_envelope(body)
