"""A shipping service that consumes order events in order per order, with retries and a dead-letter topic.

    python examples/consumer.py                                  # in-memory broker, seeds a few events itself
    python examples/consumer.py --backend nats --url nats://127.0.0.1:4222   # run producer.py alongside

Stops after ``--expect`` events, handled or dead-lettered (default: the 300 that producer.py publishes).
"""

from __future__ import annotations

import argparse
import logging

import trio

import trio_eventbus as teb
from trio_eventbus.cli.main import make_config


async def main(config: teb.BackendConfig, expect: int, seed: bool) -> None:
    done = trio.Event()
    handled = dead = 0
    options = teb.BusOptions(retry=teb.RetryPolicy(max_attempts=3, initial_backoff=0.05))

    async def on_order_event(event: teb.Envelope) -> None:
        nonlocal handled
        if event.event_type == "OrderShipped" and b"fragile" in event.payload:
            raise RuntimeError("no fragile goods today")  # retried 3 times, then dead-lettered
        handled += 1  # events of one order arrive in the order they were published
        if handled + dead >= expect:
            done.set()

    async def on_dead_letter(message: teb.Message) -> None:
        nonlocal dead
        dead += 1
        print(f"dead letter from {message.headers['X-DLQ-Topic']}: {message.headers['X-DLQ-Error']}")
        if handled + dead >= expect:
            done.set()

    async with teb.open_bus(config, options=options) as bus:
        await bus.subscribe_envelope("shop.orders", on_order_event, group="shipping")
        await bus.subscribe("shop.orders.dlq", on_dead_letter, group="shipping-alerts")
        if seed:
            for order, payload in enumerate((b'{"item": "book"}', b'{"item": "fragile vase"}')):
                for version, kind in enumerate(("OrderCreated", "OrderPaid", "OrderShipped"), start=1):
                    await bus.publish_envelope(
                        "shop.orders",
                        teb.Envelope(
                            aggregate_id=f"order-{order}", event_type=kind, event_version=version, payload=payload
                        ),
                    )
        await done.wait()
        print(f"handled {handled} events, dead-lettered {dead}; {bus!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("memory", "nats", "kafka"), default="memory")
    parser.add_argument("--url")
    parser.add_argument("--expect", type=int)
    args = parser.parse_args()
    memory = args.backend == "memory"
    expect = args.expect if args.expect is not None else (6 if memory else 300)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main, make_config(args.backend, args.url), expect, memory)
