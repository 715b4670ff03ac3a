"""Plain data the rules read and write: observations in, findings out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Rule names: the `rule` of a finding and of the incident it opens or grows.
DENIED = "access_denied"
OBSERVED = "observed_without_grant"
BULK_READ = "bulk_read"
OUT_OF_HOURS = "out_of_hours"
BREAK_GLASS = "break_glass"
UNKNOWN_ADMIN = "unknown_admin"
AGENT_SILENT = "agent_silent"
CLOCK_SKEW = "clock_skew"
INTEGRITY = "integrity"
OLD_AGREEMENT = "old_agreement"

RULES = (
    DENIED,
    OBSERVED,
    BULK_READ,
    OUT_OF_HOURS,
    BREAK_GLASS,
    UNKNOWN_ADMIN,
    AGENT_SILENT,
    CLOCK_SKEW,
    INTEGRITY,
    OLD_AGREEMENT,
)

EvidenceRef = tuple[str, int]
"""(agent_id, seq) of a stored event."""


class Observation(NamedTuple):
    """One verified, stored event as the rules see it (parsed once at the edge).

    Immutable like the other models, but a NamedTuple rather than a frozen dataclass:
    ingest builds one per event it stores (tens of thousands a second), and a frozen
    dataclass's __init__ (one object.__setattr__ for each of 23 fields) cost ~5 µs.
    """

    agent_id: str
    seq: int
    client: str
    unix_nanos: int
    kind: str  # "access", "started", "stopped", "loss", "grant", "agreement", "gate", ...
    technician: str | None = None
    principal: str | None = None
    account: str | None = None
    uid: int | None = None
    login_account: str | None = None
    loginuid: int | None = None  # None when unset
    area: str | None = None
    action: str | None = None
    verdict: str | None = None  # "allow", "deny", "observed"
    rule: str | None = None  # the agreement rule that decided ("in_scope", "grant", ...)
    path: str | None = None
    kinds: tuple[str, ...] = ()
    individuals_estimate: int = 0
    grant_id: str | None = None
    grant_kind: str | None = None  # "applied", "expired", "revoked", "refused"
    agreement_version: str | None = None
    agreement_accepted: bool | None = None
    detail: str | None = None  # loss cause, gate incident kind

    @property
    def ref(self) -> EvidenceRef:
        """This event's (agent_id, seq)."""
        return (self.agent_id, self.seq)


@dataclass(frozen=True, slots=True)
class FileTouched:
    """A distinct sensitive file in a finding, with the agreement's per-file estimate."""

    agent_id: str
    path: str
    area: str
    individuals: int


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule found: one piece of one situation (an incident opens or grows from it).

    `subject` is who or what the situation is about (a technician, a login account, an
    agent); with rule, client and area it forms the dedup key.
    """

    rule: str
    client: str
    subject: str
    at_unix: float
    summary: str
    area: str | None = None
    technician: str | None = None
    agent_id: str | None = None
    evidence: tuple[EvidenceRef, ...] = ()
    files: tuple[FileTouched, ...] = ()
    kinds: tuple[str, ...] = ()

    @property
    def dedup_key(self) -> str:
        """One incident per (rule, client, subject, area) situation."""
        return f"{self.rule}|{self.client}|{self.subject}|{self.area or ''}"


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What the periodic checks know about one agent."""

    agent_id: str
    client: str
    last_seen_unix: float | None
    enrolled_unix: float
    revoked: bool = False
    agreement_version: str | None = None  # from its latest heartbeat


@dataclass(frozen=True, slots=True)
class IntegrityNote:
    """An integrity finding the store recorded (bad signature, gap, replay, witness...)."""

    id: int
    agent_id: str
    client: str
    kind: str
    detail: str
    at_unix: float


@dataclass(frozen=True, slots=True)
class Thresholds:
    """A client's detection thresholds (from the agreement's `detection` section)."""

    bulk_files: int = 50
    bulk_minutes: int = 10
    heartbeat_silence_s: float = 300.0
    clock_skew_s: float = 30.0
