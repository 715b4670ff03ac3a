"""The hash chain: known answers, and each kind of break classified and located."""

from __future__ import annotations

import hashlib
import struct

import pytest

from protos.evidence import (
    GENESIS,
    DuplicateError,
    GapError,
    Link,
    MalformedError,
    ModifiedEventError,
    ReorderError,
    extend,
    link_hash,
    verify_links,
)


def _events(n: int) -> list[bytes]:
    return [f"event-{i}".encode() * 3 for i in range(n)]


def test_link_hash_follows_the_documented_layout() -> None:
    prev = bytes(range(32))
    event = b"\x0a\x03abc"
    expected = hashlib.sha256(
        b"custodes/chain/v1\x00" + prev + struct.pack(">Q", 7) + struct.pack(">Q", 5) + event
    ).digest()
    assert link_hash(prev, 7, event) == expected


def test_link_hash_known_answer_for_the_first_empty_event() -> None:
    # Pinned so an accidental change of the layout breaks every stored chain loudly.
    assert (
        link_hash(GENESIS, 0, b"").hex()
        == hashlib.sha256(b"custodes/chain/v1\x00" + bytes(32) + bytes(16)).hexdigest()
    )


def test_genesis_is_32_zero_bytes() -> None:
    assert bytes(32) == GENESIS


def test_length_prefix_separates_event_from_following_fields() -> None:
    # Without the length, (seq, b"ab") and a shifted split could collide; with it they differ.
    assert link_hash(GENESIS, 1, b"ab") != link_hash(GENESIS, 1, b"ab\x00")


def test_extend_numbers_from_start_and_chains_each_link() -> None:
    links = extend(GENESIS, 5, [b"a", b"b"])
    assert [link.seq for link in links] == [5, 6]
    assert links[0].hash == link_hash(GENESIS, 5, b"a")
    assert links[1].hash == link_hash(links[0].hash, 6, b"b")


def test_valid_chain_returns_its_head() -> None:
    links = extend(GENESIS, 0, _events(10))
    assert verify_links(GENESIS, 0, links) == links[-1].hash


def test_empty_sequence_returns_prev() -> None:
    assert verify_links(b"\x01" * 32, 9, []) == b"\x01" * 32


def test_chain_verifies_in_batches() -> None:
    links = extend(GENESIS, 0, _events(10))
    head = verify_links(GENESIS, 0, links[:4])
    assert verify_links(head, 4, links[4:]) == links[-1].hash


def test_modified_event_is_detected_at_its_seq_with_agent_name() -> None:
    links = extend(GENESIS, 0, _events(5))
    links[3] = Link(3, b"forged", links[3].hash)
    with pytest.raises(ModifiedEventError) as caught:
        verify_links(GENESIS, 0, links, who="clinic-01")
    assert caught.value.kind == "modified"
    assert caught.value.seq == 3
    message = str(caught.value)
    assert "event seq 3 of agent 'clinic-01' does not match its chain hash" in message
    assert "stored" in message
    assert "computed" in message


def test_rehashed_modified_event_breaks_the_next_link() -> None:
    links = extend(GENESIS, 0, _events(5))
    links[2] = Link(2, b"forged", link_hash(links[1].hash, 2, b"forged"))
    with pytest.raises(ModifiedEventError) as caught:
        verify_links(GENESIS, 0, links)
    assert caught.value.seq == 3


def test_deleted_event_is_a_gap() -> None:
    links = extend(GENESIS, 0, _events(5))
    del links[2]
    with pytest.raises(GapError) as caught:
        verify_links(GENESIS, 0, links, who="clinic-01")
    assert caught.value.kind == "gap"
    assert caught.value.seq == 2
    assert "skips seq 2" in str(caught.value)


def test_batch_starting_late_is_a_gap() -> None:
    links = extend(GENESIS, 0, _events(5))
    with pytest.raises(GapError, match=r"skips seq 0\.\.2; expected seq 0"):
        verify_links(GENESIS, 0, links[3:])


def test_swapped_events_are_a_reorder() -> None:
    links = extend(GENESIS, 0, _events(5))
    links[1], links[2] = links[2], links[1]
    with pytest.raises(ReorderError) as caught:
        verify_links(GENESIS, 0, links)
    assert caught.value.kind == "reorder"


def test_repeated_event_is_a_duplicate() -> None:
    links = extend(GENESIS, 0, _events(5))
    links.insert(3, links[2])
    with pytest.raises(DuplicateError) as caught:
        verify_links(GENESIS, 0, links)
    assert caught.value.kind == "duplicate"
    assert caught.value.seq == 2


def test_replayed_batch_is_a_duplicate() -> None:
    links = extend(GENESIS, 0, _events(5))
    head = verify_links(GENESIS, 0, links)
    with pytest.raises(DuplicateError, match="already accepted"):
        verify_links(head, 5, links[3:])


@pytest.mark.parametrize(
    ("seq", "digest"), [(-1, bytes(32)), (2**64, bytes(32)), (0, bytes(31)), (0, bytes(33))]
)
def test_link_rejects_impossible_fields(seq: int, digest: bytes) -> None:
    with pytest.raises(MalformedError):
        Link(seq, b"", digest)


def test_link_hash_rejects_short_prev() -> None:
    with pytest.raises(MalformedError):
        link_hash(b"short", 0, b"")


def test_link_is_frozen() -> None:
    link = extend(GENESIS, 0, [b"a"])[0]
    with pytest.raises(AttributeError):
        link.seq = 3  # type: ignore[misc]


def test_extend_refuses_to_overflow_the_seq_space() -> None:
    assert extend(GENESIS, 2**64 - 1, [b"last"])[0].seq == 2**64 - 1
    with pytest.raises(MalformedError, match="overflow"):
        extend(GENESIS, 2**64 - 1, [b"last", b"one too many"])


def test_extend_refuses_a_bad_prev_even_with_no_events() -> None:
    with pytest.raises(MalformedError):
        extend(b"short", 0, [])


def test_extend_accepts_any_iterable() -> None:
    links = extend(GENESIS, 0, (bytes([i]) for i in range(3)))
    assert verify_links(GENESIS, 0, links) == links[-1].hash
