"""Shipping: the journal's checkpointed batches to the server over one mutual-TLS stream.

Hello carries the journal's bounds, its latest checkpoint and the server checkpoint this
agent witnessed last; the server answers Resume(next_seq). Batches go out with a bounded
in-flight window. For each Ack the agent verifies the server's signed checkpoint and the
consistency proof from the one it witnessed last, stores the new checkpoint atomically,
and only then prunes the journal below the acknowledged seq. An inconsistent server log is
reported (ServerWitnessReport) and nothing is pruned. Any disconnect or refusal ends the
session; the next one starts after a bounded, jittered backoff and resumes from the
server's committed seq, so nothing is lost and nothing is stored twice.

The daemon runs this in its shipper child (agent/shipper_proc.py), over the daemon's
journal (agent/ship_ipc.JournalClient); tests and benchmarks also run it on a thread over
a Journal of their own. Nothing here polls: the stop, a new heartbeat and new journal
events each wake what waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import structlog

from agent.backoff import backoff_delays
from agent.config import AgentError
from agent.enroll import Credentials, split_address
from protos.evidence.chain import Link
from protos.evidence.errors import EvidenceError
from protos.evidence.merkle import verify_consistency
from protos.evidence.note import Checkpoint, verifiers_for, verify_checkpoint
from protos.evidence.origins import server_log_origin
from protos.files import write_atomic
from protos.wire import pb, rpc

log = structlog.get_logger("agent.ship")


class ShipError(AgentError):
    """Shipping cannot go on: the server refused, disconnected, or its log is inconsistent."""


class JournalSource(Protocol):
    """What shipping needs from agent.journal.Journal."""

    @property
    def next_seq(self) -> int: ...
    @property
    def first_seq(self) -> int: ...
    def latest_checkpoint(self) -> bytes: ...
    def wait_for_new(self, after_seq: int, timeout: float) -> bool: ...
    def read_batch(self, from_seq: int, max_events: int, max_bytes: int) -> object | None: ...
    def prune_below(self, seq: int) -> int: ...


@dataclass(frozen=True, slots=True)
class ShipLimits:
    """Bounds on the agent side of the stream."""

    max_batch_events: int = 4096
    max_batch_bytes: int = 4 * 1024 * 1024
    max_in_flight: int = 4
    backoff_first: float = 0.2
    backoff_max: float = 30.0
    ack_timeout: float = 60.0
    heartbeat_seconds: float = 30.0
    message_bytes: int = 8 * 1024 * 1024
    # The sender waits this long for the journal to sign more before it looks again (a
    # wait for new events cannot be cancelled: this bounds how late a stop is seen there).
    idle_wait_seconds: float = 1.0


def batch_message(
    batch_id: int, prev_hash: bytes, links: Sequence[Link], checkpoint: bytes
) -> pb.AgentMessage:
    """The AgentMessage carrying one journal batch.

    Records are added in place (`records.add`): building EventRecords and copying them into
    the batch cost ~2 µs an event, about four times as much.
    """
    message = pb.AgentMessage()
    out = message.batch
    out.batch_id = batch_id
    out.prev_hash = prev_hash
    out.checkpoint = checkpoint
    add = out.records.add
    for k in links:
        add(seq=k.seq, event=k.event, chain_hash=k.hash)
    return message


class Witness:
    """The server checkpoint this agent verified last, kept atomically in the state dir."""

    def __init__(self, path: Path, server_key: bytes, origin: str) -> None:
        self.path = path
        self.origin = origin
        self._public = server_key
        self.note = b""
        self.checkpoint: Checkpoint | None = None
        with contextlib.suppress(FileNotFoundError):
            note = path.read_bytes()[: 64 * 1024]
            self.checkpoint = self.verify(note)
            self.note = note

    def verify(self, note: bytes) -> Checkpoint:
        """The checkpoint in `note` once the server key's signature on it verifies."""
        verifiers = verifiers_for(note, self._public, "custodes-server")
        return verify_checkpoint(note, verifiers, origin=self.origin)

    def advance(self, note: bytes, proof: list[bytes], proof_from: int) -> Checkpoint:
        """Verify `note` extends the witnessed checkpoint; store it. EvidenceError if not."""
        new = self.verify(note)
        old = self.checkpoint
        if old is not None:
            if proof_from != old.size and not (old.size == new.size and not proof):
                raise ShipError(
                    f"the server's proof starts at size {proof_from}, expected the witnessed "
                    f"size {old.size}"
                )
            verify_consistency(old.size, new.size, old.root, new.root, proof)
        if old is None or new.size != old.size or note != self.note:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.path, note, mode=0o600)
        self.note, self.checkpoint = note, new
        return new


class RefusedError(ShipError):
    """The server refused a batch (its code and words are in the message)."""


class Shipper:
    """Ships one journal to one server; `run` loops until `stop` is set."""

    def __init__(
        self,
        journal: JournalSource,
        creds: Credentials,
        agent_id: str,
        client: str,
        *,
        server: str | None = None,
        limits: ShipLimits | None = None,
        version: str = "0.1.0",
        rng: random.Random | None = None,
        on_server_message: Callable[[pb.ServerMessage], None] | None = None,
    ) -> None:
        self.journal = journal
        self.creds = creds
        self.agent_id = agent_id
        self.client = client
        self.server = server or creds.server_info()["server"]
        self.limits = limits or ShipLimits()
        self.version = version
        self.witness = Witness(
            creds.state_dir / "ship" / "server-checkpoint.note",
            creds.read(creds.server_pub),
            server_log_origin(agent_id),
        )
        self.acked = self.witness.checkpoint.size if self.witness.checkpoint else 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self.stats = {"sessions": 0, "batches": 0, "acks": 0, "refusals": 0, "events": 0}
        # Grants, revocations and agreement bundles go to agent/delivery.py (the daemon's).
        self.on_server_message = on_server_message
        # The daemon's latest sample, and the one sent last: it is fresh (not sent yet, its
        # own time kept) while they differ. Posting one wakes the heartbeat task (`_beat`).
        self._heartbeat: pb.Heartbeat | None = None
        self._heartbeat_sent: pb.Heartbeat | None = None
        # Set while `run` runs: wake its tasks from other threads without polling.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._beat: asyncio.Event | None = None

    def send_heartbeat(self, heartbeat: pb.Heartbeat) -> None:
        """Post the daemon's latest heartbeat; it goes out at once when connected (any thread).

        The daemon posts every `heartbeat_seconds` and on a mode change. Between posts the
        shipper repeats the latest one every `heartbeat_seconds`, with the journal's
        current position, so the server always sees the mode, marks and agreement.
        """
        self._heartbeat = heartbeat
        self._wake(self._beat)

    def _wake(self, event: asyncio.Event | None) -> None:
        loop = self._loop
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(event.set)

    def _heartbeat_fresh(self) -> bool:
        return self._heartbeat is not self._heartbeat_sent

    def _next_heartbeat(self) -> pb.Heartbeat:
        latest = self._heartbeat
        beat = pb.Heartbeat()
        if latest is not None:
            beat.CopyFrom(latest)
        if latest is None or latest is self._heartbeat_sent:  # a repeat: stamped now
            beat.unix_nanos = time.time_ns()
        self._heartbeat_sent = latest
        beat.journal_next_seq = max(beat.journal_next_seq, self.journal.next_seq)
        return beat

    # -- the loop ------------------------------------------------------------------------

    def run_in_thread(self, stop: threading.Event) -> threading.Thread:
        """Run the shipping loop on its own thread (with its own event loop)."""
        thread = threading.Thread(
            target=lambda: asyncio.run(self.run(stop)), name="shipper", daemon=True
        )
        thread.start()
        return thread

    async def run(self, stop: threading.Event) -> None:
        """Connect, ship, reconnect after a backoff; return when `stop` is set."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._beat = asyncio.Event()
        # One thread sleeps in stop.wait() and wakes the loop: no task polls `stop`.
        threading.Thread(
            target=self._await_stop, args=(stop,), name="shipper-stop", daemon=True
        ).start()
        try:
            await self._run(stop)
        finally:
            self._loop = None

    def _await_stop(self, stop: threading.Event) -> None:
        stop.wait()
        self._wake(self._stopped)

    async def _run(self, stop: threading.Event) -> None:
        assert self._stopped is not None
        delay = backoff_delays(self.limits.backoff_first, self.limits.backoff_max, self._rng)
        while not stop.is_set():
            acks_before = self.stats["acks"]
            try:
                await self.session(stop)
            except (ShipError, EvidenceError) as exc:
                log.warning("ship_session_ended", reason=str(exc)[:500])
            except grpc.RpcError as exc:
                log.info("ship_disconnected", code=str(exc.code()), detail=str(exc.details())[:300])
            except Exception:
                log.exception("ship_session_crashed")
            if self.stats["acks"] > acks_before:
                delay = backoff_delays(
                    self.limits.backoff_first, self.limits.backoff_max, self._rng
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay())

    def _channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.creds.read(self.creds.ca),
            private_key=self.creds.read(self.creds.key),
            certificate_chain=self.creds.read(self.creds.cert),
        )
        host, _ = split_address(self.server)
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", self.limits.message_bytes),
            ("grpc.max_send_message_length", self.limits.message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.enable_retries", 0),
        ]
        if host not in ("127.0.0.1", "localhost"):
            options.append(("grpc.default_authority", host))
        return grpc.aio.secure_channel(self.server, creds, options=options)

    async def session(self, stop: threading.Event) -> None:
        """One connection: Hello, Resume, then batches and acks until something ends it."""
        self.stats["sessions"] += 1
        async with self._channel() as channel:
            call = rpc.AgentChannelStub(channel).Connect()
            try:
                await self._converse(call, stop)
            finally:
                call.cancel()

    async def _converse(self, call: grpc.aio.StreamStreamCall, stop: threading.Event) -> None:
        j = self.journal
        # In the shipping child each of these is a round trip to the daemon: off the loop.
        first_seq, next_seq, latest = await asyncio.to_thread(
            lambda: (j.first_seq, j.next_seq, j.latest_checkpoint())
        )
        await call.write(
            pb.AgentMessage(
                hello=pb.Hello(
                    agent_id=self.agent_id,
                    version=self.version,
                    journal_first_seq=first_seq,
                    journal_next_seq=next_seq,
                    latest_checkpoint=latest,
                    last_server_checkpoint=self.witness.note,
                )
            )
        )
        first = await asyncio.wait_for(call.read(), self.limits.ack_timeout)
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "resume":
            raise ShipError(f"the server answered Hello with {first!r}, expected Resume")
        resume = first.resume
        self._check_resume(resume)
        send_seq = resume.next_seq
        if send_seq < first_seq:
            raise ShipError(
                f"the server wants seq {send_seq}, but the journal starts at {first_seq}"
            )
        window = max(1, min(self.limits.max_in_flight, resume.max_in_flight or 1))
        max_events = max(1, min(self.limits.max_batch_events, resume.max_batch_events or 1))
        log.info("ship_resumed", next_seq=send_seq, journal_next_seq=next_seq, window=window)
        pending: deque[tuple[int, int]] = deque()
        slots = asyncio.Semaphore(window)
        write_lock = asyncio.Lock()
        ended = threading.Event()
        batch_id = 0

        def next_batch(from_seq: int) -> object | None:
            while not stop.is_set() and not ended.is_set():
                batch = j.read_batch(from_seq, max_events, self.limits.max_batch_bytes)
                if batch is not None:
                    return batch
                j.wait_for_new(from_seq, self.limits.idle_wait_seconds)
            return None

        async def sender() -> None:
            nonlocal send_seq, batch_id
            while True:
                await slots.acquire()
                batch = await asyncio.to_thread(next_batch, send_seq)
                if batch is None:
                    return
                links = batch.links  # type: ignore[attr-defined]
                batch_id += 1
                message = batch_message(
                    batch_id,
                    batch.prev_hash,  # type: ignore[attr-defined]
                    links,
                    batch.checkpoint,  # type: ignore[attr-defined]
                )
                async with write_lock:
                    await call.write(message)
                pending.append((batch_id, links[-1].seq + 1))
                send_seq = links[-1].seq + 1
                self.stats["batches"] += 1

        async def receiver() -> None:
            while True:
                timeout = self.limits.ack_timeout if pending else None
                msg = await asyncio.wait_for(call.read(), timeout)
                if msg is grpc.aio.EOF:
                    raise ShipError("the server closed the stream")
                which = msg.WhichOneof("msg")
                if which == "ack":
                    await self._on_ack(msg.ack, pending, call, write_lock)
                    slots.release()
                elif which == "refusal":
                    r = msg.refusal
                    self.stats["refusals"] += 1
                    raise RefusedError(
                        f"the server refused batch {r.batch_id} "
                        f"({pb.Refusal.Code.Name(r.code)}): {r.message} "
                        f"(it expects seq {r.expected_seq})"
                    )
                elif (
                    which in ("grant", "revocation", "agreement")
                    and self.on_server_message is not None
                ):
                    await asyncio.to_thread(self.on_server_message, msg)

        async def stopper() -> None:
            stopped = self._stopped
            if stopped is not None:
                await stopped.wait()

        tasks = [asyncio.create_task(t()) for t in (sender, receiver, stopper)]
        tasks.append(asyncio.create_task(self._heartbeats(call, write_lock)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if not stop.is_set():
                # The sender ended without stop: wait for outstanding acks, then leave.
                await asyncio.wait_for(self._drain(pending), self.limits.ack_timeout)
        finally:
            ended.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _heartbeats(self, call: grpc.aio.StreamStreamCall, write_lock: asyncio.Lock) -> None:
        """One heartbeat at once (the server learns mode and marks on connect), then one
        every heartbeat_seconds or as soon as the daemon posts a new one (a mode change)."""
        beat = self._beat
        assert beat is not None
        due = time.monotonic()
        while True:
            # Cleared before the look: a post after it sets `beat` again, one before it is
            # seen fresh; either way it is not missed.
            beat.clear()
            if self._heartbeat_fresh() or time.monotonic() >= due:
                # (the journal's position is a round trip to the daemon in the child)
                heartbeat = await asyncio.to_thread(self._next_heartbeat)
                message = pb.AgentMessage(heartbeat=heartbeat)
                async with write_lock:
                    await call.write(message)
                due = time.monotonic() + self.limits.heartbeat_seconds
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(beat.wait(), max(0.0, due - time.monotonic()))

    async def _drain(self, pending: deque[tuple[int, int]]) -> None:
        while pending:
            await asyncio.sleep(0.05)

    def _check_resume(self, resume: pb.Resume) -> None:
        if not resume.server_checkpoint:
            return
        offered = self.witness.verify(resume.server_checkpoint)
        old = self.witness.checkpoint
        if old is not None and (
            offered.size < old.size or (offered.size == old.size and offered.root != old.root)
        ):
            raise ShipError(
                f"the server's log for this agent is at size {offered.size}; this agent "
                f"witnessed size {old.size} (root {old.root[:4].hex()}…) before"
            )

    async def _on_ack(
        self,
        ack: pb.Ack,
        pending: deque[tuple[int, int]],
        call: grpc.aio.StreamStreamCall,
        write_lock: asyncio.Lock,
    ) -> None:
        if not pending or pending[0][0] != ack.batch_id:
            raise ShipError(f"an Ack for batch {ack.batch_id} arrived out of order")
        _, end = pending.popleft()
        if ack.next_seq < end:
            raise ShipError(f"the server acknowledged up to {ack.next_seq}, expected {end}")
        previous = self.witness.note
        try:
            cp = await asyncio.to_thread(
                self.witness.advance,
                bytes(ack.server_checkpoint),
                list(ack.consistency_proof),
                ack.proof_from_size,
            )
        except (EvidenceError, ShipError) as exc:
            log.exception("server_log_inconsistent", problem=str(exc)[:500])
            async with write_lock:
                await call.write(
                    pb.AgentMessage(
                        witness=pb.ServerWitnessReport(
                            previous_checkpoint=previous,
                            offered_checkpoint=ack.server_checkpoint,
                            problem=str(exc)[:2000],
                        )
                    )
                )
            raise ShipError(f"the server's log is inconsistent: {exc}") from exc
        if cp.size < ack.next_seq:
            raise ShipError(f"the server checkpoint covers {cp.size}, expected {ack.next_seq}")
        self.acked = ack.next_seq
        self.stats["acks"] += 1
        self.stats["events"] = ack.next_seq
        await asyncio.to_thread(self.journal.prune_below, ack.next_seq)
