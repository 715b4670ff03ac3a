"""What the gate marks: refusals, filesystem vs inode mode, paths through bind mounts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent import fanotify as fan
from agent._marktree import walk
from agent.marks import Marker, MarkRefused, PathMap, plan, read_mounts
from tests.agent.conftest import bind_mounted, mounted_tmpfs


@pytest.mark.parametrize(
    ("roots", "match"),
    [
        (["/"], "refusing to mark '/'"),
        (["/tmp/ctest-does-not-exist-xyz"], "is not a directory"),
        ([str(Path(sys.prefix).parent)], "holds the agent's own"),
        ([str(Path(__file__).resolve().parents[2])], "holds the agent's own"),
    ],
)
def test_plan_refuses(roots: list[str], match: str) -> None:
    with pytest.raises(MarkRefused, match=match):
        plan(roots)


def test_a_symlink_to_root_is_refused_too(workdir: Path) -> None:
    (workdir / "sneaky").symlink_to("/")
    with pytest.raises(MarkRefused, match="'/'"):
        plan([str(workdir / "sneaky")])


def test_plain_directory_gets_inode_marks_and_nested_roots_collapse(workdir: Path) -> None:
    (workdir / "a/b").mkdir(parents=True)
    plans = plan([str(workdir / "a/b"), str(workdir / "a"), str(workdir / "a") + "/"])
    assert [(p.root, p.mode) for p in plans] == [(str(workdir / "a"), "inodes")]
    assert plans[0].path_in_fs == str(workdir / "a")


@pytest.mark.root
def test_root_of_its_own_filesystem_gets_a_filesystem_mark(workdir: Path) -> None:
    with mounted_tmpfs(workdir / "fs") as fs:
        (fs / "sub").mkdir()
        plans = plan([str(fs), str(fs / "sub")])
        assert [(p.root, p.mode, p.path_in_fs) for p in plans] == [(str(fs), "filesystem", "/")]
        # a subdirectory alone is not the whole filesystem: inode marks
        assert plan([str(fs / "sub")])[0].mode == "inodes"


@pytest.mark.root
def test_a_bind_mount_of_a_subdirectory_is_not_taken_for_a_filesystem(workdir: Path) -> None:
    (workdir / "src/inner").mkdir(parents=True)
    with bind_mounted(workdir / "src", workdir / "dst") as dst:
        p = plan([str(dst)])[0]
        assert p.mode == "inodes"
        assert p.path_in_fs == str(workdir / "src")


@pytest.mark.root
def test_path_through_a_bind_mount_maps_back_to_the_area_root(workdir: Path) -> None:
    area = workdir / "area"
    (area / "secret").mkdir(parents=True)
    (area / "secret/f.txt").write_text("x")
    with bind_mounted(area, workdir / "alias") as alias:
        paths = PathMap(plan([str(area)]))
        fd = os.open(alias / "secret/f.txt", os.O_RDONLY)
        try:
            assert paths.canonical(fan.fd_path(fd), fd) == str(area / "secret/f.txt")
        finally:
            os.close(fd)
        outside = os.open(workdir, os.O_RDONLY)
        try:
            assert paths.canonical(str(workdir), outside) == str(workdir)
        finally:
            os.close(outside)


def test_mountinfo_is_parsed_with_escapes() -> None:
    mounts = read_mounts()
    assert any(m.mountpoint == "/" for m in mounts.values())
    assert all(m.device.count(":") == 1 for m in mounts.values())


def test_walk_lists_every_directory_without_following_symlinks(workdir: Path) -> None:
    (workdir / "a/b/c").mkdir(parents=True)
    (workdir / "a/file").write_text("x")
    (workdir / "a/loop").symlink_to(workdir)
    assert sorted(walk(str(workdir))) == sorted(
        str(p) for p in (workdir, workdir / "a", workdir / "a/b", workdir / "a/b/c")
    )


def test_walk_yields_each_directory_after_everything_below_it(workdir: Path) -> None:
    # Marking in this order never lists a marked directory (or a child of one): no round
    # trip through a gate that may not be answering yet.
    for d in ("a/b/c", "a/b/d", "a/e", "f"):
        (workdir / d).mkdir(parents=True)
    order = walk(str(workdir))
    assert order[-1] == str(workdir)
    assert len(order) == len(set(order)) == 7
    for i, d in enumerate(order):
        assert not any(o.startswith(d + "/") for o in order[i + 1 :]), (d, order)


def test_walk_is_bounded_by_the_directories_it_lists(workdir: Path) -> None:
    for d in ("a/b/c", "a/e", "f"):
        (workdir / d).mkdir(parents=True)
    assert walk(str(workdir), 1) == [str(workdir)]  # listed the root only: children unlisted
    assert len(walk(str(workdir), 3)) == 3
    assert len(walk(str(workdir))) == 6


@pytest.mark.root
def test_marker_counts_and_removes_its_marks(workdir: Path) -> None:
    (workdir / "t/x/y").mkdir(parents=True)
    perm = fan.init(fan.FAN_CLASS_CONTENT | fan.FAN_CLOEXEC | fan.FAN_NONBLOCK)
    notif = fan.init(fan.FAN_CLASS_NOTIF | fan.FAN_REPORT_DFID_NAME | fan.FAN_CLOEXEC)
    marker = Marker(perm, notif)
    try:
        plans = plan([str(workdir / "t")])
        marker.place(plans)
        assert marker.marks == 3
        assert marker.stats.notif_marks == 3
        marker.remove(plans)
        assert marker.marks == 0
        assert marker.stats.mark_errors == 0
    finally:
        marker.close()
        os.close(perm)
        os.close(notif)


@pytest.mark.parametrize(
    ("marks", "match"),
    [
        ("mount", "not a mount point"),
        ("filesystem", "not the root of a filesystem of its own"),
    ],
)
def test_a_mark_kind_that_would_cover_more_than_the_root_is_refused(
    workdir: Path, marks: str, match: str
) -> None:
    (workdir / "area").mkdir()
    with pytest.raises(MarkRefused, match=match):
        plan([str(workdir / "area")], marks=marks)  # type: ignore[arg-type]


@pytest.mark.root
@pytest.mark.parametrize(
    ("marks", "mode"),
    [("auto", "filesystem"), ("mount", "mount"), ("inode", "inodes"), ("filesystem", "filesystem")],
)
def test_the_configured_mark_kind_is_used_where_it_fits(
    workdir: Path, marks: str, mode: str
) -> None:
    with mounted_tmpfs(workdir / "fs") as fs:
        assert plan([str(fs)], marks=marks)[0].mode == mode  # type: ignore[arg-type]
