"""The agent's checkpoint signing keys, evolving by epoch for forward security.

`keys/epoch` names the current epoch n; `keys/epoch-{n}.key` is its Ed25519 private key
(0600). `keys/epoch-0.vkey` is the first public key, the one enrolled with the server: a
verifier that trusts it learns every later key from the KeyRotated events in the chain,
each covered by a checkpoint the previous key signed. Rotation writes the next key, the
journal chains and checkpoints its public key with the old one, then the old private key
is overwritten and deleted, so a later compromise of the host cannot re-sign the past.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from protos.evidence.keys import generate_key, load_private_key, save_private_key
from protos.evidence.note import NoteSigner, NoteVerifier
from protos.files import write_atomic

EPOCH_FILE = "epoch"


@dataclass(frozen=True, slots=True)
class EpochKey:
    """The signer of one epoch."""

    epoch: int
    signer: NoteSigner

    @property
    def public(self) -> bytes:
        """The raw 32-byte public key."""
        return self.signer.verifier().public


def _key_path(key_dir: Path, epoch: int) -> Path:
    return key_dir / f"epoch-{epoch}.key"


def _read_epoch(key_dir: Path) -> int | None:
    try:
        text = (key_dir / EPOCH_FILE).read_text(encoding="ascii")[:32].strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise ValueError(f"{key_dir / EPOCH_FILE} holds {text!r}; expected an epoch number")
    return int(text)


def load_or_create(key_dir: Path, name: str) -> EpochKey:
    """The current epoch's key, creating epoch 0 on first start.

    Raises OSError when the directory cannot be used, EvidenceError for a bad key file.
    """
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    epoch = _read_epoch(key_dir)
    if epoch is None:
        key = generate_key()
        save_private_key(_key_path(key_dir, 0), key)
        signer = NoteSigner(name, key)
        save_vkey(key_dir, 0, signer)
        write_atomic(key_dir / EPOCH_FILE, b"0\n")
        return EpochKey(0, signer)
    return EpochKey(epoch, NoteSigner(name, load_private_key(_key_path(key_dir, epoch))))


def pending_next(key_dir: Path, name: str, current: EpochKey) -> EpochKey | None:
    """The next epoch's key if a rotation was prepared but not finished (crash)."""
    path = _key_path(key_dir, current.epoch + 1)
    if not path.exists():
        return None
    return EpochKey(current.epoch + 1, NoteSigner(name, load_private_key(path)))


def prepare_next(key_dir: Path, name: str, current: EpochKey) -> EpochKey:
    """Create and store the next epoch's key; the current one stays in force."""
    key = generate_key()
    save_private_key(_key_path(key_dir, current.epoch + 1), key)
    signer = NoteSigner(name, key)
    save_vkey(key_dir, current.epoch + 1, signer)
    return EpochKey(current.epoch + 1, signer)


def finish_rotation(key_dir: Path, old: EpochKey, new: EpochKey) -> None:
    """Make `new` current and erase `old`'s private key (overwrite, fsync, unlink)."""
    write_atomic(key_dir / EPOCH_FILE, f"{new.epoch}\n".encode("ascii"))
    erase(_key_path(key_dir, old.epoch))


def abandon(key_dir: Path, pending: EpochKey) -> None:
    """Erase a prepared key whose rotation never reached the journal."""
    erase(_key_path(key_dir, pending.epoch))


def erase(path: Path) -> None:
    """Overwrite a key file with zeros, fsync it, and delete it."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            os.write(fd, bytes(size))
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()


def save_vkey(key_dir: Path, epoch: int, signer: NoteSigner) -> None:
    """Store an epoch's public verifier key (safe to publish) next to the private keys."""
    write_atomic(key_dir / f"epoch-{epoch}.vkey", (signer.vkey() + "\n").encode("ascii"))


def epoch_verifier(key_dir: Path, epoch: int) -> NoteVerifier:
    """The stored verifier of `epoch` (0 is the enrolled key). Raises OSError, MalformedError."""
    text = (key_dir / f"epoch-{epoch}.vkey").read_text(encoding="ascii")[:1024].strip()
    return NoteVerifier.from_vkey(text)
