"""The per-agent hash chain: each event's hash covers the previous hash, its seq and bytes.

The chain hashes the exact bytes that travel (a serialised event), never a re-encoding.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protos.evidence.errors import (
    DuplicateError,
    GapError,
    MalformedError,
    ModifiedEventError,
    ReorderError,
    short,
)

GENESIS: bytes = bytes(32)
"""The previous hash of seq 0."""

HASH_SIZE = 32
MAX_SEQ = 2**64 - 1
_DOMAIN = b"custodes/chain/v1\x00"
CHAIN_DOMAIN = _DOMAIN
"""What every link hash starts with (the server's C fast path is seeded with it)."""
_HEADER = struct.Struct(">QQ")
LINK_HEADER = _HEADER
"""seq u64 BE || len(event) u64 BE, as `link_hash` packs them after the previous hash."""
SEEDED = hashlib.sha256(_DOMAIN)
"""SHA-256 already fed the chain's domain; never updated. A receiver checking thousands of
links takes `SEEDED.copy()` and feeds prev || LINK_HEADER || event, which saves hashing the
domain and one concatenation per link (~0.3 µs)."""


def link_hash(prev: bytes, seq: int, event: bytes) -> bytes:
    """SHA-256(domain || prev || seq u64 BE || len(event) u64 BE || event).

    Raises MalformedError when `prev` is not 32 bytes or `seq` does not fit in 64 bits.
    """
    if len(prev) != HASH_SIZE:
        raise MalformedError(f"previous hash is {len(prev)} bytes; expected {HASH_SIZE}")
    if not 0 <= seq <= MAX_SEQ:
        raise MalformedError(f"seq {seq} is outside 0..2^64-1", seq=seq)
    return hashlib.sha256(b"".join((_DOMAIN, prev, _HEADER.pack(seq, len(event)), event))).digest()


@dataclass(frozen=True, slots=True)
class Link:
    """One event in the chain: its seq, its exact bytes, and the chain hash after it."""

    seq: int
    event: bytes
    hash: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.seq <= MAX_SEQ:
            raise MalformedError(f"link seq {self.seq} is outside 0..2^64-1", seq=self.seq)
        if len(self.hash) != HASH_SIZE:
            raise MalformedError(
                f"link seq {self.seq} has a {len(self.hash)}-byte hash; expected {HASH_SIZE}",
                seq=self.seq,
            )


def make_links(triples: Iterable[tuple[int, bytes, bytes]]) -> list[Link]:
    """Links from (seq, event, hash) triples, checked as `Link` checks them but faster.

    For a receiver building thousands of links per batch. Raises MalformedError.
    """
    new, set_field = object.__new__, object.__setattr__
    links: list[Link] = []
    for seq, event, hash_ in triples:
        if not 0 <= seq <= MAX_SEQ or len(hash_) != HASH_SIZE:
            Link(seq, event, hash_)  # raises the error naming what is wrong
        link = new(Link)
        set_field(link, "seq", seq)
        set_field(link, "event", event)
        set_field(link, "hash", hash_)
        links.append(link)
    return links


def extend(prev: bytes, start_seq: int, events: Iterable[bytes]) -> list[Link]:
    """Chain `events` after `prev`, numbering them from `start_seq`.

    Raises MalformedError when `prev` is not 32 bytes or a seq would leave 0..2^64-1.
    """
    link_hash(prev, start_seq, b"")  # validates prev and start_seq once, not per event
    events = list(events)
    if start_seq + len(events) - 1 > MAX_SEQ:
        raise MalformedError(f"{len(events)} events from seq {start_seq} overflow 2^64-1")
    # The hot path of the journal: hash inline and build links without re-validating them.
    sha256, pack, domain = hashlib.sha256, _HEADER.pack, _DOMAIN
    new, set_field = object.__new__, object.__setattr__
    links: list[Link] = []
    for seq, event in enumerate(events, start_seq):
        prev = sha256(domain + prev + pack(seq, len(event)) + event).digest()
        link = new(Link)
        set_field(link, "seq", seq)
        set_field(link, "event", event)
        set_field(link, "hash", prev)
        links.append(link)
    return links


def verify_links(prev: bytes, expected_seq: int, links: Sequence[Link], *, who: str = "") -> bytes:
    """Check that `links` continue the chain at `prev` from `expected_seq`; return the head.

    A seq below what is expected is a DuplicateError (it was already accepted, here or in an
    earlier batch); a seq above it is a ReorderError when the expected seq comes later in
    `links` (a swap) and a GapError when it does not (a deletion). A hash that does not match
    the bytes is a ModifiedEventError. An empty sequence returns `prev`.
    """
    if len(prev) != HASH_SIZE:
        raise MalformedError(f"previous hash is {len(prev)} bytes; expected {HASH_SIZE}")
    of = f" of agent {who!r}" if who else ""
    seeded, pack = SEEDED.copy, _HEADER.pack
    remaining: set[int] | None = None  # built only on the slow path
    for position, link in enumerate(links):
        if link.seq != expected_seq:
            if link.seq < expected_seq:
                raise DuplicateError(
                    f"event seq {link.seq}{of} was already accepted; expected seq {expected_seq}",
                    seq=link.seq,
                )
            if remaining is None:
                remaining = {later.seq for later in links[position + 1 :]}
            if expected_seq in remaining:
                raise ReorderError(
                    f"event seq {link.seq}{of} arrived before seq {expected_seq}; "
                    "expected events in order",
                    seq=link.seq,
                )
            raise GapError(
                f"event seq {link.seq}{of} skips seq {_span(expected_seq, link.seq - 1)}; "
                f"expected seq {expected_seq}",
                seq=expected_seq,
            )
        event = link.event
        h = seeded()
        h.update(prev + pack(expected_seq, len(event)) + event)
        computed = h.digest()
        if computed != link.hash:
            raise ModifiedEventError(
                f"event seq {link.seq}{of} does not match its chain hash "
                f"(stored {short(link.hash)}, computed {short(computed)})",
                seq=link.seq,
            )
        prev = computed
        expected_seq += 1
    return prev


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"
