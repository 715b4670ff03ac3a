"""`custodes server run` limit options: bad values refused, chosen values enforced."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from protos.wire import pb
from tests.server.test_ingest_harness import (
    Chain,
    ServerProc,
    cli,
    converse,
    enrol_agent,
    free_port,
)

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


@pytest.mark.parametrize("flag", ["--listen", "--enrol-listen", "--console"])
def test_a_port_in_use_is_a_clear_error_not_a_crash(tmp_path: Path, flag: str) -> None:
    data = str(tmp_path / "data")
    cli("server", "init", "--data", data)
    with socket.socket() as held:  # another process's listener, as far as the server knows
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        taken = f"127.0.0.1:{held.getsockname()[1]}"
        ports = {f: f"127.0.0.1:{free_port()}" for f in ("--listen", "--enrol-listen", "--console")}
        ports[flag] = taken
        args = [a for f, address in ports.items() for a in (f, address)]
        out = cli("server", "run", "--data", data, *args, check=False)
    assert out.returncode != 0
    assert f"cannot listen on {taken} ({flag})" in out.stderr
    assert f"give {flag} another HOST:PORT" in out.stderr  # the hint
    assert "internal error" not in out.stderr
    assert "Traceback" not in out.stderr


class LimitedServer(ServerProc):
    def extra_args(self) -> list[str]:
        return ["--max-batch-events", "5"]


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


def test_the_harness_starts_on_new_ports_when_one_was_taken(tmp_path: Path) -> None:
    """free_port's ports are free only when picked: a first start that cannot listen (the
    server says so) picks new ones, so a port taken meanwhile is not a test failure."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        taken = int(held.getsockname()[1])
        server = ServerProc(tmp_path / "data", port=taken)
        server.init()
        server.start()
        try:
            assert server.port != taken
            assert server.served
        finally:
            server.kill()
