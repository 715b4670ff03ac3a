"""A whole possible-breach world for tests/e2e/test_incidents_e2e.py and bench/detect_bench.py.

A real `custodes server run` (SQLite, or PostgreSQL with `database`), ticking its detector
every half second; the agreement applied with `custodes server agreement apply`; a real
enrolled agent daemon (`custodes agent run`, enforcing with fanotify) gating areas this
module creates under /tmp. The technician's record area is out of scope (an open is denied:
`access_denied`); billing may be read in scope (more than BULK_FILES distinct files within
10 minutes is a `bulk_read`). `probes` extra out-of-scope areas give the benchmark a fresh
incident per trial. Needs root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.datadir import DataDir
from server.incidents.model import Incident
from server.store import open_store
from server.store.incidents import IncidentStore
from tests.agent.conftest import TECH, run_opener
from tests.e2e.jit_world import AgentProc, custodes
from tests.server.test_ingest_harness import CUSTODES, ServerProc

CLIENT = "clinic-ndb"
AGENT_ID = "ndb-host-1"
BULK_FILES = 5
RECORDS_PER_FILE = 3
BILLING_PER_FILE = 2
WAIT_S = 30.0
DETECT_SECONDS = "0.5"

AGREEMENT = """
client: {{id: {client}, name: NDB Test Clinic, abn: "51824753556"}}
privacy_contact:
  {{name: Dr Privacy Officer, email: privacy@clinic-ndb.example, phone: "+61 2 9000 0101"}}
version: "{version}"
timezone: "{zone}"
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
    paths: ["{base}/records/**"]
    kinds: [health, contact]
    individuals_per_file: {records_per_file}
  - id: billing
    description: Medicare claims
    paths: ["{base}/billing/**"]
    kinds: [medicare]
    individuals_per_file: {billing_per_file}
{probe_areas}
in_scope:
  - {{areas: [billing], actions: [read, list], hours: any}}
others: allow
outside_areas: allow
detection:
  bulk_read: {{files: {bulk}, minutes: 10}}
  heartbeat_silence: 5m
  clock_skew: 30s
retention: 7y
"""
PROBE_AREA = """  - id: probe-{n:02d}
    description: Probe {n}
    paths: ["{base}/probe-{n:02d}/**"]
    kinds: [health]
    individuals_per_file: 1
"""


def midday_zone(now: dt.datetime | None = None) -> str:
    """A fixed-offset zone in which it is about midday now, so business hours (00:00-23:59
    every day) cannot end while a test runs: no out-of-hours finding by accident."""
    at = now or dt.datetime.now(dt.UTC)
    offset = max(-12, min(14, 12 - at.hour))
    # POSIX sign: Etc/GMT-10 is UTC+10.
    return "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def agreement_text(base: Path, version: str, probes: int = 0, *, bulk: int = BULK_FILES) -> str:
    """The world's agreement (records out of scope, billing in scope, `probes` areas, a bulk
    read above `bulk` distinct files)."""
    return AGREEMENT.format(
        client=CLIENT,
        version=version,
        zone=midday_zone(),
        tech=TECH,
        base=base,
        records_per_file=RECORDS_PER_FILE,
        billing_per_file=BILLING_PER_FILE,
        probe_areas="".join(PROBE_AREA.format(n=n, base=base) for n in range(probes)).rstrip(),
        bulk=bulk,
    )


@dataclass
class DetectingServer(ServerProc):
    """A ServerProc whose detector ticks every half second (the default is 30 s)."""

    extra: list[str] = field(default_factory=lambda: ["--detect-seconds", DETECT_SECONDS])

    def extra_args(self) -> list[str]:
        return self.extra


@dataclass
class IncidentWorld:
    """Server, agent and the gated tree."""

    base: Path
    server: DetectingServer
    tech: pwd.struct_passwd
    agent: AgentProc | None = None

    @property
    def config(self) -> Path:
        return self.base / "agent" / "agent.toml"

    def files(self, area: str, first: int, n: int) -> list[str]:
        """Paths of `n` of the files made in `area`, from number `first`."""
        return [str(self.base / area / f"file-{i:03d}.txt") for i in range(first, first + n)]

    def open_as_tech(self, *paths: str) -> list[str]:
        """The technician's read of each path: "ok" or the errno name."""
        return run_opener("r", *paths, user=self.tech)

    def db_args(self) -> list[str]:
        return ["--data", str(self.server.data)] + (
            ["--database", self.server.database] if self.server.database else []
        )

    def incidents(self) -> list[dict[str, Any]]:
        """`custodes incidents list --json`, one object per incident."""
        out = custodes("incidents", "list", "--json", *self.db_args()).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def store(self) -> IncidentStore:
        """A direct read of the server's incidents (the benchmark polls it; the caller's)."""
        return IncidentStore(open_store(self.url(), migrate=False))

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

    def url(self) -> str:
        """The server's database (its SQLite file unless PostgreSQL)."""
        return self.server.database or DataDir(self.server.data).default_database_url()

    def stored(self) -> int:
        """How many of the agent's events the server has stored."""
        store = open_store(self.url(), migrate=False)
        try:
            agent = store.get_agent(AGENT_ID)
        finally:
            store.close()
        return 0 if agent is None else agent.next_seq

    def wait_stored(self, at_least: int, timeout: float = WAIT_S) -> None:
        """Poll (bounded) until the server stored `at_least` events of the agent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stored() >= at_least:
                return
            time.sleep(0.1)
        raise AssertionError(f"the server did not store {at_least} events within {timeout}s")


def _prepare_tree(base: Path, probes: int, files_per_area: int) -> None:
    for area in ("records", "billing", *(f"probe-{n:02d}" for n in range(probes))):
        directory = base / area
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
        for i in range(files_per_area):
            path = directory / f"file-{i:03d}.txt"
            path.write_text(f"fictional {area} {i}\n")
            path.chmod(0o644)


@contextlib.contextmanager
def incident_world(
    tech: pwd.struct_passwd, database: str | None = None, *, probes: int = 0
) -> Iterator[IncidentWorld]:
    """Build and tear down the whole world (server, enrolled agent, areas)."""
    base = Path(tempfile.mkdtemp(prefix="ctest-ndb-"))
    base.chmod(0o755)
    server = DetectingServer(base / "server", database)
    world = IncidentWorld(base, server, tech)
    try:
        _prepare_tree(base, probes, files_per_area=12)
        text = agreement_text(base, "v1", probes)
        server.init()
        server.start()
        (base / "agreement-v1.yaml").write_text(text)
        custodes("server", "agreement", "apply", str(base / "agreement-v1.yaml"), *world.db_args())
        world.config.parent.mkdir(parents=True)
        (world.config.parent / "agreement.yaml").write_text(text)
        world.config.write_text(
            f'agent_id = "{AGENT_ID}"\nclient = "{CLIENT}"\nagreement = "agreement.yaml"\n'
            f'state_dir = "state"\nmode = "enforce"\n'
        )
        custodes(
            "agent",
            "enroll",
            "--server",
            server.address,
            "--enrol-port",
            str(server.enrol_port),
            "--token",
            server.token(CLIENT),
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


def by_rule(incidents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Incidents (as listed) grouped by rule."""
    out: dict[str, list[dict[str, Any]]] = {}
    for inc in incidents:
        out.setdefault(str(inc["rule"]), []).append(inc)
    return out


def first_incident(book: IncidentStore, area: str) -> Incident | None:
    """The first stored incident that names `area`, if any."""
    return next((i for i in book.incidents(client=CLIENT) if area in i.areas), None)
