"""Helpers shared by the NATS test modules (not tests)."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from nats.aio.client import Client

from trio_eventbus.backends.nats.config import NatsConfig

T = TypeVar("T")
_ids = itertools.count()


def topic_name(stem: str) -> str:
    return f"teb-nt-{stem}-{os.getpid()}-{next(_ids)}"


def config(url: str, **kwargs: Any) -> NatsConfig:
    return NatsConfig(servers=url, **kwargs)


def stream_of(topic: str) -> str:
    return "TEB_" + topic.replace(".", "_")


def bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trio-eventbus-aio-bridge")]


async def on_server(url: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(jetstream_context)`` with a plain nats-py client on a private loop in a worker thread."""

    async def main() -> T:
        nc = Client()
        await nc.connect(url, allow_reconnect=False)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    def run() -> T:
        # trio_asyncio (imported by other tests) replaces the loop policy: pick the loop explicitly
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(main())

    return await trio.to_thread.run_sync(run)
