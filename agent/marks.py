"""What the gate marks, and keeping the marks true as directories come and go.

`marks = "auto"` (agent.toml): an area root that is the root of its own filesystem (not the
root filesystem) gets one filesystem mark: it covers every path to that data, bind mounts
included, with no race. Any other root gets an inode mark on every directory below it
(FAN_EVENT_ON_CHILD covers the files in each); a second, notification group reports new
directories (FAN_CREATE and FAN_MOVED_TO with FAN_ONDIR), which are then marked and
rescanned. The walks that mark a tree are C (agent/_marktree.c, without the GIL). A file
opened in a new directory before its mark lands escapes the gate: `Marker.stats` counts new
directories and the files found already in them when marked.

`marks = "mount"` puts one mount mark on a root that is a mount point: every file opened
through that mount, new directories included, with no race and no notification group; but
the same files opened through a bind mount elsewhere are not gated, and creates, deletes
and renames are not recorded (the kernel reports none for mount marks). `"filesystem"`
insists on a filesystem mark, `"inode"` on inode marks, whatever the root is.

`/`, and any root holding the agent's own code or interpreter, is refused: the agent's own
opens there would hang it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent import fanotify as fan
from agent._marktree import mark_tree
from protos.errors import CustodesError

PERM_MASK = fan.FAN_OPEN_PERM | fan.FAN_OPEN_EXEC_PERM | fan.FAN_ONDIR
NOTIF_MASK = fan.FAN_CREATE | fan.FAN_MOVED_TO | fan.FAN_MOVED_FROM | fan.FAN_DELETE | fan.FAN_ONDIR
MAX_DIRS = 5_000_000  # a walk stops (and says so) past this many directories
Mode = Literal["filesystem", "mount", "inodes"]
MarkChoice = Literal["auto", "filesystem", "mount", "inode"]  # agent.toml `marks`


class GateError(CustodesError):
    """Root of the gate's errors (environment: fanotify, marks, /proc)."""


class MarkRefused(GateError):  # noqa: N818 - reads as the fact it reports
    """An area root may not be marked (it is `/`, holds the agent, or is not a directory)."""


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/self/mountinfo, as far as the gate needs it."""

    mount_id: int
    device: str  # "major:minor"
    root: str  # the path inside the filesystem mounted here
    mountpoint: str


def _unescape(text: str) -> str:
    return text.encode().decode("unicode_escape") if "\\" in text else text


def read_mounts(path: str = "/proc/self/mountinfo") -> dict[int, Mount]:
    """Parse mountinfo into mount id → Mount."""
    mounts: dict[int, Mount] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split(" ", 5)
            if len(parts) < 5:
                continue
            mid = int(parts[0])
            mounts[mid] = Mount(mid, parts[2], _unescape(parts[3]), _unescape(parts[4]))
    return mounts


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _join(base: str, rest: str) -> str:
    return base.rstrip("/") + rest if rest else base


def _mount_of(path: str, mounts: dict[int, Mount]) -> Mount:
    """The topmost mount whose mountpoint holds `path` (later lines shadow earlier ones)."""
    best: Mount | None = None
    for m in mounts.values():
        if _under(path, m.mountpoint) and (
            best is None or len(m.mountpoint) >= len(best.mountpoint)
        ):
            best = m
    if best is None:
        raise GateError(f"no mount holds {path!r} (expected / at least in mountinfo)")
    return best


@dataclass(frozen=True, slots=True)
class RootPlan:
    """How one area root is marked."""

    root: str  # real path, no trailing slash
    mode: Mode
    device: str  # "major:minor" of its filesystem
    path_in_fs: str  # the root's path inside its filesystem


def _agent_paths() -> list[str]:
    here = str(Path(__file__).resolve().parent.parent)
    return [str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.executable, here)]


def plan(
    roots: Iterable[str], forbidden: Sequence[str] | None = None, marks: MarkChoice = "auto"
) -> list[RootPlan]:
    """Decide how to mark each root. Raises MarkRefused for `/`, the agent's paths, non-dirs,
    and a root the `marks` choice cannot cover exactly ("filesystem": the root of its own
    filesystem; "mount": a mount point)."""
    mounts = read_mounts()
    root_dev = Path("/").stat().st_dev
    avoid = list(forbidden) if forbidden is not None else _agent_paths()
    plans: list[RootPlan] = []
    real = sorted({os.path.realpath(r) for r in roots}, key=len)
    for root in real:
        if root == "/":
            raise MarkRefused(
                "refusing to mark '/' (expected an area root below it)",
                hint="name the sensitive directories in the agreement's areas",
            )
        if not Path(root).is_dir():
            raise MarkRefused(f"area root {root!r} is not a directory (expected one to mark)")
        for own in avoid:
            if _under(own, root):
                raise MarkRefused(
                    f"area root {root!r} holds the agent's own {own!r} "
                    "(expected the agent, its venv and state outside every area)"
                )
        if any(_under(root, p.root) for p in plans):
            continue  # covered by an enclosing root
        m = _mount_of(root, mounts)
        rest = root[len(m.mountpoint.rstrip("/")) :]
        in_fs = _join(m.root, rest) if m.root != "/" else (rest or "/")
        own_fs = m.mountpoint == root and m.root == "/" and Path(root).stat().st_dev != root_dev
        plans.append(
            RootPlan(
                root, _mode(root, marks, own_fs=own_fs, mountpoint=m.mountpoint), m.device, in_fs
            )
        )
    return plans


def _mode(root: str, marks: MarkChoice, *, own_fs: bool, mountpoint: str) -> Mode:
    if marks == "auto":
        return "filesystem" if own_fs else "inodes"
    if marks == "inode":
        return "inodes"
    if marks == "filesystem" and not own_fs:
        raise MarkRefused(
            f"area root {root!r} is not the root of a filesystem of its own (expected one "
            'for marks = "filesystem": a mark there would gate the whole filesystem)',
            hint='use marks = "auto" or "inode" in agent.toml',
        )
    if marks == "mount" and mountpoint != root:
        raise MarkRefused(
            f'area root {root!r} is not a mount point (expected one for marks = "mount": '
            f"a mark there would gate all of {mountpoint!r})",
            hint='use marks = "auto" or "inode" in agent.toml',
        )
    return marks


@dataclass(slots=True)
class MarkerStats:
    """Counts the marker keeps (read without a lock; each is a plain int)."""

    perm_marks: int = 0
    notif_marks: int = 0
    new_dirs: int = 0
    found_in_new_dirs: int = 0  # entries present when a new directory was marked
    mark_errors: int = 0
    unresolved: int = 0  # notification events whose directory could not be opened


@dataclass(frozen=True, slots=True)
class DirEntryChange:
    """A name created, deleted or moved in a marked tree (recorded, not gated)."""

    mask: int
    pid: int
    path: str
    is_dir: bool


@dataclass(slots=True)
class Marker:
    """Places and removes the marks of both groups; learns new directories."""

    perm_fd: int
    notif_fd: int
    stats: MarkerStats = field(default_factory=MarkerStats)
    plans: list[RootPlan] = field(default_factory=list)
    _mount_fds: dict[tuple[int, int], int] = field(default_factory=dict)
    _whole_fs: set[tuple[int, int]] = field(default_factory=set)  # fsids with a filesystem mark
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def place(self, plans: Sequence[RootPlan]) -> None:
        """Mark every root in `plans`. Raises GateError when a root cannot be marked."""
        with self._lock:
            for p in plans:
                self._open_mount_fd(p.root)
                if p.mode == "filesystem":
                    self._whole_fs.add(fan.fsid_of(p.root))
                    flags = fan.FAN_MARK_ADD | fan.FAN_MARK_FILESYSTEM
                    fan.mark(self.perm_fd, flags, PERM_MASK, p.root)
                    fan.mark(self.notif_fd, flags, NOTIF_MASK, p.root)
                    self.stats.perm_marks += 1
                    self.stats.notif_marks += 1
                elif p.mode == "mount":
                    # Every file opened through this mount; the kernel has no create, delete
                    # or rename events for mount marks, so the notification group is unused.
                    fan.mark(self.perm_fd, fan.FAN_MARK_ADD | fan.FAN_MARK_MOUNT, PERM_MASK, p.root)
                    self.stats.perm_marks += 1
                else:
                    # Each directory is marked once its subtree is listed: our own listing
                    # of a marked directory (or of a child of one) would wait on the gate.
                    self._mark_tree(p.root)
                self.plans.append(p)

    def remove(self, plans: Sequence[RootPlan]) -> None:
        """Remove the marks of `plans` (a directory that vanished meanwhile is skipped)."""
        with self._lock:
            for p in plans:
                if p.mode == "filesystem":
                    flags = fan.FAN_MARK_REMOVE | fan.FAN_MARK_FILESYSTEM
                    for fd, mask in ((self.perm_fd, PERM_MASK), (self.notif_fd, NOTIF_MASK)):
                        try:
                            fan.mark(fd, flags, mask, p.root)
                        except fan.FanotifyError:
                            self.stats.mark_errors += 1
                    self.stats.perm_marks -= 1
                    self.stats.notif_marks -= 1
                elif p.mode == "mount":
                    try:
                        fan.mark(
                            self.perm_fd,
                            fan.FAN_MARK_REMOVE | fan.FAN_MARK_MOUNT,
                            PERM_MASK,
                            p.root,
                        )
                    except fan.FanotifyError:
                        self.stats.mark_errors += 1
                    self.stats.perm_marks -= 1
                else:
                    self._unmark_tree(p.root)
                self.plans = [q for q in self.plans if q.root != p.root]

    def _open_mount_fd(self, root: str) -> None:
        key = fan.fsid_of(root)
        if key not in self._mount_fds:
            self._mount_fds[key] = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _mark_tree(self, root: str, *, rescan: bool = False) -> None:
        """Mark every directory below `root` (agent._marktree); a rescan leaves `root`
        itself (marked already) and counts the entries found in what it lists."""
        perm, notif, errors, entries = mark_tree(
            self.perm_fd,
            self.notif_fd,
            root,
            PERM_MASK | fan.FAN_EVENT_ON_CHILD,
            NOTIF_MASK,
            rescan,
            MAX_DIRS,
        )
        self.stats.perm_marks += perm
        self.stats.notif_marks += notif
        self.stats.mark_errors += errors
        if rescan:
            self.stats.found_in_new_dirs += entries

    def _mark_dirs(self, dirs: Iterable[str], dirfd: int = fan.AT_FDCWD) -> int:
        flags = fan.FAN_MARK_ADD | fan.FAN_MARK_DONT_FOLLOW | fan.FAN_MARK_ONLYDIR
        perm_mask = PERM_MASK | fan.FAN_EVENT_ON_CHILD
        placed = 0
        for d in dirs:
            try:
                fan.mark(self.perm_fd, flags, perm_mask, d, dirfd)
            except fan.FanotifyError:
                self.stats.mark_errors += 1  # vanished between listing and marking
                continue
            self.stats.perm_marks += 1
            placed += 1
            try:
                fan.mark(self.notif_fd, flags, NOTIF_MASK, d, dirfd)
                self.stats.notif_marks += 1
            except fan.FanotifyError:
                self.stats.mark_errors += 1
        return placed

    def _unmark_tree(self, root: str) -> None:
        """Unmark top-down, each directory before it is listed: the listing then raises no
        permission event, so this works without an answer thread."""
        todo = [root]
        seen = 0
        while todo and seen < MAX_DIRS:
            d = todo.pop()
            seen += 1
            self._unmark(d)
            try:
                with os.scandir(d) as it:
                    todo.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
            except OSError:
                continue

    def _unmark(self, d: str) -> None:
        flags = fan.FAN_MARK_REMOVE | fan.FAN_MARK_DONT_FOLLOW | fan.FAN_MARK_ONLYDIR
        for fd, mask, attr in (
            (self.perm_fd, PERM_MASK | fan.FAN_EVENT_ON_CHILD, "perm_marks"),
            (self.notif_fd, NOTIF_MASK, "notif_marks"),
        ):
            try:
                fan.mark(fd, flags, mask, d)
                setattr(self.stats, attr, getattr(self.stats, attr) - 1)
            except fan.FanotifyError:
                self.stats.mark_errors += 1

    def _inode_mode(self, path: str) -> bool:
        for p in self.plans:
            if _under(path, p.root):
                return p.mode == "inodes"
        return False

    def mark_new_dirs(self, events: Sequence[fan.Event]) -> set[int]:
        """Mark new directories at once, by parent handle and name (no path built): the
        window in which a file opened inside one escapes the gate is this call's latency.
        Returns the indices of the events whose directory is now marked."""
        done: set[int] = set()
        for i, ev in enumerate(events):
            if not (ev.mask & fan.FAN_ONDIR and ev.mask & (fan.FAN_CREATE | fan.FAN_MOVED_TO)):
                continue
            for fid in ev.info:
                if (
                    fid.info_type != fan.FAN_EVENT_INFO_TYPE_DFID_NAME
                    or not fid.name
                    or fid.fsid in self._whole_fs
                ):
                    continue
                pfd = self._open_handle(fid)
                if pfd is None:
                    continue
                try:
                    with self._lock:
                        if self._mark_dirs([fid.name], pfd):
                            done.add(i)
                finally:
                    os.close(pfd)
        return done

    def handle(
        self, events: Sequence[fan.Event], premarked: Collection[int] = ()
    ) -> list[DirEntryChange]:
        """Mark new directories (then rescan them); return every change with its path.

        `premarked` are indices of events `mark_new_dirs` has marked already.
        """
        changes: list[DirEntryChange] = []
        for index, ev in enumerate(events):
            if ev.mask & fan.FAN_Q_OVERFLOW:
                self.stats.unresolved += 1
                continue
            for fid in ev.info:
                if fid.info_type != fan.FAN_EVENT_INFO_TYPE_DFID_NAME or fid.name is None:
                    continue
                parent = self._resolve(fid)
                if parent is None:
                    self.stats.unresolved += 1
                    continue
                path = f"{parent.rstrip('/')}/{fid.name}" if fid.name not in ("", ".") else parent
                is_dir = bool(ev.mask & fan.FAN_ONDIR)
                if is_dir and ev.mask & (fan.FAN_CREATE | fan.FAN_MOVED_TO):
                    self._learn_dir(path, marked=index in premarked)
                changes.append(DirEntryChange(ev.mask, ev.pid, path, is_dir))
        return changes

    def _open_handle(self, fid: fan.FileId) -> int | None:
        candidates = [self._mount_fds[fid.fsid]] if fid.fsid in self._mount_fds else []
        candidates += [fd for key, fd in self._mount_fds.items() if key != fid.fsid]
        for mfd in candidates:
            try:
                return fan.open_by_handle(mfd, fid)
            except fan.FanotifyError:
                continue
        return None

    def _resolve(self, fid: fan.FileId) -> str | None:
        hfd = self._open_handle(fid)
        if hfd is None:
            return None
        try:
            return fan.fd_path(hfd)
        finally:
            os.close(hfd)

    def _learn_dir(self, path: str, *, marked: bool) -> None:
        with self._lock:
            if not self._inode_mode(path):
                return
            self.stats.new_dirs += 1
            if not marked:
                self._mark_dirs([path])
            # Rescan after marking: what appeared before the mark is marked now; files
            # already there may have been opened ungated, so they are counted.
            self._mark_tree(path, rescan=True)

    @property
    def marks(self) -> int:
        """Marks held by the permission group."""
        return self.stats.perm_marks

    def close(self) -> None:
        """Close the mount fds used to resolve file handles."""
        for fd in self._mount_fds.values():
            os.close(fd)
        self._mount_fds.clear()


class PathMap:
    """Maps the path an opener used (a bind mount, another mount of the same filesystem)
    back to the area root's own path, so the policy sees one name for one file."""

    def __init__(self, plans: Sequence[RootPlan]) -> None:
        self._plans = list(plans)
        self._mounts = read_mounts()
        # `_under` for every root in two C calls (the answer path asks per event)
        self._roots = frozenset(p.root for p in self._plans)
        self._prefixes = tuple(p.root.rstrip("/") + "/" for p in self._plans)

    def direct(self, path: str) -> bool:
        """True when `path` is under an area root as it stands: `canonical` returns it
        unchanged whatever the event's mount."""
        return path.startswith(self._prefixes) or path in self._roots

    def canonical(self, path: str, event_fd: int) -> str:
        """`path` when it is under an area root already; else its name under the root."""
        if path.startswith(self._prefixes) or path in self._roots:
            return path
        m = self._mount(event_fd)
        if m is None:
            return path
        rest = path[len(m.mountpoint.rstrip("/")) :] if _under(path, m.mountpoint) else ""
        in_fs = _join(m.root, rest) if m.root != "/" else (rest or "/")
        for p in self._plans:
            if p.device == m.device and _under(in_fs, p.path_in_fs):
                tail = in_fs[len(p.path_in_fs.rstrip("/")) :]
                return p.root if tail in ("", "/") else p.root + tail
        return path

    def _mount(self, event_fd: int) -> Mount | None:
        try:
            with open(f"/proc/self/fdinfo/{event_fd}", encoding="ascii") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            mnt_id = int(fields["mnt_id"])
        except (OSError, KeyError, ValueError):
            return None
        m = self._mounts.get(mnt_id)
        if m is None:  # mounted since we last looked
            self._mounts = read_mounts()
            m = self._mounts.get(mnt_id)
        return m
