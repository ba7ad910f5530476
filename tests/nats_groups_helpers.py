"""Figures of a group-consumption run (shared by the NATS group tests and their child process; not tests)."""

from __future__ import annotations

from collections import defaultdict

import trio


class Tally:
    """Per-key figures of handled ``(key, seq)`` pairs, published ``0..per_key-1`` per key in order.

    - ``duplicates``: handlings of a pair already handled;
    - ``violations``: first handlings of a pair after a higher seq of its key was already handled (publish
      order broken; a duplicate is not a violation);
    - ``concurrent``: handlings that started while another handling of the same key was running (in any
      instance of this process);
    - ``lost``: published pairs never handled.
    """

    def __init__(self, keys: int, per_key: int) -> None:
        self.keys, self.per_key = keys, per_key
        self.seen: dict[str, set[int]] = defaultdict(set)
        self.highest: dict[str, int] = {}
        self.running: dict[str, int] = defaultdict(int)
        self.handled = self.duplicates = self.violations = self.concurrent = 0
        self.by_member: dict[str, int] = defaultdict(int)
        self._waiters: list[tuple[int, trio.Event]] = []
        self._member_waiters: dict[tuple[str, int], trio.Event] = {}
        self.log: list[tuple[str, int, str]] = []  # (key, seq, member) in handling order
        self.first_violation: str | None = None

    @property
    def sent(self) -> int:
        return self.keys * self.per_key

    @property
    def distinct(self) -> int:
        return sum(len(s) for s in self.seen.values())

    @property
    def lost(self) -> int:
        return self.sent - self.distinct

    def start(self, key: str) -> None:
        if self.running[key]:
            self.concurrent += 1
        self.running[key] += 1

    def finish(self, key: str, seq: int, member: str = "") -> None:
        self.running[key] -= 1
        self.record(key, seq, member)

    def record(self, key: str, seq: int, member: str = "") -> None:
        self.handled += 1
        self.by_member[member] += 1
        seen = self.seen[key]
        self.log.append((key, seq, member))
        if seq in seen:
            self.duplicates += 1
        else:
            if seq < self.highest.get(key, -1):
                self.violations += 1
                if self.first_violation is None:
                    self.first_violation = key
            seen.add(seq)
            self.highest[key] = max(seq, self.highest.get(key, -1))
        distinct = self.distinct if self._waiters else 0
        for target, event in self._waiters:
            if distinct >= target:
                event.set()
        for (who, target), event in self._member_waiters.items():
            if who == member and self.by_member[member] >= target:
                event.set()

    async def wait_member(self, member: str, target: int) -> None:
        """Return once ``member`` handled ``target`` envelopes."""
        event = self._member_waiters.setdefault((member, target), trio.Event())
        if self.by_member[member] >= target:
            event.set()
        await event.wait()

    async def wait(self, target: int) -> None:
        event = trio.Event()
        self._waiters.append((target, event))
        if self.distinct >= target:
            event.set()
        await event.wait()

    def story(self, key: str | None = None) -> str:
        """The handlings of ``key`` (default: the first key whose order broke), in order: ``seq@member``."""
        key = key or self.first_violation
        return f"{key}: " + " ".join(f"{q}@{m}" for k, q, m in self.log if k == key)

    def figures(self) -> str:
        members = ", ".join(f"{m or '-'}: {n}" for m, n in sorted(self.by_member.items()))
        return (
            f"sent={self.sent} handled={self.handled} lost={self.lost} duplicates={self.duplicates} "
            f"order_violations={self.violations} concurrent_same_key={self.concurrent} per_instance=[{members}]"
        )
