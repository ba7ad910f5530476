"""``python -m bench --backend nats``: the bus on NATS JetStream beside plain asyncio nats-py.

Three legs, each measured twice in the same invocation against the same server — through the bus (Trio,
the chosen bridge) and with plain nats-py on a fresh asyncio loop in a worker thread (no Trio at all):

``publish``  N messages published with acks: bus ``publish`` + ``flush`` / ``publish_async`` + awaiting
             every PubAck (nats-py's pending window, 10,000 in both);
``e2e``      saturated end to end: N messages published while one subscriber consumes them; msgs/s until the
             last one is handled (bus: keyed lanes + handler + batched acks; baseline: ``fetch(500)`` + one
             ``ack()`` per message);
``paced``    2,000 msg/s for ``paced_seconds``: latency from the publish call to the handler, p50/p99.

Beside the saturated end-to-end leg, the server's own ``nats bench`` (``bench/nats_cli.py``: ``js pub async``
and a ``js fetch`` consumer at once, 500-message batches, one ack per message) when the nats CLI is built
(``python tools/provision.py --natscli``); ``ratio_e2e_natsbench`` = bus / ``nats bench`` end to end, and each
side of ``nats bench`` alone for reference.

The baseline runs on asyncio's own selector loop; the bus's thread bridge uses uvloop when it is installed
(``bus_uvloop`` = 1). Messages are 256-byte raw bodies keyed over 100 keys (the baseline sends the same
``X-Message-Key`` header). Each leg uses its own stream, deleted afterwards. Figures are reported, never
asserted; ratios are bus / baseline (throughput: higher is better; latency: lower is better).

Reading the paced figures: the baseline's ``fetch(500, timeout=0.1)`` keeps one pull request at a time (a
``no_wait`` + ``expires`` probe that the server ends right after the first messages, so about one request per
message or two), has none outstanding while it acks a batch message by message, and costs ~50 µs of CPU per
message in ``next_msg`` alone: it needs about half a core at 2,000 msg/s, and its tail follows the machine's
load (and nats-server 2.12's store latency) far more than the bus's, which always has a request waiting. Each
paced leg is one 3-second sample: compare several invocations (or ``bench/compare.sh``), not one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_eventbus import EventBus, open_bus
from trio_eventbus._envelope import Message
from trio_eventbus._options import BusOptions
from trio_eventbus._stats import percentile
from trio_eventbus.backends._bridge.bridge import application_loop
from trio_eventbus.backends.nats.config import NatsConfig

from .nats_cli import locate_natscli, nats_bench

__all__ = ["bench_nats"]

_BODY = 256
_KEYS = 100
_RATE = 2_000.0
_clock = time.perf_counter


def _body(i: int) -> bytes:
    stamp = b"%d:%.9f:" % (i, _clock())
    return stamp + b"x" * (_BODY - len(stamp))


def _stamp(body: bytes) -> float:
    return float(body.split(b":", 2)[1])


def _name(leg: str, side: str) -> str:
    return f"teb-bench-{leg}-{side}-{os.getpid()}-{time.monotonic_ns()}"


# ------------------------------------------------------------------------------- plain asyncio baseline


async def _aio_connect(url: str) -> tuple[Any, Any]:
    from nats.aio.client import Client

    nc = Client()
    await nc.connect(url, allow_reconnect=False)
    return nc, nc.jetstream(publish_async_max_pending=10_000)


async def _aio_publish(js: Any, topic: str, count: int) -> None:
    futures = [
        await js.publish_async(topic, _body(i), headers={"X-Message-Key": f"k{i % _KEYS}"}) for i in range(count)
    ]
    await asyncio.gather(*futures)


async def _aio_consume(js: Any, topic: str, stream: str, count: int, latencies: list[float]) -> None:
    sub = await js.pull_subscribe(topic, durable="bench", stream=stream)
    got = 0
    while got < count:
        try:
            msgs = await sub.fetch(500, timeout=0.1)
        except TimeoutError:  # nats-py: an empty fetch (asyncio.TimeoutError is TimeoutError)
            continue
        for msg in msgs:
            latencies.append(_clock() - _stamp(msg.data))
            await msg.ack()
        got += len(msgs)


async def _aio_leg(url: str, leg: str, count: int) -> dict[str, float]:
    from nats.js.api import StreamConfig

    nc, js = await _aio_connect(url)
    topic = _name(leg, "aio")
    stream = topic.replace(".", "_")
    await js.add_stream(StreamConfig(name=stream, subjects=[topic]))
    latencies: list[float] = []
    try:
        start = _clock()
        if leg == "publish":
            await _aio_publish(js, topic, count)
        elif leg == "e2e":
            consumer = asyncio.ensure_future(_aio_consume(js, topic, stream, count, latencies))
            await _aio_publish(js, topic, count)
            await consumer
        else:
            consumer = asyncio.ensure_future(_aio_consume(js, topic, stream, count, latencies))
            await _aio_paced(
                lambda i: js.publish_async(topic, _body(i), headers={"X-Message-Key": f"k{i % _KEYS}"}), count
            )
            await consumer
        elapsed = _clock() - start
    finally:
        await js.delete_stream(stream)
        await nc.close()
    return _leg_figures(leg, count, elapsed, latencies)


async def _aio_paced(publish: Callable[[int], Awaitable[object]], count: int) -> None:
    start = _clock()
    for i in range(count):
        delay = start + i / _RATE - _clock()
        if delay > 0:
            await asyncio.sleep(delay)
        await publish(i)


def _baseline(url: str, leg: str, count: int) -> dict[str, float]:
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:  # never trio_asyncio's policy
        return runner.run(_aio_leg(url, leg, count))


# --------------------------------------------------------------------------------------------- the bus


async def _bus_leg(url: str, leg: str, count: int, bridge: str) -> dict[str, float]:
    async with application_loop(bridge):  # trio-asyncio: the application's loop, shared by the bus
        return await _bus_leg_on(url, leg, count, bridge)


async def _bus_leg_on(url: str, leg: str, count: int, bridge: str) -> dict[str, float]:
    config = NatsConfig(servers=url, bridge=bridge)  # type: ignore[arg-type]
    topic = _name(leg, "bus")
    latencies: list[float] = []
    done, warmed = trio.Event(), trio.Event()

    async def handler(msg: Message) -> None:
        if not warmed.is_set():  # the warm-up message is the stream's first
            warmed.set()
            return
        latencies.append(_clock() - _stamp(msg.data))
        if len(latencies) == count:
            done.set()

    async with open_bus(config, options=BusOptions(lanes=64)) as bus:
        await bus.publish(topic, b"warm-up", confirm=True)  # stream created, connection warm
        start = _clock()
        if leg == "publish":
            await _bus_burst(bus, topic, count)
            await bus.flush()
        else:
            await bus.subscribe(topic, handler, group="bench")
            await warmed.wait()
            start = _clock()
            if leg == "e2e":
                await _bus_burst(bus, topic, count)
            else:
                await _bus_paced(bus, topic, count)
            await done.wait()
        elapsed = _clock() - start
        await bus.flush()
    await _delete_stream(url, "TEB_" + topic.replace(".", "_"))
    return _leg_figures(leg, count, elapsed, latencies)


async def _bus_burst(bus: EventBus, topic: str, count: int) -> None:
    """Publish ``count`` messages as fast as the bus takes them: the synchronous form, awaiting only when full."""
    for i in range(count):
        body, key = _body(i), f"k{i % _KEYS}"
        try:
            bus.publish_nowait(topic, body, key=key)
        except trio.WouldBlock:
            await bus.publish(topic, body, key=key)


async def _bus_paced(bus: EventBus, topic: str, count: int) -> None:
    start = _clock()
    for i in range(count):
        delay = start + i / _RATE - _clock()
        if delay > 0:
            await trio.sleep(delay)
        body, key = _body(i), f"k{i % _KEYS}"
        try:
            bus.publish_nowait(topic, body, key=key)
        except trio.WouldBlock:
            await bus.publish(topic, body, key=key)


async def _delete_stream(url: str, stream: str) -> None:
    async def delete() -> None:
        nc, js = await _aio_connect(url)
        try:
            await js.delete_stream(stream)
        finally:
            await nc.close()

    def run() -> None:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(delete())

    await trio.to_thread.run_sync(run)


def _leg_figures(leg: str, count: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    out = {f"{leg}_msgs_per_s": count / elapsed}
    if latencies:
        out[f"{leg}_p50_ms"] = percentile(latencies, 50) * 1e3
        out[f"{leg}_p99_ms"] = percentile(latencies, 99) * 1e3
    return out


async def bench_nats(
    url: str, *, messages: int = 50_000, bridge: str = "thread", paced_seconds: float = 3.0
) -> dict[str, float]:
    """Run every leg through the bus and the plain-asyncio baseline; return figures and ratios."""
    paced = max(1, int(_RATE * paced_seconds))
    counts = {"publish": messages, "e2e": messages, "paced": paced}
    out: dict[str, Any] = {"messages": float(messages), "paced_rate": _RATE, "paced_messages": float(paced)}
    uvloop = importlib.util.find_spec("uvloop") is not None
    out["bus_uvloop"] = float(bridge in ("thread", "auto") and uvloop)
    cli = locate_natscli()
    if cli is None:
        print("nats bench leg skipped: build the nats CLI with `python tools/provision.py --natscli`", file=sys.stderr)
    for leg, count in counts.items():
        base = await trio.to_thread.run_sync(_baseline, url, leg, count)
        bus = await _bus_leg(url, leg, count, bridge)
        out |= {f"aio_{k}": v for k, v in base.items()} | {f"bus_{k}": v for k, v in bus.items()}
        if leg == "e2e" and cli is not None:
            out |= await trio.to_thread.run_sync(nats_bench, cli, url, count)
    for leg in ("publish", "e2e"):
        out[f"ratio_{leg}"] = out[f"bus_{leg}_msgs_per_s"] / out[f"aio_{leg}_msgs_per_s"]
    if "natsbench_e2e_msgs_per_s" in out:
        out["ratio_e2e_natsbench"] = out["bus_e2e_msgs_per_s"] / out["natsbench_e2e_msgs_per_s"]
    out["ratio_paced_p99"] = out["bus_paced_p99_ms"] / out["aio_paced_p99_ms"]
    return {k: float(v) for k, v in out.items()}


if __name__ == "__main__":  # pragma: no cover - manual runs
    print(json.dumps(trio.run(lambda: bench_nats(sys.argv[1], messages=int(sys.argv[2])))))
