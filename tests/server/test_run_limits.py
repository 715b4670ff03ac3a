"""`custodes server run` limit options: bad values refused, chosen values enforced."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from protos.wire import pb
from tests.server.test_ingest_harness import CUSTODES, Chain, ServerProc, cli, converse, enrol_agent

Code = pb.Refusal.Code


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-batch-events", "0"),
        ("--max-message-bytes", "10"),
        ("--agent-events-per-second", "0"),
    ],
)
def test_a_limit_out_of_range_is_refused_with_a_hint(tmp_path: Path, flag: str, value: str) -> None:
    cli("server", "init", "--data", str(tmp_path / "data"))
    out = cli("server", "run", "--data", str(tmp_path / "data"), flag, value, check=False)
    assert out.returncode != 0
    assert f"{flag} {value} is out of range" in out.stderr
    assert "Traceback" not in out.stderr


class LimitedServer(ServerProc):
    def start(self) -> None:
        self.log = self.data / "server.log"
        cmd = [
            *CUSTODES,
            "server",
            "run",
            "--data",
            str(self.data),
            "--listen",
            self.address,
            "--enrol-listen",
            f"127.0.0.1:{self.enrol_port}",
            "--max-batch-events",
            "5",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.wait_serving()


def test_the_batch_limit_is_told_to_agents_and_enforced(tmp_path: Path) -> None:
    server = LimitedServer(tmp_path / "data")
    server.init()
    server.start()
    try:
        agent = enrol_agent(server, tmp_path / "agent", "host-01", "clinic-a")
        chain = Chain(agent)
        chain.grow(10)
        replies = converse(agent, server, [chain.batch(0, 10)])
        assert replies[0].resume.max_batch_events == 5
        assert replies[1].refusal.code == Code.CODE_TOO_LARGE
        ok = converse(agent, server, [chain.batch(0, 5)])
        assert ok[1].ack.next_seq == 5
    finally:
        server.kill()
