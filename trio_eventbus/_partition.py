"""The one key -> partition function of the bus, the same on every backend and in the Go services.

A partitioned topic (``TopicOptions.partitions > 1``) places each key on partition :func:`partition_of`, the
function of sarama's default hash partitioner (the Go services' Kafka producer): FNV-1a 32 over the key's UTF-8
bytes, read as a signed 32-bit integer, ``%`` the partition count with Go's truncating division, negated when
negative. Keeping the Go services' function means a key lands on the same partition whichever service published
it, so per-key order holds across them (``tests/data/go-interop/go-kafka-partitions.json`` is the reference).

The keyed lanes inside one bus hash the same way (``fnv1a_32(key) % lanes``, unsigned): stable across processes
and languages, never Python's randomised ``hash``.
"""

from __future__ import annotations

__all__ = ["fnv1a_32", "partition_of"]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_MASK = 0xFFFFFFFF


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a of ``data`` (an unsigned int)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def partition_of(key: str, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (sarama's hash partitioner; see the module docstring)."""
    if partitions == 1:
        return 0
    signed = fnv1a_32(key.encode("utf-8"))
    if signed >= 0x80000000:
        signed -= 0x100000000
    return abs(signed) % partitions  # Go: int32(h) % n, then negated if negative == |int32(h)| % n
