"""The Envelope value (validation at construction, tenant ids, nanoseconds, equality, evolve) and event ids
(UUIDv7 from a pooled random source: unique across threads and across fork; derived ids of id-less bodies)."""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
import warnings

import attrs
import pytest

import trio_eventbus as teb
from trio_eventbus._ids import derived_event_id

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_-./"


def _env(**changes: object) -> teb.Envelope:
    fields: dict[str, object] = {"aggregate_id": "order-1", "event_type": "T", "event_version": 1, "payload": b"1"}
    return teb.Envelope(**(fields | changes))  # type: ignore[arg-type]


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
        ({"aggregate_id": 5}, "aggregate_id"),
        ({"event_type": None}, "event_type"),
        ({"event_version": 2**63}, "event_version"),
        ({"event_version": -1}, "event_version"),
        ({"timestamp": "2026-01-01T00:00:00Z"}, "timestamp"),
        ({"timestamp_nanosecond": 1000}, "timestamp_nanosecond"),
        ({"timestamp_nanosecond": -1}, "timestamp_nanosecond"),
        ({"timestamp_nanosecond": True}, "timestamp_nanosecond"),
        ({"timestamp_nanosecond": 1.0}, "timestamp_nanosecond"),
        ({"tenant_id": "1"}, "tenant_id must be an int"),
        ({"tenant_id": True}, "tenant_id"),
        ({"tenant_id": 1.0}, "tenant_id"),
        ({"tenant_id": -1}, "tenant_id"),
        ({"tenant_id": 2**63}, "tenant_id"),
        ({"correlation_id": ""}, "correlation_id"),
    ],
)
def test_invalid_envelopes_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(teb.InvalidEnvelopeError, match=message) as info:
        _env(**changes)
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


def test_new_message_builds_the_same_value_as_the_constructor() -> None:
    from trio_eventbus._envelope import new_message

    names = [f.name for f in attrs.fields(teb.Message)]
    assert names == ["topic", "data", "key", "headers", "message_id", "delivery_attempt"]  # new_message's order
    built = new_message("t", b"x", "k", {"a": "b"}, "id-1", 3)
    expected = teb.Message(topic="t", data=b"x", key="k", headers={"a": "b"}, message_id="id-1", delivery_attempt=3)
    assert built == expected
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.topic = "other"  # type: ignore[misc]


def test_valid_values_pass_again_after_the_known_caches_are_full() -> None:
    from trio_eventbus import _envelope

    for i in range(_envelope._KNOWN_LIMIT + 10):  # fills and clears the aggregate cache
        _env(aggregate_id=f"agg-{i}")
    assert len(_envelope._known_aggregates) <= _envelope._KNOWN_LIMIT
    assert _env(aggregate_id="agg-1").aggregate_id == "agg-1"
    with pytest.raises(teb.InvalidEnvelopeError):
        _env(aggregate_id="agg 1")  # not cached as valid by an earlier success of another value


def test_tenant_id_is_an_int_in_the_go_range() -> None:
    assert _env(tenant_id=0).tenant_id == 0
    assert _env(tenant_id=2**63 - 1).tenant_id == 2**63 - 1
    assert _env().tenant_id is None


def test_timestamps_are_utc_and_keep_nanoseconds() -> None:
    local = dt.datetime(2026, 1, 2, 11, 4, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    env = _env(timestamp=local, timestamp_nanosecond=789)
    assert env.timestamp == local
    assert env.timestamp.tzinfo is dt.UTC
    assert env.timestamp_ns == 1767323045123456789
    assert _env(timestamp=dt.datetime.fromtimestamp(0, dt.UTC), timestamp_nanosecond=5).timestamp_ns == 5
    now = _env()
    assert now.timestamp.tzinfo is dt.UTC
    assert now.timestamp_nanosecond == 0
    assert abs(now.timestamp_ns - __import__("time").time_ns()) < 60 * 10**9


def test_equality_and_evolve() -> None:
    env = _env(tenant_id=3, timestamp_nanosecond=67)
    assert env == attrs.evolve(env)
    assert hash(env) == hash(attrs.evolve(env))
    assert env != attrs.evolve(env, timestamp_nanosecond=68)  # nanoseconds are part of the value
    moved = attrs.evolve(env, timestamp=env.timestamp + dt.timedelta(seconds=1))
    assert moved.timestamp_nanosecond == 67  # documented: evolve keeps the other field
    assert attrs.evolve(env, tenant_id=4).tenant_id == 4
    assert attrs.evolve(env, tenant_id=4).event_id == env.event_id  # evolve keeps the id, never regenerates it
    with pytest.raises(teb.InvalidEnvelopeError, match="tenant_id"):
        attrs.evolve(env, tenant_id="4")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        env.tenant_id = 5  # type: ignore[misc]
    assert _env(event_id=None).event_id != _env(event_id=None).event_id  # None: generate


def test_event_ids_are_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        out.extend(teb.new_event_id() for _ in range(5000))  # spans several 409-id refills

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in results for i in out]
    print(f"ids: {len(ids)}, unique: {len(set(ids))}")
    assert len(set(ids)) == len(ids) == 40000
    assert all(uuid.UUID(i).version == 7 and str(uuid.UUID(i)) == i for i in ids[::97])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    teb.new_event_id()  # the pool now holds the next ids
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork of a process with threads
        pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit at once
        os.write(write, ",".join(teb.new_event_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split(",")
    os.waitpid(pid, 0)
    parent = [teb.new_event_id() for _ in range(3)]
    # ids of one millisecond share their first 13 characters; the random parts must differ
    assert {c[13:] for c in child}.isdisjoint(p[13:] for p in parent), (child, parent)


def test_derived_ids_are_name_based_uuids_of_the_body() -> None:
    body = b'{"aggregate_id":"a"}'
    derived = derived_event_id(body)
    assert derived == derived_event_id(bytes(body))
    namespace = uuid.UUID("5f0c9a3e-8d2b-4c6e-9a1f-7b3d2e4c6a80")
    assert derived == str(uuid.uuid5(namespace, body.decode()))  # RFC 9562 version 5
    assert derived_event_id(body + b" ") != derived
