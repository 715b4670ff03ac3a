"""The gate's per-thread /proc handles: own threads known, ended threads detected, bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from agent.tasks import DIR_FD, LOGINUID_FD, OWN, TaskTable

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _child() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


def test_a_thread_of_this_process_is_own_and_a_child_is_not() -> None:
    table = TaskTable()
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
    t.start()
    t.join()
    child = _child()
    try:
        mine = table.open(threading.get_native_id())
        other = table.open(child.pid)
        assert mine is not None
        assert other is not None
        assert mine[OWN] == 1
        assert other[OWN] == 0
        assert int(os.pread(other[LOGINUID_FD], 16, 0)) >= 0
        assert os.fstat(other[DIR_FD]).st_uid == os.geteuid()
    finally:
        child.kill()
        child.wait()
        table.close()


def test_a_handle_of_an_ended_process_fails_so_a_reused_id_is_opened_afresh() -> None:
    table = TaskTable()
    child = _child()
    entry = table.open(child.pid)
    assert entry is not None
    child.kill()
    child.wait()  # reaped: its id may now be given to another process
    with pytest.raises(ProcessLookupError):
        os.pread(entry[LOGINUID_FD], 16, 0)
    table.close()


def test_a_gone_thread_has_no_entry() -> None:
    child = _child()
    child.kill()
    child.wait()
    assert TaskTable().open(child.pid) is None


def test_the_table_is_bounded_and_closes_what_it_evicts() -> None:
    table = TaskTable(limit=2)
    children = [_child() for _ in range(3)]
    try:
        first = table.open(children[0].pid)
        assert first is not None
        for c in children[1:]:
            table.open(c.pid)
        assert len(table) == 2
        assert children[0].pid not in table.entries
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(first[DIR_FD])
    finally:
        for c in children:
            c.kill()
            c.wait()
        table.close()
    assert len(table) == 0


EXHAUST = r"""
import os, resource, subprocess, sys
from agent.tasks import TaskTable, raise_fd_limit
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(5)]
try:
    table = TaskTable()
    for k in kids[:4]:
        assert table.open(k.pid) is not None
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    entry = table.open(kids[4].pid)  # out of fds: older entries go, the new one is opened
    print("opened" if entry is not None else "gone", len(table))
    for fd in held:
        os.close(fd)
    print("limit", raise_fd_limit(512))
finally:
    for k in kids:
        k.kill()
"""


def test_out_of_file_descriptors_evicts_rather_than_taking_a_live_thread_for_gone() -> None:
    out = subprocess.run(
        [sys.executable, "-c", EXHAUST], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.split()[0] == "opened"
    assert int(first.split()[1]) <= 3
    assert second == "limit 512"
