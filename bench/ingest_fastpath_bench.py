"""Ingest's per-batch verify-and-parse, per event: `read_batch` against the step-by-step path.

`server.batch_checks.read_batch` (the fast path the server tries first) against `check_batch` +
`parse_records` + `record_leaves` (the Python reference it falls back to), on batches of
access events with every field set, with observations (the server's detector is on); a
batch holding one grant event (fast path refused, then the reference); and MerkleTree.extend
in batches. Run it in an older checkout (PYTHONPATH=that tree) for a before/after.

Run: .venv/bin/python bench/ingest_fastpath_bench.py [--batch 1000] [--runs 15]
Figures: µs per event (or leaf), best and median of `runs`, garbage collector on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos.evidence.chain import GENESIS, extend
from protos.evidence.keychain import EpochKey, KeyChain
from protos.evidence.merkle import MerkleTree, record_leaves
from protos.evidence.origins import agent_origin
from protos.wire import pb
from server.batch_checks import StreamState, check_batch, parse_records, read_batch

AGENT, CLIENT = "clinic-01", "clinic"
MAX_EVENTS = 1 << 16


def event(seq: int, *, grant: bool = False) -> bytes:
    """An access event with every field set (a grant event when `grant`)."""
    e = pb.Event(agent_id=AGENT, client=CLIENT, boot_id="b" * 16, seq=seq, unix_nanos=10**18 + seq)
    if grant:
        e.grant.technician, e.grant.area = "tech1", "records"
        return e.SerializeToString()
    a, s, o = e.access, e.access.subject, e.access.object
    s.technician, s.os_user, s.login_user = "tech1", "root", "tech1"
    s.uid, s.loginuid, s.pid, s.ppid = 1000, 1000, 1234, 1
    s.exe, s.cmdline = "/usr/bin/cat", "cat /srv/records/p.pdf"
    o.path, o.area = f"/srv/records/p-{seq}.pdf", "records"
    o.kinds.extend(["health", "medicare"])
    o.individuals_estimate, o.device, o.inode = 1, 2049, 1000 + seq
    a.action, a.verdict, a.mode = pb.ACTION_READ, pb.VERDICT_ALLOW, pb.GATE_MODE_ENFORCING
    a.rule, a.reason, a.grant_id = "grant", "grant covers it", "g-1"
    return e.SerializeToString()


def batch(n: int, grant_at: int | None = None) -> pb.EventBatch:
    links = extend(GENESIS, 0, [event(s, grant=s == grant_at) for s in range(n)])
    b = pb.EventBatch(batch_id=1, prev_hash=GENESIS, checkpoint=b"note")
    for k in links:
        b.records.add(seq=k.seq, event=k.event, chain_hash=k.hash)
    return b


def timed(runs: int, per: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(best, median) µs per item over `runs` calls of `fn`, which handles `per` items."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) / per * 1e6, statistics.median(times) / per * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1000, help="events a batch")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    n, runs = args.batch, args.runs
    state = StreamState(
        AGENT, CLIENT, KeyChain(agent_origin(CLIENT, AGENT), EpochKey(0, bytes(32))), 0
    )

    def reference(b: pb.EventBatch) -> object:
        links, head = check_batch(state, 0, GENESIS, b, MAX_EVENTS)
        parsed = parse_records(state, links, 0, observe=True)
        return parsed, record_leaves(0, [k.hash for k in links]), head

    def prepare(b: pb.EventBatch) -> object:  # as Ingest.prepare: the fast path, else the rest
        got = read_batch(state, 0, GENESIS, b, MAX_EVENTS, observe=True)
        return got if got is not None else reference(b)

    plain, mixed = batch(n), batch(n, grant_at=n // 2)
    assert read_batch(state, 0, GENESIS, plain, MAX_EVENTS, observe=True) is not None
    rows = [
        ("read_batch, access events", timed(runs, n, lambda: prepare(plain))),
        ("check_batch + parse_records + leaves", timed(runs, n, lambda: reference(plain))),
        ("one grant in the batch: both in turn", timed(runs, n, lambda: prepare(mixed))),
        (
            "  of which read_batch answering None",
            timed(runs, n, lambda: read_batch(state, 0, GENESIS, mixed, MAX_EVENTS, observe=True)),
        ),
    ]
    leaves = [bytes([i % 251]) * 32 for i in range(n)]

    def grow() -> None:
        tree = MerkleTree()
        for _ in range(100):
            tree.extend(leaves)

    rows.append((f"MerkleTree.extend, 100 x {n} leaves", timed(max(3, runs // 3), 100 * n, grow)))
    print(f"ingest_fastpath_bench: {n}-event batches, {runs} runs, Python {sys.version.split()[0]}")
    print(f"{'per event (leaf)':<42} {'best µs':>8} {'median µs':>10}")
    for name, (best, median) in rows:
        print(f"{name:<42} {best:>8.2f} {median:>10.2f}")


if __name__ == "__main__":
    main()
