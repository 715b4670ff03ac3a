"""Forward-secure key rotation through the real pipeline: journal → shipper → server → export.

The agent rotates its signing key several times mid-stream; the real server must accept
every batch (learning each key only from a checkpoint of the previous one), store the keys,
and the export must verify offline, whole and windowed after the rotations. A checkpoint
signed by a key never announced, or by the old key after rotation, is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Limits
from agent.enroll import Credentials
from agent.events import Origin
from agent.journal import Journal
from agent.keys import epoch_verifier
from agent.records import AccessRecord, Attribution
from agent.ship import ShipLimits, Shipper
from agent.verify import verify_journal
from policies.model import Action, Decision, SubjectKind, Verdict
from protos.evidence.chain import extend
from protos.evidence.keys import generate_key, load_private_key
from protos.evidence.note import Checkpoint, NoteSigner, NoteVerifier
from protos.wire import pb
from server.datadir import DataDir
from server.query import export_document
from server.store import open_store
from server.verify_export import verify_document
from tests.e2e.test_shipping import wait_for
from tests.server.test_ingest_harness import (
    Agent,
    Chain,
    ServerProc,
    cli,
    converse,
    enrol_agent,
    make_events,
    running_server,
)

Code = pb.Refusal.Code


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    with running_server(tmp_path / "data") as s:
        yield s


def _store(server: ServerProc):  # type: ignore[no-untyped-def]
    return open_store(f"sqlite:///{server.data / 'custodes.db'}")


def test_an_agent_rotating_mid_stream_is_accepted_and_its_export_verifies(
    server: ServerProc, tmp_path: Path
) -> None:
    agent = enrol_agent(server, tmp_path / "agent", "host-07", "clinic-a")
    cfg = agent.cfg
    # Ship while writing, rotating the key every 700 events: 3000 events, 4 epochs.
    journal = Journal.open(
        cfg.journal_path,
        Origin(cfg.agent_id, cfg.client, "rot"),
        cfg.key_dir,
        Limits(group_events=64, epoch_events=700),
    )
    shipper = Shipper(
        journal,
        Credentials(cfg.state_dir),
        cfg.agent_id,
        cfg.client,
        limits=ShipLimits(max_batch_events=500, backoff_max=1.0),
    )
    stop = threading.Event()
    thread = shipper.run_in_thread(stop)
    try:
        _write(journal, 3000)
        assert journal.flush(30)
        wait_for(lambda: shipper.acked == journal.next_seq, "every event acknowledged")
        epoch = journal.epoch
    finally:
        stop.set()
        thread.join(10)
        journal.close()
    assert epoch >= 3
    store = _store(server)
    try:
        keys = store.agent_keys(cfg.agent_id)
        assert [k.epoch for k in keys] == list(range(1, epoch + 1))
        assert store.count_events(cfg.agent_id) == journal.next_seq
        assert store.integrity_events(cfg.agent_id) == []
        signer = NoteSigner("custodes-server", load_private_key(DataDir(server.data).signing_key))
        # A window that starts after two rotations: the export carries the KeyRotated runs.
        later = store.records(cfg.agent_id, keys[1].valid_from + 10, keys[1].valid_from + 11)[0]
        start = dt.datetime.fromtimestamp(later.unix_nanos / 1e9, dt.UTC)
        windowed = export_document(store, signer, cfg.client, start, None)
    finally:
        store.close()
    runs = windowed["agents"][0]["key_rotations"]
    assert [r["epoch"] for r in runs] == [1, 2]
    report = verify_document(json.loads(json.dumps(windowed)))
    assert report.agents[0].stream.epoch == epoch
    out = tmp_path / "export.json"
    cli("evidence", "export", "--data", str(server.data), "--client", cfg.client, "--out", str(out))
    latest = tmp_path / "agent-latest.note"
    latest.write_bytes(journal.latest_checkpoint())
    verified = cli("evidence", "verify", str(out), "--agent-checkpoint", str(latest))
    assert "verifies" in verified.stdout
    assert verify_journal(cfg.journal_path, _epoch0(agent), origin=cfg.origin).ok


def _epoch0(agent: Agent) -> NoteVerifier:
    return epoch_verifier(agent.cfg.key_dir, 0)


def _write(journal: Journal, count: int) -> None:
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
        if i % 250 == 249:
            assert journal.flush(30)  # the queue drains, so a rotation lands mid-stream


def _rotated(agent: Agent, seq: int, public: bytes, epoch: int) -> bytes:
    ev = pb.Event(agent_id=agent.cfg.agent_id, client=agent.cfg.client, boot_id="b", seq=seq)
    ev.key_rotated.epoch = epoch
    ev.key_rotated.public_key = public
    return ev.SerializeToString()


def _batch(chain: Chain, start: int, end: int, signer: NoteSigner, epoch: int) -> pb.EventBatch:
    b = chain.batch(start, end)
    head = chain.links[end - 1].hash
    b.checkpoint = signer.sign(Checkpoint(chain.agent.cfg.origin, end, head, (f"epoch {epoch}",)))
    return b


def _rotating_chain(agent: Agent) -> tuple[Chain, NoteSigner]:
    """seq 0..4 access events, seq 5 a KeyRotated to a new key, then seq 6..19 access events."""
    new = NoteSigner(agent.cfg.origin, generate_key())
    events = make_events(agent, 0, 5)
    events.append(_rotated(agent, 5, new.verifier().public, 1))
    events += make_events(agent, 6, 14)
    chain = Chain(agent)
    chain.links = extend(chain.prev(0), 0, events)
    return chain, new


@pytest.fixture
def agent(server: ServerProc, tmp_path: Path) -> Agent:
    return enrol_agent(server, tmp_path / "agent", "host-01", "clinic-a")


def test_the_new_key_is_learnt_and_kept_across_streams(server: ServerProc, agent: Agent) -> None:
    chain, new = _rotating_chain(agent)
    first = converse(agent, server, [_batch(chain, 0, 6, agent.signer, 0)])
    assert first[1].ack.next_seq == 6
    # A new stream loads the learnt key from the store.
    second = converse(agent, server, [_batch(chain, 6, 12, new, 1)])
    assert second[1].ack.next_seq == 12


def test_the_old_key_is_refused_after_rotation(server: ServerProc, agent: Agent) -> None:
    chain, _ = _rotating_chain(agent)
    converse(agent, server, [_batch(chain, 0, 6, agent.signer, 0)])
    replies = converse(agent, server, [_batch(chain, 6, 12, agent.signer, 0)])
    assert replies[1].refusal.code == Code.CODE_BAD_SIGNATURE
    assert "stolen copy" in replies[1].refusal.message


def test_a_checkpoint_signed_by_a_key_never_announced_is_refused(
    server: ServerProc, agent: Agent
) -> None:
    chain = Chain(agent)
    chain.grow(10)
    stranger = NoteSigner(agent.cfg.origin, generate_key())
    replies = converse(agent, server, [_batch(chain, 0, 10, stranger, 1)])
    assert replies[1].refusal.code == Code.CODE_UNKNOWN_KEY
    assert "never announced" in replies[1].refusal.message
    store = _store(server)
    try:
        assert store.count_events("host-01") == 0
        assert [r.kind for r in store.integrity_events("host-01")] == ["unknown_key"]
    finally:
        store.close()


def test_a_rotation_signed_only_by_the_new_key_is_refused(server: ServerProc, agent: Agent) -> None:
    chain, new = _rotating_chain(agent)
    replies = converse(agent, server, [_batch(chain, 0, 12, new, 1)])
    assert replies[1].refusal.code == Code.CODE_UNKNOWN_KEY
