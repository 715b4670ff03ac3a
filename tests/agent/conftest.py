"""Fixtures for the gate's tests: test OS accounts, directories we create, a fake sink/policy.

Everything made here is removed at teardown. Marks go only on directories these fixtures
create under a fresh temporary directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.records import AccessRecord
from policies.model import Action, Decision, Grant, Subject, SubjectKind, Verdict

if TYPE_CHECKING:
    from agent.gate import Gate

TECH = "ctest-tech1"
STAFF = "ctest-staff1"
ACCOUNTS_LOCK = (
    "/tmp/ctest-accounts.lock"  # sessions share the accounts; the last one out removes them
)
OPENER = "/usr/bin/python3"  # the system interpreter: outside every area we mark
WAIT_S = 10.0

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not sys.platform.startswith("linux"),
    reason="needs root and Linux fanotify",
)


@dataclass
class FakeSink:
    """An in-memory EventSink; `on_durable` is called from a timer thread after `delay` s."""

    delay: float = 0.0
    durable: bool = True
    records: list[AccessRecord] = field(default_factory=list)
    durable_at: list[float] = field(default_factory=list)
    block: threading.Event | None = None  # when given, record() waits on it (a stuck sink)
    hold: threading.Event | None = None  # when given, on_durable waits on it (slow fsync)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, rec: AccessRecord, on_durable: Callable[[bool], None] | None = None) -> None:
        if self.block is not None:
            self.block.wait(WAIT_S)
        with self._lock:
            self.records.append(rec)
        if on_durable is not None:

            def fire() -> None:
                if self.hold is not None:
                    self.hold.wait(WAIT_S)
                self.durable_at.append(time.monotonic())
                on_durable(self.durable)

            t = threading.Timer(self.delay, fire)
            t.daemon = True
            t.start()

    def wait_for(
        self, pred: Callable[[AccessRecord], bool], timeout: float = WAIT_S
    ) -> AccessRecord:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                for r in self.records:
                    if pred(r):
                        return r
            time.sleep(0.01)
        raise AssertionError(f"no matching record within {timeout}s: {self.records!r}")


@dataclass
class FakePolicy:
    """A GatePolicy: technicians may do `scope[tech]` actions under the given prefixes."""

    roots: Sequence[tuple[str, str]]
    technician_accounts: Mapping[str, str]
    principal_accounts: tuple[str, ...] = ()
    scope: Mapping[str, Sequence[tuple[str, frozenset[Action]]]] = field(default_factory=dict)
    version: str = "fake-1"
    calls: int = 0

    def area_roots(self) -> Sequence[tuple[str, str]]:
        return self.roots

    def decide(
        self,
        subject: Subject,
        path: str,
        action: Action,
        at: datetime,
        grants: Sequence[Grant] = (),
    ) -> Decision:
        self.calls += 1
        tech = self.technician_accounts.get(subject.login_account or "") or (
            self.technician_accounts.get(subject.account)
        )
        area = next((a for a, d in self.roots if path == d or path.startswith(d + "/")), None)
        if area is None:
            return Decision(Verdict.ALLOW, "outside areas", "outside_areas", SubjectKind.OTHER)
        if tech is None:
            return Decision(Verdict.ALLOW, "not a technician", "other_subject", SubjectKind.OTHER)
        for prefix, actions in self.scope.get(tech, ()):
            if (path == prefix or path.startswith(prefix + "/")) and action in actions:
                return Decision(
                    Verdict.ALLOW, "in scope", "in_scope", SubjectKind.TECHNICIAN, tech, area=area
                )
        for g in grants:
            if g.covers(tech, area, action, at):
                return Decision(
                    Verdict.ALLOW,
                    "grant",
                    "grant",
                    SubjectKind.TECHNICIAN,
                    tech,
                    area=area,
                    grant_id=g.id,
                )
        return Decision(
            Verdict.DENY,
            f"{action} outside scope",
            "out_of_scope",
            SubjectKind.TECHNICIAN,
            tech,
            area=area,
        )


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        # Another session may add it at the same moment: its useradd failing is fine.
        subprocess.run(
            ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=False, timeout=30
        )
        return pwd.getpwnam(name)


@pytest.fixture(scope="session")
def accounts() -> Iterator[dict[str, pwd.struct_passwd]]:
    """Test OS accounts ctest-tech1 and ctest-staff1, removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create test accounts")
    # Several test sessions may run at once (engineers in parallel): each holds a shared lock
    # while it uses the accounts; whoever can take it exclusively at the end removes them.
    lock = os.open(ACCOUNTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # waits only while a session is removing them
        yield {n: _ensure_user(n) for n in (TECH, STAFF)}
    finally:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another session still uses them
        else:
            for n in (TECH, STAFF):
                subprocess.run(["userdel", n], check=False, timeout=30)
        os.close(lock)


_LIVE_GATES: list[Any] = []  # every Gate started in this process and not yet stopped here


def stop_live_gates() -> None:
    """Stop every gate a test started (idempotent; a gate already stopped returns at once).

    A gate left live while its answer thread is gone would hold the test process itself in
    uninterruptible sleep at its next open in the area (a walk, a rmtree).
    """
    while _LIVE_GATES:
        gate = _LIVE_GATES.pop()
        with contextlib.suppress(Exception):
            gate.stop()


@pytest.fixture(autouse=True)
def _gates_always_stopped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every Gate started during a test is stopped at its teardown, pass or fail."""
    try:
        from agent.gate import Gate  # noqa: PLC0415 - Linux only (ctypes fanotify)
    except (ImportError, OSError, AttributeError):
        yield
        return
    original = Gate.start

    def start(self: Gate) -> None:
        _LIVE_GATES.append(self)
        original(self)

    monkeypatch.setattr(Gate, "start", start)
    try:
        yield
    finally:
        stop_live_gates()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh world-writable directory under /tmp, removed at teardown (gates stopped
    first: the removal opens every directory in it)."""
    d = Path(tempfile.mkdtemp(prefix="ctest-gate-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        stop_live_gates()
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def mounted_tmpfs(where: Path) -> Generator[Path, None, None]:
    """Mount a small tmpfs at `where` (created), unmount it at exit."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0777", "ctest-tmpfs", str(where)],
        check=True,
        timeout=30,
    )
    try:
        yield where
    finally:
        _umount(where)


@contextlib.contextmanager
def bind_mounted(src: Path, dst: Path) -> Generator[Path, None, None]:
    """Bind-mount `src` at `dst` (created), unmount it at exit."""
    dst.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True, timeout=30)
    try:
        yield dst
    finally:
        _umount(dst)


def _umount(where: Path) -> None:
    r = subprocess.run(["umount", str(where)], check=False, timeout=30)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


OPEN_SCRIPT = r"""
import errno, os, sys
mode, paths = sys.argv[1], sys.argv[2:]
flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "c": os.O_WRONLY | os.O_CREAT,
         "d": os.O_RDONLY | os.O_DIRECTORY, "n": os.O_RDONLY | os.O_NONBLOCK}[mode]
for p in paths:
    try:
        os.close(os.open(p, flags, 0o666))
        print("ok")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
"""


def run_opener(
    mode: str,
    *paths: str,
    user: pwd.struct_passwd | None = None,
    loginuid: int | None = None,
    timeout: float = WAIT_S,
) -> list[str]:
    """Open `paths` in a child (as `user`, with `loginuid` set as PAM would); one result each."""
    cmd = [OPENER, "-c", OPEN_SCRIPT, mode, *paths]
    if user is not None:
        cmd = [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            *cmd,
        ]
    if loginuid is not None:
        cmd = ["sh", "-c", f'echo {loginuid} > /proc/self/loginuid && exec "$@"', "sh", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def start_opener(
    mode: str, *paths: str, user: pwd.struct_passwd | None = None
) -> subprocess.Popen[str]:
    """Like run_opener, without waiting."""
    cmd = [OPENER, "-c", OPEN_SCRIPT, mode, *paths]
    if user is not None:
        cmd = [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            *cmd,
        ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


READ = frozenset({Action.READ, Action.LIST})
GateFactory = Callable[..., tuple["Gate", FakePolicy, FakeSink]]


def area(root: Path) -> Path:
    """An area with an in-scope `allowed/` and an out-of-scope `secret/`, files in each."""
    for sub in ("allowed", "secret"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub).chmod(0o777)
        f = root / sub / "f.txt"
        f.write_text("patient record\n")
        f.chmod(0o666)
    return root


@pytest.fixture
def make_gate(accounts: dict[str, pwd.struct_passwd]) -> Iterator[GateFactory]:
    """Start gates over test areas (tech ctest-tech1 may read `allowed/`); all stopped after."""
    from agent.gate import Gate  # noqa: PLC0415 - Linux only (ctypes fanotify)

    gates: list[Gate] = []

    def make(
        root: Path,
        *,
        sink: FakeSink | None = None,
        policy: FakePolicy | None = None,
        roots: Sequence[str] | None = None,
        marks: str = "auto",
    ) -> tuple[Gate, FakePolicy, FakeSink]:
        sink = sink or FakeSink()
        policy = policy or FakePolicy(
            roots=[("records", str(root))],
            technician_accounts={accounts[TECH].pw_name: "tess"},
            scope={"tess": [(str(root / "allowed"), READ)]},
        )
        gate = Gate(policy=policy, sink=sink, roots=roots or [str(root)], marks=marks)  # type: ignore[arg-type]
        gates.append(gate)
        gate.start()
        return gate, policy, sink

    try:
        yield make
    finally:
        for g in gates:
            g.stop()
