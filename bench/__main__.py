"""``python -m bench --backend memory|nats|kafka [--bridge thread|trio-asyncio] [--messages N] [--json]``.

``--backend nats --instances 1,2,3``: a consumer group of 1, 2 and 3 instances (``bench/nats_groups.py``)
instead of the bus-versus-nats-py legs.

Without ``--url``, ``--backend nats|kafka`` starts a throw-away local broker (as ``python -m trio_eventbus demo``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import trio

from trio_eventbus.cli.main import add_broker_arguments, broker_url


def _bench(args: argparse.Namespace) -> int:
    figures: dict[str, Any]
    if args.messages is None:
        args.messages = 200_000 if args.backend == "kafka" else 50_000
    if args.backend == "memory":
        from .memory import bench_memory

        figures = trio.run(lambda: bench_memory(messages=args.messages, rounds=args.rounds))
    elif args.backend == "nats":
        if args.url is None:
            raise SystemExit("--backend nats needs --url")
        if args.instances:
            from .nats_groups import bench_nats_groups

            sizes = [int(n) for n in args.instances.split(",")]
            figures = trio.run(lambda: bench_nats_groups(args.url, instances=sizes, messages=args.messages))
        else:
            from .nats import bench_nats

            figures = trio.run(lambda: bench_nats(args.url, messages=args.messages, bridge=args.bridge))
    else:
        if args.url is None:
            raise SystemExit("--backend kafka needs --url")
        from .kafka import bench_kafka

        figures = trio.run(lambda: bench_kafka(args.url, messages=args.messages, bridge=args.bridge))
    figures = {"backend": args.backend, **figures}
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            if isinstance(value, bool | str) or not isinstance(value, int | float):
                shown = str(value)
            elif isinstance(value, float) and not value.is_integer():
                shown = f"{value:,.3f}"
            else:
                shown = f"{value:,.0f}"
            print(f"{key:<{width}}  {shown}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_broker_arguments(parser)
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="messages per leg (default 50,000; kafka 200,000: at ~50k msgs/s a shorter saturated leg "
        "lasts about a second and measures the start-up transient more than the steady state)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="memory: alternating rounds per leg")
    parser.add_argument("--bridge", choices=("auto", "thread", "trio-asyncio"), default="thread")
    parser.add_argument("--json", action="store_true", help="print one machine-readable line")
    parser.add_argument(
        "--instances",
        default=None,
        help="nats: comma-separated group sizes (e.g. 1,2,3): e2e and paced figures of a group of that many "
        "instances on a 6-partition topic, after today's single-instance layout",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with broker_url(args.backend, args.url) as url:
        args.url = url
        return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
