"""protos.files.write_atomic: the file is whole, has its mode, and no temporary is left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from protos.files import write_atomic


def test_write_atomic_creates_the_file_with_its_bytes(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"hello")
    assert target.read_bytes() == b"hello"


def test_write_atomic_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old contents that are longer")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_write_atomic_applies_the_mode_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "key"
    old = os.umask(0o077)
    try:
        write_atomic(target, b"x", mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_secret_replacing_a_readable_file_ends_0600(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"public")
    target.chmod(0o644)
    write_atomic(target, b"secret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_write_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a", b"1")
    write_atomic(tmp_path / "a", b"2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "a"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_write_into_a_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_atomic(tmp_path / "missing" / "a", b"1")


def test_write_atomic_handles_large_data(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    write_atomic(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data
