"""Publishing half of the NATS backend: batched JetStream async publish and the one ack handler.

Flow: the bus's publisher task calls :meth:`Publisher.send` with up to ``publish_batch`` messages; they go into
a :class:`LoopInbox` (no waiting for a round trip: at most one posted crossing per loop pass, carrying
everything queued meanwhile) whose worker, :meth:`Publisher._publish_batch` on the asyncio loop, writes every
message to the connection in order. A JetStream message is published with the reply subject
``<ack inbox>.<seq>``: that is JetStream's async publish (what nats-py's ``publish_async`` does), spoken
directly so that no future, semaphore or JSON parse is paid per message; the commands are built by
:mod:`.protocol` and handed to nats-py in chunks of ``_CHUNK`` (``Client.publish`` per message only while
disconnected). The stream's PubAck (or error) comes back on the one ack-inbox subscription, whose handler
(:meth:`Publisher._on_ack`, inline in the connection's reader) turns it into an :class:`Outcome` in a
:class:`BatchPipe`; the single Trio task :meth:`Publisher.forward` (the "ack handler")
receives whole batches of outcomes per wake-up and passes them to the bus's outcomes channel.

Exactly one outcome per message: a message nats-py refuses at once (closed connection, reconnect buffer
full, too large) gets a failed outcome at once; otherwise the first of these decides: its PubAck (success,
also for a duplicate JetStream dropped), a JetStream error or a ``503`` (no stream captures the subject),
or ``publish_timeout`` seconds without an answer (a server restart lost it; the janitor's :meth:`sweep`
fails it). A late answer after that is ignored. Ephemeral (core NATS) messages succeed once written to the
connection's buffer: core NATS has no acks.

Size: a message whose body plus NATS header block passes the server's ``max_payload`` (from its INFO) would
make the server close the connection (and nats-py would resend it after every reconnect): it gets a failed
outcome (:class:`MessageTooLargeError`, a ``PublishError``) before it is written, alone; the rest of the batch
goes through. nats-py checks the body alone; the header block is counted here.

Backpressure: the bus's publish window bounds the messages between ``send`` and their outcome; at most
``max_pending_publishes`` PubAcks are awaited at once: when that many are, the worker waits for answers
(and so outcomes stop and the bus's window fills). Ordering: one worker writes in ``send`` order, which keeps
per-subject publish order. Cancellation: ``send`` does not wait, so a Trio cancel cannot interrupt a batch;
the worker is only cancelled when the bridge closes, and then the messages it had not written get failed
outcomes (those still queued are failed by :meth:`Publisher.fail_queued` at close).
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import trio
from nats.js.errors import APIError

from ..._abc import Outcome
from ..._exceptions import MessageTooLargeError, PublishError, translate_exception
from .._bridge import BatchPipe, Bridge
from .._bridge.inbox import LoopInbox
from .protocol import PayloadTooLarge, Wire, command, wire_for
from .wire import NATS_PUBLISH_ERRORS, too_large

__all__ = ["PublishTimeout", "Publisher", "WireItem"]

#: (seq, subject, body, headers, persistent)
WireItem = tuple[int, str, bytes, dict[str, str] | None, bool]
_UNBOUNDED = sys.maxsize  # outcomes are bounded by the bus's publish window, not by the pipe
_CHUNK = 256  # commands handed to nats-py at once on the fast path (about 100 KB of 256-byte messages)


class PublishTimeout(PublishError):
    """No PubAck arrived within ``NatsConfig.publish_timeout`` (the server may still have stored it)."""


class Publisher:
    """Publishes batches on the loop and reports every outcome to Trio (see the module docstring)."""

    _wire: Wire  # set by start(), on the loop thread

    def __init__(self, bridge: Bridge, nc: Any, timeout: float, max_pending: int) -> None:
        self._bridge = bridge
        self._nc = nc
        self._timeout = timeout
        self._max_pending = max_pending
        self.pipe: BatchPipe[Outcome] = BatchPipe(bridge, _UNBOUNDED)
        self._inbox: LoopInbox[WireItem] = LoopInbox(bridge, self._publish_batch)
        self._prefix = ""
        self._acks: list[Outcome] = []  # outcomes of PubAcks, put into the pipe once per reader pass
        self._inflight: dict[int, float] = {}  # seq -> deadline, awaiting a PubAck (loop thread)
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._space: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._closed = False
        self._abandoned = False
        # written on the loop thread, read by statistics() in the Trio thread (plain int reads)
        self.acked = 0
        self.duplicates = 0
        self.failed = 0
        self.timeouts = 0
        self.core_sent = 0

    @property
    def pending(self) -> int:
        """JetStream publishes awaiting their PubAck."""
        return len(self._inflight)

    @property
    def queued(self) -> int:
        """Messages handed to :meth:`send` and not yet written to the connection."""
        return len(self._inbox)

    # -- Trio side --------------------------------------------------------------------------------------

    def send(self, items: Sequence[WireItem]) -> None:
        """Queue ``items`` for publishing, in order; never waits. Outcomes follow through :meth:`forward`."""
        self._inbox.put(items)

    def fail_queued(self) -> None:
        """At close, after the worker stopped: fail what it never wrote (nothing, normally)."""
        error = PublishError("the NATS backend closed before the message was handed to NATS")
        if queued := [item[0] for item in self._inbox.take_all()]:
            self._emit([Outcome(queued, error)])

    async def forward(
        self,
        outcomes: trio.MemorySendChannel[Sequence[Outcome]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The ack handler: move outcome batches to the bus until :meth:`close_pipe` ran and all arrived.

        Cancellation never loses a batch: a batch taken from the pipe goes to ``outcomes`` without a
        checkpoint in between (the bus's channel has room for one list per message in its window), so the
        backend's exit can cancel this task and call it again inline to forward the rest.
        """
        task_status.started()
        receive = self.pipe.receive_batch
        while True:
            try:
                batch = await receive(100_000)
            except trio.EndOfChannel:
                return
            try:
                outcomes.send_nowait(batch)
            except trio.WouldBlock:  # cannot happen while the bus's window bounds the outcomes
                await outcomes.send(batch)

    # -- asyncio side -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe the ack inbox (loop thread; nats-py re-subscribes it after reconnects)."""
        self._wire = wire_for(self._nc)
        self._prefix = self._nc.new_inbox() + "."
        await self._wire.subscribe(self._prefix + "*", self._on_ack)

    async def _publish_batch(self, items: Sequence[WireItem]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        wire, prefix, inflight = self._wire, self._prefix, self._inflight
        now: list[Outcome] = []
        built: list[bytes] = []  # commands not yet handed to nats-py (the fast path writes them in chunks)
        held: list[tuple[int, bool, float]] = []  # their (seq, persistent, deadline)
        taken = 0  # items[:taken] are written, failed or in ``built``
        limit = self._nc.max_payload  # the server's, from its INFO (may change with a reconnect)
        try:
            for seq, subject, body, headers, persistent in items:
                cmd = None
                if wire.ready:  # the command now: its size is exact (and the check is free)
                    try:
                        cmd = command(subject, f"{prefix}{seq}" if persistent else "", body, headers, limit)
                    except PayloadTooLarge as exc:
                        self._too_large(seq, subject, exc.size, limit, now)
                        taken += 1
                        continue
                    except ValueError as exc:
                        self._refused([seq], subject, exc, now)
                        taken += 1
                        continue
                elif (headers is not None or len(body) > limit) and (size := too_large(body, headers, limit)):
                    self._too_large(seq, subject, size, limit, now)
                    taken += 1
                    continue
                if persistent:
                    while len(inflight) >= self._max_pending and not self.abandoned:
                        if built:  # what is built goes out before waiting for PubAcks
                            await self._write(built, held, now)
                        self._space = asyncio.Event()
                        await self._space.wait()
                        deadline = loop.time() + self._timeout  # the clock starts when it is written
                    inflight[seq] = deadline
                if self.abandoned:
                    raise _Abandoned
                if cmd is not None and wire.ready:
                    built.append(cmd)
                    held.append((seq, persistent, deadline))
                    taken += 1
                    if len(built) >= _CHUNK:
                        await self._write(built, held, now)
                    continue
                if built:  # in order: the fast path's commands before this one
                    await self._write(built, held, now)
                await self._publish_one(seq, subject, body, headers, persistent, deadline, now)
                taken += 1
            if built:
                await self._write(built, held, now)
        except (asyncio.CancelledError, _Abandoned) as exc:
            error = PublishError("the NATS backend closed before the message was handed to NATS")
            # what was built and not written (or being written), the one being published, and the rest
            rest = [entry[0] for entry in held] + [item[0] for item in items[taken:]]
            for seq in rest:
                inflight.pop(seq, None)
            if rest:
                now.append(Outcome(rest, error))
            self.failed += len(rest)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._emit(now)

    async def _write(self, built: list[bytes], held: list[tuple[int, bool, float]], now: list[Outcome]) -> None:
        """Hand the built commands to nats-py as one; emptied unless cancelled (then the caller fails them)."""
        try:
            await self._wire.send(built)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._refused([entry[0] for entry in held], None, exc, now)
        else:
            deadlines, core = self._deadlines, []
            for seq, persistent, deadline in held:
                if persistent:
                    deadlines.append((deadline, seq))
                else:
                    core.append(seq)
            if core:
                self.core_sent += len(core)
                now.append(Outcome(core))
        built.clear()
        held.clear()

    async def _publish_one(
        self,
        seq: int,
        subject: str,
        body: bytes,
        headers: dict[str, str] | None,
        persistent: bool,
        deadline: float,
        now: list[Outcome],
    ) -> None:
        """nats-py's own ``publish`` (not connected: its reconnect buffer accounts message by message)."""
        try:
            if persistent:
                await self._nc.publish(subject, body, reply=f"{self._prefix}{seq}", headers=headers)
                self._deadlines.append((deadline, seq))
            else:
                await self._nc.publish(subject, body, headers=headers)
                self.core_sent += 1
                now.append(Outcome((seq,)))
        except Exception as exc:
            self._refused([seq], subject, exc, now)

    def _too_large(self, seq: int, subject: str, size: int, limit: int, now: list[Outcome]) -> None:
        self.failed += 1  # the server would close the connection on it: fail it alone
        now.append(Outcome((seq,), _too_large_error(subject, size, limit)))

    def _refused(self, seqs: list[int], subject: str | None, exc: Exception, now: list[Outcome]) -> None:
        for seq in seqs:
            self._inflight.pop(seq, None)
        self.failed += len(seqs)
        what = f"publish to {subject!r}" if subject is not None else f"publish of {len(seqs)} messages"
        now.append(Outcome(seqs, translate_exception(exc, NATS_PUBLISH_ERRORS, f"{what} refused")))

    def _emit(self, outcomes: list[Outcome]) -> None:
        if not self._closed and outcomes:
            self.pipe.put_all_nowait(outcomes)

    def _on_ack(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        """A PubAck (or error) on the ack inbox (loop thread, inline in the connection's reader)."""
        try:
            seq = int(subject[len(self._prefix) :])
        except ValueError:
            return
        if self._inflight.pop(seq, None) is None:
            return  # already failed by the timeout: a late answer changes nothing
        error = _ack_error(data, headers)
        if error is None:
            self.acked += 1
            if b'"duplicate"' in data:
                self.duplicates += 1
        else:
            self.failed += 1
        if not self._closed:
            if not self._acks:
                self._wire.defer(self._flush_acks)  # at the end of this read: one put
            self._acks.append(Outcome((seq,), error))
        self._freed()

    def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        self._emit(acks)

    def _freed(self) -> None:
        if self._space is not None and len(self._inflight) < self._max_pending:
            self._space.set()
        if self._idle is not None and not self._inflight:
            self._idle.set()

    def sweep(self, now: float) -> None:
        """Fail every publish whose PubAck is overdue (called by the backend's janitor on the loop)."""
        queue, inflight = self._deadlines, self._inflight
        expired: list[Outcome] = []
        while queue and (queue[0][0] <= now or queue[0][1] not in inflight):
            _, seq = queue.popleft()
            if inflight.pop(seq, None) is not None:
                self.timeouts += 1
                self.failed += 1
                expired.append(Outcome((seq,), PublishTimeout(self._timeout_text())))
        if expired:
            self._emit(expired)
            self._freed()

    def _timeout_text(self) -> str:
        if self._abandoned:
            return "the NATS backend closed before the PubAck arrived"
        return f"no PubAck within publish_timeout={self._timeout} s (connection lost?)"

    async def wait_idle(self) -> None:
        """Wait until every message sent has its outcome (bounded by ``publish_timeout``)."""
        await self._inbox.wait_idle()
        while self._inflight:
            self._idle = asyncio.Event()
            await self._idle.wait()

    @property
    def abandoned(self) -> bool:
        """abandon() ran: write nothing more (a property, so checks after an await are not narrowed away)."""
        return self._abandoned

    def abandon(self) -> None:
        """Closing with PubAcks overdue: fail every outstanding publish now, write nothing more."""
        self._abandoned = True
        self.sweep(math.inf)
        if self._space is not None:
            self._space.set()

    def close_pipe(self) -> None:
        """No more outcomes: :meth:`forward` ends once it delivered the buffered ones."""
        if not self._closed:
            self._flush_acks()
            self._closed = True
            self.pipe.close()


class _Abandoned(Exception):
    pass


def _too_large_error(subject: str, size: int, limit: int) -> MessageTooLargeError:
    return MessageTooLargeError(
        f"message to {subject!r} is {size} bytes with its NATS headers, more than the server's max_payload of "
        f"{limit} (refused before sending it: the server would close the connection): raise max_payload in the "
        "nats-server configuration or lower BusOptions.max_message_bytes"
    )


def _ack_error(data: bytes, headers: dict[str, str] | None) -> PublishError | None:
    """None for a PubAck, else the error JetStream answered (with a nats-py ``APIError`` as the cause)."""
    if headers and headers.get("Status") == "503":
        cause = APIError(code=503, description="no responders: no stream captures the subject")
    elif b'"error"' not in data:
        return None
    else:
        try:
            answer = json.loads(data)["error"]
            cause = APIError(
                code=answer.get("code"), err_code=answer.get("err_code"), description=answer.get("description")
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            cause = APIError(description=f"unexpected answer {data[:200]!r}")
    error = PublishError(f"JetStream refused the message: {cause.description} (code {cause.code})")
    error.__cause__ = cause
    return error
