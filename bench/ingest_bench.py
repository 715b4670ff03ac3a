"""Ingest benchmark: agent journal → shipper → server (mutual TLS) → committed on SQLite.

Prints a table:
  * throughput: events/s from a full journal to committed on the server (median of runs),
    against the baseline of the store's own append_batch rate in this process (no network,
    no verification), measured in the same run;
  * latency: p50/p99 journal→committed at a steady 5k events/s;
  * replay after an outage: a journal of --replay events (1M) written while the server was
    away, then shipped: events/s, and lost / duplicated counted against the journal's hashes;
  * the same throughput on PostgreSQL (a throwaway cluster, when initdb is installed);
  * server RSS after the runs, and its CPU per event in the throughput runs; the agent's
    CPU per event there too (this process: the shipper reading the journal, building
    batches and verifying the server's checkpoints; the journal is filled before timing);
  * the machine's load average at the start and the end, and how many of its CPUs were busy
    (all processes) while the throughput runs shipped: other work shares the CPUs, and a
    server that is not using a whole CPU is waiting on something other than the CPU.

Run: .venv/bin/python bench/ingest_bench.py [--events 200000] [--runs 3] [--seconds 10]
     [--replay 1000000] [--no-postgres] [--quick]   (--quick: a couple of minutes)
"""

from __future__ import annotations

import argparse
import os
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
from protos.evidence.merkle import record_leaves  # noqa: E402
from server.store import StoredRecord, open_store  # noqa: E402
from server.store.base import AgentRow  # noqa: E402
from tests.server.conftest import find_initdb, start_cluster  # noqa: E402
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


def throughput_run(server: ServerProc, base: Path, n: int, run: int) -> tuple[float, float, float]:
    """events/s, the agent's CPU seconds per event and the machine's busy CPUs of one run."""
    rate, _, agent_cpu, busy = ship_all(server, base, n, f"bench-{run}")
    return rate, agent_cpu, busy


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every process, user and kernel)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def ship_all(
    server: ServerProc, base: Path, n: int, name: str
) -> tuple[float, list[bytes], float, float]:
    """Fill a journal with n events (the server is not shipped to), then ship all of it.

    Returns events/s from the first connection to the last ack, the journal's hashes, this
    process's CPU seconds per event while shipping (the agent's side of the stream), and
    how many CPUs the machine kept busy meanwhile (all processes).
    """
    agent = enrol_agent(server, base / f"agent-{name}", name, "clinic-bench")
    journal = open_journal(agent.cfg, "fill")
    for i in range(n):
        journal.record(record(i))
        if i % 50_000 == 49_999:
            journal.flush(60)
    journal.flush(60)
    hashes: list[bytes] = []
    seq = 0
    while seq < journal.checkpointed:
        batch = journal.read_batch(seq, 100_000, 1 << 30)
        assert batch is not None
        hashes += [k.hash for k in batch.links]
        seq = batch.links[-1].seq + 1
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
    cpu_start = time.process_time()
    busy_start = busy_cpu_seconds()
    thread = shipper.run_in_thread(stop)
    deadline = time.monotonic() + 1200
    total = len(hashes)
    while shipper.acked < total and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    agent_cpu = time.process_time() - cpu_start
    busy = (busy_cpu_seconds() - busy_start) / elapsed
    stop.set()
    thread.join(15)
    journal.close()
    if shipper.acked < total:
        raise SystemExit(f"{name}: only {shipper.acked} of {total} acknowledged")
    return total / elapsed, hashes, agent_cpu / total, busy


def lost_and_duplicated(server: ServerProc, agent_id: str, hashes: list[bytes]) -> tuple[int, int]:
    """Journal events the server lacks, and stored rows beyond one per journal event."""
    store = open_store(server.database or f"sqlite:///{server.data / 'custodes.db'}")
    try:
        stored = store.leaf_hashes(agent_id, 0)
        count = store.count_events(agent_id)
    finally:
        store.close()
    expected = record_leaves(0, hashes)
    lost = sum(1 for i, h in enumerate(expected) if i >= len(stored) or stored[i] != h)
    return lost, count - len(expected)


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


def postgres_cpu(postmaster: int) -> dict[int, float]:
    """CPU seconds (user + system) of the cluster's processes, by PID.

    Compare two of these for the growth: backends that ended in between are not seen (the
    server keeps its connection open, and ingest's work runs in its backend).
    """
    procs = [psutil.Process(postmaster)]
    procs += procs[0].children(recursive=True)
    out: dict[int, float] = {}
    for proc in procs:
        try:
            out[proc.pid] = sum(proc.cpu_times()[:2])
        except psutil.Error:  # a backend that just exited
            continue
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--replay", type=int, default=1_000_000)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--quick", action="store_true", help="small sizes: about two minutes")
    args = p.parse_args()
    if args.quick:
        args.events, args.runs, args.seconds, args.replay = 50_000, 2, 3.0, 200_000
    rows: list[tuple[str, str]] = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="custodes-bench-") as tmp:
        base = Path(tmp)
        server = ServerProc(base / "data")
        server.init()
        server.start()
        try:
            assert server.proc is not None
            server_proc = psutil.Process(server.proc.pid)
            cpu_before = sum(server_proc.cpu_times()[:2])
            runs = [throughput_run(server, base, args.events, r) for r in range(args.runs)]
            rates = [rate for rate, _, _ in runs]
            agent_us = statistics.median(cpu for _, cpu, _ in runs) * 1e6
            busy = statistics.median(b for _, _, b in runs)
            # CPU seconds (user + system) the server spent per event shipped: steadier than
            # events/s on a machine others are loading.
            cpu_us = (sum(server_proc.cpu_times()[:2]) - cpu_before) / (args.events * args.runs)
            baseline = statistics.median(
                [baseline_store_rate(base, r, args.events) for r in range(args.runs)]
            )
            p50, p99, count = latency_run(server, base, args.rate, args.seconds)
            replay_rate, hashes, _, _ = ship_all(server, base, args.replay, "bench-replay")
            lost, dup = lost_and_duplicated(server, "bench-replay", hashes)
            assert server.proc is not None
            rss = psutil.Process(server.proc.pid).memory_info().rss
        finally:
            server.stop()
        med = statistics.median(rates)
        rows += [
            (f"journal→committed events/s, SQLite (median of {args.runs})", f"{med:,.0f}"),
            ("  runs", ", ".join(f"{r:,.0f}" for r in rates)),
            ("baseline: store append_batch only, events/s", f"{baseline:,.0f}"),
            ("ratio end-to-end / store baseline", f"{med / baseline:.2f}"),
            ("server CPU per event in those runs, µs", f"{cpu_us * 1e6:.1f}"),
            ("agent (shipper) CPU per event in those runs, µs", f"{agent_us:.1f}"),
            (f"machine CPUs busy while shipping (of {os.cpu_count()}), median", f"{busy:.2f}"),
            ("goal ≥ 50,000 events/s", "met" if med >= 50_000 else "NOT met"),
            (f"latency p50 at {args.rate}/s ({count} events), ms", f"{p50 * 1000:.1f}"),
            (f"latency p99 at {args.rate}/s, ms", f"{p99 * 1000:.1f}"),
            ("goal p99 ≤ 1000 ms", "met" if p99 <= 1.0 else "NOT met"),
            (f"replay of {args.replay:,} events after an outage, events/s", f"{replay_rate:,.0f}"),
            ("  replay: lost / duplicated", f"{lost} / {dup}"),
            ("server RSS after the runs (SQLite), MiB", f"{rss / 2**20:.1f}"),
        ]
        initdb = None if args.no_postgres else find_initdb()
        if initdb is not None:
            cluster = start_cluster(initdb)
            try:
                pg = ServerProc(base / "data-pg", database=cluster.url)
                pg.init()
                pg.start()
                try:
                    assert pg.proc is not None
                    pg_proc = psutil.Process(pg.proc.pid)
                    pg_cpu = sum(pg_proc.cpu_times()[:2])
                    db_cpu = postgres_cpu(cluster.process.pid)
                    pg_rates = [
                        ship_all(pg, base, args.events, f"pg-{r}")[0] for r in range(args.runs)
                    ]
                    pg_cpu = (sum(pg_proc.cpu_times()[:2]) - pg_cpu) / (args.events * args.runs)
                    db_us = sum(
                        cpu - db_cpu.get(pid, 0.0)
                        for pid, cpu in postgres_cpu(cluster.process.pid).items()
                    ) / (args.events * args.runs)
                    assert pg.proc is not None
                    pg_rss = psutil.Process(pg.proc.pid).memory_info().rss
                finally:
                    pg.stop()
            finally:
                cluster.stop()
            rows += [
                (
                    f"journal→committed events/s, PostgreSQL (median of {args.runs})",
                    f"{statistics.median(pg_rates):,.0f}",
                ),
                ("  runs", ", ".join(f"{r:,.0f}" for r in pg_rates)),
                ("server CPU per event in those runs, µs", f"{pg_cpu * 1e6:.1f}"),
                ("PostgreSQL's own CPU per event in those runs, µs", f"{db_us * 1e6:.1f}"),
                ("server RSS after the runs (PostgreSQL), MiB", f"{pg_rss / 2**20:.1f}"),
            ]
    rows.insert(
        0, ("load average (1 min) at start / end", f"{load[0]:.2f} / {os.getloadavg()[0]:.2f}")
    )
    print(f"{'measure':<58}{'value':>18}")
    print("-" * 76)
    for label, value in rows:
        print(f"{label:<58}{value:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
