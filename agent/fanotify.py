"""A ctypes binding to Linux fanotify: init, mark, event parsing, responses. Nothing else.

Constants are those of <linux/fanotify.h>. Events are parsed from the bytes `os.read`
returns on a fanotify fd; permission events are answered with `respond`. The caller owns
every event fd and must close it after answering.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

from protos.errors import CustodesError

# fanotify_init flags
FAN_CLOEXEC = 0x0000_0001
FAN_NONBLOCK = 0x0000_0002
FAN_CLASS_NOTIF = 0x0000_0000
FAN_CLASS_CONTENT = 0x0000_0004
FAN_CLASS_PRE_CONTENT = 0x0000_0008
FAN_UNLIMITED_QUEUE = 0x0000_0010
FAN_UNLIMITED_MARKS = 0x0000_0020
FAN_REPORT_PIDFD = 0x0000_0080
FAN_REPORT_TID = 0x0000_0100
FAN_REPORT_FID = 0x0000_0200
FAN_REPORT_DIR_FID = 0x0000_0400
FAN_REPORT_NAME = 0x0000_0800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

# fanotify_mark flags
FAN_MARK_ADD = 0x0000_0001
FAN_MARK_REMOVE = 0x0000_0002
FAN_MARK_DONT_FOLLOW = 0x0000_0004
FAN_MARK_ONLYDIR = 0x0000_0008
FAN_MARK_FLUSH = 0x0000_0080
FAN_MARK_INODE = 0x0000_0000
FAN_MARK_MOUNT = 0x0000_0010
FAN_MARK_FILESYSTEM = 0x0000_0100

# event mask bits
FAN_ACCESS = 0x0000_0001
FAN_MODIFY = 0x0000_0002
FAN_OPEN = 0x0000_0020
FAN_MOVED_FROM = 0x0000_0040
FAN_MOVED_TO = 0x0000_0080
FAN_CREATE = 0x0000_0100
FAN_DELETE = 0x0000_0200
FAN_DELETE_SELF = 0x0000_0400
FAN_MOVE_SELF = 0x0000_0800
FAN_OPEN_EXEC = 0x0000_1000
FAN_Q_OVERFLOW = 0x0000_4000
FAN_OPEN_PERM = 0x0001_0000
FAN_ACCESS_PERM = 0x0002_0000
FAN_OPEN_EXEC_PERM = 0x0004_0000
FAN_EVENT_ON_CHILD = 0x0800_0000
FAN_ONDIR = 0x4000_0000

# responses
FAN_ALLOW = 0x01
FAN_DENY = 0x02

FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3

# info record types
FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3

METADATA = struct.Struct("<IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
RESPONSE = struct.Struct("<iI")  # fd, response
_INFO_HEADER = struct.Struct("<BBH")  # info_type, pad, len
_FSID_HANDLE = struct.Struct("<iiIi")  # fsid val[0], val[1], handle_bytes, handle_type
READ_SIZE = 64 * 1024  # bytes per read; the kernel never splits an event across reads


class FanotifyError(CustodesError):
    """A fanotify call failed (no privilege, kernel too old, bad path)."""

    def __init__(self, message: str, *, errno: int = 0, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.errno = errno


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]
_libc.fanotify_mark.restype = ctypes.c_int
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.open_by_handle_at.restype = ctypes.c_int

AT_FDCWD = -100


def init(flags: int, event_f_flags: int = os.O_RDONLY | os.O_LARGEFILE) -> int:
    """Create a fanotify group and return its fd. Raises FanotifyError."""
    fd = int(_libc.fanotify_init(flags, event_f_flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise FanotifyError(
            f"fanotify_init(0x{flags:x}) failed: {os.strerror(err)} "
            "(expected a Linux kernel with fanotify and CAP_SYS_ADMIN)",
            errno=err,
            hint="run the agent as root, or use monitor mode",
        )
    return fd


def mark(fd: int, flags: int, mask: int, path: str, dirfd: int = AT_FDCWD) -> None:
    """Add, remove or flush marks on `path` (relative to `dirfd`). Raises FanotifyError."""
    rc = int(_libc.fanotify_mark(fd, flags, mask, dirfd, os.fsencode(path)))
    if rc < 0:
        err = ctypes.get_errno()
        raise FanotifyError(
            f"fanotify_mark(flags=0x{flags:x}, mask=0x{mask:x}) on {path!r} failed: "
            f"{os.strerror(err)} (expected an existing path the agent may mark)",
            errno=err,
        )


def respond(fd: int, event_fd: int, allow: bool) -> None:
    """Answer one permission event. The caller closes `event_fd` afterwards."""
    os.write(fd, RESPONSE.pack(event_fd, FAN_ALLOW if allow else FAN_DENY))


@dataclass(frozen=True, slots=True)
class FileId:
    """An info record: the filesystem id, a file handle, and (for DFID_NAME) a name."""

    info_type: int
    fsid: tuple[int, int]
    handle_type: int
    handle: bytes  # f_handle bytes only
    name: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """One event as read from a fanotify fd (fd is FAN_NOFD for FID groups)."""

    mask: int
    fd: int
    pid: int
    info: tuple[FileId, ...] = ()


def _parse_info(buf: bytes, start: int, end: int) -> tuple[FileId, ...]:
    out: list[FileId] = []
    off = start
    while off + _INFO_HEADER.size <= end:
        info_type, _pad, length = _INFO_HEADER.unpack_from(buf, off)
        if length < _INFO_HEADER.size or off + length > end:
            break  # a malformed record: stop rather than read past the event
        if info_type in (
            FAN_EVENT_INFO_TYPE_FID,
            FAN_EVENT_INFO_TYPE_DFID_NAME,
            FAN_EVENT_INFO_TYPE_DFID,
        ):
            body = off + _INFO_HEADER.size
            f0, f1, hbytes, htype = _FSID_HANDLE.unpack_from(buf, body)
            hstart = body + _FSID_HANDLE.size
            handle = bytes(buf[hstart : hstart + hbytes])
            name: str | None = None
            if info_type == FAN_EVENT_INFO_TYPE_DFID_NAME:
                raw = bytes(buf[hstart + hbytes : off + length]).split(b"\0", 1)[0]
                name = os.fsdecode(raw)
            out.append(FileId(info_type, (f0, f1), htype, handle, name))
        off += length
    return tuple(out)


def parse(buf: bytes) -> list[Event]:
    """Parse every event in `buf`. Raises FanotifyError on a version this code does not know."""
    events: list[Event] = []
    off = 0
    size = len(buf)
    while off + METADATA.size <= size:
        event_len, vers, _r, meta_len, mask, efd, pid = METADATA.unpack_from(buf, off)
        if vers != FANOTIFY_METADATA_VERSION:
            raise FanotifyError(
                f"fanotify metadata version {vers} (expected {FANOTIFY_METADATA_VERSION})"
            )
        if event_len < METADATA.size or off + event_len > size:
            break
        info = _parse_info(buf, off + meta_len, off + event_len) if event_len > meta_len else ()
        events.append(Event(mask, efd, pid, info))
        off += event_len
    return events


def open_by_handle(mount_fd: int, fid: FileId, flags: int = os.O_PATH) -> int:
    """Open the file a FID record names, relative to any fd on the same filesystem."""
    header = struct.pack("<Ii", len(fid.handle), fid.handle_type)
    rc = int(_libc.open_by_handle_at(mount_fd, header + fid.handle, flags | os.O_CLOEXEC))
    if rc < 0:
        err = ctypes.get_errno()
        raise FanotifyError(
            f"open_by_handle_at failed: {os.strerror(err)} (expected a live file handle)",
            errno=err,
        )
    return rc


def fd_path(fd: int) -> str:
    """The path the kernel reports for one of this process's fds."""
    return os.readlink(f"/proc/self/fd/{fd}")  # noqa: PTH115 - hot path, no Path object


def fsid_of(path_or_fd: str | int) -> tuple[int, int]:
    """The (val[0], val[1]) filesystem id fanotify reports, from statvfs's f_fsid."""
    v = os.statvfs(path_or_fd).f_fsid
    lo = v & 0xFFFF_FFFF
    hi = (v >> 32) & 0xFFFF_FFFF

    def signed(x: int) -> int:
        return x - (1 << 32) if x >= 1 << 31 else x

    return (signed(lo), signed(hi))
