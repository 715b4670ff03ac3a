"""Ed25519 keys: generate, store with mode 0600 atomically, load with checks."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protos.evidence.errors import EvidenceError, MalformedError
from protos.files import write_atomic

MAX_KEY_FILE = 4096
SEED_SIZE = 32


def generate_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def save_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write `key` as unencrypted PKCS#8 PEM, mode 0600, atomically."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(Path(path), pem, mode=0o600)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a key saved by `save_private_key` (PEM) or a raw 32-byte seed.

    Raises EvidenceError when the file is readable by group or others or is not a regular
    file, MalformedError when it holds no Ed25519 key, OSError when it cannot be read.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EvidenceError(f"key file {path} is not a regular file")
        loose = stat.S_IMODE(info.st_mode) & 0o077
        if loose:
            raise EvidenceError(
                f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; expected 0600 "
                "(no access for group or others)",
                hint=f"run `chmod 600 {path}` if the key was never exposed, else replace it",
            )
        data = os.read(fd, MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE:
        raise MalformedError(f"key file {path} is larger than {MAX_KEY_FILE} bytes")
    if len(data) == SEED_SIZE:
        return Ed25519PrivateKey.from_private_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise MalformedError(
            f"key file {path} holds neither a PEM private key nor a 32-byte seed"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise MalformedError(f"key file {path} holds a {type(key).__name__}; expected Ed25519")
    return key


def public_key_bytes(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: bytes) -> str:
    """First 16 hex digits of SHA-256 of the raw public key, for messages."""
    return hashlib.sha256(public).hexdigest()[:16]
