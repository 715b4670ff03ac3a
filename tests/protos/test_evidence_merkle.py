"""RFC 6962 Merkle tree: CT reference vectors, and every proof against a naive reference."""

from __future__ import annotations

import hashlib

import pytest

from protos.evidence import (
    EMPTY_ROOT,
    InconsistentTreeError,
    MalformedError,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

# The test vectors of the Certificate Transparency reference implementation
# (merkle_tree_test.cc, also used by trillian and transparency-dev/merkle).
CT_LEAVES = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [  # (0-based leaf index, tree size, audit path)
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def _ct_tree() -> MerkleTree:
    return MerkleTree(leaf_hash(bytes.fromhex(x)) for x in CT_LEAVES)


# --- a naive recursive reference, straight from RFC 6962 section 2.1 -----------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = _k(n)
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [ref_mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], whole), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


# --- tests ---------------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert MerkleTree().root() == EMPTY_ROOT


def test_single_leaf_root_is_its_leaf_hash() -> None:
    assert MerkleTree([leaf_hash(b"")]).root().hex() == CT_ROOTS[0]


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_ct_reference_vectors(size: int) -> None:
    assert _ct_tree().root(size).hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_inclusion_proofs_match_ct_reference_vectors(
    index: int, size: int, path: list[str]
) -> None:
    tree = _ct_tree()
    assert [p.hex() for p in tree.inclusion_proof(index, size)] == path
    leaf = leaf_hash(bytes.fromhex(CT_LEAVES[index]))
    verify_inclusion(leaf, index, size, [bytes.fromhex(p) for p in path], tree.root(size))


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_consistency_proofs_match_ct_reference_vectors(
    old: int, new: int, proof: list[str]
) -> None:
    tree = _ct_tree()
    assert [p.hex() for p in tree.consistency_proof(old, new)] == proof
    verify_consistency(old, new, tree.root(old), tree.root(new), [bytes.fromhex(p) for p in proof])


def test_roots_of_every_past_size_match_the_reference() -> None:
    leaves = _leaves(70)
    tree = MerkleTree(leaves)
    for n in range(71):
        assert tree.root(n) == ref_mth(leaves[:n]), n


def test_append_returns_index_and_grows_size() -> None:
    tree = MerkleTree()
    assert [tree.append(h) for h in _leaves(5)] == [0, 1, 2, 3, 4]
    assert tree.size == 5


def test_every_inclusion_proof_matches_the_reference_and_verifies() -> None:
    leaves = _leaves(33)
    tree = MerkleTree(leaves)
    for size in range(1, 34):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == ref_path(index, leaves[:size])
            verify_inclusion(leaves[index], index, size, proof, root)


def test_every_consistency_proof_matches_the_reference_and_verifies() -> None:
    leaves = _leaves(33)
    tree = MerkleTree(leaves)
    for new in range(1, 34):
        for old in range(1, new + 1):
            proof = tree.consistency_proof(old, new)
            assert proof == ref_subproof(old, leaves[:new], True)
            verify_consistency(old, new, tree.root(old), tree.root(new), proof)


def test_consistency_from_the_empty_tree_is_an_empty_proof() -> None:
    tree = MerkleTree(_leaves(5))
    assert tree.consistency_proof(0) == []
    verify_consistency(0, 5, EMPTY_ROOT, tree.root(), [])


def test_altered_inclusion_proofs_fail() -> None:
    leaves = _leaves(21)
    tree = MerkleTree(leaves)
    for index in range(21):
        proof = tree.inclusion_proof(index)
        root = tree.root()
        for i in range(len(proof)):
            bad = list(proof)
            bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
            with pytest.raises(InconsistentTreeError):
                verify_inclusion(leaves[index], index, 21, bad, root)
        with pytest.raises(InconsistentTreeError, match="too few"):
            verify_inclusion(leaves[index], index, 21, proof[:-1], root)
        with pytest.raises(InconsistentTreeError):
            verify_inclusion(leaves[index], index, 21, [*proof, root], root)
        with pytest.raises(InconsistentTreeError):
            verify_inclusion(leaves[(index + 1) % 21], index, 21, proof, root)


def test_altered_consistency_proofs_fail() -> None:
    tree = MerkleTree(_leaves(21))
    for old in range(1, 21):
        proof = tree.consistency_proof(old)
        old_root, new_root = tree.root(old), tree.root()
        for i in range(len(proof)):
            bad = list(proof)
            bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
            with pytest.raises(InconsistentTreeError):
                verify_consistency(old, 21, old_root, new_root, bad)
        with pytest.raises(InconsistentTreeError):
            verify_consistency(old, 21, old_root, new_root, proof[:-1])
        with pytest.raises(InconsistentTreeError):
            verify_consistency(old, 21, old_root, new_root, [*proof, new_root])
        with pytest.raises(InconsistentTreeError):
            verify_consistency(old, 21, new_root, new_root, proof)


def test_rewritten_history_fails_consistency() -> None:
    leaves = _leaves(10)
    honest = MerkleTree(leaves)
    rewritten = MerkleTree([*leaves[:3], leaf_hash(b"rewritten"), *leaves[4:]])
    proof = rewritten.consistency_proof(6)
    with pytest.raises(InconsistentTreeError, match="old root"):
        verify_consistency(6, 10, honest.root(6), rewritten.root(), proof)


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof", "reason"),
    [
        (5, 4, EMPTY_ROOT, EMPTY_ROOT, [], "shrank"),
        (4, 4, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], "expected none"),
        (4, 4, EMPTY_ROOT, bytes(32), [], "two roots"),
        (0, 4, EMPTY_ROOT, bytes(32), [EMPTY_ROOT], "expected none"),
        (0, 4, bytes(32), bytes(32), [], "empty tree"),
        (2, 4, EMPTY_ROOT, bytes(32), [], "is empty"),
        (2, 4, EMPTY_ROOT, bytes(32), [b"short"], "32"),
        (2, 4, EMPTY_ROOT, bytes(32), [EMPTY_ROOT] * 129, "at most 128"),
    ],
)
def test_bad_consistency_inputs_are_refused(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes], reason: str
) -> None:
    with pytest.raises(InconsistentTreeError, match=reason):
        verify_consistency(old, new, old_root, new_root, proof)


@pytest.mark.parametrize(("index", "size"), [(-1, 4), (4, 4), (0, 0)])
def test_inclusion_outside_the_tree_is_refused(index: int, size: int) -> None:
    with pytest.raises(InconsistentTreeError, match="outside"):
        verify_inclusion(EMPTY_ROOT, index, size, [], EMPTY_ROOT)


def test_tree_refuses_sizes_and_indexes_it_does_not_have() -> None:
    tree = MerkleTree(_leaves(4))
    with pytest.raises(MalformedError):
        tree.root(5)
    with pytest.raises(MalformedError):
        tree.inclusion_proof(4)
    with pytest.raises(MalformedError):
        tree.inclusion_proof(0, 0)
    with pytest.raises(MalformedError):
        tree.consistency_proof(5)
    with pytest.raises(MalformedError):
        tree.append(b"short")
