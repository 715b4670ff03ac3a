"""Offline verification of an exported agent stream."""

from __future__ import annotations

import pytest

from protos.evidence import (
    GENESIS,
    BadSignatureError,
    Checkpoint,
    GapError,
    Link,
    MalformedError,
    ModifiedEventError,
    NoteSigner,
    TruncationError,
    UnknownKeyError,
    extend,
    generate_key,
    link_hash,
    verify_stream,
)

AGENT = "clinic-01"
ORIGIN = "custodes.example/agent/clinic-01"


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


def _stream(signer: NoteSigner, n: int, every: int) -> tuple[list[Link], list[bytes]]:
    links = extend(GENESIS, 0, [f"event {i}".encode() for i in range(n)])
    notes = [
        signer.sign(Checkpoint(ORIGIN, size, links[size - 1].hash))
        for size in range(every, n + 1, every)
    ]
    return links, notes


def test_whole_stream_verifies_and_summarises(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 25, 10)
    summary = verify_stream(AGENT, signer.vkey(), notes, links, origin=ORIGIN)
    assert summary.events == 25
    assert summary.first_seq == 0
    assert summary.next_seq == 25
    assert summary.head == links[-1].hash
    assert summary.checkpoints_verified == 2
    assert summary.signed_size == 20
    assert summary.unsigned_tail == 5


def test_truncated_stream_is_detected(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 25, 10)
    with pytest.raises(TruncationError, match="over 20 events") as caught:
        verify_stream(AGENT, signer.vkey(), notes, links[:15])
    assert caught.value.kind == "truncation"
    assert caught.value.seq == 15


def test_rewritten_and_rehashed_history_is_caught_by_the_checkpoint(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 20, 10)
    forged = extend(GENESIS, 0, [b"innocent"] + [link.event for link in links[1:]])
    with pytest.raises(ModifiedEventError, match="signed checkpoint says"):
        verify_stream(AGENT, signer.vkey(), notes, forged)


def test_stream_from_a_stated_start_verifies(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 30, 10)
    summary = verify_stream(
        AGENT, signer.vkey(), notes, links[12:], start_seq=12, prev=links[11].hash
    )
    assert summary.checkpoints_before_start == 1
    assert summary.checkpoints_verified == 2
    assert summary.signed_size == 30
    assert summary.unsigned_tail == 0


def test_checkpoint_exactly_at_the_start_is_checked_against_prev(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 20, 10)
    with pytest.raises(ModifiedEventError):
        verify_stream(AGENT, signer.vkey(), notes, links[10:], start_seq=10, prev=bytes(32))


def test_gap_in_stream_is_reported(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 20, 10)
    with pytest.raises(GapError):
        verify_stream(AGENT, signer.vkey(), notes, links[:5] + links[6:])


def test_checkpoint_by_another_key_is_refused(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 10, 10)
    other = NoteSigner(ORIGIN, generate_key())
    with pytest.raises(UnknownKeyError):
        verify_stream(AGENT, other.vkey(), notes, links)


def test_checkpoint_for_another_origin_is_refused(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 10, 10)
    with pytest.raises(BadSignatureError, match="origin"):
        verify_stream(AGENT, signer.vkey(), notes, links, origin="custodes.example/agent/x")


def test_junk_vkey_is_malformed(signer: NoteSigner) -> None:
    links, notes = _stream(signer, 10, 10)
    with pytest.raises(MalformedError):
        verify_stream(AGENT, "not a key", notes, links)


def test_no_checkpoints_proves_only_the_chain(signer: NoteSigner) -> None:
    links, _ = _stream(signer, 5, 10)
    summary = verify_stream(AGENT, signer.vkey(), [], links)
    assert summary.checkpoints_verified == 0
    assert summary.unsigned_tail == 5


def test_empty_export_with_a_signed_checkpoint_is_truncation(signer: NoteSigner) -> None:
    note = signer.sign(Checkpoint(ORIGIN, 1, link_hash(GENESIS, 0, b"x")))
    with pytest.raises(TruncationError):
        verify_stream(AGENT, signer.vkey(), [note], [])
