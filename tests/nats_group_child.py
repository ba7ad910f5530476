"""A member of a NATS consumer group in a child process, for tests/test_nats_groups.py (not a test module).

    python tests/nats_group_child.py URL TOPIC GROUP PARTITIONS SLOW_AFTER

Opens a bus (short group timings: heartbeat 0.2 s, session timeout 1 s, pinned_ttl 2 s), subscribes to TOPIC
in GROUP with a 0-2 ms handler (20 ms once it handled SLOW_AFTER envelopes: a slow downstream, so that it
holds a backlog in its lanes when it is killed; 0: never) and writes one line per event to stdout, flushed at
once: ``ready`` once subscribed, ``S <key>`` when a handling starts and ``H <key> <seq>`` when it ends. The
parent kills it with SIGKILL (nothing is flushed or acked at the kill: the figures it read are all there is).
"""

from __future__ import annotations

import random
import sys

import trio

import trio_eventbus as teb
from trio_eventbus.backends.nats.config import NatsConfig
from trio_eventbus.testing.conformance import seq_of

GROUP_TIMINGS = {"group_heartbeat": 0.2, "group_session_timeout": 1.0, "pinned_ttl": 2.0}


async def main(url: str, topic: str, group: str, partitions: int, slow_after: int) -> None:
    rng = random.Random()
    out = sys.stdout
    handled = 0

    async def handle(env: teb.Envelope) -> None:
        nonlocal handled
        out.write(f"S {env.aggregate_id}\n")
        out.flush()
        slow = 0 < slow_after <= handled
        await trio.sleep(0.02 if slow else rng.random() * 0.002)
        handled += 1
        out.write(f"H {env.aggregate_id} {seq_of(env)}\n")
        out.flush()

    async with teb.open_bus(NatsConfig(servers=url, **GROUP_TIMINGS)) as bus:
        await bus.configure_topic(topic, teb.TopicOptions(partitions=partitions))
        await bus.subscribe_envelope(topic, handle, group=group)
        out.write("ready\n")
        out.flush()
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
