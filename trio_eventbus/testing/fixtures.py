"""pytest plugin with fixtures that run real local brokers (see :mod:`trio_eventbus.testing.servers`).

Register it once, in the root ``conftest.py``::

    pytest_plugins = ["trio_eventbus.testing.fixtures"]

Fixtures (all synchronous; a missing ``nats-server``/``java``/Kafka cache is a test ERROR naming the install
step, never a skip):

``nats_url`` (session)
    URL of a NATS server with JetStream: ``$TEB_NATS_URL`` if set, else one ``nats-server`` started for the
    whole session. Shared: use a unique stream/subject per test.
``nats_server`` (function)
    A private, started :class:`~trio_eventbus.testing.servers.NatsServer` the test may ``stop()``,
    ``start()`` or ``restart()`` (same port and store). Always a local process, even with ``$TEB_NATS_URL``.
``nats_auth_server`` (session)
    A private NATS server requiring ``user``/``password`` (attributes ``.user``, ``.password``,
    ``.auth_url``). Do not restart it (shared by the session).
``kafka_bootstrap`` (session)
    ``host:port`` of a PLAINTEXT Kafka broker: ``$TEB_KAFKA_BOOTSTRAP`` if set, else one local KRaft broker
    for the session. Topic auto-creation is off on the local broker: create topics (unique per test).
``kafka_server`` (function)
    A private, started :class:`~trio_eventbus.testing.servers.KafkaServer` the test may stop/restart (same
    ports and data). Costs ~5 s of broker start-up per test: use it only for restart tests.
``kafka_sasl_server`` (session)
    A private broker whose ``bootstrap`` is SASL_PLAINTEXT/PLAIN with the user ``teb``/``teb-secret``
    (``.sasl_users``). Do not restart it (shared by the session).

From a Trio test, call the blocking ``stop``/``start``/``restart`` through ``trio.to_thread.run_sync``, or
use :func:`restart_hook` (an async callable, e.g. the ``restart`` of a conformance ``BackendCase``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import trio

from trio_eventbus.testing.servers import BrokerStartError, KafkaServer, NatsServer

__all__ = [
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_USER",
    "NATS_AUTH_PASSWORD",
    "NATS_AUTH_USER",
    "kafka_bootstrap",
    "kafka_sasl_server",
    "kafka_server",
    "nats_auth_server",
    "nats_server",
    "nats_url",
    "restart_hook",
]

NATS_AUTH_USER = "teb"
NATS_AUTH_PASSWORD = "teb-secret"
KAFKA_SASL_USER = "teb"
KAFKA_SASL_PASSWORD = "teb-secret"

_S = TypeVar("_S", NatsServer, KafkaServer)


def _started(server: _S) -> _S:
    """Start ``server``; turn a start failure into a test error with the broker's message/log."""
    try:
        server.start()
    except BrokerStartError as exc:
        message = str(exc)
    else:
        return server
    server.close()
    pytest.fail(message, pytrace=False)  # outside the except block: no chained traceback in the report


def restart_hook(server: NatsServer | KafkaServer) -> Callable[[], Awaitable[None]]:
    """An async callable that restarts ``server`` (stop, then start on the same ports and store) in a worker
    thread, so only the awaiting task waits; a failed start raises :class:`BrokerStartError`."""

    async def restart() -> None:
        await trio.to_thread.run_sync(server.restart)

    return restart


def _serve(server: _S) -> Iterator[_S]:
    _started(server)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """``$TEB_NATS_URL`` or the URL of a session-wide local nats-server with JetStream."""
    env = os.environ.get("TEB_NATS_URL")
    if env:
        yield env
        return
    for server in _serve(NatsServer()):
        yield server.url


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A private, started NatsServer for this test; it may stop/start/restart it."""
    yield from _serve(NatsServer())


@pytest.fixture(scope="session")
def nats_auth_server() -> Iterator[NatsServer]:
    """A session-wide NatsServer requiring NATS_AUTH_USER / NATS_AUTH_PASSWORD."""
    yield from _serve(NatsServer(user=NATS_AUTH_USER, password=NATS_AUTH_PASSWORD))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``$TEB_KAFKA_BOOTSTRAP`` or the bootstrap address of a session-wide local Kafka broker."""
    env = os.environ.get("TEB_KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    for server in _serve(KafkaServer()):
        yield server.bootstrap


@pytest.fixture
def kafka_server() -> Iterator[KafkaServer]:
    """A private, started KafkaServer for this test; it may stop/start/restart it."""
    yield from _serve(KafkaServer())


@pytest.fixture(scope="session")
def kafka_sasl_server() -> Iterator[KafkaServer]:
    """A session-wide KafkaServer whose ``bootstrap`` is SASL_PLAINTEXT/PLAIN (KAFKA_SASL_USER/PASSWORD)."""
    yield from _serve(KafkaServer(sasl_users={KAFKA_SASL_USER: KAFKA_SASL_PASSWORD}))
