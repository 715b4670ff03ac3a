"""Records the journal chains, turned into the exact `custodes.v1.Event` bytes it signs.

The gate hands the journal `AccessRecord`s (agent.records); the agent's own lifecycle
(start, stop, loss, grants, agreements, key rotation, gate incidents) is described by the
small frozen records here. `encode` is the one place a record becomes wire bytes; the
sequence number is bound in by the journal's writer thread, which alone knows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.records import AccessRecord
from policies.model import Action, Decision, SubjectKind, Verdict
from protos.errors import CustodesError
from protos.wire import pb

MAX_CMDLINE = 1024  # characters kept of a technician's command line
MAX_PATH = 4096  # PATH_MAX: a longer path cannot come from the kernel
MAX_NOTE = 2048  # free text in lifecycle records


class EventDecodeError(CustodesError):
    """Journaled bytes are not a well-formed custodes.v1.Event."""


_ACTIONS: dict[Action, pb.Action.ValueType] = {
    Action.READ: pb.ACTION_READ,
    Action.WRITE: pb.ACTION_WRITE,
    Action.CREATE: pb.ACTION_CREATE,
    Action.DELETE: pb.ACTION_DELETE,
    Action.RENAME: pb.ACTION_RENAME,
    Action.EXEC: pb.ACTION_EXEC,
    Action.LIST: pb.ACTION_LIST,
}
_VERDICTS: dict[Verdict, pb.Verdict.ValueType] = {
    Verdict.ALLOW: pb.VERDICT_ALLOW,
    Verdict.DENY: pb.VERDICT_DENY,
}
MODE_ENFORCING = "enforcing"
MODE_MONITOR = "monitor"
_MODES: dict[str, pb.GateMode.ValueType] = {
    MODE_ENFORCING: pb.GATE_MODE_ENFORCING,
    MODE_MONITOR: pb.GATE_MODE_MONITOR,
}
_GRANT_KINDS: dict[str, pb.GrantEvent.Kind.ValueType] = {
    "applied": pb.GrantEvent.KIND_APPLIED,
    "expired": pb.GrantEvent.KIND_EXPIRED,
    "revoked": pb.GrantEvent.KIND_REVOKED,
    "refused": pb.GrantEvent.KIND_REFUSED,
}


@dataclass(frozen=True, slots=True)
class AgentStartedRecord:
    """The first event of every run: how the previous run ended and how this one gates."""

    previous_run_clean: bool
    version: str
    mode: str  # MODE_ENFORCING or MODE_MONITOR
    marks: int
    agreement_version: str
    note: str = ""
    unix_nanos: int = 0


@dataclass(frozen=True, slots=True)
class AgentStoppedRecord:
    """The last event of a clean run."""

    reason: str
    unix_nanos: int = 0


@dataclass(frozen=True, slots=True)
class JournalLossRecord:
    """Events that could not be journaled (disk full, queue overflow): never a silent gap."""

    lost: int
    cause: str
    first_unix_nanos: int
    last_unix_nanos: int
    unix_nanos: int = 0


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A grant applied, expired, revoked or refused by the agent."""

    kind: str  # applied, expired, revoked, refused
    grant_id: str
    technician: str = ""
    area: str = ""
    reason: str = ""
    unix_nanos: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _GRANT_KINDS:
            raise ValueError(
                f"grant record kind {self.kind!r}, expected one of {sorted(_GRANT_KINDS)}"
            )


@dataclass(frozen=True, slots=True)
class AgreementRecord:
    """An agreement the agent was asked to enforce: accepted, or refused with its problems."""

    version: str
    sha256: str
    accepted: bool
    error: str = ""
    unix_nanos: int = 0


@dataclass(frozen=True, slots=True)
class KeyRotatedRecord:
    """The next epoch's public key, chained and signed by the old epoch's checkpoint."""

    epoch: int
    public_key: bytes
    unix_nanos: int = 0


@dataclass(frozen=True, slots=True)
class GateIncidentRecord:
    """Something about the gate itself: stuck handler ended, race window, marks lost."""

    kind: str
    detail: str = ""
    unix_nanos: int = 0


Lifecycle = (
    AgentStartedRecord
    | AgentStoppedRecord
    | JournalLossRecord
    | GrantRecord
    | AgreementRecord
    | KeyRotatedRecord
    | GateIncidentRecord
)
JournalRecord = AccessRecord | Lifecycle


@dataclass(frozen=True, slots=True)
class Origin:
    """What binds every event to one agent run: the agent, its client and this boot."""

    agent_id: str
    client: str
    boot_id: str


def mode_value(mode: str) -> pb.GateMode.ValueType:
    """The wire GateMode for MODE_ENFORCING or MODE_MONITOR."""
    try:
        return _MODES[mode]
    except KeyError:
        raise ValueError(f"gate mode {mode!r}, expected one of {sorted(_MODES)}") from None


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload (protobuf wire type 2)."""
    return bytes((number << 3 | 2,)) + _varint(len(payload)) + payload


class _Cache:
    """A small bounded memo: the same technician and decision repeat across many events."""

    def __init__(self, limit: int = 4096) -> None:
        self._d: dict[object, bytes] = {}
        self._limit = limit

    def get(self, key: object, make: Callable[[], bytes]) -> bytes:
        hit = self._d.get(key)
        if hit is None:
            if len(self._d) >= self._limit:
                self._d.clear()
            hit = self._d[key] = make()
        return hit


NO_UID = 4294967295
_SUBJECTS = _Cache()
_DECISIONS = _Cache()
_AREAS = _Cache()
_HEADERS = _Cache(64)
_BY_ID: dict[int, tuple[Decision, tuple[Action, bool], bytes, bytes]] = {}


def _subject(rec: AccessRecord) -> bytes:
    att = rec.attribution
    d = rec.decision
    # (uid_t)-1, the kernel's "no user": an actor nobody could identify (monitor mode).
    s = pb.Subject(os_user=att.account, uid=att.uid if att.uid >= 0 else NO_UID, pid=att.pid)
    if d.subject_kind is SubjectKind.TECHNICIAN and d.technician:
        s.technician = d.technician
    if d.principal:
        s.principal = d.principal
    s.loginuid = -1 if att.loginuid is None else att.loginuid
    if att.login_account:
        s.login_user = att.login_account
    if att.session_id is not None:
        s.session_id = att.session_id
    if att.ppid is not None:
        s.ppid = att.ppid
    if att.exe:
        s.exe = att.exe
    if att.cmdline:
        s.cmdline = att.cmdline[:MAX_CMDLINE]
    return _field(1, s.SerializeToString())


def _decision(rec: AccessRecord) -> bytes:
    d = rec.decision
    out = pb.AccessDecision(action=_ACTIONS[rec.action], rule=d.rule)
    if d.grant_id:
        out.grant_id = d.grant_id
    if rec.enforcing:
        out.verdict = _VERDICTS[d.verdict]
        out.reason = d.reason
        out.mode = pb.GATE_MODE_ENFORCING
    else:
        # Monitor mode: the access happened; keep what the agreement would have said.
        out.verdict = pb.VERDICT_OBSERVED
        out.reason = f"would {d.verdict.value}: {d.reason}"
        out.mode = pb.GATE_MODE_MONITOR
    return out.SerializeToString()


def _area(d: Decision) -> bytes:
    return pb.Object(
        area=d.area or "", kinds=d.kinds, individuals_estimate=d.individuals_estimate
    ).SerializeToString()


def _access(rec: AccessRecord) -> bytes:
    """The AccessDecision bytes, assembled from memoised parts.

    Protobuf parsers merge repeated occurrences of a message field, so a message may be
    written as the concatenation of its parts; the bytes are hashed as they are, never
    re-serialised, so nothing depends on one canonical order.
    """
    d = rec.decision
    # The policy reuses frozen Decision objects: look them up by identity first (the
    # cache keeps the object alive, so its id cannot be reused), by value otherwise.
    hit = _BY_ID.get(id(d))
    if hit is not None and hit[0] is d and hit[1] == (rec.action, rec.enforcing):
        scalars, area = hit[2], hit[3]
    else:
        scalars = _DECISIONS.get((rec.action, d, rec.enforcing), lambda: _decision(rec))
        area = _AREAS.get((d.area, d.kinds, d.individuals_estimate), lambda: _area(d))
        if len(_BY_ID) >= 4096:
            _BY_ID.clear()
        _BY_ID[id(d)] = (d, (rec.action, rec.enforcing), scalars, area)
    subject = _SUBJECTS.get(
        (rec.attribution, d.subject_kind, d.technician, d.principal), lambda: _subject(rec)
    )
    obj = pb.Object(path=rec.path[:MAX_PATH], device=rec.device, inode=rec.inode)
    return subject + _field(2, area + obj.SerializeToString()) + scalars


def _header(origin: Origin) -> bytes:
    return pb.Event(
        agent_id=origin.agent_id, client=origin.client, boot_id=origin.boot_id
    ).SerializeToString()


def encode(rec: JournalRecord, origin: Origin, seq: int, now_nanos: int) -> bytes:
    """Serialise `rec` as the Event with sequence number `seq`: the bytes that are chained.

    `now_nanos` is used when the record carries no time of its own (unix_nanos == 0).
    """
    if isinstance(rec, AccessRecord):
        head = _HEADERS.get(origin, lambda: _header(origin))
        tail = pb.Event(seq=seq, unix_nanos=rec.unix_nanos or now_nanos).SerializeToString()
        return head + tail + _field(10, _access(rec))
    ev = pb.Event(agent_id=origin.agent_id, client=origin.client, boot_id=origin.boot_id, seq=seq)
    ev.unix_nanos = rec.unix_nanos or now_nanos
    match rec:
        case AgentStartedRecord():
            b = ev.started
            b.previous_run_clean = rec.previous_run_clean
            b.version = rec.version
            b.mode = mode_value(rec.mode)
            b.marks = rec.marks
            b.agreement_version = rec.agreement_version
            b.note = rec.note[:MAX_NOTE]
        case AgentStoppedRecord():
            ev.stopped.reason = rec.reason[:MAX_NOTE]
        case JournalLossRecord():
            ev.loss.lost = rec.lost
            ev.loss.cause = rec.cause[:MAX_NOTE]
            ev.loss.first_unix_nanos = rec.first_unix_nanos
            ev.loss.last_unix_nanos = rec.last_unix_nanos
        case GrantRecord():
            g = ev.grant
            g.kind = _GRANT_KINDS[rec.kind]
            g.grant_id = rec.grant_id
            g.technician = rec.technician
            g.area = rec.area
            g.reason = rec.reason[:MAX_NOTE]
        case AgreementRecord():
            a = ev.agreement
            a.version = rec.version
            a.sha256 = rec.sha256
            a.accepted = rec.accepted
            a.error = rec.error[:MAX_NOTE]
        case KeyRotatedRecord():
            ev.key_rotated.epoch = rec.epoch
            ev.key_rotated.public_key = rec.public_key
        case GateIncidentRecord():
            ev.gate.kind = rec.kind
            ev.gate.detail = rec.detail[:MAX_NOTE]
    return ev.SerializeToString()


def decode(data: bytes) -> pb.Event:
    """Parse journaled bytes into an Event (after the chain over them has been verified).

    Raises EventDecodeError when the bytes are not an Event.
    """
    ev = pb.Event()
    try:
        ev.ParseFromString(data)
    except Exception as exc:  # protobuf raises its own DecodeError; keep the tree ours
        raise EventDecodeError(
            f"journaled event of {len(data)} bytes does not parse ({exc}), "
            "expected a serialised custodes.v1.Event"
        ) from exc
    return ev


def is_deny(ev: pb.Event) -> bool:
    """True when `ev` records an access the gate denied."""
    return ev.WhichOneof("body") == "access" and ev.access.verdict == pb.VERDICT_DENY
