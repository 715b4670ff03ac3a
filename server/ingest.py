"""The AgentChannel servicer: verify each batch, store it verbatim, then acknowledge.

Identity comes only from the peer's client certificate: the agent id and client in its
SAN URI. Each batch is checked before anything is stored (server.batch_checks: size, chain
links, the events' identity and seq, the agent's signed checkpoint through its key chain),
a batch k+1 while batch k commits. It is then stored verbatim with its indexed columns and
any learnt key, appended to the server's Merkle log for the agent (server.log.ServerLog)
and committed; only then is it acknowledged with the server's signed checkpoint and a
consistency proof from the size the agent last witnessed. A refused batch is recorded as an
integrity event and ends the stream (the agent reconnects and resumes from the committed
sequence).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError

from protos.evidence import errors as ev
from protos.evidence.keychain import EpochKey, KeyChain
from protos.evidence.merkle import record_leaves
from protos.evidence.note import parse_checkpoint
from protos.evidence.origins import agent_origin
from protos.wire import pb, rpc
from server.batch_checks import (
    Code,
    CodeValue,
    RefusedError,
    StreamState,
    check_batch,
    check_checkpoint,
    parse_records,
    read_batch,
)
from server.detect.model import Observation
from server.log import ServerLog
from server.store import AgentKeyRow, StoreConflictError, StoredRecord, StoreError
from server.tls import PeerError, peer_from_auth_context

if TYPE_CHECKING:
    from protos.evidence.chain import Link
    from server.app import Runtime

log = structlog.get_logger()
_GARBAGE = "the message is not a serialised custodes.v1.AgentMessage"


@dataclass
class _Bucket:
    """A token bucket of events per second for one agent."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, n: int, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch verified and parsed off the database thread, waiting for its commit."""

    batch_id: int
    first: int
    records: list[StoredRecord]
    observations: list[Observation] | None  # for detection; None when it is off
    checkpoint: bytes
    new_head: bytes
    leaves: list[bytes]
    learnt: list[EpochKey]


class Ingest:
    """Batch handling on the database thread (store calls are synchronous)."""

    def __init__(self, rt: Runtime, logs: ServerLog) -> None:
        self.rt = rt
        self.logs = logs

    def key_chain(self, agent_id: str, client: str, enrolled: bytes) -> KeyChain:
        """The agent's key chain as the store knows it: its latest learnt epoch, or epoch 0."""
        rows = self.rt.store.agent_keys(agent_id)
        current = (
            EpochKey(
                rows[-1].epoch, rows[-1].public_key, rows[-1].valid_from, rows[-1].announced_seq
            )
            if rows
            else EpochKey(0, enrolled)
        )
        return KeyChain(agent_origin(client, agent_id), current)

    def handle(self, state: StreamState, batch: pb.EventBatch) -> pb.Ack:
        """A batch that starts below the verified position (a replay, maybe with new events).

        The replayed part must equal what is stored; new events are verified as in
        `prepare` and stored. Returns the Ack; RefusedError otherwise.
        """
        _refuse_if_closed(state, batch.records[0].seq if batch.records else 0)
        try:
            return self._handle(state, batch)
        except BaseException:
            state.closed = True
            raise

    def _handle(self, state: StreamState, batch: pb.EventBatch) -> pb.Ack:
        store = self.rt.store
        agent = store.get_agent(state.agent_id)
        if agent is None or agent.revoked_unix is not None:
            raise RefusedError(
                Code.CODE_WRONG_AGENT,
                f"agent {state.agent_id!r} is not enrolled or has been revoked",
                "revoked",
                0,
            )
        next_seq, head = agent.next_seq, agent.head_hash
        links, new_head = check_batch(state, next_seq, head, batch, self.rt.limits.max_batch_events)
        first, last = links[0].seq, links[-1].seq
        fresh = [link for link in links if link.seq >= next_seq]
        if len(fresh) < len(links):
            self._check_replay(state, [link for link in links if link.seq < next_seq], next_seq)
        if fresh:
            records, observations, rotations = parse_records(
                state, fresh, next_seq, observe=self.rt.detector is not None
            )
            learnt = check_checkpoint(
                state, bytes(batch.checkpoint), last, new_head, rotations, next_seq
            )
            p = Prepared(
                batch.batch_id,
                next_seq,
                records,
                observations,
                bytes(batch.checkpoint),
                new_head,
                record_leaves(next_seq, [link.hash for link in fresh]),
                learnt,
            )
            next_seq = self._store(state, p)
        log.debug("batch_stored", agent=state.agent_id, first=first, last=last, stored=len(fresh))
        return self.ack(state, batch.batch_id, next_seq)

    def prepare(self, state: StreamState, batch: pb.EventBatch) -> Prepared:
        """Verify and parse a batch that continues the stream's verified position.

        Runs off the database thread, so the next batch is checked while the previous one
        commits. Raises RefusedError.
        """
        expected, head = state.verified_next, state.verified_head
        max_events, observe = self.rt.limits.max_batch_events, self.rt.detector is not None
        parsed = read_batch(state, expected, head, batch, max_events, observe=observe)
        if parsed is None:  # something is wrong: the step-by-step checks name it
            links, new_head = check_batch(state, expected, head, batch, max_events)
            records, observations, rotations = parse_records(
                state, links, expected, observe=observe
            )
            leaves = record_leaves(links[0].seq, [link.hash for link in links])
        else:
            records, observations, rotations, leaves, new_head = parsed
        checkpoint = bytes(batch.checkpoint)
        first, last = records[0].seq, records[-1].seq
        learnt = check_checkpoint(state, checkpoint, last, new_head, rotations, expected)
        prepared = Prepared(
            batch.batch_id, first, records, observations, checkpoint, new_head, leaves, learnt
        )
        state.verified_next, state.verified_head = last + 1, new_head
        return prepared

    def commit(self, state: StreamState, p: Prepared) -> pb.Ack:
        """Store a prepared batch in one transaction, log it, and return the Ack.

        Raises RefusedError, and then refuses every later batch of the stream (they were
        verified against this one's head), as it does once the stream has ended.
        """
        _refuse_if_closed(state, p.first)
        try:
            return self.ack(state, p.batch_id, self._store(state, p))
        except BaseException:
            state.closed = True
            raise

    def _store(self, state: StreamState, p: Prepared) -> int:
        agent_id = state.agent_id
        keys = [
            AgentKeyRow(agent_id, k.epoch, k.public, k.valid_from, k.announced_seq)
            for k in p.learnt
        ]
        try:
            next_seq = self.rt.store.append_batch(
                agent_id,
                p.first,
                p.records,
                agent_checkpoint=p.checkpoint,
                new_head=p.new_head,
                heartbeat_unix=int(time.time()),
                new_keys=keys,
                leaves=p.leaves,
            )
        except StoreConflictError as exc:
            self.logs.forget(agent_id)
            raise RefusedError(
                Code.CODE_REPLAY, str(exc), "conflict", exc.next_seq or p.first
            ) from exc
        except StoreError as exc:  # revoked or removed meanwhile
            raise RefusedError(Code.CODE_WRONG_AGENT, str(exc), "revoked", p.first) from exc
        for k in p.learnt:
            log.info("agent_key_learnt", agent=agent_id, epoch=k.epoch, valid_from=k.valid_from)
        self.logs.append(agent_id, p.records, p.leaves)
        self._detect(p.records, p.observations)
        return next_seq

    def _detect(
        self, records: Sequence[StoredRecord], observations: Sequence[Observation] | None
    ) -> None:
        """Hand committed records to the detector; a failure leaves them to its catch-up."""
        detector = self.rt.detector
        if detector is None or not records:
            return
        try:
            detector.on_committed(records, time.time(), observations)
        except Exception as exc:  # stored evidence must be acked regardless
            log.exception("detect_failed", agent=records[0].agent_id, error=repr(exc)[:300])

    def ack(self, state: StreamState, batch_id: int, next_seq: int) -> pb.Ack:
        """The server's signed checkpoint at `next_seq` and a proof from what was witnessed."""
        note, size = self.logs.checkpoint(state.agent_id)
        if size < next_seq:
            self.logs.catch_up(state.agent_id)
            note, size = self.logs.checkpoint(state.agent_id)
        if size < next_seq:
            raise StoreError(f"the server log holds {size} events, expected {next_seq}")
        proof: list[bytes] = []
        from_size = state.witnessed_size if state.witnessed_size <= size else 0
        if 0 < from_size < size:
            proof = self.logs.consistency_proof(state.agent_id, from_size, size)
        state.witnessed_size = size
        return pb.Ack(
            batch_id=batch_id,
            next_seq=next_seq,
            server_checkpoint=note,
            consistency_proof=proof,
            proof_from_size=from_size,
        )

    def _check_replay(self, state: StreamState, old: Sequence[Link], next_seq: int) -> None:
        stored = self.rt.store.leaf_hashes(state.agent_id, old[0].seq)[: len(old)]
        offered = record_leaves(old[0].seq, [link.hash for link in old])
        if stored != offered:
            bad = next(
                (link.seq for link, s, o in zip(old, stored, offered, strict=False) if s != o),
                old[0].seq,
            )
            raise RefusedError(
                Code.CODE_REPLAY,
                f"event seq {bad} of agent {state.agent_id!r} was already stored with other "
                f"bytes; expected the stored event or seq {next_seq}",
                "modified_replay",
                next_seq,
            )

    def record(self, agent_id: str, kind: str, detail: str) -> None:
        """Keep an integrity finding about the agent's evidence."""
        self.rt.store.record_integrity_event(agent_id, kind, detail[:2000], int(time.time()))


def _refuse_if_closed(state: StreamState, seq: int) -> None:
    if state.closed:
        raise RefusedError(
            Code.CODE_REPLAY,
            f"batch of agent {state.agent_id!r} at seq {seq} came after a refused batch or the "
            "end of its stream; expected a new stream from the stored position",
            "closed",
            seq,
        )


@dataclass(frozen=True, slots=True)
class _Queued:
    """A batch queued on the database thread: its id and the future of its Ack."""

    batch_id: int
    ack: asyncio.Future[pb.Ack]


def _queued(batch_id: int, future: Future[pb.Ack]) -> _Queued:
    """Wrap a database-thread future for the event loop (call on the loop's thread)."""
    ack = asyncio.wrap_future(future)
    # A batch queued after a refused one fails too, and nobody awaits it: retrieve its
    # exception here so asyncio does not report it as never retrieved.
    ack.add_done_callback(lambda f: f.cancelled() or f.exception())
    return _Queued(batch_id, ack)


class AgentChannelService(rpc.AgentChannelServicer):
    """One bidirectional stream per connected agent."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.logs = ServerLog(rt.store, rt.signer)
        self.ingest = Ingest(rt, self.logs)
        self._buckets: dict[str, _Bucket] = {}

    async def Connect(  # noqa: N802 - the generated servicer's method name
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ServerMessage]:
        try:
            peer = peer_from_auth_context(context.auth_context())
        except PeerError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            return
        if peer.identity.kind != "agent":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only agents may connect")
            return
        limits = self.rt.limits
        messages = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(messages), limits.hello_seconds)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello arrived, expected one first"
            )
            return
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _GARBAGE)
            return
        if first.WhichOneof("msg") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
            return
        hello = first.hello
        name, client = peer.identity.name, peer.identity.client
        if hello.agent_id and hello.agent_id != name:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Hello names agent {hello.agent_id!r}; the certificate is agent {name!r}",
            )
            return
        agent = await self.rt.db(self.rt.store.get_agent, name)
        if agent is None or agent.client != client:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent {name!r} is unknown")
            return
        if agent.revoked_unix is not None or agent.cert_fingerprint != peer.cert_fingerprint:
            log.warning("agent_refused", agent=name, reason="revoked or replaced certificate")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"agent {name!r} has been revoked or its certificate replaced",
            )
            return
        keys = await self.rt.db(self.ingest.key_chain, name, client, agent.public_key)
        state = StreamState(name, client, keys, _witnessed(hello), agent.next_seq, agent.head_hash)
        note, _ = await self.rt.db(self.logs.checkpoint, name)
        log.info("agent_connected", agent=name, client=client, next_seq=agent.next_seq)
        yield pb.ServerMessage(
            resume=pb.Resume(
                next_seq=agent.next_seq,
                server_checkpoint=note,
                max_batch_events=limits.max_batch_events,
                max_in_flight=limits.max_in_flight,
            )
        )
        # Two tasks: the reader verifies batch k+1 (and queues its commit on the database
        # thread) while batch k commits; the committer answers each in order.
        work: asyncio.Queue[_Work] = asyncio.Queue(maxsize=limits.max_in_flight + 1)
        out: asyncio.Queue[_Out] = asyncio.Queue()
        reader = asyncio.create_task(self._read(state, messages, work, out))
        committer = asyncio.create_task(self._commit(state, work, out))
        try:
            while True:
                item = await out.get()
                if item is None:
                    return
                if isinstance(item, tuple):
                    await context.abort(item[0], item[1])
                    return
                yield item
        finally:
            state.closed = True  # batches still queued on the database thread are dropped
            for task in (reader, committer):
                task.cancel()
            await asyncio.gather(reader, committer, return_exceptions=True)

    async def _read(
        self,
        state: StreamState,
        messages: AsyncIterator[pb.AgentMessage],
        work: asyncio.Queue[_Work],
        out: asyncio.Queue[_Out],
    ) -> None:
        limits, name = self.rt.limits, state.agent_id
        bucket = self._buckets.setdefault(
            name,
            _Bucket(
                limits.events_per_second, limits.burst_events, limits.burst_events, time.monotonic()
            ),
        )
        while True:
            try:
                message = await asyncio.wait_for(anext(messages), limits.idle_seconds)
            except StopAsyncIteration:
                await work.put(None)
                return
            except TimeoutError:
                log.info("agent_idle", agent=name)
                await work.put(None)
                return
            except DecodeError:
                log.warning("garbage_received", agent=name)
                await out.put((grpc.StatusCode.INVALID_ARGUMENT, _GARBAGE))
                return
            which = message.WhichOneof("msg")
            if which == "batch":
                batch = message.batch
                if not bucket.take(len(batch.records), time.monotonic()):
                    limited = RefusedError(Code.CODE_RATE_LIMITED, "rate limited", "rate", 0)
                    await work.put((batch.batch_id, limited))
                    return
                records = batch.records
                if records and records[0].seq < state.verified_next:
                    # A replay, checked against the store after the batches queued before it.
                    queued = self.rt.submit(self.ingest.handle, state, batch)
                    await work.put(_queued(batch.batch_id, queued))
                    continue
                try:
                    queued = await asyncio.to_thread(self._prepare_and_queue, state, batch)
                except RefusedError as exc:
                    await work.put((batch.batch_id, exc))
                    return
                await work.put(_queued(batch.batch_id, queued))
            elif which == "heartbeat":
                beat = message.heartbeat.SerializeToString()
                await self.rt.db(self.rt.store.touch_agent, name, int(time.time()), beat)
                if self.rt.detector is not None:
                    await self.rt.db(
                        self.rt.detector.on_heartbeat, name, state.client, beat, time.time()
                    )
            elif which == "witness":
                w = message.witness
                log.error("server_log_disputed", agent=name, problem=w.problem[:500])
                await self.rt.db(self.ingest.record, name, "server_witness", w.problem)
            else:
                odd = RefusedError(Code.CODE_MALFORMED, f"unexpected message {which!r}", "odd", 0)
                await work.put((0, odd))
                return

    def _prepare_and_queue(self, state: StreamState, batch: pb.EventBatch) -> Future[pb.Ack]:
        """Verify a batch (this thread) and queue its commit on the database thread.

        Straight from this thread, not through the event loop: the database thread finds
        the next batch waiting when it finishes one, instead of waiting for the loop (and
        the GIL) to hand it over. Commits run in the order batches were queued. Raises
        RefusedError.
        """
        prepared = self.ingest.prepare(state, batch)
        return self.rt.submit(self.ingest.commit, state, prepared)

    async def _commit(
        self, state: StreamState, work: asyncio.Queue[_Work], out: asyncio.Queue[_Out]
    ) -> None:
        name = state.agent_id
        while True:
            item = await work.get()
            if item is None:
                await out.put(None)
                return
            try:
                if isinstance(item, tuple):
                    raise item[1]
                ack = await item.ack
            except RefusedError as exc:
                batch_id = item[0] if isinstance(item, tuple) else item.batch_id
                log.warning("batch_refused", agent=name, code=Code.Name(exc.code), reason=str(exc))
                if exc.code not in (Code.CODE_RATE_LIMITED, Code.CODE_TOO_LARGE):
                    await self.rt.db(self.ingest.record, name, exc.kind, str(exc))
                await out.put(_refusal(batch_id, exc.code, str(exc), exc.expected_seq))
                await out.put(None)
                return
            await out.put(pb.ServerMessage(ack=ack))


_Work: TypeAlias = "_Queued | tuple[int, RefusedError] | None"
_Out: TypeAlias = "pb.ServerMessage | tuple[grpc.StatusCode, str] | None"


def _refusal(batch_id: int, code: CodeValue, message: str, expected: int) -> pb.ServerMessage:
    return pb.ServerMessage(
        refusal=pb.Refusal(batch_id=batch_id, code=code, message=message, expected_seq=expected)
    )


def _witnessed(hello: pb.Hello) -> int:
    if not hello.last_server_checkpoint:
        return 0
    try:
        cp, _ = parse_checkpoint(hello.last_server_checkpoint)
    except ev.MalformedError:
        return 0
    return cp.size
