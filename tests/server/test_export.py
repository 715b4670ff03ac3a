"""Export from a real server's store, then verify offline; tampering is named plainly."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.enroll import make_csr
from protos.evidence import errors as ev
from protos.evidence.keys import generate_key, load_private_key
from protos.evidence.merkle import MerkleTree, leaf_hash
from protos.evidence.note import NoteSigner
from protos.wire import pb, rpc
from server import query
from server.datadir import DataDir
from server.store import open_store
from server.verify_export import ExportError, prefix_blocks, tree_root, verify_document
from tests.server.test_ingest_harness import (
    Agent,
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


@pytest.fixture
def shipped(server: ServerProc, tmp_path: Path) -> tuple[Agent, Chain, Path]:
    """An agent that shipped 25 events in three batches; the export file of its client."""
    agent = enrol_agent(server, tmp_path / "agent", "host-01", "clinic-a")
    chain = Chain(agent)
    chain.grow(30)
    converse(agent, server, [chain.batch(0, 10, 1), chain.batch(10, 20, 2), chain.batch(20, 25, 3)])
    out = tmp_path / "export.json"
    cli("evidence", "export", "--data", str(server.data), "--client", "clinic-a", "--out", str(out))
    return agent, chain, out


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_export_verifies_offline(shipped: tuple[Agent, Chain, Path]) -> None:
    _, _, out = shipped
    done = cli("evidence", "verify", str(out))
    assert "agent host-01: events 0..24 (25), 3 agent checkpoints" in done.stdout


def test_export_holds_events_checkpoints_and_keys(shipped: tuple[Agent, Chain, Path]) -> None:
    _, _, out = shipped
    doc = load(out)
    agent = doc["agents"][0]
    assert len(agent["events"]) == 25
    assert len(agent["agent_checkpoints"]) == 3
    assert agent["vkey"].startswith("custodes.agent/clinic-a/host-01+")
    assert doc["server_vkey"].startswith("custodes-server+")
    assert agent["server_checkpoint"].startswith("custodes.server/host-01\n25\n")


def test_deleted_event_is_detected(shipped: tuple[Agent, Chain, Path], tmp_path: Path) -> None:
    _, _, out = shipped
    doc = load(out)
    del doc["agents"][0]["events"][7]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    done = cli("evidence", "verify", str(bad), check=False)
    assert done.returncode == 1
    assert "an event is missing from the export" in done.stderr
    assert "skips seq 7" in done.stderr


def test_missing_tail_is_detected_against_the_agents_checkpoint(
    shipped: tuple[Agent, Chain, Path], tmp_path: Path
) -> None:
    _, chain, out = shipped
    latest = tmp_path / "agent-latest.note"
    latest.write_bytes(chain.checkpoint(30))  # the agent journaled 30; the export holds 25
    done = cli("evidence", "verify", str(out), "--agent-checkpoint", str(latest), check=False)
    assert done.returncode == 1
    assert "history is missing" in done.stderr
    assert "covers 30 events, but the export ends after 25" in done.stderr


def test_agent_checkpoint_within_the_export_passes(
    shipped: tuple[Agent, Chain, Path], tmp_path: Path
) -> None:
    _, chain, out = shipped
    latest = tmp_path / "agent-latest.note"
    latest.write_bytes(chain.checkpoint(25))
    cli("evidence", "verify", str(out), "--agent-checkpoint", str(latest))


def test_dropped_tail_with_its_checkpoints_is_caught_by_the_server_root(
    shipped: tuple[Agent, Chain, Path],
) -> None:
    _, _, out = shipped
    doc = load(out)
    entry = doc["agents"][0]
    entry["events"] = entry["events"][:20]
    entry["agent_checkpoints"] = entry["agent_checkpoints"][:2]
    with pytest.raises(ev.EvidenceError, match="server checkpoint covers 25"):
        verify_document(doc)


def test_modified_event_bytes_are_detected(shipped: tuple[Agent, Chain, Path]) -> None:
    _, _, out = shipped
    doc = load(out)
    doc["agents"][0]["events"][3]["event"] = "AAAA"
    with pytest.raises(ev.ModifiedEventError):
        verify_document(doc)


@pytest.mark.parametrize(
    "doc", [None, [], {}, {"format": "other"}, {"format": "custodes-evidence-export/v1"}]
)
def test_not_an_export_is_refused(doc: object) -> None:
    with pytest.raises(ev.EvidenceError):
        verify_document(doc)


def test_export_from_a_later_window_rebuilds_the_server_root(
    shipped: tuple[Agent, Chain, Path],
) -> None:
    _, _, out = shipped
    doc = load(out)
    entry = doc["agents"][0]
    # Keep seq 13..24 and give the verifier the prefix as aligned subtree hashes.
    leaves = [
        leaf_hash(e["seq"].to_bytes(8, "big") + base64.b64decode(e["chain_hash"]))
        for e in entry["events"]
    ]

    tree = MerkleTree(leaves)
    prefix = {}
    for a, b in prefix_blocks(13):
        sub = MerkleTree(leaves[a:b])
        prefix[(a, b)] = sub.root()
    assert tree_root(prefix, leaves[13:], 13) == tree.root()
    entry["prev_hash"] = entry["events"][12]["chain_hash"]
    entry["events"] = entry["events"][13:]
    entry["first_seq"] = 13
    entry["prefix"] = [[a, b, base64.b64encode(h).decode()] for (a, b), h in prefix.items()]
    entry["agent_checkpoints"] = entry["agent_checkpoints"][1:]
    report = verify_document(doc)
    assert report.agents[0].stream.first_seq == 13


def test_empty_export_refuses_to_vouch_for_anything() -> None:
    with pytest.raises(ExportError, match="nothing to verify"):
        verify_document(
            {
                "format": "custodes-evidence-export/v1",
                "client": "c",
                "server_vkey": NoteSigner("custodes-server", generate_key()).vkey(),
                "agents": [],
            }
        )


def test_person_of_the_client_queries_and_exports_over_mutual_tls(
    server: ServerProc, shipped: tuple[Agent, Chain, Path]
) -> None:
    key_pem, csr = make_csr("auditor-1")
    ca = (server.data / "ca" / "ca.crt").read_bytes()
    token = server.token("clinic-a", "--kind", "person", "--name", "auditor-1")
    with grpc.secure_channel(
        f"127.0.0.1:{server.enrol_port}", grpc.ssl_channel_credentials(ca)
    ) as ch:
        reply = rpc.EnrollmentStub(ch).Enroll(
            pb.EnrollRequest(token=token, csr_pem=csr, kind="person"), timeout=10
        )
    creds = grpc.ssl_channel_credentials(ca, key_pem, reply.certificate_pem)
    with grpc.secure_channel(server.address, creds) as ch:
        stub = rpc.QueryStub(ch)
        events = stub.Events(pb.EventQuery(verdict=pb.VERDICT_DENY), timeout=10).events
        assert [e.seq for e in events] == [0, 3, 6, 9, 12, 15, 18, 21, 24]
        data = b"".join(c.data for c in stub.Export(pb.ExportRequest(), timeout=30))
        assert verify_document(json.loads(data)).agents[0].stream.events == 25
        with pytest.raises(grpc.RpcError) as info:
            stub.Events(pb.EventQuery(client="clinic-b"), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_streamed_export_is_the_in_memory_document(
    shipped: tuple[Agent, Chain, Path], server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, out = shipped
    monkeypatch.setattr(query, "PAGE", 4)  # several pages of events and of the window scan
    store = open_store(f"sqlite:///{server.data / 'custodes.db'}")
    signer = NoteSigner(query.SERVER_KEY_NAME, load_private_key(DataDir(server.data).signing_key))
    streamed = io.BytesIO()
    try:
        doc = query.export_document(store, signer, "clinic-a", None, None)
        count, agents = query.write_export(store, signer, "clinic-a", None, None, out=streamed)
    finally:
        store.close()
    assert (count, agents) == (25, 1)
    written, from_cli = json.loads(streamed.getvalue()), load(out)
    for d in (doc, written, from_cli):
        d.pop("created")
    assert written == doc == from_cli
    assert [e["seq"] for e in doc["agents"][0]["events"]] == list(range(25))
