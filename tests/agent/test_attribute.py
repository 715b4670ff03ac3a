"""Attribution from /proc and the action of an open, against real processes."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import attribute as attr
from agent.identities import Identities, resolve
from policies.model import Action, SubjectKind
from tests.agent.conftest import STAFF, TECH, WAIT_S

NOW = 1_700_000_000_000_000_000


def _st(mode: int = 0o100644, size: int = 0, ctime_ns: int = NOW) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, 0, ctime_ns))


@pytest.mark.parametrize(
    ("exec_event", "st", "flags", "expected"),
    [
        (True, _st(), None, Action.EXEC),
        (False, _st(), -2, Action.EXEC),
        (False, _st(mode=0o040755), os.O_RDONLY, Action.LIST),
        (False, _st(), os.O_RDONLY, Action.READ),
        (False, _st(), os.O_WRONLY, Action.WRITE),
        (False, _st(), os.O_RDWR, Action.WRITE),
        (False, _st(), os.O_RDONLY | os.O_TRUNC, Action.WRITE),
        (False, _st(), os.O_WRONLY | os.O_CREAT, Action.CREATE),
        (False, _st(size=10), os.O_WRONLY | os.O_CREAT, Action.WRITE),
        (False, _st(ctime_ns=NOW - 10**10), os.O_WRONLY | os.O_CREAT, Action.WRITE),
        (False, _st(), None, Action.WRITE),  # unknown flags never pass as a read
    ],
)
def test_open_is_classified(
    exec_event: bool, st: os.stat_result, flags: int | None, expected: Action
) -> None:
    assert attr.classify_open(exec_event, st, flags, NOW) is expected


@pytest.fixture
def blocked_opener(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A child blocked in open(2) on a FIFO with O_WRONLY|O_APPEND (no reader yet)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    flags = os.O_WRONLY | os.O_APPEND
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.open({str(fifo)!r}, {flags})"],
    )
    try:
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            fields = Path(f"/proc/{child.pid}/syscall").read_text().split()
            if fields and fields[0] in ("2", "56", "257"):
                break
            time.sleep(0.01)
        yield child, flags
    finally:
        child.kill()
        child.wait(WAIT_S)


@pytest.mark.root
def test_open_flags_of_a_blocked_thread_come_from_proc_syscall(
    blocked_opener: tuple[subprocess.Popen[bytes], int],
) -> None:
    child, flags = blocked_opener
    got = attr.open_flags(child.pid)
    assert got is not None
    assert got & (os.O_WRONLY | os.O_APPEND) == flags


def test_open_flags_of_a_vanished_process_are_unknown() -> None:
    assert attr.open_flags(2**22 + 12345) is None


@pytest.mark.root
def test_loginuid_and_session_are_read_and_unset_is_none() -> None:
    script = "import time; time.sleep(5)"
    child = subprocess.Popen(
        ["sh", "-c", f'echo 4242 > /proc/self/loginuid && exec "$0" -c "{script}"', sys.executable]
    )
    try:
        end = time.monotonic() + WAIT_S
        while attr.loginuid_of(child.pid) != 4242 and time.monotonic() < end:
            time.sleep(0.01)
        assert attr.loginuid_of(child.pid) == 4242
        assert attr.session_of(child.pid) is not None
        assert attr.uid_of(child.pid) == 0
        assert attr.ppid_of(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait(WAIT_S)
    if Path("/proc/self/loginuid").read_text().strip() == "4294967295":
        assert attr.loginuid_of(os.getpid()) is None


def test_a_vanished_process_reads_as_unknown() -> None:
    gone = 2**22 + 12345
    assert attr.uid_of(gone) == -1
    assert attr.loginuid_of(gone) is None
    assert attr.ppid_of(gone) is None
    assert attr.exe_of(gone) == ""
    assert attr.cmdline_of(gone) == ""


def test_enriched_attribution_names_exe_and_bounded_cmdline() -> None:
    names = attr.AccountNames()
    a = attr.attribute(os.getpid(), os.getuid(), None, names, enrich=True)
    assert a.exe == str(Path("/proc/self/exe").readlink())
    assert a.account == pwd.getpwuid(os.getuid()).pw_name
    assert len(attr.cmdline_of(os.getpid(), limit=8).encode()) <= 8


def test_account_names_are_bounded_and_unknown_uids_are_numbers() -> None:
    names = attr.AccountNames(limit=2)
    assert names.name(0) == "root"
    assert names.name(2**31 - 7) == str(2**31 - 7)
    names.name(1)
    assert len(names._names) == 2


@pytest.mark.root
def test_identities_resolve_accounts_and_match_root_only_by_loginuid(
    accounts: dict[str, pwd.struct_passwd],
) -> None:
    tech, staff = accounts[TECH], accounts[STAFF]
    ids = resolve({TECH: "tess", "root": "rooty", "ctest-no-such-user": "x"}, [STAFF])
    assert ids.unresolved == ("ctest-no-such-user",)
    assert ids.classify(tech.pw_uid, None) == (SubjectKind.TECHNICIAN, "tess")
    assert ids.classify(0, tech.pw_uid) == (SubjectKind.TECHNICIAN, "tess")
    assert ids.classify(staff.pw_uid, tech.pw_uid) == (SubjectKind.TECHNICIAN, "tess")
    assert ids.classify(0, None) == (SubjectKind.OTHER, None)  # a daemon is not "rooty"
    assert ids.classify(0, 0) == (SubjectKind.TECHNICIAN, "rooty")  # a login as root is
    assert ids.classify(staff.pw_uid, None) == (SubjectKind.PRINCIPAL, STAFF)


def test_a_shared_account_is_never_a_principal_for_a_technician() -> None:
    ids = resolve({"root": "rooty"}, {"root": "backup"})
    assert ids.principal_uids == {}
    assert Identities().classify(5, 5) == (SubjectKind.OTHER, None)
