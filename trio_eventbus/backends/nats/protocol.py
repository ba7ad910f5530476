"""The NATS client protocol on nats-py's connection, for the backend's per-message paths (loop thread only).

nats-py costs about 9 µs per received message on its own path (a header dict, a ``Msg`` object, a queue hop
to the subscription's task, a callback coroutine) and about 4 µs per published one (subject validation,
header encoding, a flush-queue check per call). On the loop thread, which shares the GIL with Trio, that was
most of the bus's CPU per message end to end (PubAck, delivery, publish, ack: four protocol messages per bus
message). :class:`Wire` removes it for the backend's own traffic, on the same connection:

* **Reads**: the client's ``_process_msg`` (what nats-py's protocol parser awaits for every ``MSG``/``HMSG``) is
  replaced, on this client instance, by a router: a message of a subscription made through
  :meth:`Wire.subscribe` goes straight to its synchronous handler as ``(subject, reply, body, headers)``, in
  the read loop, in arrival order (the headers parsed by :func:`parse_headers`, which gives what nats-py's own
  parser gives); any other message takes nats-py's path unchanged. Handlers must not block (they run in the
  connection's reader); an exception they raise is logged, never propagated into the reader. The slow-consumer
  limits of nats-py's subscriptions do not apply to these: what arrives there is bounded by the pull requests
  and the PubAcks awaited.
* **Writes**: :func:`command` builds ``PUB``/``HPUB`` bytes (the header block exactly as nats-py encodes it) and
  :meth:`Wire.send` hands a whole batch to nats-py's pending buffer as one command (``_send_command``: its
  buffer limit, forced flush and reconnect buffering apply) and kicks its flusher once, as ``publish`` does per
  message. While the client is not connected (:attr:`Wire.ready` is false) callers publish per message through
  ``Client.publish``, whose reconnect buffer accounts message by message.

It relies on nats-py internals that are the same from 2.9 to 2.16 (``Client._process_msg``, ``_send_command``,
``_flush_pending``, ``_flush_queue``, ``Subscription._id``); when one is missing, :class:`Wire` uses nats-py's
public API instead (``subscribe(cb=...)``, ``publish``), with the same handlers. One :class:`Wire` per client
(:func:`wire_for`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from nats import errors as nats_errors

__all__ = ["Handler", "PayloadTooLarge", "Wire", "command", "parse_headers", "wire_for"]

logger = logging.getLogger("trio_eventbus.nats")

#: (subject, reply, body, headers): reply is "" when the message has none, headers None when it has none
Handler = Callable[[str, str, bytes, "dict[str, str] | None"], None]

_ATTRIBUTE = "_trio_eventbus_wire"
_AWAITING_CONTROL_LINE = 1  # nats-py's parser states
_AWAITING_MSG_PAYLOAD = 2
_HDR_LINE = b"NATS/1.0"
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's header key rule
_WHITESPACE = re.compile(r"\s")
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # bytes.strip()'s whitespace
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_MAX_CACHED_NAMES = 1024
_names: dict[str, bytes] = {}  # header name -> b"Name: " (checked once)
_subjects: dict[str, bytes] = {}  # subject -> bytes (checked once)


def wire_for(nc: Any) -> Wire:
    """The :class:`Wire` of nats-py client ``nc`` (created on first use; loop thread)."""
    wire: Wire | None = getattr(nc, _ATTRIBUTE, None)
    if wire is None:
        wire = Wire(nc)
        setattr(nc, _ATTRIBUTE, wire)
    return wire


def _supported(nc: Any) -> bool:
    names = ("_process_msg", "_send_command", "_flush_pending", "_flush_queue", "_ps", "_pending_data_size")
    if not all(hasattr(nc, name) for name in names):
        return False
    ps = nc._ps
    return all(hasattr(ps, name) for name in ("buf", "state", "needed", "header_needed", "msg_arg", "parse"))


class Wire:
    """Inline reads and batched writes on one nats-py client (see the module docstring). Loop thread only."""

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self.fast = _supported(nc)
        self._handlers: dict[int, Handler] = {}
        self._deferred: list[Callable[[], None]] = []
        self._reading = False  # inside a reader pass (the fast parser): deferred calls run at its end
        if self.fast:
            self._original = nc._process_msg
            nc._process_msg = self._process_msg
            _FastParser(nc._ps, self._process_msg, self).install()

    def defer(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the reader has handled everything this read brought (loop thread): handlers
        collect there and hand over once per read. Outside a reader pass: soon, with ``call_soon``."""
        if self._reading:
            self._deferred.append(fn)
        else:
            asyncio.get_running_loop().call_soon(fn)

    def _end_of_pass(self) -> None:
        deferred, self._deferred = self._deferred, []
        for fn in deferred:
            try:
                fn()
            except Exception:  # a bug: never break the connection's reader over it
                logger.exception("a deferred step after a NATS read failed")

    @property
    def ready(self) -> bool:
        """Writes may go through :meth:`send` (the fast path, connected); else publish per message."""
        return self.fast and bool(self._nc.is_connected)

    async def subscribe(self, subject: str, handler: Handler, *, queue: str = "") -> Any:
        """Subscribe ``subject`` (nats-py re-subscribes it after reconnects); its messages go to ``handler``.

        Nothing may arrive for ``subject`` before this returns (the callers' inboxes get messages only once
        they sent something), so the handler is registered right after nats-py's ``subscribe``.
        """
        if not self.fast:

            async def callback(msg: Any) -> None:
                handler(msg.subject, msg.reply or "", msg.data, msg.headers)

            return await self._nc.subscribe(subject, queue=queue, cb=callback)
        sub = await self._nc.subscribe(subject, queue=queue)
        self._handlers[sub._id] = handler
        return sub

    async def unsubscribe(self, sub: Any) -> None:
        """Unsubscribe ``sub`` (from :meth:`subscribe`); its handler gets nothing more."""
        if self.fast:
            self._handlers.pop(sub._id, None)
        await sub.unsubscribe()

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = self._handlers.get(sid)
        if handler is None:
            await self._original(sid, subject, reply, data, headers)
            return
        try:
            handler(subject.decode(), reply.decode(), data, parse_headers(headers) if headers else None)
        except Exception:  # a bug in a handler: never break the connection's reader over it
            logger.exception("handling a NATS message on %r failed", subject)

    async def send(self, commands: list[bytes]) -> None:
        """Write protocol commands (from :func:`command`) in order, as one; raises as ``Client.publish`` does
        (closed or draining connection; disconnected with the reconnect buffer full). Meant for while
        :attr:`ready`."""
        nc = self._nc
        if nc.is_closed:
            raise nats_errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats_errors.ConnectionDrainingError
        data = commands[0] if len(commands) == 1 else b"".join(commands)
        if not nc.is_connected:  # disconnected since the caller looked: the reconnect buffer's limit, as publish
            limit = nc._max_pending_size
            if limit <= 0 or len(data) + nc._pending_data_size > limit:
                raise nats_errors.OutboundBufferLimitError
        await nc._send_command(data)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    async def publish_many(self, messages: Iterable[tuple[str, bytes]]) -> int:
        """Publish ``(subject, body)`` pairs without headers or replies (acks, naks, progress acks), in order;
        return how many could not be handed to the connection."""
        if self.ready:
            commands = [command(subject, "", body, None) for subject, body in messages]
            if not commands:
                return 0
            try:
                await self.send(commands)
            except Exception:
                return len(commands)
            return 0
        failed = 0
        for subject, body in messages:
            try:
                await self._nc.publish(subject, body)
            except Exception:
                failed += 1
        return failed


class _FastParser:
    """``MSG``/``HMSG`` parsing for nats-py's parser object, in its own state fields (so it can take over
    mid-stream and hand back at any point): the control line split once instead of matched by regular
    expressions, the buffer cut once per read instead of once per message. Any other operation (``PING``,
    ``PONG``, ``INFO``, ``+OK``, ``-ERR``) is left to nats-py's own ``parse`` with the rest of the buffer."""

    def __init__(self, ps: Any, process: Callable[..., Awaitable[None]], wire: Wire) -> None:
        self._ps = ps
        self._slow = type(ps).parse
        self._process = process
        self._wire = wire

    def install(self) -> None:
        self._ps.parse = self.parse  # an instance attribute: the client's read loop calls ps.parse(data)

    async def parse(self, data: bytes = b"") -> None:
        ps = self._ps
        buf = ps.buf
        if buf:  # the tail of the previous read
            buf += data
            data = bytes(buf)
            buf.clear()
        pos, end = 0, len(data)
        process = self._process
        self._wire._reading = True
        try:
            if ps.state == _AWAITING_MSG_PAYLOAD:  # a message whose payload had not fully arrived
                arg, needed, hlen = ps.msg_arg, ps.needed, ps.header_needed
                if end < needed + 2:
                    return
                pos = needed + 2
                ps.state, ps.header_needed = _AWAITING_CONTROL_LINE, 0
                hdr = data[:hlen] if hlen else None
                await process(arg["sid"], arg["subject"], arg["reply"], data[hlen:needed], hdr)
            while pos < end:
                if not (data.startswith(b"HMSG ", pos) or data.startswith(b"MSG ", pos)):
                    buf += data[pos:]  # PING, PONG, INFO, +OK, -ERR (and what follows): nats-py's parser
                    pos = end
                    await self._slow(ps)
                    return
                eol = data.find(b"\r\n", pos)
                if eol < 0:  # the rest of the line comes with the next read
                    break
                sid, subject, reply, hlen, needed = _control(data[pos:eol].split())
                start = eol + 2
                if end - start < needed + 2:  # the payload comes with the next reads: nats-py's state fields
                    ps.state, ps.needed, ps.header_needed = _AWAITING_MSG_PAYLOAD, needed, hlen
                    ps.msg_arg = {"subject": subject, "sid": sid, "reply": reply}
                    pos = start
                    break
                pos = start + needed + 2
                if hlen:
                    await process(sid, subject, reply, data[start + hlen : start + needed], data[start : start + hlen])
                else:
                    await process(sid, subject, reply, data[start : start + needed], None)
        finally:
            if pos < end:
                buf += data[pos:]
            self._wire._reading = False
            if self._wire._deferred:
                self._wire._end_of_pass()


def _control(line: list[bytes]) -> tuple[int, bytes, bytes, int, int]:
    """(sid, subject, reply, header size, total size) of ``MSG <subject> <sid> [reply] <size>`` or ``HMSG
    <subject> <sid> [reply] <header size> <total size>``."""
    try:
        if line[0] == b"HMSG":
            if len(line) == 6:
                return int(line[2]), line[1], line[3], int(line[4]), int(line[5])
            if len(line) == 5:
                return int(line[2]), line[1], b"", int(line[3]), int(line[4])
        elif len(line) == 5:
            return int(line[2]), line[1], line[3], 0, int(line[4])
        elif len(line) == 4:
            return int(line[2]), line[1], b"", 0, int(line[3])
    except ValueError:
        pass
    raise _protocol_error()


def _protocol_error() -> Exception:
    return nats_errors.ProtocolError("nats: malformed MSG")


class PayloadTooLarge(ValueError):
    """The message's header block and body together pass the server's ``max_payload`` (``size`` bytes)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes with the header block")
        self.size = size


def command(
    subject: str, reply: str, body: bytes, headers: Mapping[str, str] | None, limit: int | None = None
) -> bytes:
    """The ``PUB``/``HPUB`` command of one message, byte for byte what nats-py's ``publish`` writes.

    Raises :class:`PayloadTooLarge` when ``limit`` is given and header block plus body pass it, and
    ``ValueError`` for a subject or reply that would break the protocol line, or a header name that nats-py
    refuses (the bus validates both long before; this keeps the stream of commands intact).
    """
    subj = _subjects.get(subject)
    if subj is None:
        subj = _subject_bytes(subject)
    if reply:
        if " " in reply or "\t" in reply or "\r" in reply or "\n" in reply:
            raise ValueError(f"invalid reply subject {reply!r}")
        subj += b" " + reply.encode() + b" "
    else:
        subj += b"  "  # nats-py writes "PUB <subject>  <size>" without a reply
    if not headers:
        if limit is not None and len(body) > limit:
            raise PayloadTooLarge(len(body))
        return b"PUB %s%d\r\n%s\r\n" % (subj, len(body), body)
    block = [_HDR_LINE, b"\r\n"]
    for name, value in headers.items():
        prefix = _names.get(name)
        if prefix is None:
            prefix = _name_bytes(name)
            if not prefix:
                continue
        if "\r" in value or "\n" in value:
            value = value.translate(_NEWLINES)
        block += (prefix, value.strip().encode(), b"\r\n")
    block.append(b"\r\n")
    hdr = b"".join(block)
    if limit is not None and len(hdr) + len(body) > limit:
        raise PayloadTooLarge(len(hdr) + len(body))
    return b"HPUB %s%d %d\r\n%s%s\r\n" % (subj, len(hdr), len(hdr) + len(body), hdr, body)


def _subject_bytes(subject: str) -> bytes:
    if not subject or " " in subject or "\t" in subject or "\r" in subject or "\n" in subject:
        raise ValueError(f"invalid subject {subject!r}")
    out = subject.encode()
    if len(_subjects) < _MAX_CACHED_NAMES:
        _subjects[subject] = out
    return out


def _name_bytes(name: str) -> bytes:
    """``b"Name: "`` for a header name (b"" for a blank one, skipped as nats-py skips it)."""
    key = name.strip()
    if not key:
        return b""
    if not _TOKEN_RE.fullmatch(key):
        raise ValueError(f"invalid NATS header name {name!r}")
    out = key.encode() + b": "
    if len(_names) < _MAX_CACHED_NAMES:
        _names[name] = out
    return out


def parse_headers(raw: bytes) -> dict[str, str] | None:
    """The headers of a received message as nats-py's parser gives them (``Status``/``Description`` from an
    inline status line, then ``Name: value`` lines; the last of a repeated name wins; ``None`` when empty)."""
    if raw[8:9] == b" ":  # NATS/1.0 408 Request Timeout\r\n...: an inline status
        return _parse_status(raw)
    out = _parse_lines(raw[10:])
    return out or None


def _parse_lines(raw: bytes) -> dict[str, str]:
    """``Name: value`` lines as nats-py parses them; decoded once when all ASCII (the usual case)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return _parse_lines_bytes(raw)
    out: dict[str, str] = {}
    for line in text.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip(_ASCII_SPACE)  # what bytes.strip() strips
        if " " in key or (not key.isprintable() and _WHITESPACE.search(key)):
            continue
        out[key] = value.strip(_ASCII_SPACE)
    return out


def _parse_lines_bytes(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def _parse_status(raw: bytes) -> dict[str, str]:
    """An inline status (``NATS/1.0 408 Request Timeout\r\n...``), step for step as nats-py parses it."""
    line = raw[9:]
    status = line[:3].strip().decode()
    desc = line[4 : len(line) - 4]
    hdr: dict[str, str] = {}
    if status.isdigit():
        hdr["Status"] = status
    rest = raw[8:]
    rest = rest[rest.find(b"\r\n") + 2 :]
    if desc:
        i = desc.find(b"\r\n")
        if i > 0:
            hdr["Description"] = desc[:i].decode()
            hdr.update(_parse_lines(desc[i + 2 :]))
        else:
            hdr["Description"] = desc.decode()
    if len(rest) > 2:
        hdr.update(_parse_lines(raw[10:]))
    return hdr
