"""The evidence store's contract: row dataclasses, errors, and the `Store` protocol.

Two implementations share one schema (server/store/migrations): `SqliteStore` for the
embedded default and `PostgresStore` for several stateless servers sharing one database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple, Protocol

from protos.errors import CustodesError

EventCursor = tuple[int, str, int]
"""Where a page of `Store.events` ended: (unix_nanos, agent_id, seq) of its last row."""


class StoreError(CustodesError):
    """The store could not do what was asked (unknown agent, bad token, database trouble)."""


class StoreConflictError(StoreError):
    """A write contradicts what is stored: a seq already stored with other bytes, or a lost race.

    `next_seq` is the agent's committed next sequence number when the store knows it, so the
    caller can tell the agent where to resume.
    """

    def __init__(self, message: str, *, next_seq: int | None = None, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.next_seq = next_seq


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer Custodes than this one."""


class StoredRecord(NamedTuple):
    """One event exactly as the agent signed it (`event` bytes verbatim) plus indexed columns.

    Immutable like the other rows, but a NamedTuple rather than a frozen dataclass: ingest
    builds one per event (tens of thousands a second), and a frozen dataclass's __init__
    (one object.__setattr__ per field) cost ~5 µs against ~1 µs for a tuple.
    """

    agent_id: str
    seq: int
    event: bytes
    chain_hash: bytes
    client: str
    unix_nanos: int
    kind: str  # "access", "started", "stopped", "loss", "grant", "agreement", ...
    technician: str | None = None
    account: str | None = None
    area: str | None = None
    action: str | None = None
    verdict: str | None = None
    rule: str | None = None
    path: str | None = None

    @property
    def leaf_data(self) -> bytes:
        """What the server's Merkle log commits to: seq (8 bytes BE) || chain_hash."""
        return self.seq.to_bytes(8, "big") + self.chain_hash

    @property
    def cursor(self) -> EventCursor:
        """Pass as `after=` to `Store.events` to get the page after this record."""
        return (self.unix_nanos, self.agent_id, self.seq)


_AGENT_ID, _SEQ = itemgetter(0), itemgetter(1)


def first_out_of_place(records: Sequence[StoredRecord], agent_id: str, first_seq: int) -> int:
    """The index of the first record that is not `agent_id`'s seq `first_seq + index`; -1 if none.

    Ingest checks every batch this way twice (store, server log): the usual answer (-1) comes
    from comparisons in C, about 40 ns a record instead of ~0.3 µs for a Python loop.
    """
    n = len(records)
    if list(map(_AGENT_ID, records)).count(agent_id) == n and list(map(_SEQ, records)) == list(
        range(first_seq, first_seq + n)
    ):
        return -1
    return next(
        i for i, r in enumerate(records) if r.agent_id != agent_id or r.seq != first_seq + i
    )


@dataclass(frozen=True, slots=True)
class AgentRow:
    """An enrolled agent and where its evidence stream stands."""

    agent_id: str
    client: str
    public_key: bytes
    cert_fingerprint: str
    enrolled_unix: int
    revoked_unix: int | None
    next_seq: int
    head_hash: bytes
    last_checkpoint: bytes | None
    last_seen_unix: int | None
    hostname: str
    last_heartbeat: bytes | None = None


@dataclass(frozen=True, slots=True)
class AgentKeyRow:
    """An epoch key the server learnt from an agent's chain (see protos.evidence.keychain)."""

    agent_id: str
    epoch: int
    public_key: bytes
    valid_from: int  # the log size from which this key signs
    announced_seq: int  # the seq of the KeyRotated event that announced it


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A single-use enrolment token (only its hash is stored)."""

    token_hash: bytes
    client: str
    kind: str
    name: str
    expires_unix: int
    used_unix: int | None


@dataclass(frozen=True, slots=True)
class IntegrityRow:
    """Something wrong with an agent's evidence (bad signature, gap, silent agent...)."""

    id: int
    agent_id: str
    kind: str
    detail: str
    at_unix: int


class Store(Protocol):
    """What the server needs from its database. Every method is one transaction.

    Raises `StoreError` (or a subclass) for every failure, never a driver exception.
    """

    def migrate(self) -> None:
        """Apply every migration the database lacks; refuse (SchemaTooNewError) a newer schema."""
        ...

    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""
        ...

    def close(self) -> None:
        """Release the connection; the store is unusable afterwards."""
        ...

    # -- agents and enrolment ---------------------------------------------------------------

    def add_agent(self, row: AgentRow) -> None:
        """Insert an enrolled agent; StoreConflictError if the agent_id exists."""
        ...

    def get_agent(self, agent_id: str) -> AgentRow | None:
        """The agent's row, or None."""
        ...

    def list_agents(self, client: str | None = None) -> list[AgentRow]:
        """Agents ordered by agent_id, optionally of one client."""
        ...

    def revoke_agent(self, agent_id: str, at_unix: int) -> bool:
        """Mark the agent revoked; False if unknown or already revoked."""
        ...

    def add_token(
        self, token_hash: bytes, client: str, kind: str, name: str, expires_unix: int
    ) -> None:
        """Store an enrolment token's hash; StoreConflictError if it exists."""
        ...

    def consume_token(self, token_hash: bytes, now_unix: int) -> TokenRow:
        """Use a token once, atomically; StoreError if it is unknown, expired or used."""
        ...

    # -- evidence ---------------------------------------------------------------------------

    def append_batch(
        self,
        agent_id: str,
        expected_next_seq: int,
        records: Sequence[StoredRecord],
        *,
        agent_checkpoint: bytes,
        new_head: bytes,
        heartbeat_unix: int,
        new_keys: Sequence[AgentKeyRow] = (),
        leaves: Sequence[bytes] | None = None,
    ) -> int:
        """Store a verified batch in one transaction and return the agent's new next_seq.

        `new_keys` are epoch keys the batch's checkpoint taught, stored in the same
        transaction. `leaves` are the records' RFC 6962 leaf hashes when the caller already
        computed them (else the store does).

        `records` must be contiguous from `expected_next_seq`. The batch is written, the
        agent's checkpoint note kept (keyed by size = last seq + 1) and next_seq/head_hash
        advanced only if the stored next_seq still equals `expected_next_seq` (optimistic
        concurrency between servers). A replay of records already stored identically
        returns the current next_seq and writes nothing. Raises StoreConflictError when a seq is
        stored with other bytes or the race was lost (`.next_seq` says where to resume),
        StoreError for an unknown or revoked agent or a non-contiguous batch.
        """
        ...

    def leaf_hashes(self, agent_id: str, from_seq: int = 0) -> list[bytes]:
        """RFC 6962 leaf hashes of the agent's records from `from_seq`, in seq order."""
        ...

    def agent_keys(self, agent_id: str) -> list[AgentKeyRow]:
        """The epoch keys learnt for the agent after epoch 0, by epoch."""
        ...

    def records(self, agent_id: str, first_seq: int, end_seq: int) -> list[StoredRecord]:
        """The agent's stored records with first_seq <= seq < end_seq, by seq."""
        ...

    def events(
        self,
        *,
        client: str | None = None,
        technician: str | None = None,
        area: str | None = None,
        verdict: str | None = None,
        agent_id: str | None = None,
        since_nanos: int | None = None,
        until_nanos: int | None = None,
        limit: int = 1000,
        after: EventCursor | None = None,
    ) -> list[StoredRecord]:
        """Events matching every given filter, ordered by (unix_nanos, agent_id, seq).

        `since_nanos` is inclusive, `until_nanos` exclusive; `after` is the previous page's
        last `record.cursor`.
        """
        ...

    def count_events(self, agent_id: str | None = None) -> int:
        """How many events are stored (for one agent, or in all)."""
        ...

    def agent_checkpoints(self, agent_id: str, from_size: int = 0) -> list[bytes]:
        """The agent's own signed checkpoint notes with size >= from_size, by size."""
        ...

    def save_server_checkpoint(self, agent_id: str, size: int, note: bytes) -> None:
        """Keep the server's signed note over the agent's log at `size` (replaces one at size)."""
        ...

    def latest_server_checkpoint(self, agent_id: str) -> bytes | None:
        """The server's note with the largest size for the agent, or None."""
        ...

    def server_checkpoint(self, agent_id: str, size: int) -> bytes | None:
        """The server's note at exactly `size`, or None."""
        ...

    # -- integrity and liveness -------------------------------------------------------------

    def record_integrity_event(self, agent_id: str, kind: str, detail: str, at_unix: int) -> None:
        """Keep a finding about an agent's evidence (bad signature, gap, witness report...)."""
        ...

    def integrity_events(self, agent_id: str | None = None) -> list[IntegrityRow]:
        """Findings in the order they were recorded, optionally of one agent."""
        ...

    def touch_agent(self, agent_id: str, at_unix: int, heartbeat: bytes | None) -> None:
        """Record that the agent was seen (and its latest heartbeat message bytes)."""
        ...
