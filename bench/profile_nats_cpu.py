"""CPU per message of the NATS end-to-end leg: the bus (per thread), plain nats-py, ``nats bench``, and the server.

    python -m bench.profile_nats_cpu [MESSAGES] [ROUNDS] [--url URL]

Runs the saturated end-to-end leg of ``bench --backend nats`` (N messages published while one subscriber
consumes them) for each client in turn, ROUNDS times, and reads CPU clocks over the leg: the bus's Trio thread
and asyncio-loop thread (from the first publish to the last handler call), the plain nats-py program's thread,
the two ``nats bench`` processes, and the nats-server process (``/proc``; only for a local server). CPU per
message moves far less with other load on the machine than msgs/s does, so before/after comparisons of the
client code hold on a busy machine; the ``capacity`` column is what one core would carry at that cost. It
reports figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import threading
import time
from pathlib import Path

import trio

from bench.nats import _aio_connect, _aio_consume, _aio_publish, _bus_burst, _clock, _delete_stream, _name
from bench.nats_cli import locate_natscli, nats_bench
from trio_eventbus import BusOptions, Message, NatsConfig, open_bus
from trio_eventbus.testing.servers import NatsServer

_TICK = os.sysconf("SC_CLK_TCK")


def _server_pid(url: str) -> int | None:
    port = url.rsplit(":", 1)[-1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"nats-server") and port.encode() in argv:
            return int(entry.name)
    return None


def _server_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _threads() -> dict[str, float]:
    out = {}
    for thread in threading.enumerate():
        if thread.ident is not None:
            name = "loop" if thread.name.startswith("trio-eventbus-aio-bridge") else thread.name
            out[name] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return out


async def _bus(url: str, count: int, pid: int | None) -> tuple[float, dict[str, float], float]:
    topic = _name("cpu", "bus")
    done, warmed = trio.Event(), trio.Event()
    handled = 0

    async def handler(msg: Message) -> None:
        nonlocal handled
        if not warmed.is_set():
            warmed.set()
            return
        handled += 1
        if handled == count:
            done.set()

    async with open_bus(NatsConfig(servers=url, bridge="thread"), options=BusOptions(lanes=64)) as bus:
        await bus.publish(topic, b"warm-up", confirm=True)
        await bus.subscribe(topic, handler, group="bench")
        await warmed.wait()
        before, server = _threads(), _server_cpu(pid)
        start = _clock()
        await _bus_burst(bus, topic, count)
        await done.wait()
        elapsed = _clock() - start
        after, server = _threads(), _server_cpu(pid) - server
    await _delete_stream(url, "TEB_" + topic)
    used = {name: (after[name] - before[name]) / count * 1e6 for name in ("MainThread", "loop")}
    return count / elapsed, used, server / count * 1e6


def _aio(url: str, count: int) -> tuple[float, float]:
    async def leg() -> tuple[float, float]:
        from nats.js.api import StreamConfig

        nc, js = await _aio_connect(url)
        topic = _name("cpu", "aio")
        await js.add_stream(StreamConfig(name=topic, subjects=[topic]))
        try:
            cpu, start = time.thread_time(), _clock()
            consumer = asyncio.ensure_future(_aio_consume(js, topic, topic, count, []))
            await _aio_publish(js, topic, count)
            await consumer
            return count / (_clock() - start), (time.thread_time() - cpu) / count * 1e6
        finally:
            await js.delete_stream(topic)
            await nc.close()

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(leg())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _round(url: str, count: int, pid: int | None, cli: str | None, legs: set[str]) -> None:
    if "bus" in legs:
        await _bus_round(url, count, pid)
    if "nats-py" in legs:
        await _aio_round(url, count, pid)
    if "nats-bench" in legs and cli is not None:
        await _natsbench_round(url, count, pid, cli)


async def _bus_round(url: str, count: int, pid: int | None) -> None:
    rate, used, server = await _bus(url, count, pid)
    total = sum(used.values())
    print(
        f"bus        {rate:8,.0f} msgs/s  {total:5.1f} us/msg (trio {used['MainThread']:.1f}, loop {used['loop']:.1f})"
        f"  capacity {1e6 / total:8,.0f}/s  server {server:5.1f} us/msg",
        flush=True,
    )


async def _aio_round(url: str, count: int, pid: int | None) -> None:
    server = _server_cpu(pid)
    rate, cpu = await trio.to_thread.run_sync(_aio, url, count)
    server = (_server_cpu(pid) - server) / count * 1e6
    capacity = 1e6 / cpu
    print(
        f"nats-py    {rate:8,.0f} msgs/s  {cpu:5.1f} us/msg  capacity {capacity:8,.0f}/s  server {server:5.1f} us/msg",
        flush=True,
    )


async def _natsbench_round(url: str, count: int, pid: int | None, cli: str) -> None:
    children, server = _children_cpu(), _server_cpu(pid)
    figures = await trio.to_thread.run_sync(lambda: nats_bench(cli, url, count, alone=False))
    cpu = (_children_cpu() - children) / count * 1e6  # both processes, their start-up included
    server = (_server_cpu(pid) - server) / count * 1e6
    rate = figures["natsbench_e2e_msgs_per_s"]
    print(f"nats bench {rate:8,.0f} msgs/s  {cpu:5.1f} us/msg (2 processes)  server {server:5.1f} us/msg", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_nats_cpu", description=__doc__)
    parser.add_argument("messages", nargs="?", type=int, default=50_000)
    parser.add_argument("rounds", nargs="?", type=int, default=3)
    parser.add_argument("--url", default=None, help="a running server (default: start a local one)")
    parser.add_argument("--legs", default="bus,nats-py,nats-bench", help="comma-separated: bus, nats-py, nats-bench")
    args = parser.parse_args()
    legs = set(args.legs.split(","))
    cli = locate_natscli()

    def run(url: str) -> None:
        pid = _server_pid(url)
        trio.run(_bus, url, min(args.messages, 10_000), pid)  # warm-up (first-use costs, the server's caches)
        for _ in range(args.rounds):
            trio.run(_round, url, args.messages, pid, cli, legs)

    if args.url is not None:
        run(args.url)
    else:
        with NatsServer() as server:
            run(server.url)


if __name__ == "__main__":
    main()
