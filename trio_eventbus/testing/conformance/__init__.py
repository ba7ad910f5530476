"""The backend conformance suite: one class of behaviour checks that every backend must pass.

Subclass :class:`BackendConformance` in a test module (the class name must start with ``Test`` so pytest
collects it; the checks are its inherited ``test_*`` methods) and provide the ``backend_case`` fixture::

    import pytest
    from trio_eventbus.testing.conformance import BackendCase, BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend_case(self) -> BackendCase:
            config = MyConfig(url=...)
            return BackendCase("mine", lambda: config, config.create_backend().features)

        @pytest.fixture  # optional: a private broker the restart scenario may stop and start
        def restart_case(self, my_private_server) -> BackendCase:
            async def restart() -> None:
                await trio.to_thread.run_sync(my_private_server.restart)
            return BackendCase("mine", ..., restart=restart)

A :class:`BackendCase` makes configs for one check (several buses of one check must reach the same broker),
states the backend's :class:`~trio_eventbus.BackendFeatures` and optionally a ``restart`` hook. A check that
needs a feature the backend lacks is skipped with ``"<backend> lacks <feature>: <why>"`` (``reasons`` in the
case can give the backend's own why); none passes without running. Every feature flag gates at least one
check; checks for the fallback behaviour of a lacking backend skip backends that have the feature.

The case fixtures must be synchronous (the suite reads the features before the Trio run starts, so that a
skip keeps its reason); an async context the checks need, such as ``trio_asyncio.open_loop()``, goes in
``BackendCase.context``. Every check runs under ``trio.fail_after(case.timeout)`` inside that context, waits
on events rather than sleeping, uses unique topic names and opens each bus under a task-leak watch
(:mod:`trio_eventbus.testing.leaks`).
"""

from __future__ import annotations

from ._case import (
    FEATURES,
    BackendCase,
    Counter,
    envelope,
    fast_retry,
    lacking,
    open_watched_bus,
    requires,
    running,
    seq_of,
    skip_reason,
    unique_topic,
)
from ._restart import RestartReport, restart_scenario
from ._suite import BackendConformance

__all__ = [
    "FEATURES",
    "BackendCase",
    "BackendConformance",
    "Counter",
    "RestartReport",
    "envelope",
    "fast_retry",
    "lacking",
    "open_watched_bus",
    "requires",
    "restart_scenario",
    "running",
    "seq_of",
    "skip_reason",
    "unique_topic",
]
