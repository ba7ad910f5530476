"""The conformance suite (trio_eventbus.testing.conformance) run on every backend, one subclass each.

``TestMemory``, ``TestNats`` and ``TestKafka`` (each over both asyncio bridges) inherit every check of
``BackendConformance``. Broker cases take their broker from the fixtures in trio_eventbus.testing.fixtures (a
missing broker is an error, never a skip): the session-shared one for the checks, a private one per test for
the restart scenario. The last tests prove that the task-leak watch the checks rely on can fail.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_eventbus as teb
from trio_eventbus.backends import BackendFeatures
from trio_eventbus.testing.conformance import (
    FEATURES,
    BackendCase,
    BackendConformance,
    envelope,
    restart_scenario,
    skip_reason,
)
from trio_eventbus.testing.conformance._restart import _Tracker
from trio_eventbus.testing.fixtures import restart_hook
from trio_eventbus.testing.leaks import TaskLeakWatch, watch_task_leaks
from trio_eventbus.testing.servers import KafkaServer, NatsServer

_BRIDGES = ("thread", "trio-asyncio")


def _loop_for(bridge: str) -> Callable[[], AbstractAsyncContextManager[Any]] | None:
    """The trio-asyncio bridge runs inside the application's trio_asyncio loop, as applications would."""
    if bridge == "trio-asyncio":
        import trio_asyncio

        open_loop: Callable[[], AbstractAsyncContextManager[Any]] = trio_asyncio.open_loop
        return open_loop
    return None


class TestMemory(BackendConformance):
    @pytest.fixture
    def backend_case(self) -> BackendCase:
        broker = teb.MemoryBroker()
        return BackendCase(
            "memory",
            lambda: teb.MemoryConfig(broker=broker),
            teb.MemoryConfig().create_backend().features,
            timeout=30,
            reasons={"restart": "the broker lives in the test's process: there is no broker process to restart"},
        )


def _nats_case(url: str, bridge: str, **kw: Any) -> BackendCase:
    from trio_eventbus.backends.nats.config import NatsConfig

    config = NatsConfig(servers=url, bridge=bridge, **kw)  # type: ignore[arg-type]
    features = config.create_backend().features
    return BackendCase(f"nats-{bridge}", lambda: config, features, timeout=60, context=_loop_for(bridge))


@pytest.mark.nats
class TestNats(BackendConformance):
    @pytest.fixture(params=_BRIDGES)
    def bridge(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def backend_case(self, nats_url: str, bridge: str) -> BackendCase:
        return _nats_case(nats_url, bridge)

    @pytest.fixture
    def restart_case(self, nats_server: NatsServer, bridge: str) -> BackendCase:
        case = _nats_case(nats_server.url, bridge, reconnect_time_wait=0.1, publish_timeout=5.0)
        return attrs.evolve(case, timeout=120, restart=restart_hook(nats_server))


def _kafka_case(bootstrap: str, bridge: str, **kw: Any) -> BackendCase:
    from trio_eventbus.backends.kafka.config import KafkaConfig

    # the broker's minimum session timeout: a bus that dies unannounced is out of its group within 6 s
    config = KafkaConfig(
        bootstrap_servers=bootstrap,
        bridge=bridge,  # type: ignore[arg-type]
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        **kw,
    )
    reasons = {
        "redelivers": "Kafka cannot redeliver one message with a delay (a partition has one committed offset)",
        "dedupes": "Kafka has no broker-side dedupe by message id (duplicate_window is ignored)",
        "ephemeral_topics": "every Kafka topic is a retained log",
    }
    features = config.create_backend().features
    return BackendCase(f"kafka-{bridge}", lambda: config, features, 60, context=_loop_for(bridge), reasons=reasons)


@pytest.mark.kafka
class TestKafka(BackendConformance):
    @pytest.fixture(params=_BRIDGES)
    def bridge(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def backend_case(self, kafka_bootstrap: str, bridge: str) -> BackendCase:
        return _kafka_case(kafka_bootstrap, bridge)

    @pytest.fixture
    def restart_case(self, kafka_server: KafkaServer, bridge: str) -> BackendCase:
        # a publish waits up to a minute for the broker to come back instead of failing
        case = _kafka_case(kafka_server.bootstrap, bridge, request_timeout_ms=60_000)
        return attrs.evolve(case, timeout=180, restart=restart_hook(kafka_server))


# ------------------------------------------------------------------------------------- the leak watch can fail


async def test_leak_watch_finds_a_task_spawned_into_an_outer_nursery() -> None:
    """A task the watched code leaves running in a nursery it does not own (here: through a task of its own)
    is reported, with its name."""
    release = trio.Event()

    async def leaked() -> None:
        await release.wait()

    async def spawner(outer: trio.Nursery) -> None:
        outer.start_soon(leaked, name="the-leak")

    async with trio.open_nursery() as outer:
        with pytest.raises(AssertionError, match=r"1 task\(s\) still alive.*the-leak"):
            async with watch_task_leaks(), trio.open_nursery() as inner:
                inner.start_soon(spawner, outer)
        release.set()


async def test_leak_watch_finds_a_system_task() -> None:
    """A system task spawned by the watched code is reported too."""
    release = trio.Event()

    async def leaked() -> None:
        await release.wait()

    with pytest.raises(AssertionError, match="the-system-leak"):
        async with watch_task_leaks():
            trio.lowlevel.spawn_system_task(leaked, name="the-system-leak")
    release.set()


async def test_leak_watch_passes_a_closed_bus_and_ignores_helpers_outside() -> None:
    """Every bus task ends with the block; a helper the test starts into its own outer nursery is not the
    bus's. The watch saw the bus's tasks (it refuses to pass having seen none)."""
    release = trio.Event()
    seen: list[TaskLeakWatch] = []
    async with trio.open_nursery() as outer:
        async with watch_task_leaks() as watch, teb.open_bus(teb.MemoryConfig()) as bus:
            outer.start_soon(release.wait)
            await bus.publish("t", b"x", confirm=True)
            seen.append(watch)
        release.set()
    assert seen[0].recorded >= 2  # at least the publisher and results tasks
    with pytest.raises(AssertionError, match="recorded no task"):
        async with watch_task_leaks():
            await trio.lowlevel.checkpoint()


async def test_leak_watch_ignores_tasks_of_buses_opened_before_it() -> None:
    """The owner task spawns, through an earlier bus, into that bus's nursery (owned by one of its tasks):
    those tasks belong to the earlier bus, which is still open, and are not this watch's leaks."""
    stop = trio.Event()
    earlier: list[trio.Nursery] = []
    ready = trio.Event()

    async def connection() -> None:  # an earlier bus's connection task, owning the nursery of its fetchers
        async with trio.open_nursery() as fetchers:
            earlier.append(fetchers)
            ready.set()
            await stop.wait()
            fetchers.cancel_scope.cancel()

    async with trio.open_nursery() as outer:
        outer.start_soon(connection)
        await ready.wait()
        async with watch_task_leaks(), teb.open_bus(teb.MemoryConfig()):
            earlier[0].start_soon(trio.sleep_forever, name="earlier-bus-fetcher")  # earlier_bus.subscribe(...)
        stop.set()


# ------------------------------------------------------------------------------- the suite's own bookkeeping


def test_every_feature_flag_gates_at_least_one_check() -> None:
    checks = [getattr(BackendConformance, name) for name in dir(BackendConformance) if name.startswith("test_")]
    used = {f for check in checks for f in getattr(check, "__teb_requires__", ())}
    used |= {check.__teb_lacking__ for check in checks if hasattr(check, "__teb_lacking__")}
    flags = {a.name for a in attrs.fields(BackendFeatures)}
    assert flags <= used, f"flags no check uses: {sorted(flags - used)}"
    assert "restart" in used


def test_a_lacking_feature_is_a_skip_with_the_backend_and_its_reason() -> None:
    lacking_all = BackendFeatures(
        persistent=False,
        consumer_groups=False,
        ordered_per_key=False,
        redelivers=False,
        dedupes=False,
        ephemeral_topics=False,
    )
    case = BackendCase("mine", teb.MemoryConfig, lacking_all, reasons={"dedupes": "no ids on my wire"})
    gated = {
        name: skip_reason(case, getattr(BackendConformance, name))
        for name in dir(BackendConformance)
        if name.startswith("test_")
    }
    assert gated["test_duplicate_message_id_is_stored_once"] == "mine lacks dedupes: no ids on my wire"
    assert gated["test_per_key_order_across_lanes"] == f"mine lacks ordered_per_key: {FEATURES['ordered_per_key']}"
    assert gated["test_broker_restart_loses_nothing_acknowledged"] == f"mine lacks restart: {FEATURES['restart']}"
    assert gated["test_retry_redeliver_falls_back_in_place"] is None  # the fallback checks run here
    assert gated["test_ephemeral_topic_refused_without_the_feature"] is None
    assert gated["test_confirm_waits_for_ack"] is None  # ungated checks always run
    with pytest.raises(ValueError, match="unknown features"):
        BackendCase("mine", teb.MemoryConfig, lacking_all, reasons={"dedupe": "typo"})


async def test_restart_scenario_figures_on_a_simulated_restart(autojump_clock: trio.testing.MockClock) -> None:
    """The scenario's machinery on the memory broker with a restart hook that only takes (virtual) time."""

    async def pause() -> None:
        await trio.sleep(1)  # the broker's downtime, in virtual time

    broker = teb.MemoryBroker()
    case = BackendCase("memory", lambda: teb.MemoryConfig(broker=broker), BackendFeatures(), restart=pause)
    report = await restart_scenario(case)
    assert (report.lost, report.duplicates, report.order_violations, report.failed) == (0, 0, 0, 0)
    assert report.sent == report.acked == report.handled
    assert report.sent_after == report.acked_after == 300
    assert report.sent > 600  # some were published during the restart
    assert report.restart_seconds == pytest.approx(1.0)


async def test_restart_tracker_counts_duplicates_and_order_violations() -> None:
    tracker = _Tracker()
    for key, n in [("a", 0), ("a", 2), ("a", 0), ("b", 5), ("a", 1), ("a", 3)]:  # n: unique across keys
        await tracker.handler(envelope(key, n))
    assert tracker.deliveries - len(tracker.first) == 1  # ("a", 0) twice: a duplicate, not a violation
    assert tracker.order_violations == 1  # ("a", 1) first seen after ("a", 2)
    tracker.expect({0, 1, 2, 3, 5, 6})
    assert not tracker.all_handled.is_set()
    await tracker.handler(envelope("c", 6))
    assert tracker.all_handled.is_set()
