"""trio_eventbus: the event bus for Trio applications.

Per-aggregate ordering with concurrency across aggregates, at-least-once delivery, publish results for a
transactional outbox, dedupe, retries and dead letters, backpressure, and shutdown that leaks no task and
loses no ack — over an in-memory broker, NATS JetStream and Apache Kafka.

    import trio_eventbus as teb

    async def main(bus: teb.EventBus) -> None:
        await bus.subscribe_envelope("orders", on_order)           # group: the service name below
        await bus.publish_envelope("orders", teb.Envelope(aggregate_id="order-1", event_type="OrderCreated",
                                                          event_version=1, payload=b'{"total": 5}'))
        await trio.sleep_forever()                                 # until SIGINT / SIGTERM: graceful close

    teb.run(teb.config_from_env(), main, options=teb.BusOptions(service="orders"))

This namespace holds the application API. Types for writing a backend of your own are in
:mod:`trio_eventbus.backends`; test helpers in :mod:`trio_eventbus.testing`.
"""

from __future__ import annotations

from ._app.runner import run, serve
from ._app.subscribers import Subscribers
from ._app.url import config_from_env, config_from_url
from ._bus import EventBus
from ._codec import decode_envelope, encode_envelope
from ._dispatch.middleware import CallNext, HandlerContext, Middleware
from ._envelope import Envelope, Message, new_event_id
from ._exceptions import (
    AlreadySubscribedError,
    BackendUnavailable,
    BusClosedError,
    EventBusError,
    HandlerError,
    InvalidEnvelopeError,
    InvalidHandlerError,
    InvalidHeaderError,
    InvalidOptionError,
    InvalidTopicError,
    MessageTooLargeError,
    NonRetryableError,
    PublishError,
    ResultsReaderError,
)
from ._lifecycle import BackendConfig, open_bus
from ._options import (
    BusOptions,
    DeadLetterPolicy,
    PublishResult,
    RetryPolicy,
    Statistics,
    TopicOptions,
    validate_topic,
)
from ._publish.results import ResultChannel
from ._statistics import BackendStatistics
from ._util import fixup_module_metadata
from ._version import __version__ as __version__
from .backends.kafka.config import KafkaConfig
from .backends.kafka.stats import KafkaGroupStatistics, KafkaStatistics
from .backends.memory import MemoryBroker, MemoryConfig, MemoryStatistics, MemorySubscriptionStatistics
from .backends.nats.config import NatsConfig
from .backends.nats.stats import NatsGroupStatistics, NatsStatistics, NatsSubscriptionStatistics

__all__ = [
    "AlreadySubscribedError",
    "BackendConfig",
    "BackendStatistics",
    "BackendUnavailable",
    "BusClosedError",
    "BusOptions",
    "CallNext",
    "DeadLetterPolicy",
    "Envelope",
    "EventBus",
    "EventBusError",
    "HandlerContext",
    "HandlerError",
    "InvalidEnvelopeError",
    "InvalidHandlerError",
    "InvalidHeaderError",
    "InvalidOptionError",
    "InvalidTopicError",
    "KafkaConfig",
    "KafkaGroupStatistics",
    "KafkaStatistics",
    "MemoryBroker",
    "MemoryConfig",
    "MemoryStatistics",
    "MemorySubscriptionStatistics",
    "Message",
    "MessageTooLargeError",
    "Middleware",
    "NatsConfig",
    "NatsGroupStatistics",
    "NatsStatistics",
    "NatsSubscriptionStatistics",
    "NonRetryableError",
    "PublishError",
    "PublishResult",
    "ResultChannel",
    "ResultsReaderError",
    "RetryPolicy",
    "Statistics",
    "Subscribers",
    "TopicOptions",
    "config_from_env",
    "config_from_url",
    "decode_envelope",
    "encode_envelope",
    "new_event_id",
    "open_bus",
    "run",
    "serve",
    "validate_topic",
]

fixup_module_metadata(__name__, globals())
del fixup_module_metadata
