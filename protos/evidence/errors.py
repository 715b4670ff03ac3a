"""The evidence exception tree: every failure names its kind, so callers can count them.

All of these are *bad or hostile input*: evidence that does not verify. Transport and
environment failures (a disk that cannot be read) stay OSError at the edges.
"""

from __future__ import annotations

from typing import ClassVar

from protos.errors import CustodesError


class EvidenceError(CustodesError):
    """Root of the evidence errors; `kind` is a short stable word for metrics and incidents.

    `seq` is the sequence number where the evidence broke, when there is one.
    """

    kind: ClassVar[str] = "evidence"

    def __init__(self, message: str, *, hint: str = "", seq: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.seq = seq


class MalformedError(EvidenceError):
    """A note, proof, key or export that cannot be parsed."""

    kind: ClassVar[str] = "malformed"


class GapError(EvidenceError):
    """A sequence number was skipped: expected seq N, got M > N."""

    kind: ClassVar[str] = "gap"


class ReorderError(EvidenceError):
    """Events arrived out of order (a later event before an earlier one)."""

    kind: ClassVar[str] = "reorder"


class DuplicateError(EvidenceError):
    """A sequence number was seen again (a replay)."""

    kind: ClassVar[str] = "duplicate"


class ModifiedEventError(EvidenceError):
    """An event's bytes do not match its chain hash or the signed chain head."""

    kind: ClassVar[str] = "modified"


class TruncationError(EvidenceError):
    """Fewer events are present than a signed checkpoint covers."""

    kind: ClassVar[str] = "truncation"


class BadSignatureError(EvidenceError):
    """A signature by a known key does not verify, or signs the wrong origin."""

    kind: ClassVar[str] = "bad_signature"


class UnknownKeyError(EvidenceError):
    """No signature is by a key the verifier trusts (or the verifier trusts no key)."""

    kind: ClassVar[str] = "unknown_key"


class InconsistentTreeError(EvidenceError):
    """A Merkle inclusion or consistency proof does not verify."""

    kind: ClassVar[str] = "inconsistent_tree"


def short(digest: bytes) -> str:
    """The first 4 bytes of a hash in hex, for messages."""
    return digest[:4].hex() + "…"
