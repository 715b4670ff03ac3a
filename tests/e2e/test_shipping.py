"""Journal → shipper → server, over real mutual TLS, through crashes on either side.

Afterwards the server must hold exactly the journal's events: the same count and the same
chain hashes, none twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig, Limits
from agent.enroll import Credentials
from agent.events import Origin
from agent.journal import Journal
from agent.records import AccessRecord, Attribution
from agent.ship import ShipLimits, Shipper
from policies.model import Action, Decision, SubjectKind, Verdict
from protos.evidence.merkle import leaf_hash
from server.store import open_store
from tests.server.test_ingest_harness import ServerProc, enrol_agent, running_server

WAIT_S = 120.0
ROOT = Path(__file__).resolve().parents[2]

SHIPPER = """
import sys, threading, time
from agent.config import load_config
from agent.enroll import Credentials
from agent.events import Origin
from agent.journal import Journal
from agent.ship import ShipLimits, Shipper
cfg = load_config(__import__("pathlib").Path(sys.argv[1]))
journal = Journal.open(cfg.journal_path, Origin(cfg.agent_id, cfg.client, "ship"), cfg.key_dir)
shipper = Shipper(journal, Credentials(cfg.state_dir), cfg.agent_id, cfg.client,
                  limits=ShipLimits(max_batch_events=int(sys.argv[2]), backoff_max=1.0))
stop = threading.Event()
thread = shipper.run_in_thread(stop)
deadline = time.monotonic() + 120
while shipper.acked < journal.next_seq and time.monotonic() < deadline:
    time.sleep(0.02)
stop.set(); thread.join(10); journal.close()
print("acked", shipper.acked, "of", journal.next_seq, flush=True)
sys.exit(0 if shipper.acked == journal.next_seq else 1)
"""


def fill(cfg: AgentConfig, count: int) -> list[bytes]:
    """Journal `count` access records; return the chain hashes of the whole journal."""
    journal = Journal.open(
        cfg.journal_path, Origin(cfg.agent_id, cfg.client, "fill"), cfg.key_dir, Limits()
    )
    try:
        decision = Decision(
            verdict=Verdict.ALLOW,
            reason="grant covers it",
            rule="grant",
            subject_kind=SubjectKind.TECHNICIAN,
            technician="tech1",
            area="records",
        )
        who = Attribution(pid=100, uid=0, loginuid=1000, account="root", login_account="tech1")
        for i in range(count):
            journal.record(
                AccessRecord(
                    unix_nanos=time.time_ns(),
                    attribution=who,
                    path=f"/srv/records/patient-{i}.pdf",
                    action=Action.READ,
                    decision=decision,
                    enforcing=True,
                )
            )
            if i % 20000 == 19999:
                assert journal.flush(30)
        assert journal.flush(30)
        hashes: list[bytes] = []
        seq = 0
        while seq < journal.checkpointed:
            batch = journal.read_batch(seq, 100_000, 1 << 30)
            assert batch is not None
            hashes += [k.hash for k in batch.links]
            seq = batch.links[-1].seq + 1
        assert len(hashes) == journal.next_seq
        return hashes
    finally:
        journal.close()


def server_hashes(server: ServerProc, agent_id: str) -> tuple[int, list[bytes]]:
    store = open_store(f"sqlite:///{server.data / 'custodes.db'}")
    try:
        return store.count_events(agent_id), store.leaf_hashes(agent_id, 0)
    finally:
        store.close()


def expected_leaves(hashes: list[bytes]) -> list[bytes]:
    return [leaf_hash(seq.to_bytes(8, "big") + h) for seq, h in enumerate(hashes)]


def wait_for(predicate, what: str, timeout: float = WAIT_S) -> None:  # type: ignore[no-untyped-def]
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


@pytest.mark.slow
def test_server_killed_mid_stream_loses_and_duplicates_nothing(
    server: ServerProc, tmp_path: Path
) -> None:
    agent = enrol_agent(server, tmp_path / "agent", "host-01", "clinic-a")
    hashes = fill(agent.cfg, 30_000)
    journal = Journal.open(
        agent.cfg.journal_path, Origin("host-01", "clinic-a", "ship"), agent.cfg.key_dir
    )
    shipper = Shipper(
        journal,
        Credentials(agent.cfg.state_dir),
        "host-01",
        "clinic-a",
        limits=ShipLimits(max_batch_events=500, backoff_max=0.5),
    )
    stop = threading.Event()
    thread = shipper.run_in_thread(stop)
    try:
        wait_for(lambda: shipper.acked > 0, "the first ack")
        server.kill()  # kill -9 mid-stream
        acked_at_kill = shipper.acked
        server.start()
        wait_for(lambda: shipper.acked == len(hashes), "every event acknowledged")
    finally:
        stop.set()
        thread.join(15)
        journal.close()
    count, leaves = server_hashes(server, "host-01")
    assert acked_at_kill < len(hashes)
    assert count == len(hashes)
    assert leaves == expected_leaves(hashes)
    assert shipper.stats["sessions"] >= 2


@pytest.mark.slow
def test_shipper_killed_mid_batch_loses_and_duplicates_nothing(
    server: ServerProc, tmp_path: Path
) -> None:
    agent = enrol_agent(server, tmp_path / "agent", "host-02", "clinic-a")
    hashes = fill(agent.cfg, 40_000)
    cmd = [sys.executable, "-c", SHIPPER, str(agent.config_path), "200"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: server_hashes(server, "host-02")[0] > 0, "the first stored batch")
        first.send_signal(signal.SIGKILL)  # kill -9 mid-batch
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    partial = server_hashes(server, "host-02")[0]
    assert partial < len(hashes)
    second = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=WAIT_S, check=False
    )
    assert second.returncode == 0, second.stdout + second.stderr[-2000:]
    count, leaves = server_hashes(server, "host-02")
    assert count == len(hashes)
    assert leaves == expected_leaves(hashes)


def test_shipper_keeps_the_server_checkpoint_it_verified(
    server: ServerProc, tmp_path: Path
) -> None:
    agent = enrol_agent(server, tmp_path / "agent", "host-03", "clinic-a")
    hashes = fill(agent.cfg, 1000)
    cmd = [sys.executable, "-c", SHIPPER, str(agent.config_path), "300"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    note = (agent.cfg.state_dir / "ship" / "server-checkpoint.note").read_bytes()
    assert note.startswith(f"custodes.server/host-03\n{len(hashes)}\n".encode())
    assert (agent.cfg.state_dir / "ship" / "server-checkpoint.note").stat().st_mode & 0o077 == 0
