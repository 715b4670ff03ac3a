"""A batch of an agent's evidence checked and parsed before it is stored (no I/O).

Per batch, in this order: size limits, the chain links from the stored head (gap, reorder,
replay, modified), the event bytes parsed (each must name this agent, client and seq;
KeyRotated events are noted), then the agent's signed checkpoint through its key chain
(protos.evidence.keychain: the current epoch's key, origin, size, root = chain head), which
may teach the next epoch's key. Problems raise RefusedError with the wire code.

`read_batch` is the fast path the server tries first (in C, protos.evidence._native, for
batches of access events); `check_batch` and `parse_records` are the step-by-step reference
that names any problem, parses the other kinds of event, and that the C path is tested
against. server.ingest runs these on the stream and stores what they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias, cast

from google.protobuf.descriptor import FieldDescriptor

from protos.evidence import _native
from protos.evidence import errors as ev
from protos.evidence.chain import CHAIN_DOMAIN, MAX_SEQ, Link, make_links, verify_links
from protos.evidence.keychain import EpochKey, KeyChain, Rotation
from protos.wire import pb
from server.detect.events import access_observation, observation_of
from server.detect.model import Observation
from server.store import StoredRecord

Code = pb.Refusal.Code
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
class StreamState:
    """One connected agent, as this stream knows it."""

    agent_id: str
    client: str
    keys: KeyChain  # which epoch key must sign the next checkpoint
    witnessed_size: int  # the server log size the agent last verified
    verified_next: int = 0  # the position after the last batch verified (maybe not committed)
    verified_head: bytes = bytes(32)
    closed: bool = False  # a batch was refused or the stream ended: store nothing more


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
