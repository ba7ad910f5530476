"""The conformance suite (trio_eventbus.testing.conformance) run on every backend.

Backends add a parameter to ``backend_case`` with their marker; broker cases take their broker from the
fixtures in trio_eventbus.testing.fixtures (a missing broker is an error, never a skip).
"""

from __future__ import annotations

import pytest

import trio_eventbus as teb
from trio_eventbus.testing.conformance import *  # noqa: F403
from trio_eventbus.testing.conformance import BackendCase


def _memory_case() -> BackendCase:
    broker = teb.MemoryBroker()
    return BackendCase(
        "memory",
        lambda: teb.MemoryConfig(broker=broker),
        teb.MemoryConfig().create_backend().features,
        timeout=30,
    )


@pytest.fixture(params=["memory"])
def backend_case(request: pytest.FixtureRequest) -> BackendCase:
    if request.param == "memory":
        return _memory_case()
    raise AssertionError(request.param)
