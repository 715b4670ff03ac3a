"""Gate overhead, as root: open+close µs per open ungated, gated for staff and technicians,
time and memory to mark 100k directories, and the new-directory race. Prints a table.

Run: `sudo .venv/bin/python -m bench.gate_bench` (creates and removes two OS accounts
ctest-bench-tech and ctest-bench-staff, and everything under a fresh /tmp/ctest-bench-*).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.gate import Gate
from agent.records import AccessRecord
from policies.compile import compile_agreement
from policies.load import parse_agreement

TECH, STAFF = "ctest-bench-tech", "ctest-bench-staff"
OPENER = "/usr/bin/python3"
LOOP = r"""
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(200):
    os.close(os.open(path, os.O_RDONLY))
t = time.perf_counter()
for _ in range(n):
    os.close(os.open(path, os.O_RDONLY))
print((time.perf_counter() - t) / n * 1e6)
"""
RACE = r"""
import os, sys, time
base, trials, delay_us = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
escaped = 0
for i in range(trials):
    d = f"{base}/d{i}"
    os.mkdir(d)
    end = time.perf_counter() + delay_us / 1e6
    while time.perf_counter() < end:
        pass
    try:
        os.close(os.open(f"{d}/f", os.O_WRONLY | os.O_CREAT, 0o666))
        escaped += 1
    except PermissionError:
        pass
print(escaped)
"""
AGREEMENT = """\
client: {{id: bench, name: Bench Clinic}}
privacy_contact: {{name: P, email: p@bench.example, phone: "+61 2 9000 0000"}}
version: "b1"
timezone: UTC
business_hours:
  - {{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59"}}
technicians:
  - {{id: tess, name: Tess, email: t@msp.example, accounts: [{tech}]}}
areas:
  - {{id: records, description: R, paths: ["{area}/**"], kinds: [health],
      individuals_per_file: 1}}
in_scope:
  - {{description: reads, areas: [records], actions: [read, list], technicians: "*",
      hours: any}}
others: allow
outside_areas: allow
detection:
  bulk_read: {{files: 50, minutes: 10}}
  heartbeat_silence: 5m
  clock_skew: 30s
retention: 7y
"""


class CountingSink:
    """Counts records; says a deny is durable at once (the bench measures the gate)."""

    def __init__(self) -> None:
        self.n = 0

    def record(self, rec: AccessRecord, on_durable: Callable[[bool], None] | None = None) -> None:
        self.n += 1
        if on_durable is not None:
            on_durable(True)


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def _as(user: pwd.struct_passwd, *cmd: str) -> list[str]:
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *cmd]


def _opens(user: pwd.struct_passwd, path: Path, n: int, reps: int) -> float:
    runs = []
    for _ in range(reps):
        out = subprocess.run(
            _as(user, OPENER, "-c", LOOP, str(path), str(n)),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"opener as {user.pw_name} failed: {out.stderr[-400:]}")
        runs.append(float(out.stdout))
    return statistics.median(runs)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--opens", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dirs", type=int, default=100_000)
    ap.add_argument("--race-trials", type=int, default=300)
    ap.add_argument(
        "--pin", action="store_true", help="run gate and openers on CPU 0 (low-noise comparison)"
    )
    args = ap.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0})  # threads started later and children inherit it
    made = [n for n in (TECH, STAFF) if n not in {p.pw_name for p in pwd.getpwall()}]
    tech, staff = _user(TECH), _user(STAFF)
    work = Path(tempfile.mkdtemp(prefix="ctest-bench-"))
    work.chmod(0o755)
    rows: list[tuple[str, str, str]] = []
    try:
        area = work / "area"
        area.mkdir(mode=0o777)
        area.chmod(0o777)
        target = area / "f.txt"
        target.write_text("x")
        target.chmod(0o644)
        policy = compile_agreement(
            parse_agreement(AGREEMENT.format(tech=TECH, area=area), filename="bench.yaml")
        )

        base = _opens(staff, target, args.opens, args.reps)
        rows.append(("ungated open+close (baseline)", f"{base:.2f} µs", ""))
        sink = CountingSink()
        gate = Gate(policy=policy, sink=sink, roots=[str(area)])
        gate.start()
        try:
            staff_us = _opens(staff, target, args.opens, args.reps)
            tech_us = _opens(tech, target, args.opens, args.reps)
            st = gate.stats
        finally:
            gate.stop()
        rows.append(
            ("gated, non-technician", f"{staff_us:.2f} µs", f"+{staff_us - base:.2f} µs (goal ≤ 8)")
        )
        rows.append(
            (
                "gated, technician (allowed, recorded)",
                f"{tech_us:.2f} µs",
                f"+{tech_us - base:.2f} µs (goal ≤ 20)",
            )
        )
        rows.append(
            (
                "gate answer latency p50/p99 (histogram)",
                f"≤{st.answer_p50_us:.0f}/≤{st.answer_p99_us:.0f} µs",
                f"{st.events} events",
            )
        )

        # The new-directory race: a technician denied everything but reads creates a file in
        # a directory it made a moment ago; an open before the mark lands escapes.
        race = area / "race"
        race.mkdir(mode=0o777)
        race.chmod(0o777)
        gate = Gate(policy=policy, sink=CountingSink(), roots=[str(area)])
        gate.start()
        try:
            for delay in (0, 20, 100, 1000, 10000):
                sub = race / f"delay{delay}"
                sub.mkdir(mode=0o777)
                sub.chmod(0o777)
                time.sleep(0.2)  # let the gate mark `sub` itself
                out = subprocess.run(
                    _as(tech, OPENER, "-c", RACE, str(sub), str(args.race_trials), str(delay)),
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=True,
                )
                rows.append(
                    (
                        f"new dir race: create {delay} µs after mkdir",
                        f"{int(out.stdout)}/{args.race_trials} escaped",
                        "",
                    )
                )
        finally:
            gate.stop()
        shutil.rmtree(race)

        tree = work / "tree"
        per = 1000
        for i in range(args.dirs // per):
            top = tree / f"t{i:04d}"
            top.mkdir(parents=True)
            for j in range(per - 1):
                (top / f"d{j:04d}").mkdir()
        rss0 = _rss_mb()
        times, marks, rss = [], 0, 0.0
        for _ in range(args.reps):
            gate = Gate(policy=policy, sink=CountingSink(), roots=[str(tree)])
            t = time.perf_counter()
            gate.start()
            times.append(time.perf_counter() - t)
            marks = gate.marks
            time.sleep(0.5)
            rss = _rss_mb()
            gate.stop()
        rows.append(
            (f"mark {marks} directories (start)", f"{statistics.median(times):.2f} s", "goal ≤ 2 s")
        )
        rows.append(
            (
                "idle RSS of the process, marks held",
                f"{rss:.1f} MB",
                f"{rss - rss0:+.1f} MB over before (goal ≤ 40 MB)",
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for n in made:
            subprocess.run(["userdel", n], check=False)
    width = max(len(r[0]) for r in rows)
    pinned = "pinned to CPU 0" if args.pin else "unpinned"
    print(
        f"gate bench: {args.opens} opens x {args.reps} runs (medians), "
        f"{os.cpu_count()} CPUs, {pinned}, load {os.getloadavg()[0]:.1f}"
    )
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>22}  {note}")


if __name__ == "__main__":
    main()
