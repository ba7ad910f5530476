"""A service run by ``teb.run`` in a child process, for tests/test_runner.py (not a test module).

    python tests/runner_child.py graceful|hard|return

It subscribes to ``jobs`` (group ``svc``) on a memory broker it keeps a handle on, publishes three messages of
one key and prints ``ready`` to stdout once the first message is being handled. Modes:

- ``graceful``: the handler of the first message waits until the runner has logged the first signal, then
  finishes; every message is handled;
- ``hard``: the handler never finishes (a stuck handler): only a hard stop ends the close early;
- ``return``: ``main`` waits until the bus is idle and returns.

After ``teb.run`` returns it prints one line of figures: ``handled=H pending=P closed=C`` (``pending``: messages
the group ``svc`` has not acked, counted by the broker: nak'ed ones come back to it, so they count here).
"""

from __future__ import annotations

import logging
import sys

import trio

import trio_eventbus as teb


class _SignalSeen(logging.Handler):
    """Sets ``event`` when the runner logs that it received a signal."""

    def __init__(self, event: trio.Event) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("received SIG"):
            self.event.set()


def main() -> None:
    mode = sys.argv[1]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    broker = teb.MemoryBroker()
    handled = 0
    bus_seen: list[teb.EventBus] = []

    async def service(bus: teb.EventBus) -> None:
        bus_seen.append(bus)
        signalled = trio.Event()
        logging.getLogger("trio_eventbus").addHandler(_SignalSeen(signalled))

        async def on_job(message: teb.Message) -> None:
            nonlocal handled
            if message.data == b"0":
                print("ready", flush=True)
                if mode == "graceful":
                    await signalled.wait()
                elif mode == "hard":
                    await trio.sleep_forever()
            handled += 1

        await bus.subscribe("jobs", on_job, group="svc")
        for n in range(3):
            await bus.publish("jobs", b"%d" % n, key="one-key")
        if mode == "return":
            await bus.wait_idle()
            return
        await trio.sleep_forever()

    teb.run(teb.MemoryConfig(broker=broker), service, options=teb.BusOptions(close_timeout=20.0))
    pending = broker.topic_statistics("jobs")["pending[svc]"]
    closed = bus_seen[0].statistics().closing
    print(f"handled={handled} pending={pending} closed={closed}", flush=True)


if __name__ == "__main__":
    main()
