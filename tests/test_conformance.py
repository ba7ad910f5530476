"""The conformance suite (trio_eventbus.testing.conformance) run on every backend.

Backends add a parameter to ``backend_case`` with their marker; broker cases take their broker from the
fixtures in trio_eventbus.testing.fixtures (a missing broker is an error, never a skip).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import trio_eventbus as teb
from trio_eventbus.testing.conformance import *  # noqa: F403
from trio_eventbus.testing.conformance import BackendCase


def _memory_case() -> BackendCase:
    broker = teb.MemoryBroker()
    return BackendCase(
        "memory",
        lambda: teb.MemoryConfig(broker=broker),
        teb.MemoryConfig().create_backend().features,
        timeout=30,
    )


def _nats_case(url: str, bridge: str) -> BackendCase:
    from trio_eventbus.backends.nats.config import NatsConfig

    config = NatsConfig(servers=url, bridge=bridge)  # type: ignore[arg-type]
    return BackendCase(f"nats-{bridge}", lambda: config, config.create_backend().features, timeout=60)


_NATS_BRIDGES = ("thread", "trio-asyncio")


def _kafka_case(bootstrap: str, bridge: str) -> BackendCase:
    from trio_eventbus.backends.kafka.config import KafkaConfig

    # the broker's minimum session timeout: a bus that dies unannounced is out of its group within 6 s
    config = KafkaConfig(
        bootstrap_servers=bootstrap,
        bridge=bridge,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,  # type: ignore[arg-type]
    )
    return BackendCase(f"kafka-{bridge}", lambda: config, config.create_backend().features, timeout=60)


_KAFKA_BRIDGES = ("thread", "trio-asyncio")


@pytest.fixture(
    params=[
        "memory",
        *(pytest.param(f"nats-{b}", marks=pytest.mark.nats) for b in _NATS_BRIDGES),
        *(pytest.param(f"kafka-{b}", marks=pytest.mark.kafka) for b in _KAFKA_BRIDGES),
    ]
)
async def backend_case(request: pytest.FixtureRequest) -> AsyncIterator[BackendCase]:
    if request.param == "memory":
        yield _memory_case()
    elif request.param == "nats-trio-asyncio":  # inside the application's trio_asyncio loop, as apps would
        import trio_asyncio

        case = _nats_case(request.getfixturevalue("nats_url"), "trio-asyncio")
        async with trio_asyncio.open_loop():
            yield case
    elif request.param.startswith("nats-"):
        yield _nats_case(request.getfixturevalue("nats_url"), request.param.removeprefix("nats-"))
    elif request.param == "kafka-trio-asyncio":
        import trio_asyncio

        case = _kafka_case(request.getfixturevalue("kafka_bootstrap"), "trio-asyncio")
        async with trio_asyncio.open_loop():
            yield case
    elif request.param.startswith("kafka-"):
        yield _kafka_case(request.getfixturevalue("kafka_bootstrap"), request.param.removeprefix("kafka-"))
    else:
        raise AssertionError(request.param)
