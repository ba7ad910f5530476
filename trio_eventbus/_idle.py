"""Whether a bus is idle: the condition behind ``EventBus.wait_idle()``.

A bus is idle at an instant when, all read without awaiting (so the figures are one consistent snapshot):

- its publisher holds nothing: no message submitted without its outcome (``Statistics.pending_publishes``);
- its dispatch holds nothing: every lane and the worker pool are empty and no handler runs;
- its backend holds nothing: no delivery handed to the bus is unsettled and no outcome is pending
  (``BackendStatistics.unsettled`` and ``pending_outcomes``);
- where the backend can tell (it has a ``backlog()`` method, :class:`ReportsBacklog`), nothing waits on the
  broker for this bus's subscriptions: not delivered yet, waiting for a redelivery, or delivered to another
  member of the group and unsettled. The memory backend tells exactly; NATS and Kafka do not (a message the
  broker holds but has not sent to this bus yet is not seen).

There is no event for "idle" on the hot path (adding one would cost every message), so
``EventBus.wait_idle`` awaits the publisher's flush frontier (event-driven) and then checks this condition
every :data:`IDLE_POLL_INTERVAL` seconds (Trio's clock: under ``autojump_clock`` the checks take no real time).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._abc import Backend
from ._dispatch.dispatcher import Dispatcher
from ._publish.pipeline import PublishPipeline

__all__ = ["IDLE_POLL_INTERVAL", "ReportsBacklog", "is_idle"]

#: Seconds between two checks of :func:`is_idle` in ``EventBus.wait_idle``.
IDLE_POLL_INTERVAL = 0.005


@runtime_checkable
class ReportsBacklog(Protocol):
    """A backend that can tell how many messages of its subscriptions the broker still holds unsettled."""

    def backlog(self) -> int:
        """Messages of this bus's subscriptions not settled by their group yet (undelivered, waiting for
        redelivery, or delivered and unsettled). Never awaits."""


def is_idle(publisher: PublishPipeline, dispatcher: Dispatcher, backend: Backend) -> bool:
    """Whether the bus is idle now (see the module docstring). Never awaits."""
    if publisher.pending:
        return False
    if dispatcher.in_flight or any(dispatcher.lanes.depths()) or any(dispatcher.workers.depths()):
        return False
    stats = backend.statistics()
    if stats.unsettled or stats.pending_outcomes:
        return False
    return not isinstance(backend, ReportsBacklog) or backend.backlog() == 0
