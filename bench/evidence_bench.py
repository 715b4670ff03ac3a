"""Evidence core throughput: chain hashing, checkpoint notes, Merkle tree and proofs.

Run: .venv/bin/python bench/evidence_bench.py [--leaves N] [--runs 5]
Each figure is the median of `runs` timed runs (time.perf_counter); each ratio compares an
operation with its raw-primitive baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

from protos.evidence import (
    GENESIS,
    Checkpoint,
    MerkleTree,
    NoteSigner,
    extend,
    generate_key,
    leaf_hash,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
    verify_links,
)

EVENT_SIZE = 300


def median_rate(runs: int, count: int, fn: Callable[[], object]) -> float:
    """Operations per second: median over `runs` timings of `fn`, which does `count` ops."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leaves", type=int, default=1 << 20, help="Merkle tree size")
    parser.add_argument("--events", type=int, default=100_000, help="events per chain run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs, n_events, n_leaves = args.runs, args.events, args.leaves
    rng = random.Random(7)
    events = [os.urandom(EVENT_SIZE) for _ in range(n_events)]
    rows: list[tuple[str, float, str]] = []

    # Chain: the baseline is one bare SHA-256 of each 300-byte event.
    base = median_rate(runs, n_events, lambda: [hashlib.sha256(e).digest() for e in events])
    rows.append(("sha256 of a 300-byte event (baseline)", base, "1.00"))
    chain = median_rate(runs, n_events, lambda: extend(GENESIS, 0, events))
    rows.append(("chain extend, 300-byte events", chain, f"{chain / base:.2f} of sha256"))
    links = extend(GENESIS, 0, events)
    check = median_rate(runs, n_events, lambda: verify_links(GENESIS, 0, links))
    rows.append(("chain verify_links", check, f"{check / base:.2f} of sha256"))

    # Checkpoint notes: the baseline is a raw Ed25519 sign/verify of the same body.
    key = generate_key()
    signer = NoteSigner("custodes.example/agent/clinic-01", key)
    verifiers = [signer.verifier()]
    cp = Checkpoint(signer.name, 123456789, links[-1].hash)
    body = cp.body()
    public = key.public_key()
    raw_sig = key.sign(body)
    n_sig = 5000
    raw_sign = median_rate(runs, n_sig, lambda: [key.sign(body) for _ in range(n_sig)])
    rows.append(("ed25519 sign (baseline)", raw_sign, "1.00"))
    sign = median_rate(runs, n_sig, lambda: [signer.sign(cp) for _ in range(n_sig)])
    rows.append(("checkpoint sign (note)", sign, f"{sign / raw_sign:.2f} of ed25519"))
    note = signer.sign(cp)
    raw_verify = median_rate(
        runs, n_sig, lambda: [public.verify(raw_sig, body) for _ in range(n_sig)]
    )
    rows.append(("ed25519 verify (baseline)", raw_verify, "1.00"))
    verify = median_rate(
        runs, n_sig, lambda: [verify_checkpoint(note, verifiers) for _ in range(n_sig)]
    )
    rows.append(("checkpoint parse + verify", verify, f"{verify / raw_verify:.2f} of ed25519"))

    # Merkle tree at n_leaves; the baseline is hashing the leaves alone.
    leaf_data = [i.to_bytes(8, "big") for i in range(n_leaves)]
    leaves = [leaf_hash(d) for d in leaf_data]
    lh = median_rate(runs, n_leaves, lambda: [leaf_hash(d) for d in leaf_data])
    rows.append((f"leaf_hash x{n_leaves} (baseline)", lh, "1.00"))
    append = median_rate(runs, n_leaves, lambda: MerkleTree(leaves))
    rows.append((f"merkle append to {n_leaves}", append, f"{append / lh:.2f} of leaf_hash"))
    tree = MerkleTree(leaves)
    n_proofs = 20_000
    pairs = [(rng.randrange(n_leaves), rng.randrange(1, n_leaves + 1)) for _ in range(n_proofs)]
    pairs = [(min(i, s - 1), s) for i, s in pairs]
    olds = [(rng.randrange(1, n_leaves + 1), n_leaves) for _ in range(n_proofs)]
    root = median_rate(runs, n_proofs, lambda: [tree.root(s) for _, s in pairs])
    rows.append(("root(any past size)", root, ""))
    inc = median_rate(runs, n_proofs, lambda: [tree.inclusion_proof(i, s) for i, s in pairs])
    rows.append(("inclusion proof, any (index, size)", inc, ""))
    con = median_rate(runs, n_proofs, lambda: [tree.consistency_proof(o, n) for o, n in olds])
    rows.append(("consistency proof, any old -> full", con, ""))
    full_root = tree.root()
    i = n_leaves // 3
    proof = tree.inclusion_proof(i)
    vinc = median_rate(
        runs,
        n_proofs,
        lambda: [
            verify_inclusion(leaves[i], i, n_leaves, proof, full_root) for _ in range(n_proofs)
        ],
    )
    rows.append(("inclusion verify", vinc, ""))
    old = n_leaves // 3 + 1
    cproof, old_root = tree.consistency_proof(old), tree.root(old)
    vcon = median_rate(
        runs,
        n_proofs,
        lambda: [
            verify_consistency(old, n_leaves, old_root, full_root, cproof) for _ in range(n_proofs)
        ],
    )
    rows.append(("consistency verify", vcon, ""))

    print(f"evidence_bench: median of {runs} runs, Python {sys.version.split()[0]}")
    print(f"{'operation':<40} {'ops/s':>14}  ratio")
    print("-" * 72)
    for name, rate, ratio in rows:
        print(f"{name:<40} {rate:>14,.0f}  {ratio}")


if __name__ == "__main__":
    main()
