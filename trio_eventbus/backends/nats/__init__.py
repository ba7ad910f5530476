"""NATS JetStream through nats-py: config, backend, publish, consume, wire.

Importing this package does not import nats-py; :class:`NatsConfig` creates the backend lazily.
"""

from .config import NatsConfig

__all__ = ["NatsConfig"]
