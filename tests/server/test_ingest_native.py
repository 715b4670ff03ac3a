"""Ingest's C fast path (protos.evidence._native via `read_batch`) against the Python checks.

The step-by-step `check_batch` then `parse_records` are the one reference: for any batch,
`read_batch` answers None or exactly what they accept (records, observations, rotations,
leaves, head), never a different accepted result; for a plain batch of access events it
must answer. Events are random (every field, unicode, empty, extreme values, enum numbers
the name tables do not know) and serialised by protobuf; then mutated byte by byte, cut
short, given a duplicated or unknown field, or invalid UTF-8 in a field the record does
not keep.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.evidence import _native
from protos.evidence.chain import GENESIS, extend
from protos.evidence.keychain import EpochKey, KeyChain
from protos.evidence.merkle import record_leaves
from protos.evidence.origins import agent_origin
from protos.wire import pb
from server.batch_checks import (
    RefusedError,
    StreamState,
    check_batch,
    check_native_fields,
    parse_records,
    read_batch,
    wire_fields,
)
from server.detect.model import Observation
from server.store import StoredRecord

AGENT, CLIENT = "clinic-01", "clinic"
MAX_EVENTS = 64
U32, I64, U64 = 2**32 - 1, 2**63, 2**64 - 1

texts = st.text(max_size=12) | st.sampled_from(["", "tech1", "root", "Zoë 医疗", "\x00"])
u32 = st.integers(0, U32) | st.sampled_from([0, U32])
i64 = st.integers(-I64, I64 - 1) | st.sampled_from([-1, 0, U32, -I64, I64 - 1])
u64 = st.integers(0, U64) | st.sampled_from([0, U64])
# Known values, values no table names, and the int32 extremes protobuf keeps for open enums.
enums = st.integers(0, 8) | st.integers(-(2**31), 2**31 - 1)


@st.composite
def access_fields(draw: st.DrawFn) -> dict[str, Any]:
    """The parts of an access event, every field drawn (empty or absent included)."""
    return {
        "boot_id": draw(texts),
        "unix_nanos": draw(i64),
        "subject": {
            "technician": draw(texts),
            "principal": draw(texts),
            "os_user": draw(texts),
            "uid": draw(u32),
            "loginuid": draw(i64),
            "login_user": draw(texts),
            "session_id": draw(u32),
            "pid": draw(u32),
            "ppid": draw(u32),
            "exe": draw(texts),
            "cmdline": draw(texts),
        },
        "object": {
            "path": draw(texts),
            "area": draw(texts),
            "kinds": draw(st.lists(texts, max_size=4)),
            "individuals_estimate": draw(u32),
            "device": draw(u64),
            "inode": draw(u64),
        },
        "action": draw(enums),
        "verdict": draw(enums),
        "reason": draw(texts),
        "rule": draw(texts),
        "grant_id": draw(texts),
        "mode": draw(enums),
        "parts": draw(st.sampled_from(["both", "subject", "object", "none"])),
    }


PLAIN: dict[str, Any] = {
    "boot_id": "b",
    "unix_nanos": 1,
    "subject": {"technician": "tech1", "os_user": "root", "loginuid": 1001},
    "object": {"path": "/srv/clinic/a.pdf", "area": "records", "kinds": ["health"]},
    "action": 1,
    "verdict": 1,
    "mode": 1,
    "reason": "",
    "rule": "grant",
    "grant_id": "",
    "parts": "both",
}


def _event(seq: int, f: dict[str, Any]) -> bytes:
    ev = pb.Event(
        agent_id=AGENT, client=CLIENT, boot_id=f["boot_id"], seq=seq, unix_nanos=f["unix_nanos"]
    )
    a = ev.access
    a.SetInParent()  # an access event even when every field below is a default
    a.action, a.verdict, a.mode = f["action"], f["verdict"], f["mode"]
    a.reason, a.rule, a.grant_id = f["reason"], f["rule"], f["grant_id"]
    if f["parts"] in ("both", "subject"):
        a.subject.CopyFrom(pb.Subject(**f["subject"]))
    if f["parts"] in ("both", "object"):
        a.object.CopyFrom(pb.Object(**f["object"]))
    return ev.SerializeToString()


def _batch(events: list[bytes], first: int = 0, prev: bytes = GENESIS) -> pb.EventBatch:
    batch = pb.EventBatch(batch_id=1, prev_hash=prev, checkpoint=b"note")
    for k in extend(prev, first, events):
        batch.records.add(seq=k.seq, event=k.event, chain_hash=k.hash)
    return batch


def _state() -> StreamState:
    return StreamState(
        AGENT, CLIENT, KeyChain(agent_origin(CLIENT, AGENT), EpochKey(0, bytes(32))), 0
    )


def _reference(batch: pb.EventBatch, observe: bool) -> tuple[Any, ...] | None:
    """What the step-by-step checks accept, or None when they refuse."""
    try:
        links, head = check_batch(_state(), 0, GENESIS, batch, MAX_EVENTS)
        records, observations, rotations = parse_records(_state(), links, 0, observe=observe)
    except RefusedError:
        return None
    return records, observations, rotations, record_leaves(0, [k.hash for k in links]), head


def _fast(batch: pb.EventBatch, observe: bool) -> tuple[Any, ...] | None:
    return read_batch(_state(), 0, GENESIS, batch, MAX_EVENTS, observe=observe)


def _same(got: tuple[Any, ...], want: tuple[Any, ...]) -> None:
    assert got == want
    records, observations = got[0], got[1]
    assert all(type(r) is StoredRecord for r in records)
    assert observations is None or all(type(o) is Observation for o in observations)
    # Equal is not enough where Python's == is lenient: the same types field by field.
    for mine, theirs in zip(records + (observations or []), want[0] + (want[1] or []), strict=True):
        assert [type(x) for x in mine] == [type(x) for x in theirs]


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(access_fields(), min_size=1, max_size=6), st.booleans())
def test_a_plain_access_batch_gives_exactly_the_reference_result(
    fields: list[dict[str, Any]], observe: bool
) -> None:
    batch = _batch([_event(seq, f) for seq, f in enumerate(fields)])
    want = _reference(batch, observe)
    assert want is not None
    got = _fast(batch, observe)
    assert got is not None
    _same(got, want)


def _mutated(event: bytes, seq: int, how: str, data: st.DataObject) -> bytes:
    if how == "flip" and event:
        at = data.draw(st.integers(0, len(event) - 1))
        return event[:at] + bytes([data.draw(st.integers(0, 255))]) + event[at + 1 :]
    if how == "cut":
        return event[: data.draw(st.integers(0, max(0, len(event) - 1)))]
    if how == "insert":
        at = data.draw(st.integers(0, len(event)))
        return event[:at] + data.draw(st.binary(min_size=1, max_size=3)) + event[at:]
    if how == "same_seq_again":  # protobuf overrides: the same value, still not plain
        return event + pb.Event(seq=seq).SerializeToString()  # (seq 0 is not on the wire)
    if how == "access_again":  # protobuf merges the two: the rule changes
        return event + pb.Event(access=pb.AccessDecision(rule="merged")).SerializeToString()
    if how == "subject_again":
        extra = pb.AccessDecision(subject=pb.Subject(technician="merged"))
        return event + pb.Event(access=extra).SerializeToString()
    if how == "unknown_field":
        return event + b"\xf8\x06\x01"  # field 111, varint 1
    return event


def _bad_utf8(field: str) -> bytes:
    """An access event whose `field` (a string the record does not keep) is invalid UTF-8."""
    marker = "MARKER:)"
    a = pb.AccessDecision(rule="grant")
    if field == "reason":
        a.reason = marker
    else:
        setattr(a.subject, field, marker)
    ev = pb.Event(agent_id=AGENT, client=CLIENT, seq=0, access=a).SerializeToString()
    return ev.replace(marker.encode(), b"\xed\xa0\x80:)\xc0\xaf\xff"[:8])


@SETTINGS
@given(
    st.lists(access_fields(), min_size=1, max_size=4),
    st.sampled_from(
        [
            "flip",
            "cut",
            "insert",
            "same_seq_again",
            "access_again",
            "subject_again",
            "unknown_field",
        ]
    ),
    st.data(),
)
def test_a_mutated_event_gives_none_or_exactly_the_reference_result(
    fields: list[dict[str, Any]], how: str, data: st.DataObject
) -> None:
    events = [_event(seq, f) for seq, f in enumerate(fields)]
    at = data.draw(st.integers(0, len(events) - 1))
    events[at] = _mutated(events[at], at, how, data)
    batch = _batch(events)  # chained afresh: only the event bytes are odd
    want = _reference(batch, True)
    got = _fast(batch, True)
    if got is not None:
        assert want is not None
        _same(got, want)
    if how in ("access_again", "subject_again", "unknown_field") or (
        how == "same_seq_again" and at > 0
    ):
        assert got is None


@pytest.mark.parametrize("field", ["reason", "exe", "cmdline", "technician"])
def test_invalid_utf8_in_any_string_field_is_left_to_python(field: str) -> None:
    good = pb.Event(agent_id=AGENT, client=CLIENT, seq=1, access=pb.AccessDecision(rule="r"))
    batch = _batch([_bad_utf8(field), good.SerializeToString()])
    assert _fast(batch, True) is None
    assert _reference(batch, True) is None  # upb refuses it on parse


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not out[-1] & 0x80:
            return bytes(out)


def _hand_made(subject: bytes, access_tail: bytes = b"") -> bytes:
    """Event(agent, client, seq 0, access(subject=`subject` bytes, then `access_tail`))."""
    head = pb.Event(agent_id=AGENT, client=CLIENT).SerializeToString()
    access = b"\x0a" + _varint(len(subject)) + subject + access_tail
    return head + b"\x52" + _varint(len(access)) + access


U32_TAG, ACTION_TAG = b"\x20", b"\x18"  # Subject.uid, AccessDecision.action (varints)


@pytest.mark.parametrize(
    ("event", "fast"),
    [
        (_hand_made(U32_TAG + b"\x81\x80\x00"), True),  # uid 1, not minimally encoded
        (_hand_made(U32_TAG + _varint(2**32 + 5)), True),  # uid truncated to 32 bits: 5
        (_hand_made(U32_TAG + _varint(2**64 - 1)), True),  # 10 bytes, all 64 bits set
        (_hand_made(b"", ACTION_TAG + _varint(2**32 + 1)), True),  # action read (int32 1)
        (_hand_made(b"", ACTION_TAG + _varint(2**64 - 1)), True),  # action -1: no name
        (_hand_made(b"\x28" + _varint(2**64 - 1)), True),  # loginuid -1: unset
        (_hand_made(b"\x28" + _varint(2**32 - 1)), True),  # loginuid 4294967295: unset
        (_hand_made(U32_TAG + b"\xff" * 9 + b"\x7f"), False),  # past 64 bits (upb drops them)
        (_hand_made(U32_TAG + b"\xff" * 10 + b"\x01"), False),  # 11 bytes: upb refuses
        (_hand_made(U32_TAG + b"\xff\xff"), False),  # truncated varint
        (_hand_made(b"\x0a\x05ab"), False),  # a length past the end
        (_hand_made(b"\x22\x01\x01"), False),  # uid with the wire type of a string
        (_hand_made(b"\x0b\x0c"), False),  # a group, protobuf's old wire types
        (_hand_made(b"", b"\x0d\x00\x00\x00\x00"), False),  # fixed32 where a message is
    ],
)
def test_hand_made_encodings_are_read_as_protobuf_reads_them(event: bytes, fast: bool) -> None:
    batch = _batch([event])
    want, got = _reference(batch, True), _fast(batch, True)
    if fast:
        assert want is not None
        assert got is not None
        _same(got, want)
    else:
        assert got is None


def _other(seq: int, kind: str) -> bytes:
    ev = pb.Event(agent_id=AGENT, client=CLIENT, seq=seq)
    if kind == "grant":
        ev.grant.technician = "tech1"
    elif kind == "key_rotated":
        ev.key_rotated.epoch = 1
        ev.key_rotated.public_key = bytes(32)
    elif kind == "started":
        ev.started.version = "1"
    return ev.SerializeToString()


@pytest.mark.parametrize("kind", ["grant", "key_rotated", "started", "none"])
def test_a_batch_with_another_kind_of_event_is_left_to_python(kind: str) -> None:
    events = [_event(0, PLAIN), _other(1, kind), _event(2, PLAIN)]
    batch = _batch(events)
    assert _fast(batch, True) is None
    assert _reference(batch, True) is not None


def test_the_decoders_fields_are_the_protos() -> None:
    assert set(_native.FIELDS) == wire_fields()
    check_native_fields()


def test_a_decoder_that_drifted_from_the_proto_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drifted = [row for row in _native.FIELDS if row[1] != "cmdline"]
    drifted.append(("custodes.v1.Subject", "cmdline", 12, "string", ""))
    monkeypatch.setattr(_native, "FIELDS", tuple(drifted))
    with pytest.raises(RuntimeError, match="cmdline"):
        check_native_fields()


def test_record_types_in_another_field_order_are_refused_at_configure() -> None:
    """The C path fills the tuples by position: a reordered type must not pass silently."""
    fields = list(StoredRecord._fields)
    fields[7], fields[8] = fields[8], fields[7]  # technician <-> account
    reordered = NamedTuple("Reordered", [(f, object) for f in fields])  # type: ignore[misc]
    with pytest.raises(TypeError, match="technician"):
        _native.configure(reordered, Observation, {}, {}, b"")
    fewer = NamedTuple("Fewer", [(f, object) for f in Observation._fields[:-1]])  # type: ignore[misc]
    with pytest.raises(TypeError, match="observation"):
        _native.configure(StoredRecord, fewer, {}, {}, b"")
    batch = _batch([_event(0, PLAIN)])
    fast = _fast(batch, True)
    assert fast is not None
    assert fast == _reference(batch, True)  # the configuration stayed as it was
