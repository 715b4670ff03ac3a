"""The SQLite evidence file holds personal information: created 0600 by the store itself."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from server.store import open_store


def test_a_new_sqlite_store_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)  # the loosest umask: nothing but the store keeps the file private
    try:
        store = open_store(tmp_path / "custodes.db")
        store.close()
    finally:
        os.umask(old)
    for name in ("custodes.db", "custodes.db-wal", "custodes.db-shm"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "custodes.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    open_store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
