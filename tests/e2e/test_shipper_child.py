"""The enrolled daemon ships from a child process: real daemon, real child, real server.

The child (agent/shipper_proc.py) is killed -9 mid-stream: the daemon restarts it and the
server ends with exactly the journal's events. The daemon is killed -9: the child ends by
itself. The daemon never maps grpc; the child does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import load_config
from agent.events import Origin
from agent.journal import Journal
from protos.wire import pb
from server.store import open_store
from tests.e2e.jit_world import CLIENT, agreement_text
from tests.e2e.test_shipping import expected_leaves, fill, server_hashes
from tests.server.test_ingest_harness import CUSTODES, ServerProc, enrol_agent, running_server

WAIT_S = 60.0
CHILD_EXIT_BOUND_S = 15.0


@dataclass
class Daemon:
    """A `custodes agent run` process and its JSON log lines (the child's too)."""

    proc: subprocess.Popen[str]
    lines: list[dict[str, object]] = field(default_factory=list)

    def read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with contextlib.suppress(json.JSONDecodeError):
                self.lines.append(json.loads(line))

    def find(self, event: str) -> list[dict[str, object]]:
        return [x for x in list(self.lines) if x.get("event") == event]

    def wait_for(self, event: str, count: int = 1, timeout: float = WAIT_S) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(event)
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = "\n".join(json.dumps(x) for x in self.lines[-30:])
        raise AssertionError(f"no {event} (x{count}) in the daemon's log:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next(x for x in status.splitlines() if x.startswith("State:"))
    return "Z" not in state.split()[1]


def maps_grpc(pid: int) -> bool:
    """True when the process has grpc's native module mapped (grpc was imported)."""
    return "cygrpc" in Path(f"/proc/{pid}/maps").read_text()


def until(predicate, what: str, timeout: float = WAIT_S) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    with running_server(tmp_path / "data") as s:
        yield s


@pytest.fixture
def config(server: ServerProc, tmp_path: Path) -> Path:
    """An enrolled agent in monitor mode (nothing gated), heartbeats every second."""
    agent = enrol_agent(server, tmp_path / "agent", "host-child", CLIENT)
    area = tmp_path / "area"
    area.mkdir()
    agent.config_path.parent.joinpath("agreement.yaml").write_text(agreement_text(area, "v1"))
    agent.config_path.write_text(
        f'agent_id = "host-child"\nclient = "{CLIENT}"\nagreement = "agreement.yaml"\n'
        'state_dir = "state"\nmode = "monitor"\n[limits]\nheartbeat_seconds = 1.0\n'
    )
    return agent.config_path


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def start(config: Path, daemons: list[Daemon]) -> Daemon:
    proc = subprocess.Popen(
        [*CUSTODES, "--log-format", "json", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    d = Daemon(proc)
    daemons.append(d)
    threading.Thread(target=d.read, daemon=True).start()
    d.wait_for("agent_started")
    return d


def child_pid(d: Daemon, count: int = 1) -> int:
    pid = d.wait_for("shipper_started", count)["pid"]
    assert isinstance(pid, int)
    return pid


def journal_hashes(config: Path) -> list[bytes]:
    cfg = load_config(config)
    journal = Journal.open(cfg.journal_path, Origin(cfg.agent_id, cfg.client, "read"), cfg.key_dir)
    try:
        hashes: list[bytes] = []
        seq = 0
        while seq < journal.checkpointed:
            batch = journal.read_batch(seq, 100_000, 1 << 30)
            assert batch is not None
            hashes += [k.hash for k in batch.links]
            seq = batch.links[-1].seq + 1
        return hashes
    finally:
        journal.close()


@pytest.mark.slow
def test_a_killed_shipper_child_is_restarted_and_nothing_is_lost_or_doubled(
    server: ServerProc, config: Path, daemons: list[Daemon]
) -> None:
    filled = len(fill(load_config(config), 120_000))
    d = start(config, daemons)
    first = child_pid(d)
    until(lambda: server_hashes(server, "host-child")[0] > 0, "the first stored batch")
    os.kill(first, signal.SIGKILL)  # kill -9 mid-stream
    partial = server_hashes(server, "host-child")[0]
    exited = d.wait_for("shipper_exited")
    assert exited["code"] == -signal.SIGKILL
    second = child_pid(d, 2)
    assert second != first

    def caught_up() -> bool:
        beats = d.find("heartbeat")
        return bool(beats) and server_hashes(server, "host-child")[0] == beats[-1]["next_seq"]

    until(caught_up, "the server holding every journaled event", timeout=120.0)
    d.stop()
    count, leaves = server_hashes(server, "host-child")
    hashes = journal_hashes(config)
    assert partial < filled
    assert count > filled  # the fill, then what the daemon journaled at start
    assert len(leaves) == count  # stored once each
    assert leaves == expected_leaves(hashes[:count])


def test_the_shipper_child_ends_by_itself_when_the_daemon_is_killed(
    config: Path, daemons: list[Daemon]
) -> None:
    d = start(config, daemons)
    child = child_pid(d)
    d.wait_for("ship_resumed")
    d.proc.kill()  # kill -9: no close, no SIGTERM from the daemon
    d.proc.wait(WAIT_S)
    until(lambda: not alive(child), "the orphaned shipper to exit", timeout=CHILD_EXIT_BOUND_S)


def stored_heartbeat(server: ServerProc, agent_id: str) -> pb.Heartbeat | None:
    store = open_store(f"sqlite:///{server.data / 'custodes.db'}")
    try:
        row = store.get_agent(agent_id)
    finally:
        store.close()
    if row is None or row.last_heartbeat is None:
        return None
    return pb.Heartbeat.FromString(row.last_heartbeat)


def test_the_enrolled_daemon_never_loads_grpc_and_its_child_does(
    server: ServerProc, config: Path, daemons: list[Daemon]
) -> None:
    d = start(config, daemons)
    child = child_pid(d)
    d.wait_for("ship_resumed")
    assert maps_grpc(child)
    assert not maps_grpc(d.proc.pid)
    # The daemon's heartbeat reaches the server through the child, with the memory of both.
    until(
        lambda: (
            (b := stored_heartbeat(server, "host-child")) is not None
            and b.mode == pb.GATE_MODE_MONITOR
            and b.agreement_version == "v1"
            and b.rss_bytes > 0
            and b.shipper_rss_bytes > 0
        ),
        "the daemon's heartbeat, with its shipping child's memory, on the server",
    )
    d.stop()
    stopped = d.wait_for("shipper_stopped")
    assert stopped["pid"] == child
    assert not alive(child)
