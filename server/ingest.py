"""The AgentChannel servicer: verify each batch, store it verbatim, then acknowledge.

Identity comes only from the peer's client certificate: the agent id and client in its
SAN URI. Per batch, in this order and before anything is stored: size limits, the chain
links from the stored head (gap, reorder, replay, modified), the event bytes parsed (each
must name this agent, client and seq; KeyRotated events are noted), then the agent's signed
checkpoint through its key chain (protos.evidence.keychain: the current epoch's key,
origin, size, root = chain head), which may teach the next epoch's key. The batch is stored
verbatim with its indexed columns and any learnt key, appended to the server's Merkle log
for the agent (server.log.ServerLog) and committed; only then is it acknowledged with the
server's signed checkpoint and a consistency proof from the size the agent last witnessed.
A refused batch is recorded as an integrity event and ends the stream (the agent reconnects
and resumes from the committed sequence).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

import grpc
import structlog
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from protos.evidence import _native
from protos.evidence import errors as ev
from protos.evidence.chain import CHAIN_DOMAIN, MAX_SEQ, Link, make_links, verify_links
from protos.evidence.keychain import EpochKey, KeyChain, Rotation
from protos.evidence.merkle import record_leaves
from protos.evidence.note import parse_checkpoint
from protos.evidence.origins import agent_origin
from protos.wire import pb, rpc
from server.detect.events import access_observation, observation_of
from server.detect.model import Observation
from server.log import ServerLog
from server.store import AgentKeyRow, StoreConflictError, StoredRecord, StoreError
from server.tls import PeerError, peer_from_auth_context

if TYPE_CHECKING:
    from server.app import Runtime

log = structlog.get_logger()
Code = pb.Refusal.Code
_GARBAGE = "the message is not a serialised custodes.v1.AgentMessage"
CodeValue: TypeAlias = "pb.Refusal.Code.ValueType"

_VERDICTS = {
    pb.VERDICT_ALLOW: "allow",
    pb.VERDICT_DENY: "deny",
    pb.VERDICT_OBSERVED: "observed",
}
_ACTIONS = {
    pb.ACTION_READ: "read",
    pb.ACTION_WRITE: "write",
    pb.ACTION_CREATE: "create",
    pb.ACTION_DELETE: "delete",
    pb.ACTION_RENAME: "rename",
    pb.ACTION_EXEC: "exec",
    pb.ACTION_LIST: "list",
}
_CODES: dict[type[ev.EvidenceError], CodeValue] = {
    ev.GapError: Code.CODE_GAP,
    ev.ReorderError: Code.CODE_REORDER,
    ev.DuplicateError: Code.CODE_REPLAY,
    ev.ModifiedEventError: Code.CODE_BROKEN_CHAIN,
    ev.BadSignatureError: Code.CODE_BAD_SIGNATURE,
    ev.UnknownKeyError: Code.CODE_UNKNOWN_KEY,
    ev.MalformedError: Code.CODE_MALFORMED,
}


class RefusedError(Exception):
    """A batch the server will not store; carries the wire code."""

    def __init__(self, code: CodeValue, message: str, kind: str, expected_seq: int) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.expected_seq = expected_seq


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


@dataclass
class StreamState:
    """One connected agent, as this stream knows it."""

    agent_id: str
    client: str
    keys: KeyChain  # which epoch key must sign the next checkpoint
    witnessed_size: int  # the server log size the agent last verified
    verified_next: int = 0  # the position after the last batch verified (maybe not committed)
    verified_head: bytes = bytes(32)
    closed: bool = False  # a batch was refused or the stream ended: store nothing more


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


_new_tuple = tuple.__new__


def to_record(agent_id: str, client: str, link: Link, event: pb.Event) -> StoredRecord:
    """A stored record: the verbatim bytes plus the indexed columns of the parsed event."""
    kind = event.WhichOneof("body") or "unknown"
    if kind == "access":
        a = event.access
        s, o = a.subject, a.object
        return access_record(
            agent_id, client, link.seq, link.event, link.hash, event.unix_nanos, a, s, o
        )
    technician = area = None
    if kind == "grant":
        technician = event.grant.technician or None
        area = event.grant.area or None
    return StoredRecord(
        agent_id,
        link.seq,
        link.event,
        link.hash,
        client,
        event.unix_nanos,
        kind,
        technician,
        None,
        area,
    )


def access_record(  # noqa: PLR0917 - the parts of one event, read once by the caller
    agent_id: str,
    client: str,
    seq: int,
    event: bytes,
    chain_hash: bytes,
    unix_nanos: int,
    access: pb.AccessDecision,
    subject: pb.Subject,
    obj: pb.Object,
) -> StoredRecord:
    """The stored record of an access event, from the parts of it the caller already read.

    This runs for every event ingested: each field is read once, and the tuple is made with
    tuple.__new__ (all of StoredRecord's fields, in order), skipping the NamedTuple's __new__
    that would only pack the same arguments (~0.4 µs an event).
    """
    return _new_tuple(
        StoredRecord,
        (
            agent_id,
            seq,
            event,
            chain_hash,
            client,
            unix_nanos,
            "access",
            subject.technician or None,
            subject.os_user or None,
            obj.area or None,
            _ACTIONS.get(access.action),
            _VERDICTS.get(access.verdict),
            access.rule or None,
            obj.path or None,
        ),
    )


def check_batch(
    state: StreamState,
    next_seq: int,
    head: bytes,
    batch: pb.EventBatch,
    max_events: int,
) -> tuple[list[Link], bytes]:
    """Verify the links of a batch that starts at or below `next_seq`; return them and the head.

    Pure. Raises RefusedError with the code for the first problem found.
    """
    records = batch.records
    if not records:
        raise RefusedError(Code.CODE_MALFORMED, "the batch holds no records", "malformed", next_seq)
    if len(records) > max_events:
        raise RefusedError(
            Code.CODE_TOO_LARGE,
            f"the batch holds {len(records)} events, expected at most {max_events}",
            "too_large",
            next_seq,
        )
    first = records[0].seq
    who = state.agent_id
    try:
        links = make_links([(r.seq, r.event, r.chain_hash) for r in records])
        if first > next_seq:
            # verify_links names it: a reorder when next_seq comes later, else a gap.
            verify_links(head, next_seq, links, who=who)
        if first == next_seq and batch.prev_hash != head:
            raise ev.ModifiedEventError(
                f"batch of agent {who!r} at seq {first} does not continue the stored chain "
                f"head {ev.short(head)} (it claims {ev.short(batch.prev_hash)})",
                seq=first,
            )
        new_head = verify_links(batch.prev_hash, first, links, who=who)
    except ev.EvidenceError as exc:
        raise _refused(exc, next_seq) from exc
    return links, new_head


def check_checkpoint(  # noqa: PLR0917 - one call site each, all positional parts of a batch
    state: StreamState,
    note: bytes,
    last: int,
    new_head: bytes,
    rotations: Sequence[Rotation],
    next_seq: int,
) -> list[EpochKey]:
    """Verify the batch's checkpoint through the agent's key chain; return the keys it taught.

    The chain first notes the batch's KeyRotated events; the checkpoint must be signed by
    the current epoch's key, cover exactly the batch and sign its chain head. Raises
    RefusedError.
    """
    keys, who = state.keys, state.agent_id
    before = len(keys.learnt)
    try:
        for rotation in rotations:
            keys.announce(rotation)
        cp = keys.verify(note)
        if cp.size != last + 1:
            raise ev.MalformedError(
                f"the batch's checkpoint covers {cp.size} events, expected {last + 1} "
                f"(the batch ends at seq {last})",
                seq=last,
            )
        if cp.root != new_head:
            raise ev.ModifiedEventError(
                f"chain head of agent {who!r} after seq {last} is {ev.short(new_head)}; its "
                f"signed checkpoint says {ev.short(cp.root)}",
                seq=last,
            )
    except ev.EvidenceError as exc:
        raise _refused(exc, next_seq) from exc
    return keys.learnt[before:]


def _refused(exc: ev.EvidenceError, next_seq: int) -> RefusedError:
    code = next((c for t, c in _CODES.items() if isinstance(exc, t)), Code.CODE_MALFORMED)
    return RefusedError(code, str(exc), exc.kind, next_seq)


def parse_records(
    state: StreamState, links: Sequence[Link], expected_seq: int, *, observe: bool = False
) -> tuple[list[StoredRecord], list[Observation] | None, list[Rotation]]:
    """Parse verified event bytes into stored records (each must be this agent's own), their
    observations for detection when `observe` (from the same parse), and the KeyRotated
    announcements among them."""
    out: list[StoredRecord] = []
    observations: list[Observation] | None = [] if observe else None
    rotations: list[Rotation] = []
    agent_id, client = state.agent_id, state.client
    parse = pb.Event.FromString
    for link in links:
        try:
            event = parse(link.event)
        except Exception as exc:  # protobuf raises DecodeError and others
            raise RefusedError(
                Code.CODE_MALFORMED,
                f"event seq {link.seq} is not a serialised Event ({exc})",
                "malformed",
                expected_seq,
            ) from exc
        if event.seq != link.seq or event.agent_id != agent_id or event.client != client:
            raise RefusedError(
                Code.CODE_WRONG_AGENT,
                f"event seq {link.seq} names agent {event.agent_id!r} of client "
                f"{event.client!r} at seq {event.seq}, expected agent {agent_id!r} of "
                f"client {client!r} at seq {link.seq}",
                "wrong_agent",
                expected_seq,
            )
        if event.WhichOneof("body") == "access":  # nearly every event: its parts read once
            a = event.access
            s, o = a.subject, a.object
            record = access_record(
                agent_id, client, link.seq, link.event, link.hash, event.unix_nanos, a, s, o
            )
            if observations is not None:
                observations.append(access_observation(record, a, s, o))
        else:
            record = to_record(agent_id, client, link, event)
            if record.kind == "key_rotated":
                k = event.key_rotated
                rotations.append(Rotation(link.seq, k.epoch, bytes(k.public_key)))
            if observations is not None:
                observations.append(observation_of(record, event))
        out.append(record)
    return out, observations, rotations


_Parsed: TypeAlias = (
    "tuple[list[StoredRecord], list[Observation] | None, list[Rotation], list[bytes], bytes]"
)


def read_batch(
    state: StreamState,
    expected: int,
    head: bytes,
    batch: pb.EventBatch,
    max_events: int,
    *,
    observe: bool,
) -> _Parsed | None:
    """A batch of access events that continues the chain at (`expected`, `head`), in one pass.

    Returns its stored records, their observations (when `observe`), its KeyRotated
    announcements (none), their RFC 6962 leaf hashes and the new chain head; None as soon as
    anything differs from a well-formed continuation (size, seq, link hash, parse, identity)
    or an event is not an access decision, and the caller then runs `check_batch` and
    `parse_records`, which name the problem or parse the other kinds.

    In C (protos.evidence._native): the same checks as those two and the same records as
    `access_record` and `access_observation` build, the hashing and decoding without the GIL.
    """
    if batch.prev_hash != head or not 0 <= expected <= MAX_SEQ:
        return None
    parsed = _native.read_access_batch(
        state.agent_id, state.client, expected, head, batch.records, max_events, observe
    )
    return cast("_Parsed | None", parsed)


_FAST_FIELDS = {"Event": ("access",), "AccessDecision": (), "Subject": (), "Object": ()}
_KINDS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_ENUM: "enum",
    FieldDescriptor.TYPE_MESSAGE: "message",
}


def wire_fields() -> set[tuple[str, str, int, str, str]]:
    """What the C decoder must know of the generated descriptors: (message, field, number,
    kind, message type) of every field of Event (its body: access only), AccessDecision,
    Subject and Object."""
    out: set[tuple[str, str, int, str, str]] = set()
    for name, bodies in _FAST_FIELDS.items():
        message = pb.DESCRIPTOR.message_types_by_name[name]
        for f in message.fields:
            if f.containing_oneof is not None and f.name not in bodies:
                continue  # another body: the decoder leaves the event to Python
            kind = _KINDS.get(f.type, f"type {f.type}")
            if f.is_repeated:
                kind = f"repeated {kind}"
            target = f.message_type.full_name if f.message_type is not None else ""
            out.add((message.full_name, f.name, f.number, kind, target))
    return out


def check_native_fields() -> None:
    """Check the C decoder's field table against protos/custodes.proto; RuntimeError if not."""
    native, proto = set(_native.FIELDS), wire_fields()
    if native != proto:
        raise RuntimeError(
            "protos/evidence/_native.c decodes Events with other fields than "
            f"protos/custodes.proto: only in C {sorted(native - proto)}, only in the proto "
            f"{sorted(proto - native)}; expected the same fields (update FIELDS in _native.c "
            "and rebuild)"
        )


_native.configure(StoredRecord, Observation, _ACTIONS, _VERDICTS, CHAIN_DOMAIN)
check_native_fields()


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
