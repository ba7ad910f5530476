"""Event ids: new UUIDv7 ids without a system call per id, and the deterministic id of a body without one.

:func:`new_event_id` draws its 74 random bits from ``os.urandom`` read 4 KiB at a time (one system call per
409 ids instead of one per id) and pre-formatted per chunk. Taking the next id's random part is a single
``next()`` on a list iterator, atomic under the GIL, so threads never share one; two threads refilling at once
each read fresh bytes (one chunk is dropped, no value repeats). A forked child starts with an empty pool
(``os.register_at_fork``), so parent and child never hand out the same bits.

:func:`derived_event_id` is the id of an envelope that arrived without one (Go's ``omitempty``): a name-based
UUID (version 5, SHA-1) of its body, so every redelivery of the same message gets the same id.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Iterator

__all__ = ["derived_event_id", "new_event_id"]

_PER_ID = 10  # random bytes per id: 80 bits read, 74 kept
_CHUNK = 409 * _PER_ID  # one os.urandom call per 409 ids
_VERSION = bytes(b & 0x0F | 0x70 for b in range(256))  # byte 6 of a UUID: version 7 in the high nibble
_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))  # byte 8: the RFC 9562 variant 0b10 in the high bits
_PARTS = struct.Struct("4s4s12s")  # the hex digits of one id's random part: 7xxx, Vxxx, xxxxxxxxxxxx


def _fill() -> Iterator[str]:
    """The random parts ``-7xxx-Vxxx-xxxxxxxxxxxx`` of the next 409 ids, from one ``os.urandom`` call, formatted
    by C-level calls over the whole chunk (a Python loop formatting each id costs about three times as much)."""
    chunk = bytearray(os.urandom(_CHUNK))
    chunk[0::_PER_ID] = chunk[0::_PER_ID].translate(_VERSION)
    chunk[2::_PER_ID] = chunk[2::_PER_ID].translate(_VARIANT)
    parts = map(b"-".join, _PARTS.iter_unpack(chunk.hex().encode("ascii")))
    return iter(("-" + b"\n-".join(parts).decode("ascii")).split("\n"))


_pool: Iterator[str] = iter(())
_last_ms = -1
_prefix = ""


def _reset_after_fork() -> None:
    global _pool, _last_ms
    _pool = iter(())
    _last_ms = -1


os.register_at_fork(after_in_child=_reset_after_fork)


def new_event_id() -> str:
    """Return a new UUIDv7 id (RFC 9562: 48-bit Unix millisecond timestamp, version 7, variant, 74 random bits).

    Ids sort by creation time (to the millisecond), which keeps broker-side dedupe windows and outbox tables
    index-friendly. The random bits come from ``os.urandom`` (read in 4 KiB chunks); safe in threads and
    across ``fork``.
    """
    global _pool, _last_ms, _prefix
    ms = time.time_ns() // 1_000_000
    rand = next(_pool, None)
    if rand is None:
        _pool = _fill()
        rand = next(_pool)
    if ms == _last_ms:
        return _prefix + rand
    t = f"{ms & 0xFFFF_FFFF_FFFF:012x}"  # formatted once per millisecond
    prefix = f"{t[:8]}-{t[8:]}"
    _prefix, _last_ms = prefix, ms  # another thread may read a pair a millisecond apart: still a valid id
    return prefix + rand


#: The namespace of :func:`derived_event_id` (a fixed UUIDv4; changing it would change every derived id).
_NAMESPACE = bytes.fromhex("5f0c9a3e8d2b4c6e9a1f7b3d2e4c6a80")


def derived_event_id(body: bytes) -> str:
    """The event id of an envelope body that carries none: the RFC 9562 name-based UUID (version 5, SHA-1) of
    ``body`` in this bus's namespace. The same bytes always give the same id (redeliveries dedupe alike)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE + body, usedforsecurity=False).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50
    digest[8] = digest[8] & 0x3F | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
