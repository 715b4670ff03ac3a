"""The server's RFC 6962 log per agent, over what it stored, with signed checkpoints.

Leaf i of agent A's log is the stored record seq i: leaf data = seq (8 bytes BE) ||
chain_hash (`StoredRecord.leaf_data`). The tree lives in memory, is rebuilt from the store's
leaf hashes (one query) on first use, and grows as batches commit. Its checkpoints are C2SP
signed notes with origin `custodes.server/{agent_id}` (`protos.evidence.origins`, which the
agent checks too), signed with the server's Ed25519 key; the agent keeps the last one it
verified and checks every later one is consistent with it, so a server that rewrites or
drops stored history is caught by the client's own agent.

Several servers may share one database: a tree that lags behind the store (another server
stored a batch for this agent) catches up from the store before it appends.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from protos.errors import CustodesError
from protos.evidence.merkle import MerkleTree, record_leaves
from protos.evidence.note import Checkpoint, NoteSigner
from protos.evidence.origins import SERVER_PREFIX, server_log_origin
from server.store.base import Store, StoredRecord, first_out_of_place

log = structlog.get_logger("custodes.server.log")

ORIGIN_PREFIX = SERVER_PREFIX


class LogError(CustodesError):
    """The server's log and its store disagree, or a record does not belong in the log."""


def origin(agent_id: str) -> str:
    """The origin line of the server's checkpoints over one agent's log."""
    return server_log_origin(agent_id)


@dataclass
class _AgentLog:
    tree: MerkleTree
    note: bytes | None = None  # the signed checkpoint at `note_size`, cached
    note_size: int = -1


class ServerLog:
    """The per-agent Merkle logs of one server process. Thread-safe (one lock)."""

    def __init__(self, store: Store, signer: NoteSigner) -> None:
        self._store = store
        self._signer = signer
        self._logs: dict[str, _AgentLog] = {}
        self._lock = threading.RLock()

    def _log(self, agent_id: str) -> _AgentLog:
        entry = self._logs.get(agent_id)
        if entry is None:
            entry = _AgentLog(MerkleTree(self._store.leaf_hashes(agent_id, 0)))
            self._logs[agent_id] = entry
            log.debug("log_loaded", agent=agent_id, size=entry.tree.size)
        return entry

    def size(self, agent_id: str) -> int:
        """How many records the agent's log holds (as this process knows it)."""
        with self._lock:
            return self._log(agent_id).tree.size

    def root(self, agent_id: str, size: int | None = None) -> bytes:
        """The agent's tree head at `size` (default: now)."""
        with self._lock:
            return self._log(agent_id).tree.root(size)

    def catch_up(self, agent_id: str) -> int:
        """Add leaves another server stored since this process last looked; the new size."""
        with self._lock:
            tree = self._log(agent_id).tree
            tree.extend(self._store.leaf_hashes(agent_id, tree.size))
            return tree.size

    def forget(self, agent_id: str) -> None:
        """Drop the cached tree; the next use rebuilds it from the store."""
        with self._lock:
            self._logs.pop(agent_id, None)

    def append(
        self,
        agent_id: str,
        records: Sequence[StoredRecord],
        leaves: Sequence[bytes] | None = None,
    ) -> int:
        """Add records that were just committed to the store; return the log's size.

        `leaves` are the records' leaf hashes when the caller already computed them.
        Records the log already holds (a replay) are skipped. If the first new record does
        not follow the log's size, the log first catches up from the store. Raises LogError
        if the records are another agent's or are not contiguous.
        """
        with self._lock:
            tree = self._log(agent_id).tree
            if not records:
                return tree.size
            i = first_out_of_place(records, agent_id, records[0].seq)
            if i >= 0:
                rec = records[i]
                raise LogError(
                    f"record {i} is agent {rec.agent_id!r} seq {rec.seq}; expected agent "
                    f"{agent_id!r} seq {records[0].seq + i} (contiguous)"
                )
            if records[-1].seq < tree.size:
                return tree.size
            if records[0].seq > tree.size:
                tree.extend(self._store.leaf_hashes(agent_id, tree.size))
            if records[-1].seq < tree.size:
                return tree.size
            if records[0].seq > tree.size:
                raise LogError(
                    f"agent {agent_id!r} log holds {tree.size} records after catching up with"
                    f" the store; expected seq {records[0].seq} to be the next"
                )
            skip = tree.size - records[0].seq
            if leaves is not None and len(leaves) == len(records):
                tree.extend(list(leaves[skip:]))
            else:
                fresh = records[skip:]
                tree.extend(record_leaves(fresh[0].seq, [r.chain_hash for r in fresh]))
            return tree.size

    def checkpoint(self, agent_id: str) -> tuple[bytes, int]:
        """The server's signed note over the agent's log now, and its size.

        A new size is signed once and saved in the store (`save_server_checkpoint`).
        """
        with self._lock:
            entry = self._log(agent_id)
            size = entry.tree.size
            if entry.note is None or entry.note_size != size:
                note = self._signer.sign(Checkpoint(origin(agent_id), size, entry.tree.root()))
                self._store.save_server_checkpoint(agent_id, size, note)
                entry.note, entry.note_size = note, size
            return entry.note, size

    def consistency_proof(
        self, agent_id: str, old_size: int, new_size: int | None = None
    ) -> list[bytes]:
        """RFC 6962 proof that the log at `old_size` is a prefix of the log at `new_size`."""
        with self._lock:
            return self._log(agent_id).tree.consistency_proof(old_size, new_size)

    def inclusion_proof(self, agent_id: str, seq: int, size: int | None = None) -> list[bytes]:
        """RFC 6962 audit path for record `seq` in the log of `size` records."""
        with self._lock:
            return self._log(agent_id).tree.inclusion_proof(seq, size)
