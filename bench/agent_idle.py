"""The real agent daemon at rest: time to mark N directories, resident memory and idle CPU.

Root only. Builds a tree of N directories in a temporary directory (inode marks: it is not
the root of its own filesystem), writes an agreement whose one area is that tree, starts
`custodes agent run` (not enrolled: no shipper), waits until it logs `agent_started` (every
mark placed, journal open: what READY=1 follows), checks in its fanotify fdinfo that every
directory is marked, then samples VmRSS and CPU time over an idle window. The fdinfo is read
once, not polled: printing 100k marks holds the group's mark lock, and polling it slowed the
marking it measured (and the sum over both groups reached N when half were marked).
Breakdown in the same run: a bare `python -c` interpreter's RSS; an interpreter that has
imported what the daemon imports (protos.cli, agent.cli, agent.daemon, agent.gate) and
nothing else; the daemon's RSS when it has started.

    sudo .venv/bin/python -m bench.agent_idle [--dirs 100000] [--idle 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "custodes"
AGREEMENT = """\
client: {{id: idle-bench, name: Idle bench}}
privacy_contact: {{name: Bench, email: bench@example.invalid, phone: "+61 2 0000 0000"}}
version: "bench-1"
timezone: UTC
business_hours:
  - {{days: [mon, tue, wed, thu, fri], start: "08:00", end: "18:00"}}
technicians:
  - id: benchtech
    name: Bench Technician
    email: t@example.invalid
    accounts: [custodes-benchtech]
areas:
  - id: records
    description: a large tree
    paths: ["{root}/**"]
    kinds: [health]
    individuals_per_file: 1
in_scope: []
others: allow
retention: 7y
detection: {{bulk_read: {{files: 50, minutes: 10}}, heartbeat_silence: 5m, clock_skew: 30s}}
"""


def make_tree(root: Path, dirs: int) -> None:
    """`dirs` directories, 100 per level-2 directory."""
    made = 0
    for i in range(dirs // 100 + 1):
        top = root / f"d{i:05d}"
        top.mkdir()
        made += 1
        for j in range(min(99, dirs - made)):
            (top / f"s{j:02d}").mkdir()
            made += 1
        if made >= dirs:
            return


IMPORTS_PROBE = """\
import sys
from protos import cli
cli.build_parser(argv=["agent", "run"])
import agent.daemon, agent.gate, agent.marks, agent.fanotify
print(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
"""


def marks_of(pid: int) -> list[int]:
    """Marks held by each fanotify group of the process (lines of its fdinfo), largest first.

    The daemon has two groups (permission, and notification for new directories), each
    marking every directory: the first is the permission group's count.
    """
    counts = []
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:
            continue
        if "fanotify flags:" in text:
            counts.append(sum(1 for line in text.splitlines() if line.startswith("fanotify ")))
    return sorted(counts, reverse=True) or [0]


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    """Print the table; exit non-zero when something did not work."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", type=int, default=100_000)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle sampling")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("agent_idle: run as root (fanotify)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="custodes-idle-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        tree = work / "tree"
        tree.mkdir()
        make_tree(tree, args.dirs)
        (work / "agreement.yaml").write_text(AGREEMENT.format(root=tree))
        subprocess.run(
            [
                BIN,
                "agent",
                "init",
                "--config",
                work / "agent.toml",
                "--agent-id",
                "idle",
                "--client",
                "idle-bench",
                "--agreement",
                work / "agreement.yaml",
                "--state-dir",
                work / "state",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        base = subprocess.run(
            [sys.executable, "-c", "import os;print(open('/proc/self/status').read())"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        base_rss = next(int(x.split()[1]) for x in base.splitlines() if x.startswith("VmRSS"))
        imports_rss = int(
            subprocess.run(
                [sys.executable, "-c", IMPORTS_PROBE],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout.split()[-1]
        )
        started = time.perf_counter()
        proc = subprocess.Popen(
            [BIN, "--log-format", "json", "agent", "run", "--config", work / "agent.toml"],
            stdout=subprocess.DEVNULL,
            stderr=(work / "agent.log").open("wb"),
        )
        want = args.dirs + 1
        deadline = time.monotonic() + 120
        log = work / "agent.log"
        while time.monotonic() < deadline and proc.poll() is None:
            if b'"agent_started"' in log.read_bytes():
                break
            time.sleep(0.02)
        to_mark = time.perf_counter() - started
        marked = marks_of(proc.pid) if proc.poll() is None else [0]
        if marked[0] < want:
            print(f"agent_idle: only {marked[0]} of {want} marks", file=sys.stderr)
            return 1
        marked_rss = rss_kib(proc.pid)
        time.sleep(2.0)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        rss = rss_kib(proc.pid)
        print(f"{'what':44} {'value':>12}")
        print(f"{'directories marked (permission group)':44} {marked[0]:>12,}")
        print(f"{'process start to agent_started (all marked)':44} {to_mark:>10.2f} s")
        print(f"{'daemon RSS, idle':44} {rss / 1024:>9.1f} MiB")
        print(f"{'  bare interpreter RSS (baseline)':44} {base_rss / 1024:>9.1f} MiB")
        print(f"{'  interpreter after the daemon imports':44} {imports_rss / 1024:>9.1f} MiB")
        print(f"{'  daemon RSS at agent_started':44} {marked_rss / 1024:>9.1f} MiB")
        print(f"{'daemon idle CPU over ' + str(args.idle) + ' s':44} {idle_cpu:>10.2f} %")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
