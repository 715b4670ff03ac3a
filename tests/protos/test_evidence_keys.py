"""Key files: 0600, atomic, refused when loose or junk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from protos.evidence import (
    EvidenceError,
    MalformedError,
    fingerprint,
    generate_key,
    load_private_key,
    public_key_bytes,
    save_private_key,
)


def test_saved_key_loads_back_and_is_0600(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "agent.key"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_bytes(load_private_key(path)) == public_key_bytes(key)


def test_raw_seed_file_loads(tmp_path: Path) -> None:
    key = generate_key()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    path = tmp_path / "seed"
    path.write_bytes(seed)
    path.chmod(0o600)
    assert public_key_bytes(load_private_key(path)) == public_key_bytes(key)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "agent.key"
    save_private_key(path, generate_key())
    path.chmod(mode)
    with pytest.raises(EvidenceError, match="expected 0600") as caught:
        load_private_key(path)
    assert caught.value.hint


@pytest.mark.parametrize(
    "content",
    [b"", b"junk", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", b"x" * 5000],
)
def test_junk_key_file_is_malformed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "agent.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(MalformedError):
        load_private_key(path)


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "ec.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(MalformedError, match="expected Ed25519"):
        load_private_key(path)


def test_symlinked_key_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    save_private_key(real, generate_key())
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(OSError):
        load_private_key(link)


def test_directory_is_not_a_key(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(EvidenceError, match="not a regular file"):
        load_private_key(directory)


def test_public_key_bytes_accepts_either_half() -> None:
    key = generate_key()
    assert public_key_bytes(key) == public_key_bytes(key.public_key())
    assert len(public_key_bytes(key)) == 32


def test_fingerprint_is_16_hex_digits() -> None:
    fp = fingerprint(os.urandom(32))
    assert len(fp) == 16
    int(fp, 16)
