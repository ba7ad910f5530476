"""Command line: ``python -m trio_eventbus demo|bench [--backend memory|nats|kafka] [--url URL]``.

Without ``--url``, ``--backend nats|kafka`` starts a throw-away local broker for the run (nats-server from the
PATH; Kafka from the cache that ``python tools/provision.py`` fills) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import trio

from ._bus import BackendConfig

__all__ = ["main"]


def make_config(backend: str, url: str | None) -> BackendConfig:
    """The backend config named on the command line."""
    if backend == "memory":
        from .backends.memory import MemoryConfig

        return MemoryConfig()
    if url is None:
        raise SystemExit(f"--backend {backend} needs --url (a running broker)")
    if backend == "nats":
        from .backends.nats_config import NatsConfig

        return NatsConfig(servers=url)
    from .backends.kafka_config import KafkaConfig

    return KafkaConfig(bootstrap_servers=url)


@contextlib.contextmanager
def broker_url(backend: str, url: str | None) -> Iterator[str | None]:
    """``url`` as given, or the address of a local broker started for the duration of the block."""
    if url is not None or backend == "memory":
        yield url
        return
    from .testing.servers import KafkaServer, NatsServer

    server: NatsServer | KafkaServer = NatsServer() if backend == "nats" else KafkaServer()
    print(f"starting a local {backend} broker for this run ...", file=sys.stderr)
    with server:
        yield server.url if isinstance(server, NatsServer) else server.bootstrap


def _demo(args: argparse.Namespace) -> int:
    from ._demo import demo_topic, print_report, run_demo

    config = make_config(args.backend, args.url)
    print(
        f"trio_eventbus demo: {args.orders} orders x {args.events} events on the {args.backend} backend, "
        f"{args.lanes} keyed lanes"
    )
    report = trio.run(
        lambda: run_demo(
            config,
            orders=args.orders,
            events_per_order=args.events,
            lanes=args.lanes,
            topic=demo_topic(args.backend),
            progress=sys.stderr,
        )
    )
    print_report(report)
    return 0 if report.violations == 0 and report.handled == report.published else 1


def _bench(args: argparse.Namespace) -> int:
    figures: dict[str, Any]
    if args.messages is None:
        args.messages = 200_000 if args.backend == "kafka" else 50_000
    if args.backend == "memory":
        from ._bench import bench_memory

        figures = trio.run(lambda: bench_memory(messages=args.messages, rounds=args.rounds))
    elif args.backend == "nats":
        if args.url is None:
            raise SystemExit("--backend nats needs --url")
        from ._bench_nats import bench_nats

        figures = trio.run(lambda: bench_nats(args.url, messages=args.messages, bridge=args.bridge))
    else:
        if args.url is None:
            raise SystemExit("--backend kafka needs --url")
        from ._bench_kafka import bench_kafka

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
    """Entry point of ``python -m trio_eventbus``."""
    parser = argparse.ArgumentParser(prog="python -m trio_eventbus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("demo", "bench"):
        p = sub.add_parser(name)
        p.add_argument("--backend", choices=("memory", "nats", "kafka"), default="memory")
        p.add_argument(
            "--url", help="broker URL (nats://host:port) or Kafka bootstrap (host:port); default: a local broker"
        )
        if name == "demo":
            p.add_argument("--orders", type=int, default=500)
            p.add_argument("--events", type=int, default=8, help="events per order")
            p.add_argument("--lanes", type=int, default=32)
        else:
            p.add_argument(
                "--messages",
                type=int,
                default=None,
                help="messages per leg (default 50,000; kafka 200,000: at ~50k msgs/s a shorter saturated leg "
                "lasts about a second and measures the start-up transient more than the steady state)",
            )
            p.add_argument("--rounds", type=int, default=3, help="memory: alternating rounds per leg")
            p.add_argument("--bridge", choices=("auto", "thread", "trio-asyncio"), default="thread")
            p.add_argument("--json", action="store_true", help="print one machine-readable line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with broker_url(args.backend, args.url) as url:
        args.url = url
        return _demo(args) if args.command == "demo" else _bench(args)
