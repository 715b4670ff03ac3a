"""Verify a whole local journal: every record's chain link and every checkpoint signature.

Trust starts at one key (the epoch-0 key enrolled with the server); every later epoch's key
is learned from a KeyRotated event in the chain, trusted only once a checkpoint signed by
the previous epoch's key covers it, and from then on the older key is no longer accepted
(protos.evidence.keychain, the same rules the server and the offline auditor apply).
The result names the first problem in plain words; nothing here raises for bad evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent import segments as fmt
from agent.events import EventDecodeError, decode
from protos.errors import CustodesError
from protos.evidence.chain import link_hash
from protos.evidence.errors import short
from protos.evidence.keychain import KeyChain, Rotation
from protos.evidence.note import NoteVerifier
from protos.wire import pb

MAX_EVENT_BYTES = 16 * 1024 * 1024  # the largest bound agent.toml allows


@dataclass(frozen=True, slots=True)
class JournalReport:
    """What verification found. `problem` is empty when everything verified."""

    ok: bool
    first_seq: int
    next_seq: int
    checkpoints: int
    signed_size: int  # the largest verified checkpoint size
    denies: int
    epochs: int  # the last epoch whose key was trusted
    problem: str = ""
    notes: str = ""  # e.g. an unsigned tail, a torn final record (not failures)


def latest_checkpoint(directory: Path) -> bytes:
    """The latest checkpoint note stored in `directory` (b"" when there is none), unverified.

    Raises JournalCorruptError when a checkpoint file is damaged before its end.
    """
    for _, path in reversed(fmt.list_segments(directory)):
        ckp = path.with_suffix(fmt.CKP_SUFFIX)
        if not ckp.exists():
            continue
        last = b""
        with ckp.open("rb") as fh:
            for item in fmt.iter_checkpoints(fh, ckp):
                if isinstance(item, fmt.CheckpointAt):
                    last = item.note
        if last:
            return last
    return b""


class _VerifyFailedError(Exception):
    pass


def verify_journal(
    directory: Path, verifier: NoteVerifier, *, origin: str | None = None
) -> JournalReport:
    """Verify every segment and checkpoint in `directory`, trusting `verifier` for epoch 0.

    Returns a report; `ok` is False with `problem` set at the first failure.
    """
    state = _State(verifier, origin or verifier.name)
    try:
        state.journal(directory)
    except (_VerifyFailedError, CustodesError, OSError) as exc:
        return state.report(str(exc))
    return state.report("")


class _State:
    def __init__(self, verifier: NoteVerifier, origin: str) -> None:
        self.keys = KeyChain.enrolled(origin, verifier.public)
        self.head: bytes | None = None
        self.first_seq = 0
        self.next_seq = 0
        self.signed = 0
        self.checkpoints = 0
        self.denies = 0
        self.notes: list[str] = []

    def report(self, problem: str) -> JournalReport:
        return JournalReport(
            ok=not problem,
            first_seq=self.first_seq,
            next_seq=self.next_seq,
            checkpoints=self.checkpoints,
            signed_size=self.signed,
            denies=self.denies,
            epochs=self.keys.current.epoch,
            problem=problem,
            notes="; ".join(self.notes),
        )

    def journal(self, directory: Path) -> None:
        segs = fmt.list_segments(directory)
        if not segs:
            raise _VerifyFailedError(f"no journal segments in {directory}; expected *.seg files")
        for index, (_, path) in enumerate(segs):
            self.segment(path, last=index == len(segs) - 1)
        if self.checkpoints == 0:
            raise _VerifyFailedError(
                "the journal holds no signed checkpoint; expected at least one"
            )
        if self.signed < self.next_seq:
            self.notes.append(
                f"{self.next_seq - self.signed} event(s) after the last checkpoint are not "
                "signed yet"
            )

    def segment(self, path: Path, *, last: bool) -> None:
        with path.open("rb") as fh:
            hdr = fmt.read_header(fh, path)
            if self.head is None:
                self.head, self.first_seq, self.next_seq = (
                    hdr.prev_hash,
                    hdr.first_seq,
                    hdr.first_seq,
                )
            elif hdr.first_seq != self.next_seq or hdr.prev_hash != self.head:
                raise _VerifyFailedError(
                    f"segment {path.name} starts at seq {hdr.first_seq} after chain hash "
                    f"{short(hdr.prev_hash)}; expected seq {self.next_seq} after "
                    f"{short(self.head)} (a segment is missing or was replaced)"
                )
            hashes: list[bytes] = []
            for item in fmt.iter_records(fh, path, max_event_bytes=MAX_EVENT_BYTES, strict=True):
                if isinstance(item, fmt.Torn):
                    if not last:
                        raise _VerifyFailedError(
                            f"segment {path.name}: {item.reason} at byte {item.good_end}"
                        )
                    self.notes.append(
                        f"a torn final record at seq {self.next_seq} ({item.reason}); the agent "
                        "truncates it on its next start"
                    )
                    break
                self._link(path, item.link.seq, item.link.event, item.link.hash)
                hashes.append(item.link.hash)
        self._checkpoints(path, hdr.first_seq, hashes)

    def _link(self, path: Path, seq: int, event: bytes, stored: bytes) -> None:
        assert self.head is not None
        if seq != self.next_seq:
            raise _VerifyFailedError(
                f"segment {path.name}: event seq {seq} follows seq {self.next_seq - 1}; expected "
                f"seq {self.next_seq}"
            )
        computed = link_hash(self.head, seq, event)
        if computed != stored:
            raise _VerifyFailedError(
                f"event seq {seq} in {path.name} does not match its chain hash (stored "
                f"{short(stored)}, computed {short(computed)}): the event was modified"
            )
        self.head = computed
        self.next_seq = seq + 1
        try:
            ev = decode(event)
        except EventDecodeError as exc:
            raise _VerifyFailedError(f"event seq {seq} in {path.name}: {exc}") from exc
        body = ev.WhichOneof("body")
        if body == "access" and ev.access.verdict == pb.VERDICT_DENY:
            self.denies += 1
        elif body == "key_rotated":
            k = ev.key_rotated
            self.keys.announce(Rotation(seq, k.epoch, bytes(k.public_key)))

    def _checkpoints(self, path: Path, first_seq: int, hashes: list[bytes]) -> None:
        ckp = path.with_suffix(fmt.CKP_SUFFIX)
        if not ckp.exists():
            return
        with ckp.open("rb") as fh:
            for item in fmt.iter_checkpoints(fh, ckp, strict=True):
                if isinstance(item, fmt.Torn):
                    self.notes.append(f"a torn final checkpoint in {ckp.name} ({item.reason})")
                    break
                self._checkpoint(ckp, item.note, item.size, first_seq, hashes)

    def _checkpoint(
        self, ckp: Path, note: bytes, size: int, first_seq: int, hashes: list[bytes]
    ) -> None:
        cp = self.keys.verify(note)
        index = cp.size - first_seq - 1
        if cp.size != size or cp.size > self.next_seq or index >= len(hashes):
            raise _VerifyFailedError(
                f"checkpoint at size {cp.size} covers more events than {ckp.name}'s segment holds "
                f"(up to seq {self.next_seq - 1}): events were truncated"
            )
        if index >= 0 and hashes[index] != cp.root:
            raise _VerifyFailedError(
                f"checkpoint at size {cp.size} signs chain head {short(cp.root)}; the journal's "
                f"hash at seq {cp.size - 1} is {short(hashes[index])}"
            )
        if cp.size < self.signed:
            raise _VerifyFailedError(
                f"checkpoint at size {cp.size} goes back from size {self.signed}"
            )
        self.signed = cp.size
        self.checkpoints += 1
