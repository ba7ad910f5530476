"""A shipping service that consumes order events in order per order, with retries and a dead-letter topic.

    python examples/consumer.py                                   # in-memory broker, seeds a few events itself
    python examples/consumer.py --url nats://127.0.0.1:4222       # run producer.py alongside (or kafka://...)

Its subscriptions are declared with ``teb.Subscribers`` decorators and it runs under ``teb.run``: Ctrl-C or
SIGTERM closes the bus gracefully (handlers finish and ack what they hold), a second signal stops at once.
Stops by itself after ``--expect`` events, handled or dead-lettered (default: the 300 that producer.py
publishes). Without ``--url`` it reads the URL from ``$TEB_URL`` (default ``memory://``).
"""

from __future__ import annotations

import argparse
import logging

import attrs
import trio

import trio_eventbus as teb


@attrs.define
class Tally:
    expect: int
    handled: int = 0
    dead: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)

    def count(self) -> None:
        if self.handled + self.dead >= self.expect:
            self.done.set()


def shipping(tally: Tally) -> teb.Subscribers:
    """The service's subscriptions: order events (group: the service, "shipping") and their dead letters."""
    subscribers = teb.Subscribers()

    @subscribers.subscriber("shop.orders", envelope=True)
    async def on_order_event(event: teb.Envelope) -> None:
        if event.event_type == "OrderShipped" and b"fragile" in event.payload:
            raise RuntimeError("no fragile goods today")  # retried 3 times, then dead-lettered
        tally.handled += 1  # events of one order arrive in the order they were published
        tally.count()

    @subscribers.subscriber("shop.orders.dlq", group="shipping-alerts")
    async def on_dead_letter(message: teb.Message) -> None:
        tally.dead += 1
        print(f"dead letter from {message.headers['X-DLQ-Topic']}: {message.headers['X-DLQ-Error']}")
        tally.count()

    return subscribers


async def seed(bus: teb.EventBus) -> None:
    """On the in-memory broker nobody else publishes: two orders, the second one fragile."""
    for order, payload in enumerate((b'{"item": "book"}', b'{"item": "fragile vase"}')):
        for version, kind in enumerate(("OrderCreated", "OrderPaid", "OrderShipped"), start=1):
            event = teb.Envelope(aggregate_id=f"order-{order}", event_type=kind, event_version=version, payload=payload)
            await bus.publish_envelope("shop.orders", event)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="memory://, nats://host:4222 or kafka://host:9092 (default: $TEB_URL)")
    parser.add_argument("--expect", type=int)
    args = parser.parse_args()
    config = teb.config_from_url(args.url) if args.url else teb.config_from_env()
    memory = isinstance(config, teb.MemoryConfig)
    tally = Tally(expect=args.expect if args.expect is not None else (6 if memory else 300))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    async def service(bus: teb.EventBus) -> None:
        if memory:
            await seed(bus)
        await tally.done.wait()
        print(f"handled {tally.handled} events, dead-lettered {tally.dead}; {bus!r}")

    options = teb.BusOptions(service="shipping", retry=teb.RetryPolicy(max_attempts=3, initial_backoff=0.05))
    teb.run(config, service, options=options, subscribers=shipping(tally))


if __name__ == "__main__":
    main()
