"""Ingest benchmark: agent journal → shipper → server (mutual TLS) → committed on SQLite.

Prints a table:
  * throughput: events/s from a full journal to committed on the server (median of runs),
    against the baseline of the store's own append_batch rate in this process (no network,
    no verification), measured in the same run;
  * latency: p50/p99 journal→committed at a steady 5k events/s;
  * server RSS after the runs.

Run: .venv/bin/python bench/ingest_bench.py [--events 200000] [--runs 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import Limits  # noqa: E402
from agent.events import Origin  # noqa: E402
from agent.journal import Journal  # noqa: E402
from agent.records import AccessRecord, Attribution  # noqa: E402
from agent.ship import ShipLimits, Shipper  # noqa: E402
from policies.model import Action, Decision, SubjectKind, Verdict  # noqa: E402
from protos.evidence.chain import GENESIS, extend  # noqa: E402
from server.store import StoredRecord, open_store  # noqa: E402
from server.store.base import AgentRow  # noqa: E402
from tests.server.test_ingest_harness import (  # noqa: E402
    ServerProc,
    enrol_agent,
    make_events,
)

DECISION = Decision(
    verdict=Verdict.ALLOW,
    reason="grant covers it",
    rule="grant",
    subject_kind=SubjectKind.TECHNICIAN,
    technician="tech1",
    area="records",
)
WHO = Attribution(pid=100, uid=0, loginuid=1000, account="root", login_account="tech1")


def record(i: int) -> AccessRecord:
    return AccessRecord(
        unix_nanos=time.time_ns(),
        attribution=WHO,
        path=f"/srv/records/patient-{i}.pdf",
        action=Action.READ,
        decision=DECISION,
        enforcing=True,
    )


def open_journal(cfg, boot: str) -> Journal:  # type: ignore[no-untyped-def]
    return Journal.open(
        cfg.journal_path, Origin(cfg.agent_id, cfg.client, boot), cfg.key_dir, Limits()
    )


def throughput_run(server: ServerProc, base: Path, n: int, run: int) -> float:
    agent = enrol_agent(server, base / f"agent-{run}", f"bench-{run}", "clinic-bench")
    journal = open_journal(agent.cfg, "fill")
    for i in range(n):
        journal.record(record(i))
        if i % 50_000 == 49_999:
            journal.flush(60)
    journal.flush(60)
    journal.close()
    journal = open_journal(agent.cfg, "ship")
    shipper = Shipper(
        journal,
        agent.creds,
        agent.cfg.agent_id,
        agent.cfg.client,
        limits=ShipLimits(max_batch_events=4096, max_in_flight=4),
    )
    stop = threading.Event()
    start = time.perf_counter()
    thread = shipper.run_in_thread(stop)
    deadline = time.monotonic() + 600
    while shipper.acked < n and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join(15)
    journal.close()
    if shipper.acked < n:
        raise SystemExit(f"run {run}: only {shipper.acked} of {n} acknowledged")
    return n / elapsed


def baseline_store_rate(base: Path, run: int, n: int) -> float:
    """append_batch of pre-built records straight into a SQLite store (no TLS, no checks)."""
    store = open_store(f"sqlite:///{base / f'baseline-{run}.db'}")
    store.add_agent(AgentRow("base", "c", bytes(32), "f", 0, None, 0, GENESIS, None, None, "h"))

    class _A:  # make_events only needs cfg.agent_id / cfg.client
        class cfg:  # noqa: N801
            agent_id = "base"
            client = "c"

    events = make_events(_A, 0, n)  # type: ignore[arg-type]
    links = extend(GENESIS, 0, events)
    recs = [
        StoredRecord(
            "base",
            k.seq,
            k.event,
            k.hash,
            "c",
            k.seq,
            "access",
            "tech1",
            "root",
            "records",
            "read",
            "allow",
            "grant",
            f"/srv/p{k.seq}",
        )
        for k in links
    ]
    start = time.perf_counter()
    nxt = 0
    for i in range(0, n, 4096):
        chunk = recs[i : i + 4096]
        nxt = store.append_batch(
            "base",
            nxt,
            chunk,
            agent_checkpoint=b"cp",
            new_head=chunk[-1].chain_hash,
            heartbeat_unix=0,
        )
    elapsed = time.perf_counter() - start
    store.close()
    return n / elapsed


def latency_run(
    server: ServerProc, base: Path, rate: int, seconds: float
) -> tuple[float, float, int]:
    agent = enrol_agent(server, base / "agent-lat", "bench-lat", "clinic-bench")
    journal = open_journal(agent.cfg, "lat")
    shipper = Shipper(journal, agent.creds, agent.cfg.agent_id, agent.cfg.client)
    stop = threading.Event()
    thread = shipper.run_in_thread(stop)
    written: list[float] = []
    acked_at: list[float] = []
    done = threading.Event()

    def watch() -> None:
        seen = 0
        while not done.is_set() or seen < len(written):
            now = time.perf_counter()
            a = shipper.acked
            if a > seen:
                acked_at.extend([now] * (a - seen))
                seen = a
            time.sleep(0.0005)
            if done.is_set() and time.perf_counter() - now > 30:
                break

    watcher = threading.Thread(target=watch)
    watcher.start()
    tick = 0.01
    per_tick = int(rate * tick)
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        target = start + (i // per_tick + 1) * tick
        for _ in range(per_tick):
            written.append(time.perf_counter())
            journal.record(record(i))
            i += 1
        pause = target - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    done.set()
    deadline = time.monotonic() + 60
    while len(acked_at) < len(written) and time.monotonic() < deadline:
        time.sleep(0.01)
    watcher.join(5)
    stop.set()
    thread.join(15)
    journal.close()
    lat = sorted(a - w for w, a in zip(written, acked_at, strict=False))
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], len(lat)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="custodes-bench-") as tmp:
        base = Path(tmp)
        server = ServerProc(base / "data")
        server.init()
        server.start()
        try:
            rates = [throughput_run(server, base, args.events, r) for r in range(args.runs)]
            baseline = statistics.median(
                [baseline_store_rate(base, r, args.events) for r in range(args.runs)]
            )
            p50, p99, count = latency_run(server, base, args.rate, args.seconds)
            assert server.proc is not None
            rss = psutil.Process(server.proc.pid).memory_info().rss
        finally:
            server.stop()
    med = statistics.median(rates)
    print(f"{'measure':<52}{'value':>16}")
    print("-" * 68)
    label = f"journal→committed events/s, SQLite (median of {args.runs})"
    print(f"{label:<52}{med:>16,.0f}")
    print(f"{'  runs':<52}{', '.join(f'{r:,.0f}' for r in rates):>16}")
    print(f"{'baseline: store append_batch only, events/s':<52}{baseline:>16,.0f}")
    print(f"{'ratio end-to-end / store baseline':<52}{med / baseline:>16.2f}")
    print(f"{'goal ≥ 50,000 events/s':<52}{'met' if med >= 50_000 else 'NOT met':>16}")
    print(f"{f'latency p50 at {args.rate}/s ({count} events), ms':<52}{p50 * 1000:>16.1f}")
    print(f"{f'latency p99 at {args.rate}/s, ms':<52}{p99 * 1000:>16.1f}")
    print(f"{'goal p99 ≤ 1000 ms':<52}{'met' if p99 <= 1.0 else 'NOT met':>16}")
    print(f"{'server RSS after the runs, MiB':<52}{rss / 2**20:>16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
