"""BackendCase (what a conformance subclass provides) and the small helpers its checks share.

A check that needs a feature is marked with :func:`requires` (or, for the fallback of backends without it,
:func:`lacking`); the suite's gate fixture skips it with the reason before the Trio run starts — it never
passes silently. (The skip happens in a synchronous fixture because pytest-trio 0.8 drops the message of a
``pytest.skip`` raised inside the Trio run.) Every :class:`~trio_eventbus.BackendFeatures` flag gates at
least one check.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

import trio_eventbus as teb
from trio_eventbus.backends import BackendFeatures
from trio_eventbus.testing.leaks import watch_task_leaks

__all__ = [
    "FEATURES",
    "BackendCase",
    "Counter",
    "envelope",
    "fast_retry",
    "lacking",
    "open_watched_bus",
    "requires",
    "running",
    "seq_of",
    "skip_reason",
    "unique_topic",
]

#: Why a check needs each flag of BackendFeatures (the default ``<why>`` of a skip), plus the restart hook.
FEATURES: Mapping[str, str] = {
    "persistent": "messages published before a group subscribes are not kept for it",
    "consumer_groups": "groups do not each get every message, or one group does not split them",
    "ordered_per_key": "messages of one key are not stored and delivered in publish order",
    "redelivers": "a NAK with a delay is not redelivered by the broker (the bus retries in place instead)",
    "dedupes": "a message_id stored within duplicate_window is stored again",
    "ephemeral_topics": "TopicOptions(persistent=False) is refused",
    "partitioned_groups": "members of one group do not own disjoint partitions (per-key order in one instance only)",
    "restart": "the case has no restart hook (no broker process to stop and start)",
}


def _check_reasons(case: BackendCase, attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
    unknown = set(value) - set(FEATURES)
    if unknown:
        raise ValueError(f"BackendCase.reasons: unknown features {sorted(unknown)}; known: {sorted(FEATURES)}")


@attrs.frozen
class BackendCase:
    """A backend under test, as a conformance subclass provides it (see :class:`BackendConformance`).

    ``config()`` returns a config for one more bus on the same broker (several buses of one check must meet).
    ``features`` selects the checks. ``timeout`` bounds each check (``trio.fail_after``). ``restart``, when
    given, stops the broker and starts it again on the same port and store (awaitable; it blocks the calling
    task only, so call blocking process managers through ``trio.to_thread.run_sync``). ``context``, when given,
    makes the async context every check runs inside, around all its buses (e.g. ``trio_asyncio.open_loop``
    for a backend bridged into the application's asyncio loop). ``reasons`` gives, per lacking feature (or
    ``"restart"``), the backend's own explanation for the skip.

    The case fixtures (``backend_case``, ``restart_case``) must be synchronous: the suite reads the features
    before the Trio run starts, to skip with the reason. Anything async goes in ``context``.
    """

    name: str
    config: Callable[[], teb.BackendConfig]
    features: BackendFeatures
    timeout: float = 60.0
    restart: Callable[[], Awaitable[None]] | None = None
    context: Callable[[], AbstractAsyncContextManager[object]] | None = None
    reasons: Mapping[str, str] = attrs.field(factory=dict, validator=_check_reasons)


_F = TypeVar("_F", bound=Callable[..., Any])


def requires(*features: str) -> Callable[[_F], _F]:
    """Mark a check as needing ``features`` (BackendFeatures flags, or ``"restart"``): it is skipped with
    ``"<backend> lacks <feature>: <why>"`` on a case without them."""
    _known(features)

    def mark(check: _F) -> _F:
        check.__teb_requires__ = features  # type: ignore[attr-defined]
        return check

    return mark


def lacking(feature: str) -> Callable[[_F], _F]:
    """Mark a check of the fallback behaviour of backends *without* ``feature``: skipped on those that have it."""
    _known((feature,))

    def mark(check: _F) -> _F:
        check.__teb_lacking__ = feature  # type: ignore[attr-defined]
        return check

    return mark


def _known(features: tuple[str, ...]) -> None:
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown features {unknown}; known: {sorted(FEATURES)}")


def _has(case: BackendCase, feature: str) -> bool:
    return case.restart is not None if feature == "restart" else bool(getattr(case.features, feature))


def skip_reason(case: BackendCase, check: Callable[..., Any]) -> str | None:
    """Why ``check`` (marked with :func:`requires` / :func:`lacking`) cannot run on ``case``, or None."""
    for feature in getattr(check, "__teb_requires__", ()):
        if not _has(case, feature):
            return f"{case.name} lacks {feature}: {case.reasons.get(feature, FEATURES[feature])}"
    feature = getattr(check, "__teb_lacking__", None)
    if feature is not None and _has(case, feature):
        return f"{case.name} has {feature}: this check is for the fallback of backends without it"
    return None


@asynccontextmanager
async def running(case: BackendCase, *, timeout_factor: float = 1.0) -> AsyncIterator[None]:
    """The scope of one check: ``trio.fail_after(case.timeout * timeout_factor)`` around ``case.context()``."""
    with trio.fail_after(case.timeout * timeout_factor):
        if case.context is None:
            yield
        else:
            async with case.context():
                yield


@asynccontextmanager
async def open_watched_bus(case: BackendCase, options: teb.BusOptions | None = None) -> AsyncIterator[teb.EventBus]:
    """``teb.open_bus(case.config(), options=options)`` under a task-leak watch: after the block, no task the
    bus spawned (anywhere in the run) may still be alive (see :mod:`trio_eventbus.testing.leaks`)."""
    async with watch_task_leaks(), teb.open_bus(case.config(), options=options) as bus:
        yield bus


_counter = itertools.count()


def unique_topic(case: BackendCase, stem: str) -> str:
    """A topic name no other test (or earlier run against a shared broker) uses."""
    return f"teb-{case.name}-{stem}-{os.getpid()}-{next(_counter)}"


def envelope(aggregate: str, n: int, **extra: Any) -> teb.Envelope:
    """A test envelope whose payload carries its sequence number."""
    return teb.Envelope(aggregate_id=aggregate, event_type="Tested", event_version=1, payload=b'{"n":%d}' % n, **extra)


def seq_of(env: teb.Envelope) -> int:
    """The sequence number stored by :func:`envelope`."""
    return int(env.payload[5:-1])


class Counter:
    """Counts calls and sets ``done`` once ``target`` is reached."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = trio.Event()

    def hit(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.target:
            self.done.set()


def fast_retry(attempts: int = 3, strategy: str = "in_place") -> teb.RetryPolicy:
    """A retry policy with short backoffs (10-50 ms)."""
    return teb.RetryPolicy(max_attempts=attempts, initial_backoff=0.01, max_backoff=0.05, strategy=strategy)  # type: ignore[arg-type]
