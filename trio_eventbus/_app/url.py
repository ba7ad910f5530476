"""config_from_url / config_from_env: a backend configuration from one URL, as a service reads it from its
environment or command line.

=====================================================  =====================================================
URL                                                    configuration
=====================================================  =====================================================
``memory://``                                          ``MemoryConfig()`` (a private in-process broker)
``nats://host:4222`` (also ``tls://``, ``ws://``,      ``NatsConfig(servers=(...))``; comma-separated URLs
``wss://``; credentials as ``nats://user:pw@host``)    are the servers of one cluster
``kafka://host:9092[,host2:9092]``                     ``KafkaConfig(bootstrap_servers=("host:9092", ...))``
=====================================================  =====================================================

Keyword arguments are fields of the configuration class (``config_from_url("nats://h:4222",
stream_storage="memory")``), validated by it. Bad input raises :class:`~trio_eventbus.InvalidOptionError` at
the call.
"""

from __future__ import annotations

import os
from typing import Any

from .._exceptions import InvalidOptionError
from .._lifecycle import BackendConfig
from ..backends.kafka.config import KafkaConfig
from ..backends.memory import MemoryConfig
from ..backends.nats.config import NatsConfig

__all__ = ["config_from_env", "config_from_url"]

_NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def config_from_url(url: str, **settings: Any) -> BackendConfig:
    """The backend configuration a URL names (see the module docstring): ``memory://``, ``nats://host:port``
    (``tls``, ``ws``, ``wss``) or ``kafka://host:port``; ``settings`` are further fields of that configuration.

    Raises :class:`~trio_eventbus.InvalidOptionError` for an unknown scheme, a URL without a host, or a bad
    setting.
    """
    if not isinstance(url, str):
        raise InvalidOptionError(f"url must be a str, not {type(url).__name__}", field="url")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise InvalidOptionError(
            f"url {url!r} has no scheme: use memory://, nats://host:port or kafka://host:port", field="url"
        )
    if scheme == "memory":
        if rest.strip("/"):
            raise InvalidOptionError(f"url {url!r}: memory:// takes no host", field="url")
        return MemoryConfig(**settings)
    items = [item.strip() for item in rest.split(",")]
    if not all(item.partition("://")[2] if "://" in item else item for item in items):
        raise InvalidOptionError(f"url {url!r} names no host", field="url")
    if scheme in _NATS_SCHEMES:
        servers = [url.partition(",")[0], *(i if "://" in i else f"{scheme}://{i}" for i in items[1:])]
        return NatsConfig(servers=servers, **settings)
    if scheme == "kafka":
        hosts = [item.partition("://")[2] if "://" in item else item for item in items]
        return KafkaConfig(bootstrap_servers=[h.rstrip("/") for h in hosts], **settings)
    raise InvalidOptionError(
        f"url {url!r}: scheme {scheme!r} is not one of memory, nats, tls, ws, wss, kafka", field="url"
    )


def config_from_env(name: str = "TEB_URL", default: str = "memory://", **settings: Any) -> BackendConfig:
    """:func:`config_from_url` of the environment variable ``name`` (``TEB_URL``), or of ``default`` when it is
    unset or empty. Raises :class:`~trio_eventbus.InvalidOptionError` as :func:`config_from_url` does."""
    return config_from_url(os.environ.get(name) or default, **settings)
