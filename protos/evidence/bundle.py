"""Offline verification of an exported agent stream: links plus the agent's checkpoints.

Pure: the caller reads the export; this checks it and says what it proves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protos.evidence.chain import GENESIS, Link, verify_links
from protos.evidence.errors import ModifiedEventError, TruncationError, short
from protos.evidence.note import Checkpoint, NoteVerifier, verify_checkpoint


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """What a verified stream proves.

    `first_seq`..`next_seq - 1` are the events present; `head` is the chain hash after them.
    `signed_size` is the largest checkpoint size that was checked against the chain (0 with
    no checkpoints), so events from `signed_size` on are chained but not yet signed.
    `checkpoints_before_start` counts checkpoints older than the export, which cannot be
    checked against it.
    """

    agent: str
    first_seq: int
    next_seq: int
    head: bytes
    checkpoints_verified: int
    signed_size: int
    checkpoints_before_start: int

    @property
    def events(self) -> int:
        """How many events the export holds."""
        return self.next_seq - self.first_seq

    @property
    def unsigned_tail(self) -> int:
        """Events after the latest checked checkpoint."""
        return self.next_seq - max(self.signed_size, self.first_seq)


def verify_stream(
    agent: str,
    vkey: str,
    checkpoints: Sequence[bytes],
    links: Sequence[Link],
    *,
    start_seq: int = 0,
    prev: bytes = GENESIS,
    origin: str | None = None,
) -> StreamSummary:
    """Verify every link and every checkpoint of `agent`'s exported stream.

    Each checkpoint must be signed by `vkey` (and name `origin`, when given), and its root
    must equal the chain head after `size` events. Raises the EvidenceError subclass for the
    first failure: MalformedError, BadSignatureError, UnknownKeyError for checkpoints;
    GapError, ReorderError, DuplicateError, ModifiedEventError for links; ModifiedEventError
    when a signed root differs from the chain; TruncationError when a checkpoint covers
    events that are missing.
    """
    verifiers = [NoteVerifier.from_vkey(vkey)]
    signed: list[Checkpoint] = [verify_checkpoint(n, verifiers, origin=origin) for n in checkpoints]
    head = verify_links(prev, start_seq, links, who=agent)
    next_seq = start_seq + len(links)
    heads = {start_seq: prev}
    heads.update((link.seq + 1, link.hash) for link in links)
    before = 0
    signed_size = 0
    for cp in sorted(signed, key=lambda c: c.size):
        if cp.size < start_seq:
            before += 1
            continue
        if cp.size > next_seq:
            raise TruncationError(
                f"agent {agent!r} signed a checkpoint over {cp.size} events; the export ends "
                f"at seq {next_seq - 1} ({cp.size - next_seq} events missing)",
                seq=next_seq,
            )
        if heads[cp.size] != cp.root:
            raise ModifiedEventError(
                f"chain head of agent {agent!r} after {cp.size} events is "
                f"{short(heads[cp.size])}; its signed checkpoint says {short(cp.root)}",
                seq=cp.size - 1,
            )
        signed_size = cp.size
    return StreamSummary(
        agent=agent,
        first_seq=start_seq,
        next_seq=next_seq,
        head=head,
        checkpoints_verified=len(signed) - before,
        signed_size=signed_size,
        checkpoints_before_start=before,
    )
