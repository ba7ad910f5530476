"""Kafka topics shared with the Go services (jxt-core on sarama), both ways, through a real broker.

The Go side is the messages it wrote, captured byte for byte (``tests/data/go-interop/``, see its README): the
Go library itself cannot be built here. Go → Python replays the captured records (key, headers and value as
captured, at the captured partitions) with a plain aiokafka producer and consumes them with
``subscribe_envelope``. Python → Go publishes envelopes with ``KafkaConfig(partitioner="fnv1a")`` and reads the
raw records: each must sit on the partition the Go producer chose for its key and satisfy the Go decoder's
rules (``go_decoder_reads`` of ``test_go_interop_vectors``, the one written-down Go decoder). The partitioner
functions themselves are checked without a broker.

Broker tests are marked ``kafka``, use the shared ``kafka_bootstrap`` broker and run under ``trio.fail_after``.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from kafka_helpers import config, unique
from test_go_interop_vectors import go_decoder_reads

import trio_eventbus as teb
from trio_eventbus._codec import format_timestamp
from trio_eventbus._partition import partition_of
from trio_eventbus.backends._bridge import Bridge, open_bridge
from trio_eventbus.backends.kafka.wire import PARTITIONERS, fnv1a_partition, murmur2_partition

DATA = Path(__file__).parent / "data" / "go-interop"
T = TypeVar("T")


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


WIRE = _lines("go-kafka-wire.jsonl")
EXPECTED = _lines("go-kafka-expected.jsonl")
GO_PLACEMENT: dict[str, Any] = json.loads((DATA / "go-kafka-partitions.json").read_text(encoding="utf-8"))
GO_PARTITIONS: int = GO_PLACEMENT["partitions"]
GO_KEY_TO_PARTITION: dict[str, int] = GO_PLACEMENT["key_to_partition"]

# ---------------------------------------------------------------------------------------------- partitioners


def test_fnv1a_places_every_key_where_the_go_producer_did_and_murmur2_as_aiokafka_does() -> None:
    all_partitions = list(range(GO_PARTITIONS))
    fnv = {key: fnv1a_partition(key.encode(), all_partitions) for key in GO_KEY_TO_PARTITION}
    mur = {key: murmur2_partition(key.encode(), all_partitions) for key in GO_KEY_TO_PARTITION}
    aiokafka = {key: DefaultPartitioner()(key.encode(), all_partitions, all_partitions) for key in GO_KEY_TO_PARTITION}
    moved = sum(mur[k] != p for k, p in GO_KEY_TO_PARTITION.items())
    print(f"keys {len(GO_KEY_TO_PARTITION)}: fnv1a off Go's partition 0, murmur2 off it {moved}")
    assert fnv == GO_KEY_TO_PARTITION
    assert mur == aiokafka
    assert moved == 33  # the figure: the two functions really differ on these keys
    # the same function as the bus's one key -> partition function, on other counts and keys too
    for n in (2, 3, 7, 12):
        ids = list(range(n))
        assert all(fnv1a_partition(f"k{i}".encode(), ids) == partition_of(f"k{i}", n) for i in range(2000))
    assert fnv1a_partition(b"agg-001", [4, 9, 11]) in (4, 9, 11)  # an index into the partition ids
    assert set(PARTITIONERS.items()) == {("murmur2", murmur2_partition), ("fnv1a", fnv1a_partition)}


def test_partitioner_option_is_typed_and_validated() -> None:
    assert teb.KafkaConfig(bootstrap_servers="h:1").partitioner == "murmur2"
    assert teb.KafkaConfig(bootstrap_servers="h:1", partitioner="fnv1a").partitioner == "fnv1a"
    for bad in ("FNV1A", "sarama", "", None, 1):
        with pytest.raises(teb.InvalidOptionError, match="partitioner") as info:
            teb.KafkaConfig(bootstrap_servers="h:1", partitioner=bad)  # type: ignore[arg-type]
        assert info.value.field == "partitioner"
    # aiokafka's own option would be silently ignored (the backend partitions itself): refused, pointing here
    for where in ("client_options", "producer_options"):
        with pytest.raises(teb.InvalidOptionError, match=r"KafkaConfig\.partitioner"):
            teb.KafkaConfig(bootstrap_servers="h:1", **{where: {"partitioner": DefaultPartitioner()}})
    from_url = teb.config_from_url("kafka://h:9092", partitioner="fnv1a")
    assert isinstance(from_url, teb.KafkaConfig)
    assert from_url.partitioner == "fnv1a"


# ---------------------------------------------------------------------------------------------- helpers


@asynccontextmanager
async def plain_aiokafka() -> Any:
    """A private asyncio loop for plain aiokafka clients (the test's stand-in for another service)."""
    async with open_bridge("thread", use_uvloop=False) as bridge:
        yield bridge


async def _run(bridge: Bridge, fn: Callable[[], Awaitable[T]]) -> T:
    return await bridge.run(fn)


async def create_topic(bridge: Bridge, bootstrap: str, topic: str, partitions: int) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()

    await _run(bridge, create)


async def read_raw(bridge: Bridge, bootstrap: str, topic: str, partitions: int, count: int) -> list[Any]:
    """The first ``count`` records of ``topic`` (all partitions, no group), as aiokafka returns them."""

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            got: list[Any] = []
            while len(got) < count:
                batches = await consumer.getmany(timeout_ms=500)
                got += [record for records in batches.values() for record in records]
            return got
        finally:
            await consumer.stop()

    return await _run(bridge, read)


def iter_expected() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    yield from zip(WIRE, EXPECTED, strict=True)


# ---------------------------------------------------------------------------------------------- Go -> Python


@pytest.mark.kafka
async def test_go_records_replayed_byte_for_byte_decode_to_the_go_fields_in_per_aggregate_order(
    kafka_bootstrap: str,
) -> None:
    """The 60 captured Go records (key, headers, value exactly as sarama wrote them), at their partitions of a
    3-partition topic: every envelope equals the fields the Go publisher set, none is dead-lettered, and each
    aggregate's envelopes are handled in the order Go published them."""
    topic, group = unique("go2py"), unique("g")
    handled: list[teb.Envelope] = []
    dead: list[teb.Message] = []
    all_in = trio.Event()

    def check_done() -> None:
        if len(handled) + len(dead) == len(WIRE):
            all_in.set()

    with trio.fail_after(90):
        async with plain_aiokafka() as bridge:
            await create_topic(bridge, kafka_bootstrap, topic, GO_PARTITIONS)

            async def produce() -> list[tuple[int, int]]:
                producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
                await producer.start()
                try:
                    placed = []
                    for record in WIRE:
                        headers = [(k, v.encode("utf-8")) for k, v in record["headers"].items()]
                        meta = await producer.send_and_wait(
                            topic,
                            base64.b64decode(record["body_b64"]),
                            key=record["key"].encode("utf-8"),
                            partition=record["partition"],
                            headers=headers,
                        )
                        placed.append((meta.partition, meta.offset))
                    return placed
                finally:
                    await producer.stop()

            placed = await _run(bridge, produce)
        assert placed == [(r["partition"], r["offset"]) for r in WIRE]  # a fresh topic: the captured offsets

        async with teb.open_bus(config(kafka_bootstrap), options=teb.BusOptions(service=group)) as bus:

            async def on_envelope(env: teb.Envelope) -> None:
                handled.append(env)
                check_done()

            async def on_dead(msg: teb.Message) -> None:
                dead.append(msg)
                check_done()

            await bus.subscribe(topic + ".dlq", on_dead, group=group + "-dlq")
            await bus.subscribe_envelope(topic, on_envelope)
            await all_in.wait()

    reasons = sorted({m.headers.get("X-DLQ-Reason", "?") + ": " + m.headers.get("X-DLQ-Error", "") for m in dead})
    print(f"sent {len(WIRE)}, handled {len(handled)}, dead-lettered {len(dead)} {reasons[:3]}")
    assert dead == []
    by_id = {env.event_id: env for env in handled}
    assert len(by_id) == len(handled) == len(WIRE)  # no duplicates, none lost
    mismatches = 0
    for record, fields in iter_expected():
        env = by_id[fields["event_id"]]
        got = {
            "aggregate_id": env.aggregate_id,
            "event_type": env.event_type,
            "event_version": env.event_version,
            "timestamp": format_timestamp(env.timestamp, env.timestamp_nanosecond),  # to the nanosecond
            "trace_id": env.trace_id,
            "correlation_id": env.correlation_id,
            "tenant_id": env.tenant_id,
            "payload": env.payload,
        }
        want = {
            "aggregate_id": fields["aggregate_id"],
            "event_type": fields["event_type"],
            "event_version": fields["event_version"],
            "timestamp": fields["timestamp"],
            "trace_id": fields["trace_id"],
            "correlation_id": fields["correlation_id"],
            "tenant_id": fields["tenant_id"],  # a JSON number in Go: an int here
            "payload": base64.b64decode(fields["payload_b64"]),
        }
        mismatches += got != want
        assert got == want, record
        assert type(env.tenant_id) is int
    order: dict[str, list[str]] = defaultdict(list)
    for env in handled:
        order[env.aggregate_id].append(env.event_id)
    want_order: dict[str, list[str]] = defaultdict(list)
    for fields in EXPECTED:
        want_order[fields["aggregate_id"]].append(fields["event_id"])
    violations = sum(order[a] != ids for a, ids in want_order.items())
    print(f"aggregates {len(want_order)}, field mismatches {mismatches}, order violations {violations}")
    assert violations == 0


# ---------------------------------------------------------------------------------------------- Python -> Go


def interop_envelope(aggregate: str, n: int) -> tuple[teb.Envelope, bytes]:
    payload = json.dumps({"seq": n, "agg": aggregate, "note": "héllo <b>&</b>"}, ensure_ascii=False).encode()
    env = teb.Envelope(
        aggregate_id=aggregate,
        event_type="InteropEvent",
        event_version=n + 1,
        payload=payload,
        trace_id=f"trace-{aggregate}-{n}",
        correlation_id=f"corr-{aggregate}-{n}",
        tenant_id=7 + n,  # an int on the wire and in Python (issue 11)
    )
    return env, payload


async def publish_and_read(
    bootstrap: str, keys: Sequence[str], per_key: int, **kafka: Any
) -> tuple[list[Any], dict[str, bytes]]:
    """Publish ``per_key`` envelopes for each key with a bus configured with ``kafka``; return the raw records
    and each event id's payload."""
    topic = unique("py2go")
    payloads: dict[str, bytes] = {}
    async with teb.open_bus(config(bootstrap, **kafka)) as bus:
        await bus.configure_topic(topic, teb.TopicOptions(partitions=GO_PARTITIONS))
        for n in range(per_key):
            for key in keys:
                env, payload = interop_envelope(key, n)
                payloads[env.event_id] = payload
                await bus.publish_envelope(topic, env)
        await bus.flush()
        assert bus.statistics().published == len(keys) * per_key
    async with plain_aiokafka() as bridge:
        records = await read_raw(bridge, bootstrap, topic, GO_PARTITIONS, len(keys) * per_key)
    return records, payloads


KEYS = [f"agg-{i:03d}" for i in range(50)]


@pytest.mark.kafka
async def test_fnv1a_records_land_where_go_puts_the_key_and_satisfy_the_go_decoder(kafka_bootstrap: str) -> None:
    """partitioner="fnv1a": every record of agg-000..agg-049 is on the partition the Go producer chose for its
    key, keyed by the aggregate id, in publish order per key, with a body the Go decoder accepts."""
    per_key = 2
    with trio.fail_after(90):
        records, payloads = await publish_and_read(kafka_bootstrap, KEYS, per_key, partitioner="fnv1a")
    misplaced = [r.key for r in records if r.partition != GO_KEY_TO_PARTITION[r.key.decode()]]
    refused: dict[str, str] = {}
    seen: dict[str, list[int]] = defaultdict(list)
    for r in records:
        headers = {k: v.decode("utf-8") for k, v in r.headers}
        try:
            doc, payload = go_decoder_reads(r.value, headers)
        except AssertionError as exc:  # the Go decoder would refuse this record
            refused[repr(r.value[:80])] = str(exc)
            continue
        assert payload == payloads[doc["event_id"]]  # what a Go handler gets: our payload, verbatim JSON
        assert type(doc["tenant_id"]) is int
        assert r.key.decode("utf-8") == doc["aggregate_id"]
        seen[doc["aggregate_id"]].append(doc["event_version"])
    violations = sum(versions != list(range(1, per_key + 1)) for versions in seen.values())
    print(
        f"records {len(records)}, misplaced {len(misplaced)}, refused by the Go rules {len(refused)}, "
        f"order violations {violations}"
    )
    assert len(records) == len(KEYS) * per_key
    assert misplaced == []
    assert refused == {}
    assert violations == 0
    headers = dict(records[0].headers)
    assert headers["X-Aggregate-ID"] == records[0].key  # Go reads what it needs from the body; headers agree


@pytest.mark.kafka
async def test_default_murmur2_places_keys_as_aiokafka_and_the_java_client(kafka_bootstrap: str) -> None:
    """The default partitioner is the Java one (aiokafka's DefaultPartitioner), not Go's: fails if the option is
    ignored either way."""
    with trio.fail_after(90):
        records, _ = await publish_and_read(kafka_bootstrap, KEYS, 1)
    partitions = list(range(GO_PARTITIONS))
    java = {k: DefaultPartitioner()(k.encode(), partitions, partitions) for k in KEYS}
    placed = {r.key.decode(): r.partition for r in records}
    differ_from_go = sum(placed[k] != GO_KEY_TO_PARTITION[k] for k in KEYS)
    print(
        f"records {len(records)}, off the Java placement {sum(placed[k] != java[k] for k in KEYS)}, "
        f"off Go's {differ_from_go}"
    )
    assert placed == java
    assert differ_from_go == 33
