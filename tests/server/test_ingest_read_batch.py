"""Ingest's one-pass batch check (`read_batch`) against the step-by-step checks it stands for.

`read_batch` (in C) must accept a plain batch of access events that `check_batch` then
`parse_records` accept, with the same records, observations, rotations, leaves and head; on
anything else (other kinds of event included) it answers None and the step-by-step checks
name the problem. tests/server/test_ingest_native.py draws random and mutated events.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protos.evidence.chain import GENESIS, extend
from protos.evidence.keychain import EpochKey, KeyChain
from protos.evidence.merkle import record_leaves
from protos.evidence.origins import agent_origin
from protos.wire import pb
from server.batch_checks import RefusedError, StreamState, check_batch, parse_records, read_batch

AGENT, CLIENT = "clinic-01", "clinic"
MAX_EVENTS = 4096


def _state() -> StreamState:
    keys = KeyChain(agent_origin(CLIENT, AGENT), EpochKey(0, bytes(32)))
    return StreamState(AGENT, CLIENT, keys, 0)


def _event(seq: int, *, agent: str = AGENT, grants: bool = False) -> bytes:
    ev = pb.Event(agent_id=agent, client=CLIENT, boot_id="b", seq=seq, unix_nanos=10**18 + seq)
    if seq % 5 == 4 and grants:  # a lifecycle event now and then: the path for other kinds
        ev.grant.technician = "tech1"
        ev.grant.area = "records"
    else:
        ev.access.subject.technician = "tech1" if seq % 2 else ""
        ev.access.subject.os_user = "root"
        ev.access.object.path = f"/srv/records/p-{seq}.pdf"
        ev.access.object.area = "records"
        ev.access.action = pb.ACTION_READ
        ev.access.verdict = pb.VERDICT_ALLOW if seq % 3 else pb.VERDICT_DENY
        ev.access.rule = "grant"
    return ev.SerializeToString()


def _batch(first: int, count: int, prev: bytes = GENESIS, *, grants: bool = False) -> pb.EventBatch:
    links = extend(prev, first, [_event(s, grants=grants) for s in range(first, first + count)])
    batch = pb.EventBatch(batch_id=1, prev_hash=prev, checkpoint=b"note")
    for k in links:
        batch.records.add(seq=k.seq, event=k.event, chain_hash=k.hash)
    return batch


@pytest.mark.parametrize("observe", [True, False])
def test_one_pass_equals_the_step_by_step_checks(observe: bool) -> None:
    batch = _batch(0, 40)
    links, head = check_batch(_state(), 0, GENESIS, batch, MAX_EVENTS)
    records, observations, rotations = parse_records(_state(), links, 0, observe=observe)
    leaves = record_leaves(0, [k.hash for k in links])

    got = read_batch(_state(), 0, GENESIS, batch, MAX_EVENTS, observe=observe)

    assert got == (records, observations, rotations, leaves, head)


def test_one_pass_continues_a_chain_after_its_head() -> None:
    first = _batch(0, 10)
    head = first.records[-1].chain_hash
    got = read_batch(_state(), 10, head, _batch(10, 5, head), MAX_EVENTS, observe=False)
    assert got is not None
    assert [r.seq for r in got[0]] == list(range(10, 15))


def _swap(b: pb.EventBatch) -> None:
    a, c = pb.EventRecord(), pb.EventRecord()
    a.CopyFrom(b.records[1])
    c.CopyFrom(b.records[2])
    b.records[1].CopyFrom(c)
    b.records[2].CopyFrom(a)


def _drop(b: pb.EventBatch) -> None:
    del b.records[2]


def _flip_byte(b: pb.EventBatch) -> None:
    event = bytearray(b.records[3].event)
    event[-1] ^= 1
    b.records[3].event = bytes(event)


def _bad_hash(b: pb.EventBatch) -> None:
    b.records[3].chain_hash = bytes(32)


def _short_hash(b: pb.EventBatch) -> None:
    b.records[3].chain_hash = b.records[3].chain_hash[:31]


def _other_prev(b: pb.EventBatch) -> None:
    b.prev_hash = bytes([1]) * 32


def _garbage_event(b: pb.EventBatch) -> None:
    _relink(b, 2, b"\xff\xff\xff")


def _other_agent(b: pb.EventBatch) -> None:
    _relink(b, 2, _event(2, agent="intruder"))


def _relink(b: pb.EventBatch, at: int, event: bytes) -> None:
    """Put `event` at position `at` with a correct chain from there on (only its bytes lie)."""
    events = [r.event for r in b.records]
    events[at] = event
    for r, k in zip(b.records, extend(b.prev_hash, b.records[0].seq, events), strict=True):
        r.event, r.chain_hash = k.event, k.hash


def _empty(b: pb.EventBatch) -> None:
    del b.records[:]


@pytest.mark.parametrize(
    "tamper",
    [
        _swap,
        _drop,
        _flip_byte,
        _bad_hash,
        _short_hash,
        _other_prev,
        _garbage_event,
        _other_agent,
        _empty,
    ],
)
def test_a_bad_batch_is_left_to_the_checks_that_name_it(
    tamper: Callable[[pb.EventBatch], None],
) -> None:
    batch = _batch(0, 8)
    tamper(batch)

    assert read_batch(_state(), 0, GENESIS, batch, MAX_EVENTS, observe=True) is None
    with pytest.raises(RefusedError):
        _step_by_step(batch)


def _step_by_step(batch: pb.EventBatch) -> None:
    links, _ = check_batch(_state(), 0, GENESIS, batch, MAX_EVENTS)
    parse_records(_state(), links, 0, observe=True)


def test_a_batch_with_other_kinds_of_event_is_left_to_the_checks() -> None:
    batch = _batch(0, 10, grants=True)
    assert read_batch(_state(), 0, GENESIS, batch, MAX_EVENTS, observe=True) is None
    _step_by_step(batch)  # which accept it


def test_a_batch_starting_elsewhere_is_left_to_the_checks() -> None:
    assert read_batch(_state(), 1, GENESIS, _batch(0, 3), MAX_EVENTS, observe=False) is None


def test_a_batch_over_the_limit_is_left_to_the_checks() -> None:
    assert read_batch(_state(), 0, GENESIS, _batch(0, 5), 4, observe=False) is None
