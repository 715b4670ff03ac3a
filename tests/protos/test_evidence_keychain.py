"""The forward-secure key chain: learnt only when covered, old and unknown epochs refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.evidence import (
    GENESIS,
    Checkpoint,
    MalformedError,
    NoteSigner,
    UnknownKeyError,
    extend,
    generate_key,
    public_key_bytes,
)
from protos.evidence.bundle import verify_stream
from protos.evidence.keychain import (
    EpochKey,
    KeyChain,
    RetiredKeyError,
    Rotation,
    checkpoint_epoch,
    rotation_of,
)
from protos.evidence.origins import agent_origin, server_log_origin
from protos.wire import pb

ORIGIN = agent_origin("clinic-a", "host-01")


def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


def note(s: NoteSigner, size: int, epoch: int | None, root: bytes = b"\x01" * 32) -> bytes:
    ext = () if epoch is None else (f"epoch {epoch}",)
    return s.sign(Checkpoint(ORIGIN, size, root, ext))


def public(s: NoteSigner) -> bytes:
    return s.verifier().public


def test_origins_are_the_agreed_formats() -> None:
    assert ORIGIN == "custodes.agent/clinic-a/host-01"
    assert server_log_origin("host-01") == "custodes.server/host-01"


def test_a_rotation_is_learnt_once_a_checkpoint_of_the_old_key_covers_it() -> None:
    old, new = signer(), signer()
    chain = KeyChain.enrolled(ORIGIN, public(old))
    chain.announce(Rotation(4, 1, public(new)))
    chain.verify(note(old, 4, 0))  # does not cover seq 4 yet
    assert chain.current.epoch == 0
    chain.verify(note(old, 5, 0))
    assert chain.current == EpochKey(1, public(new), 5, 4)
    chain.verify(note(new, 9, 1))
    assert [k.epoch for k in chain.learnt] == [1]


def test_the_old_key_is_refused_after_rotation() -> None:
    old, new = signer(), signer()
    chain = KeyChain.enrolled(ORIGIN, public(old))
    chain.announce(Rotation(0, 1, public(new)))
    chain.verify(note(old, 1, 0))
    with pytest.raises(RetiredKeyError, match="stolen copy"):
        chain.verify(note(old, 2, 0))


def test_a_key_never_announced_is_refused() -> None:
    old, stranger = signer(), signer()
    chain = KeyChain.enrolled(ORIGIN, public(old))
    with pytest.raises(UnknownKeyError, match="never announced"):
        chain.verify(note(stranger, 3, 1))


def test_an_announced_key_is_refused_before_a_checkpoint_covers_it() -> None:
    old, new = signer(), signer()
    chain = KeyChain.enrolled(ORIGIN, public(old))
    chain.announce(Rotation(7, 1, public(new)))
    with pytest.raises(UnknownKeyError):
        chain.verify(note(new, 8, 1))


def test_a_checkpoint_naming_the_current_epoch_but_signed_by_another_key_is_refused() -> None:
    old, stranger = signer(), signer()
    chain = KeyChain.enrolled(ORIGIN, public(old))
    with pytest.raises(UnknownKeyError):
        chain.verify(note(stranger, 3, 0))


def test_two_epochs_cannot_be_learnt_from_one_checkpoint() -> None:
    k0, k1, k2 = signer(), signer(), signer()
    chain = KeyChain.enrolled(ORIGIN, public(k0))
    chain.announce(Rotation(1, 1, public(k1)))
    chain.announce(Rotation(2, 2, public(k2)))
    chain.verify(note(k0, 3, 0))
    assert chain.current.epoch == 1
    with pytest.raises(UnknownKeyError):
        chain.verify(note(k2, 4, 2))


@pytest.mark.parametrize(
    ("rotation", "match"),
    [
        (Rotation(1, 0, bytes(32)), "is not an Ed25519|expected a later epoch"),
        (Rotation(1, 1, b"short"), "32-byte"),
    ],
)
def test_bad_announcements_are_malformed(rotation: Rotation, match: str) -> None:
    chain = KeyChain.enrolled(ORIGIN, public(signer()))
    good = public(signer())
    fixed = Rotation(rotation.seq, rotation.epoch, rotation.public if rotation.epoch else good)
    with pytest.raises(MalformedError, match=match):
        chain.announce(fixed)


def test_one_epoch_announced_with_two_keys_is_malformed() -> None:
    chain = KeyChain.enrolled(ORIGIN, public(signer()))
    chain.announce(Rotation(1, 1, public(signer())))
    with pytest.raises(MalformedError, match="again"):
        chain.announce(Rotation(2, 1, public(signer())))


def test_a_past_checkpoint_verifies_with_its_own_epoch_within_its_span() -> None:
    old, new = signer(), signer()
    chain = KeyChain.enrolled(ORIGIN, public(old))
    chain.announce(Rotation(2, 1, public(new)))
    chain.verify(note(old, 3, 0))
    assert chain.verify_past(note(old, 3, 0)).size == 3
    with pytest.raises(RetiredKeyError):
        chain.verify_past(note(old, 9, 0))
    with pytest.raises(UnknownKeyError):
        chain.verify_past(note(signer(), 9, 2))


def test_rotation_of_reads_key_rotated_events_only() -> None:
    key = public_key_bytes(generate_key())
    ev = pb.Event(agent_id="a", client="c", seq=5)
    ev.key_rotated.epoch = 3
    ev.key_rotated.public_key = key
    assert rotation_of(5, ev.SerializeToString()) == Rotation(5, 3, key)
    other = pb.Event(agent_id="a", client="c", seq=6)
    other.stopped.reason = "bye"
    assert rotation_of(6, other.SerializeToString()) is None
    with pytest.raises(MalformedError):
        rotation_of(7, b"\xff\xff\xff")


@pytest.mark.parametrize(("ext", "epoch"), [((), 0), (("epoch 7",), 7), (("boot x", "epoch 2"), 2)])
def test_checkpoint_epoch(ext: tuple[str, ...], epoch: int) -> None:
    assert checkpoint_epoch(Checkpoint(ORIGIN, 1, bytes(32), ext)) == epoch


def _rotating_stream(
    rotate_at: list[int], n: int
) -> tuple[list[bytes], list[bytes], NoteSigner, list[Rotation]]:
    """n events; a KeyRotated event at each seq in `rotate_at`, each followed by a checkpoint
    of the old key right after it; a checkpoint every 5 events otherwise."""
    keys = [signer()]
    events: list[bytes] = []
    rotations: list[Rotation] = []
    for seq in range(n):
        if seq in rotate_at:
            keys.append(signer())
            rotations.append(Rotation(seq, len(keys) - 1, public(keys[-1])))
            ev = pb.Event(agent_id="host-01", client="clinic-a", seq=seq)
            ev.key_rotated.epoch = len(keys) - 1
            ev.key_rotated.public_key = public(keys[-1])
            events.append(ev.SerializeToString())
        else:
            events.append(f"event {seq}".encode())
    links = extend(GENESIS, 0, events)
    notes: list[bytes] = []
    epoch = 0
    for size in range(1, n + 1):
        announced = [r for r in rotations if r.seq == size - 1]
        if announced or size % 5 == 0 or size == n:
            notes.append(note(keys[epoch], size, epoch, links[size - 1].hash))
        if announced:
            epoch = announced[0].epoch
    return events, notes, keys[0], rotations


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 59), max_size=6, unique=True), st.integers(60, 80))
def test_any_rotation_schedule_verifies_as_a_stream(rotate_at: list[int], n: int) -> None:
    events, notes, first, rotations = _rotating_stream(sorted(rotate_at), n)
    links = extend(GENESIS, 0, events)
    summary = verify_stream(
        "host-01", KeyChain.enrolled(ORIGIN, public(first)), notes, links, rotations=rotations
    )
    assert summary.epoch == len(rotate_at)
    assert summary.signed_size == n
