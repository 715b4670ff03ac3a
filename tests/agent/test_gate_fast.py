"""The gate's fast path against real fanotify: own threads exempt, concurrent openers all
answered (batched responses), and mount marks."""

from __future__ import annotations

import pwd
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from agent.marks import MarkRefused
from agent.records import AccessRecord
from policies.model import Action, Verdict
from tests.agent.conftest import (
    STAFF,
    TECH,
    WAIT_S,
    GateFactory,
    area,
    bind_mounted,
    mounted_tmpfs,
    run_opener,
    start_opener,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _denied(r: AccessRecord) -> bool:
    return r.decision.verdict is Verdict.DENY


def test_every_thread_of_the_agent_is_exempt_not_only_the_main_one(
    workdir: Path, make_gate: GateFactory
) -> None:
    root = area(workdir / "area")
    gate, policy, sink = make_gate(root)
    done = threading.Event()

    def read() -> None:  # a thread of this process, as the journal's or grpc's would be
        with (root / "secret/f.txt").open("rb") as f:
            f.read()
        done.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    if not done.wait(WAIT_S):
        gate.fail_open()  # never leave the thread (and so the test process) stuck
    t.join(WAIT_S)
    assert done.is_set()
    assert gate.stats.exempt >= 1
    assert policy.calls == 0
    assert sink.records == []


def test_many_concurrent_openers_are_all_answered_and_counted(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    root = area(workdir / "area")
    gate, _, sink = make_gate(root)
    n, procs = 300, 6
    target = str(root / "secret/f.txt")
    staff = [start_opener("r", *[target] * n, user=accounts[STAFF]) for _ in range(procs)]
    tech = start_opener("r", target, str(root / "allowed/f.txt"), user=accounts[TECH])
    try:
        outs = [p.communicate(timeout=WAIT_S * 3)[0].split() for p in staff]
        assert tech.communicate(timeout=WAIT_S * 3)[0].split() == ["EPERM", "ok"]
    finally:
        for p in [*staff, tech]:
            if p.poll() is None:
                p.kill()
                p.wait(WAIT_S)
    assert all(out == ["ok"] * n for out in outs)
    stats = gate.stats
    assert stats.errors == 0
    assert stats.denied == 1
    assert stats.allowed >= n * procs + 1
    assert stats.events == stats.allowed + stats.denied + stats.exempt
    assert sink.wait_for(_denied).path == target


def test_a_mount_mark_gates_the_mount_and_new_directories_but_not_a_bind_mount(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    with mounted_tmpfs(workdir / "fs") as fs:
        root = area(fs)
        gate, _, sink = make_gate(root, marks="mount")
        assert gate.marks == 1
        tech = accounts[TECH]
        assert run_opener("r", str(root / "secret/f.txt"), user=tech) == ["EPERM"]
        assert run_opener("r", str(root / "allowed/f.txt"), user=tech) == ["ok"]
        (root / "secret/new").mkdir()  # no notification group: nothing to mark, no race
        assert run_opener("c", str(root / "secret/new/g.txt")) == ["ok"]
        assert run_opener("r", str(root / "secret/new/g.txt"), user=tech) == ["EPERM"]
        # The limit the README states: a bind mount is another mount, not covered.
        with bind_mounted(root / "secret", workdir / "alias") as alias:
            assert run_opener("r", str(alias / "f.txt"), user=tech) == ["ok"]
        assert sum(1 for r in sink.records if _denied(r)) == 2
        gate.stop()


def test_a_mount_mark_is_refused_below_a_mount_point(workdir: Path, make_gate: GateFactory) -> None:
    root = area(workdir / "area")
    with pytest.raises(MarkRefused, match="not a mount point"):
        make_gate(root, marks="mount")


def test_a_stopped_gate_holds_back_nothing_in_the_area(
    workdir: Path, make_gate: GateFactory
) -> None:
    root = area(workdir / "area")
    gate, _, _ = make_gate(root)
    gate.stop()
    # Stopped: the groups are gone, so this process may open anything in the area.
    assert (root / "secret/f.txt").read_bytes() == b"patient record\n"
    assert [p.name for p in (root / "secret").iterdir()] == ["f.txt"]


def test_an_exec_is_gated_as_an_exec_not_as_a_read(
    workdir: Path, accounts: dict[str, pwd.struct_passwd], make_gate: GateFactory
) -> None:
    root = area(workdir / "area")
    prog = root / "allowed" / "prog"
    shutil.copy("/bin/true", prog)
    prog.chmod(0o755)
    _, _, sink = make_gate(root)  # the technician may read and list `allowed/`, not exec

    def run(user: pwd.struct_passwd) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
                str(prog),
            ],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )

    denied = run(accounts[TECH])
    assert denied.returncode != 0
    assert "Operation not permitted" in denied.stderr
    rec = sink.wait_for(_denied)
    assert rec.action is Action.EXEC
    assert rec.path == str(prog)
    assert run(accounts[STAFF]).returncode == 0
    assert run_opener("r", str(prog), user=accounts[TECH]) == ["ok"]  # reading it is in scope
