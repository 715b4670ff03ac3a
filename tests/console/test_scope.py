"""Roles and client scoping through the real server: nobody sees what they may not."""

from __future__ import annotations

from tests.console.conftest import Http, World
from tests.console.world import CLINIC, CLINIC_PATH, OTHER, OTHER_PATH


def test_a_client_person_sees_only_their_client(http: Http) -> None:
    http.sign_in("pm")
    events = http.get("/events").text
    assert CLINIC_PATH in events
    assert OTHER not in events
    assert OTHER_PATH not in events
    assert http.get(f"/events?client={OTHER}").status == 403
    assert http.get(f"/statement?client={OTHER}&month=2026-01").status == 403
    assert OTHER not in http.get("/").text


def test_a_technician_sees_only_their_own_events(http: Http) -> None:
    http.sign_in("tech1")
    text = http.get("/events").text
    assert CLINIC_PATH in text  # their own access, with its path
    assert "Brown_Alice" not in text  # tech2's paths are never shown
    forced = http.get("/events?technician=tech2").text
    assert CLINIC_PATH in forced
    assert "Brown_Alice" not in forced
    assert http.get("/incidents").status == 403
    assert http.get("/statement").status == 403


def test_msp_lead_sees_events_with_paths_masked(http: Http) -> None:
    http.sign_in("lead")
    text = http.get(f"/events?client={CLINIC}").text
    assert "tech1" in text
    assert "Tran_Mei_Lin" not in text
    assert "Brown_Alice" not in text
    assert "/srv/…/•••.pdf" in text


def test_the_events_csv_applies_the_same_masking(http: Http) -> None:
    http.sign_in("lead")
    reply = http.get("/events.csv")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/csv")
    assert "Tran_Mei_Lin" not in reply.text
    assert "Nguyen_Thanh" not in reply.text
    assert reply.text.count("\n") == 5  # header + every stored event of both clients


def test_msp_auditor_reads_paths(http: Http) -> None:
    http.sign_in("auditor")
    assert CLINIC_PATH in http.get("/events").text


def test_another_clients_manager_cannot_act_on_this_clients_request(
    http: Http, world: World
) -> None:
    http.sign_in("other-pm")
    token = http.csrf("/")
    reply = http.post(f"/requests/{world.ids['request']}/deny", {"csrf": token, "why": "no"})
    assert reply.status == 303
    assert "does not exist" in http.get("/requests").text
    assert http.get(f"/incidents/{world.ids['incident']}").status == 403
