"""Who opened, and how: cheap reads of /proc for a blocked opener.

The cheap path (every event) is `uid_of` and `loginuid_of`. Everything else (session,
parent, executable, command line, the real open flags) is read for technician events only.
The opener is blocked in the kernel until the gate answers, so its /proc entries are there;
a reader still treats a vanished process as unknown rather than failing.
"""

from __future__ import annotations

import os
import platform
import pwd
import stat
import time
from collections import OrderedDict

from agent.identities import UNSET_LOGINUID
from agent.records import Attribution
from policies.model import Action

MAX_CMDLINE = 1024  # bytes kept of a command line
MAX_NAMES = 4096  # uid → name entries kept
_O_ACCMODE = 0o3
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
SYSCALL_RETRIES = 200  # yields while a just-blocked opener is still on its CPU
SYSCALL_SLEEPS = 400  # then sleeps of SYSCALL_SLEEP_S: at most ~20 ms more in all
SYSCALL_SLEEP_S = 0.00005
CREATED_WITHIN_NS = 2_000_000_000  # an empty O_CREAT target this young counts as created

# syscall number → index of the flags argument (None: flags are in a struct open_how,
# whose first u64 the pointer argument at index 2 points at). agent/_answer.c: OPENS, EXECS.
_OPEN_SYSCALLS: dict[str, dict[int, int | None]] = {
    "x86_64": {2: 1, 85: -1, 257: 2, 304: 2, 437: None},
    "aarch64": {56: 2, 265: 2, 437: None},
}
_EXEC_SYSCALLS: dict[str, frozenset[int]] = {
    "x86_64": frozenset({59, 322}),
    "aarch64": frozenset({221, 281}),
}
_ARCH = platform.machine()
_OPENS = _OPEN_SYSCALLS.get(_ARCH, {})
_EXECS = _EXEC_SYSCALLS.get(_ARCH, frozenset())
CREAT_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_TRUNC  # creat(2)


def uid_of(pid: int) -> int:
    """The effective uid of `pid` (the owner of /proc/PID); -1 when it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid  # noqa: PTH116 - hot path, no Path object
    except OSError:
        return -1


def _read_small(path: str, limit: int = 64) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def loginuid_of(pid: int) -> int | None:
    """The audit loginuid of `pid`, or None when unset or unreadable."""
    try:
        value = int(_read_small(f"/proc/{pid}/loginuid"))
    except (OSError, ValueError):
        return None
    return None if value == UNSET_LOGINUID else value


def session_of(pid: int) -> int | None:
    """The audit session id of `pid`, or None when unset or unreadable."""
    try:
        value = int(_read_small(f"/proc/{pid}/sessionid"))
    except (OSError, ValueError):
        return None
    return None if value == UNSET_LOGINUID else value


def ppid_of(pid: int) -> int | None:
    """The parent pid from /proc/PID/stat (after the command name, which may hold spaces)."""
    try:
        raw = _read_small(f"/proc/{pid}/stat", 1024)
        return int(raw[raw.rindex(b")") + 2 :].split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def exe_of(pid: int) -> str:
    """The executable path, or "" when it cannot be read."""
    try:
        return os.readlink(f"/proc/{pid}/exe")  # noqa: PTH115 - plain str in and out
    except OSError:
        return ""


def cmdline_of(pid: int, limit: int = MAX_CMDLINE) -> str:
    """The command line, arguments joined by spaces, at most `limit` bytes read."""
    try:
        raw = _read_small(f"/proc/{pid}/cmdline", limit)
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def open_flags(tid: int, fd: int = -1, line: bytes | None = None) -> int | None:
    """The flags the blocked thread `tid` passed to open, from /proc/TID/syscall.

    `fd`, when given, is an open handle of that file (agent._answer keeps them), read with
    pread; `line`, when given, is that file as read a moment ago. Returns -2 for an exec,
    None when the syscall is not one this code knows (io_uring, another architecture) or
    the thread is gone. agent._answer parses the line itself, with the same tables, and
    leaves only what it cannot (a thread still running, openat2) to this function.
    """
    path = f"/proc/{tid}/syscall"

    def read() -> bytes:
        return os.pread(fd, 256, 0) if fd >= 0 else _read_small(path, 256)

    try:
        fields = (line if line is not None else read()).split()
        # The event is queued just before the opener goes to sleep: until it does, the file
        # says "running". Wait for it, a bounded number of yields.
        for i in range(SYSCALL_RETRIES + SYSCALL_SLEEPS):
            if not fields or fields[0] != b"running":
                break
            # Yield first; an opener preempted on its way to sleep (a loaded machine) can
            # take milliseconds, so then sleep a little, bounded.
            if i < SYSCALL_RETRIES:
                os.sched_yield()
            else:
                time.sleep(SYSCALL_SLEEP_S)
            fields = read().split()
        nr = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    if nr in _EXECS:
        return -2
    if nr not in _OPENS:
        return None
    index = _OPENS[nr]
    try:
        if index == -1:
            return CREAT_FLAGS
        if index is None:
            return _open_how_flags(tid, int(fields[3], 16))
        return int(fields[1 + index], 16) & 0xFFFF_FFFF
    except (OSError, ValueError, IndexError):
        return None


def _open_how_flags(tid: int, address: int) -> int:
    fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int.from_bytes(os.pread(fd, 8, address), "little")
    finally:
        os.close(fd)


def classify_open(
    exec_event: bool, st: os.stat_result | None, flags: int | None, now_ns: int
) -> Action:
    """The action of one open: exec, list (a directory), create, write or read.

    Unknown flags count as a write: a write must never pass as a read.
    """
    if exec_event or flags == -2:
        return Action.EXEC
    if st is not None and stat.S_ISDIR(st.st_mode):
        return Action.LIST
    if flags is None:
        return Action.WRITE
    if (
        flags & os.O_CREAT
        and st is not None
        and st.st_size == 0
        and 0 <= now_ns - st.st_ctime_ns < CREATED_WITHIN_NS
    ):
        return Action.CREATE
    if flags & _O_ACCMODE or flags & _WRITE_FLAGS:
        return Action.WRITE
    return Action.READ


class AccountNames:
    """A bounded uid → user name cache (`pwd`); unknown uids map to their number."""

    def __init__(self, limit: int = MAX_NAMES) -> None:
        self._names: OrderedDict[int, str] = OrderedDict()
        self._limit = limit

    def name(self, uid: int) -> str:
        """The user name of `uid`, or str(uid) when the system has none."""
        cached = self._names.get(uid)
        if cached is not None:
            return cached
        try:
            name = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            name = str(uid)
        self._names[uid] = name
        if len(self._names) > self._limit:
            self._names.popitem(last=False)
        return name


def tgid_of(tid: int) -> int:
    """The process id of thread `tid` (`tid` itself when it cannot be read)."""
    try:
        for line in _read_small(f"/proc/{tid}/status", 512).splitlines():
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return tid


ENRICH_TTL_S = 1.0
MAX_ENRICHED = 1024


class Enricher:
    """Full attributions for technician events, cached per thread for `ENRICH_TTL_S`.

    A technician copying a folder opens thousands of files from one process: its exe,
    command line, parent, session and process id are read once, and re-read when the
    thread's exe changes (an exec) or the entry is older than the TTL. uid and loginuid
    are never cached: they come fresh with every event.
    """

    def __init__(self, names: AccountNames, ttl_s: float = ENRICH_TTL_S) -> None:
        self._names = names
        self._ttl = ttl_s
        self._cache: dict[int, tuple[float, str, int, int | None, int | None, str]] = {}

    def attribute(self, tid: int, uid: int, loginuid: int | None) -> Attribution:
        """The enriched Attribution of thread `tid` (its process id in `pid`)."""
        names = self._names
        now = time.monotonic()
        exe = exe_of(tid)
        hit = self._cache.get(tid)
        if hit is None or hit[0] < now or hit[1] != exe:
            if len(self._cache) >= MAX_ENRICHED:
                self._cache.clear()
            hit = (
                now + self._ttl,
                exe,
                tgid_of(tid),
                session_of(tid),
                ppid_of(tid),
                cmdline_of(tid),
            )
            self._cache[tid] = hit
        _, _, pid, session, ppid, cmdline = hit
        return Attribution(
            pid=pid,
            uid=uid,
            loginuid=loginuid,
            account=names.name(uid),
            login_account=names.name(loginuid) if loginuid is not None else None,
            session_id=session,
            ppid=ppid,
            exe=exe,
            cmdline=cmdline,
        )


def attribute(
    pid: int, uid: int, loginuid: int | None, names: AccountNames, *, enrich: bool
) -> Attribution:
    """Build the Attribution; `enrich` adds session, parent, exe and command line."""
    login_account = names.name(loginuid) if loginuid is not None else None
    if not enrich:
        return Attribution(pid, uid, loginuid, names.name(uid), login_account)
    return Attribution(
        pid=pid,
        uid=uid,
        loginuid=loginuid,
        account=names.name(uid),
        login_account=login_account,
        session_id=session_of(pid),
        ppid=ppid_of(pid),
        exe=exe_of(pid),
        cmdline=cmdline_of(pid),
    )
