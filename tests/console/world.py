"""A seeded console world: two clients' agreements, people with passwords, agents, events,
a pending request and an incident, and a real `custodes server run --console` over it.

Events are written with the store's own append path (`append_batch`), as ingest does after
verifying a batch; bench/console_bench.py uses the same helpers to store 1M of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from policies.model import Action
from protos.wire import pb
from server.access import Change, Draft, State, create
from server.access_service import Agreements
from server.detect.model import FileTouched, Finding
from server.store import AgentRow, Store, StoredRecord, open_store
from server.store.access import AccessStore
from server.store.incidents import IncidentStore
from tests.server.test_ingest_harness import CUSTODES, ServerProc, cli, free_port

PASSWORD = "correct horse battery staple"
CLINIC = "harbour-clinic"
OTHER = "banksia-dental"
CLINIC_PATH = "/srv/clinic/records/Tran_Mei_Lin_referral.pdf"
OTHER_PATH = "/srv/dental/records/Nguyen_Thanh_xray.png"
ENDED_REQUESTS = 61  # denied requests of OTHER, two days old: a page and a bit of history
TECH2_ENDED = 3  # the oldest of them tech2's, the rest tech1's

AGREEMENT = """
client: {{id: {client}, name: {name}}}
privacy_contact:
  {{name: Privacy Officer, email: privacy@{client}.example, phone: "+61 2 9000 0000"}}
version: "v1"
timezone: Australia/Sydney
business_hours:
  - days: [mon, tue, wed, thu, fri, sat, sun]
    start: "00:00"
    end: "23:59"
technicians:
  - {{id: tech1, name: Test Technician, email: tech1@msp.example, accounts: [tech1]}}
  - {{id: tech2, name: Second Technician, email: tech2@msp.example, accounts: [tech2]}}
areas:
  - id: records
    description: Patient records
    paths: ["{root}/records/**"]
    kinds: [health, medicare]
    individuals_per_file: 1
just_in_time:
  - areas: [records]
    actions: [read, list]
    max_duration: 4h
    approvers: {{count: 1, from: [client_manager, msp_lead]}}
detection:
  bulk_read: {{files: 50, minutes: 10}}
  heartbeat_silence: 5m
  clock_skew: 30s
retention: 7y
"""

PEOPLE: dict[str, list[str]] = {
    "pm": ["--role", "approver", "--client", CLINIC],  # the clinic's practice manager
    "po": ["--role", "auditor", "--client", CLINIC],  # the clinic's privacy officer
    "auditor": ["--role", "auditor"],  # MSP-wide auditor
    "lead": ["--role", "approver"],  # MSP lead: approves, never sees paths
    "tech1": ["--role", "technician"],
    "tech2": ["--role", "technician"],
    "other-pm": ["--role", "approver", "--client", OTHER],
}


def access_record(
    agent_id: str,
    client: str,
    seq: int,
    unix_nanos: int,
    *,
    technician: str | None,
    path: str,
    area: str | None = "records",
    verdict: str = "allow",
    rule: str = "grant",
    action: str = "read",
) -> StoredRecord:
    """One access event as the store holds it (real Event bytes, a stand-in chain hash)."""
    event = pb.Event(
        agent_id=agent_id,
        client=client,
        boot_id="boot",
        seq=seq,
        unix_nanos=unix_nanos,
        access=pb.AccessDecision(
            subject=pb.Subject(
                technician=technician or "", os_user=technician or "svc", cmdline=f"cat {path}"
            ),
            object=pb.Object(path=path, area=area or "", kinds=["health"]),
            action=pb.ACTION_READ,
            verdict=pb.VERDICT_DENY if verdict == "deny" else pb.VERDICT_ALLOW,
            rule=rule,
        ),
    ).SerializeToString()
    return StoredRecord(
        agent_id=agent_id,
        seq=seq,
        event=event,
        chain_hash=hashlib.sha256(b"chain" + event).digest(),
        client=client,
        unix_nanos=unix_nanos,
        kind="access",
        technician=technician,
        account=technician or "svc",
        area=area,
        action=action,
        verdict=verdict,
        rule=rule,
        path=path,
    )


def add_agent(store: Store, agent_id: str, client: str) -> None:
    """Enrol an agent row directly, with a heartbeat saying it enforces agreement v1."""
    store.add_agent(
        AgentRow(
            agent_id,
            client,
            hashlib.sha256(agent_id.encode()).digest(),
            "f" * 64,
            int(time.time()) - 86400,
            None,
            0,
            bytes(32),
            None,
            None,
            f"{agent_id}.lan",
        )
    )
    heartbeat = pb.Heartbeat(
        mode=pb.GATE_MODE_ENFORCING,
        agreement_version="v1",
        rss_bytes=38 * 2**20,  # the gating daemon
        shipper_rss_bytes=53 * 2**20,  # its shipping child
    )
    store.touch_agent(agent_id, int(time.time()), heartbeat.SerializeToString())


def append(store: Store, agent_id: str, records: Sequence[StoredRecord], next_seq: int) -> int:
    """Store a batch the way ingest does after verifying it; the agent's checkpoint is kept."""
    size = next_seq + len(records)
    return store.append_batch(
        agent_id,
        next_seq,
        records,
        agent_checkpoint=f"checkpoint {agent_id} {size}\n".encode(),
        new_head=records[-1].chain_hash,
        heartbeat_unix=int(time.time()),
    )


def seed(store: Store, now: float) -> dict[str, str]:
    """Agents, events, a pending request and an incident; returns ids the tests use."""
    add_agent(store, "clinic-srv", CLINIC)
    add_agent(store, "dental-srv", OTHER)
    base = int((now - 3600) * 1e9)
    clinic = [
        access_record("clinic-srv", CLINIC, 0, base, technician="tech1", path=CLINIC_PATH),
        access_record(
            "clinic-srv",
            CLINIC,
            1,
            base + 10**9,
            technician="tech2",
            path="/srv/clinic/records/Brown_Alice_results.pdf",
        ),
        access_record(
            "clinic-srv",
            CLINIC,
            2,
            base + 2 * 10**9,
            technician="tech2",
            path="/srv/clinic/records/Brown_Alice_history.pdf",
            verdict="deny",
            rule="out_of_scope",
        ),
    ]
    append(store, "clinic-srv", clinic, 0)
    append(
        store,
        "dental-srv",
        [
            access_record("dental-srv", OTHER, 0, base, technician="tech1", path=OTHER_PATH),
        ],
        0,
    )
    access = AccessStore(store)
    compiled = Agreements(access).current(CLINIC)
    person = access.get_person("tech1")
    assert person is not None
    draft = Draft(CLINIC, "records", (Action.READ,), 7200, "INC-4411", "letter will not open")
    request = create("jit-console1", draft, person, compiled, int(now))
    access.add_request(request)
    for i in range(ENDED_REQUESTS):  # the other client's history: more than a page of it
        made = int(now) - 2 * 86400 + (i // 2 * 2 if i < 4 else i) * 60  # two pairs at one time
        access.add_request(
            dataclasses.replace(
                request,
                id=f"jit-old{i:03d}",
                client=OTHER,
                technician="tech2" if i < TECH2_ENDED else "tech1",
                requester="tech2" if i < TECH2_ENDED else "tech1",
                ticket=f"BD-{i:03d}",
                created_unix=made,
                pending_until_unix=made + 3600,
                state=State.DENIED,
                history=(
                    Change("requested", "tech1", made, "old work"),
                    Change("denied", "other-pm", made + 60, "not now"),
                ),
            )
        )
    incidents = IncidentStore(store)
    finding = Finding(
        rule="denied_out_of_scope",
        client=CLINIC,
        subject="tech2",
        at_unix=now - 3600,
        summary="tech2 was denied reading a patient record out of scope",
        area="records",
        technician="tech2",
        agent_id="clinic-srv",
        evidence=(("clinic-srv", 2),),
        files=(FileTouched("clinic-srv", clinic[2].path or "", "records", 1),),
        kinds=("health",),
    )
    changes = incidents.commit(
        [finding], now=now, window_s=3600, state_rows={}, cursors={}, entities={}
    )
    return {"request": request.id, "incident": str(changes[0].incident.id)}


@dataclass
class ConsoleServer(ServerProc):
    """`custodes server run` with the console on its own free loopback port."""

    console_port: int = 0
    insecure: bool = False

    @property
    def console_url(self) -> str:
        return f"{'http' if self.insecure else 'https'}://127.0.0.1:{self.console_port}"

    def new_ports(self) -> None:
        super().new_ports()
        self.console_port = free_port()

    def extra_args(self) -> list[str]:
        self.console_port = self.console_port or free_port()
        args = ["--console", f"127.0.0.1:{self.console_port}"]
        return [*args, "--console-insecure-http"] if self.insecure else args


def make_people(data: Path, people: dict[str, list[str]], client_for_tech: str = "") -> None:
    """`server user add` and `server user passwd --stdin` for each person."""
    for name, args in people.items():
        cli("server", "user", "add", name, *args, "--data", str(data))
        proc = subprocess.run(
            [*CUSTODES, "server", "user", "passwd", name, "--stdin", "--data", str(data)],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr


def build_world(base: Path) -> tuple[ConsoleServer, dict[str, str]]:
    """Initialise, seed and start a console server under `base` (the caller stops it)."""
    server = ConsoleServer(base / "server")
    server.init()
    for client, name, root in (
        (CLINIC, "Harbour Clinic", "/srv/clinic"),
        (OTHER, "Banksia Dental", "/srv/dental"),
    ):
        path = base / f"{client}.yaml"
        path.write_text(AGREEMENT.format(client=client, name=name, root=root))
        cli("server", "agreement", "apply", str(path), "--data", str(server.data))
    make_people(server.data, PEOPLE)
    store = open_store(server.data / "custodes.db")
    try:
        ids = seed(store, time.time())
    finally:
        store.close()
    server.start()
    return server, ids


def walk(server: ConsoleServer) -> Iterator[str]:
    """The main pages' paths."""
    yield from ("/", "/requests", "/events", "/incidents", "/statement")
