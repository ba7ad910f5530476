"""NATS round trips with the Go services (jxt-core) on a real nats-server (marker ``nats``).

The Go bus publishes the envelope body only (no headers, no ``Nats-Msg-Id``) and never creates a stream; its
usual set-up is one stream capturing ``prefix.>``, its per-topic layout ``<stream>_<topic with . → _>``. These
tests replay what it put on the wire (``tests/data/go-interop/go-nats-wire.jsonl``, byte for byte, without
headers) with a plain nats-py client, as the Go service would, and check:

- (a) Go's usual set-up: one stream capturing ``interop.>``; a bus with ``NatsConfig(streams="existing")``
  decodes every captured envelope to exactly the fields the Go publisher set (``go-nats-expected.jsonl``), in
  per-aggregate order, and its own publish lands in that stream as a body the Go decoder accepts (its rules:
  ``test_go_interop_vectors.go_decoder_reads``);
- (b) the Go per-topic layout: ``stream_prefix="<stream>_"`` names the stream exactly as the Go bus does, and
  headerless "Go publisher" envelopes reach the subscriber in per-aggregate order;
- (c) the default (``streams="per_topic"``) still refuses a foreign stream capturing the topic, and the Go
  set-up is refused by the server while the bus's per-topic stream exists (the issue's finding, both ways).

Handlers take 0-2 ms (seeded) so that envelopes of different aggregates overlap: a keyless delivery handled
outside its aggregate's lane would show as an order violation or as concurrent handling of one aggregate.
"""

from __future__ import annotations

import base64
import json
import pathlib
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio
from nats.js.errors import APIError, NotFoundError
from nats_helpers import config, on_server
from test_go_interop_vectors import go_decoder_reads

import trio_eventbus as teb
from trio_eventbus._codec import parse_timestamp

pytestmark = pytest.mark.nats

DATA = pathlib.Path(__file__).parent / "data" / "go-interop"
WIRE = [json.loads(line) for line in (DATA / "go-nats-wire.jsonl").read_text().splitlines() if line.strip()]
EXPECTED = [json.loads(line) for line in (DATA / "go-nats-expected.jsonl").read_text().splitlines() if line.strip()]
TOPIC = WIRE[0]["subject"]  # interop.main.n1: every captured message
GO_STREAM = "GO_INTEROP"  # the Go service's one stream (its usual set-up)


def go_body(i: int, aggregate: str, seq: int) -> bytes:
    """An envelope body as the Go bus writes it (compact JSON in its field order, nanosecond timestamp,
    integer tenant, payload embedded)."""
    return json.dumps(
        {
            "event_id": f"01a22807-0000-7000-8000-{i:012d}",
            "aggregate_id": aggregate,
            "event_type": "InteropEvent",
            "event_version": 1,
            "timestamp": f"2026-11-29T15:58:26.{i:09d}Z",
            "trace_id": f"trace-{i}",
            "correlation_id": f"corr-{i}",
            "tenant_id": 1 + i % 7,
            "payload": {"seq": seq, "agg": aggregate},
        },
        separators=(",", ":"),
    ).encode()


async def go_publish(url: str, messages: list[tuple[str, bytes]]) -> list[Any]:
    """Publish like the Go bus: the body only, no headers, awaiting each PubAck; return the PubAcks."""

    async def publish(js: Any) -> list[Any]:
        return [await js.publish(subject, body) for subject, body in messages]

    return await on_server(url, publish)


async def drop_interop_streams(url: str) -> None:
    """Delete every stream capturing ``interop.*`` subjects (the tests share the captured subject; dead-letter
    streams included)."""

    async def drop(js: Any) -> None:
        for info in await js.streams_info():
            if any(s.split(".", 1)[0] == "interop" for s in info.config.subjects or ()):
                await js.delete_stream(info.config.name)

    await on_server(url, drop)


class Handled:
    """Envelopes in the order their handling finished (the order a handler's effects land); concurrent
    handlings of one aggregate counted."""

    def __init__(self, expect: int) -> None:
        self.envelopes: list[teb.Envelope] = []
        self.concurrent = 0
        self.expect = expect
        self.done = trio.Event()
        self._active: Counter[str] = Counter()
        self._random = random.Random(11)

    async def handler(self, env: teb.Envelope) -> None:
        if self._active[env.aggregate_id]:
            self.concurrent += 1
        self._active[env.aggregate_id] += 1
        try:
            await trio.sleep(self._random.random() * 0.002)  # the handler's work
        finally:
            self._active[env.aggregate_id] -= 1
        self.envelopes.append(env)
        if len(self.envelopes) >= self.expect:
            self.done.set()

    def violations(self, rank: Callable[[teb.Envelope], int]) -> int:
        """Envelopes handled after a later one (by ``rank``) of their aggregate."""
        last: dict[str, int] = {}
        count = 0
        for env in self.envelopes:
            r = rank(env)
            if r < last.get(env.aggregate_id, -1):
                count += 1
            last[env.aggregate_id] = max(r, last.get(env.aggregate_id, -1))
        return count

    def duplicates(self) -> int:
        return len(self.envelopes) - len({e.event_id for e in self.envelopes})


async def test_go_usual_setup_one_prefix_stream_shared_both_ways(nats_url: str) -> None:
    """(a) The Go service's stream captures ``interop.>``; ``streams="existing"`` consumes its headerless
    envelopes and publishes into it."""
    bodies = [base64.b64decode(line["body_b64"]) for line in WIRE]
    rank = {e["event_id"]: i for i, e in enumerate(EXPECTED)}
    handled = Handled(len(WIRE) + 1)
    mine = teb.Envelope(
        aggregate_id="agg-py-001",
        event_type="FromPython",
        event_version=2,
        payload=b'{"total": 12.5, "items": ["a", "b"]}',
        trace_id="trace-py",
        correlation_id="corr-py",
        tenant_id=42,
    )

    async def go_setup(js: Any) -> list[Any]:
        await js.add_stream(name=GO_STREAM, subjects=["interop.>"])
        for line, body in zip(WIRE, bodies, strict=True):
            await js.publish(line["subject"], body)
        return [await js.get_msg(GO_STREAM, seq) for seq in range(1, len(WIRE) + 1)]

    async def read_back(js: Any) -> tuple[Any, Any, list[str]]:
        raw = await js.get_last_msg(GO_STREAM, TOPIC)
        consumers = [c.name for c in await js.consumers_info(GO_STREAM)]
        return raw, await js.stream_info(GO_STREAM), consumers

    with trio.fail_after(60):
        await drop_interop_streams(nats_url)
        try:
            stored = await on_server(nats_url, go_setup)
            async with teb.open_bus(config(nats_url, streams="existing")) as bus:
                await bus.subscribe_envelope(TOPIC, handled.handler, group="py-svc")
                await bus.publish_envelope(TOPIC, mine, confirm=True)
                await handled.done.wait()
                await bus.wait_idle()
            raw, info, consumers = await on_server(nats_url, read_back)
            try:
                await on_server(nats_url, lambda js: js.stream_info("TEB_interop_main_n1"))
                per_topic_created = True
            except NotFoundError:
                per_topic_created = False
        finally:
            await drop_interop_streams(nats_url)

    # the replay is byte-shaped like the Go service's: same bodies, no headers at all
    assert [m.data for m in stored] == bodies
    assert all(not m.headers for m in stored)
    # every captured envelope decodes to exactly the fields the Go publisher set
    go_handled = [e for e in handled.envelopes if e.event_id in rank]
    assert len(go_handled) == len(EXPECTED)
    by_id = {e.event_id: e for e in go_handled}
    for want in EXPECTED:
        got = by_id[want["event_id"]]
        assert (got.aggregate_id, got.event_type, got.event_version) == (
            want["aggregate_id"],
            want["event_type"],
            want["event_version"],
        )
        assert (got.trace_id, got.correlation_id) == (want["trace_id"], want["correlation_id"])
        assert got.tenant_id == want["tenant_id"]
        assert type(got.tenant_id) is int
        assert got.payload == base64.b64decode(want["payload_b64"])  # verbatim, inner whitespace kept
        assert (got.timestamp, got.timestamp_nanosecond) == parse_timestamp(want["timestamp"])  # to the ns
    violations = handled.violations(lambda e: rank.get(e.event_id, len(rank)))
    # our publish landed in the Go stream (not refused, no stream of ours created) as a body Go accepts
    doc, go_payload = go_decoder_reads(raw.data, dict(raw.headers or {}))
    assert (doc["event_id"], doc["aggregate_id"], doc["event_type"]) == (mine.event_id, "agg-py-001", "FromPython")
    assert (doc["event_version"], doc["tenant_id"]) == (2, 42)
    assert doc["payload"] == {"total": 12.5, "items": ["a", "b"]}  # embedded JSON, not a string
    assert go_payload == mine.payload  # what a Go handler gets: the bytes published
    assert parse_timestamp(doc["timestamp"]) == (mine.timestamp, mine.timestamp_nanosecond)
    assert info.config.subjects == ["interop.>"]
    assert info.state.messages == len(WIRE) + 1
    assert consumers == ["py-svc~interop_main_n1"]
    assert not per_topic_created
    print(
        f"sent {len(WIRE)} Go + 1 Python, handled {len(handled.envelopes)}, order violations {violations}, "
        f"concurrent per aggregate {handled.concurrent}, duplicates {handled.duplicates()}"
    )
    assert violations == 0
    assert handled.concurrent == 0
    assert handled.duplicates() == 0


@pytest.mark.parametrize("go_stream", ["TEB", "ORDERS"])
async def test_go_per_topic_layout_headerless_publisher_in_order(nats_url: str, go_stream: str) -> None:
    """(b) The Go per-topic layout ``<stream>_<topic>``: ``stream_prefix=f"{go_stream}_"`` names the stream as
    the Go bus does (the capture's ``TEB_interop_main_n1`` for ``TEB``); the Go publisher's headerless bodies
    reach the subscriber in per-aggregate order."""
    aggregates, per_aggregate = 8, 125  # few aggregates: each one's events follow each other closely
    name = f"{go_stream}_interop_main_n1"
    if go_stream == "TEB":
        assert name == WIRE[0]["stream"]
    messages = [
        (TOPIC, go_body(seq * aggregates + a, f"agg-{a:03d}", seq))
        for seq in range(per_aggregate)
        for a in range(aggregates)
    ]
    handled = Handled(len(messages))
    cfg = config(nats_url, stream_prefix=f"{go_stream}_", streams="existing_or_per_topic")
    with trio.fail_after(90):
        await drop_interop_streams(nats_url)
        try:
            async with teb.open_bus(cfg) as bus:
                await bus.subscribe_envelope(TOPIC, handled.handler, group="py-svc")  # creates the stream
                acks = await go_publish(nats_url, messages)
                await handled.done.wait()
                await bus.wait_idle()

            async def facts(js: Any) -> tuple[Any, Any, list[str]]:
                info = await js.stream_info(name)
                raw = await js.get_msg(name, 1)
                return info, raw, [c.name for c in await js.consumers_info(name)]

            info, raw, consumers = await on_server(nats_url, facts)
        finally:
            await drop_interop_streams(nats_url)
    assert {ack.stream for ack in acks} == {name}
    assert info.config.subjects == [TOPIC]  # exactly the topic, as the Go per-topic stream
    assert not raw.headers  # what the subscriber got carried no headers at all
    assert consumers == ["py-svc"]  # the topic's own stream: the consumer is named after the group
    violations = handled.violations(lambda e: json.loads(e.payload)["seq"])
    print(
        f"stream {name}: sent {len(messages)}, handled {len(handled.envelopes)}, order violations {violations}, "
        f"concurrent per aggregate {handled.concurrent}, duplicates {handled.duplicates()}"
    )
    assert sorted(e.event_id for e in handled.envelopes) == sorted(json.loads(b)["event_id"] for _, b in messages)
    assert all(type(e.tenant_id) is int for e in handled.envelopes)
    assert violations == 0
    assert handled.concurrent == 0


async def test_default_mode_still_refuses_a_foreign_stream_both_ways(nats_url: str) -> None:
    """(c) ``streams="per_topic"`` (the default) is unchanged: a Go stream capturing ``interop.>`` makes the
    bus refuse the topic with its clear error, and the bus's per-topic stream makes the server refuse the Go
    set-up."""

    async def handler(env: teb.Envelope) -> None:
        raise AssertionError("unreachable")

    async def go_setup_refused(js: Any) -> str:
        try:
            await js.add_stream(name=GO_STREAM, subjects=["interop.>"])
        except APIError as exc:
            return str(exc.description)
        return ""

    with trio.fail_after(30):
        await drop_interop_streams(nats_url)
        try:
            await on_server(nats_url, lambda js: js.add_stream(name=GO_STREAM, subjects=["interop.>"]))
            async with teb.open_bus(config(nats_url)) as bus:
                with pytest.raises(teb.InvalidTopicError, match="another stream already captures") as published:
                    await bus.publish(TOPIC, b"x")
                with pytest.raises(teb.InvalidTopicError, match="another stream already captures"):
                    await bus.subscribe_envelope(TOPIC, handler, group="py-svc")
            await drop_interop_streams(nats_url)
            async with teb.open_bus(config(nats_url)) as bus:
                await bus.publish(TOPIC, b"creates TEB_interop_main_n1", confirm=True)
            refused = await on_server(nats_url, go_setup_refused)
        finally:
            await drop_interop_streams(nats_url)
    print(f"bus refused: {published.value}\nGo set-up refused: {refused}")
    assert "overlap" in refused
