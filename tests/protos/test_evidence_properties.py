"""Property tests: every tampering of a chain or a Merkle proof is caught, with its kind."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.evidence import (
    GENESIS,
    Checkpoint,
    DuplicateError,
    EvidenceError,
    GapError,
    InconsistentTreeError,
    Link,
    MerkleTree,
    ModifiedEventError,
    NoteSigner,
    ReorderError,
    TruncationError,
    extend,
    generate_key,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
    verify_links,
    verify_stream,
)

AGENT = "clinic-01"
ORIGIN = "custodes.example/agent/clinic-01"
SIGNER = NoteSigner(ORIGIN, generate_key())
VKEY = SIGNER.vkey()

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

events_st = st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=40)
start_st = st.integers(min_value=0, max_value=2**40)
prev_st = st.binary(min_size=32, max_size=32)


def _kind(exc: BaseException) -> str:
    assert isinstance(exc, EvidenceError)
    return exc.kind


@PROPS
@given(events=st.lists(st.binary(max_size=64), max_size=40), start=start_st, prev=prev_st)
def test_valid_chains_always_verify(events: list[bytes], start: int, prev: bytes) -> None:
    links = extend(prev, start, events)
    expected = links[-1].hash if links else prev
    assert verify_links(prev, start, links) == expected


@PROPS
@given(events=events_st, start=start_st, data=st.data())
def test_any_single_byte_change_of_any_event_is_modified(
    events: list[bytes], start: int, data: st.DataObject
) -> None:
    links = extend(GENESIS, start, events)
    i = data.draw(st.integers(0, len(links) - 1), label="link")
    event = bytearray(links[i].event)
    pos = data.draw(st.integers(0, len(event) - 1), label="byte")
    event[pos] ^= data.draw(st.integers(1, 255), label="xor")
    links[i] = Link(links[i].seq, bytes(event), links[i].hash)
    with pytest.raises(ModifiedEventError) as caught:
        verify_links(GENESIS, start, links)
    assert caught.value.seq == start + i


def test_every_single_byte_change_of_a_small_chain_is_modified() -> None:
    links = extend(GENESIS, 0, [b"open /srv/bp/patients.db", b"deny", b"x"])
    for i, link in enumerate(links):
        for pos in range(len(link.event)):
            for xor in (0x01, 0x80, 0xFF):
                event = bytearray(link.event)
                event[pos] ^= xor
                tampered = list(links)
                tampered[i] = Link(link.seq, bytes(event), link.hash)
                with pytest.raises(ModifiedEventError):
                    verify_links(GENESIS, 0, tampered)


@PROPS
@given(events=events_st, data=st.data())
def test_inserted_or_removed_bytes_in_an_event_are_modified(
    events: list[bytes], data: st.DataObject
) -> None:
    links = extend(GENESIS, 0, events)
    i = data.draw(st.integers(0, len(links) - 1))
    extra = data.draw(st.binary(min_size=1, max_size=4))
    changed = data.draw(st.sampled_from([links[i].event + extra, links[i].event[:-1]]))
    links[i] = Link(links[i].seq, changed, links[i].hash)
    with pytest.raises(ModifiedEventError):
        verify_links(GENESIS, 0, links)


@PROPS
@given(events=events_st.filter(lambda e: len(e) >= 2), data=st.data())
def test_deleting_any_link_but_the_last_is_a_gap(events: list[bytes], data: st.DataObject) -> None:
    links = extend(GENESIS, 0, events)
    i = data.draw(st.integers(0, len(links) - 2))
    del links[i]
    with pytest.raises(GapError) as caught:
        verify_links(GENESIS, 0, links)
    assert caught.value.seq == i


@PROPS
@given(events=events_st.filter(lambda e: len(e) >= 2), data=st.data())
def test_swapping_any_two_links_is_a_reorder(events: list[bytes], data: st.DataObject) -> None:
    links = extend(GENESIS, 0, events)
    i = data.draw(st.integers(0, len(links) - 2))
    j = data.draw(st.integers(i + 1, len(links) - 1))
    links[i], links[j] = links[j], links[i]
    with pytest.raises(ReorderError):
        verify_links(GENESIS, 0, links)


@PROPS
@given(events=events_st.filter(lambda e: len(e) >= 2), data=st.data())
def test_any_permutation_is_a_reorder(events: list[bytes], data: st.DataObject) -> None:
    links = extend(GENESIS, 0, events)
    shuffled = data.draw(st.permutations(links))
    if shuffled == links:
        return
    with pytest.raises(ReorderError):
        verify_links(GENESIS, 0, shuffled)


@PROPS
@given(events=events_st, data=st.data())
def test_duplicating_any_link_later_is_a_duplicate(
    events: list[bytes], data: st.DataObject
) -> None:
    links = extend(GENESIS, 0, events)
    i = data.draw(st.integers(0, len(links) - 1))
    at = data.draw(st.integers(i + 1, len(links)))
    links.insert(at, links[i])
    with pytest.raises(DuplicateError) as caught:
        verify_links(GENESIS, 0, links)
    assert caught.value.seq == i


@PROPS
@given(events=events_st, data=st.data())
def test_truncation_against_a_signed_checkpoint_is_detected(
    events: list[bytes], data: st.DataObject
) -> None:
    links = extend(GENESIS, 0, events)
    size = data.draw(st.integers(1, len(links)))
    keep = data.draw(st.integers(0, size - 1))
    note = SIGNER.sign(Checkpoint(ORIGIN, size, links[size - 1].hash))
    with pytest.raises(TruncationError):
        verify_stream(AGENT, VKEY, [note], links[:keep])
    summary = verify_stream(AGENT, VKEY, [note], links)
    assert summary.signed_size == size


@PROPS
@given(events=events_st, data=st.data())
def test_rehashed_forgery_is_caught_by_the_signed_head(
    events: list[bytes], data: st.DataObject
) -> None:
    links = extend(GENESIS, 0, events)
    note = SIGNER.sign(Checkpoint(ORIGIN, len(links), links[-1].hash))
    i = data.draw(st.integers(0, len(links) - 1))
    event = bytearray(links[i].event)
    event[data.draw(st.integers(0, len(event) - 1))] ^= data.draw(st.integers(1, 255))
    forged_events = [link.event for link in links]
    forged_events[i] = bytes(event)
    with pytest.raises(ModifiedEventError):
        verify_stream(AGENT, VKEY, [note], extend(GENESIS, 0, forged_events))


@PROPS
@given(events=events_st, data=st.data())
def test_any_tampering_raises_an_evidence_error_never_passes(
    events: list[bytes], data: st.DataObject
) -> None:
    links = extend(GENESIS, 0, events)
    note = SIGNER.sign(Checkpoint(ORIGIN, len(links), links[-1].hash))
    action = data.draw(st.sampled_from(["delete", "duplicate", "modify", "swap"]))
    i = data.draw(st.integers(0, len(links) - 1))
    tampered = list(links)
    if action == "delete":
        del tampered[i]
    elif action == "duplicate":
        tampered.insert(i, links[i])
    elif action == "modify":
        tampered[i] = Link(links[i].seq, links[i].event + b"!", links[i].hash)
    else:
        j = data.draw(st.integers(0, len(links) - 1))
        if i == j:
            return
        tampered[i], tampered[j] = tampered[j], tampered[i]
    with pytest.raises(EvidenceError) as caught:
        verify_stream(AGENT, VKEY, [note], tampered)
    expected = {
        "delete": {"gap", "truncation"},
        "duplicate": {"duplicate"},
        "modify": {"modified"},
        "swap": {"reorder"},
    }[action]
    assert _kind(caught.value) in expected


# --- Merkle ---------------------------------------------------------------------------------

TREE = MerkleTree(leaf_hash(i.to_bytes(4, "big")) for i in range(300))


@PROPS
@given(data=st.data())
def test_inclusion_proofs_verify_for_any_index_and_size(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, TREE.size))
    index = data.draw(st.integers(0, size - 1))
    proof = TREE.inclusion_proof(index, size)
    leaf = leaf_hash(index.to_bytes(4, "big"))
    verify_inclusion(leaf, index, size, proof, TREE.root(size))


@PROPS
@given(data=st.data())
def test_consistency_proofs_verify_for_any_old_and_new(data: st.DataObject) -> None:
    new = data.draw(st.integers(0, TREE.size))
    old = data.draw(st.integers(0, new))
    proof = TREE.consistency_proof(old, new)
    verify_consistency(old, new, TREE.root(old), TREE.root(new), proof)


@PROPS
@given(data=st.data())
def test_altered_inclusion_proofs_fail(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, TREE.size))
    index = data.draw(st.integers(0, size - 1))
    proof = TREE.inclusion_proof(index, size)
    leaf = leaf_hash(index.to_bytes(4, "big"))
    how = data.draw(st.sampled_from(["flip", "drop", "extend", "index", "size"]))
    claimed_index, claimed_size = index, size
    if how == "flip":
        k = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        h = bytearray(proof[k])
        h[bit // 8] ^= 1 << (bit % 8)
        proof[k] = bytes(h)
    elif how == "drop":
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif how == "extend":
        proof.append(data.draw(st.binary(min_size=32, max_size=32)))
    elif how == "index":
        claimed_index = data.draw(st.integers(0, size - 1).filter(lambda x: x != index))
    else:
        claimed_size = data.draw(st.integers(1, TREE.size).filter(lambda x: x != size))
        claimed_index = min(claimed_index, claimed_size - 1)
    # A checkpoint binds size and root together, so a wrong size comes with its own root.
    with pytest.raises(InconsistentTreeError):
        verify_inclusion(leaf, claimed_index, claimed_size, proof, TREE.root(claimed_size))


@PROPS
@given(data=st.data())
def test_altered_consistency_proofs_fail(data: st.DataObject) -> None:
    new = data.draw(st.integers(2, TREE.size))
    old = data.draw(st.integers(1, new - 1))
    proof = TREE.consistency_proof(old, new)
    old_root, new_root = TREE.root(old), TREE.root(new)
    how = data.draw(st.sampled_from(["flip", "drop", "extend", "old_root", "new_root"]))
    if how == "flip":
        k = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        h = bytearray(proof[k])
        h[bit // 8] ^= 1 << (bit % 8)
        proof[k] = bytes(h)
    elif how == "drop":
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif how == "extend":
        proof.append(data.draw(st.binary(min_size=32, max_size=32)))
    elif how == "old_root":
        old_root = TREE.root(data.draw(st.integers(0, TREE.size).filter(lambda x: x != old)))
    else:
        new_root = TREE.root(data.draw(st.integers(0, TREE.size).filter(lambda x: x != new)))
    with pytest.raises(InconsistentTreeError):
        verify_consistency(old, new, old_root, new_root, proof)
