"""The key -> partition function matches the Go services' Kafka producer (sarama's hash partitioner)."""

from __future__ import annotations

import json
from pathlib import Path

from trio_eventbus._partition import fnv1a_32, partition_of

DATA = Path(__file__).parent / "data" / "go-interop" / "go-kafka-partitions.json"


def test_partition_of_places_keys_where_the_go_producer_did() -> None:
    reference = json.loads(DATA.read_text())
    placed = {key: partition_of(key, reference["partitions"]) for key in reference["key_to_partition"]}
    differ = {k: (placed[k], p) for k, p in reference["key_to_partition"].items() if placed[k] != p}
    print(f"{len(placed)} keys, {len(differ)} placed differently from the Go producer")
    assert not differ
    assert len(set(placed.values())) == reference["partitions"]


def test_fnv1a_32_known_values_and_partition_edges() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert partition_of("anything", 1) == 0
    assert all(0 <= partition_of(f"k{i}", 7) < 7 for i in range(1000))
