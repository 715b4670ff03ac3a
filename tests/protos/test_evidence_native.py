"""protos.evidence._native.hash_pairs: RFC 6962 interior nodes of 64-byte pairs, in C."""

from __future__ import annotations

import hashlib

import pytest

from protos.evidence._native import flat_rows, hash_pairs


def _nodes(pairs: bytes) -> bytes:
    return b"".join(
        hashlib.sha256(b"\x01" + pairs[at : at + 64]).digest() for at in range(0, len(pairs), 64)
    )


@pytest.mark.parametrize("count", [0, 1, 2, 15, 16, 17, 1000])
def test_hash_pairs_equals_hashlib(count: int) -> None:
    pairs = bytes(range(256)) * (count // 4 + 1)
    pairs = pairs[: count * 64]
    assert hash_pairs(pairs) == _nodes(pairs)


def test_hash_pairs_takes_a_bytearray_and_a_memoryview() -> None:
    pairs = bytearray(b"\x07" * 64 * 20)
    assert hash_pairs(pairs) == hash_pairs(memoryview(pairs)) == _nodes(bytes(pairs))


@pytest.mark.parametrize("length", [1, 32, 63, 65, 127])
def test_hash_pairs_refuses_a_length_that_is_not_whole_pairs(length: int) -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        hash_pairs(bytes(length))


def test_flat_rows_spreads_records_and_leaves_into_sqlite_parameters() -> None:
    records = [("a", 1, b"ev1", b"h1", "c", 5, None), ("a", 2, b"ev2", b"h2", "c", 6, "x")]
    leaves = [b"l1", b"l2"]
    got = flat_rows(records, leaves)
    want: list[object] = []
    for r, leaf in zip(records, leaves, strict=True):
        want += [r[0], r[1], bytearray(r[2]), bytearray(r[3]), bytearray(leaf), *r[4:]]
    assert got == want
    assert [type(x) for x in got] == [type(x) for x in want]
    assert flat_rows([], []) == []


@pytest.mark.parametrize(
    ("records", "leaves", "error"),
    [
        ([("a", 1, b"e", b"h")], [], ValueError),
        ([("a", 1, b"e", b"h"), ("a", 2, b"e", b"h", "c")], [b"l", b"l"], TypeError),
        ([("a", 1, b"e")], [b"l"], TypeError),
        ([("a", 1, b"e", b"h")], [7], TypeError),  # a blob must be bytes or a buffer
        ([("a", 1, ["e"], b"h")], [b"l"], TypeError),
    ],
)
def test_flat_rows_refuses_rows_it_cannot_spread(
    records: list[tuple[object, ...]], leaves: list[bytes], error: type[Exception]
) -> None:
    with pytest.raises(error):
        flat_rows(records, leaves)  # type: ignore[arg-type]


def test_flat_rows_takes_any_buffer_as_a_blob() -> None:
    got = flat_rows([("a", 1, memoryview(b"ev"), bytearray(b"h"))], [b"l"])
    assert got == ["a", 1, bytearray(b"ev"), bytearray(b"h"), bytearray(b"l")]
