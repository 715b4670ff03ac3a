"""Just-in-time access end to end: a real server, a real enrolled agent gating with fanotify,
people logged in with their own certificates, the CLI driving every request.

The tests share one world (server + agent) and run in file order: the last two take the
server away (an offline agent ends a grant on time; a rogue server cannot forge grants).
"""

from __future__ import annotations

import os
import pwd
import queue
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from protos.evidence.keys import generate_key, load_private_key
from protos.signed import sign_grant
from protos.wire import pb, rpc
from server.datadir import DataDir
from server.tls import server_credentials
from tests.agent.conftest import TECH, accounts  # noqa: F401 - the session fixture
from tests.e2e.jit_world import CLIENT, JitWorld, agreement_text, jit_world, until

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not sys.platform.startswith("linux"),
        reason="needs root and Linux fanotify",
    ),
]


@pytest.fixture(scope="module")
def world(accounts: dict[str, pwd.struct_passwd]) -> Iterator[JitWorld]:  # noqa: F811
    with jit_world(accounts[TECH]) as w:
        yield w


def test_denied_before_allowed_after_approval_denied_after_revocation(world: JitWorld) -> None:
    assert world.opens() == "EPERM"
    rid = world.request()
    assert world.opens() == "EPERM"  # pending is not a grant
    world.access("mgr", "approve", rid)
    world.wait_open("ok")
    world.access("mgr", "revoke", rid, "--why", "work finished")
    world.wait_open("EPERM")

    shown = world.show(rid)
    assert shown["state"] == "revoked"
    states = [(h["state"], h["by"]) for h in shown["history"]]  # type: ignore[union-attr]
    assert states == [
        ("requested", "tech1"),
        ("approval", "mgr"),
        ("approved", "mgr"),
        ("revoked", "mgr"),
    ]
    # The agent journaled applied and revoked, and the allowed open under this grant: all
    # shipped and listed by `show` per host.
    until(
        lambda: {"grant", "access"} <= {c["kind"] for c in world.show(rid)["covered"]},  # type: ignore[union-attr]
        "the covered accesses and grant events on the server",
    )
    lines = [c["line"] for c in world.show(rid)["covered"]]  # type: ignore[union-attr]
    assert any("allow read" in line and world.secret in line for line in lines)
    assert any("grant applied" in line for line in lines)
    until(
        lambda: any(
            "grant revoked" in c["line"]  # type: ignore[index]
            for c in world.show(rid)["covered"]  # type: ignore[union-attr]
        ),
        "the revoked grant event",
    )


def test_grants_reach_the_gate_through_the_shipper_child(world: JitWorld) -> None:
    # The grant above came over gRPC into the shipper child and, as bytes, to the daemon,
    # which verified and applied it: the daemon never mapped grpc, the child did.
    agent = world.agent
    assert agent is not None
    child = agent.wait_for("shipper_started")["pid"]
    assert agent.find("grant_received")
    assert isinstance(child, int)
    assert "cygrpc" in Path(f"/proc/{child}/maps").read_text()
    assert "cygrpc" not in Path(f"/proc/{agent.proc.pid}/maps").read_text()


def test_grant_expires_on_time(world: JitWorld) -> None:
    rid = world.request(duration="3s")
    world.access("mgr", "approve", rid)
    world.wait_open("ok")
    world.wait_open("EPERM")
    until(lambda: world.show(rid)["state"] == "expired", "the server to expire the grant")
    assert world.agent is not None
    world.agent.wait_for("grant_expired", grant=rid)


def test_self_approval_is_refused(world: JitWorld) -> None:
    rid = world.request(who="lead")
    out = world.access("lead", "approve", rid, check=False)
    assert out.returncode != 0
    assert "self_approval" in out.stderr
    assert world.show(rid)["state"] == "pending"
    world.access("tech1", "cancel", rid, check=False)  # not tech1's: refused
    world.access("lead", "cancel", rid)
    assert world.show(rid)["state"] == "cancelled"


def test_a_technician_cannot_approve_and_an_auditor_cannot_request(world: JitWorld) -> None:
    rid = world.request()
    out = world.access("tech1", "approve", rid, check=False)
    assert out.returncode != 0
    assert "PERMISSION_DENIED" in out.stderr
    assert "only approvers approve" in out.stderr
    out = world.access(
        "aud",
        "request",
        *("--client", CLIENT, "--area", "records", "--actions", "read", "--for", "1h"),
        *("--ticket", "JIT-1234", "--reason", "curious"),
        check=False,
    )
    assert out.returncode != 0
    assert "PERMISSION_DENIED" in out.stderr
    out = world.access("other-mgr", "approve", rid, check=False)  # another client's manager
    assert out.returncode != 0
    world.access("mgr", "deny", rid, "--why", "use the test patient instead")
    assert world.show(rid)["state"] == "denied"
    assert world.opens() == "EPERM"


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"--actions": "write"}, "rule just_in_time:"),
        ({"--for": "5h"}, "rule just_in_time.max_duration"),
        ({"--ticket": "HELPDESK-1"}, "rule just_in_time.ticket_pattern"),
        ({"--area": "payroll"}, "rule areas"),
        ({"--client": "another-clinic"}, "rule agreement"),
        ({"--for": "2h", "--break-glass": ""}, "rule break_glass.max_duration"),
    ],
)
def test_a_request_outside_the_agreement_is_refused_with_its_rule(
    world: JitWorld, changes: dict[str, str], rule: str
) -> None:
    args = {
        "--client": CLIENT,
        "--area": "records",
        "--actions": "read",
        "--for": "1h",
        "--ticket": "JIT-1234",
        "--reason": "needed",
        **changes,
    }
    flat = [x for k, v in args.items() for x in ((k, v) if v else (k,))]
    out = world.access("tech1", "request", *flat, check=False)
    assert out.returncode != 0
    assert rule in out.stderr, out.stderr


def test_break_glass_is_active_at_once_and_recorded(world: JitWorld) -> None:
    rid = world.request("--break-glass", duration="2s")
    world.wait_open("ok")
    shown = world.show(rid)
    assert shown["break_glass"] is True
    states = [h["state"] for h in shown["history"]]  # type: ignore[union-attr]
    assert states[:2] == ["requested", "approved"]  # then "expired" once its 2s are up
    world.wait_open("EPERM")
    until(
        lambda: any(
            "allow read" in c["line"]  # type: ignore[index]
            for c in world.show(rid)["covered"]  # type: ignore[union-attr]
        ),
        "the break-glass access on the server",
    )


def test_pending_requests_expire(world: JitWorld) -> None:
    start = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 1))
    rid = world.request("--start", start, duration="2s")
    until(lambda: world.show(rid)["state"] == "expired", "the pending request to lapse")
    last = world.show(rid)["history"][-1]  # type: ignore[index]
    assert last["state"] == "expired"
    assert last["by"] == "custodes"
    out = world.access("mgr", "approve", rid, check=False)
    assert out.returncode != 0
    assert world.opens() == "EPERM"


def test_an_agreement_applied_on_the_server_reaches_the_agent(world: JitWorld) -> None:
    assert world.agent is not None
    world.apply(agreement_text(world.area, "v2", in_scope_read=True), "agreement-v2.yaml")
    world.agent.wait_for("agreement_reloaded", version="v2")
    world.wait_open("ok")  # v2 puts reading records in scope
    assert (world.state / "server-agreement.yaml").read_text().count('version: "v2"') == 1
    world.apply(agreement_text(world.area, "v3"), "agreement-v3.yaml")
    world.agent.wait_for("agreement_reloaded", version="v3")
    world.wait_open("EPERM")


def test_an_offline_agent_still_ends_a_grant_on_time(world: JitWorld) -> None:
    rid = world.request(duration="4s")
    world.access("mgr", "approve", rid)
    world.wait_open("ok")
    world.server.kill()  # the agent is cut off from its server from here on
    world.wait_open("EPERM")
    assert world.agent is not None
    world.agent.wait_for("grant_expired", grant=rid)


class _Rogue(rpc.AgentChannelServicer):
    """Holds the server's TLS identity but not its signing key: sends what the test queues."""

    def __init__(self) -> None:
        self.outbox: queue.Queue[pb.ServerMessage] = queue.Queue()
        self.connected = threading.Event()

    def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        hello = next(request_iterator).hello
        yield pb.ServerMessage(resume=pb.Resume(next_seq=hello.journal_next_seq, max_in_flight=1))
        self.connected.set()
        while context.is_active():
            try:
                yield self.outbox.get(timeout=0.1)
            except queue.Empty:
                continue


def test_a_forged_or_foreign_grant_is_refused_by_the_agent(world: JitWorld) -> None:
    world.server.kill()
    rogue = _Rogue()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    rpc.add_AgentChannelServicer_to_server(rogue, server)
    data = DataDir(world.server.data)
    server.add_secure_port(world.server.address, server_credentials(data, require_client_cert=True))
    server.start()
    try:
        assert rogue.connected.wait(60), "the agent never reconnected"
        now = int(time.time())

        def grant(gid: str, client: str = CLIENT) -> pb.Grant:
            return pb.Grant(
                grant_id=gid,
                client=client,
                technician="tech1",
                area="records",
                actions=[pb.ACTION_READ],
                start_unix=now - 5,
                end_unix=now + 600,
                ticket="JIT-1234",
                issued_unix=now,
            )

        real_key = load_private_key(data.signing_key)
        rogue.outbox.put(pb.ServerMessage(grant=sign_grant(generate_key(), grant("forged-1"))))
        rogue.outbox.put(
            pb.ServerMessage(grant=sign_grant(real_key, grant("foreign-1", "another-clinic")))
        )
        assert world.agent is not None
        forged = world.agent.wait_for("grant_refused", grant="forged-1")
        assert "does not verify" in str(forged["reason"])
        foreign = world.agent.wait_for("grant_refused", grant="foreign-1")
        assert "another-clinic" in str(foreign["reason"])
        assert world.opens() == "EPERM"
        # The control: the same path with a good grant is applied.
        rogue.outbox.put(pb.ServerMessage(grant=sign_grant(real_key, grant("good-1"))))
        world.wait_open("ok")
    finally:
        server.stop(0)
