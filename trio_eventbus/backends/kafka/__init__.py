"""Apache Kafka through aiokafka: config, backend, publish, consume (Trio side), fetch (asyncio side).

Importing this package does not import aiokafka; :class:`KafkaConfig` creates the backend lazily.
"""

from .config import KafkaConfig

__all__ = ["KafkaConfig"]
