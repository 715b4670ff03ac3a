"""Evidence shared by agent and server: hash chain, signed checkpoints, Merkle log, keys.

Pure code over bytes; the only I/O is in `keys` (key files, written atomically).
"""

from __future__ import annotations

from protos.evidence.bundle import StreamSummary, verify_stream
from protos.evidence.chain import GENESIS, Link, extend, link_hash, verify_links
from protos.evidence.errors import (
    BadSignatureError,
    DuplicateError,
    EvidenceError,
    GapError,
    InconsistentTreeError,
    MalformedError,
    ModifiedEventError,
    ReorderError,
    TruncationError,
    UnknownKeyError,
)
from protos.evidence.keys import (
    fingerprint,
    generate_key,
    load_private_key,
    public_key_bytes,
    save_private_key,
)
from protos.evidence.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from protos.evidence.note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    parse_checkpoint,
    parse_note,
    verify_checkpoint,
    verify_note,
)

__all__ = [
    "EMPTY_ROOT",
    "GENESIS",
    "BadSignatureError",
    "Checkpoint",
    "DuplicateError",
    "EvidenceError",
    "GapError",
    "InconsistentTreeError",
    "Link",
    "MalformedError",
    "MerkleTree",
    "ModifiedEventError",
    "NoteSigner",
    "NoteVerifier",
    "ReorderError",
    "StreamSummary",
    "TruncationError",
    "UnknownKeyError",
    "extend",
    "fingerprint",
    "generate_key",
    "leaf_hash",
    "link_hash",
    "load_private_key",
    "node_hash",
    "parse_checkpoint",
    "parse_note",
    "public_key_bytes",
    "save_private_key",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "verify_links",
    "verify_note",
    "verify_stream",
]
