"""Command line: ``python -m trio_eventbus demo [--backend memory|nats|kafka] [--url URL]``.

Without ``--url``, ``--backend nats|kafka`` starts a throw-away local broker for the run (nats-server from the
PATH; Kafka from the cache that ``python tools/provision.py`` fills) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

import trio

from .._app.url import config_from_url
from .._lifecycle import BackendConfig

__all__ = ["main"]


def make_config(backend: str, url: str | None) -> BackendConfig:
    """The backend config named on the command line (:func:`trio_eventbus.config_from_url` of ``--url``)."""
    if backend == "memory":
        return config_from_url("memory://")
    if url is None:
        raise SystemExit(f"--backend {backend} needs --url (a running broker)")
    return config_from_url(url if "://" in url else f"{backend}://{url}")


@contextlib.contextmanager
def broker_url(backend: str, url: str | None) -> Iterator[str | None]:
    """``url`` as given, or the address of a local broker started for the duration of the block."""
    if url is not None or backend == "memory":
        yield url
        return
    from ..testing.servers import KafkaServer, NatsServer

    server: NatsServer | KafkaServer = NatsServer() if backend == "nats" else KafkaServer()
    print(f"starting a local {backend} broker for this run ...", file=sys.stderr)
    with server:
        yield server.url if isinstance(server, NatsServer) else server.bootstrap


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_topic, print_report, run_demo

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m trio_eventbus``."""
    parser = argparse.ArgumentParser(prog="python -m trio_eventbus", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="an order service with per-aggregate order checks")
    add_broker_arguments(p)
    p.add_argument("--orders", type=int, default=500)
    p.add_argument("--events", type=int, default=8, help="events per order")
    p.add_argument("--lanes", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with broker_url(args.backend, args.url) as url:
        args.url = url
        return _demo(args)


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--url``, shared with the benchmark harness."""
    parser.add_argument("--backend", choices=("memory", "nats", "kafka"), default="memory")
    parser.add_argument(
        "--url", help="broker URL (nats://host:port) or Kafka bootstrap (host:port); default: a local broker"
    )
