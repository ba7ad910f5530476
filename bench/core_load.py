"""A fixed load on the bus core for bench/callgrind_core.sh: N raw publishes to one raw subscriber."""

from __future__ import annotations

import sys

import trio

from trio_eventbus import BusOptions, MemoryConfig, Message, TopicOptions, open_bus


async def run(messages: int) -> None:
    done = trio.Event()
    seen = 0

    async def handler(message: Message) -> None:
        nonlocal seen
        seen += 1
        if seen == messages:
            done.set()

    async with open_bus(MemoryConfig(), options=BusOptions(group="g")) as bus:
        await bus.configure_topic("t", TopicOptions(partitions=3))
        await bus.subscribe("t", handler)
        body = b"x" * 256
        for i in range(messages):
            await bus.publish("t", body, key=f"k{i % 100}")
        await done.wait()


if __name__ == "__main__":
    trio.run(run, int(sys.argv[1]))
