"""Wire compatibility with the Go services (jxt-core), from the messages captured off real brokers.

- Every captured Go message (NATS: body only; Kafka: body and the headers as captured) decodes to exactly the
  fields the Go publisher set, the payload byte for byte and the timestamp to the nanosecond; re-encoded, it
  gives the Go service's bytes again.
- Every envelope this bus encodes passes the Go decoder's rules (written down in :func:`go_decoder_reads`:
  typed fields, RFC 3339 timestamp, payload a JSON value, nothing Go would reject).
- Headerless Go bodies published raw (as the Go bus does on NATS) keep per-aggregate order on an envelope
  subscription of the memory bus; a raw subscription of the same bodies, keyless, shows they would not.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import random
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_eventbus as teb
from trio_eventbus._codec import decode_envelope, encode_envelope, format_timestamp
from trio_eventbus._dispatch.decode import envelope_of
from trio_eventbus._dispatch.router import Router
from trio_eventbus._dispatch.settle import Counters
from trio_eventbus.backends import Delivery

DATA = Path(__file__).parent / "data" / "go-interop"


def _load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def _vectors(broker: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    wire, expected = _load(f"go-{broker}-wire.jsonl"), _load(f"go-{broker}-expected.jsonl")
    assert len(wire) == len(expected) == 60
    return list(zip(wire, expected, strict=True))


@pytest.mark.parametrize("broker", ["nats", "kafka"])
def test_every_captured_go_message_decodes_to_exactly_the_fields_go_set(broker: str) -> None:
    shapes = set()
    for wire, expected in _vectors(broker):
        body = base64.b64decode(wire["body_b64"])
        headers = wire["headers"]
        assert (headers == {}) is (broker == "nats")  # the Go bus publishes no headers on NATS
        env = decode_envelope(body, headers)
        got = {
            "event_id": env.event_id,
            "aggregate_id": env.aggregate_id,
            "event_type": env.event_type,
            "event_version": env.event_version,
            "timestamp": format_timestamp(env.timestamp, env.timestamp_nanosecond),
            "trace_id": env.trace_id,
            "correlation_id": env.correlation_id,
            "tenant_id": env.tenant_id,
            "payload_b64": base64.b64encode(env.payload).decode(),
        }
        assert got == expected
        assert type(env.tenant_id) is int
        # the nanoseconds are really there: the datetime holds the microseconds, the rest is kept beside it
        fraction = expected["timestamp"][20:-1].ljust(9, "0")
        assert env.timestamp.microsecond == int(fraction[:6])
        assert env.timestamp_nanosecond == int(fraction[6:])
        shapes.add(len(fraction.rstrip("0")))
        if broker == "kafka":
            assert wire["key"] == env.aggregate_id
    print(f"{broker}: 60 messages decoded, fractional digit counts seen: {sorted(shapes)}")


@pytest.mark.parametrize("broker", ["nats", "kafka"])
def test_re_encoding_a_go_message_gives_the_go_bytes_again(broker: str) -> None:
    for wire, _ in _vectors(broker):
        body = base64.b64decode(wire["body_b64"])
        ours, headers = encode_envelope(decode_envelope(body, wire["headers"]))
        assert ours == body  # field order, types, timestamp text and the payload's inner whitespace all match
        if broker == "kafka":
            assert headers == wire["headers"]  # the same X-* headers as Go's Kafka producer


# -- the Go decoder's rules ---------------------------------------------------------------------------------

GO_FIELDS = {
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
_GO_AGGREGATE_ID = re.compile(r"[A-Za-z0-9:_\-./]{1,256}")
# Go's time.Time.UnmarshalJSON: RFC 3339, 'T', seconds, optional fraction, 'Z' or a numeric offset
_GO_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON (Go rejects it)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys {keys}"
    return dict(pairs)


def go_decoder_reads(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    """What the Go service's ``FromBytes`` + ``Validate`` accept, as assertions; returns the object and the bytes
    a Go handler gets as its payload (``json.RawMessage``, or ``[]byte`` when the payload is base64)."""
    text = body.decode("utf-8")  # Go: the body is UTF-8 JSON
    obj = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    assert isinstance(obj, dict)
    assert set(obj) <= GO_FIELDS, f"fields Go does not know: {set(obj) - GO_FIELDS}"
    for name in ("event_id", "aggregate_id", "event_type"):
        assert isinstance(obj[name], str), name
        assert obj[name].strip(), name  # not blank after TrimSpace
    assert _GO_AGGREGATE_ID.fullmatch(obj["aggregate_id"].strip())
    version = obj["event_version"]
    assert type(version) is int, "event_version: a JSON integer"
    assert 0 < version < 2**63, "event_version: int64, positive"
    assert isinstance(obj["timestamp"], str)
    assert _GO_RFC3339.fullmatch(obj["timestamp"]), obj["timestamp"]
    dt.datetime.fromisoformat(obj["timestamp"][:19])  # a real date and time (Go checks the ranges)
    for name in ("trace_id", "correlation_id"):
        assert name not in obj or isinstance(obj[name], str), name
    if "tenant_id" in obj:
        assert type(obj["tenant_id"]) is int, "tenant_id: a JSON integer"
        assert 0 <= obj["tenant_id"] < 2**63, "tenant_id: in the int64 range"
    assert "payload" in obj
    # the payload's exact source text (Go's RawMessage): the value after the first "payload" key; every string
    # before it is escaped, so the first unescaped occurrence is the key itself
    start = text.index(',"payload":') + len(',"payload":')
    raw, end = json.JSONDecoder().raw_decode(text, start)
    assert raw == obj["payload"]
    assert text[end:].strip() == "}"
    raw_bytes = text[start:end].encode("utf-8")
    assert raw_bytes, "payload is required (len(RawMessage) > 0)"
    if headers.get("X-Payload-Encoding") == "base64":
        assert isinstance(obj["payload"], str)
        return obj, base64.b64decode(obj["payload"], validate=True)  # json.Unmarshal(env.Payload, &b []byte)
    return obj, raw_bytes


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=1).filter(str.strip)
_json_payloads = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
).map(lambda v: json.dumps(v, ensure_ascii=False).encode())


@st.composite
def _envelopes(draw: st.DrawFn) -> teb.Envelope:
    return teb.Envelope(
        event_id=draw(st.none() | _text),
        aggregate_id=draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_-./", min_size=1)),
        event_type=draw(_text),
        event_version=draw(st.integers(1, 2**63 - 1)),
        timestamp=draw(st.datetimes(min_value=dt.datetime(1, 1, 2), timezones=st.just(dt.UTC))),
        timestamp_nanosecond=draw(st.integers(0, 999)),
        payload=draw(st.binary(min_size=1) | _json_payloads),
        trace_id=draw(st.none() | _text),
        correlation_id=draw(st.none() | _text),
        tenant_id=draw(st.none() | st.integers(0, 2**63 - 1)),
    )


def _check_against_go(env: teb.Envelope) -> dict[str, Any]:
    body, headers = encode_envelope(env)
    obj, payload = go_decoder_reads(body, headers)
    assert payload == env.payload  # what a Go handler gets is the bytes this bus sent
    assert (obj["event_id"], obj["aggregate_id"], obj["event_type"]) == (env.event_id, env.aggregate_id, env.event_type)
    assert obj["event_version"] == env.event_version
    assert obj.get("tenant_id") == env.tenant_id
    assert (obj.get("trace_id"), obj.get("correlation_id")) == (env.trace_id, env.correlation_id)
    assert obj["timestamp"] == format_timestamp(env.timestamp, env.timestamp_nanosecond)
    assert decode_envelope(body, headers) == env
    return obj


@given(_envelopes())
@settings(max_examples=300)
def test_every_envelope_this_bus_encodes_passes_the_go_decoders_rules(env: teb.Envelope) -> None:
    _check_against_go(env)


def test_explicit_envelopes_pass_the_go_decoders_rules() -> None:
    ts = dt.datetime(2026, 11, 29, 15, 59, 37, 555344, tzinfo=dt.UTC)
    full = teb.Envelope(
        aggregate_id="order-1",
        event_type="OrderPlaced",
        event_version=2**63 - 1,
        payload=b'{"html": "<b>&amp;</b>", "note": "h\xc3\xa9llo"}',
        event_id="evt-1",
        timestamp=ts,
        timestamp_nanosecond=67,
        trace_id="trace-1",
        correlation_id="corr-1",
        tenant_id=2**63 - 1,
    )
    obj = _check_against_go(full)
    assert obj["timestamp"] == "2026-11-29T15:59:37.555344067Z"
    assert obj["tenant_id"] == 2**63 - 1
    for payload in (b"\x00\xff binary", b"not json", b" 1", b'{"a":1}\n', b"[" * 600 + b"]" * 600):
        _check_against_go(attrs.evolve(full, payload=payload))  # base64: Go's []byte gets the bytes
    for tenant in (0, 1, None):
        _check_against_go(attrs.evolve(full, tenant_id=tenant, trace_id=None, correlation_id=None))
    _check_against_go(attrs.evolve(full, timestamp=dt.datetime(1, 1, 1, tzinfo=dt.UTC), timestamp_nanosecond=0))


# -- headerless Go messages on the memory bus ------------------------------------------------------------------


def _go_body(aggregate: str, seq: int) -> bytes:
    """A body as the Go bus writes it (field order, RFC3339Nano timestamp, raw JSON payload with whitespace)."""
    return (
        f'{{"event_id":"01a22807-7123-7c33-ba40-{seq:012x}","aggregate_id":"{aggregate}","event_type":"InteropEvent",'
        f'"event_version":1,"timestamp":"2026-11-29T15:58:26.0838{seq % 100000:05d}Z","tenant_id":{1 + seq % 5},'
        f'"payload":{{"seq": {seq}, "agg": "{aggregate}"}}}}'
    ).encode()


async def _publish_go_bodies_raw(bus: teb.EventBus, topic: str, aggregates: int, per: int) -> list[bytes]:
    bodies = [_go_body(f"agg-{i % aggregates:03d}", i) for i in range(aggregates * per)]
    for body in bodies:
        await bus.publish(topic, body)  # no key, no headers: what the Go bus puts on NATS
    return bodies


async def test_headerless_go_bodies_keep_per_aggregate_order_on_an_envelope_subscription(
    autojump_clock: trio.testing.MockClock,
) -> None:
    aggregates, per = 20, 15
    total = aggregates * per
    rng = random.Random(7)
    seen_envelope: dict[str, list[int]] = {}
    seen_raw: dict[str, list[int]] = {}
    done_envelope, done_raw = trio.Event(), trio.Event()
    counts = {"envelope": 0, "raw": 0}

    async def on_envelope(env: teb.Envelope) -> None:
        await trio.sleep(rng.random() / 100)  # handlers of different lengths: a pool would reorder them
        seen_envelope.setdefault(env.aggregate_id, []).append(json.loads(env.payload)["seq"])
        counts["envelope"] += 1
        if counts["envelope"] == total:
            done_envelope.set()

    async def on_raw(message: teb.Message) -> None:
        await trio.sleep(rng.random() / 100)
        obj = json.loads(message.data)
        seen_raw.setdefault(obj["aggregate_id"], []).append(obj["payload"]["seq"])
        counts["raw"] += 1
        if counts["raw"] == total:
            done_raw.set()

    with trio.fail_after(60):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(service="svc")) as bus:
            await bus.subscribe_envelope("go.orders", on_envelope)
            await bus.subscribe("go.orders.raw", on_raw)  # the control: keyless bodies on the worker pool
            await _publish_go_bodies_raw(bus, "go.orders", aggregates, per)
            await _publish_go_bodies_raw(bus, "go.orders.raw", aggregates, per)
            await done_envelope.wait()
            await done_raw.wait()
            stats = bus.statistics()

    def violations(seen: dict[str, list[int]]) -> int:
        return sum(sum(1 for a, b in itertools.pairwise(seqs) if b < a) for seqs in seen.values())

    handled = sum(len(v) for v in seen_envelope.values())
    print(
        f"sent {total} headerless Go bodies: envelope subscription handled {handled}, "
        f"order violations {violations(seen_envelope)}; raw keyless control violations {violations(seen_raw)}; "
        f"undecodable {stats.undecodable}"
    )
    assert handled == total
    assert len(seen_envelope) == aggregates
    assert violations(seen_envelope) == 0
    assert violations(seen_raw) > 0  # without the body's key the same bodies lose their order
    assert stats.undecodable == 0


async def test_a_headerless_body_that_does_not_decode_is_dead_lettered_as_undecodable() -> None:
    dead: list[teb.Message] = []
    handled: list[teb.Envelope] = []
    done = trio.Event()

    async def on_envelope(env: teb.Envelope) -> None:
        handled.append(env)

    async def on_dead(message: teb.Message) -> None:
        dead.append(message)
        done.set()

    with trio.fail_after(10):
        async with teb.open_bus(teb.MemoryConfig(), options=teb.BusOptions(service="svc")) as bus:
            await bus.subscribe_envelope("go.orders", on_envelope)
            await bus.subscribe("go.orders.dlq", on_dead)
            await bus.publish("go.orders", b'{"aggregate_id":"agg-1","event_type":"T"}')  # no key, not an envelope
            await bus.publish("go.orders", _go_body("agg-2", 1))
            await done.wait()
            await bus.wait_idle()
            stats = bus.statistics()
    assert [e.aggregate_id for e in handled] == ["agg-2"]
    assert dead[0].data == b'{"aggregate_id":"agg-1","event_type":"T"}'
    assert dead[0].headers["X-DLQ-Reason"] == "undecodable"
    assert dead[0].key is None  # it stayed keyless
    assert (stats.undecodable, stats.dead_lettered) == (1, 1)


async def test_the_router_decodes_a_keyless_envelope_once_and_keys_it_by_its_aggregate() -> None:
    ran: list[Delivery] = []
    router = Router(
        lanes=4,
        lane_buffer=8,
        workers=2,
        worker_buffer=8,
        abandon=lambda d: None,
        counters=Counters(),
        max_buffered_bytes=1 << 20,
    )

    async def run(delivery: Delivery) -> None:
        ran.append(delivery)

    go = Delivery("t", _go_body("agg-7", 3), {}, None, None, 1, token=None)
    keyed = Delivery("t", _go_body("agg-8", 4), {}, "given-key", None, 1, token=None)
    raw = Delivery("t", _go_body("agg-9", 5), {}, None, None, 1, token=None)
    broken = Delivery("t", b"{", {}, None, None, 1, token=None)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await router.start(nursery)
            await router.route(run, [go, keyed, broken], envelopes=True)
            await router.route(run, [raw])  # a raw subscription: keyless stays keyless
            while len(ran) < 4:
                await trio.testing.wait_all_tasks_blocked()
            router.cancel()
    assert go.key == "agg-7"
    assert go.envelope is not None
    assert envelope_of(go) is go.envelope  # the decode step takes the router's envelope: no second decode
    assert go.envelope == decode_envelope(go.body)
    assert keyed.key == "given-key"
    assert keyed.envelope is None
    assert raw.key is None
    assert raw.envelope is None
    assert broken.key is None
    assert broken.envelope is None
    assert "agg-7" in router.lanes.by_key
    assert "given-key" in router.lanes.by_key
