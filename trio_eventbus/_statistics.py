"""BackendStatistics: the live figures every backend reports, under the same names wherever they mean the same.

Each backend returns a frozen subclass from ``Backend.statistics()`` (:class:`~trio_eventbus.MemoryStatistics`,
:class:`~trio_eventbus.NatsStatistics`, :class:`~trio_eventbus.KafkaStatistics`) that adds its own figures;
:attr:`Statistics.backend <trio_eventbus.Statistics.backend>` holds it. A snapshot is taken without awaiting
and never changes afterwards; counters only grow for the life of one bus.
"""

from __future__ import annotations

import attrs

__all__ = ["BackendStatistics"]


@attrs.frozen(slots=True, kw_only=True)
class BackendStatistics:
    """The figures every backend reports (see the module docstring)."""

    #: The backend's lifecycle state, in its own words (``"connected"``, ``"reconnecting"``, ``"closed"``, ...).
    state: str
    #: Whether the backend can reach its broker now (the memory backend: until it is closed).
    connected: bool
    #: How many times the connection was re-established after a loss (0 where the client does not say).
    reconnects: int
    #: Messages handed to the broker whose outcome the bus has not received yet.
    pending_outcomes: int
    #: Live subscriptions, one per (topic, group) this bus consumes.
    subscriptions: int
    #: Fetchers running (tasks or client consumers pulling messages for the subscriptions).
    fetchers: int
    #: Deliveries handed to the bus and not settled (acked, nak'ed or termed) yet.
    unsettled: int
