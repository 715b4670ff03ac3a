"""AgentChannel ingest against a real server process over mutual TLS."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.enroll import make_csr
from protos.evidence.chain import GENESIS, extend
from protos.evidence.keys import generate_key
from protos.evidence.note import NoteSigner
from protos.wire import pb, rpc
from server import enrol
from server.store import open_store
from tests.server.test_ingest_harness import (
    Agent,
    Chain,
    ServerProc,
    cli,
    converse,
    enrol_agent,
    running_server,
)

Code = pb.Refusal.Code


@pytest.fixture
def server(tmp_path: Path, store_url: str) -> Iterator[ServerProc]:
    """A real server on SQLite in its data directory, or on a fresh PostgreSQL database."""
    database = store_url if store_url.startswith("postgresql") else None
    with running_server(tmp_path / "data", database) as s:
        yield s


@pytest.fixture
def agent(server: ServerProc, tmp_path: Path) -> Agent:
    return enrol_agent(server, tmp_path / "agent", "host-01", "clinic-a")


def stored(server: ServerProc, agent_id: str) -> tuple[int, list[str]]:
    store = open_store(server.database or f"sqlite:///{server.data / 'custodes.db'}")
    try:
        return store.count_events(agent_id), [r.kind for r in store.integrity_events(agent_id)]
    finally:
        store.close()


def test_a_verified_batch_is_stored_and_acknowledged(server: ServerProc, agent: Agent) -> None:
    chain = Chain(agent)
    chain.grow(10)
    replies = converse(agent, server, [chain.batch(0, 10)])
    assert replies[0].WhichOneof("msg") == "resume"
    assert replies[0].resume.next_seq == 0
    ack = replies[1].ack
    assert ack.next_seq == 10
    assert b"custodes.server/host-01\n10\n" in ack.server_checkpoint
    assert stored(server, "host-01") == (10, [])


def test_replayed_batch_is_not_stored_twice(server: ServerProc, agent: Agent) -> None:
    chain = Chain(agent)
    chain.grow(8)
    converse(agent, server, [chain.batch(0, 8)])
    replies = converse(agent, server, [chain.batch(0, 8)])
    assert replies[0].resume.next_seq == 8
    assert replies[1].ack.next_seq == 8
    assert stored(server, "host-01") == (8, [])


def _tampered(chain: Chain, kind: str) -> pb.EventBatch:
    if kind == "gap":
        return chain.batch(5, 10)
    if kind == "reorder":
        b = chain.batch(0, 10)
        recs = list(b.records)
        recs[0], recs[1] = recs[1], recs[0]
        del b.records[:]
        b.records.extend(recs)
        return b
    if kind == "forged":
        b = chain.batch(0, 10)
        b.checkpoint = chain.checkpoint(10, NoteSigner(chain.agent.cfg.origin, generate_key()))
        return b
    if kind == "bad_signature":
        b = chain.batch(0, 10)
        note = bytearray(b.checkpoint)
        note[-10] = ord("A") if note[-10] != ord("A") else ord("B")
        b.checkpoint = bytes(note)
        return b
    if kind == "modified":
        b = chain.batch(0, 10)
        b.records[3].event = b.records[3].event + b"\x00"
        return b
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("gap", Code.CODE_GAP),
        ("reorder", Code.CODE_REORDER),
        ("forged", Code.CODE_UNKNOWN_KEY),
        ("bad_signature", Code.CODE_BAD_SIGNATURE),
        ("modified", Code.CODE_BROKEN_CHAIN),
    ],
)
def test_tampered_batch_is_refused_and_recorded(
    server: ServerProc,
    agent: Agent,
    kind: str,
    code: int,
) -> None:
    chain = Chain(agent)
    chain.grow(10)
    replies = converse(agent, server, [_tampered(chain, kind)])
    refusal = replies[1].refusal
    assert refusal.code == code, refusal.message
    assert refusal.expected_seq == 0
    count, findings = stored(server, "host-01")
    assert count == 0
    assert len(findings) == 1


def test_replay_with_other_bytes_is_refused(server: ServerProc, agent: Agent) -> None:
    chain = Chain(agent)
    chain.grow(6)
    converse(agent, server, [chain.batch(0, 6)])
    b = chain.batch(0, 6)
    b.records[2].event = b.records[2].event + b"\x01"
    replies = converse(agent, server, [b])
    assert replies[1].refusal.code in (Code.CODE_BROKEN_CHAIN, Code.CODE_REPLAY)
    assert stored(server, "host-01")[0] == 6


def test_event_naming_another_agent_is_refused(server: ServerProc, agent: Agent) -> None:
    chain = Chain(agent)
    events = []
    for seq in range(3):
        ev = pb.Event(agent_id="someone-else", client="clinic-a", seq=seq, unix_nanos=1)
        events.append(ev.SerializeToString())
    chain.links = extend(GENESIS, 0, events)
    replies = converse(agent, server, [chain.batch(0, 3)])
    assert replies[1].refusal.code == Code.CODE_WRONG_AGENT
    assert stored(server, "host-01")[0] == 0


def test_too_many_events_in_one_batch_is_refused(server: ServerProc, agent: Agent) -> None:
    chain = Chain(agent)
    chain.grow(5000)
    replies = converse(agent, server, [chain.batch(0, 5000)])
    assert replies[1].refusal.code == Code.CODE_TOO_LARGE


def test_oversized_message_gets_a_clear_error(server: ServerProc, agent: Agent) -> None:
    chain = Chain(agent)
    chain.grow(1)
    b = chain.batch(0, 1)
    b.records[0].event = b"x" * (9 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as info:
        converse(agent, server, [b])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert stored(server, "host-01")[0] == 0


def test_garbage_bytes_get_a_clear_error(server: ServerProc, agent: Agent) -> None:
    with agent.channel(server) as ch:
        call = ch.stream_stream(
            "/custodes.v1.AgentChannel/Connect",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([b"\xff\xfe garbage \x00" * 10]), timeout=10))
    assert info.value.code() in (  # type: ignore[attr-defined]
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_first_message_must_be_hello(server: ServerProc, agent: Agent) -> None:
    with agent.channel(server) as ch:
        msgs = iter([pb.AgentMessage(heartbeat=pb.Heartbeat())])
        with pytest.raises(grpc.RpcError) as info:
            list(rpc.AgentChannelStub(ch).Connect(msgs, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_revoked_agent_is_refused(server: ServerProc, agent: Agent) -> None:
    db = ["--database", server.database] if server.database else []
    cli("server", "agent", "revoke", "host-01", "--data", str(server.data), *db)
    chain = Chain(agent)
    chain.grow(2)
    with pytest.raises(grpc.RpcError) as info:
        converse(agent, server, [chain.batch(0, 2)])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "revoked" in (info.value.details() or "")  # type: ignore[attr-defined]


def test_certificate_from_another_ca_is_refused(
    server: ServerProc,
    agent: Agent,
    tmp_path: Path,
) -> None:
    other = ServerProc(tmp_path / "other")
    other.init()
    # A certificate for the same identity, signed by the other installation's CA.
    ca = enrol.KeyAndCert(
        (tmp_path / "other" / "ca" / "ca.key").read_bytes(),
        (tmp_path / "other" / "ca" / "ca.crt").read_bytes(),
    )
    key_pem, csr = make_csr("host-01")
    cert = enrol.sign_csr(
        ca, csr, enrol.Identity("agent", "clinic-a", "host-01"), dt.datetime.now(dt.UTC)
    )
    creds = grpc.ssl_channel_credentials(
        root_certificates=agent.creds.ca.read_bytes(), private_key=key_pem, certificate_chain=cert
    )
    with grpc.secure_channel(server.address, creds) as ch:
        msgs = iter([pb.AgentMessage(hello=pb.Hello(agent_id="host-01"))])
        with pytest.raises(grpc.RpcError) as info:
            list(rpc.AgentChannelStub(ch).Connect(msgs, timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_no_client_certificate_is_refused(server: ServerProc, agent: Agent) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=agent.creds.ca.read_bytes())
    with grpc.secure_channel(server.address, creds) as ch:
        msgs = iter([pb.AgentMessage(hello=pb.Hello(agent_id="host-01"))])
        with pytest.raises(grpc.RpcError) as info:
            list(rpc.AgentChannelStub(ch).Connect(msgs, timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
