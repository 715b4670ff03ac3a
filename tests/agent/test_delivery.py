"""agent/delivery.py: what a pushed grant, revocation or bundle must be before the agent uses it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.delivery import DeliveryRefusedError, Hooks, ServerGrants, check_bundle, check_grant
from agent.events import GrantRecord
from protos.evidence.keys import public_key_bytes
from protos.signed import sign_agreement, sign_grant, sign_revocation
from protos.wire import pb

NOW = 1_767_225_600
KEY = Ed25519PrivateKey.generate()
PUBLIC = public_key_bytes(KEY)


def wire(**changes: object) -> pb.Grant:
    g = pb.Grant(
        grant_id="jit-1",
        client="clinic",
        technician="tech1",
        area="records",
        actions=[pb.ACTION_READ],
        start_unix=NOW - 60,
        end_unix=NOW + 3600,
        ticket="T-1",
        issued_unix=NOW,
    )
    for k, v in changes.items():
        if k == "actions":
            del g.actions[:]
            g.actions.extend(v)  # type: ignore[arg-type]
        else:
            setattr(g, k, v)
    return g


AT = datetime.fromtimestamp(NOW, UTC)


def test_a_good_grant_becomes_a_policy_grant() -> None:
    grant = check_grant(PUBLIC, "clinic", sign_grant(KEY, wire()), AT)
    assert (grant.id, grant.technician, grant.area) == ("jit-1", "tech1", "records")
    assert grant.end == datetime.fromtimestamp(NOW + 3600, UTC)


def _tampered() -> pb.SignedGrant:
    signed = sign_grant(KEY, wire())
    signed.grant = wire(area="payroll").SerializeToString()
    return signed


@pytest.mark.parametrize(
    ("signed", "words"),
    [
        (sign_grant(Ed25519PrivateKey.generate(), wire()), "does not verify"),
        (_tampered(), "does not verify"),
        (sign_grant(KEY, wire(client="other")), "for client 'other'"),
        (sign_grant(KEY, wire(end_unix=NOW - 1)), "ended"),
        (sign_grant(KEY, wire(start_unix=NOW - 600, end_unix=NOW - 120)), "ended"),
        (sign_grant(KEY, wire(start_unix=NOW + 10, end_unix=NOW + 5)), "malformed"),
        (sign_grant(KEY, wire(actions=[pb.ACTION_UNSPECIFIED])), "malformed"),
        (sign_grant(KEY, wire(actions=[])), "malformed"),
        (sign_grant(KEY, wire(grant_id="")), "malformed"),
        (pb.SignedGrant(grant=b"", signature=b""), "bytes"),
    ],
)
def test_a_bad_grant_is_refused_with_its_reason(signed: pb.SignedGrant, words: str) -> None:
    with pytest.raises(DeliveryRefusedError) as caught:
        check_grant(PUBLIC, "clinic", signed, AT)
    assert words in str(caught.value)


def test_a_bundle_relabelled_for_another_client_or_version_does_not_verify() -> None:
    bundle = sign_agreement(KEY, "clinic", "v1", b"yaml")
    check_bundle(PUBLIC, "clinic", bundle)
    for field, value in (("client", "other"), ("version", "v2"), ("yaml", b"yaml2")):
        moved = pb.AgreementBundle()
        moved.CopyFrom(bundle)
        setattr(moved, field, value)
        with pytest.raises(DeliveryRefusedError):
            check_bundle(PUBLIC, "clinic" if field != "client" else "other", moved)


def _book(tmp_path: Path) -> tuple[ServerGrants, list[GrantRecord], list[int]]:
    journal: list[GrantRecord] = []
    changes: list[int] = []
    hooks = Hooks(
        journal=journal.append,
        grants_changed=lambda: changes.append(1),
        agreement=lambda yaml, version: None,
        agreement_sha256=lambda: "",
    )
    return ServerGrants(PUBLIC, "clinic", tmp_path / "server-grants.json", hooks), journal, changes


def test_revocation_removes_the_grant_and_keeps_it_out_across_a_restart(tmp_path: Path) -> None:
    now = int(datetime.now(UTC).timestamp())
    signed = sign_grant(KEY, wire(start_unix=now - 5, end_unix=now + 600))
    held, journal, changes = _book(tmp_path)
    held.handle(pb.ServerMessage(grant=signed))
    assert [g.id for g in held.grants()] == ["jit-1"]
    restarted, _, _ = _book(tmp_path)
    assert [g.id for g in restarted.grants()] == ["jit-1"]  # kept while offline
    held.handle(pb.ServerMessage(revocation=sign_revocation(KEY, "jit-1", "clinic", now, "done")))
    assert held.grants() == ()
    assert held.revocations() == {"jit-1": "done"}
    held.handle(pb.ServerMessage(grant=signed))  # a late copy
    assert held.grants() == ()
    again, _, _ = _book(tmp_path)
    assert again.grants() == ()
    assert changes == [1, 1]
    assert journal == []
    assert (tmp_path / "server-grants.json").stat().st_mode & 0o077 == 0


def test_a_forged_revocation_is_journaled_and_ignored(tmp_path: Path) -> None:
    now = int(datetime.now(UTC).timestamp())
    held, journal, _ = _book(tmp_path)
    held.handle(pb.ServerMessage(grant=sign_grant(KEY, wire(end_unix=now + 600))))
    forged = sign_revocation(Ed25519PrivateKey.generate(), "jit-1", "clinic", now, "x")
    held.handle(pb.ServerMessage(revocation=forged))
    assert [g.id for g in held.grants()] == ["jit-1"]
    assert [(r.kind, r.grant_id) for r in journal] == [("refused", "jit-1")]
