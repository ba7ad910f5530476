"""KafkaConfig: how a bus reaches an Apache Kafka cluster through aiokafka.

Importing this module does not import aiokafka: :meth:`KafkaConfig.create_backend` does, so
``import trio_eventbus`` works without the ``kafka`` extra. Every value is validated at construction and a bad
one raises :class:`~trio_eventbus.InvalidOptionError` (a ``ValueError``); ``client_options`` keys are checked
against aiokafka's constructors in ``create_backend``. Secrets (``sasl_password``, ``ssl_password``, the values
of ``client_options``) never appear in ``repr``.

Defaults favour safety, then throughput: an idempotent producer with ``acks="all"`` (no duplicates or
reordering from producer retries), ``lz4`` compression when aiokafka can use it (its codecs come from the
``cramjam`` package), consumer groups that start a new group at the earliest retained record, and topics
created on first use with ``TopicOptions.partitions``/``replicas``.
"""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ... import _validate as v
from ..._exceptions import InvalidOptionError

if TYPE_CHECKING:
    from .backend import KafkaBackend

__all__ = ["KafkaConfig"]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Compression = Literal["gzip", "snappy", "lz4", "zstd"]
#: How the producer places a keyed record on a partition (see ``KafkaConfig``, "Partitioner").
Partitioner = Literal["murmur2", "fnv1a"]

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_COMPRESSIONS = ("gzip", "snappy", "lz4", "zstd")
_BRIDGES = ("auto", "thread", "trio-asyncio")
_PARTITIONERS = ("murmur2", "fnv1a")
#: Options the backend sets itself: passing them through client_options would break its guarantees.
_RESERVED = frozenset(
    {
        "loop",
        "bootstrap_servers",
        "group_id",
        "enable_auto_commit",
        "key_deserializer",
        "value_deserializer",
        "key_serializer",
        "value_serializer",
        "transactional_id",
    }
)
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


def _codec_available(name: str) -> bool:
    """Whether aiokafka can compress with ``name`` (aiokafka >= 0.12 takes every codec but gzip from cramjam)."""
    return name == "gzip" or importlib.util.find_spec("cramjam") is not None


def _default_compression() -> Compression | None:
    return "lz4" if _codec_available("lz4") else None


def _bootstrap(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    servers: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidOptionError(
                f"bootstrap_servers: {item!r} must be a str 'host:port'", field="bootstrap_servers"
            )
        server = item.strip()
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidOptionError(
                f"bootstrap_servers: {item!r} must look like 'host:port'", field="bootstrap_servers"
            )
        servers.append(server)
    if not servers:
        raise InvalidOptionError("bootstrap_servers must name at least one 'host:port'", field="bootstrap_servers")
    return tuple(servers)


def _mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidOptionError("client options must be a mapping of str to values")
    return types.MappingProxyType(dict(value))


def _secret(value: str | None) -> str:
    return "None" if value is None else "'***'"


def _keys_only(value: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k!r}: ..." for k in value) + "}"


_MiB = 1024 * 1024
_FETCH_PARTITIONS = 16  # fetch_max_bytes by default: this many partitions' worth of max_partition_fetch_bytes

_pos = v.positive_int
_nonneg = v.int_at_least(0)
_positive_seconds = v.positive_float
_optional_str = v.optional(v.non_empty_str)
_flag = v.boolean
_one_of = v.one_of


@attrs.frozen(slots=True, kw_only=True)
class KafkaConfig:
    """Configuration of the Kafka backend (aiokafka run through the asyncio bridge).

    Connection and security
        ``bootstrap_servers``: ``"host:port"``, a comma-separated list of them, or a sequence. ``client_id``
        names the client in broker logs. ``security_protocol`` is ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``
        or ``SASL_SSL``; SSL uses ``ssl_cafile`` (trusted CAs; the system store when ``None``),
        ``ssl_certfile``/``ssl_keyfile``/``ssl_password`` for a client certificate, and
        ``ssl_check_hostname``. SASL takes ``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``,
        ``SCRAM-SHA-512``) with ``sasl_username``/``sasl_password``.

    Producer
        ``enable_idempotence`` (default on, requires ``acks="all"``), ``acks``, ``compression`` (``lz4`` when
        aiokafka's codec package ``cramjam`` is installed, else ``None``), ``linger_ms``, ``max_batch_size``
        (bytes per partition batch), ``max_request_size`` and ``request_timeout_ms`` (also how long a publish
        may wait for a broker that is away before it fails).

    Partitioner
        ``partitioner`` decides which partition a keyed record goes to; per-key order holds only among
        producers that place keys the same way, so pick the function of the other producers on the topic:

        * ``"murmur2"`` (default): murmur2 of the key, ``& 0x7fffffff``, modulo the partition count: the Java
          client's, aiokafka's ``DefaultPartitioner`` and kafka-python's. librdkafka producers
          (confluent-kafka, ...) match it with their setting ``partitioner=murmur2_random``.
        * ``"fnv1a"``: FNV-1a 32 of the key as Go's sarama default hash partitioner computes it
          (``|int32(h) % n|``): the Go services (jxt-core on sarama) and librdkafka producers with
          ``partitioner=fnv1a_random`` (or ``fnv1a``), which librdkafka made sarama-compatible.

        librdkafka's own default, ``consistent_random`` (CRC32), matches neither: set one of the two above on
        those producers. Keyless records go to a random available partition (one per topic and publish batch)
        whichever is chosen. The key is the ``key`` given to ``publish`` (the aggregate id for envelopes), in
        UTF-8. The same function applies to every topic of the bus; changing it moves keys between
        partitions, so per-key order across the change is not kept.

    Consumer
        ``fetch_min_bytes``, ``fetch_max_bytes``, ``fetch_max_wait_ms``, ``max_partition_fetch_bytes``,
        ``max_poll_records`` (records per fetch batch crossing the bridge), ``session_timeout_ms``,
        ``heartbeat_interval_ms``, ``max_poll_interval_ms``, ``auto_offset_reset`` (where a group without a
        committed offset starts). ``commit_interval`` (seconds) and ``commit_batch`` (offsets) batch the
        commits of handled offsets. ``pause_threshold`` is how many unsettled records of one partition the
        bus may hold before the partition is paused (default ``2 * max_poll_records``); it resumes at half
        of it. ``pause_bytes`` is how many bytes of unsettled records (fetched: queued for the bus or in it)
        one consumer group may hold before all its partitions are paused; they resume at half of it.
        ``rebalance_drain_timeout`` (seconds) bounds how long a revoked partition's in-flight messages may
        run before the rebalance proceeds.

        Byte sizes left ``None`` are derived from the bus's ``BusOptions`` (``M = max_message_bytes``,
        1 MiB by default): ``max_partition_fetch_bytes = max(1 MiB, M)``, ``fetch_max_bytes = 16 * max(1 MiB,
        M)`` (16 MiB by default; Kafka's own default is 50 MiB), ``pause_bytes = max_buffered_bytes +
        fetch_max_bytes`` (80 MiB by default). A record batch larger than the fetch limits is still fetched
        whole (Kafka returns at least one batch), so messages up to ``M`` always flow. See
        :mod:`trio_eventbus.backends.kafka.consume` for every buffer and its bounds.

    Topics
        ``create_topics=True`` creates a missing topic with ``TopicOptions.partitions``/``replicas`` (and
        ``max_age``/``max_bytes`` as ``retention.ms``/``retention.bytes``); ``False`` requires topics to exist.
        An existing topic is never altered: a partition count that differs from ``TopicOptions.partitions``
        is logged and shown in ``Statistics.backend.partition_mismatches``.

    Bridge and pass-through
        ``bridge``: ``"auto"`` (the running ``trio_asyncio`` loop if any, else a private asyncio loop in a
        thread), ``"thread"`` or ``"trio-asyncio"``; ``use_uvloop`` for the thread kind. ``client_options``
        are passed to every aiokafka client whose constructor takes them (a key none takes is an error);
        ``producer_options``/``consumer_options`` only to that client. They override the values above.
    """

    bootstrap_servers: tuple[str, ...] = attrs.field(converter=_bootstrap)
    client_id: str = attrs.field(default="trio-eventbus", validator=_optional_str)
    security_protocol: SecurityProtocol = attrs.field(default="PLAINTEXT", validator=_one_of(*_PROTOCOLS))
    ssl_cafile: str | None = attrs.field(default=None, validator=_optional_str)
    ssl_certfile: str | None = attrs.field(default=None, validator=_optional_str)
    ssl_keyfile: str | None = attrs.field(default=None, validator=_optional_str)
    ssl_password: str | None = attrs.field(default=None, validator=_optional_str, repr=_secret)
    ssl_check_hostname: bool = attrs.field(default=True, validator=_flag)
    sasl_mechanism: SaslMechanism | None = attrs.field(default=None, validator=_one_of(None, *_MECHANISMS))
    sasl_username: str | None = attrs.field(default=None, validator=_optional_str)
    sasl_password: str | None = attrs.field(default=None, validator=_optional_str, repr=_secret)

    enable_idempotence: bool = attrs.field(default=True, validator=_flag)
    acks: Literal[0, 1, "all"] = attrs.field(default="all", validator=_one_of(0, 1, "all"))
    compression: Compression | None = attrs.field(factory=_default_compression, validator=_one_of(None, *_COMPRESSIONS))
    linger_ms: int = attrs.field(default=0, validator=_nonneg)
    max_batch_size: int = attrs.field(default=65536, validator=_pos)
    max_request_size: int = attrs.field(default=1048576, validator=_pos)
    request_timeout_ms: int = attrs.field(default=40000, validator=_pos)
    partitioner: Partitioner = attrs.field(default="murmur2", validator=_one_of(*_PARTITIONERS))

    fetch_min_bytes: int = attrs.field(default=1, validator=_pos)
    fetch_max_bytes: int | None = attrs.field(default=None, validator=v.optional(_pos))
    fetch_max_wait_ms: int = attrs.field(default=100, validator=_nonneg)
    max_partition_fetch_bytes: int | None = attrs.field(default=None, validator=v.optional(_pos))
    max_poll_records: int = attrs.field(default=500, validator=_pos)
    session_timeout_ms: int = attrs.field(default=10000, validator=_pos)
    heartbeat_interval_ms: int = attrs.field(default=3000, validator=_pos)
    max_poll_interval_ms: int = attrs.field(default=300000, validator=_pos)
    auto_offset_reset: Literal["earliest", "latest"] = attrs.field(
        default="earliest", validator=_one_of("earliest", "latest")
    )
    commit_interval: float = attrs.field(default=0.1, validator=_positive_seconds)
    commit_batch: int = attrs.field(default=1000, validator=_pos)
    pause_threshold: int | None = attrs.field(default=None, validator=v.optional(_pos))
    pause_bytes: int | None = attrs.field(default=None, validator=v.optional(_pos))
    rebalance_drain_timeout: float = attrs.field(default=10.0, validator=_positive_seconds)

    create_topics: bool = attrs.field(default=True, validator=_flag)
    bridge: Literal["auto", "thread", "trio-asyncio"] = attrs.field(default="auto", validator=_one_of(*_BRIDGES))
    use_uvloop: bool | None = attrs.field(default=None, validator=_one_of(None, True, False))
    client_options: Mapping[str, Any] = attrs.field(default=_EMPTY, converter=_mapping, repr=_keys_only)
    producer_options: Mapping[str, Any] = attrs.field(default=_EMPTY, converter=_mapping, repr=_keys_only)
    consumer_options: Mapping[str, Any] = attrs.field(default=_EMPTY, converter=_mapping, repr=_keys_only)

    def __attrs_post_init__(self) -> None:
        protocol = self.security_protocol
        if protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise InvalidOptionError(f"security_protocol={protocol} needs a sasl_mechanism")
            if self.sasl_username is None or self.sasl_password is None:
                raise InvalidOptionError(f"sasl_mechanism={self.sasl_mechanism} needs sasl_username and sasl_password")
        elif self.sasl_mechanism is not None or self.sasl_username is not None or self.sasl_password is not None:
            raise InvalidOptionError(f"SASL settings need security_protocol SASL_PLAINTEXT or SASL_SSL, not {protocol}")
        ssl_fields = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self.ssl_password)
        if not protocol.endswith("SSL") and any(f is not None for f in ssl_fields):
            raise InvalidOptionError(f"ssl_* files need security_protocol SSL or SASL_SSL, not {protocol}")
        if (self.ssl_keyfile is not None or self.ssl_password is not None) and self.ssl_certfile is None:
            raise InvalidOptionError("ssl_keyfile/ssl_password need ssl_certfile (the client certificate)")
        if self.enable_idempotence and self.acks != "all":
            raise InvalidOptionError(f"enable_idempotence=True needs acks='all', got acks={self.acks!r}")
        if self.compression is not None and not _codec_available(self.compression):
            raise InvalidOptionError(f"compression={self.compression!r} needs the cramjam package (aiokafka's codecs)")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise InvalidOptionError("heartbeat_interval_ms must be lower than session_timeout_ms")
        for options in (self.client_options, self.producer_options, self.consumer_options):
            if reserved := sorted(_RESERVED.intersection(options)):
                raise InvalidOptionError(f"client options {reserved} are set by the backend and cannot be passed")
            if "partitioner" in options:  # aiokafka's would be ignored: the backend partitions records itself
                raise InvalidOptionError(
                    "client option 'partitioner' is not used by the backend: set KafkaConfig.partitioner "
                    "('murmur2' or 'fnv1a')",
                    field="partitioner",
                )

    @property
    def effective_pause_threshold(self) -> int:
        """Unsettled records of one partition at which it is paused."""
        return self.pause_threshold if self.pause_threshold is not None else 2 * self.max_poll_records

    def fetch_sizes(self, max_message_bytes: int, max_buffered_bytes: int) -> tuple[int, int, int]:
        """``(max_partition_fetch_bytes, fetch_max_bytes, pause_bytes)`` in force for a bus with these
        ``BusOptions`` sizes: the configured values, or the defaults derived from them (see the class
        docstring)."""
        partition = self.max_partition_fetch_bytes
        if partition is None:
            partition = max(_MiB, max_message_bytes)
        fetch = self.fetch_max_bytes
        if fetch is None:
            fetch = max(partition, _FETCH_PARTITIONS * max(_MiB, max_message_bytes))
        pause = self.pause_bytes
        if pause is None:
            pause = max_buffered_bytes + fetch
        return partition, fetch, pause

    def create_backend(self) -> KafkaBackend:
        """A new, unstarted backend for one bus (imports aiokafka; checks ``client_options`` keys)."""
        try:
            from .backend import KafkaBackend
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError(f"the Kafka backend needs aiokafka: pip install 'trio_eventbus[kafka]' ({exc})") from exc
        return KafkaBackend(self)
