"""The pure access workflow: the transitions table, the agreement's rules, who may do what."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from policies.compile import CompiledAgreement, compile_agreement
from policies.load import parse_agreement
from policies.model import Action
from server import access
from server.access import (
    TRANSITIONS,
    Draft,
    ForbiddenError,
    Person,
    RequestRefusedError,
    Role,
    State,
    Step,
    TransitionError,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, a Thursday (and a holiday in harbourside-gp)
WEEKDAY_10AM_SYDNEY = int(datetime(2026, 1, 9, 10, tzinfo=ZoneInfo("Australia/Sydney")).timestamp())

TECH = Person("jordan", Role.TECHNICIAN, technician="akaur")
LEAD = Person("jsmith-lead", Role.APPROVER, technician="jsmith")
MGR = Person("mei", Role.APPROVER, client="harbourside-gp")
OTHER_MGR = Person("bob", Role.APPROVER, client="banksia-care")
MSP_APPROVER = Person("owner", Role.APPROVER)
AUDITOR = Person("aud", Role.AUDITOR, client="harbourside-gp")
ADMIN = Person("root", Role.ADMIN)


@pytest.fixture(scope="module")
def compiled() -> CompiledAgreement:
    path = ROOT / "policies" / "agreements" / "harbourside-gp.yaml"
    return compile_agreement(parse_agreement(path.read_bytes(), filename=str(path)))


def draft(**changes: object) -> Draft:
    base = Draft(
        client="harbourside-gp",
        area="patient-documents",
        actions=(Action.READ,),
        duration_seconds=2 * 3600,
        ticket="HGP-1234",
        reason="letter will not open",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def pending(compiled: CompiledAgreement, **changes: object) -> access.Request:
    return access.create("r1", draft(**changes), TECH, compiled, NOW)


# -- the transitions table -------------------------------------------------------------------


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("step", list(Step))
def test_every_state_and_step_follows_the_table(state: State, step: Step) -> None:
    expected = TRANSITIONS.get((state, step))
    if expected is None:
        with pytest.raises(TransitionError):
            access.next_state(state, step)
    else:
        assert access.next_state(state, step) is expected


def test_ended_states_have_no_way_out() -> None:
    assert not [k for k in TRANSITIONS if k[0] in access.ENDED]


# -- requests and the agreement's rules ------------------------------------------------------


def test_a_good_request_is_pending_with_the_rule_s_approvers(compiled: CompiledAgreement) -> None:
    req = pending(compiled)
    assert req.state is State.PENDING
    assert req.technician == "akaur"
    assert req.approvals_needed == 1
    assert set(req.approver_kinds) == {"client_manager", "practice_manager"}
    assert (req.start_unix, req.end_unix) == (0, 0)  # starts when approved
    assert req.pending_until_unix == NOW + int(access.PENDING_TTL.total_seconds())
    assert [c.state for c in req.history] == ["requested"]


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"actions": (Action.WRITE,)}, "just_in_time"),
        ({"actions": (Action.READ, Action.DELETE)}, "just_in_time"),
        ({"duration_seconds": 5 * 3600}, "just_in_time.max_duration"),
        ({"ticket": "HGP-12"}, "just_in_time.ticket_pattern"),
        ({"ticket": "INC-123456"}, "just_in_time.ticket_pattern"),
        ({"area": "payroll"}, "areas"),
        ({"actions": ()}, "actions"),
        ({"duration_seconds": 0}, "duration"),
        ({"reason": "  "}, "reason"),
        ({"reason": "x" * 600}, "reason"),
        ({"reason": "bad\x07bell"}, "reason"),
        ({"start_unix": NOW - 3600}, "start"),
        ({"start_unix": NOW + 40 * 86400}, "start"),
        ({"client": "banksia-care"}, "agreement"),
        ({"break_glass": True, "duration_seconds": 3 * 3600}, "break_glass.max_duration"),
        ({"break_glass": True, "area": "scanned-letters"}, "break_glass.areas"),
        ({"break_glass": True, "actions": (Action.WRITE,)}, "break_glass.actions"),
        ({"break_glass": True, "reason": ""}, "break_glass.requires_reason"),
    ],
)
def test_a_request_outside_the_agreement_names_the_rule(
    compiled: CompiledAgreement, changes: dict[str, object], rule: str
) -> None:
    with pytest.raises(RequestRefusedError) as caught:
        pending(compiled, **changes)
    assert caught.value.rule == rule
    assert f"rule {rule}:" in str(caught.value)


def test_an_unknown_technician_is_refused(compiled: CompiledAgreement) -> None:
    stranger = Person("zed", Role.TECHNICIAN, technician="zed")
    with pytest.raises(RequestRefusedError) as caught:
        access.create("r1", draft(), stranger, compiled, NOW)
    assert caught.value.rule == "technicians"


@pytest.mark.parametrize("person", [AUDITOR, ADMIN, MGR, MSP_APPROVER])
def test_only_technicians_and_technician_leads_request(
    compiled: CompiledAgreement, person: Person
) -> None:
    with pytest.raises(ForbiddenError):
        access.create("r1", draft(), person, compiled, NOW)


def test_a_client_technician_cannot_request_for_another_client(
    compiled: CompiledAgreement,
) -> None:
    local = Person("local", Role.TECHNICIAN, client="banksia-care", technician="akaur")
    with pytest.raises(ForbiddenError) as caught:
        access.create("r1", draft(), local, compiled, NOW)
    assert caught.value.rule == "client"


def test_break_glass_is_approved_at_once_for_its_window(compiled: CompiledAgreement) -> None:
    req = pending(compiled, break_glass=True, duration_seconds=1800)
    assert req.state is State.APPROVED
    assert (req.start_unix, req.end_unix) == (NOW, NOW + 1800)
    assert req.state_at(NOW + 1) == "active"
    assert [c.state for c in req.history] == ["requested", "approved"]


# -- approval --------------------------------------------------------------------------------


def test_one_manager_approval_approves_and_fixes_the_window(compiled: CompiledAgreement) -> None:
    req = access.approve(pending(compiled), MGR, compiled, NOW + 60)
    assert req.state is State.APPROVED
    assert (req.start_unix, req.end_unix) == (NOW + 60, NOW + 60 + 7200)
    assert req.approvals[0].kind == "client_manager"
    assert [c.state for c in req.history] == ["requested", "approval", "approved"]
    assert req.state_at(NOW + 61) == "active"
    assert req.state_at(NOW + 60 + 7200) == "approved"  # until the watcher expires it


def test_two_approvers_of_named_kinds_are_needed_for_backups(
    compiled: CompiledAgreement,
) -> None:
    req = pending(compiled, area="database-backups", actions=(Action.WRITE,), duration_seconds=3600)
    assert req.approvals_needed == 2
    once = access.approve(req, MGR, compiled, NOW + 1)
    assert once.state is State.PENDING
    with pytest.raises(ForbiddenError) as again:
        access.approve(once, MGR, compiled, NOW + 2)
    assert again.value.rule == "approvers"
    twice = access.approve(once, LEAD, compiled, NOW + 3)
    assert twice.state is State.APPROVED
    assert {a.kind for a in twice.approvals} == {"client_manager", "msp_lead"}


def test_an_approver_of_the_wrong_kind_does_not_count(compiled: CompiledAgreement) -> None:
    with pytest.raises(ForbiddenError) as caught:
        access.approve(pending(compiled), MSP_APPROVER, compiled, NOW)
    assert caught.value.rule == "approvers.from"


@pytest.mark.parametrize(
    ("person", "rule"),
    [
        (TECH, "role"),
        (AUDITOR, "role"),
        (ADMIN, "role"),
        (OTHER_MGR, "client"),
    ],
)
def test_who_may_not_approve(compiled: CompiledAgreement, person: Person, rule: str) -> None:
    with pytest.raises(ForbiddenError) as caught:
        access.approve(pending(compiled), person, compiled, NOW)
    assert caught.value.rule == rule


def test_no_self_approval(compiled: CompiledAgreement) -> None:
    req = access.create(
        "r1", draft(area="database-backups", actions=(Action.WRITE,)), LEAD, compiled, NOW
    )
    with pytest.raises(ForbiddenError) as caught:
        access.approve(req, LEAD, compiled, NOW)
    assert caught.value.rule == "self_approval"


def test_approval_hours_are_the_agreement_s() -> None:
    path = ROOT / "policies" / "agreements" / "harbourside-gp.yaml"
    text = path.read_text().replace(
        "      from: [msp_lead, client_manager]\n",
        "      from: [msp_lead, client_manager]\n    approval_hours: business\n",
    )
    strict = compile_agreement(parse_agreement(text, filename="strict.yaml"))
    req = pending(strict, area="database-backups", actions=(Action.WRITE,), duration_seconds=3600)
    with pytest.raises(RequestRefusedError) as caught:  # New Year's Day: a holiday
        access.approve(req, MGR, strict, NOW + 5)
    assert caught.value.rule == "just_in_time.approval_hours"
    on_friday = access.create(
        "r2",
        draft(area="database-backups", actions=(Action.WRITE,), duration_seconds=3600),
        TECH,
        strict,
        WEEKDAY_10AM_SYDNEY,
    )
    assert access.approve(on_friday, MGR, strict, WEEKDAY_10AM_SYDNEY + 5).approvals


def test_a_lapsed_request_cannot_be_approved(compiled: CompiledAgreement) -> None:
    req = pending(compiled)
    with pytest.raises(TransitionError):
        access.approve(req, MGR, compiled, req.pending_until_unix)


# -- ending ----------------------------------------------------------------------------------


def test_deny_needs_a_reason_and_an_approver(compiled: CompiledAgreement) -> None:
    req = pending(compiled)
    with pytest.raises(RequestRefusedError):
        access.deny(req, MGR, " ", NOW)
    with pytest.raises(ForbiddenError):
        access.deny(req, TECH, "no", NOW)
    denied = access.deny(req, MGR, "use the test patient", NOW + 1)
    assert denied.state is State.DENIED
    assert denied.history[-1].by == "mei"


def test_only_the_requester_cancels(compiled: CompiledAgreement) -> None:
    req = pending(compiled)
    with pytest.raises(ForbiddenError):
        access.cancel(req, MGR, "", NOW)
    assert access.cancel(req, TECH, "fixed it myself", NOW).state is State.CANCELLED


def test_revoke_ends_an_approved_grant(compiled: CompiledAgreement) -> None:
    req = access.approve(pending(compiled), MGR, compiled, NOW)
    with pytest.raises(ForbiddenError):
        access.revoke(req, TECH, "mine", NOW)
    with pytest.raises(TransitionError):
        access.revoke(pending(compiled), MGR, "not approved yet", NOW)
    revoked = access.revoke(req, ADMIN, "left the company", NOW + 5)
    assert revoked.state is State.REVOKED
    assert not revoked.is_live(NOW + 6)


def test_expiry_of_pending_and_approved(compiled: CompiledAgreement) -> None:
    req = pending(compiled)
    assert access.expire(req, req.pending_until_unix - 1) is None
    lapsed = access.expire(req, req.pending_until_unix)
    assert lapsed is not None
    assert lapsed.state is State.EXPIRED
    assert lapsed.history[-1].by == access.SYSTEM
    grant = access.approve(req, MGR, compiled, NOW)
    assert access.expire(grant, grant.end_unix - 1) is None
    ended = access.expire(grant, grant.end_unix)
    assert ended is not None
    assert ended.state is State.EXPIRED


def test_technicians_see_only_their_own(compiled: CompiledAgreement) -> None:
    req = pending(compiled)
    assert access.may_read(TECH, req)
    assert not access.may_read(Person("other", Role.TECHNICIAN), req)
    assert access.may_read(AUDITOR, req)
    assert not access.may_read(OTHER_MGR, req)
