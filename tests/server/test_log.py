"""The server's per-agent Merkle log: roots, restart, signed checkpoints, consistency proofs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.evidence.errors import BadSignatureError, InconsistentTreeError, UnknownKeyError
from protos.evidence.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from protos.evidence.note import NoteSigner, NoteVerifier, parse_checkpoint, verify_checkpoint
from server.log import LogError, ServerLog, origin
from server.store import Store, StoredRecord, open_store
from tests.server.conftest import agent_row, append, records

AGENT = "clinic-01"


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner("custodes.server.test", Ed25519PrivateKey.generate())


def commit(store: Store, log: ServerLog, batch: list[StoredRecord]) -> bytes:
    """What ingest does per batch: store, append to the log, sign."""
    append(store, batch)
    log.append(batch[0].agent_id, batch)
    note, _ = log.checkpoint(batch[0].agent_id)
    return note


def expected_tree(recs: list[StoredRecord]) -> MerkleTree:
    return MerkleTree(leaf_hash(r.seq.to_bytes(8, "big") + r.chain_hash) for r in recs)


def test_root_equals_a_tree_over_the_same_leaves(store: Store, signer: NoteSigner) -> None:
    store.add_agent(agent_row())
    log = ServerLog(store, signer)
    everything = records(AGENT, 0, 37)
    for start, end in ((0, 1), (1, 8), (8, 30), (30, 37)):
        commit(store, log, everything[start:end])
    assert log.size(AGENT) == 37
    assert log.root(AGENT) == expected_tree(everything).root()


def test_log_is_rebuilt_from_the_store_at_restart(store: Store, signer: NoteSigner) -> None:
    store.add_agent(agent_row())
    first = ServerLog(store, signer)
    commit(store, first, records(AGENT, 0, 20))
    note = commit(store, first, records(AGENT, 20, 5))
    restarted = ServerLog(store, signer)
    assert restarted.size(AGENT) == 25
    assert restarted.root(AGENT) == first.root(AGENT)
    assert restarted.checkpoint(AGENT) == (note, 25)


def test_checkpoint_is_signed_by_the_server_key(store: Store, signer: NoteSigner) -> None:
    store.add_agent(agent_row())
    log = ServerLog(store, signer)
    note = commit(store, log, records(AGENT, 0, 9))
    verifier = NoteVerifier.from_vkey(signer.vkey())
    cp = verify_checkpoint(note, [verifier], origin=f"custodes.server/{AGENT}")
    assert (cp.origin, cp.size, cp.root) == (origin(AGENT), 9, log.root(AGENT))
    assert store.latest_server_checkpoint(AGENT) == note
    stranger = NoteSigner("custodes.server.test", Ed25519PrivateKey.generate()).verifier()
    with pytest.raises(UnknownKeyError):
        verify_checkpoint(note, [stranger])
    tampered = note.replace(b"\n9\n", b"\n8\n", 1)
    assert tampered != note
    with pytest.raises(BadSignatureError):
        verify_checkpoint(tampered, [verifier])


def test_consistency_proof_between_two_saved_sizes(store: Store, signer: NoteSigner) -> None:
    store.add_agent(agent_row())
    log = ServerLog(store, signer)
    commit(store, log, records(AGENT, 0, 5))
    commit(store, log, records(AGENT, 5, 8))
    commit(store, log, records(AGENT, 13, 100))
    verifier = signer.verifier()
    old = verify_checkpoint(store.server_checkpoint(AGENT, 5) or b"", [verifier])
    new = verify_checkpoint(store.server_checkpoint(AGENT, 13) or b"", [verifier])
    latest = verify_checkpoint(store.latest_server_checkpoint(AGENT) or b"", [verifier])
    for a, b in ((old, new), (old, latest), (new, latest)):
        proof = log.consistency_proof(AGENT, a.size, b.size)
        verify_consistency(a.size, b.size, a.root, b.root, proof)
    rec = store.events(agent_id=AGENT, limit=200)[42]
    proof = log.inclusion_proof(AGENT, 42)
    verify_inclusion(leaf_hash(rec.leaf_data), 42, latest.size, proof, latest.root)


def test_rewritten_history_fails_the_consistency_check(tmp_path: Path, signer: NoteSigner) -> None:
    honest, forged = open_store(tmp_path / "honest.db"), open_store(tmp_path / "forged.db")
    for s in (honest, forged):
        s.add_agent(agent_row())
    witnessed = commit(honest, ServerLog(honest, signer), records(AGENT, 0, 10))
    rewritten = records(AGENT, 0, 3) + records(AGENT, 3, 1, salt=b"x") + records(AGENT, 4, 8)
    forged_log = ServerLog(forged, signer)
    offered = commit(forged, forged_log, rewritten)
    old, _ = parse_checkpoint(witnessed)
    new, _ = parse_checkpoint(offered)
    with pytest.raises(InconsistentTreeError):
        verify_consistency(
            old.size, new.size, old.root, new.root, forged_log.consistency_proof(AGENT, 10)
        )
    honest.close()
    forged.close()


def test_lagging_log_catches_up_from_the_store(store: Store, signer: NoteSigner) -> None:
    store.add_agent(agent_row())
    server_a, server_b = ServerLog(store, signer), ServerLog(store, signer)
    everything = records(AGENT, 0, 30)
    commit(store, server_a, everything[:10])
    commit(store, server_b, everything[10:20])  # B loads 0..19 from the store
    commit(store, server_a, everything[20:])  # A has 10 leaves: catches up before appending
    assert server_b.catch_up(AGENT) == 30
    assert server_a.root(AGENT) == server_b.root(AGENT)
    assert server_a.root(AGENT) == expected_tree(everything).root()


def test_replayed_records_do_not_grow_the_log(store: Store, signer: NoteSigner) -> None:
    store.add_agent(agent_row())
    log = ServerLog(store, signer)
    batch = records(AGENT, 0, 6)
    commit(store, log, batch)
    assert log.append(AGENT, batch) == 6
    assert log.append(AGENT, batch[2:]) == 6
    assert log.root(AGENT) == expected_tree(batch).root()


@pytest.mark.parametrize(
    "batch",
    [
        records(AGENT, 0, 1) + records(AGENT, 2, 1),
        records(AGENT, 0, 1) + records("other", 1, 1),
        records("other", 0, 2),
    ],
    ids=["hole", "mixed-agents", "other-agent"],
)
def test_records_that_do_not_belong_are_refused(
    store: Store, signer: NoteSigner, batch: list[StoredRecord]
) -> None:
    store.add_agent(agent_row())
    log = ServerLog(store, signer)
    with pytest.raises(LogError):
        log.append(AGENT, batch)
    assert log.size(AGENT) == 0


def test_log_ahead_of_the_store_is_refused(store: Store, signer: NoteSigner) -> None:
    store.add_agent(agent_row())
    log = ServerLog(store, signer)
    with pytest.raises(LogError, match="catching up"):
        log.append(AGENT, records(AGENT, 3, 2))  # never stored: the store has nothing


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=70), min_size=1, max_size=8))
def test_any_batching_gives_the_same_root(cuts: list[int]) -> None:
    signer = NoteSigner("custodes.server.test", Ed25519PrivateKey.generate())
    total = sum(cuts)
    everything = records(AGENT, 0, total)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "s.db")
        store.add_agent(agent_row())
        log, start = ServerLog(store, signer), 0
        for n in cuts:
            commit(store, log, everything[start : start + n])
            start += n
        assert log.root(AGENT) == expected_tree(everything).root()
        assert ServerLog(store, signer).root(AGENT) == log.root(AGENT)
        store.close()
