"""Detection as wired into `custodes server run` (no root needed): a real server process, an
enrolled agent's hand-made signed batches, the incidents read back through the CLI.

* the Detector follows a new agreement version applied while the server runs;
* a batch refused for a bad checkpoint signature (an integrity event ingest records) raises
  an `integrity` incident through the periodic tick;
* that incident's webhook (notify.json) is sent, retried after failures, and recorded;
* (in process) agents get one heartbeat bound to pick up a new agreement version before
  their heartbeats count as enforcing an old agreement.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policies.compile import CompiledAgreement, compile_agreement
from policies.load import parse_agreement
from protos.evidence.chain import GENESIS, extend
from protos.evidence.keys import generate_key
from protos.evidence.note import NoteSigner
from protos.wire import pb, rpc
from server.detect.engine import Detector
from server.store import Store
from tests.e2e.incident_world import CLIENT, DetectingServer, agreement_text
from tests.server.conftest import agent_row
from tests.server.test_ingest_harness import Agent, Chain, cli, enrol_agent
from tests.server.test_notify import SECRET, Receiver, http_receiver  # noqa: F401 - fixture

WAIT_S = 20.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DetectingServer]:
    running = DetectingServer(tmp_path / "data")
    running.init()
    running.start()
    try:
        yield running
    finally:
        running.kill()


def apply(server: DetectingServer, base: Path, version: str, bulk: int) -> None:
    path = base / f"agreement-{version}.yaml"
    path.write_text(agreement_text(base, version, bulk=bulk))
    cli("server", "agreement", "apply", str(path), "--data", str(server.data))


def incidents(server: DetectingServer) -> list[dict[str, Any]]:
    out = cli("incidents", "list", "--json", "--data", str(server.data)).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_log(
    server: DetectingServer, event: str, timeout: float = WAIT_S, **match: str
) -> None:
    """Wait (bounded) until the server logged `event` with the `match` fields."""
    assert server.log is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if entry.get("event") == event and all(entry.get(k) == v for k, v in match.items()):
                    return
        time.sleep(0.05)
    raise AssertionError(f"no {event} {match} in the server log: {server.log_text()}")


def billing_reads(agent: Agent, base: Path, start: int, count: int) -> list[bytes]:
    """In-scope reads of distinct billing files by tech1, dated now."""
    out = []
    for seq in range(start, start + count):
        ev = pb.Event(
            agent_id=agent.cfg.agent_id,
            client=agent.cfg.client,
            boot_id="boot-1",
            seq=seq,
            unix_nanos=time.time_ns(),
        )
        a = ev.access
        a.subject.technician = "tech1"
        a.subject.os_user = "ctest-tech1"
        a.object.path = str(base / "billing" / f"file-{seq:03d}.txt")
        a.object.area = "billing"
        a.action = pb.ACTION_READ
        a.verdict = pb.VERDICT_ALLOW
        a.rule = "in_scope"
        out.append(ev.SerializeToString())
    return out


def answer(agent: Agent, server: DetectingServer, batch: pb.EventBatch) -> pb.ServerMessage:
    """Hello, one batch, and the server's ack or refusal of it (pushes in between skipped)."""

    answered = threading.Event()

    def requests() -> Iterator[pb.AgentMessage]:
        yield pb.AgentMessage(hello=pb.Hello(agent_id=agent.cfg.agent_id))
        yield pb.AgentMessage(batch=batch)
        answered.wait(WAIT_S)  # keep the stream open until the answer arrives

    with agent.channel(server) as ch:
        call = rpc.AgentChannelStub(ch).Connect(requests(), timeout=WAIT_S)
        try:
            for msg in call:
                reply: pb.ServerMessage = msg
                if reply.WhichOneof("msg") in ("ack", "refusal"):
                    return reply
        finally:
            answered.set()
            call.cancel()
    raise AssertionError("the server ended the stream without answering the batch")


def send(agent: Agent, server: DetectingServer, chain: Chain, start: int, count: int) -> None:
    chain.links += extend(chain.prev(start), start, billing_reads(agent, server.data, start, count))
    reply = answer(agent, server, chain.batch(start, start + count))
    assert reply.WhichOneof("msg") == "ack", reply


def test_the_detector_follows_an_agreement_applied_while_it_runs(
    server: DetectingServer, tmp_path: Path
) -> None:
    apply(server, tmp_path, "v1", bulk=10)
    agent = enrol_agent(server, tmp_path / "agent", "ndb-host-1", CLIENT)
    chain = Chain(agent)
    send(agent, server, chain, 0, 8)  # 8 distinct files: not above v1's threshold of 10
    assert incidents(server) == []
    apply(server, tmp_path, "v2", bulk=5)
    wait_for_log(server, "detector_agreement_used", version="v2")  # via the access watcher
    send(agent, server, chain, 8, 1)  # 9 distinct files: above v2's threshold of 5
    found = incidents(server)
    assert [i["rule"] for i in found] == ["bulk_read"]
    assert found[0]["files"] == 9
    assert "threshold 5" in found[0]["description"]


def test_a_refused_batch_raises_an_integrity_incident(
    server: DetectingServer, tmp_path: Path
) -> None:
    apply(server, tmp_path, "v1", bulk=10)
    agent = enrol_agent(server, tmp_path / "agent", "ndb-host-1", CLIENT)
    chain = Chain(agent)
    chain.links += extend(GENESIS, 0, billing_reads(agent, server.data, 0, 3))
    forged = chain.batch(0, 3)
    forged.checkpoint = chain.checkpoint(3, NoteSigner(agent.cfg.origin, generate_key()))
    reply = answer(agent, server, forged)
    assert reply.WhichOneof("msg") == "refusal", reply
    deadline = time.monotonic() + WAIT_S
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        found = incidents(server)
        time.sleep(0.2)
    assert [i["rule"] for i in found] == ["integrity"]
    assert "failed verification" in found[0]["description"]
    assert found[0]["client"] == CLIENT


def test_the_running_server_notifies_an_opened_incident_and_retries(
    tmp_path: Path,
    http_receiver: tuple[str, Receiver],  # noqa: F811 - the imported fixture
) -> None:
    url, rx = http_receiver  # answers 503 twice, then checks the signature
    server = DetectingServer(tmp_path / "data")
    server.init()
    config = {"webhooks": [{"url": url, "secret": SECRET.decode()}], "backoff_s": 0.2}
    (server.data / "notify.json").write_text(json.dumps(config))
    server.start()
    try:
        apply(server, tmp_path, "v1", bulk=10)
        agent = enrol_agent(server, tmp_path / "agent", "ndb-host-1", CLIENT)
        chain = Chain(agent)
        chain.links += extend(GENESIS, 0, billing_reads(agent, server.data, 0, 3))
        forged = chain.batch(0, 3)
        forged.checkpoint = chain.checkpoint(3, NoteSigner(agent.cfg.origin, generate_key()))
        assert answer(agent, server, forged).WhichOneof("msg") == "refusal"
        data = ("--data", str(server.data))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not any(ok for *_, ok in rx.seen[2:]):
            time.sleep(0.1)
        with rx.lock:
            seen = list(rx.seen)
        assert len(seen) == 3, seen
        body = json.loads(seen[-1][2])
        assert (body["event"], body["rule"], body["client"]) == ("opened", "integrity", CLIENT)
        shown = json.loads(cli("incidents", "show", "1", "--json", *data).stdout)
        assert shown["deliveries"] == [["webhook", url, "opened", "sent", 3]]
    finally:
        server.kill()


def compiled(base: Path, version: str) -> CompiledAgreement:
    text = agreement_text(base, version)
    return compile_agreement(parse_agreement(text, filename=f"{CLIENT}@{version}"))


def test_agents_get_one_heartbeat_bound_to_pick_up_a_new_agreement(
    store: Store, tmp_path: Path
) -> None:
    t0 = float(int(time.time()))
    now = [t0]
    detector = Detector(store, {CLIENT: compiled(tmp_path, "v1")}, lambda: now[0])
    store.add_agent(agent_row("host-1", CLIENT, enrolled_unix=int(t0)))
    bound = 300.0  # the agreement's heartbeat_silence

    def beat(version: str, at: float) -> list[str]:
        sample = pb.Heartbeat(unix_nanos=int(at * 1e9), agreement_version=version)
        store.touch_agent("host-1", int(at), sample.SerializeToString())
        now[0] = at
        live = detector.on_heartbeat("host-1", CLIENT, sample.SerializeToString(), at)
        return [i.rule for i in live + detector.tick(at)]

    assert beat("v1", t0 + bound + 1) == []  # the version in use
    assert detector.use_agreement(compiled(tmp_path, "v2"))
    changed = now[0]
    assert beat("v1", changed + 10) == []  # sampled before the push reached the agent
    assert beat("v1", changed + bound - 1) == []
    assert beat("v1", changed + bound + 1) == ["old_agreement", "old_agreement"]
    assert [i.rule for i in detector.incidents.incidents()] == ["old_agreement"]
    assert beat("v2", changed + bound + 2) == []
