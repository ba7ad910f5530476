"""Partitioned consumer groups: membership, a balanced assignment, and the pullers of one member's share.

A topic with ``TopicOptions.partitions = P > 1`` has ``P + 1`` *slots* per group (:mod:`.partitions`): the
base subject and the ``P`` partitions, each with its own durable ``pinned_client`` consumer (:mod:`.pinned`).
Like a Kafka consumer group, each slot is consumed by one live member at a time, and a key always maps to the
same partition, so each key is handled in publish order by one member; within a member the keyed lanes keep
working as for any subscription.

Membership (core NATS, no stream): every member of ``(stream, group)`` publishes a heartbeat on
``_TEB.pcg.<stream>.<group>`` every ``NatsConfig.group_heartbeat`` s and keeps the set of members heard from
within ``group_session_timeout`` s. A joining member says hello (the others answer with a heartbeat at once),
a leaving one says goodbye (the others rebalance at once). Member ids are random (NUID), one per subscription.

Assignment: the live members sorted by id, slot ``i`` of the sorted slots to member ``i % n``: deterministic,
balanced to within one slot, the same in every member that sees the same membership. Each member pulls only
the slots assigned to it. Membership views may disagree for a moment (a heartbeat in flight): that costs
time, never exclusivity, because the *server* serves each consumer to one pinned client at a time; a member
that starts pulling a slot another still holds just waits until that one unpins or its pin lapses.

Handover (rebalance): a member that loses a slot stops pulling it, lets what it already holds be handled and
acked, then unpins (:meth:`PinnedPuller.release`); the new owner, waiting with a pull request, is pinned at
once and its gate finds nothing unacked. A member that dies (SIGKILL) stops heartbeating and pulling: after
``group_session_timeout`` the others take its slots, after ``pinned_ttl`` (counted from its last pull) the
server unpins it, and the new owner's gate resets the consumer to the ack floor so the unacked messages come
first and in order. Failover bound: ``max(group_session_timeout, pinned_ttl)`` plus ``fetch_max_wait``
(5.1 s with the defaults). Duplicates after a kill are bounded by what the dead member had
received above its ack floor.

Cancellation/backpressure: everything here runs on the asyncio loop (janitor ticks drive heartbeats, expiry
and rebalancing); the pullers of one member share the subscription's pipe and window, so a full lane stops
requests on every slot (pins are still renewed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from nats.nuid import NUID

from .consume import Window
from .partitions import BASE
from .pinned import PinnedPuller
from .stats import NatsGroupStatistics

__all__ = ["Membership", "PullerGroup", "assign", "slot_name"]

logger = logging.getLogger("trio_eventbus.nats")
_FIGURES = ("received", "requests_sent", "vanished", "recoveries", "redelivered_held", "progress_acks", "pins",
            "pin_losses", "resets")  # fmt: skip
_JOIN_SETTLE = 0.2  # seconds a joining member listens for the others' answers before its first assignment


def slot_name(slot: int) -> str:
    return "base" if slot == BASE else f"p{slot}"


def assign(slots: Sequence[int], members: Sequence[str]) -> dict[str, list[int]]:
    """Slot ``i`` (sorted) to member ``i % n`` (members sorted): balanced, the same everywhere."""
    ordered = sorted(members)
    out: dict[str, list[int]] = {m: [] for m in ordered}
    if ordered:
        for i, slot in enumerate(sorted(slots)):
            out[ordered[i % len(ordered)]].append(slot)
    return out


class Membership:
    """This member's view of its group (see the module docstring). Loop thread only."""

    def __init__(self, nc: Any, subject: str, heartbeat: float, timeout: float, on_change: Callable[[], None]) -> None:
        self._nc = nc
        self.subject = subject
        self.me = NUID().next().decode()
        self._heartbeat, self._timeout = heartbeat, timeout
        self._on_change = on_change
        self.seen: dict[str, float] = {}  # other member -> loop time of its last heartbeat
        self._next_beat = 0.0
        self._nsub: Any = None

    @property
    def members(self) -> list[str]:
        return sorted([self.me, *self.seen])

    async def start(self) -> None:
        self._nsub = await self._nc.subscribe(self.subject, cb=self._on_msg)
        await self._send("hello")
        self._next_beat = asyncio.get_running_loop().time() + self._heartbeat

    async def _send(self, op: str) -> None:
        try:
            await self._nc.publish(self.subject, json.dumps({"m": self.me, "op": op}).encode())
        except Exception as exc:  # connection down: the others time us out or hear the next beat
            logger.debug("group heartbeat on %s not sent: %r", self.subject, exc)

    async def _on_msg(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            member, op = str(data["m"]), str(data["op"])
        except (ValueError, KeyError, TypeError):
            return
        if member == self.me:
            return
        if op == "leave":
            if self.seen.pop(member, None) is not None:
                self._on_change()
            return
        new = member not in self.seen
        self.seen[member] = asyncio.get_running_loop().time()
        if op == "hello":
            await self._send("beat")
        if new:
            self._on_change()

    def check(self, now: float, spawn: Callable[[Any], None]) -> None:
        """Janitor tick: beat when due, forget members not heard from within the session timeout."""
        if now >= self._next_beat:
            self._next_beat = now + self._heartbeat
            spawn(self._send("beat"))
        gone = [m for m, at in self.seen.items() if now - at > self._timeout]
        for member in gone:
            del self.seen[member]
        if gone:
            logger.warning("group %s: member(s) %s sent no heartbeat for %g s: taking over their share",
                           self.subject, gone, self._timeout)  # fmt: skip
            self._on_change()

    async def leave(self) -> None:
        await self._send("leave")
        if self._nsub is not None:
            with contextlib.suppress(Exception):
                await self._nsub.unsubscribe()


class PullerGroup:
    """One member's share of a partitioned group: a :class:`PinnedPuller` per owned slot, one shared pipe and
    window (the subscription's source; asyncio side; see the module docstring)."""

    def __init__(
        self,
        nc: Any,
        subject: str,
        slots: Sequence[int],
        make_puller: Callable[[int, Window], PinnedPuller],
        close_pipe: Callable[[], None],
        *,
        heartbeat: float,
        timeout: float,
    ) -> None:
        self._slots = list(slots)
        self._make = make_puller
        self._close_pipe = close_pipe
        self.window = Window()
        self.pullers: dict[int, PinnedPuller] = {}
        self._releasing: set[int] = set()
        self._stopped_pullers: list[PinnedPuller] = []  # stopped with the group: unpinned at close
        self._past: dict[str, int] = dict.fromkeys(_FIGURES, 0)  # figures of pullers handed over and dropped
        self.membership = Membership(nc, subject, heartbeat, timeout, self._rebalance)
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = self.stopping = False
        self.handovers = 0

    # -- Source ------------------------------------------------------------------------------------------

    @property
    def received(self) -> int:
        return self._figure("received")

    def __getattr__(self, name: str) -> int:  # summed puller figures for the subscription's statistics
        if name in _FIGURES:
            return self._figure(name)
        raise AttributeError(name)

    def _figure(self, name: str) -> int:
        return self._past[name] + sum(int(getattr(p, name)) for p in self._all())

    def _all(self) -> list[PinnedPuller]:
        return [*self.pullers.values(), *self._stopped_pullers]

    async def start(self) -> None:
        await self.membership.start()
        await asyncio.sleep(_JOIN_SETTLE)  # hear the others first: fewer needless moves
        self._started = True
        self._rebalance()

    def credit(self, n: int) -> None:
        self.window.held -= n
        for puller in self.pullers.values():
            puller._schedule_pull()

    def check(self, now: float) -> None:
        if self.stopping:
            return
        self.membership.check(now, self._spawn)
        for puller in list(self.pullers.values()):
            puller.check(now)

    def reset(self) -> None:
        for puller in self.pullers.values():
            if not puller.releasing:
                puller.reset()

    async def stop(self) -> None:
        self.stopping = True
        try:
            await self.membership.leave()
            pullers = list(self.pullers.values())
            await asyncio.gather(*(p.stop() for p in pullers), return_exceptions=True)
            self._stopped_pullers += pullers
            self.pullers.clear()
            for task in list(self._tasks):
                task.cancel()
        finally:
            self._close_pipe()

    async def unpin(self, *, confirm: bool = False) -> None:
        """At close, after the settlements went out: unpin every consumer pinned here."""
        await asyncio.gather(*(p.unpin(confirm=confirm) for p in self._all()), return_exceptions=True)

    # -- assignment ----------------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def owned(self) -> list[int]:
        return assign(self._slots, self.membership.members)[self.membership.me]

    def _rebalance(self) -> None:
        if not self._started or self.stopping:
            return
        want = set(self.owned())
        for slot in sorted(want - set(self.pullers)):
            puller = self._make(slot, self.window)
            self.pullers[slot] = puller
            self._spawn(self._start_puller(slot, puller))
        for slot, puller in list(self.pullers.items()):
            if slot not in want and slot not in self._releasing:
                self._releasing.add(slot)
                self._spawn(self._release(slot, puller))

    async def _start_puller(self, slot: int, puller: PinnedPuller) -> None:
        try:
            await puller.start()
        except Exception as exc:  # the janitor's recovery of this puller retries
            logger.warning("starting to pull slot %s failed: %r", slot_name(slot), exc)

    async def _release(self, slot: int, puller: PinnedPuller) -> None:
        try:
            pinned = puller.pin is not None
            await puller.release()
            await puller.stop()
            if pinned:
                self.handovers += 1
        except Exception as exc:
            logger.warning("handing slot %s over failed: %r", slot_name(slot), exc)
        finally:
            self._releasing.discard(slot)
            if self.pullers.get(slot) is puller:
                del self.pullers[slot]
                for name in _FIGURES:
                    self._past[name] += getattr(puller, name)
            self._rebalance()

    # -- introspection --------------------------------------------------------------------------------------

    def ownership(self) -> NatsGroupStatistics:
        pullers = self._all()
        live = dict(self.pullers)
        return NatsGroupStatistics(
            member=self.membership.me,
            members=len(self.membership.members),
            owned=tuple(slot_name(s) for s in sorted(live) if s not in self._releasing),
            pinned=tuple(slot_name(s) for s, p in sorted(live.items()) if p.pin is not None),
            releasing=tuple(slot_name(s) for s in sorted(self._releasing)),
            handovers=self.handovers,
            pins=self._past["pins"] + sum(p.pins for p in pullers),
            pin_losses=self._past["pin_losses"] + sum(p.pin_losses for p in pullers),
            resets=self._past["resets"] + sum(p.resets for p in pullers),
        )
