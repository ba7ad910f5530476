"""A fixed load on the bus core for bench/callgrind_core.sh: N raw publishes to one raw subscriber.

The publishes use the hot-loop form, ``publish_nowait`` (awaiting ``publish`` only when the window is full);
``core_load.py N await`` awaits ``publish`` for every message instead (a checkpoint, so one scheduler pass per
message: the cost of the awaited form in a tight loop).
"""

from __future__ import annotations

import sys

import trio

from trio_eventbus import BusOptions, MemoryConfig, Message, TopicOptions, open_bus


async def run(messages: int, form: str = "nowait") -> None:
    done = trio.Event()
    seen = 0

    async def handler(message: Message) -> None:
        nonlocal seen
        seen += 1
        if seen == messages:
            done.set()

    async with open_bus(MemoryConfig(), options=BusOptions(service="g")) as bus:
        await bus.configure_topic("t", TopicOptions(partitions=3))
        await bus.subscribe("t", handler)
        body = b"x" * 256
        if form == "await":
            for i in range(messages):
                await bus.publish("t", body, key=f"k{i % 100}")
        else:
            for i in range(messages):
                key = f"k{i % 100}"
                try:
                    bus.publish_nowait("t", body, key=key)
                except trio.WouldBlock:
                    await bus.publish("t", body, key=key)
        await done.wait()


if __name__ == "__main__":
    trio.run(run, int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "nowait")
