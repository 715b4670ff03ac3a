"""What stays resident in the agent daemon: libraries needed only at start are never imported.

pydantic and ruamel.yaml (the agreement is compiled in a child: policies.isolated),
importlib.metadata (protos.cli reads the entry points itself), asyncio (structlog imports
it for async methods no process calls: protos.logs), psutil (the heartbeat reads /proc) and
ssl (only `agent enroll` needs it) cost about 13 MB together for the life of the process; grpc
(about 17 MB once running) loads only in the shipper child (agent/ship_link.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AGREEMENT = ROOT / "policies" / "agreements" / "harbourside-gp.yaml"
NOT_IN_THE_DAEMON = ("pydantic", "pydantic_core", "ruamel", "asyncio", "psutil", "ssl", "email")

PROBE = """\
import sys
from pathlib import Path
from protos import cli
cli.build_parser(argv=["agent", "run"])
import agent.daemon, agent.gate, agent.marks, agent.heartbeat
meter = agent.heartbeat.HeartbeatMeter()
meter.sample(mode="enforcing", mode_note="", next_seq=1, queue_depth=0, marks=1,
             agreement_version="v", dropped=0)
compiled = agent.daemon._load(Path(sys.argv[1]))
assert compiled.area_roots(), compiled
heavy = set(sys.argv[2].split(","))
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m == "importlib.metadata"))
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_the_daemon_never_imports_what_it_needs_only_at_start() -> None:
    out = _run(PROBE, str(AGREEMENT), ",".join(NOT_IN_THE_DAEMON))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


SHIPPING_PROBE = """\
import sys
from protos import cli
cli.build_parser(argv=["agent", "run"])
import agent.daemon
# What an enrolled daemon's _start_shipping imports: the shipper itself runs in a child.
import agent.enroll, agent.delivery, agent.ship_link, agent.ship_ipc
print(sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "asyncio")
             or m in ("agent.ship", "protos.custodes_pb2_grpc")))
"""


def test_the_enrolled_daemon_never_imports_grpc() -> None:
    out = _run(SHIPPING_PROBE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_structlog_async_methods_still_work_without_asyncio_at_import() -> None:
    code = """\
import sys
from protos import logs
assert "asyncio" not in sys.modules
logs.configure("info", "json")
import asyncio, structlog
async def main() -> None:
    await structlog.get_logger().ainfo("async_logging_works", n=1)
asyncio.run(main())
"""
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert '"event": "async_logging_works"' in out.stderr
