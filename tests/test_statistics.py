"""Typed, frozen statistics: a documented field for every figure, the same names on every backend."""

from __future__ import annotations

import itertools
import os
import pathlib
import re
from typing import Any

import attrs
import pytest
import trio

import trio_eventbus as teb

STAT_CLASSES: list[type[Any]] = [
    teb.Statistics,
    teb.BackendStatistics,
    teb.MemoryStatistics,
    teb.MemorySubscriptionStatistics,
    teb.NatsStatistics,
    teb.NatsSubscriptionStatistics,
    teb.KafkaStatistics,
    teb.KafkaGroupStatistics,
]
BACKEND_CLASSES = [teb.MemoryStatistics, teb.NatsStatistics, teb.KafkaStatistics]
_ids = itertools.count()


def topic(stem: str) -> str:
    return f"teb-st-{stem}-{os.getpid()}-{next(_ids)}"


def class_source(cls: type[Any]) -> list[str]:
    """The source lines of ``cls`` (``inspect.getsource`` looks in ``trio_eventbus/__init__.py``, the module the
    class reports, so search the package's files)."""
    for path in sorted(pathlib.Path(teb.__file__).parent.rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(rf"class {cls.__name__}\b", line):
                end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j][0].isspace()), len(lines))
                return lines[i:end]
    raise AssertionError(f"no source for {cls.__name__}")


def documented_fields(cls: type[Any]) -> set[str]:
    """Fields of ``cls`` (not inherited) whose definition line follows a ``#:`` comment line."""
    lines = class_source(cls)
    out = set()
    for before, line in itertools.pairwise(lines):
        m = re.match(r"\s+(\w+): ", line)
        if m and before.strip().startswith("#:"):
            out.add(m.group(1))
    return out


@pytest.mark.parametrize("cls", STAT_CLASSES, ids=lambda c: c.__name__)
def test_statistics_are_frozen_typed_and_documented(cls: type[Any]) -> None:
    assert attrs.has(cls)
    assert "__slots__" in vars(cls)
    own = [f for f in attrs.fields(cls) if not f.inherited]
    assert own
    missing = {f.name for f in own} - documented_fields(cls)
    assert not missing, f"{cls.__name__} fields without a #: docstring: {sorted(missing)}"
    for f in attrs.fields(cls):
        assert isinstance(f.type, str)
        assert "dict[" not in f.type, f"{cls.__name__}.{f.name} is an untyped dict"
        assert "object" not in f.type, f"{cls.__name__}.{f.name}: {f.type}"
        assert "Any" not in f.type, f"{cls.__name__}.{f.name}: {f.type}"


def test_every_backend_reports_the_common_figures_under_the_same_names() -> None:
    common = [f.name for f in attrs.fields(teb.BackendStatistics)]
    assert common == ["state", "connected", "reconnects", "pending_outcomes", "subscriptions", "fetchers", "unsettled"]
    for cls in BACKEND_CLASSES:
        assert issubclass(cls, teb.BackendStatistics)
        assert [f.name for f in attrs.fields(cls)][: len(common)] == common
    # a figure that two backends share has one name: the bridge and the NATS/Kafka per-subscription figures
    assert {"bridge"} <= attrs.fields_dict(teb.NatsStatistics).keys() & attrs.fields_dict(teb.KafkaStatistics).keys()
    assert "unsettled" in attrs.fields_dict(teb.NatsSubscriptionStatistics)
    assert "unsettled" in attrs.fields_dict(teb.KafkaGroupStatistics)


async def test_memory_statistics_show_live_state() -> None:
    holding = trio.Event()
    release = trio.Event()

    async def handler(message: teb.Message) -> None:
        holding.set()
        await release.wait()

    async with teb.open_bus(teb.MemoryConfig()) as bus:
        first = bus.statistics().backend
        assert first == teb.MemoryStatistics(
            state="open",
            connected=True,
            reconnects=0,
            pending_outcomes=0,
            subscriptions=0,
            fetchers=0,
            unsettled=0,
        )
        name = topic("mem")
        await bus.subscribe(name, handler, group="svc")
        await bus.publish(name, b"x", key="k")
        await holding.wait()
        live = bus.statistics().backend
        assert (live.subscriptions, live.fetchers, live.unsettled) == (1, 1, 1)
        assert isinstance(live, teb.MemoryStatistics)
        assert live.subscription_details == (
            teb.MemorySubscriptionStatistics(
                topic=name,
                group="svc",
                partitions=(0,),
                waiting=(),
                partition_count=1,
                members=1,
                rebalances=1,
                unsettled=1,
            ),
        )
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            live.unsettled = 0  # type: ignore[misc]
        assert first.subscriptions == 0  # a snapshot never changes
        release.set()
        await bus.flush()
    after = bus.statistics().backend
    assert (after.state, after.connected, after.fetchers, after.unsettled) == ("closed", False, 0, 0)


async def hold_one(config: teb.BackendConfig, name: str) -> tuple[teb.BackendStatistics, teb.BackendStatistics]:
    """(statistics while a handler holds one message, statistics after close)."""
    holding = trio.Event()
    release = trio.Event()

    async def handler(message: teb.Message) -> None:
        holding.set()
        await release.wait()

    async with teb.open_bus(config, options=teb.BusOptions(service="st")) as bus:
        await bus.subscribe(name, handler)
        await bus.publish(name, b"x", key="k", confirm=True)
        await holding.wait()
        live = bus.statistics().backend
        release.set()
    return live, bus.statistics().backend


@pytest.mark.nats
async def test_nats_statistics_are_typed(nats_url: str) -> None:
    name = topic("nats")
    with trio.fail_after(30):
        live, after = await hold_one(teb.NatsConfig(servers=nats_url), name)
    assert isinstance(live, teb.NatsStatistics)
    assert (live.state, live.connected, live.subscriptions, live.fetchers, live.unsettled) == (
        "connected",
        True,
        1,
        1,
        1,
    )
    assert (live.pending_outcomes, live.publish_acked, live.received) == (0, 1, 1)
    (sub,) = live.subscription_details
    assert (sub.topic, sub.group, sub.persistent, sub.running, sub.received, sub.unsettled) == (
        name,
        "st",
        True,
        True,
        1,
        1,
    )
    assert sub.pull_requests >= 1
    assert (after.state, after.connected) == ("closed", False)


@pytest.mark.kafka
async def test_kafka_statistics_are_typed(kafka_bootstrap: str) -> None:
    name = topic("kafka")
    config = teb.KafkaConfig(bootstrap_servers=kafka_bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500)
    with trio.fail_after(60):
        live, after = await hold_one(config, name)
    assert isinstance(live, teb.KafkaStatistics)
    assert (live.state, live.connected, live.subscriptions, live.fetchers, live.unsettled) == (
        "running",
        True,
        1,
        1,
        1,
    )
    assert live.pending_outcomes == 0
    assert live.topics == {name: 1}
    group = live.groups["st"]
    assert (group.topics, group.assigned, group.in_flight) == ((name,), (f"{name}[0]",), 1)
    assert (after.state, after.connected) == ("closed", False)
