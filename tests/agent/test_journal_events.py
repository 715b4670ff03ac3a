"""agent.events: the exact Event bytes the journal chains, for every kind of record."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.events import (
    MAX_CMDLINE,
    AgentStartedRecord,
    AgentStoppedRecord,
    AgreementRecord,
    EventDecodeError,
    GateIncidentRecord,
    GrantRecord,
    JournalLossRecord,
    KeyRotatedRecord,
    Origin,
    decode,
    encode,
    is_deny,
)
from agent.records import AccessRecord, Attribution
from policies.model import Action, Decision, SubjectKind, Verdict
from protos.wire import pb

ORIGIN = Origin("agent-1", "test-clinic", "boot-1")
text = st.text(max_size=40)
who = st.builds(
    Attribution,
    pid=st.integers(1, 2**22),
    uid=st.integers(0, 2**31),
    loginuid=st.none() | st.integers(0, 2**31),
    account=text,
    login_account=st.none() | text,
    session_id=st.none() | st.integers(0, 2**31),
    ppid=st.none() | st.integers(1, 2**22),
    exe=text,
    cmdline=st.text(max_size=2000),
)
decision = st.builds(
    Decision,
    verdict=st.sampled_from(Verdict),
    reason=text,
    rule=text,
    subject_kind=st.sampled_from(SubjectKind),
    technician=st.none() | text,
    principal=st.none() | text,
    area=st.none() | text,
    kinds=st.lists(text, max_size=4).map(tuple),
    individuals_estimate=st.integers(0, 2**31),
    grant_id=st.none() | text,
)


@given(
    att=who,
    d=decision,
    path=st.text(min_size=1, max_size=300),
    action=st.sampled_from(Action),
    enforcing=st.booleans(),
    seq=st.integers(0, 2**63),
    at=st.integers(1, 2**62),
)
def test_access_records_round_trip_through_the_event_bytes(
    att, d, path, action, enforcing, seq, at
) -> None:
    rec = AccessRecord(at, att, path, action, d, enforcing, device=7, inode=9)
    ev = decode(encode(rec, ORIGIN, seq, 0))
    assert (ev.agent_id, ev.client, ev.boot_id, ev.seq, ev.unix_nanos) == (
        "agent-1",
        "test-clinic",
        "boot-1",
        seq,
        at,
    )
    a = ev.access
    assert a.object.path == path
    assert a.object.area == (d.area or "")
    assert tuple(a.object.kinds) == d.kinds
    assert a.object.individuals_estimate == d.individuals_estimate
    assert (a.object.device, a.object.inode) == (7, 9)
    assert a.subject.uid == att.uid
    assert a.subject.pid == att.pid
    assert a.subject.loginuid == (-1 if att.loginuid is None else att.loginuid)
    assert a.subject.cmdline == att.cmdline[:MAX_CMDLINE]
    tech = d.technician if d.subject_kind is SubjectKind.TECHNICIAN and d.technician else ""
    assert a.subject.technician == tech
    assert a.rule == d.rule
    assert a.grant_id == (d.grant_id or "")
    if enforcing:
        assert a.verdict == (pb.VERDICT_DENY if d.verdict is Verdict.DENY else pb.VERDICT_ALLOW)
        assert a.mode == pb.GATE_MODE_ENFORCING
        assert is_deny(ev) == (d.verdict is Verdict.DENY)
    else:
        assert a.verdict == pb.VERDICT_OBSERVED
        assert a.reason.startswith(f"would {d.verdict.value}")
        assert not is_deny(ev)


@pytest.mark.parametrize(
    ("rec", "body"),
    [
        (AgentStartedRecord(False, "0.1.0", "monitor", 0, "v1", "not root"), "started"),
        (AgentStoppedRecord("signal SIGTERM"), "stopped"),
        (JournalLossRecord(3, "disk full", 1, 2), "loss"),
        (GrantRecord("applied", "g-1", "tech1", "records", "ticket T-1"), "grant"),
        (AgreementRecord("", "ab" * 32, accepted=False, error="line 3: bad"), "agreement"),
        (KeyRotatedRecord(2, b"k" * 32), "key_rotated"),
        (GateIncidentRecord("watchdog_fail_open", "stuck 6s"), "gate"),
    ],
)
def test_lifecycle_records_take_the_time_given_when_they_have_none(rec, body: str) -> None:
    ev = decode(encode(rec, ORIGIN, 5, 123))
    assert ev.WhichOneof("body") == body
    assert ev.unix_nanos == 123
    assert ev.seq == 5


def test_bad_bytes_do_not_decode() -> None:
    with pytest.raises(EventDecodeError):
        decode(b"\xff\xff\xff")


def test_unknown_grant_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="grant record kind"):
        GrantRecord("stolen", "g-1")
