"""An order service that publishes domain events and tracks their publish results, as an outbox relay would.

python examples/producer.py                                  # in-memory broker (or $TEB_URL)
python examples/producer.py --url nats://127.0.0.1:4222
python examples/producer.py --url kafka://127.0.0.1:9092
"""

from __future__ import annotations

import argparse

import trio

import trio_eventbus as teb


async def main(config: teb.BackendConfig, orders: int) -> None:
    unconfirmed: set[str] = set()  # stands in for the outbox table's "pending" rows
    async with trio.open_nursery() as nursery, teb.open_bus(config) as bus:
        results = bus.publish_results()  # open it before publishing: one result per envelope

        async def mark_outbox_rows() -> None:
            async for result in results:
                if result.success:
                    unconfirmed.discard(result.event_id)  # UPDATE outbox SET sent = true WHERE id = ...
                else:
                    print(f"publish of {result.event_id} failed, will retry: {result.error}")

        nursery.start_soon(mark_outbox_rows)
        for order in range(orders):
            for version, event_type in enumerate(("OrderCreated", "OrderPaid", "OrderShipped"), start=1):
                event = teb.Envelope(
                    aggregate_id=f"order-{order}",
                    event_type=event_type,
                    event_version=version,
                    payload=b'{"order": %d}' % order,
                )
                unconfirmed.add(event.event_id)
                await bus.publish_envelope("shop.orders", event)
        await bus.flush()  # every publish above has its broker ack (or failure) now
    print(f"published {orders * 3} events, {len(unconfirmed)} unconfirmed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="memory://, nats://host:4222 or kafka://host:9092 (default: $TEB_URL)")
    parser.add_argument("--orders", type=int, default=100)
    args = parser.parse_args()
    config = teb.config_from_url(args.url) if args.url else teb.config_from_env()
    trio.run(main, config, args.orders)
