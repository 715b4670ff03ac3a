"""Decide throughput at 50, 500 and 5,000 path patterns: median µs per decision, decisions/s.

Run: .venv/bin/python bench/policy_bench.py
Each size: a generated agreement (literal prefixes, `*`, `**`), a fixed mix of paths (in and
out of areas; technicians, a principal and the client's staff), 5 timed runs; the median
run's mean time per decision is reported, and the 5000/50 ratio measured in the same run.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from policies.compile import CompiledAgreement, compile_agreement
from policies.load import parse_agreement
from policies.model import Action, Grant, Subject

SIZES = (50, 500, 5000)
RUNS = 5
DECISIONS = 20_000
PER_AREA = 5
TZ = ZoneInfo("Australia/Sydney")
AT = datetime(2025, 6, 2, 10, 0, tzinfo=TZ)


def patterns_for(area: int) -> list[str]:
    base = f"/srv/client{area % 17}/dept{area}"
    return [
        f"{base}/records/**",
        f"{base}/letters/*.pdf",
        f"{base}/cases/*/notes/**",
        f"{base}/exports/export-??.csv",
        f"{base}/db/main.bak",
    ][:PER_AREA]


def agreement_text(patterns: int) -> str:
    areas = max(1, patterns // PER_AREA)
    out = [
        "client: {id: bench-clinic, name: Bench Clinic}",
        "privacy_contact: {name: P, email: p@bench.example, phone: '+61 2 9000 0000'}",
        'version: "1"',
        "timezone: Australia/Sydney",
        "business_hours:",
        "  - {days: [mon, tue, wed, thu, fri], start: '08:00', end: '18:00'}",
        "technicians:",
        "  - {id: tech1, name: T1, email: t1@msp.example, accounts: [tech1]}",
        "  - {id: tech2, name: T2, email: t2@msp.example, accounts: [tech2]}",
        "principals:",
        "  - {name: backup, account: svc_backup, exe: /usr/bin/restic}",
        "areas:",
    ]
    for a in range(areas):
        globs = ", ".join(patterns_for(a))
        out.append(
            f"  - {{id: area{a}, description: Area {a}, paths: [{globs}], "
            "kinds: [health], individuals_per_file: 1}"
        )
    out += [
        "in_scope:",
        "  - {areas: [area0, area1], actions: [list, read], hours: business}",
        "just_in_time:",
        "  - {areas: '*', actions: [read, list], max_duration: 4h,"
        " approvers: {count: 1, from: [client_manager]}}",
        "detection: {bulk_read: {files: 50, minutes: 10}, heartbeat_silence: 5m, clock_skew: 30s}",
        "retention: 7y",
    ]
    return "\n".join(out) + "\n"


def workload(patterns: int, rng: random.Random) -> list[tuple[Subject, str, Action]]:
    areas = max(1, patterns // PER_AREA)
    tech = [Subject("tech1"), Subject("root", login_account="tech2")]
    others = [Subject("reception"), Subject("svc_backup", exe="/usr/bin/restic")]
    work = []
    for _ in range(DECISIONS):
        a = rng.randrange(areas)
        base = f"/srv/client{a % 17}/dept{a}"
        roll = rng.random()
        if roll < 0.35:
            path = rng.choice(
                [
                    f"{base}/records/2025/{rng.randrange(999)}/scan.pdf",
                    f"{base}/letters/l{rng.randrange(999)}.pdf",
                    f"{base}/cases/c{rng.randrange(99)}/notes/n.txt",
                    f"{base}/exports/export-{rng.randrange(10, 99)}.csv",
                    f"{base}/db/main.bak",
                ]
            )
        elif roll < 0.65:
            path = f"{base}/public/menu{rng.randrange(99)}.txt"  # near an area, outside it
        else:
            path = rng.choice(["/usr/lib/x86_64-linux-gnu/libc.so.6", "/etc/hosts", "/tmp/x"])
        subject = rng.choice(tech) if rng.random() < 0.8 else rng.choice(others)
        work.append((subject, path, rng.choice([Action.READ, Action.READ, Action.LIST])))
    return work


def time_once(compiled: CompiledAgreement, work: list[tuple[Subject, str, Action]]) -> float:
    """Mean µs per decision over one pass of `work`."""
    grant = Grant(
        "g1",
        "tech1",
        "area2",
        frozenset({Action.READ}),
        AT - timedelta(hours=1),
        AT + timedelta(hours=1),
    )
    grants = (grant,)
    decide = compiled.decide
    start = time.perf_counter()
    for subject, path, action in work:
        decide(subject, path, action, AT, grants)
    return (time.perf_counter() - start) / len(work) * 1e6


def main() -> None:
    rng = random.Random(20250602)
    setups = {}
    compile_ms = {}
    for size in SIZES:
        text = agreement_text(size)
        start = time.perf_counter()
        compiled = compile_agreement(parse_agreement(text, filename=f"bench-{size}.yaml"))
        compile_ms[size] = (time.perf_counter() - start) * 1e3
        setups[size] = (compiled, workload(size, rng))
    # As a long-running agent would after loading its policy: nothing built so far is
    # garbage, so keep the collector from re-scanning it (and treat every size alike).
    gc.collect()
    gc.freeze()
    samples: dict[int, list[float]] = {size: [] for size in SIZES}
    for _ in range(RUNS):  # interleaved, so that drifting machine load hits every size
        for size in SIZES:
            samples[size].append(time_once(*setups[size]))
    results = {size: statistics.median(samples[size]) for size in SIZES}
    print(
        f"{'patterns':>8}  {'areas':>6}  {'load+compile ms':>15}  "
        f"{'median µs':>10}  {'decisions/s':>12}"
    )
    for size in SIZES:
        micros = results[size]
        areas = len(setups[size][0].agreement.areas)
        print(
            f"{size:>8}  {areas:>6}  {compile_ms[size]:>15.1f}  "
            f"{micros:>10.2f}  {1e6 / micros:>12,.0f}"
        )
    print(f"ratio 5000/50: {results[5000] / results[50]:.2f}  (goal <= 1.5)")
    print(f"median at 500: {results[500]:.2f} µs  (goal <= 3)")


if __name__ == "__main__":
    main()
