"""Backends: memory (in-process), nats (JetStream via nats-py), kafka (aiokafka) — and the backend seam.

Applications use the configs exported by :mod:`trio_eventbus` (``MemoryConfig``, ``NatsConfig``,
``KafkaConfig``). This package exports the types a *backend author* needs to write a backend of their own: the
:class:`Backend` protocol with its delivery contract, :class:`BackendFeatures` (the flags the conformance suite
of :mod:`trio_eventbus.testing.conformance` reads), the values that cross the seam (:class:`OutgoingMessage`,
:class:`Outcome`, :class:`Delivery`, :class:`Disposition`) and the :class:`DeliverySink` a fetcher hands
deliveries to.
"""

from __future__ import annotations

from .._abc import Backend, BackendFeatures, Delivery, DeliverySink, Disposition, Outcome, OutgoingMessage
from .._util import fixup_module_metadata

__all__ = [
    "Backend",
    "BackendFeatures",
    "Delivery",
    "DeliverySink",
    "Disposition",
    "Outcome",
    "OutgoingMessage",
]

fixup_module_metadata(__name__, globals())
del fixup_module_metadata
