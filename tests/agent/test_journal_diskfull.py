"""Disk full for real: a 1 MiB tmpfs as the journal directory, filled up, then freed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Limits
from agent.journal import Journal
from agent.keys import epoch_verifier
from agent.verify import verify_journal
from tests.agent.test_journal import DENY, NAME, ORIGIN, access, events

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs"),
]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "journal"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "ctest-journal", str(where)],
        check=True,
        timeout=30,
    )
    try:
        yield where
    finally:
        r = subprocess.run(["umount", str(where)], check=False, timeout=30)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def fill(path: Path) -> int:
    """Write zeros to `path` until the filesystem is full; return the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = bytes(4096)
        for _ in range(10_000):  # bounded: 40 MiB at most, far more than the 1 MiB tmpfs
            try:
                written += os.write(fd, chunk)
            except OSError:
                break
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0"):  # the last bytes of the last page
                written += 1
    finally:
        os.close(fd)
    return written


def test_disk_full_keeps_answering_and_writes_a_loss_marker_when_space_returns(
    tiny_fs: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    j = Journal.open(tiny_fs, ORIGIN, keys, Limits(group_events=64))
    try:
        for i in range(10):
            j.record(access(i))
        assert j.flush()
        before = j.next_seq
        filler = tiny_fs / "filler"
        assert fill(filler) > 0

        answers: list[bool] = []
        done = threading.Event()
        lock = threading.Lock()
        n = 2000

        def on_durable(ok: bool) -> None:
            with lock:
                answers.append(ok)
                if len(answers) == n:
                    done.set()

        first = time.time_ns()
        for i in range(n):
            j.record(access(100 + i, DENY), on_durable)
        assert done.wait(30), f"only {len(answers)} of {n} denies were answered"
        refused = answers.count(False)
        assert refused > 0  # the disk really was full
        stats = j.stats()
        assert stats.lost >= refused

        filler.unlink()  # space returns
        assert j.flush(timeout=30)
        after_free = j.next_seq
        assert after_free > before
    finally:
        j.close()

    # Usually one marker; two when the space the journal freed by cutting back a failed
    # write let a marker in before the disk filled again. Either way every lost event is
    # counted by exactly one marker, in order.
    losses = [e.loss for e in events(tiny_fs) if e.WhichOneof("body") == "loss"]
    assert losses
    assert all(loss.cause == "disk full" for loss in losses)
    lost = sum(loss.lost for loss in losses)
    assert lost == stats.lost
    spans = [(loss.first_unix_nanos, loss.last_unix_nanos) for loss in losses]
    assert all(first <= a <= b for a, b in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    report = verify_journal(tiny_fs, epoch_verifier(keys, 0), origin=NAME)
    assert report.ok, report.problem
    assert report.denies == n - lost  # every deny is journaled or counted as lost
