"""``python -m bench --backend kafka``: the Kafka backend beside plain-asyncio aiokafka.

Three figures, each measured through the bus and, in the same invocation, by a plain-asyncio aiokafka program
with the same producer/consumer settings (run by ``asyncio.Runner`` in a worker thread, on uvloop when the
bridge would use it), plus the broker's own ``ProducerPerformance`` tool (Java, same producer settings, at least
300,000 records so that the JIT warms up) as the physical limit:

* ``publish``: messages/s from the first publish until every broker ack (acks=all, idempotent);
* ``e2e``: messages/s from the first publish until the subscriber handled the last one (saturated);
* ``paced``: latency p50/p99 (publish call to handler) at a paced 2,000 messages/s for 3 s.

Messages are 256-byte bodies keyed over 100 keys, on fresh 3-partition topics; the CLI's default is 200,000
per leg (a 50,000-message saturated leg lasts about a second, mostly start-up transient). The figures are reported,
never asserted; ``*_ratio`` is bus / asyncio (1.0 = the bridge costs nothing).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
import re
import struct
import subprocess
import time
from collections.abc import Callable
from typing import Any

import trio

from trio_eventbus import open_bus
from trio_eventbus._envelope import Message
from trio_eventbus._options import BusOptions, TopicOptions
from trio_eventbus._stats import percentile
from trio_eventbus.backends._bridge.bridge import application_loop
from trio_eventbus.backends.kafka.config import KafkaConfig

__all__ = ["bench_kafka"]

_BODY = 256
_KEYS = 100
_PARTITIONS = 3
_RATE = 2000
_PACED_SECONDS = 3.0
_PERF_MIN_RECORDS = 300_000  # the JVM needs a few seconds of work before its figure means anything
_ids = itertools.count()


def _unique(stem: str) -> str:
    return f"teb-bench-{stem}-{os.getpid()}-{int(time.time())}-{next(_ids)}"


def _body(i: int) -> bytes:
    stamp = struct.pack(">d", time.perf_counter())
    return stamp + b"%08d" % i + b"x" * (_BODY - 16)


def _stamp(body: bytes) -> float:
    value: float = struct.unpack(">d", body[:8])[0]
    return value


def _config(bootstrap: str, bridge: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        bridge=bridge,  # type: ignore[arg-type]
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )


# ------------------------------------------------------------------------------------------ the bus


async def _bus_publish(config: KafkaConfig, messages: int) -> float:
    topic = _unique("pub")
    async with open_bus(config) as bus:
        await bus.configure_topic(topic, TopicOptions(partitions=_PARTITIONS))
        await bus.publish(topic, _body(0), key="warm", confirm=True)  # metadata, as the baseline does
        start = time.perf_counter()
        for i in range(messages):
            body, key = _body(i), f"k{i % _KEYS}"
            try:
                bus.publish_nowait(topic, body, key=key)  # the hot-loop form: awaits only when the window is full
            except trio.WouldBlock:
                await bus.publish(topic, body, key=key)
        await bus.flush()
        elapsed = time.perf_counter() - start
        assert bus.statistics().publish_failed == 0
    return messages / elapsed


async def _bus_consume(config: KafkaConfig, messages: int, rate: float | None) -> tuple[float, list[float]]:
    """Publish ``messages`` (paced at ``rate``/s if given) to a subscribed bus; (msgs/s, latencies)."""
    topic = _unique("e2e" if rate is None else "paced")
    latencies: list[float] = []
    done = trio.Event()
    clock = time.perf_counter

    async def handler(msg: Message) -> None:
        latencies.append(clock() - _stamp(msg.data))
        if len(latencies) == messages:
            done.set()

    async with open_bus(config, options=BusOptions(service=_unique("g"))) as bus:
        await bus.configure_topic(topic, TopicOptions(partitions=_PARTITIONS))
        await bus.subscribe(topic, handler)
        start = clock()
        tick = 0.005
        per_tick = 0 if rate is None else max(1, round(rate * tick))
        deadline = trio.current_time()
        for i in range(messages):
            if per_tick and i % per_tick == 0:
                deadline += tick
                await trio.sleep_until(deadline)
            body, key = _body(i), f"k{i % _KEYS}"
            try:
                bus.publish_nowait(topic, body, key=key)  # the hot-loop form: awaits only when the window is full
            except trio.WouldBlock:
                await bus.publish(topic, body, key=key)
        await done.wait()
        elapsed = clock() - start
    return messages / elapsed, latencies


# ------------------------------------------------------------------------------- plain asyncio


def _asyncio_kwargs(config: KafkaConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    from trio_eventbus.backends.kafka.backend import KafkaBackend

    backend = KafkaBackend(config)
    producer, consumer, _ = backend._producer_kw, dict(backend._consumer_kw), backend._admin_kw
    consumer |= {"enable_auto_commit": True, "auto_commit_interval_ms": int(config.commit_interval * 1000)}
    return producer, consumer


async def _aio_create_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, _PARTITIONS, 1)])
    finally:
        await admin.close()


async def _aio_publish(bootstrap: str, producer_kw: dict[str, Any], messages: int) -> float:
    from aiokafka import AIOKafkaProducer

    topic = _unique("apub")
    await _aio_create_topic(bootstrap, topic)
    producer = AIOKafkaProducer(**producer_kw)
    await producer.start()
    try:
        await producer.send_and_wait(topic, _body(0), key=b"warm")  # metadata, as the bus's ensure_topic does
        start = time.perf_counter()
        futures = [await producer.send(topic, _body(i), key=b"k%d" % (i % _KEYS)) for i in range(messages)]
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - start
    finally:
        await producer.stop()
    return messages / elapsed


async def _aio_consume(
    bootstrap: str, producer_kw: dict[str, Any], consumer_kw: dict[str, Any], messages: int, rate: float | None
) -> tuple[float, list[float]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = _unique("ae2e")
    await _aio_create_topic(bootstrap, topic)
    producer = AIOKafkaProducer(**producer_kw)
    consumer = AIOKafkaConsumer(topic, **(consumer_kw | {"group_id": _unique("ag")}))
    latencies: list[float] = []
    clock = time.perf_counter
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():  # joined the group
            await consumer.getmany(timeout_ms=100)

        async def consume() -> None:
            while len(latencies) < messages:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        latencies.append(clock() - _stamp(record.value))

        reader = asyncio.ensure_future(consume())
        start = clock()
        futures = []
        if rate is None:
            for i in range(messages):
                futures.append(await producer.send(topic, _body(i), key=b"k%d" % (i % _KEYS)))
        else:
            loop = asyncio.get_running_loop()
            tick = 0.005
            per_tick = max(1, round(rate * tick))
            deadline = loop.time()
            for i in range(messages):
                if i % per_tick == 0:
                    deadline += tick
                    await asyncio.sleep(max(0.0, deadline - loop.time()))
                futures.append(await producer.send(topic, _body(i), key=b"k%d" % (i % _KEYS)))
        await reader
        elapsed = clock() - start
        await asyncio.gather(*futures)
    finally:
        await consumer.stop()
        await producer.stop()
    return messages / elapsed, latencies


def _run_asyncio(fn: Callable[..., Any], *args: Any) -> Any:
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(fn(*args))


# ------------------------------------------------------------------------------ broker's own tool


def _producer_performance(bootstrap: str, config: KafkaConfig, messages: int) -> float:
    """msgs/s of Kafka's ProducerPerformance with the same producer settings; NaN if unavailable."""
    from trio_eventbus.testing.servers import BrokerStartError, locate_java, locate_kafka_libs

    try:
        java, libs = locate_java(), locate_kafka_libs()
    except BrokerStartError:
        return float("nan")
    topic = _unique("perf")
    _run_asyncio(_aio_create_topic, bootstrap, topic)
    props = [
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        f"enable.idempotence={str(config.enable_idempotence).lower()}",
        f"compression.type={config.compression or 'none'}",
        f"linger.ms={config.linger_ms}",
        f"batch.size={config.max_batch_size}",
    ]
    argv = [
        java,
        "-Xmx512m",
        "-cp",
        f"{libs}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(messages),
        "--record-size",
        str(_BODY),
        "--throughput",
        "-1",
        "--producer-props",
        *props,
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    found = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", result.stdout)
    return float(found[-1][1]) if found else float("nan")


# ------------------------------------------------------------------------------------------ entry


async def bench_kafka(bootstrap: str, *, messages: int, bridge: str, repeats: int = 2) -> dict[str, float]:
    """Run every measurement against ``bootstrap`` and return the figures (see the module docstring).

    Bus and asyncio runs alternate, ``repeats`` times each; each figure is the best of its runs (highest
    throughput; latencies of the run with the lowest p50), which filters out noise from other processes.
    """
    config = _config(bootstrap, bridge)
    producer_kw, consumer_kw = _asyncio_kwargs(config)
    paced = int(_RATE * _PACED_SECONDS)
    runs: dict[str, list[float]] = {}
    latencies: dict[str, list[tuple[float, float]]] = {"bus": [], "asyncio": []}

    def keep(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    def keep_latency(side: str, lat: list[float]) -> None:
        latencies[side].append((percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3))

    for _ in range(repeats):
        async with application_loop(bridge):
            keep("publish_bus_msgs_per_s", await _bus_publish(config, messages))
        keep(
            "publish_asyncio_msgs_per_s",
            await trio.to_thread.run_sync(_run_asyncio, _aio_publish, bootstrap, producer_kw, messages),
        )
        async with application_loop(bridge):
            keep("e2e_bus_msgs_per_s", (await _bus_consume(config, messages, None))[0])
        rate, _ = await trio.to_thread.run_sync(
            _run_asyncio, _aio_consume, bootstrap, producer_kw, consumer_kw, messages, None
        )
        keep("e2e_asyncio_msgs_per_s", rate)
        async with application_loop(bridge):
            keep_latency("bus", (await _bus_consume(config, paced, _RATE))[1])
        _, lat = await trio.to_thread.run_sync(
            _run_asyncio, _aio_consume, bootstrap, producer_kw, consumer_kw, paced, float(_RATE)
        )
        keep_latency("asyncio", lat)

    figures: dict[str, float] = {"messages": float(messages), "body_bytes": float(_BODY), "repeats": float(repeats)}
    figures |= {name: max(values) for name, values in runs.items()}
    for side, values in latencies.items():
        p50, p99 = min(values)
        figures[f"paced_{side}_p50_ms"], figures[f"paced_{side}_p99_ms"] = p50, p99
    figures["publish_ratio"] = figures["publish_bus_msgs_per_s"] / figures["publish_asyncio_msgs_per_s"]
    figures["e2e_ratio"] = figures["e2e_bus_msgs_per_s"] / figures["e2e_asyncio_msgs_per_s"]
    figures["broker_producer_perf_msgs_per_s"] = await trio.to_thread.run_sync(
        _producer_performance, bootstrap, config, max(messages, _PERF_MIN_RECORDS)
    )
    return figures
