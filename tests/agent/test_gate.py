"""The gate against real fanotify: technicians gated, everyone else through, kernel first."""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.gate import Gate
from agent.marks import MarkRefused
from agent.records import AccessRecord
from policies.model import Action, Decision, Grant, Subject, Verdict
from tests.agent.conftest import (
    OPEN_SCRIPT,
    OPENER,
    STAFF,
    TECH,
    WAIT_S,
    FakePolicy,
    FakeSink,
    GateFactory,
    bind_mounted,
    mounted_tmpfs,
    run_opener,
    start_opener,
)
from tests.agent.conftest import (
    area as _area,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _denied(r: AccessRecord) -> bool:
    return r.decision.verdict is Verdict.DENY


def test_technician_is_denied_outside_scope_and_allowed_inside(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    gate, _, sink = make_gate(area)
    tech = accounts[TECH]
    out = run_opener("r", str(area / "secret/f.txt"), str(area / "allowed/f.txt"), user=tech)
    assert out == ["EPERM", "ok"]
    denied = sink.wait_for(_denied)
    assert denied.path == str(area / "secret/f.txt")
    assert denied.action is Action.READ
    assert denied.attribution.uid == tech.pw_uid
    assert denied.attribution.account == accounts[TECH].pw_name
    assert denied.attribution.exe  # enriched for technicians
    assert denied.decision.rule == "out_of_scope"
    allowed = sink.wait_for(lambda r: r.decision.rule == "in_scope")
    assert allowed.path == str(area / "allowed/f.txt")
    assert gate.stats.denied == 1


def test_technician_write_is_told_from_read(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    _, _, sink = make_gate(area)
    assert run_opener("w", str(area / "allowed/f.txt"), user=accounts[TECH]) == ["EPERM"]
    assert sink.wait_for(_denied).action is Action.WRITE
    assert run_opener("d", str(area / "allowed"), user=accounts[TECH]) == ["ok"]
    assert sink.wait_for(lambda r: r.action is Action.LIST).decision.allowed


def test_technician_create_is_denied_but_leaves_the_empty_file(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    _, _, sink = make_gate(area)
    new = area / "secret/new.txt"
    assert run_opener("c", str(new), user=accounts[TECH]) == ["EPERM"]
    rec = sink.wait_for(lambda r: r.path == str(new) and r.enforcing)
    assert rec.action is Action.CREATE
    assert new.exists()  # the kernel created it before asking: a known limit, recorded


def test_staff_user_is_allowed_without_asking_the_policy(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    gate, policy, sink = make_gate(area)
    assert run_opener("r", str(area / "secret/f.txt"), user=accounts[STAFF]) == ["ok"]
    assert policy.calls == 0
    assert sink.records == []
    assert gate.stats.allowed >= 1


def test_root_with_technician_loginuid_is_attributed_to_the_technician(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    _, _, sink = make_gate(area)
    tech_uid = accounts[TECH].pw_uid
    assert run_opener("r", str(area / "secret/f.txt"), loginuid=tech_uid) == ["EPERM"]
    rec = sink.wait_for(_denied)
    assert rec.attribution.uid == 0
    assert rec.attribution.loginuid == tech_uid
    assert rec.attribution.login_account == accounts[TECH].pw_name
    assert rec.decision.technician == "tess"


def test_loginuid_survives_su_and_a_switch_to_another_account(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    _, _, sink = make_gate(area)
    tech_uid = accounts[TECH].pw_uid
    target = str(area / "secret/f.txt")
    # root → su root (as `sudo -i` would) → open: still the technician
    inner = shlex.join([OPENER, "-c", OPEN_SCRIPT, "r", target])
    r = subprocess.run(
        [
            "sh",
            "-c",
            f'echo {tech_uid} > /proc/self/loginuid && exec su -s /bin/sh root -c "$0"',
            inner,
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert r.stdout.split() == ["EPERM"], r.stderr
    # the technician's login switched to the staff account: still the technician
    staff = accounts[STAFF]
    assert run_opener("r", target, user=staff, loginuid=tech_uid) == ["EPERM"]
    recs = [r for r in sink.records if _denied(r)]
    assert len(recs) >= 2
    assert {r.attribution.uid for r in recs} == {0, staff.pw_uid}
    assert all(r.attribution.login_account == accounts[TECH].pw_name for r in recs)


def test_interactive_root_not_named_in_the_agreement_is_journaled_as_unknown_admin(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    gate, _, sink = make_gate(area)
    staff_uid = accounts[STAFF].pw_uid
    assert run_opener("r", str(area / "secret/f.txt"), loginuid=staff_uid) == ["ok"]
    rec = sink.wait_for(lambda r: r.decision.rule == "unknown_admin")
    assert rec.action is Action.READ
    assert rec.attribution.uid == 0
    assert rec.attribution.loginuid == staff_uid
    assert rec.path == str(area / "secret/f.txt")
    assert gate.stats.unknown_admin >= 1


def test_directory_created_after_start_is_gated(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    gate, _, _ = make_gate(area)
    before = gate.marks
    new = area / "secret" / "later" / "deeper"
    new.mkdir(parents=True)
    # The test never opens a file in its own gate's area: a subprocess does.
    assert run_opener("c", str(new / "f.txt")) == ["ok"]
    (new / "f.txt").chmod(0o666)
    end = time.monotonic() + WAIT_S
    while gate.marks < before + 2 and time.monotonic() < end:
        time.sleep(0.01)
    assert gate.marks >= before + 2
    assert run_opener("r", str(new / "f.txt"), user=accounts[TECH]) == ["EPERM"]


def test_symlink_into_the_area_is_gated_under_the_real_path(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    link = workdir / "innocent-link"
    link.symlink_to(area / "secret/f.txt")
    _, _, sink = make_gate(area)
    assert run_opener("r", str(link), user=accounts[TECH]) == ["EPERM"]
    assert sink.wait_for(_denied).path == str(area / "secret/f.txt")


def test_hard_link_made_outside_before_start_escapes_inode_marks(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    """Inode marks sit on directories: a second name outside them is not watched.

    This is the documented limit of inode marks; a filesystem mark has no such gap because
    a hard link cannot leave its filesystem.
    """
    area = _area(workdir / "area")
    outside = workdir / "outside"
    outside.mkdir()
    os.link(area / "secret/f.txt", outside / "hl.txt")
    _, _, sink = make_gate(area)
    assert run_opener("r", str(outside / "hl.txt"), user=accounts[TECH]) == ["ok"]
    assert not [r for r in sink.records if r.enforcing]


def test_bind_mount_of_the_area_is_gated_with_inode_marks(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    with bind_mounted(area, workdir / "elsewhere") as alias:
        _, _, sink = make_gate(area)
        assert run_opener("r", str(alias / "secret/f.txt"), user=accounts[TECH]) == ["EPERM"]
        assert sink.wait_for(_denied).path == str(area / "secret/f.txt")


def test_tmpfs_area_gets_one_filesystem_mark_and_covers_bind_mounts(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    with mounted_tmpfs(workdir / "fs") as fs:
        area = _area(fs)
        gate, _, sink = make_gate(area)
        assert gate.marks == 1
        with bind_mounted(area / "secret", workdir / "alias") as alias:
            assert run_opener("r", str(alias / "f.txt"), user=accounts[TECH]) == ["EPERM"]
            assert sink.wait_for(_denied).path == str(area / "secret/f.txt")
        # a directory made after start needs no new mark
        (area / "secret/new").mkdir()  # mkdir opens nothing: no permission event
        assert run_opener("c", str(area / "secret/new/g.txt")) == ["ok"]
        assert run_opener("r", str(area / "secret/new/g.txt"), user=accounts[TECH]) == ["EPERM"]
        gate.stop()


def test_plain_tree_gets_one_inode_mark_per_directory(
    workdir: Path, make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    (area / "secret/a/b").mkdir(parents=True)
    gate, _, _ = make_gate(area)
    assert gate.marks == 5  # area, allowed, secret, secret/a, secret/a/b


def test_rename_into_the_area_is_recorded_not_gated(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    outside = workdir / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)
    src = outside / "moved.txt"
    src.write_text("x")
    _, _, sink = make_gate(area)
    tech = accounts[TECH]
    # A notification does not block its actor: the gate identifies it from /proc only while
    # it lives, as a technician's shell does (an `mv` that has exited counts unattributed).
    rename = "import os, sys, time; os.rename(*sys.argv[1:]); time.sleep(2)"
    r = subprocess.run(
        [
            "setpriv",
            f"--reuid={tech.pw_uid}",
            f"--regid={tech.pw_gid}",
            "--clear-groups",
            OPENER,
            "-c",
            rename,
            str(src),
            str(area / "secret/moved.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    rec = sink.wait_for(lambda r: r.action is Action.RENAME)
    assert rec.path == str(area / "secret/moved.txt")
    assert not rec.enforcing
    assert rec.decision.verdict is Verdict.DENY  # what the policy would have said
    assert "recorded after the fact" in rec.decision.reason


def test_deny_waits_for_the_journal_while_others_are_answered(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    hold = threading.Event()
    _, _, sink = make_gate(area, sink=FakeSink(hold=hold))
    tech = start_opener("r", str(area / "secret/f.txt"), user=accounts[TECH])
    try:
        sink.wait_for(_denied)  # decided, not yet durable
        staff = run_opener("r", *[str(area / "secret/f.txt")] * 20, user=accounts[STAFF])
        assert staff == ["ok"] * 20
        assert tech.poll() is None  # still waiting for the journal
        assert not sink.durable_at
        hold.set()
        out, _ = tech.communicate(timeout=WAIT_S)
        assert out.split() == ["EPERM"]
    finally:
        hold.set()
        if tech.poll() is None:
            tech.kill()
            tech.wait(WAIT_S)


def test_deny_that_cannot_be_journaled_is_still_denied(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    gate, _, _ = make_gate(area, sink=FakeSink(durable=False))
    assert run_opener("r", str(area / "secret/f.txt"), user=accounts[TECH]) == ["EPERM"]
    assert gate.stats.journal_failures == 1


def test_gate_refuses_to_mark_root(accounts: dict[str, pwd.struct_passwd]) -> None:
    policy = FakePolicy(roots=[("all", "/")], technician_accounts={accounts[TECH].pw_name: "tess"})
    gate = Gate(policy=policy, sink=FakeSink(), roots=["/"])
    with pytest.raises(MarkRefused, match="refusing to mark '/'"):
        gate.start()
    assert gate.marks == 0


def test_stop_lets_pending_opens_through(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    hold = threading.Event()
    gate, _, sink = make_gate(area, sink=FakeSink(hold=hold))
    tech = start_opener("r", str(area / "secret/f.txt"), user=accounts[TECH])
    try:
        sink.wait_for(_denied)
        gate.stop()
        out, _ = tech.communicate(timeout=WAIT_S)
        assert out.split() == ["ok"]
    finally:
        hold.set()
        if tech.poll() is None:
            tech.kill()
            tech.wait(WAIT_S)


class _StuckPolicy(FakePolicy):
    """A policy whose decide blocks until released: a hung answer thread."""

    release: threading.Event
    entered: threading.Event

    def decide(
        self,
        subject: Subject,
        path: str,
        action: Action,
        at: datetime,
        grants: Sequence[Grant] = (),
    ) -> Decision:
        self.entered.set()
        self.release.wait(WAIT_S * 3)
        return super().decide(subject, path, action, at, grants)


def test_fail_open_from_another_thread_unblocks_openers_of_a_stuck_gate(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    policy = _StuckPolicy(
        roots=[("records", str(area))], technician_accounts={accounts[TECH].pw_name: "tess"}
    )
    policy.release, policy.entered = threading.Event(), threading.Event()
    gate, _, _ = make_gate(area, policy=policy)
    tech = start_opener("r", str(area / "secret/f.txt"), user=accounts[TECH])
    staff: subprocess.Popen[str] | None = None
    try:
        assert policy.entered.wait(WAIT_S)
        staff = start_opener("r", str(area / "allowed/f.txt"), user=accounts[STAFF])
        time.sleep(0.5)  # give the staff opener time to reach the gate (no assertion on time)
        stuck_since = gate.last_progress
        assert staff.poll() is None  # the clinic is frozen
        assert tech.poll() is None
        threading.Thread(target=gate.fail_open).start()
        assert staff.communicate(timeout=WAIT_S)[0].split() == ["ok"]
        assert tech.communicate(timeout=WAIT_S)[0].split() == ["ok"]
        assert gate.last_progress == stuck_since
    finally:
        policy.release.set()
        for p in (tech, staff):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(WAIT_S)


def test_grant_set_at_runtime_allows_the_technician(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    gate, _, sink = make_gate(area)
    target = str(area / "secret/f.txt")
    assert run_opener("r", target, user=accounts[TECH]) == ["EPERM"]
    now = datetime.now(tz=UTC)
    gate.set_grants(
        [Grant("g-1", "tess", "records", frozenset({Action.READ}), now, now + timedelta(hours=1))]
    )
    assert run_opener("r", target, user=accounts[TECH]) == ["ok"]
    assert sink.wait_for(lambda r: r.decision.rule == "grant").decision.grant_id == "g-1"


def test_swap_policy_with_a_new_root_marks_it_and_unmarks_the_old(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    first = _area(workdir / "first")
    second = _area(workdir / "second")
    gate, policy, _ = make_gate(first)
    swapped = FakePolicy(
        roots=[("records", str(second))],
        technician_accounts={accounts[TECH].pw_name: "tess"},
        version="fake-2",
    )
    gate.swap_policy(swapped)
    tech = accounts[TECH]
    assert run_opener("r", str(second / "secret/f.txt"), user=tech) == ["EPERM"]
    assert run_opener("r", str(first / "secret/f.txt"), user=tech) == ["ok"]
    assert gate.marks == 3
    assert policy.calls == 0


def test_a_fifo_in_the_area_does_not_hang_the_gate(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    area = _area(workdir / "area")
    os.mkfifo(area / "secret/pipe", 0o666)
    gate, _, _ = make_gate(area)
    # 6.18 raises no permission event for a FIFO; an older kernel does, and without
    # O_NONBLOCK on event fds the gate would wait for a writer here.
    assert run_opener("n", str(area / "secret/pipe"), user=accounts[STAFF]) == ["ok"]
    assert run_opener("r", str(area / "secret/f.txt"), user=accounts[STAFF]) == ["ok"]
    assert gate.stats.errors == 0
