"""Open /proc handles of the threads that open files, so each event costs two cheap reads.

The gate needs, for every permission event, the opener's effective uid and its loginuid.
Read by path that is stat(/proc/TID) plus open/read/close of /proc/TID/loginuid; with the
handles kept open it is one pread and one fstat (pid_getattr reports the task's current
credentials on every call).

Why a kept handle is safe although thread ids are reused: a /proc/TID handle refers to the
kernel's `struct pid`, not to the number. Once that task has exited, reading through the
handle fails with ESRCH, so `read_loginuid` failing means "stale: open again"; a read that
succeeds proves the task behind the handle is alive, and since live tasks have distinct
ids it is the thread the event names.

Each entry also says whether the thread belongs to this process (found under
/proc/self/task when first seen), so every agent thread is exempt from the gate: grpc's,
the journal's, the watchdog's, not only the main one.
"""

from __future__ import annotations

import errno
import os
import resource

MAX_TASKS = 1024  # entries kept (up to 3 fds each); the oldest closed when a thread appears
FD_LIMIT = 65536  # soft RLIMIT_NOFILE the gate asks for: event fds and these handles
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FLAGS = os.O_RDONLY | os.O_CLOEXEC

# An entry is a list, indexed on the hot path:
DIR_FD = 0  # /proc/TID
LOGINUID_FD = 1  # /proc/TID/loginuid
OWN = 2  # 1 when the thread is one of this process's
SYSCALL_FD = 3  # /proc/TID/syscall, opened on first need (technicians only); -1 until then
Entry = list[int]


class TaskTable:
    """tid → [dir fd, loginuid fd, own, syscall fd]; bounded, oldest evicted first.

    Used by one thread (the gate's answer thread); `close` only after it has stopped.
    """

    def __init__(self, limit: int = MAX_TASKS) -> None:
        self.entries: dict[int, Entry] = {}
        self._limit = limit
        self._self_tasks = f"/proc/{os.getpid()}/task/"
        self.opened = 0  # entries opened since start (misses)

    def open(self, tid: int) -> Entry | None:
        """Open (or re-open) the handles of `tid`; None when it is gone or unreadable.

        Out of file descriptors, the older half of the table is closed and the open tried
        once more: a full table must never read as "that thread is gone".
        """
        self.drop(tid)
        try:
            return self._open(tid)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                return None
        for old in list(self.entries)[: len(self.entries) // 2 + 1]:
            self.drop(old)
        try:
            return self._open(tid)
        except OSError:
            return None

    def _open(self, tid: int) -> Entry:
        dfd = os.open(f"/proc/{tid}", _DIR_FLAGS)
        try:
            lfd = os.open("loginuid", _FLAGS, dir_fd=dfd)
        except OSError:
            os.close(dfd)
            raise
        own = 1 if os.path.exists(self._self_tasks + str(tid)) else 0  # noqa: PTH110 - str in, per new thread
        entries = self.entries
        while len(entries) >= self._limit:
            self.drop(next(iter(entries)))
        entry = [dfd, lfd, own, -1]
        entries[tid] = entry
        self.opened += 1
        return entry

    def syscall_fd(self, entry: Entry) -> int:
        """The /proc/TID/syscall handle of `entry`, opened on first use; -1 if it cannot be."""
        fd = entry[SYSCALL_FD]
        if fd < 0:
            try:
                fd = os.open("syscall", _FLAGS, dir_fd=entry[DIR_FD])
            except OSError:
                return -1
            entry[SYSCALL_FD] = fd
        return fd

    def drop(self, tid: int) -> None:
        """Close and forget the handles of `tid` (nothing when there are none)."""
        entry = self.entries.pop(tid, None)
        if entry is None:
            return
        for fd in (entry[DIR_FD], entry[LOGINUID_FD], entry[SYSCALL_FD]):
            if fd >= 0:
                os.close(fd)

    def close(self) -> None:
        """Close every handle."""
        for tid in list(self.entries):
            self.drop(tid)

    def __len__(self) -> int:
        return len(self.entries)


def raise_fd_limit(want: int = FD_LIMIT) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `want` (never above the hard limit);
    returns the soft limit now. systemd starts services with a soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
