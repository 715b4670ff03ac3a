"""The real agent daemon at rest: time to mark N directories, resident memory and idle CPU,
not enrolled (it only gates and journals) and enrolled (it also ships to a real server).

Root only. Builds a tree of N directories in a temporary directory (inode marks: it is not
the root of its own filesystem), writes an agreement whose one area is that tree, and runs
`custodes agent run` over it twice per round, one after the other: once not enrolled (no
shipper), once enrolled with a real server on a free loopback port (`custodes server init` +
`server run` from the transport tests' harness, `server enroll-token`, `agent enroll`).
Each run waits until the daemon logs `agent_started` (every mark placed, journal open: what
READY=1 follows) and, enrolled, `ship_resumed` (the shipper's stream is up and the server
answered its Hello); checks in its fanotify fdinfo that every directory is marked; then
samples VmRSS and CPU time over an idle window. Enrolled, the daemon ships from a child
process (agent/ship_link.py: it never loads grpc), so the daemon, its shipper child (found
by the `shipper_started` line's pid) and their sum are reported, for RSS and idle CPU alike.
VmRSS is split into anonymous (private: heap, stacks, Python objects) and file-backed pages
(mostly shared libraries' code: shared with other processes and reclaimable; a sum of RSS
counts pages both map twice, the sum of PSS (smaps_rollup) once). The fdinfo is read once,
not polled: printing 100k marks holds the group's mark lock, and polling it slowed the
marking it measured (and the sum over both groups reached N when half were marked).
Figures are medians over the rounds.
Breakdown in the same run, fresh `python -c` interpreters: bare; after what the daemon
imports (protos.cli, agent.cli, agent.daemon, agent.gate) and nothing else; that plus what
an enrolled daemon adds (the child's link, server grants); the child after its imports
(agent.shipper_proc: grpc, the shipper, the stubs); a bare one after `import grpc`. What the
child holds beyond its imports is the running shipper (channel, TLS, gRPC's and asyncio's
threads).
The load average is printed at the start and the end (other work shares the CPUs).

    sudo .venv/bin/python -m bench.agent_idle [--dirs 100000] [--idle 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server.test_ingest_harness import ServerProc, cli  # noqa: E402

BIN = Path(sys.executable).parent / "custodes"
CLIENT = "idle-bench"
START_S = 120.0
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


DAEMON_IMPORTS = """\
from protos import cli
cli.build_parser(argv=["agent", "run"])
import agent.daemon, agent.gate, agent.marks, agent.fanotify
"""
# What _start_shipping adds to the daemon when the state directory holds credentials.
SHIPPING_IMPORTS = """\
import agent.enroll, agent.delivery, agent.ship_link, agent.ship_ipc
"""
# What the shipper child imports (python -m agent.shipper_proc).
CHILD_IMPORTS = """\
import agent.shipper_proc
from protos.wire import rpc
"""
PRINT_RSS = """\
print(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
"""


def probe_rss(code: str) -> int:
    """VmRSS in KiB of a fresh interpreter once it has run `code`."""
    out = subprocess.run(
        [sys.executable, "-c", code + PRINT_RSS],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    ).stdout
    return int(out.split()[-1])


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


def status_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/PID/status (VmRSS, RssAnon, RssFile) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size in KiB: shared pages divided among the processes mapping them
    (so the daemon's and the child's can be added without counting shared libraries twice)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shipper_pid(log: Path) -> int | None:
    """The pid of the latest shipper child the daemon logged starting (None: not yet)."""
    pid = None
    for line in log.read_bytes().splitlines():
        if b'"shipper_started"' in line:
            pid = json.loads(line)["pid"]
    return pid


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass(frozen=True)
class Rest:
    """One daemon run: start to all marked, start to shipping, RSS (KiB), idle CPU (%).

    `anon` is the private memory (heap, stacks, Python objects); `file` the pages of
    mapped files, mostly shared libraries' code: clean, shared with any other process
    mapping the same file, and reclaimable under memory pressure. `child_*`: the shipper
    child's (0 when not enrolled).
    """

    marks: int
    to_started: float
    to_shipping: float | None
    started_rss: int
    rss: int
    anon: int
    file: int
    cpu: float
    child_rss: int = 0
    child_anon: int = 0
    child_file: int = 0
    child_cpu: float = 0.0
    pss: int = 0
    child_pss: int = 0

    @property
    def total_rss(self) -> int:
        """Daemon and shipper child together (KiB)."""
        return self.rss + self.child_rss

    @property
    def total_pss(self) -> int:
        """Daemon and shipper child together, shared pages counted once (KiB)."""
        return self.pss + self.child_pss

    @property
    def total_cpu(self) -> float:
        """Daemon and shipper child together (%)."""
        return self.cpu + self.child_cpu


class BenchError(Exception):
    """A daemon did not start, mark, connect or stay up as the benchmark needs."""


def init_agent(work: Path, name: str) -> Path:
    """`custodes agent init` for an agent `name` over the shared agreement; its agent.toml."""
    config = work / name / "agent.toml"
    config.parent.mkdir()
    cli(
        "agent",
        "init",
        "--config",
        str(config),
        "--agent-id",
        name,
        "--client",
        CLIENT,
        "--agreement",
        str(work / "agreement.yaml"),
        "--state-dir",
        str(config.parent / "state"),
    )
    return config


def enrol(server: ServerProc, config: Path) -> None:
    """Enrol the agent of `config` with `server` through the CLI, as an installer would."""
    token = server.token(CLIENT)
    cli(
        "agent",
        "enroll",
        "--server",
        server.address,
        "--enrol-port",
        str(server.enrol_port),
        "--token",
        token,
        "--config",
        str(config),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the daemon we started (by its PID), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def at_rest(config: Path, want: int, idle: float, *, shipping: bool) -> Rest:
    """Run the daemon of `config` until started (and shipping), idle, measure, stop it."""
    log = config.parent / f"agent-{time.monotonic_ns()}.log"
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [BIN, "--log-format", "json", "agent", "run", "--config", config],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        to_started: float | None = None
        to_shipping: float | None = None
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_bytes()
            if to_started is None and b'"agent_started"' in text:
                to_started = time.perf_counter() - started
            if to_shipping is None and b'"ship_resumed"' in text:
                to_shipping = time.perf_counter() - started
            if to_started is not None and (to_shipping is not None or not shipping):
                break
            time.sleep(0.02)
        tail = log.read_text(errors="replace")[-2000:]
        if proc.poll() is not None or to_started is None:
            raise BenchError(f"the daemon did not start within {START_S:.0f} s: {tail}")
        if shipping and to_shipping is None:
            raise BenchError(f"the shipper did not connect within {START_S:.0f} s: {tail}")
        marked = marks_of(proc.pid)[0]
        if marked < want:
            raise BenchError(f"only {marked} of {want} marks")
        started_rss = status_kib(proc.pid)
        time.sleep(2.0)
        child = shipper_pid(log) if shipping else None
        if shipping and child is None:
            raise BenchError(f"no shipper_started in the daemon's log: {tail}")
        pids = [proc.pid] + ([child] if child is not None else [])
        cpu0, t0 = [cpu_seconds(p) for p in pids], time.monotonic()
        time.sleep(idle)
        cpu1, elapsed = [cpu_seconds(p) for p in pids], time.monotonic() - t0
        cpus = [(b - a) / elapsed * 100 for a, b in zip(cpu0, cpu1, strict=True)]
        mem = [[status_kib(p, f) for f in ("VmRSS", "RssAnon", "RssFile")] for p in pids]
        pss = [pss_kib(p) for p in pids]
        if proc.poll() is not None or (child is not None and shipper_pid(log) != child):
            raise BenchError(f"the daemon or its shipper exited while idle: {tail}")
        rss, anon, file = mem[0]
        c_rss, c_anon, c_file = mem[1] if child is not None else [0, 0, 0]
        return Rest(
            marked,
            to_started,
            to_shipping,
            started_rss,
            rss,
            anon,
            file,
            cpus[0],
            c_rss,
            c_anon,
            c_file,
            cpus[1] if child is not None else 0.0,
            pss[0],
            pss[1] if child is not None else 0,
        )
    finally:
        stop(proc)


def median(rests: list[Rest], field: str) -> float:
    """The median of one field over the rounds."""
    return statistics.median(float(getattr(r, field)) for r in rests)


def split(rests: list[Rest], prefix: str = "") -> str:
    """Median anonymous / file-backed resident MiB."""
    anon, file = median(rests, prefix + "anon"), median(rests, prefix + "file")
    return f"{anon / 1024:.1f} / {file / 1024:.1f} MiB"


def report(args: argparse.Namespace, load0: str, plain: list[Rest], enrolled: list[Rest]) -> None:
    """Print the table (medians over the rounds)."""
    bare = probe_rss("")
    grpc_only = probe_rss("import grpc\n")
    daemon = probe_rss(DAEMON_IMPORTS)
    daemon_shipping = probe_rss(DAEMON_IMPORTS + SHIPPING_IMPORTS)
    child = probe_rss(CHILD_IMPORTS)
    mib = 1024
    p_rss, e_rss = median(plain, "rss"), median(enrolled, "rss")
    c_rss = median(enrolled, "child_rss")
    diff = e_rss - p_rss
    rows: list[tuple[str, str]] = [
        ("load average at the start", load0),
        (f"rounds (medians; idle window {args.idle:g} s)", f"{args.rounds}"),
        ("directories marked (permission group)", f"{int(median(plain, 'marks')):,}"),
        ("not enrolled:", ""),
        ("process start to agent_started (all marked)", f"{median(plain, 'to_started'):.2f} s"),
        ("daemon RSS, idle", f"{p_rss / mib:.1f} MiB"),
        ("  anonymous / file-backed", split(plain)),
        ("  bare interpreter RSS (baseline)", f"{bare / mib:.1f} MiB"),
        ("  interpreter after the daemon imports", f"{daemon / mib:.1f} MiB"),
        ("  daemon RSS at agent_started", f"{median(plain, 'started_rss') / mib:.1f} MiB"),
        (f"daemon idle CPU over {args.idle:g} s", f"{median(plain, 'cpu'):.2f} %"),
        ("enrolled (shipping to a loopback server):", ""),
        ("process start to agent_started (all marked)", f"{median(enrolled, 'to_started'):.2f} s"),
        ("process start to ship_resumed (connected)", f"{median(enrolled, 'to_shipping'):.2f} s"),
        ("daemon RSS, idle", f"{e_rss / mib:.1f} MiB"),
        ("  anonymous / file-backed", split(enrolled)),
        ("  enrolled - not enrolled", f"{diff / mib:+.1f} MiB"),
        (
            "    anonymous / file-backed",
            f"{(median(enrolled, 'anon') - median(plain, 'anon')) / mib:+.1f} / "
            f"{(median(enrolled, 'file') - median(plain, 'file')) / mib:+.1f} MiB",
        ),
        ("    the shipping imports (link, grants)", f"{(daemon_shipping - daemon) / mib:+.1f} MiB"),
        ("  daemon RSS at agent_started", f"{median(enrolled, 'started_rss') / mib:.1f} MiB"),
        ("shipper child RSS, idle", f"{c_rss / mib:.1f} MiB"),
        ("  anonymous / file-backed", split(enrolled, "child_")),
        ("  interpreter after the child's imports", f"{child / mib:.1f} MiB"),
        ("  running: channel, TLS, threads, loop", f"{(c_rss - child) / mib:+.1f} MiB"),
        ("  import grpc in a bare interpreter", f"{(grpc_only - bare) / mib:+.1f} MiB"),
        ("daemon + child RSS, idle", f"{median(enrolled, 'total_rss') / mib:.1f} MiB"),
        ("daemon + child PSS, idle", f"{median(enrolled, 'total_pss') / mib:.1f} MiB"),
        ("  not enrolled daemon PSS", f"{median(plain, 'pss') / mib:.1f} MiB"),
        (f"daemon idle CPU over {args.idle:g} s", f"{median(enrolled, 'cpu'):.2f} %"),
        (f"shipper child idle CPU over {args.idle:g} s", f"{median(enrolled, 'child_cpu'):.2f} %"),
        ("daemon + child idle CPU", f"{median(enrolled, 'total_cpu'):.2f} %"),
        ("load average at the end", load_average()),
    ]
    print(f"{'what':46} {'value':>16}")
    for what, value in rows:
        print(f"{what:46} {value:>16}")


def main() -> int:
    """Print the table; exit non-zero when something did not work."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", type=int, default=100_000)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle sampling")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each daemon, alternating")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("agent_idle: run as root (fanotify)", file=sys.stderr)
        return 1
    load0 = load_average()
    work = Path(tempfile.mkdtemp(prefix="custodes-idle-"))
    server = ServerProc(work / "server")
    try:
        tree = work / "tree"
        tree.mkdir()
        make_tree(tree, args.dirs)
        (work / "agreement.yaml").write_text(AGREEMENT.format(root=tree))
        plain_cfg = init_agent(work, "idle")
        enrolled_cfg = init_agent(work, "idle-enrolled")
        server.init()
        server.start()
        enrol(server, enrolled_cfg)
        plain: list[Rest] = []
        enrolled: list[Rest] = []
        for _ in range(max(1, args.rounds)):
            plain.append(at_rest(plain_cfg, args.dirs + 1, args.idle, shipping=False))
            enrolled.append(at_rest(enrolled_cfg, args.dirs + 1, args.idle, shipping=True))
        report(args, load0, plain, enrolled)
        return 0
    except (BenchError, AssertionError, subprocess.SubprocessError) as exc:
        print(f"agent_idle: {exc}", file=sys.stderr)
        return 1
    finally:
        if server.proc is not None:
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
