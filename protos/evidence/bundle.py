"""Offline verification of an exported agent stream: links plus the agent's checkpoints.

Pure: the caller reads the export; this checks it and says what it proves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protos.evidence.chain import GENESIS, Link, verify_links
from protos.evidence.errors import ModifiedEventError, TruncationError, short
from protos.evidence.keychain import KeyChain, Rotation
from protos.evidence.note import NoteVerifier, parse_checkpoint


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
    epoch: int = 0  # the key chain's epoch after the last verified checkpoint

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
    keys: KeyChain | str,
    checkpoints: Sequence[bytes],
    links: Sequence[Link],
    *,
    start_seq: int = 0,
    prev: bytes = GENESIS,
    origin: str | None = None,
    rotations: Sequence[Rotation] = (),
) -> StreamSummary:
    """Verify every link and every checkpoint of `agent`'s exported stream.

    `keys` is the agent's key chain at `start_seq` (or the enrolled epoch-0 vkey); the
    KeyRotated events among `links` are passed as `rotations`. Each checkpoint, in size
    order, must be signed by the chain's current key (and name `origin`, when given), and
    its root must equal the chain head after `size` events. Checkpoints before
    `start_seq` are only counted. Raises the EvidenceError subclass for the first failure:
    MalformedError, BadSignatureError (RetiredKeyError), UnknownKeyError for checkpoints;
    GapError, ReorderError, DuplicateError, ModifiedEventError for links; ModifiedEventError
    when a signed root differs from the chain; TruncationError when a checkpoint covers
    events that are missing.
    """
    if isinstance(keys, str):
        keys = KeyChain.enrolled(origin, NoteVerifier.from_vkey(keys).public)
    head = verify_links(prev, start_seq, links, who=agent)
    next_seq = start_seq + len(links)
    heads = {start_seq: prev}
    heads.update((link.seq + 1, link.hash) for link in links)
    sized = sorted(((parse_checkpoint(n)[0].size, n) for n in checkpoints), key=lambda x: x[0])
    waiting = sorted(rotations, key=lambda r: r.seq)
    before = 0
    signed_size = 0
    for size, note in sized:
        if size < start_seq:
            before += 1
            continue
        while waiting and waiting[0].seq < size:
            keys.announce(waiting.pop(0))
        cp = keys.verify(note)
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
        checkpoints_verified=len(sized) - before,
        signed_size=signed_size,
        checkpoints_before_start=before,
        epoch=keys.current.epoch,
    )
