"""A whole just-in-time world for the e2e tests and bench/jit_bench.py.

A real `custodes server run` (SQLite, real TLS), an agreement applied with
`custodes server agreement apply`, people enrolled with `custodes server user add` +
`custodes login`, and a real enrolled agent daemon (`custodes agent run`, enforcing with
fanotify) gating an area this module creates under /tmp. Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.agent.conftest import TECH, run_opener
from tests.server.test_ingest_harness import CUSTODES, ServerProc

CLIENT = "clinic-jit"
WAIT_S = 30.0

AGREEMENT = """
client: {{id: {client}, name: JIT Test Clinic}}
privacy_contact:
  {{name: Privacy Officer, email: privacy@clinic.example, phone: "+61 2 9000 0000"}}
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
  - id: lead
    name: Test Lead
    email: lead@msp.example
    accounts: [ctest-lead-unused]
areas:
  - id: records
    description: Patient records
    paths: ["{area}/**"]
    kinds: [health]
    individuals_per_file: 1
in_scope: {in_scope}
just_in_time:
  - areas: [records]
    actions: [read, list]
    max_duration: 4h
    ticket_pattern: "^JIT-[0-9]{{3,6}}$"
    approvers: {{count: 1, from: [client_manager, msp_lead]}}
break_glass:
  allowed: true
  max_duration: 1h
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

PEOPLE = {
    "tech1": ["--role", "technician"],
    "mgr": ["--role", "approver", "--client", CLIENT],
    "lead": ["--role", "approver", "--technician", "lead"],
    "aud": ["--role", "auditor", "--client", CLIENT],
    "other-mgr": ["--role", "approver", "--client", "another-clinic"],
}


def agreement_text(area: Path, version: str, *, in_scope_read: bool = False) -> str:
    """The test agreement; `in_scope_read` lets technicians read records without a grant."""
    scope = "[{areas: [records], actions: [read, list], hours: any}]" if in_scope_read else "[]"
    return AGREEMENT.format(client=CLIENT, version=version, tech=TECH, area=area, in_scope=scope)


def custodes(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI; raise with its stderr when `check` and it fails."""
    proc = subprocess.run(
        [*CUSTODES, "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"custodes {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return proc


@dataclass
class AgentProc:
    """The running daemon and its JSON log lines."""

    proc: subprocess.Popen[str]
    lines: list[dict[str, object]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.append(json.loads(line))

    def find(self, event: str, **match: object) -> list[dict[str, object]]:
        return [
            line
            for line in list(self.lines)
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items())
        ]

    def wait_for(self, event: str, timeout: float = WAIT_S, **match: object) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(event, **match)
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = "\n".join(json.dumps(x) for x in self.lines[-30:])
        raise AssertionError(f"no {event} {match} in the agent's log:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(WAIT_S)
        if self.reader is not None:
            self.reader.join(WAIT_S)


@dataclass
class JitWorld:
    """Server, agent, people and the gated tree."""

    base: Path
    server: ServerProc
    tech: pwd.struct_passwd
    agent: AgentProc | None = None

    @property
    def area(self) -> Path:
        return self.base / "area"

    @property
    def secret(self) -> str:
        return str(self.area / "patient-1.txt")

    @property
    def config(self) -> Path:
        return self.base / "agent" / "agent.toml"

    @property
    def state(self) -> Path:
        return self.base / "agent" / "state"

    def profile(self, person: str) -> Path:
        return self.base / "profiles" / person

    def access(
        self, person: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`custodes access ARGS --profile PERSON`."""
        return custodes("access", *args, "--profile", str(self.profile(person)), check=check)

    def request(self, *extra: str, who: str = "tech1", duration: str = "2h") -> str:
        """A read request on records; returns its id."""
        out = self.access(
            who,
            "request",
            "--client",
            CLIENT,
            "--area",
            "records",
            "--actions",
            "read",
            "--for",
            duration,
            "--ticket",
            "JIT-1234",
            "--reason",
            "patient letter does not open",
            *extra,
        )
        return out.stdout.strip()

    def show(self, request_id: str, who: str = "mgr") -> dict[str, object]:
        data: dict[str, object] = json.loads(self.access(who, "show", request_id, "--json").stdout)
        return data

    def opens(self) -> str:
        """What the technician's open of the secret file gives: "ok" or "EPERM"."""
        return run_opener("r", self.secret, user=self.tech)[0]

    def wait_open(self, want: str, timeout: float = WAIT_S) -> float:
        """Poll the technician's open until it gives `want`; seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.opens() == want:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"the technician's open never gave {want} within {timeout}s")

    def start_agent(self) -> AgentProc:
        proc = subprocess.Popen(
            [*CUSTODES, "--log-format", "json", "agent", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        agent = AgentProc(proc)
        agent.reader = threading.Thread(target=agent.read, daemon=True)
        agent.reader.start()
        self.agent = agent
        agent.wait_for("agent_started")
        return agent

    def apply(self, text: str, name: str) -> None:
        path = self.base / name
        path.write_text(text)
        custodes("server", "agreement", "apply", str(path), "--data", str(self.server.data))


@contextlib.contextmanager
def jit_world(tech: pwd.struct_passwd) -> Iterator[JitWorld]:
    """Build and tear down the whole world (server, people, enrolled agent, area)."""
    base = Path(tempfile.mkdtemp(prefix="ctest-jit-"))
    base.chmod(0o755)
    server = ServerProc(base / "server")
    world = JitWorld(base, server, tech)
    try:
        server.init()
        server.start()
        world.area.mkdir(mode=0o755)
        Path(world.secret).write_text("confidential\n")
        Path(world.secret).chmod(0o644)
        world.apply(agreement_text(world.area, "v1"), "agreement-v1.yaml")
        for person, args in PEOPLE.items():
            token = custodes(
                "server", "user", "add", person, *args, "--data", str(server.data)
            ).stdout.strip()
            custodes(
                "login",
                "--server",
                server.address,
                "--enrol-port",
                str(server.enrol_port),
                "--token",
                token,
                "--profile",
                str(world.profile(person)),
            )
        world.config.parent.mkdir(parents=True)
        (world.config.parent / "agreement.yaml").write_text(agreement_text(world.area, "v1"))
        world.config.write_text(
            f'agent_id = "host-1"\nclient = "{CLIENT}"\nagreement = "agreement.yaml"\n'
            f'state_dir = "state"\nmode = "enforce"\n[limits]\nreload_poll_seconds = 0.2\n'
        )
        token = server.token(CLIENT)
        custodes(
            "agent",
            "enroll",
            "--server",
            server.address,
            "--enrol-port",
            str(server.enrol_port),
            "--token",
            token,
            "--config",
            str(world.config),
        )
        world.start_agent()
        yield world
    finally:
        if world.agent is not None:
            world.agent.stop()
        server.kill()
        shutil.rmtree(base, ignore_errors=True)


def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll `predicate` (bounded) until it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
