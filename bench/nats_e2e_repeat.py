"""Repeat the NATS saturated end-to-end leg on one local nats-server, printing each run's figures and the bus's
statistics for any run slower than a threshold (to catch the rare stall noted in NOTES.md).

Usage: ``python -m bench.nats_e2e_repeat [RUNS] [--messages N] [--slow MSGS_PER_S]``
"""

from __future__ import annotations

import argparse

import trio

from trio_eventbus import BusOptions, Message, NatsConfig, open_bus
from trio_eventbus.testing.servers import NatsServer

from .nats import _body, _bus_burst, _clock, _name, _stamp


async def run_once(url: str, index: int, messages: int, slow: float) -> None:
    """One e2e leg (publish ``messages`` with the nowait form while one subscriber handles them)."""
    topic = _name("e2e", f"repeat{index}")
    latencies: list[float] = []
    done, warmed = trio.Event(), trio.Event()

    async def handler(msg: Message) -> None:
        if not warmed.is_set():
            warmed.set()
            return
        latencies.append(_clock() - _stamp(msg.data))
        if len(latencies) == messages:
            done.set()

    async with open_bus(NatsConfig(servers=url, bridge="thread"), options=BusOptions(lanes=64)) as bus:
        await bus.publish(topic, _body(0), confirm=True)
        await bus.subscribe(topic, handler, group="bench")
        await warmed.wait()
        start = _clock()
        await _bus_burst(bus, topic, messages)
        await done.wait()
        rate = messages / (_clock() - start)
        stats = bus.statistics()
    p99 = sorted(latencies)[int(len(latencies) * 0.99)] * 1000
    print(f"{index} {rate:,.0f} msgs/s p99 {p99:,.0f} ms failed {stats.publish_failed}", flush=True)
    if rate < slow:
        print(f"SLOW {stats!r}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nats_e2e_repeat", description=__doc__)
    parser.add_argument("runs", type=int, nargs="?", default=20)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--slow", type=float, default=10_000.0, help="print statistics below this rate")
    args = parser.parse_args()
    with NatsServer() as server:
        for index in range(args.runs):
            trio.run(run_once, server.url, index, args.messages, args.slow)


if __name__ == "__main__":
    main()
