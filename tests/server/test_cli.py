"""The server's admin commands, run as real processes: plain errors, never a traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.test_ingest_harness import (
    Chain,
    ServerProc,
    cli,
    converse,
    enrol_agent,
    running_server,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    with running_server(tmp_path / "data") as s:
        yield s


def test_init_refuses_an_initialised_directory(server: ServerProc) -> None:
    done = cli("server", "init", "--data", str(server.data), check=False)
    assert done.returncode == 1
    assert "already initialised" in done.stderr
    assert "hint:" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["server", "run"],
        ["server", "enroll-token", "--client", "c"],
        ["server", "agent", "revoke", "x"],
        ["events"],
        ["evidence", "export", "--client", "c", "--out", "/dev/null"],
    ],
)
def test_commands_on_an_uninitialised_directory_say_so(args: list[str], tmp_path: Path) -> None:
    done = cli(*args, "--data", str(tmp_path / "nothing"), check=False)
    assert done.returncode == 1
    assert "is not an initialised Custodes data directory" in done.stderr
    assert "custodes server init --data" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("listen", ["7443", "127.0.0.1:", "127.0.0.1:99999", ":7443"])
def test_run_refuses_a_bad_listen_address(server: ServerProc, listen: str) -> None:
    done = cli("server", "run", "--data", str(server.data), "--listen", listen, check=False)
    assert done.returncode == 1
    assert "is not HOST:PORT" in done.stderr


def test_revoke_of_an_unknown_agent_is_an_error(server: ServerProc) -> None:
    done = cli("server", "agent", "revoke", "nobody", "--data", str(server.data), check=False)
    assert done.returncode == 1
    assert "'nobody' is not enrolled here" in done.stderr


def test_events_lists_what_was_stored(server: ServerProc, tmp_path: Path) -> None:
    agent = enrol_agent(server, tmp_path / "a", "host-01", "clinic-a")
    chain = Chain(agent)
    chain.grow(6)
    converse(agent, server, [chain.batch(0, 6)])
    lines = cli("events", "--data", str(server.data), "--json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["seq"] for r in rows] == list(range(6))
    denied = cli("events", "--data", str(server.data), "--decision", "deny").stdout.splitlines()
    assert len(denied) == 2  # seq 0 and 3 (make_events denies every third)
    assert all("deny" in line for line in denied)
    none = cli("events", "--data", str(server.data), "--client", "other").stdout
    assert none == ""


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    s = ServerProc(tmp_path / "d")
    s.init()
    s.start()
    assert s.proc is not None
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0
    assert "server_stopped" in s.log_text()


def test_server_speaks_tls_only(server: ServerProc) -> None:
    # A plaintext HTTP/2 client gets nothing useful: the port only does TLS.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import socket,sys;s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),5);"
            "s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n');s.settimeout(5);"
            "d=s.recv(100);print(len(d), d[:1].hex())",
            str(server.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # The TLS server answers a non-TLS hello with a TLS alert (0x15) or closes the socket.
    out = done.stdout.split()
    assert out == [] or out[0] == "0" or out[1] == "15", done.stdout + done.stderr
