"""Envelope validation and the wire codec (round trip is a property; Go-produced bodies decode)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_eventbus as teb
from trio_eventbus._codec import decode_envelope, encode_envelope, parse_timestamp

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


@st.composite
def envelopes(draw: st.DrawFn) -> teb.Envelope:
    return teb.Envelope(
        event_id=draw(_text),
        aggregate_id=draw(st.text(_ID_ALPHABET, min_size=1, max_size=256)),
        event_type=draw(_text),
        event_version=draw(st.integers(1, 2**63 - 1)),
        timestamp=draw(_timestamps),
        payload=draw(_payloads),
        trace_id=draw(st.none() | _text),
        correlation_id=draw(st.none() | _text),
        tenant_id=draw(st.none() | _text),
    )


@given(envelopes())
@settings(max_examples=300)
def test_round_trip(env: teb.Envelope) -> None:
    body, headers = encode_envelope(env)
    assert decode_envelope(body, headers) == env
    obj = json.loads(body)  # always valid JSON with exactly the agreed field names
    assert set(obj) <= {
        "event_id",
        "aggregate_id",
        "event_type",
        "event_version",
        "timestamp",
        "trace_id",
        "correlation_id",
        "tenant_id",
        "payload",
    }
    assert headers["X-Event-ID"] == env.event_id
    assert headers["X-Aggregate-ID"] == env.aggregate_id
    assert headers["X-Event-Type"] == env.event_type
    assert headers["X-Event-Version"] == str(env.event_version)
    assert headers.get("X-Trace-ID") == env.trace_id
    assert headers.get("X-Correlation-ID") == env.correlation_id
    assert headers.get("X-Tenant-ID") == env.tenant_id


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
        b'"payload":1,"extra":2}',
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":NaN}',
        b'{"event_id":"e","event_id":"f","aggregate_id":"a","event_type":"T","event_version":1,'
        b'"timestamp":"2026-01-02T03:04:05Z","payload":1}',
    ],
)
def test_undecodable_bodies_raise_invalid_envelope(body: bytes) -> None:
    with pytest.raises(teb.InvalidEnvelopeError):
        decode_envelope(body)


def test_bad_base64_payload_is_refused() -> None:
    body = (
        b'{"event_id":"e","aggregate_id":"a","event_type":"T","event_version":1,"timestamp":"2026-01-02T03:04:05Z",'
        b'"payload":"not base64!"}'
    )
    with pytest.raises(teb.InvalidEnvelopeError, match="base64"):
        decode_envelope(body, {"X-Payload-Encoding": "base64"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aggregate_id": ""}, "aggregate_id"),
        ({"aggregate_id": "a" * 257}, "aggregate_id"),
        ({"aggregate_id": "order 1"}, "aggregate_id"),
        ({"event_type": "  "}, "event_type"),
        ({"event_id": ""}, "event_id"),
        ({"event_version": 0}, "event_version"),
        ({"event_version": True}, "event_version"),
        ({"event_version": 1.0}, "event_version"),
        ({"payload": b""}, "payload"),
        ({"payload": "text"}, "payload"),
        ({"timestamp": dt.datetime(2026, 1, 1)}, "timezone"),
        ({"trace_id": "a\nb"}, "trace_id"),
    ],
)
def test_invalid_envelopes_are_refused(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"aggregate_id": "order-1", "event_type": "T", "event_version": 1, "payload": b"1"}
    fields |= changes
    with pytest.raises(teb.InvalidEnvelopeError, match=message) as info:
        teb.Envelope(**fields)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_aggregate_id_alphabet_and_length_limit_are_accepted() -> None:
    env = teb.Envelope(
        aggregate_id=_ID_ALPHABET + "x" * (256 - len(_ID_ALPHABET)), event_type="T", event_version=1, payload=b"1"
    )
    assert len(env.aggregate_id) == 256


def test_event_ids_are_uuid7_and_time_ordered() -> None:
    ids = [teb.new_event_id() for _ in range(200)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert all(uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == 200
    stamps = [uuid.UUID(i).int >> 80 for i in ids]
    assert stamps == sorted(stamps)


def test_timestamp_parsing_accepts_rfc3339_variants() -> None:
    assert parse_timestamp("2026-01-02T03:04:05Z") == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert parse_timestamp("2026-01-02T03:04:05.5-01:30") == dt.datetime(2026, 1, 2, 4, 34, 5, 500000, tzinfo=dt.UTC)
    with pytest.raises(teb.InvalidEnvelopeError):
        parse_timestamp("2026-13-02T03:04:05Z")


def test_new_message_builds_the_same_value_as_the_constructor() -> None:
    import attrs

    from trio_eventbus._envelope import new_message

    names = [f.name for f in attrs.fields(teb.Message)]
    assert names == ["topic", "data", "key", "headers", "message_id", "delivery_attempt"]  # new_message's order
    built = new_message("t", b"x", "k", {"a": "b"}, "id-1", 3)
    expected = teb.Message(topic="t", data=b"x", key="k", headers={"a": "b"}, message_id="id-1", delivery_attempt=3)
    assert built == expected
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.topic = "other"  # type: ignore[misc]
