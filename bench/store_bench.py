"""Evidence store ingest and log-rebuild speed, SQLite and PostgreSQL.

    .venv/bin/python -m bench.store_bench [--runs 5] [--batches 40] [--leaves 1000000]

Ingest: `append_batch` of 500 events of 300 bytes (one transaction each), events/s, median
over --runs runs of --batches batches on a fresh store. The baseline is the same rows
inserted bare (executemany / COPY into a table with only the primary key) in the same run,
so the ratio is what indexes, the agent row update and the checkpoint cost. Rebuild: time to
load --leaves leaf hashes in one query and build the agent's Merkle tree (server restart).
PostgreSQL runs on a throwaway cluster (fsync on) when an initdb binary exists.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from protos.evidence.merkle import MerkleTree
from server.store import AgentRow, Store, StoredRecord, open_store
from server.store.sql import EVENT_COLUMNS, event_rows
from tests.server.conftest import Cluster, find_initdb, fresh_database, start_cluster

BATCH = 500
EVENT_SIZE = 300
AGENT = "bench-01"


def batches(count: int, start: int = 0) -> list[list[StoredRecord]]:
    """`count` batches of BATCH access events with realistic indexed columns."""
    out = []
    seq = start
    for _ in range(count):
        batch = []
        for _ in range(BATCH):
            digest = hashlib.sha256(seq.to_bytes(8, "big")).digest()
            batch.append(
                StoredRecord(
                    agent_id=AGENT,
                    seq=seq,
                    event=(digest * 10)[:EVENT_SIZE],
                    chain_hash=digest,
                    client="clinic",
                    unix_nanos=1_700_000_000_000_000_000 + seq * 1000,
                    kind="access",
                    technician=("tess", None)[seq % 2],
                    account="root",
                    area=("patients", "payroll", None)[seq % 3],
                    action="read",
                    verdict=("allow", "deny")[seq % 5 == 0],
                    rule="in_scope",
                    path=f"/srv/patients/{seq % 1000}/letter.pdf",
                )
            )
            seq += 1
        out.append(batch)
    return out


def enrol(store: Store) -> None:
    store.add_agent(
        AgentRow(AGENT, "clinic", b"k" * 32, "fp", 0, None, 0, bytes(32), None, None, "h")
    )


def ingest(store: Store, work: list[list[StoredRecord]]) -> float:
    """Seconds to append every batch."""
    t0 = time.perf_counter()
    for batch in work:
        store.append_batch(
            AGENT,
            batch[0].seq,
            batch,
            agent_checkpoint=b"checkpoint\n",
            new_head=batch[-1].chain_hash,
            heartbeat_unix=1,
        )
    return time.perf_counter() - t0


def median_rate(runs: int, events: int, one_run: Callable[[], float]) -> float:
    return events / statistics.median(one_run() for _ in range(runs))


BARE = (
    "CREATE TABLE bare (agent_id TEXT NOT NULL, seq BIGINT NOT NULL, event {b} NOT NULL,"
    " chain_hash {b} NOT NULL, leaf_hash {b} NOT NULL, client TEXT NOT NULL,"
    " unix_nanos BIGINT NOT NULL, kind TEXT NOT NULL, technician TEXT, account TEXT,"
    " area TEXT, action TEXT, verdict TEXT, rule TEXT, path TEXT,"
    " PRIMARY KEY (agent_id, seq))"
)


def sqlite_bare(path: Path, work: list[list[StoredRecord]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(BARE.format(b="BLOB"))
    sql = f"INSERT INTO bare VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    t0 = time.perf_counter()
    for batch in work:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, event_rows(batch))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def postgres_bare(url: str, work: list[list[StoredRecord]]) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BARE.format(b="BYTEA"))
        sql = f"INSERT INTO bare VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))})"
        t0 = time.perf_counter()
        for batch in work:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, event_rows(batch))
        return time.perf_counter() - t0


def rebuild(store: Store) -> tuple[float, float, int]:
    """Seconds to load the leaf hashes, seconds to build the tree, and the size."""
    t0 = time.perf_counter()
    leaves = store.leaf_hashes(AGENT)
    t1 = time.perf_counter()
    tree = MerkleTree(leaves)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, tree.size


def fill(store: Store, total: int) -> None:
    done = store.count_events(AGENT)
    while done < total:
        n = min(200, (total - done) // BATCH)
        ingest(store, batches(max(n, 1), start=done))
        done = store.count_events(AGENT)


def stores(tmp: Path, cluster: Cluster | None) -> Iterator[tuple[str, Callable[[], str]]]:
    counter = iter(range(1_000_000))
    yield "sqlite", lambda: str(tmp / f"s{next(counter)}.db")
    if cluster is not None:
        yield "postgres", lambda: _new_pg(cluster)


_pg_dbs: list[object] = []


def _new_pg(cluster: Cluster) -> str:
    ctx = fresh_database(cluster)
    _pg_dbs.append(ctx)
    return ctx.__enter__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    initdb = None if args.no_postgres else find_initdb()
    cluster = start_cluster(initdb, fsync=True) if initdb else None
    work = batches(args.batches)
    events = args.batches * BATCH
    print(
        f"ingest: {args.batches} batches x {BATCH} events x {EVENT_SIZE} B, median of {args.runs}"
    )
    print(f"{'store':<10} {'append_batch ev/s':>18} {'bare insert ev/s':>17} {'ratio':>6}")
    try:
        with tempfile.TemporaryDirectory(prefix="custodes-bench-") as tmp_name:
            tmp = Path(tmp_name)
            rebuilt: list[tuple[str, float, float, int]] = []
            for name, new_url in stores(tmp, cluster):

                def run_store(new_url: Callable[[], str] = new_url) -> float:
                    store = open_store(new_url())
                    enrol(store)
                    elapsed = ingest(store, work)
                    store.close()
                    return elapsed

                def run_bare(name: str = name, new_url: Callable[[], str] = new_url) -> float:
                    url = new_url()
                    if name == "sqlite":
                        return sqlite_bare(Path(url), work)
                    return postgres_bare(url, work)

                rate = median_rate(args.runs, events, run_store)
                bare = median_rate(args.runs, events, run_bare)
                print(f"{name:<10} {rate:>18,.0f} {bare:>17,.0f} {rate / bare:>6.2f}")

                store = open_store(new_url())
                enrol(store)
                t0 = time.perf_counter()
                fill(store, args.leaves)
                fill_s = time.perf_counter() - t0
                loads = [rebuild(store) for _ in range(3)]
                load_s = statistics.median(x[0] for x in loads)
                tree_s = statistics.median(x[1] for x in loads)
                rebuilt.append((name, load_s, tree_s, loads[0][2]))
                print(f"  (filled {loads[0][2]:,} events in {fill_s:.1f} s)")
                store.close()
            print("\nrebuild after restart, median of 3: load leaf hashes, build the tree")
            print(f"{'store':<10} {'events':>10} {'load s':>8} {'tree s':>8}")
            for name, load_s, tree_s, size in rebuilt:
                print(f"{name:<10} {size:>10,} {load_s:>8.2f} {tree_s:>8.2f}")
    finally:
        for ctx in _pg_dbs:
            ctx.__exit__(None, None, None)  # type: ignore[attr-defined]
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
