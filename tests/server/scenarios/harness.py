"""Build real events from a scenario file, store them, run them through a Detector.

A scenario names an agreement (policies/agreements/NAME.yaml), a start instant, agents,
events (times in seconds from the start; `repeat` with `{i}` in strings), integrity notes,
ticks, and the exact incidents expected (rule, subject, area, evidence, files,
individuals, kinds). Events become serialised `custodes.v1.Event` bytes and StoredRecords
exactly as ingest makes them (`server.batch_checks.to_record`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from policies.compile import CompiledAgreement, compile_agreement
from policies.load import load_agreement
from protos.evidence.chain import Link
from protos.wire import pb
from server.batch_checks import to_record
from server.detect.engine import Detector
from server.store import AgentRow, Store, StoredRecord

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
AGREEMENTS = ROOT / "policies" / "agreements"

_ACTIONS = {
    "read": pb.ACTION_READ,
    "write": pb.ACTION_WRITE,
    "list": pb.ACTION_LIST,
    "create": pb.ACTION_CREATE,
    "delete": pb.ACTION_DELETE,
}
_VERDICTS = {"allow": pb.VERDICT_ALLOW, "deny": pb.VERDICT_DENY, "observed": pb.VERDICT_OBSERVED}
_GRANTS = {
    "applied": pb.GrantEvent.KIND_APPLIED,
    "expired": pb.GrantEvent.KIND_EXPIRED,
    "revoked": pb.GrantEvent.KIND_REVOKED,
}


def scenario_files() -> list[Path]:
    """Every scenario in this directory."""
    return sorted(HERE.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    """A scenario as plain data."""
    data = YAML(typ="safe").load(path.read_text())
    assert isinstance(data, dict), path
    return data


def agreement(name: str) -> CompiledAgreement:
    """A compiled example agreement."""
    return compile_agreement(load_agreement(AGREEMENTS / f"{name}.yaml"))


@dataclass
class Clock:
    """A settable clock for the Detector."""

    now: float

    def __call__(self) -> float:
        return self.now


def _fill(value: Any, i: int) -> Any:
    return value.replace("{i}", str(i)) if isinstance(value, str) else value


def expand(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Events with `repeat: N` (and `every: seconds`) expanded, `{i}` filled in."""
    for spec in events:
        count = int(spec.get("repeat", 1))
        every = float(spec.get("every", 0))
        for i in range(count):
            out = {k: _fill(v, i) for k, v in spec.items() if k not in ("repeat", "every")}
            out["at"] = float(spec.get("at", 0)) + i * every
            yield out


def event_bytes(spec: dict[str, Any], agent_id: str, client: str, seq: int, nanos: int) -> bytes:
    """The serialised Event a scenario line describes."""
    ev = pb.Event(agent_id=agent_id, client=client, boot_id="boot-1", seq=seq, unix_nanos=nanos)
    kind = spec.get("kind", "access")
    if kind == "access":
        a = ev.access
        s = a.subject
        s.technician = spec.get("technician", "")
        s.principal = spec.get("principal", "")
        s.os_user = spec.get("account", spec.get("technician", ""))
        s.uid = int(spec.get("uid", 1000))
        s.loginuid = int(spec.get("loginuid", -1))
        s.login_user = spec.get("login_user", "")
        s.exe = spec.get("exe", "/usr/bin/cat")
        a.object.path = spec["path"]
        a.object.area = spec.get("area", "")
        a.object.kinds.extend(spec.get("kinds", []))
        a.object.individuals_estimate = int(spec.get("individuals", 0))
        a.action = _ACTIONS[spec.get("action", "read")]
        a.verdict = _VERDICTS[spec.get("verdict", "allow")]
        a.rule = spec.get("rule", "")
        a.grant_id = spec.get("grant_id", "")
        a.mode = (
            pb.GATE_MODE_MONITOR if spec.get("verdict") == "observed" else (pb.GATE_MODE_ENFORCING)
        )
    elif kind == "grant":
        g = ev.grant
        g.kind = _GRANTS[spec["grant"]]
        g.grant_id = spec["grant_id"]
        g.technician = spec["technician"]
        g.area = spec["area"]
    elif kind == "started":
        ev.started.agreement_version = spec.get("agreement_version", "")
        ev.started.version = "0.1.0"
    elif kind == "agreement":
        ev.agreement.version = spec["version"]
        ev.agreement.accepted = bool(spec.get("accepted", True))
    elif kind == "loss":
        ev.loss.lost = int(spec.get("lost", 1))
        ev.loss.cause = spec.get("cause", "queue overflow")
    else:
        raise AssertionError(f"unknown kind {kind}")
    return ev.SerializeToString()


@dataclass
class Batch:
    """Records of one agent, committed together, and when the server received them."""

    agent_id: str
    records: list[StoredRecord]
    received: float


@dataclass
class Run:
    """A scenario being played against a store."""

    data: dict[str, Any]
    store: Store
    compiled: CompiledAgreement
    start: float
    clock: Clock
    next_seq: dict[str, int] = field(default_factory=dict)
    heads: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def prepare(cls, path: Path, store: Store) -> Run:
        data = load(path)
        compiled = agreement(data["agreement"])
        start = dt.datetime.fromisoformat(data["start"]).timestamp()
        run = cls(data, store, compiled, start, Clock(start))
        for agent_id in data.get("agents", ["host-01"]):
            store.add_agent(
                AgentRow(
                    agent_id=agent_id,
                    client=compiled.client,
                    public_key=hashlib.sha256(agent_id.encode()).digest(),
                    cert_fingerprint="0" * 64,
                    enrolled_unix=int(start) - 60,
                    revoked_unix=None,
                    next_seq=0,
                    head_hash=bytes(32),
                    last_checkpoint=None,
                    last_seen_unix=int(start) - 60,
                    hostname=f"{agent_id}.example",
                )
            )
            run.next_seq[agent_id] = 0
            run.heads[agent_id] = bytes(32)
        return run

    def detector(self) -> Detector:
        return Detector(self.store, {self.compiled.client: self.compiled}, self.clock)

    def batches(self, size: int = 100) -> list[Batch]:
        """The scenario's events as stored-record batches per agent, in time order."""
        default_agent = self.data.get("agents", ["host-01"])[0]
        out: list[Batch] = []
        current: Batch | None = None
        for spec in expand(self.data.get("events", [])):
            agent_id = spec.get("agent", default_agent)
            at = self.start + spec["at"]
            seq = self.next_seq[agent_id]
            data = event_bytes(spec, agent_id, self.compiled.client, seq, int(at * 1e9))
            chain = hashlib.sha256(self.heads[agent_id] + data).digest()
            self.heads[agent_id] = chain
            self.next_seq[agent_id] = seq + 1
            record = to_record(
                agent_id, self.compiled.client, Link(seq, data, chain), pb.Event.FromString(data)
            )
            received = at + float(spec.get("received_after", 1.0))
            if (
                current is None
                or current.agent_id != agent_id
                or len(current.records) >= size
                or "received_after" in spec
            ):
                current = Batch(agent_id, [], received)
                out.append(current)
            current.records.append(record)
            current.received = max(current.received, received)
        return out

    def commit(self, batch: Batch) -> None:
        """Store a batch as ingest would."""
        first = batch.records[0].seq
        self.store.append_batch(
            batch.agent_id,
            first,
            batch.records,
            agent_checkpoint=f"cp {batch.records[-1].seq + 1}\n".encode(),
            new_head=batch.records[-1].chain_hash,
            heartbeat_unix=int(batch.received),
        )

    def play(
        self,
        detector: Detector,
        *,
        after_batch: Callable[[int], Detector] | None = None,
        batch_size: int = 100,
    ) -> Detector:
        """Commit every batch and hand it to the detector; then integrity notes and ticks.

        `after_batch(i)` may return a new detector (a restart) after batch i.
        """
        for i, batch in enumerate(self.batches(batch_size)):
            self.clock.now = batch.received
            self.commit(batch)
            detector.on_committed(batch.records, batch.received)
            if after_batch is not None:
                detector = after_batch(i)
        for note in self.data.get("integrity", []):
            self.store.record_integrity_event(
                note.get("agent", "host-01"),
                note["kind"],
                note["detail"],
                int(self.start + note["at"]),
            )
        for at in self.data.get("ticks", []):
            self.clock.now = self.start + at
            detector.tick(self.clock.now)
        return detector


def summarise(detector: Detector) -> list[dict[str, Any]]:
    """The incidents a detector produced, in the scenarios' `expect` shape."""
    out = []
    for inc in detector.incidents.incidents():
        out.append(
            {
                "rule": inc.rule,
                "subject": inc.subject,
                "area": inc.dedup_key.rsplit("|", 1)[1] or None,
                "evidence": inc.evidence_count,
                "files": inc.files,
                "individuals": inc.individuals,
                "kinds": sorted(inc.kinds),
            }
        )
    return sorted(out, key=lambda d: (d["rule"], d["subject"], d["area"] or ""))


def expected(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenario's expected incidents, filled with defaults, in `summarise` order."""
    out = []
    for e in data.get("expect", []) or []:
        out.append(
            {
                "rule": e["rule"],
                "subject": e["subject"],
                "area": e.get("area"),
                "evidence": int(e.get("evidence", 0)),
                "files": int(e.get("files", 0)),
                "individuals": int(e.get("individuals", 0)),
                "kinds": sorted(e.get("kinds", [])),
            }
        )
    return sorted(out, key=lambda d: (d["rule"], d["subject"], d["area"] or ""))
