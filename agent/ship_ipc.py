"""The wire between the daemon and its shipper child: two AF_UNIX SOCK_SEQPACKET socketpairs.

The daemon owns the journal; the child (agent/shipper_proc.py) ships it. Each packet is one
message: a kind byte, then its body.

The journal socket: the child asks, the daemon answers, one request at a time. Nothing
waits on the daemon's side, so an answer is always quick.

    b"B"                               -> b"B" first_seq, next_seq, checkpointed (>QQQ)
    b"C"                               -> b"C" the latest checkpoint note
    b"R" from_seq, max_events, max_bytes (>QII)
                                       -> b"N" (nothing signed beyond from_seq)
                                        | b"L" start, stop, has_prev (>QQB), prev_hash (32
                                          bytes when has_prev), note length (>I), note, path
                                        | b"E" the journal's error in words
    b"P" seq (>Q)                      -> b"P" segments removed (>I)

The messages socket, both ways:

    daemon -> child  b"H" a serialized custodes.v1.Heartbeat (dropped if the child is not
                     reading: the next one replaces it)
                     b"S" checkpointed (>Q): the journal signed up to there (wakes the sender)
    child -> daemon  b"m" / b"M" a serialized custodes.v1.ServerMessage (grant, revocation,
                     agreement) in chunks: b"m" more follows, b"M" the last chunk

Only the journal's span is sent for a batch, not its events: the child reads and decodes
the segment bytes itself (agent.journal.read_span), so the daemon copies nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Protocol

import structlog

from agent.config import AgentError
from agent.journal import BatchSpan, JournalBatch, read_span
from agent.segments import JournalError

log = structlog.get_logger("agent.ship_ipc")

BOUNDS = b"B"
CHECKPOINT = b"C"
READ = b"R"
PRUNE = b"P"
NOTHING = b"N"
SPAN = b"L"
FAILED = b"E"
HEARTBEAT = b"H"
SIGNED = b"S"
MORE = b"m"
LAST = b"M"

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_BOUNDS = struct.Struct(">QQQ")
_READ = struct.Struct(">QII")
_SPAN = struct.Struct(">QQB")
HASH_BYTES = 32
MAX_REQUEST = 64  # the longest request is READ: 17 bytes
MAX_ANSWER = 64 * 1024  # a span: a note (<= 16 KiB) and a path
MAX_PACKET = 64 * 1024  # one chunk of a server message, or a heartbeat
MAX_MESSAGE = 16 * 1024 * 1024  # a whole server message (the stream allows 8 MiB)
ANSWER_TIMEOUT_S = 30.0


class IpcError(AgentError):
    """The other side of the shipper's sockets is gone, or sent what the wire does not allow."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected SOCK_SEQPACKET pair (message boundaries kept), both ends close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


# -- the daemon's side -------------------------------------------------------------------


class ServedJournal(Protocol):
    """What the daemon's journal answers for the child (agent.journal.Journal)."""

    @property
    def next_seq(self) -> int: ...
    @property
    def first_seq(self) -> int: ...
    @property
    def checkpointed(self) -> int: ...
    def latest_checkpoint(self) -> bytes: ...
    def locate_batch(self, from_seq: int, max_events: int, max_bytes: int) -> BatchSpan | None: ...
    def prune_below(self, seq: int) -> int: ...


def answer(journal: ServedJournal, request: bytes) -> bytes:
    """The answer to one request from the child (IpcError for a request the wire lacks)."""
    kind, body = request[:1], request[1:]
    if kind == BOUNDS and not body:
        return BOUNDS + _BOUNDS.pack(journal.first_seq, journal.next_seq, journal.checkpointed)
    if kind == CHECKPOINT and not body:
        return CHECKPOINT + journal.latest_checkpoint()
    if kind == READ and len(body) == _READ.size:
        from_seq, max_events, max_bytes = _READ.unpack(body)
        try:
            span = journal.locate_batch(from_seq, max_events, max_bytes)
        except JournalError as exc:
            return FAILED + str(exc).encode("utf-8", "replace")[: MAX_ANSWER - 1]
        return NOTHING if span is None else SPAN + encode_span(span)
    if kind == PRUNE and len(body) == _U64.size:
        (seq,) = _U64.unpack(body)
        # Never past what is signed: the child asks only after verifying the server's
        # checkpoint, and the daemon does not take a larger number on its word.
        return PRUNE + _U32.pack(journal.prune_below(min(seq, journal.checkpointed)))
    raise IpcError(f"the shipper sent a request of kind {kind!r} and {len(body)} bytes")


def serve_journal(sock: socket.socket, journal: ServedJournal) -> None:
    """Answer the child's journal requests until it closes its end (blocks in recv)."""
    while True:
        try:
            request = sock.recv(MAX_REQUEST)
        except OSError:
            return
        if not request:
            return
        try:
            reply = answer(journal, request)
        except IpcError as exc:
            log.warning("shipper_request_refused", error=str(exc))
            reply = FAILED + str(exc).encode()
        except Exception as exc:  # a journal bug must not end the service thread silently
            log.exception("shipper_request_failed")
            reply = FAILED + str(exc).encode("utf-8", "replace")[:1000]
        try:
            sock.send(reply)
        except OSError:
            return


def send_nowait(sock: socket.socket, packet: bytes) -> bool:
    """Send without ever blocking; False when the child is not reading (or is gone)."""
    try:
        sock.send(packet, socket.MSG_DONTWAIT)
    except OSError:  # BlockingIOError when its buffer is full; EPIPE when it is gone
        return False
    return True


def wait_writable(sock: socket.socket, timeout: float) -> bool:
    """True when `sock` can take a packet within `timeout` seconds."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return bool(poller.poll(int(timeout * 1000)))


def receive_message(sock: socket.socket) -> bytes | None:
    """One whole server message from the child; None when it closed its end.

    IpcError when the chunks exceed MAX_MESSAGE or a packet of another kind arrives.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        packet = sock.recv(MAX_PACKET + 1)
        if not packet:
            return None
        kind, body = packet[:1], packet[1:]
        if kind not in (MORE, LAST):
            raise IpcError(f"the shipper sent a packet of kind {kind!r}, expected a message")
        size += len(body)
        if size > MAX_MESSAGE:
            raise IpcError(f"the shipper sent a message over {MAX_MESSAGE} bytes")
        parts.append(body)
        if kind == LAST:
            return b"".join(parts)


# -- the child's side --------------------------------------------------------------------


def send_message(sock: socket.socket, message: bytes) -> None:
    """Send one server message to the daemon in chunks (blocks: a grant is never dropped)."""
    if len(message) > MAX_MESSAGE:
        raise IpcError(f"a server message of {len(message)} bytes; at most {MAX_MESSAGE}")
    step = MAX_PACKET - 1
    for i in range(0, max(1, len(message)), step):
        last = i + step >= len(message)
        sock.sendall((LAST if last else MORE) + message[i : i + step])


def encode_span(span: BatchSpan) -> bytes:
    """The body of a SPAN answer."""
    prev = span.prev_hash
    path = os.fsencode(span.path)
    return b"".join(
        (
            _SPAN.pack(span.start, span.stop, prev is not None),
            prev or b"",
            _U32.pack(len(span.checkpoint)),
            span.checkpoint,
            path,
        )
    )


def encode_signed(checkpointed: int) -> bytes:
    """The body of a SIGNED notice: the journal signed up to `checkpointed`."""
    return _U64.pack(checkpointed)


def decode_signed(body: bytes) -> int:
    """A SIGNED notice's body: how far the journal signed (IpcError when it is malformed)."""
    if len(body) != _U64.size:
        raise IpcError(
            f"a signed notice of {len(body)} bytes from the daemon, expected {_U64.size}"
        )
    return int(_U64.unpack(body)[0])


def decode_span(body: bytes) -> BatchSpan:
    """A SPAN answer's body (IpcError when it is malformed)."""
    try:
        start, stop, has_prev = _SPAN.unpack_from(body)
        at = _SPAN.size
        prev = body[at : at + HASH_BYTES] if has_prev else None
        at += HASH_BYTES if has_prev else 0
        (note_len,) = _U32.unpack_from(body, at)
        at += _U32.size
        note = body[at : at + note_len]
        path = body[at + note_len :]
    except struct.error as exc:
        raise IpcError(f"a malformed batch span from the daemon ({exc})") from exc
    if len(note) != note_len or not path or (prev is not None and len(prev) != HASH_BYTES):
        raise IpcError("a malformed batch span from the daemon")
    return BatchSpan(Path(os.fsdecode(path)), start, stop, prev, note)


class JournalClient:
    """The daemon's journal as agent.ship.JournalSource, over the journal socket.

    `signed` (called by the child's listener when the daemon says the journal signed more)
    wakes `wait_for_new` without asking the daemon; `close` wakes it for good.
    """

    def __init__(self, sock: socket.socket, max_event_bytes: int) -> None:
        self._sock = sock
        self._sock.settimeout(ANSWER_TIMEOUT_S)
        self._max_event_bytes = max_event_bytes
        self._lock = threading.Lock()  # one request on the socket at a time
        self._new = threading.Condition()
        self._checkpointed = 0
        self._closed = False

    def _ask(self, request: bytes) -> bytes:
        with self._lock:
            if self._closed:
                raise IpcError("the shipper is stopping")
            try:
                self._sock.send(request)
                reply = self._sock.recv(MAX_ANSWER)
            except OSError as exc:
                raise IpcError(f"the daemon's journal does not answer ({exc})") from exc
        if not reply:
            raise IpcError("the daemon closed the journal socket")
        if reply[:1] == FAILED:
            raise JournalError(reply[1:].decode("utf-8", "replace"))
        return reply

    def bounds(self) -> tuple[int, int, int]:
        """(first_seq, next_seq, checkpointed) of the daemon's journal."""
        reply = self._ask(BOUNDS)
        if reply[:1] != BOUNDS or len(reply) != 1 + _BOUNDS.size:
            raise IpcError(f"the daemon answered BOUNDS with {reply[:1]!r}")
        first, nxt, checkpointed = _BOUNDS.unpack_from(reply, 1)
        self.signed(checkpointed)
        return first, nxt, checkpointed

    @property
    def next_seq(self) -> int:
        """The seq the daemon's journal gives its next event."""
        return self.bounds()[1]

    @property
    def first_seq(self) -> int:
        """The lowest seq the daemon's journal still holds."""
        return self.bounds()[0]

    def latest_checkpoint(self) -> bytes:
        """The latest signed checkpoint note."""
        reply = self._ask(CHECKPOINT)
        if reply[:1] != CHECKPOINT:
            raise IpcError(f"the daemon answered CHECKPOINT with {reply[:1]!r}")
        return reply[1:]

    def read_batch(self, from_seq: int, max_events: int, max_bytes: int) -> JournalBatch | None:
        """The next signed batch from `from_seq` (agent.journal.Journal.read_batch)."""
        request = READ + _READ.pack(from_seq, min(max_events, 2**32 - 1), min(max_bytes, 2**32 - 1))
        reply = self._ask(request)
        if reply[:1] == NOTHING:
            return None
        if reply[:1] != SPAN:
            raise IpcError(f"the daemon answered READ with {reply[:1]!r}")
        return read_span(decode_span(reply[1:]), self._max_event_bytes)

    def prune_below(self, seq: int) -> int:
        """Ask the daemon to delete the segments below `seq` (after the witness verified)."""
        reply = self._ask(PRUNE + _U64.pack(seq))
        if reply[:1] != PRUNE or len(reply) != 1 + _U32.size:
            raise IpcError(f"the daemon answered PRUNE with {reply[:1]!r}")
        return int(_U32.unpack_from(reply, 1)[0])

    def signed(self, checkpointed: int) -> None:
        """The daemon's journal signed up to `checkpointed`: wake the waiters."""
        with self._new:
            if checkpointed > self._checkpointed:
                self._checkpointed = checkpointed
                self._new.notify_all()

    def wait_for_new(self, after_seq: int, timeout: float) -> bool:
        """Wait until the journal signed more than `after_seq` events; True when it did."""
        with self._new:
            self._new.wait_for(
                lambda: self._closed or self._checkpointed > after_seq, max(0.0, timeout)
            )
            return self._checkpointed > after_seq

    def close(self) -> None:
        """Wake every waiter and refuse further requests."""
        with self._new:
            self._closed = True
            self._new.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
