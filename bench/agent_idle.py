"""The real agent daemon at rest: time to mark N directories, resident memory and idle CPU.

Root only. Builds a tree of N directories in a temporary directory (inode marks: it is not
the root of its own filesystem), writes an agreement whose one area is that tree, starts
`custodes agent run` (not enrolled: no shipper), waits until every directory is marked (read
from the daemon's fanotify fdinfo), then samples VmRSS and CPU time over an idle window.
Baseline in the same run: a bare `python -c` interpreter's RSS.

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


def marks_of(pid: int) -> int:
    """Fanotify marks the process holds (lines of its fanotify fdinfo)."""
    total = 0
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fdinfo.read_text()
        except OSError:
            continue
        total += sum(1 for line in text.splitlines() if line.startswith("fanotify "))
    return total


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
        started = time.perf_counter()
        proc = subprocess.Popen(
            [BIN, "--log-format", "json", "agent", "run", "--config", work / "agent.toml"],
            stdout=subprocess.DEVNULL,
            stderr=(work / "agent.log").open("wb"),
        )
        want = args.dirs + 1
        deadline = time.monotonic() + 120
        marked = 0
        while time.monotonic() < deadline and proc.poll() is None:
            marked = marks_of(proc.pid)
            if marked >= want:
                break
            time.sleep(0.05)
        to_mark = time.perf_counter() - started
        if marked < want:
            print(f"agent_idle: only {marked} of {want} marks", file=sys.stderr)
            return 1
        time.sleep(2.0)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        rss = rss_kib(proc.pid)
        print(f"{'what':44} {'value':>12}")
        print(f"{'directories marked':44} {marked:>12,}")
        print(f"{'start to all marked (process start included)':44} {to_mark:>10.2f} s")
        print(f"{'daemon RSS, idle':44} {rss / 1024:>9.1f} MiB")
        print(f"{'bare interpreter RSS (baseline)':44} {base_rss / 1024:>9.1f} MiB")
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
