"""The agent's forward-secure key chain, followed the same way by every verifier.

Only the epoch-0 key is known up front (enrolled with the server, or published to the
client). The agent rotates by journaling a KeyRotated event (epoch n+1, its public key) and
signing a checkpoint over it with the epoch-n key; then it erases the old private key. A
verifier therefore learns epoch n+1's key only when a checkpoint signed by the epoch-n key
covers the announcement, and from then on refuses checkpoints signed by an older epoch:
after rotation the old key is erased, so anything it signs later was forged with a stolen
copy. A checkpoint naming an epoch the chain has not reached is refused too, because nothing
the verifier trusts ever vouched for that key.

Pure: the caller feeds announcements (`rotation_of` decodes them from event bytes) and
checkpoint notes in chain order.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protos.evidence.errors import BadSignatureError, MalformedError, UnknownKeyError
from protos.evidence.keys import fingerprint
from protos.evidence.note import Checkpoint, parse_checkpoint, verifiers_for, verify_checkpoint
from protos.wire import pb

PUBLIC_KEY_SIZE = 32
_EPOCH_PREFIX = "epoch "


class RetiredKeyError(BadSignatureError):
    """A checkpoint is signed with an epoch's key after a later epoch took over."""

    kind = "retired_key"


@dataclass(frozen=True, slots=True)
class EpochKey:
    """A trusted signing key: its epoch, raw public key, and the log size it signs from.

    `valid_from` is 0 for the enrolled epoch-0 key, and for a later epoch the size of the
    checkpoint (signed by the previous key) that covered its announcement. `announced_seq`
    is the seq of that KeyRotated event (-1 for epoch 0).
    """

    epoch: int
    public: bytes
    valid_from: int = 0
    announced_seq: int = -1

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.valid_from < 0:
            raise MalformedError(
                f"epoch {self.epoch} key valid from {self.valid_from}; expected non-negative"
            )
        _check_public(self.public, f"the epoch {self.epoch} key")


@dataclass(frozen=True, slots=True)
class Rotation:
    """A KeyRotated event seen in the chain at `seq`; trusted only once covered."""

    seq: int
    epoch: int
    public: bytes


def rotation_of(seq: int, event: bytes) -> Rotation | None:
    """The announcement in a serialised Event, or None when it is another kind of event.

    Raises MalformedError when the bytes are not an Event or its key is not Ed25519.
    """
    try:
        ev = pb.Event.FromString(event)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise MalformedError(f"event seq {seq} is not a serialised Event ({exc})", seq=seq) from exc
    if ev.WhichOneof("body") != "key_rotated":
        return None
    return Rotation(seq, ev.key_rotated.epoch, bytes(ev.key_rotated.public_key))


def checkpoint_epoch(cp: Checkpoint) -> int:
    """The epoch a checkpoint names in its `epoch N` extension line (0 when it names none)."""
    for ext in cp.extensions:
        if ext.startswith(_EPOCH_PREFIX):
            value = ext[len(_EPOCH_PREFIX) :]
            if not value.isdigit() or len(value) > 10:
                raise MalformedError(
                    f"checkpoint at size {cp.size} has extension {ext[:40]!r}; expected 'epoch N'",
                    seq=cp.size,
                )
            return int(value)
    return 0


class KeyChain:
    """Which key may sign an agent's checkpoints now, learnt checkpoint by checkpoint."""

    def __init__(self, origin: str | None, current: EpochKey) -> None:
        self.origin = origin
        self._current = current
        self._pending: dict[int, Rotation] = {}
        self._first = current
        self.learnt: list[EpochKey] = []  # keys this instance learnt, oldest first

    @classmethod
    def enrolled(cls, origin: str | None, public: bytes) -> KeyChain:
        """A chain that trusts only the enrolled epoch-0 key (origin None: not checked)."""
        return cls(origin, EpochKey(0, public))

    @property
    def current(self) -> EpochKey:
        """The key that must sign the next checkpoint."""
        return self._current

    def announce(self, rotation: Rotation) -> None:
        """Note a KeyRotated event from the chain; it is trusted only once a checkpoint covers it.

        Raises MalformedError when the key is not Ed25519, the epoch is not ahead of the
        chain, or an epoch is announced twice.
        """
        _check_public(rotation.public, f"the key announced at seq {rotation.seq}")
        if rotation.epoch <= self._current.epoch:
            raise MalformedError(
                f"KeyRotated at seq {rotation.seq} announces epoch {rotation.epoch}; the chain "
                f"is already at epoch {self._current.epoch}, expected a later epoch",
                seq=rotation.seq,
            )
        earlier = self._pending.get(rotation.epoch)
        if earlier is not None and earlier != rotation:
            raise MalformedError(
                f"KeyRotated at seq {rotation.seq} announces epoch {rotation.epoch} again (first "
                f"at seq {earlier.seq}); expected one key per epoch",
                seq=rotation.seq,
            )
        self._pending[rotation.epoch] = rotation

    def verify(self, note: bytes) -> Checkpoint:
        """Verify a checkpoint with the current key, then learn the next key if it covers it.

        Raises RetiredKeyError for an older epoch, UnknownKeyError for an epoch not learnt
        (or a signature by another key), BadSignatureError, MalformedError.
        """
        cp, _ = parse_checkpoint(note)
        epoch = checkpoint_epoch(cp)
        cur = self._current
        if epoch < cur.epoch:
            raise RetiredKeyError(
                f"checkpoint at size {cp.size} is signed with epoch {epoch}'s key, but epoch "
                f"{cur.epoch} took over at size {cur.valid_from}; an old key is erased at "
                "rotation, so a signature by it on new history was made with a stolen copy",
                seq=cp.size,
            )
        if epoch > cur.epoch:
            raise UnknownKeyError(
                f"checkpoint at size {cp.size} is signed with epoch {epoch}'s key, which was "
                f"never announced in a KeyRotated event covered by a checkpoint of epoch "
                f"{cur.epoch} (key {fingerprint(cur.public)}); expected epoch {cur.epoch}",
                seq=cp.size,
            )
        if cp.size < cur.valid_from:
            raise RetiredKeyError(
                f"checkpoint at size {cp.size} is signed with epoch {epoch}'s key, which only "
                f"signs from size {cur.valid_from}; expected a checkpoint at or after it",
                seq=cp.size,
            )
        cp = verify_checkpoint(note, verifiers_for(note, cur.public), origin=self.origin)
        nxt = self._pending.pop(cur.epoch + 1, None)
        if nxt is not None:
            if nxt.seq < cp.size:
                learnt = EpochKey(nxt.epoch, nxt.public, cp.size, nxt.seq)
                self._current = learnt
                self.learnt.append(learnt)
            else:
                self._pending[nxt.epoch] = nxt
        return cp

    def verify_past(self, note: bytes) -> Checkpoint:
        """Verify a checkpoint by any epoch this chain has been through, within its span.

        For comparing an older checkpoint someone kept (the client's copy of its agent's
        latest checkpoint) with history verified since; it learns nothing. An epoch's key
        signs from its `valid_from` up to the size where the next epoch took over. Raises
        UnknownKeyError for an epoch this chain never reached, RetiredKeyError outside the
        span, and as `verify`.
        """
        cp, _ = parse_checkpoint(note)
        epoch = checkpoint_epoch(cp)
        keys = [self._first, *self.learnt]
        index = next((i for i, k in enumerate(keys) if k.epoch == epoch), None)
        if index is None:
            raise UnknownKeyError(
                f"checkpoint at size {cp.size} is signed with epoch {epoch}'s key; this key "
                f"chain holds epochs {keys[0].epoch}..{keys[-1].epoch}",
                seq=cp.size,
            )
        key = keys[index]
        end = keys[index + 1].valid_from if index + 1 < len(keys) else None
        if end is not None and cp.size > end:
            raise RetiredKeyError(
                f"checkpoint at size {cp.size} is signed with epoch {epoch}'s key, retired at "
                f"size {end} when epoch {keys[index + 1].epoch} took over",
                seq=cp.size,
            )
        return KeyChain(self.origin, key).verify(note)


def _check_public(public: bytes, what: str) -> None:
    if len(public) != PUBLIC_KEY_SIZE:
        raise MalformedError(f"{what} is {len(public)} bytes; expected a raw 32-byte Ed25519 key")
    try:
        Ed25519PublicKey.from_public_bytes(public)
    except ValueError as exc:
        raise MalformedError(f"{what} is not an Ed25519 public key") from exc
