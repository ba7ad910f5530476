"""``python -m bench --backend memory|nats|kafka --levels [500,2000,5000,10000]``: the design documents' pressure
levels and the Go original's workload, measured through the public API only.

Legs, named alike in every output (text, ``--json``, ``--report``):

``envelope``  ``publish_envelope`` → ``subscribe_envelope``: a level publishes that many envelopes over 100
              aggregates (envelope ``i`` belongs to aggregate ``i % 100``; its ``event_version`` is its sequence
              number within the aggregate), each built in the publish loop as an application builds one per event,
              with a 250-byte JSON payload and no ``tenant_id``;
``raw``       ``publish(topic, 256-byte body, key=aggregate)`` → ``subscribe``: the same plan without envelopes;
``client``    (the jxt comparison only) the plain client without the bus, a yardstick for this machine's drift:
              plain-asyncio nats-py or aiokafka (the end-to-end legs of ``bench/nats.py`` / ``bench/kafka.py``,
              256-byte raw messages over 100 keys), or for memory a bare one-hop Trio memory channel.

Every bus leg opens a fresh bus (``BusOptions()`` defaults) and a fresh topic (Kafka: 3 partitions, as in
``bench/kafka.py``); it subscribes first, publishes one warm-up message and waits for it (topic provisioned,
subscription live, connection warm), then starts the clock at the first timed publish. Figures per leg:

- ``msgs_per_s``: handled messages per second, first publish → last handler call;
- ``p50_ms`` / ``p99_ms`` / ``max_ms``: latency from the publish call to the handler call;
- ``order_violations``: first handlings whose sequence is below one already handled for the same aggregate
  (counted, never asserted: 0 is the guarantee); ``duplicates``: handlings after the first; ``lost``: messages
  not handled within the leg's patience (60 s + 5 ms per message); ``publish_failed`` / ``redelivered`` from
  ``EventBus.statistics()``;
- ``rss_mib`` / ``rss_start_mib``: the process's resident set at its peak during the leg (sampled every 20 ms
  and at the end of publishing) and at the start of the leg;
- ``tasks``: the peak size of Trio's task tree (the sampler's own task included; a thread bridge's asyncio
  tasks are not Trio tasks and are not counted).

The jxt comparison is issue 15's workload for the Go jxt-core bus: 20,000 envelopes over 100 aggregates,
subscriber first, first publish → last handler, run ``rounds`` times alternating envelope / raw / client legs;
it reports per round the envelope leg against the Go figures the issue states for this machine (the Go
library itself cannot be fetched here: the module proxy refuses it) and against the client of the same round.

Publishing uses the hot-loop form (``publish_envelope_nowait`` / ``publish_nowait``, awaiting
``publish_envelope`` / ``publish`` only when the window is full); ``form="await"`` awaits every call instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import itertools
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import trio

import trio_eventbus as teb
from trio_eventbus import BackendConfig, BusOptions, Envelope, EventBus, Message, TopicOptions, open_bus
from trio_eventbus.testing import all_tasks

__all__ = [
    "AGGREGATES",
    "GO_JXT",
    "JXT_ENVELOPES",
    "LEVELS",
    "OrderCheck",
    "bench_levels",
    "interleaved",
    "machine",
    "percentile",
    "run_client",
    "run_leg",
]

logger = logging.getLogger("bench.levels")

#: The design documents' pressure levels (envelopes per level).
LEVELS = (500, 2_000, 5_000, 10_000)
AGGREGATES = 100
#: Issue 15's workload for the Go jxt-core bus.
JXT_ENVELOPES = 20_000
#: Go jxt-core on this machine, envelopes/s (min, max), as issue 15 states them.
GO_JXT: dict[str, tuple[float, float]] = {"nats": (10_000.0, 10_200.0), "kafka": (18_900.0, 21_700.0)}
GO_SOURCE = (
    "measured on this machine, as issue 15 states; not re-measured in this run: the Go library cannot be fetched "
    "here (the module proxy refuses it)"
)

Leg = Literal["raw", "envelope"]
Form = Literal["nowait", "await"]
#: Publish plan: message index → (aggregate index, sequence number within the aggregate, from 1).
Plan = Callable[[int], tuple[int, int]]
Figures = dict[str, Any]

_PAYLOAD = b'{"order":"bench","note":"' + b"x" * 223 + b'"}'
assert len(_PAYLOAD) == 250
_RAW_PAD = b"x" * (256 - 8)
_WARM = "warm-up"
_WARM_TIMEOUT = 60.0
_clock = time.perf_counter
_ids = itertools.count()
_NAN = float("nan")


def interleaved(aggregates: int = AGGREGATES) -> Plan:
    """The default plan: round-robin over the aggregates, so every aggregate's messages are interleaved."""
    return lambda i: (i % aggregates, i // aggregates + 1)


class OrderCheck:
    """Per-aggregate order: a handling whose sequence is below one already handled for its aggregate is a
    violation (feed it first handlings only; a redelivered duplicate is not an order question)."""

    __slots__ = ("_last", "violations")

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self.violations = 0

    def observe(self, aggregate: str, seq: int) -> None:
        """Record that ``aggregate``'s message number ``seq`` was handled now."""
        if seq < self._last.get(aggregate, 0):
            self.violations += 1
        else:
            self._last[aggregate] = seq


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return _NAN
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def rss_mib() -> float:
    """The process's resident set now (Linux), else its peak so far, in MiB."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class _Peaks:
    """The highest RSS and Trio task count seen by :meth:`sample`."""

    def __init__(self) -> None:
        self.start = self.rss = rss_mib()
        self.tasks = 0

    def sample(self) -> None:
        self.rss = max(self.rss, rss_mib())
        self.tasks = max(self.tasks, len(all_tasks()))

    async def run(self, interval: float = 0.02) -> None:
        while True:
            self.sample()
            await trio.sleep(interval)


class _Tally:
    __slots__ = ("duplicates", "last")

    def __init__(self) -> None:
        self.duplicates = 0
        self.last = 0.0


def backend_config(backend: str, url: str | None, bridge: str = "thread") -> BackendConfig:
    """The config of ``backend`` at ``url`` (memory: a private broker per bus)."""
    if backend == "memory":
        return teb.MemoryConfig()
    if url is None:
        raise ValueError(f"--backend {backend} needs a broker address")
    if backend == "nats":
        return teb.NatsConfig(servers=url, bridge=bridge)  # type: ignore[arg-type]
    return teb.KafkaConfig(bootstrap_servers=url, bridge=bridge)  # type: ignore[arg-type]


def _unique(stem: str) -> str:
    return f"teb-levels-{stem}-{os.getpid()}-{int(time.time())}-{next(_ids)}"


async def run_leg(
    config: BackendConfig,
    leg: Leg,
    count: int,
    *,
    aggregates: int = AGGREGATES,
    plan: Plan | None = None,
    topic_options: TopicOptions | None = None,
    form: Form = "nowait",
    patience: float | None = None,
) -> Figures:
    """Publish ``count`` messages by ``plan`` on a fresh bus and topic to a subscriber started first; return the
    leg's figures (see the module docstring). ``patience`` (default 60 s + 5 ms per message) bounds the wait for
    the last handling: what is not handled by then is ``lost``."""
    gc.collect()
    steps = [(plan or interleaved(aggregates))(i) for i in range(count)]
    names = [f"order-{a}" for a in range(max(a for a, _ in steps) + 1)] if steps else []
    sent = [0.0] * count
    seen = bytearray(count)
    index: dict[str, int] = {}
    latencies: list[float] = []
    check, tally, peaks = OrderCheck(), _Tally(), _Peaks()
    done, warmed = trio.Event(), trio.Event()
    topic, group = _unique(leg), _unique("g")

    def handled(i: int, aggregate: str, seq: int) -> None:
        now = _clock()
        if seen[i]:
            tally.duplicates += 1
            return
        seen[i] = 1
        latencies.append(now - sent[i])
        check.observe(aggregate, seq)
        if len(latencies) == count:
            tally.last = now
            done.set()

    async def on_envelope(env: Envelope) -> None:
        if env.aggregate_id == _WARM:
            warmed.set()
        else:
            handled(index[env.event_id], env.aggregate_id, env.event_version)

    async def on_message(msg: Message) -> None:
        if msg.key == _WARM:
            warmed.set()
        else:
            i = int(msg.data[:8])
            handled(i, names[steps[i][0]], steps[i][1])

    async with open_bus(config, options=BusOptions()) as bus, trio.open_nursery() as nursery:
        if topic_options is not None:
            await bus.configure_topic(topic, topic_options)
        if leg == "envelope":
            await bus.subscribe_envelope(topic, on_envelope, group=group)
            warm = Envelope(aggregate_id=_WARM, event_type="WarmUp", event_version=1, payload=b"{}")
            await bus.publish_envelope(topic, warm, confirm=True)
        else:
            await bus.subscribe(topic, on_message, group=group)
            await bus.publish(topic, b"warm-up", key=_WARM, confirm=True)
        with trio.fail_after(_WARM_TIMEOUT):
            await warmed.wait()
        nursery.start_soon(peaks.run)
        start = _clock()
        if leg == "envelope":
            await _publish_envelopes(bus, topic, steps, names, sent, index, form)
        else:
            await _publish_raw(bus, topic, steps, names, sent, form)
        peaks.sample()
        with trio.move_on_after(60.0 + count * 0.005 if patience is None else patience):
            await done.wait()
        end = tally.last if done.is_set() else _clock()
        peaks.sample()
        await bus.flush()
        stats = bus.statistics()
        nursery.cancel_scope.cancel()
    elapsed = end - start
    return {
        "leg": leg,
        "messages": count,
        "aggregates": aggregates,
        "msgs_per_s": len(latencies) / elapsed if elapsed > 0 else _NAN,
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies, default=_NAN) * 1e3,
        "order_violations": check.violations,
        "duplicates": tally.duplicates,
        "lost": count - len(latencies),
        "publish_failed": stats.publish_failed,
        "redelivered": stats.redelivered,
        "rss_mib": peaks.rss,
        "rss_start_mib": peaks.start,
        "tasks": peaks.tasks,
    }


async def _publish_envelopes(
    bus: EventBus,
    topic: str,
    steps: list[tuple[int, int]],
    names: list[str],
    sent: list[float],
    index: dict[str, int],
    form: Form,
) -> None:
    awaited = form == "await"
    for i, (aggregate, seq) in enumerate(steps):
        env = Envelope(aggregate_id=names[aggregate], event_type="OrderEvent", event_version=seq, payload=_PAYLOAD)
        index[env.event_id] = i
        sent[i] = _clock()
        if awaited:
            await bus.publish_envelope(topic, env)
            continue
        try:
            bus.publish_envelope_nowait(topic, env)
        except trio.WouldBlock:
            await bus.publish_envelope(topic, env)


async def _publish_raw(
    bus: EventBus, topic: str, steps: list[tuple[int, int]], names: list[str], sent: list[float], form: Form
) -> None:
    awaited = form == "await"
    for i, (aggregate, _) in enumerate(steps):
        body, key = b"%08d" % i + _RAW_PAD, names[aggregate]
        sent[i] = _clock()
        if awaited:
            await bus.publish(topic, body, key=key)
            continue
        try:
            bus.publish_nowait(topic, body, key=key)
        except trio.WouldBlock:
            await bus.publish(topic, body, key=key)


# ---------------------------------------------------------------------------------------- the client yardstick


async def _bare_channel(count: int) -> Figures:
    """The memory yardstick: the same 256-byte bodies through one Trio memory channel hop to a handler."""
    sent = [0.0] * count
    latencies: list[float] = []
    send, recv = trio.open_memory_channel[bytes](1_000)
    start = _clock()
    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            async for body in recv:
                latencies.append(_clock() - sent[int(body[:8])])
                if len(latencies) == count:
                    return

        nursery.start_soon(consume)
        async with send:
            for i in range(count):
                body = b"%08d" % i + _RAW_PAD
                sent[i] = _clock()
                await send.send(body)
    elapsed = _clock() - start
    return _client_figures(count, count / elapsed, latencies, "bare one-hop Trio memory channel (await send)")


def _client_figures(count: int, rate: float, latencies: Sequence[float], client: str) -> Figures:
    return {
        "leg": "client",
        "client": client,
        "messages": count,
        "msgs_per_s": rate,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


async def run_client(backend: str, url: str | None, count: int, *, bridge: str = "thread") -> Figures:
    """The plain client's end-to-end figures for ``count`` messages (see the module docstring); on an error
    (the client baselines are other modules' private functions) the figures say so instead of aborting."""
    try:
        if backend == "memory":
            return await _bare_channel(count)
        if url is None:
            raise ValueError(f"the {backend} client needs a broker address")
        if backend == "nats":
            from . import nats as nats_bench

            got = await trio.to_thread.run_sync(nats_bench._baseline, url, "e2e", count)
            return {
                **_client_figures(count, got["e2e_msgs_per_s"], [], "plain asyncio nats-py (bench/nats.py e2e)"),
                "p50_ms": got.get("e2e_p50_ms", _NAN),
                "p99_ms": got.get("e2e_p99_ms", _NAN),
            }
        from . import kafka as kafka_bench

        producer_kw, consumer_kw = kafka_bench._asyncio_kwargs(kafka_bench._config(url, bridge))
        rate, lat = await trio.to_thread.run_sync(
            kafka_bench._run_asyncio, kafka_bench._aio_consume, url, producer_kw, consumer_kw, count, None
        )
        return _client_figures(count, rate, lat, "plain asyncio aiokafka (bench/kafka.py e2e)")
    except Exception as exc:
        logger.warning("the %s client yardstick failed: %r", backend, exc)
        return {"leg": "client", "messages": count, "error": repr(exc)}


# ---------------------------------------------------------------------------------------------- the machine


def _broker_version(backend: str, url: str | None, started: bool) -> str:
    if backend == "memory":
        return "in-process MemoryBroker"
    if backend == "kafka":
        from trio_eventbus.testing.servers import KAFKA_VERSION

        return (
            f"Kafka {KAFKA_VERSION} (local single-node KRaft)" if started else f"Kafka at {url} (version not queried)"
        )

    async def ask(url: str) -> str:
        from nats.aio.client import Client

        nc = Client()
        await nc.connect(url, allow_reconnect=False)
        try:
            v = nc.connected_server_version
            return f"nats-server {v.major}.{v.minor}.{v.patch}"
        finally:
            await nc.close()

    try:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(ask(url or "")) + (" (local)" if started else "")
    except Exception as exc:
        return f"nats-server at {url} (version unknown: {exc!r})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        got = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return "unknown"
    return got.stdout.strip() or "unknown"


def machine(backend: str, url: str | None, *, started: bool = False) -> dict[str, Any]:
    """Date, machine, versions and the load average (other processes' share of the CPUs) for a report; blocking
    (the broker's version is asked over the network)."""
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": nproc,
        "cpu": _cpu_model(),
        "platform": platform.platform(terse=True),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "trio": trio.__version__,
        "trio_eventbus": teb.__version__,
        "commit": _commit(),
        "broker": _broker_version(backend, url, started),
        "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else _NAN,
    }


# ------------------------------------------------------------------------------------------------- entry


def _spread(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"min": _NAN, "median": _NAN, "max": _NAN}
    return {"min": min(finite), "median": statistics.median(finite), "max": max(finite)}


async def _jxt(
    backend: str,
    url: str | None,
    config: BackendConfig,
    *,
    count: int,
    rounds: int,
    aggregates: int,
    topic_options: TopicOptions | None,
    form: Form,
    bridge: str,
) -> Figures:
    runs: list[Figures] = []
    go = GO_JXT.get(backend)
    for _ in range(rounds):
        legs: Figures = {}
        for leg in ("envelope", "raw"):
            legs[leg] = await _on_loop(
                bridge, run_leg(config, leg, count, aggregates=aggregates, topic_options=topic_options, form=form)
            )
        legs["client"] = await run_client(backend, url, count, bridge=bridge)
        env = legs["envelope"]["msgs_per_s"]
        legs["ratio_envelope_to_raw"] = env / legs["raw"]["msgs_per_s"]
        legs["ratio_envelope_to_client"] = env / legs["client"].get("msgs_per_s", _NAN)
        if go is not None:
            legs["ratio_to_go"] = [env / go[1], env / go[0]]
        runs.append(legs)
    out: Figures = {
        "workload": f"{count:,} envelopes over {aggregates} aggregates, subscriber first, first publish → last handler",
        "messages": count,
        "aggregates": aggregates,
        "rounds": runs,
        "msgs_per_s": {
            leg: _spread([r[leg].get("msgs_per_s", _NAN) for r in runs]) for leg in ("envelope", "raw", "client")
        },
        "ratio_envelope_to_client": _spread([r["ratio_envelope_to_client"] for r in runs]),
        "ratio_envelope_to_raw": _spread([r["ratio_envelope_to_raw"] for r in runs]),
    }
    if go is None:
        out["go"] = None
    else:
        env_spread = out["msgs_per_s"]["envelope"]
        out["go"] = {"min": go[0], "max": go[1], "source": GO_SOURCE}
        out["ratio_to_go"] = {
            "min": env_spread["min"] / go[1],
            "median": env_spread["median"] / ((go[0] + go[1]) / 2),
            "max": env_spread["max"] / go[0],
        }
    return out


async def _on_loop(bridge: str, leg: Awaitable[Figures]) -> Figures:
    """Await ``leg`` inside a trio-asyncio loop when that is the bridge (as an application on trio-asyncio)."""
    if bridge != "trio-asyncio":
        figures: Figures = await leg
        return figures
    import trio_asyncio

    async with trio_asyncio.open_loop():
        return await leg


async def bench_levels(
    backend: str,
    url: str | None = None,
    *,
    levels: Sequence[int] = LEVELS,
    jxt: int = JXT_ENVELOPES,
    rounds: int = 3,
    aggregates: int = AGGREGATES,
    bridge: str = "thread",
    form: Form = "nowait",
    started: bool = False,
) -> Figures:
    """The raw and envelope legs at every level, then (``jxt`` > 0) the jxt comparison ``rounds`` times; one
    nested dict of figures, with the machine's description (see the module docstring)."""
    config = backend_config(backend, url, bridge)
    topic_options = TopicOptions(partitions=3) if backend == "kafka" else None
    out: Figures = {
        "backend": backend,
        "mode": "levels",
        "bridge": None if backend == "memory" else bridge,
        "aggregates": aggregates,
        "publish_form": form,
        "machine": await trio.to_thread.run_sync(lambda: machine(backend, url, started=started)),
        "levels": {},
    }
    for level in levels:
        out["levels"][str(level)] = {
            leg: await _on_loop(
                bridge, run_leg(config, leg, level, aggregates=aggregates, topic_options=topic_options, form=form)
            )
            for leg in ("raw", "envelope")
        }
    if jxt > 0:
        out["jxt"] = await _jxt(
            backend,
            url,
            config,
            count=jxt,
            rounds=rounds,
            aggregates=aggregates,
            topic_options=topic_options,
            form=form,
            bridge=bridge,
        )
    return out
