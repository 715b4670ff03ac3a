"""An agent's page through the real server: what its last heartbeat says (gate, agreement,
the memory of the gating daemon and its shipping child), scoped by client."""

from __future__ import annotations

from tests.console.conftest import Http, World


def test_the_agent_page_shows_its_last_heartbeat(http: Http, world: World) -> None:
    http.sign_in("auditor")
    reply = http.get("/agents/clinic-srv")
    assert reply.status == 200, reply.text[:300]
    text = reply.text
    assert "clinic-srv.lan" in text
    assert "enforcing" in text
    assert "<dd>v1</dd>" in text
    assert "38.0MiB+53.0MiB (gating daemon + shipping process)" in text


def test_another_clients_person_cannot_see_the_agent(http: Http, world: World) -> None:
    http.sign_in("other-pm")
    assert http.get("/agents/clinic-srv").status == 403
    assert http.get("/agents/dental-srv").status == 200
    assert http.get("/agents/no-such-agent").status == 403
