"""Journal throughput: technician events journaled, chained, fsynced and signed per second.

Baseline in the same run: plain serialisation of the same records (agent.events.encode),
no chain, no disk. The journal figure is end to end: `record()` from a producer thread
until a checkpoint covers the last event (group commit: fsync at most every 50 ms or every
`group_events`, then an Ed25519-signed checkpoint). Median of 5 runs. Goal: >= 50k/s.

    .venv/bin/python bench/journal_bench.py [--events 100000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from agent.config import Limits
from agent.events import Origin, encode
from agent.journal import Journal
from agent.records import AccessRecord, Attribution
from policies.model import Action, Decision, SubjectKind, Verdict

ORIGIN = Origin("bench-agent", "bench-clinic", "boot-bench")
WHO = Attribution(
    pid=4242,
    uid=1001,
    loginuid=1001,
    account="jsmith",
    login_account="jsmith",
    session_id=7,
    ppid=4000,
    exe="/usr/bin/cat",
    cmdline="cat /srv/bestpractice/documents/2024/letter.pdf",
)
ALLOW = Decision(
    Verdict.ALLOW,
    "the technician holds grant g-1 for read on patient-documents",
    "grant",
    SubjectKind.TECHNICIAN,
    technician="jsmith",
    area="patient-documents",
    kinds=("health", "medicare"),
    individuals_estimate=1,
    grant_id="g-1",
)


def records(n: int) -> list[AccessRecord]:
    now = time.time_ns()
    return [
        AccessRecord(
            now + i,
            WHO,
            f"/srv/bestpractice/documents/2024/{i:07d}-letter.pdf",
            Action.READ,
            ALLOW,
            True,
            device=2049,
            inode=100_000 + i,
        )
        for i in range(n)
    ]


def bench_encode(recs: list[AccessRecord]) -> float:
    t0 = time.perf_counter()
    for i, r in enumerate(recs):
        encode(r, ORIGIN, i, 0)
    return len(recs) / (time.perf_counter() - t0)


def bench_journal(recs: list[AccessRecord], base: Path, queue: int) -> tuple[float, int, int]:
    work = Path(tempfile.mkdtemp(prefix="journal-bench-", dir=base))
    try:
        limits = Limits(queue_events=queue, group_events=4096)
        j = Journal.open(work / "journal", ORIGIN, work / "keys", limits)
        t0 = time.perf_counter()
        for r in recs:
            j.record(r)
        ok = j.flush(timeout=600)
        elapsed = time.perf_counter() - t0
        stats = j.stats()
        j.close()
        assert ok, "the journal did not commit"
        return (stats.next_seq / elapsed, stats.commits, stats.dropped)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="where the journal is written")
    args = parser.parse_args()
    recs = records(args.events)
    base = Path(args.dir)
    enc: list[float] = []
    jr: list[float] = []
    commits: list[int] = []
    dropped: list[int] = []
    for _ in range(args.runs):
        enc.append(bench_encode(recs))
        rate, c, d = bench_journal(recs, base, queue=args.events + 16)
        jr.append(rate)
        commits.append(c)
        dropped.append(d)
    e, j = statistics.median(enc), statistics.median(jr)
    print(f"journal_bench: {args.events} technician events, median of {args.runs} runs, {base}")
    print(f"{'what':<52} {'events/s':>12} {'ratio':>7}")
    print(f"{'serialise only (agent.events.encode), baseline':<52} {e:>12,.0f} {1.0:>7.2f}")
    print(f"{'journal: chain + write + fsync + signed checkpoint':<52} {j:>12,.0f} {j / e:>7.2f}")
    print(
        f"commits per run (median): {statistics.median(commits):.0f}; "
        f"dropped: {max(dropped)}; goal >= 50,000/s: {'met' if j >= 50_000 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
