"""The real daemon as a subprocess (`custodes agent run`), gating a tree this test creates."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import load_config
from agent.daemon import EXIT_WATCHDOG, Daemon
from agent.events import Origin
from agent.gate import Gate
from agent.journal import Journal
from agent.keys import epoch_verifier
from agent.verify import verify_journal
from policies.compile import compile_agreement
from policies.load import load_agreement
from protos.evidence.note import verify_checkpoint
from protos.wire import pb
from tests.agent.conftest import TECH, FakeSink, run_opener, start_opener
from tests.agent.test_journal import events

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not sys.platform.startswith("linux"),
        reason="needs root and Linux fanotify",
    ),
]

CUSTODES = str(Path(sys.prefix) / "bin" / "custodes")
WAIT = 20.0

AGREEMENT = """
client: {{id: test-clinic, name: Test Clinic}}
privacy_contact:
  {{name: Privacy Officer, email: privacy@test-clinic.example, phone: "+61 2 9000 0000"}}
version: "{version}"
timezone: UTC
business_hours:
  - days: [mon, tue, wed, thu, fri, sat, sun]
    start: "00:00"
    end: "23:59"
technicians:
  - id: tech1
    name: Test Technician
    email: tech1@msp.example
    accounts: [{tech}]
areas:
  - id: records
    description: Patient records
    paths: ["{area}/**"]
    kinds: [health]
    individuals_per_file: 1
in_scope: []
just_in_time:
  - areas: [records]
    actions: [read, list]
    max_duration: 4h
    approvers: {{count: 1, from: [client_manager]}}
break_glass:
  allowed: true
  max_duration: 2h
  areas: [records]
  actions: [read, list]
  requires_reason: true
others: allow
outside_areas: allow
detection:
  bulk_read: {{files: 50, minutes: 10}}
  heartbeat_silence: 5m
  clock_skew: 30s
retention: 7y
"""


@dataclass
class World:
    base: Path
    area: Path
    outside: Path
    state: Path
    config: Path
    agreement: Path
    tech: pwd.struct_passwd

    @property
    def journal(self) -> Path:
        return self.state / "journal"

    @property
    def secret(self) -> str:
        return str(self.area / "docs" / "patient-1.txt")

    def verify(self):  # type: ignore[no-untyped-def]
        return verify_journal(
            self.journal,
            epoch_verifier(self.state / "keys", 0),
            origin="custodes.agent/test-clinic/agent-1",
        )


def write_config(world: World, state: Path, extra: str = "") -> None:
    world.config.write_text(
        f'agent_id = "agent-1"\nclient = "test-clinic"\nagreement = "{world.agreement}"\n'
        f'state_dir = "{state}"\nmode = "enforce"\n[limits]\nheartbeat_seconds = 5.0\n'
        f"reload_poll_seconds = 0.2\nwatchdog_seconds = 5.0\n{extra}"
    )


@pytest.fixture
def world(workdir: Path, accounts: dict[str, pwd.struct_passwd]) -> World:
    area, outside = workdir / "area", workdir / "outside"
    (area / "docs").mkdir(parents=True)
    outside.mkdir()
    (area / "docs" / "patient-1.txt").write_text("confidential\n")
    (outside / "notes.txt").write_text("not sensitive\n")
    for p in (area, area / "docs", outside):
        p.chmod(0o755)
    for p in (area / "docs" / "patient-1.txt", outside / "notes.txt"):
        p.chmod(0o644)
    w = World(
        workdir,
        area,
        outside,
        workdir / "state",
        workdir / "agent.toml",
        workdir / "agreement.yaml",
        accounts[TECH],
    )
    w.agreement.write_text(AGREEMENT.format(version="v1", tech=TECH, area=area))
    write_config(w, w.state)
    return w


@dataclass
class Agent:
    proc: subprocess.Popen[str]
    lines: list[dict[str, object]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue

    def wait_for(self, event: str, timeout: float = WAIT, after: int = 0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if line.get("event") == event:
                    return line
            if self.proc.poll() is not None and self._reader and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} in the agent's log:\n{''.join(self.raw)[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        rc = self.proc.wait(WAIT)
        if self._reader:
            self._reader.join(WAIT)
        return rc


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for a in started:
        if a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGKILL)
            a.proc.wait(WAIT)


def start(
    world: World, agents: list[Agent], *, ready: bool = True, env: dict[str, str] | None = None
) -> Agent:
    proc = subprocess.Popen(
        [CUSTODES, "--log-format", "json", "agent", "run", "--config", str(world.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    agent = Agent(proc)
    agent._reader = threading.Thread(target=agent.read, daemon=True)
    agent._reader.start()
    agents.append(agent)
    if ready:
        agent.wait_for("agent_started")
    return agent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUSTODES, "agent", *args], capture_output=True, text=True, timeout=WAIT, check=False
    )


def bodies(world: World, kind: str) -> list[pb.Event]:
    return [e for e in events(world.journal) if e.WhichOneof("body") == kind]


def test_denies_out_of_scope_allows_outside_and_the_journal_verifies(
    world: World, agents: list[Agent]
) -> None:
    agent = start(world, agents)
    assert agent.wait_for("agent_started")["mode"] == "enforcing"
    assert run_opener("r", world.secret, user=world.tech) == ["EPERM"]
    assert run_opener("r", str(world.outside / "notes.txt"), user=world.tech) == ["ok"]
    assert run_opener("r", world.secret) == ["ok"]  # root without a technician login: allowed
    assert agent.stop() == 0

    report = world.verify()
    assert report.ok, report.problem
    assert report.denies == 1
    denied = [e.access for e in bodies(world, "access") if e.access.verdict == pb.VERDICT_DENY]
    assert denied[0].object.path == world.secret
    assert denied[0].subject.technician == "tech1"
    assert [e.started.mode for e in bodies(world, "started")] == [pb.GATE_MODE_ENFORCING]
    assert len(bodies(world, "stopped")) == 1

    r = cli("journal", "verify", "--config", str(world.config))
    assert r.returncode == 0, r.stderr
    assert "journal verifies" in r.stdout
    r = cli("checkpoint", "--config", str(world.config))
    assert r.returncode == 0, r.stderr
    cp = verify_checkpoint(
        r.stdout.encode(),
        [epoch_verifier(world.state / "keys", 0)],
        origin="custodes.agent/test-clinic/agent-1",
    )
    assert cp.size == report.next_seq


def test_journal_verify_command_fails_on_a_changed_byte(world: World, agents: list[Agent]) -> None:
    agent = start(world, agents)
    assert run_opener("r", world.secret, user=world.tech) == ["EPERM"]
    agent.stop()
    seg = sorted(world.journal.glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[100] ^= 0x01
    seg.write_bytes(bytes(data))
    r = cli("journal", "verify", "--config", str(world.config))
    assert r.returncode == 1
    assert "does not verify" in r.stderr
    assert "Traceback" not in r.stderr


def test_kill_9_mid_burst_keeps_every_deny_the_opener_saw(
    world: World, agents: list[Agent]
) -> None:
    agent = start(world, agents)
    opener = start_opener("r", *([world.secret] * 3000), user=world.tech)
    time.sleep(0.3)  # let the burst get going; the kill lands somewhere in it
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait(WAIT)
    out, err = opener.communicate(timeout=60)
    results = out.split()
    assert len(results) == 3000, err
    seen = results.count("EPERM")
    assert seen > 0
    assert results[-1] == "ok"  # after the kill the kernel lets opens through (fail-open)

    again = start(world, agents)
    started = bodies(world, "started")
    assert [s.started.previous_run_clean for s in started] == [True, False]
    again.stop()
    report = world.verify()
    assert report.ok, report.problem
    assert report.denies >= seen


def test_sighup_with_a_bad_agreement_keeps_the_last_good_one(
    world: World, agents: list[Agent]
) -> None:
    agent = start(world, agents)
    mark = len(agent.lines)
    world.agreement.write_text("client: [this is not an agreement\n")
    os.kill(agent.proc.pid, signal.SIGHUP)
    refused = agent.wait_for("agreement_refused", after=mark)
    assert "agreement.yaml" in str(refused["problems"])
    assert run_opener("r", world.secret, user=world.tech) == ["EPERM"]  # still enforcing v1
    assert agent.stop() == 0
    verdicts = [(a.agreement.accepted, a.agreement.version) for a in bodies(world, "agreement")]
    assert verdicts[0] == (True, "v1")
    assert (False, "") in verdicts[1:]
    assert all(a.agreement.error for a in bodies(world, "agreement") if not a.agreement.accepted)
    assert world.verify().ok


def test_a_good_agreement_change_is_picked_up(world: World, agents: list[Agent]) -> None:
    agent = start(world, agents)
    mark = len(agent.lines)
    world.agreement.write_text(
        AGREEMENT.format(version="v2", tech=TECH, area=world.area).replace(
            "in_scope: []",
            "in_scope:\n  - {description: reads, areas: [records], actions: [read], "
            'technicians: "*", hours: any}',
        )
    )
    assert agent.wait_for("agreement_reloaded", after=mark)["version"] == "v2"
    assert run_opener("r", world.secret, user=world.tech) == ["ok"]
    agent.stop()
    assert [a.agreement.version for a in bodies(world, "agreement")] == ["v1", "v2"]


def test_refuses_to_start_when_its_state_is_inside_an_area(
    world: World, agents: list[Agent]
) -> None:
    inside = world.area / "state"
    write_config(world, inside)
    agent = start(world, agents, ready=False)
    rc = agent.proc.wait(WAIT)
    agent._reader.join(WAIT)  # type: ignore[union-attr]
    assert rc != 0
    assert "inside area 'records'" in "".join(agent.raw)
    assert not (inside / "journal").exists()


def test_a_grant_in_the_grants_file_allows_until_its_end(world: World, agents: list[Agent]) -> None:
    now = datetime.now(UTC)
    end = now + timedelta(seconds=4)
    grants = world.state / "grants.json"
    world.state.mkdir(mode=0o700)
    grants.write_text(
        json.dumps(
            [
                {
                    "id": "g-42",
                    "technician": "tech1",
                    "area": "records",
                    "actions": ["read"],
                    "start": (now - timedelta(seconds=5)).isoformat(),
                    "end": end.isoformat(),
                    "break_glass": True,
                }
            ]
        )
    )
    grants.chmod(0o644)
    agent = start(world, agents)
    assert run_opener("r", world.secret, user=world.tech) == ["ok"]
    deadline = time.monotonic() + 20
    result = ["ok"]
    while time.monotonic() < deadline and result == ["ok"]:
        time.sleep(0.3)
        result = run_opener("r", world.secret, user=world.tech)
    assert result == ["EPERM"]
    assert datetime.now(UTC) >= end
    agent.wait_for("grant_expired")
    agent.stop()
    kinds = [(g.grant.kind, g.grant.grant_id) for g in bodies(world, "grant")]
    assert kinds == [(pb.GrantEvent.KIND_APPLIED, "g-42"), (pb.GrantEvent.KIND_EXPIRED, "g-42")]
    granted = [e.access for e in bodies(world, "access") if e.access.verdict == pb.VERDICT_ALLOW]
    assert granted[0].grant_id == "g-42"
    assert world.verify().ok


def test_tells_systemd_ready_and_pets_the_watchdog(world: World, agents: list[Agent]) -> None:
    path = world.base / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(WAIT)
        agent = start(world, agents, env={"NOTIFY_SOCKET": str(path)})
        messages = [sock.recv(4096).decode() for _ in range(2)]
        assert messages[0].startswith("READY=1")
        assert "enforcing" in messages[0]
        assert messages[1] == "WATCHDOG=1"
        assert agent.stop() == 0
        rest = []
        with contextlib.suppress(TimeoutError):
            sock.settimeout(1.0)
            while True:
                rest.append(sock.recv(4096).decode())
        assert "STOPPING=1" in rest


def test_monitor_mode_is_stated_at_start_and_in_every_heartbeat(
    world: World, agents: list[Agent]
) -> None:
    write_config(world, world.state)
    world.config.write_text(
        world.config.read_text()
        .replace('mode = "enforce"', 'mode = "monitor"')
        .replace("heartbeat_seconds = 5.0", "heartbeat_seconds = 0.3")
    )
    agent = start(world, agents)
    assert agent.wait_for("agent_started")["mode"] == "monitor"
    beat = agent.wait_for("heartbeat")
    assert beat["mode"] == "monitor"
    assert "monitor mode" in str(beat["mode_note"])
    assert run_opener("r", world.secret, user=world.tech) == ["ok"]  # nothing blocks
    agent.stop()
    (started,) = bodies(world, "started")
    assert started.started.mode == pb.GATE_MODE_MONITOR
    assert "monitor mode" in started.started.note


def test_the_watchdog_fails_a_stuck_gate_open_and_journals_it(world: World) -> None:
    world.agreement.write_text(
        AGREEMENT.format(version="v1", tech=TECH, area=world.area).replace(
            "in_scope: []",
            "in_scope:\n  - {description: reads, areas: [records], actions: [read], "
            'technicians: "*", hours: any}',
        )
    )
    text = world.config.read_text()
    world.config.write_text(text.replace("watchdog_seconds = 5.0", "watchdog_seconds = 1.0"))
    cfg = load_config(world.config)
    daemon = Daemon(cfg, world.config)
    journal = Journal.open(cfg.journal_path, Origin("agent-1", "test-clinic", "b"), cfg.key_dir)
    daemon._journal = journal
    stuck = threading.Event()
    gate = Gate(
        policy=compile_agreement(load_agreement(world.agreement)),
        sink=FakeSink(block=stuck),  # the answer thread hangs in record(): a stuck gate
        roots=[str(world.area)],
    )
    gate.start()
    daemon.gate = gate
    try:
        assert run_opener("r", world.secret, user=world.tech) == ["ok"]
        waiting = start_opener("r", world.secret, user=world.tech)
        deadline = time.monotonic() + WAIT
        fired = False
        while not fired and time.monotonic() < deadline:
            time.sleep(0.1)
            fired = daemon.check_gate(time.monotonic())
        assert fired
        out, _ = waiting.communicate(timeout=WAIT)
        assert out.split() == ["ok"]  # released by fail_open, not left hanging
        assert daemon._exit_code == EXIT_WATCHDOG
    finally:
        stuck.set()
        gate.stop()
        journal.close()
    (incident,) = bodies(world, "gate")
    assert incident.gate.kind == "watchdog_fail_open"
