"""Possible-breach rule evaluation: events/s in process, and event→incident latency.

Run: .venv/bin/python bench/detect_bench.py
A fixed mix of 50,000 events for the Harbourside agreement (in-scope reads by 20
technicians, reads outside every area, denials, principal reads, grant-covered reads),
5 timed runs each, medians reported:

* rules only: `Rules.evaluate` over ready observations (the pure core; goal >= 50k/s);
* parse + rules: `observation()` from the stored event bytes, then the rules;
* Detector.on_committed on SQLite: the above plus the one transaction per 500-event batch
  that saves the cursor, state and incidents (the store append itself not included); and
  the same given the observations ingest builds from its own parse (as the server runs it);
* baseline: a loop that only touches each observation (the floor, for the ratios).

Latency: one denial committed to a SQLite store and handed to the Detector; the time from
the start of the append to the incident being stored (median of 20).

End to end (`--e2e`, needs root): the world of tests/e2e/incident_world.py — a real server
(detector wired as it runs: on ingest, ticking every 0.5 s), a real enrolled agent gating
with fanotify. Per trial the technician (a prober process running as the technician's OS
account) opens a file in a fresh out-of-scope area; the time from that open (its
CLOCK_MONOTONIC time) to the incident being visible in the store, polled every 2 ms over
its own connection. Baseline in the same trial: the open to the event being stored.
SQLite, and PostgreSQL too when an initdb binary is found (`--e2e-only sqlite` to skip it).

Run: .venv/bin/python bench/detect_bench.py [--e2e [--trials 25]]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from policies.compile import compile_agreement
from policies.load import load_agreement
from protos.evidence.chain import Link
from protos.wire import pb
from server.batch_checks import to_record
from server.detect.engine import Detector
from server.detect.events import observation
from server.detect.model import Observation
from server.detect.rules import ClientView, Rules
from server.detect.state import RuleState
from server.store import AgentRow, StoredRecord, open_store
from server.store.incidents import IncidentStore

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

    detector_times: dict[bool, list[float]] = {False: [], True: []}
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run, handed in ((r, h) for r in range(RUNS) for h in (False, True)):
            store = open_store(Path(tmp) / f"bench{run}-{handed}.sqlite")
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
                handed_over = observations[i : i + BATCH] if handed else None
                detector.on_committed(recs[i : i + BATCH], START + 1.0, handed_over)
            detector_times[handed].append(time.perf_counter() - start)
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
    for handed, name in (
        (False, "Detector.on_committed (SQLite)"),
        (True, "  given ingest's observations"),
    ):
        t = statistics.median(detector_times[handed])
        print(f"{name:34} {t:10.4f} {EVENTS / t:12,.0f} {t / base:11.1f}")
    print(
        f"event→incident latency in process (SQLite append + detect), median of 20: "
        f"{statistics.median(latencies) * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms"
    )


# -- end to end ---------------------------------------------------------------------------

PROBE = r"""
import errno, os, sys, time
for line in sys.stdin:
    at = time.monotonic()
    try:
        os.close(os.open(line.strip(), os.O_RDONLY))
        got = "ok"
    except OSError as e:
        got = errno.errorcode.get(e.errno, str(e.errno))
    print(repr(at), got, flush=True)
"""
POLL_S = 0.002
TRIAL_TIMEOUT_S = 30.0


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@contextlib.contextmanager
def databases(only: str | None) -> Iterator[list[tuple[str, str | None]]]:
    """("sqlite", None) and, with an initdb binary, ("postgres", URL) of a throwaway cluster."""
    from tests.server.conftest import find_initdb, start_cluster  # noqa: PLC0415

    out: list[tuple[str, str | None]] = []
    if only in (None, "sqlite"):
        out.append(("sqlite", None))
    initdb = find_initdb() if only in (None, "postgres") else None
    cluster = start_cluster(initdb) if initdb is not None else None
    try:
        if cluster is not None:
            out.append(("postgres", cluster.database_url("postgres")))
        yield out
    finally:
        if cluster is not None:
            cluster.stop()


def e2e_trials(
    tech: pwd.struct_passwd, database: str | None, trials: int
) -> dict[str, list[float]]:
    """Per trial: open -> event stored, open -> incident visible (seconds)."""
    from tests.agent.conftest import OPENER  # noqa: PLC0415
    from tests.e2e.incident_world import (  # noqa: PLC0415
        AGENT_ID,
        first_incident,
        incident_world,
    )

    results: dict[str, list[float]] = {"stored": [], "incident": []}
    with incident_world(tech, database, probes=trials) as world:
        prober = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={tech.pw_uid}",
                f"--regid={tech.pw_gid}",
                "--clear-groups",
                OPENER,
                "-c",
                PROBE,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        store = open_store(world.url(), migrate=False)
        book = IncidentStore(store)
        try:
            assert prober.stdin is not None
            assert prober.stdout is not None
            for n in range(trials):
                area = f"probe-{n:02d}"
                before = store.get_agent(AGENT_ID)
                seq0 = 0 if before is None else before.next_seq
                prober.stdin.write(world.files(area, 0, 1)[0] + "\n")
                prober.stdin.flush()
                opened_at, got = prober.stdout.readline().split()
                assert got == "EPERM", f"the open in {area} gave {got}, expected EPERM"
                t_open = float(opened_at)
                stored = seen = None
                deadline = time.monotonic() + TRIAL_TIMEOUT_S
                while seen is None and time.monotonic() < deadline:
                    if stored is None:
                        agent = store.get_agent(AGENT_ID)
                        if agent is not None and agent.next_seq > seq0:
                            stored = time.monotonic()
                    if first_incident(book, area) is not None:
                        seen = time.monotonic()
                        stored = stored or seen
                    time.sleep(POLL_S)
                if seen is None or stored is None:
                    raise SystemExit(f"no incident for {area} within {TRIAL_TIMEOUT_S} s")
                results["stored"].append(stored - t_open)
                results["incident"].append(seen - t_open)
        finally:
            if prober.stdin is not None:
                prober.stdin.close()
            prober.wait(10)
            store.close()
    return results


def e2e(trials: int, only: str | None) -> int:
    """The end-to-end latency table (needs root)."""
    sys.path.insert(0, str(ROOT))
    from tests.agent.conftest import TECH, _ensure_user  # noqa: PLC0415

    if os.geteuid() != 0:
        print("--e2e needs root (fanotify and a technician OS account)", file=sys.stderr)
        return 2
    try:
        pwd.getpwnam(TECH)
        made = False
    except KeyError:
        made = True
    tech = _ensure_user(TECH)
    try:
        rows: list[tuple[str, dict[str, list[float]]]] = []
        with databases(only) as dbs:
            for name, url in dbs:
                rows.append((name, e2e_trials(tech, url, trials)))
    finally:
        if made:
            subprocess.run(["userdel", TECH], check=False, timeout=30)
    print(
        f"event->incident latency end to end over {trials} trials "
        "(real agent + server on loopback, detector on ingest, 2 ms poll)"
    )
    print(f"{'store':<10}{'measure':<30}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    worst = 0.0
    for name, res in rows:
        for key, label in (
            ("stored", "open -> event stored (base)"),
            ("incident", "open -> incident"),
        ):
            v = res[key]
            print(
                f"{name:<10}{label:<30}{pct(v, 0.5) * 1e3:>9.1f}{pct(v, 0.99) * 1e3:>9.1f}"
                f"{max(v) * 1e3:>9.1f}"
            )
        ratio = statistics.median(res["incident"]) / statistics.median(res["stored"])
        print(f"{name:<10}median incident / stored: {ratio:.2f}x")
        worst = max(worst, pct(res["incident"], 0.99))
    print(f"goal p99 <= 2000 ms: {'met' if worst <= 2.0 else 'NOT met'} ({worst * 1e3:.0f} ms)")
    return 0


def cli() -> int:
    """In-process figures by default; `--e2e` for the end-to-end latency."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--e2e", action="store_true", help="end to end latency (needs root)")
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--e2e-only", choices=["sqlite", "postgres"], default=None)
    args = parser.parse_args()
    if args.e2e:
        return e2e(max(20, args.trials), args.e2e_only)
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
