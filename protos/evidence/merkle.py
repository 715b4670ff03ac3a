"""RFC 6962 / RFC 9162 Merkle tree: incremental, with proofs for any past size.

The tree keeps the hash of every complete, aligned subtree, level by level, in flat
bytearrays (32 bytes a slot), so append is amortised O(1) and a root or proof for any size
up to the current one costs O(log² n) hash look-ups, never a pass over the leaves.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

from protos.evidence._native import hash_pairs
from protos.evidence.errors import InconsistentTreeError, MalformedError, short

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
_SEQ = struct.Struct(">Q")
RECORD_LEAF_INPUT = struct.Struct(">xQ32s")
"""What a record's leaf hash covers: 0x00 (the leaf prefix, a pad byte) || seq || chain hash.

One pack instead of two concatenations: ingest hashes one leaf per event.
"""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def record_leaf(seq: int, chain_hash: bytes) -> bytes:
    """The leaf hash of a stored agent event: SHA-256(0x00 || seq u64 BE || chain hash)."""
    if len(chain_hash) != HASH_SIZE:  # a pack would pad or cut it
        return hashlib.sha256(b"\x00" + _SEQ.pack(seq) + chain_hash).digest()
    return hashlib.sha256(RECORD_LEAF_INPUT.pack(seq, chain_hash)).digest()


def record_leaves(first_seq: int, chain_hashes: Sequence[bytes]) -> list[bytes]:
    """`record_leaf` for consecutive seqs from `first_seq`, in one tight loop."""
    if not set(map(len, chain_hashes)) <= {HASH_SIZE}:
        return [record_leaf(seq, h) for seq, h in enumerate(chain_hashes, first_seq)]
    sha256, pack = hashlib.sha256, RECORD_LEAF_INPUT.pack
    return [sha256(pack(seq, h)).digest() for seq, h in enumerate(chain_hashes, first_seq)]


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 6962 tree over leaf hashes."""

    __slots__ = ("_levels", "_size")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        # _levels[k] holds, back to back, the hashes of the complete subtrees of 2^k leaves.
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Add a leaf hash; return its index. MalformedError if it is not 32 bytes."""
        if len(leaf_hash) != HASH_SIZE:
            raise MalformedError(f"leaf hash is {len(leaf_hash)} bytes; expected {HASH_SIZE}")
        index = self._size
        levels = self._levels
        levels[0] += leaf_hash
        self._size = index + 1
        level, position, current = 0, index, leaf_hash
        while position & 1:  # this node completes a pair: hash it into its parent
            row = levels[level]
            left = bytes(row[(position - 1) * HASH_SIZE : position * HASH_SIZE])
            current = hashlib.sha256(b"\x01" + left + current).digest()
            level += 1
            position >>= 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += current
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append every leaf hash in order; MalformedError (nothing added) if one is not 32 bytes.

        Level by level: the new leaves are added at once, then each level hashes only the
        pairs the new nodes complete, so a batch costs one tight loop per level.
        """
        leaves = leaf_hashes if isinstance(leaf_hashes, list) else list(leaf_hashes)
        if not leaves:
            return
        for leaf in leaves:
            if len(leaf) != HASH_SIZE:
                raise MalformedError(f"leaf hash is {len(leaf)} bytes; expected {HASH_SIZE}")
        levels = self._levels
        old = self._size
        new = old + len(leaves)
        levels[0] += b"".join(leaves)
        level = 0
        while True:
            first, last = old >> 1, new >> 1  # parents completed by this level's new nodes
            if first == last:
                break
            if level + 1 == len(levels):
                levels.append(bytearray())
            # The pairs this level completes, hashed in C without the GIL (ingest's database
            # thread appends while the next batch is verified).
            levels[level + 1] += hash_pairs(levels[level][first * 64 : last * 64])
            old, new, level = first, last, level + 1
        self._size += len(leaves)

    def subtree(self, start: int, end: int) -> bytes:
        """The hash of leaves [start, end) for an aligned power-of-two block (a proof node)."""
        width = end - start
        if width <= 0 or width & (width - 1) or start % width or end > self._size:
            raise MalformedError(
                f"leaves [{start}, {end}) are not an aligned power-of-two block of the tree"
            )
        return self._range(start, end)

    def root(self, size: int | None = None) -> bytes:
        """The tree head for the first `size` leaves (default: all)."""
        size = self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._range(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path for leaf `index` in the tree of `size` leaves (RFC 9162 2.1.3.1)."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise MalformedError(f"leaf index {index} is outside a tree of {size} leaves")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._range(start + k, end))
                end = start + k
            else:
                proof.append(self._range(start, start + k))
                start += k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree of `old_size` is a prefix of `new_size` (RFC 9162 2.1.4.1).

        Empty when `old_size` is 0 or equals `new_size`.
        """
        new_size = self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise MalformedError(f"old size {old_size} is outside 0..{new_size}")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        start, end, whole = 0, new_size, True
        m = old_size
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                proof.append(self._range(start + k, end))
                end = start + k
            else:
                proof.append(self._range(start, start + k))
                start += k
                m -= k
                whole = False
        if not whole:
            proof.append(self._range(start, end))
        proof.reverse()
        return proof

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise MalformedError(f"tree size {size} is outside 0..{self._size}")
        return size

    def _range(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end), where start is aligned as in the RFC 6962 recursion."""
        n = end - start
        pieces: list[bytes] = []
        while n:
            level = n.bit_length() - 1
            width = 1 << level
            slot = start >> level
            pieces.append(bytes(self._levels[level][slot * HASH_SIZE : (slot + 1) * HASH_SIZE]))
            start += width
            n -= width
        result = pieces.pop()
        while pieces:
            result = hashlib.sha256(b"\x01" + pieces.pop() + result).digest()
        return result


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an inclusion proof (RFC 9162 2.1.3.2); InconsistentTreeError if it fails."""
    if not 0 <= index < size:
        raise InconsistentTreeError(f"leaf index {index} is outside a tree of {size} leaves")
    _check_hashes(proof, "inclusion proof")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise InconsistentTreeError(
                f"inclusion proof for leaf {index} of {size} has {len(proof)} hashes; too many"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InconsistentTreeError(
            f"inclusion proof for leaf {index} of {size} has {len(proof)} hashes; too few"
        )
    if r != root:
        raise InconsistentTreeError(
            f"inclusion proof for leaf {index} of {size} leads to root {short(r)}; expected "
            f"the signed root {short(root)}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that tree `old_size` is a prefix of tree `new_size` (RFC 9162 2.1.4.2).

    Raises InconsistentTreeError when the proof does not show it.
    """
    what = f"consistency proof from size {old_size} to {new_size}"
    if not 0 <= old_size <= new_size:
        raise InconsistentTreeError(f"{what}: the tree shrank; expected it only to grow")
    _check_hashes(proof, what)
    if old_size == new_size:
        if proof:
            raise InconsistentTreeError(f"{what} has {len(proof)} hashes; expected none")
        if old_root != new_root:
            raise InconsistentTreeError(
                f"two roots for size {old_size}: {short(old_root)} and {short(new_root)}"
            )
        return
    if old_size == 0:
        if proof:
            raise InconsistentTreeError(f"{what} has {len(proof)} hashes; expected none")
        if old_root != EMPTY_ROOT:
            raise InconsistentTreeError(
                f"root {short(old_root)} for the empty tree; expected {short(EMPTY_ROOT)}"
            )
        return
    if not proof:
        raise InconsistentTreeError(f"{what} is empty; expected hashes")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node itself
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InconsistentTreeError(f"{what} has {len(proof)} hashes; too many")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InconsistentTreeError(f"{what} has {len(proof)} hashes; too few")
    if fr != old_root:
        raise InconsistentTreeError(
            f"{what} rebuilds old root {short(fr)}; expected the signed {short(old_root)}"
        )
    if sr != new_root:
        raise InconsistentTreeError(
            f"{what} rebuilds new root {short(sr)}; expected the signed {short(new_root)}"
        )


def _check_hashes(proof: Sequence[bytes], what: str) -> None:
    if len(proof) > 128:
        raise InconsistentTreeError(f"{what} has {len(proof)} hashes; at most 128 are possible")
    for h in proof:
        if len(h) != HASH_SIZE:
            raise InconsistentTreeError(f"{what} holds a {len(h)}-byte hash; expected 32")
