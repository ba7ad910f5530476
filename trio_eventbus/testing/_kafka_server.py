"""Single-node KRaft Kafka for tests: :class:`KafkaServer` and its helpers (re-exported by :mod:`.servers`).

Kafka runs from the jars that ``tools/provision.py`` caches; ``java`` comes from ``$JAVA_HOME`` or PATH.
Readiness is a raw Metadata request (:func:`kafka_metadata_brokers`), so no Kafka client is needed.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import struct
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from ._process import _HOST, _LOG_TAIL_LINES, BrokerStartError, _ManagedServer, _tcp_accepts, free_port

__all__ = [
    "KAFKA_VERSION",
    "KafkaServer",
    "kafka_home",
    "kafka_metadata_brokers",
    "locate_java",
    "locate_kafka_libs",
]

#: Kafka release fetched by tools/provision.py (keep in sync with tools/kafka/pom.xml).
KAFKA_VERSION = "3.9.2"
_MARKER_NAME = ".provisioned"


def locate_java() -> str:
    """Path of ``java`` ($JAVA_HOME/bin/java, then PATH), or :class:`BrokerStartError`."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(os.path.join(java_home, "bin", "java"), os.X_OK):
        return os.path.join(java_home, "bin", "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerStartError(
            "java not found: Kafka needs Java 17, e.g. `sudo apt-get install -y openjdk-17-jre-headless`"
        )
    return found


def kafka_home() -> Path:
    """Kafka jar cache: ``$TEB_KAFKA_HOME`` or ``~/.cache/trio_eventbus/kafka-<version>`` (jars in libs/)."""
    env = os.environ.get("TEB_KAFKA_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "trio_eventbus" / f"kafka-{KAFKA_VERSION}"


def locate_kafka_libs() -> Path:
    """The directory of Kafka jars written by ``tools/provision.py``, or :class:`BrokerStartError`.

    Only a completed fetch counts (provision writes its marker file after the copy succeeded).
    """
    home = kafka_home()
    libs = home / "libs"
    if not (home / _MARKER_NAME).is_file() or not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        raise BrokerStartError(
            f"Kafka {KAFKA_VERSION} libraries not found in {libs}: "
            "run `python tools/provision.py` (needs java and mvn), "
            "or set TEB_KAFKA_BOOTSTRAP to a running broker"
        )
    return libs


def _kafka_cluster_id() -> str:
    """A random Kafka cluster id (base64url of 16 bytes, no padding, not starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):
            return cid


def _prop_escape(value: str) -> str:
    """Escape a value for a Java .properties file (read as ISO-8859-1 by Kafka)."""
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "".join(c if 0x20 <= ord(c) < 0x7F else f"\\u{ord(c):04x}" for c in out)


def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_SASL_USER = re.compile(r"^[A-Za-z0-9_.@-]+$")


def kafka_metadata_brokers(port: int, *, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Send a raw Kafka Metadata v1 request (no topics) to 127.0.0.1:``port``; return (node_id, host, port).

    Stdlib only; raises ``OSError``/``ValueError`` when the broker is not there or answers nonsense.
    """
    correlation_id = 0x7EB
    client_id = b"teb-readiness"
    # header v1: api_key=3 (Metadata), api_version=1, correlation_id, client_id; body v1: topics = [] (none)
    payload = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 8 <= size <= 1 << 20:
            raise ValueError(f"implausible Metadata response size {size}")
        data = _recv_exact(sock, size)
    (got_id, n_brokers) = struct.unpack_from(">ii", data, 0)
    if got_id != correlation_id:
        raise ValueError("Metadata response with a foreign correlation id")
    brokers: list[tuple[int, str, int]] = []
    pos = 8
    for _ in range(n_brokers):
        node_id, host_len = struct.unpack_from(">ih", data, pos)
        pos += 6
        host = data[pos : pos + host_len].decode("utf-8")
        pos += host_len
        (bport, rack_len) = struct.unpack_from(">ih", data, pos)
        pos += 6 + max(rack_len, 0)
        brokers.append((node_id, host, bport))
    return brokers


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


class KafkaServer(_ManagedServer):
    """A single-node KRaft Kafka broker+controller on 127.0.0.1, data in a private temp directory.

    ``bootstrap`` is the client listener: PLAINTEXT, or SASL_PLAINTEXT with mechanism PLAIN when
    ``sasl_users`` ({username: password}) is given. In SASL mode the broker also has an unauthenticated
    PLAINTEXT listener (``internal_bootstrap``), used for inter-broker traffic and for the readiness check;
    the controller listener is always PLAINTEXT. Ready means a raw Metadata request (on the PLAINTEXT
    listener) lists at least one broker, and in SASL mode the SASL port also accepts TCP. The storage is
    formatted once, before the first start; ``restart()`` reuses ports and log dirs, so topics and records
    survive.
    """

    _KIND: ClassVar[str] = "KafkaServer"
    _DIR_PREFIX: ClassVar[str] = "teb-kafka-"
    _PROC_NAME: ClassVar[str] = "kafka"
    _LOG_NAME: ClassVar[str] = "kafka.log"
    _STOP_GRACE: ClassVar[float] = 30.0  # controlled shutdown moves leadership and flushes logs

    def __init__(
        self,
        *,
        sasl_users: Mapping[str, str] | None = None,
        heap_max: str = "768m",
        heap_min: str = "256m",
        jvm_args: Sequence[str] = ("-XX:+UseSerialGC",),
        extra_properties: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        super().__init__(ready_timeout=ready_timeout)
        self.sasl_users = dict(sasl_users or {})
        for name in self.sasl_users:
            if not _SASL_USER.match(name):
                raise ValueError(f"SASL user name {name!r} must match {_SASL_USER.pattern}")
        self.heap_max, self.heap_min = heap_max, heap_min
        self.jvm_args = tuple(jvm_args)
        self.extra_properties = dict(extra_properties or {})
        self._new_ports()
        self.cluster_id = _kafka_cluster_id()
        self._formatted = False

    def _new_ports(self) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.internal_port = free_port() if self.sasl_users else self.port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the client listener (SASL_PLAINTEXT when ``sasl_users`` is set)."""
        return f"{_HOST}:{self.port}"

    @property
    def internal_bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of an unauthenticated PLAINTEXT listener (``bootstrap`` when not SASL)."""
        return f"{_HOST}:{self.internal_port}"

    @property
    def security_protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"

    @property
    def data_dir(self) -> Path | None:
        return self._dir.path / "data" if self._dir is not None else None

    def server_properties(self) -> str:
        """The server.properties text for the current ports and directory."""
        assert self.data_dir is not None
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{_HOST}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if not self.sasl_users:
            props |= {
                "listeners": f"PLAINTEXT://{_HOST}:{self.port},CONTROLLER://{_HOST}:{self.controller_port}",
                "advertised.listeners": f"PLAINTEXT://{_HOST}:{self.port}",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            }
        else:
            first_user, first_password = next(iter(self.sasl_users.items()))
            jaas = " ".join(
                [
                    "org.apache.kafka.common.security.plain.PlainLoginModule required",
                    f"username={_jaas_quote(first_user)} password={_jaas_quote(first_password)}",
                    *(f"user_{u}={_jaas_quote(p)}" for u, p in self.sasl_users.items()),
                ]
            )
            props |= {
                "listeners": (
                    f"SASL_PLAINTEXT://{_HOST}:{self.port},INTERNAL://{_HOST}:{self.internal_port},"
                    f"CONTROLLER://{_HOST}:{self.controller_port}"
                ),
                "advertised.listeners": f"SASL_PLAINTEXT://{_HOST}:{self.port},INTERNAL://{_HOST}:{self.internal_port}",
                "listener.security.protocol.map": (
                    "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
                ),
                "inter.broker.listener.name": "INTERNAL",
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas + ";",
            }
        props |= self.extra_properties
        return "".join(f"{k}={_prop_escape(v)}\n" for k, v in props.items())

    def _write_config(self) -> Path:
        assert self._dir is not None
        (self._dir.path / "log4j.properties").write_text(_LOG4J)
        path = self._dir.path / "server.properties"
        path.write_text(self.server_properties(), encoding="latin-1")
        return path

    def _java(self, java: str, libs: Path, *args: str, heap: Sequence[str]) -> list[str]:
        assert self._dir is not None
        return [
            java,
            *heap,
            *self.jvm_args,
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self._dir.path / 'log4j.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _format(self, java: str, libs: Path, config: Path) -> None:
        assert self._dir is not None
        argv = self._java(
            java,
            libs,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(config),
            "-g",  # --ignore-formatted
            heap=("-Xmx256m", "-XX:TieredStopAtLevel=1"),
        )
        result = subprocess.run(argv, cwd=self._dir.path, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            out = (result.stdout + result.stderr).decode("utf-8", "replace")
            tail = "\n".join(out.splitlines()[-_LOG_TAIL_LINES:])
            raise BrokerStartError(f"kafka StorageTool format failed ({result.returncode}):\n{tail}")
        self._formatted = True

    def _ready(self) -> bool:
        try:
            if not kafka_metadata_brokers(self.internal_port):
                return False
        except (OSError, ValueError, struct.error):
            return False
        return not self.sasl_users or _tcp_accepts(self.port)

    def start(self) -> None:
        """Format storage on first use, spawn the broker, block until ready (no-op when running)."""
        if not self._should_start():
            return
        libs = locate_kafka_libs()
        java = locate_java()
        self._ensure_workdir()
        self._spawn_until_ready(
            lambda: self._broker_argv(java, libs),
            self._ready,
            lambda: f"Metadata on port {self.internal_port}",
            self._new_ports,
        )

    def _broker_argv(self, java: str, libs: Path) -> list[str]:
        """Write the config for the current ports (formatting storage the first time); the broker's argv."""
        config = self._write_config()
        if not self._formatted:
            self._format(java, libs, config)
        heap = (f"-Xms{self.heap_min}", f"-Xmx{self.heap_max}")
        return self._java(java, libs, "kafka.Kafka", str(config), heap=heap)

    def __repr__(self) -> str:
        state = self._state()
        sasl = " SASL_PLAINTEXT/PLAIN" if self.sasl_users else ""
        return f"<KafkaServer {self.bootstrap}{sasl} {state} data={self.data_dir}>"


_LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.clients=WARN
"""
