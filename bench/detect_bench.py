"""Possible-breach rule evaluation: events/s in process, and event→incident latency.

Run: .venv/bin/python bench/detect_bench.py
A fixed mix of 50,000 events for the Harbourside agreement (in-scope reads by 20
technicians, reads outside every area, denials, principal reads, grant-covered reads),
5 timed runs each, medians reported:

* rules only: `Rules.evaluate` over ready observations (the pure core; goal >= 50k/s);
* parse + rules: `observation()` from the stored event bytes, then the rules;
* Detector.on_committed on SQLite: the above plus the one transaction per 500-event batch
  that saves the cursor, state and incidents (the store append itself not included);
* baseline: a loop that only touches each observation (the floor, for the ratios).

Latency: one denial committed to a SQLite store and handed to the Detector; the time from
the start of the append to the incident being stored (median of 20).
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from policies.compile import compile_agreement
from policies.load import load_agreement
from protos.evidence.chain import Link
from protos.wire import pb
from server.detect.engine import Detector
from server.detect.events import observation
from server.detect.model import Observation
from server.detect.rules import ClientView, Rules
from server.detect.state import RuleState
from server.ingest import to_record
from server.store import AgentRow, StoredRecord, open_store

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5
EVENTS = 50_000
BATCH = 500
START = 1_748_908_800  # 2025-06-03 10:00 Australia/Sydney, a Tuesday
CLIENT = "harbourside-gp"


def event(i: int) -> pb.Event:
    ev = pb.Event(agent_id="hgp-01", client=CLIENT, boot_id="b", seq=i)
    ev.unix_nanos = (START + i // 50) * 1_000_000_000
    a = ev.access
    kind = i % 10
    tech = f"tech{i % 20}"
    a.action = pb.ACTION_READ
    a.verdict = pb.VERDICT_ALLOW
    a.subject.uid = 1000
    a.subject.loginuid = 1000
    if kind < 6:  # in-scope reads of backups, cycling over a few files per technician
        a.subject.technician = tech
        a.object.area = "database-backups"
        a.object.path = f"/srv/backups/bestpractice/{tech}/{i % 7}.bak"
        a.rule = "in_scope"
    elif kind < 8:
        a.subject.technician = tech
        a.object.path = "/etc/hosts"
        a.rule = "outside_areas"
    elif kind == 8:
        a.subject.technician = "tnguyen"
        a.object.area = "patient-documents"
        a.object.path = "/srv/bestpractice/documents/x.pdf"
        a.verdict = pb.VERDICT_DENY
        a.rule = "out_of_scope"
    else:
        a.subject.principal = "backup-job"
        a.subject.os_user = "svc_backup"
        a.object.area = "database-backups"
        a.object.path = f"/srv/backups/bestpractice/full{i % 13}.bak"
        a.rule = "principal"
    return ev


def records(n: int, first: int = 0) -> list[StoredRecord]:
    out = []
    head = bytes(32)
    for i in range(first, first + n):
        ev = event(i)
        data = ev.SerializeToString()
        head = hashlib.sha256(head + data).digest()
        out.append(to_record("hgp-01", CLIENT, Link(i, data, head), ev))
    return out


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    compiled = compile_agreement(load_agreement(ROOT / "policies/agreements/harbourside-gp.yaml"))
    views = {CLIENT: ClientView.of(compiled)}
    recs = records(EVENTS)
    observations: list[Observation] = [observation(r) for r in recs]

    def baseline() -> None:
        n = 0
        for obs in observations:
            n += obs.kind == "access"

    def rules_only() -> None:
        r = Rules(views, RuleState())
        for obs in observations:
            r.evaluate(obs)

    def parse_and_rules() -> None:
        r = Rules(views, RuleState())
        for rec in recs:
            r.evaluate(observation(rec))

    results: dict[str, list[float]] = {"baseline": [], "rules": [], "parse+rules": []}
    for _ in range(RUNS):
        results["baseline"].append(timed(baseline))
        results["rules"].append(timed(rules_only))
        results["parse+rules"].append(timed(parse_and_rules))

    detector_times: list[float] = []
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(RUNS):
            store = open_store(Path(tmp) / f"bench{run}.sqlite")
            store.add_agent(
                AgentRow(
                    "hgp-01",
                    CLIENT,
                    bytes(32),
                    "0" * 64,
                    START,
                    None,
                    0,
                    bytes(32),
                    None,
                    START,
                    "hgp-01",
                )
            )
            for i in range(0, EVENTS, BATCH):
                batch = recs[i : i + BATCH]
                store.append_batch(
                    "hgp-01",
                    i,
                    batch,
                    agent_checkpoint=b"cp",
                    new_head=batch[-1].chain_hash,
                    heartbeat_unix=START,
                )
            detector = Detector(store, {CLIENT: compiled}, lambda: float(START))
            start = time.perf_counter()
            for i in range(0, EVENTS, BATCH):
                detector.on_committed(recs[i : i + BATCH], START + 1.0)
            detector_times.append(time.perf_counter() - start)
            store.close()
        store = open_store(Path(tmp) / "latency.sqlite")
        store.add_agent(
            AgentRow(
                "hgp-01",
                CLIENT,
                bytes(32),
                "0" * 64,
                START,
                None,
                0,
                bytes(32),
                None,
                START,
                "hgp-01",
            )
        )
        detector = Detector(store, {CLIENT: compiled}, time.time, dedup_window_s=0.0)
        seq = 0
        for _ in range(20):
            batch = records(10, seq)  # every 10 events hold one denial
            start = time.perf_counter()
            store.append_batch(
                "hgp-01",
                seq,
                batch,
                agent_checkpoint=b"cp",
                new_head=batch[-1].chain_hash,
                heartbeat_unix=START,
            )
            opened = detector.on_committed(batch, time.time())
            latencies.append(time.perf_counter() - start)
            assert any(i.rule == "access_denied" for i in opened)
            seq += 10
        store.close()

    base = statistics.median(results["baseline"])
    print(f"{'measure':34} {'median s':>10} {'events/s':>12} {'x baseline':>11}")
    for name in ("baseline", "rules", "parse+rules"):
        t = statistics.median(results[name])
        print(f"{name:34} {t:10.4f} {EVENTS / t:12,.0f} {t / base:11.1f}")
    t = statistics.median(detector_times)
    print(f"{'Detector.on_committed (SQLite)':34} {t:10.4f} {EVENTS / t:12,.0f} {t / base:11.1f}")
    print(
        f"event→incident latency in process (SQLite append + detect), median of 20: "
        f"{statistics.median(latencies) * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
