"""The evidence store's contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import psycopg
import pytest

from protos.evidence.merkle import leaf_hash
from server.store import (
    Store,
    StoreConflictError,
    StoredRecord,
    StoreError,
    open_store,
)
from server.store.base import first_out_of_place
from server.store.sqlite import SqliteStore
from tests.server.conftest import ZERO_HASH, agent_row, append, records


def raw_execute(url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    """Write behind the store's back, as another program with database access could."""
    if url.startswith("postgresql://"):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params)
    else:
        with sqlite3.connect(url) as conn:
            conn.execute(sql, params)


# -- agents ------------------------------------------------------------------------------------


def test_enrolled_agent_reads_back(store: Store) -> None:
    row = agent_row()
    store.add_agent(row)
    assert store.get_agent(row.agent_id) == row
    assert store.get_agent("nobody") is None


def test_agent_id_is_enrolled_once(store: Store) -> None:
    store.add_agent(agent_row())
    with pytest.raises(StoreConflictError, match="already enrolled"):
        store.add_agent(agent_row(hostname="other"))


def test_agents_are_listed_per_client(store: Store) -> None:
    for agent_id, client in (("b-1", "beta"), ("a-2", "alpha"), ("a-1", "alpha")):
        store.add_agent(agent_row(agent_id, client))
    assert [a.agent_id for a in store.list_agents()] == ["a-1", "a-2", "b-1"]
    assert [a.agent_id for a in store.list_agents("alpha")] == ["a-1", "a-2"]
    assert store.list_agents("gamma") == []


def test_revoking_an_agent_happens_once(store: Store) -> None:
    store.add_agent(agent_row())
    assert store.revoke_agent("clinic-01", 1_700_000_500) is True
    assert store.revoke_agent("clinic-01", 1_700_000_600) is False
    agent = store.get_agent("clinic-01")
    assert agent is not None
    assert agent.revoked_unix == 1_700_000_500
    assert store.revoke_agent("nobody", 1) is False


def test_revoked_agent_cannot_append(store: Store) -> None:
    store.add_agent(agent_row())
    store.revoke_agent("clinic-01", 1_700_000_500)
    with pytest.raises(StoreError, match="revoked") as caught:
        append(store, records("clinic-01", 0, 3))
    assert not isinstance(caught.value, StoreConflictError)
    assert store.count_events() == 0


def test_touch_keeps_the_latest_heartbeat(store: Store) -> None:
    store.add_agent(agent_row())
    store.touch_agent("clinic-01", 100, b"beat-1")
    store.touch_agent("clinic-01", 200, None)
    agent = store.get_agent("clinic-01")
    assert agent is not None
    assert (agent.last_seen_unix, agent.last_heartbeat) == (200, b"beat-1")
    with pytest.raises(StoreError, match="not enrolled"):
        store.touch_agent("nobody", 1, None)


# -- tokens ------------------------------------------------------------------------------------

TOKEN = b"\x01" * 32


def test_token_is_consumed_once(store: Store) -> None:
    store.add_token(TOKEN, "clinic", "agent", "front-desk", expires_unix=2000)
    token = store.consume_token(TOKEN, now_unix=1000)
    assert (token.client, token.kind, token.name, token.used_unix) == (
        "clinic",
        "agent",
        "front-desk",
        1000,
    )
    with pytest.raises(StoreError, match="already used"):
        store.consume_token(TOKEN, now_unix=1001)


@pytest.mark.parametrize("now", [2000, 2001, 10**10])
def test_expired_token_is_refused(store: Store, now: int) -> None:
    store.add_token(TOKEN, "clinic", "agent", "front-desk", expires_unix=2000)
    with pytest.raises(StoreError, match="expired"):
        store.consume_token(TOKEN, now_unix=now)


def test_unknown_token_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown") as caught:
        store.consume_token(b"\x02" * 32, now_unix=1)
    assert caught.value.hint


def test_token_hash_is_stored_once(store: Store) -> None:
    store.add_token(TOKEN, "clinic", "agent", "one", expires_unix=2000)
    with pytest.raises(StoreConflictError):
        store.add_token(TOKEN, "clinic", "agent", "two", expires_unix=2000)


def test_racing_consumers_get_the_token_once(store: Store, store_url: str) -> None:
    store.add_token(TOKEN, "clinic", "agent", "front-desk", expires_unix=2000)
    other = open_store(store_url)
    results: list[object] = []
    barrier = threading.Barrier(2, timeout=30)

    def consume(s: Store) -> None:
        barrier.wait()
        try:
            results.append(s.consume_token(TOKEN, now_unix=1000))
        except StoreError as exc:
            results.append(exc)

    threads = [threading.Thread(target=consume, args=(s,)) for s in (store, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    other.close()
    assert sorted(type(r).__name__ for r in results) == ["StoreError", "TokenRow"]


# -- append ------------------------------------------------------------------------------------


def test_appended_batch_is_stored_verbatim(store: Store) -> None:
    store.add_agent(agent_row())
    batch = records("clinic-01", 0, 5, technician="tess", verdict="deny", path="/srv/p.pdf")
    assert append(store, batch) == 5
    assert store.events(agent_id="clinic-01") == batch
    agent = store.get_agent("clinic-01")
    assert agent is not None
    assert (agent.next_seq, agent.head_hash) == (5, batch[-1].chain_hash)
    assert agent.last_checkpoint == b"agent checkpoint 5\n"
    assert agent.last_seen_unix == 1_700_000_105
    assert store.count_events("clinic-01") == store.count_events() == 5


@pytest.mark.parametrize(
    "event",
    [b"", b"\x00" * 300, bytes(range(256)), b"\xff" * 70_000, "é\u2014".encode() + b"\x00\x01"],
    ids=["empty", "zeros", "all-bytes", "large", "utf8-and-nul"],
)
def test_event_bytes_round_trip_exactly(store: Store, event: bytes) -> None:
    store.add_agent(agent_row())
    rec = records("clinic-01", 0, 1)[0]
    odd = rec._replace(event=event)
    append(store, [odd])
    assert store.events()[0].event == event


def test_batches_follow_each_other(store: Store) -> None:
    store.add_agent(agent_row())
    assert append(store, records("clinic-01", 0, 3)) == 3
    assert append(store, records("clinic-01", 3, 4)) == 7
    assert store.agent_checkpoints("clinic-01") == [
        b"agent checkpoint 3\n",
        b"agent checkpoint 7\n",
    ]
    assert store.agent_checkpoints("clinic-01", from_size=4) == [b"agent checkpoint 7\n"]


def test_idle_checkpoint_without_records_is_kept(store: Store) -> None:
    store.add_agent(agent_row())
    append(store, records("clinic-01", 0, 2))
    assert append(store, [], expected=2) == 2
    assert store.count_events() == 2


def test_stale_idle_checkpoint_does_not_move_the_head_back(store: Store) -> None:
    store.add_agent(agent_row())
    batch = records("clinic-01", 0, 8)
    append(store, batch)
    assert append(store, [], expected=3) == 8
    agent = store.get_agent("clinic-01")
    assert agent is not None
    assert (agent.next_seq, agent.head_hash) == (8, batch[-1].chain_hash)
    assert agent.last_checkpoint == b"agent checkpoint 8\n"


def test_replayed_batch_is_not_stored_twice(store: Store) -> None:
    store.add_agent(agent_row())
    first, second = records("clinic-01", 0, 4), records("clinic-01", 4, 4)
    append(store, first)
    append(store, second)
    assert append(store, first) == 8
    assert append(store, second) == 8
    assert append(store, first[1:3]) == 8
    assert store.count_events() == 8


def test_different_bytes_at_a_stored_seq_conflict(store: Store) -> None:
    store.add_agent(agent_row())
    append(store, records("clinic-01", 0, 4))
    forged = records("clinic-01", 2, 2, salt=b"forged")
    with pytest.raises(StoreConflictError, match="seq 2 is already stored with other bytes") as c:
        append(store, forged)
    assert c.value.next_seq == 4
    assert store.events() == records("clinic-01", 0, 4)


def test_batch_beyond_next_seq_is_a_gap(store: Store) -> None:
    store.add_agent(agent_row())
    append(store, records("clinic-01", 0, 2))
    with pytest.raises(StoreConflictError, match="next seq is 2") as caught:
        append(store, records("clinic-01", 5, 2))
    assert caught.value.next_seq == 2
    assert store.count_events() == 2


def test_batch_straddling_next_seq_is_refused(store: Store) -> None:
    store.add_agent(agent_row())
    append(store, records("clinic-01", 0, 4))
    with pytest.raises(StoreConflictError) as caught:
        append(store, records("clinic-01", 2, 4))
    assert caught.value.next_seq == 4
    assert store.count_events() == 4


@pytest.mark.parametrize(
    ("seqs", "agent"),
    [([0, 2], "clinic-01"), ([0, 0], "clinic-01"), ([1, 0], "clinic-01"), ([0, 1], "other")],
    ids=["hole", "repeat", "backwards", "other-agent"],
)
def test_malformed_batch_is_refused_before_writing(
    store: Store, seqs: list[int], agent: str
) -> None:
    store.add_agent(agent_row())
    recs = [records(agent, s, 1)[0] for s in seqs]
    with pytest.raises(StoreError, match="contiguous"):
        store.append_batch(
            "clinic-01", 0, recs, agent_checkpoint=b"n", new_head=ZERO_HASH, heartbeat_unix=1
        )
    assert store.count_events() == 0


def test_unknown_agent_cannot_append(store: Store) -> None:
    with pytest.raises(StoreError, match="not enrolled"):
        append(store, records("ghost", 0, 1))


def test_failed_insert_rolls_back_the_whole_batch(store: Store, store_url: str) -> None:
    store.add_agent(agent_row())
    append(store, records("clinic-01", 0, 2))
    stray = records("clinic-01", 4, 1, salt=b"stray")[0]
    raw_execute(
        store_url,
        "INSERT INTO events (agent_id, seq, event, chain_hash, leaf_hash, client, unix_nanos,"
        " kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("clinic-01", 4, stray.event, stray.chain_hash, ZERO_HASH, "clinic", 1, "access"),
    )
    with pytest.raises(StoreConflictError):
        append(store, records("clinic-01", 2, 5))  # seq 4 collides half-way through
    agent = store.get_agent("clinic-01")
    assert agent is not None
    assert (agent.next_seq, agent.last_checkpoint) == (2, b"agent checkpoint 2\n")
    assert sorted(r.seq for r in store.events()) == [0, 1, 4]
    assert store.agent_checkpoints("clinic-01") == [b"agent checkpoint 2\n"]


@pytest.mark.parametrize("same_records", [False, True], ids=["different", "identical"])
def test_racing_appends_store_one_history(store: Store, store_url: str, same_records: bool) -> None:
    store.add_agent(agent_row())
    append(store, records("clinic-01", 0, 10))
    other = open_store(store_url)
    batches = {
        "a": records("clinic-01", 10, 500),
        "b": records("clinic-01", 10, 500, salt=b"" if same_records else b"b"),
    }
    outcome: dict[str, object] = {}
    barrier = threading.Barrier(2, timeout=30)

    def race(name: str, s: Store) -> None:
        barrier.wait()
        try:
            outcome[name] = append(s, batches[name])
        except StoreError as exc:
            outcome[name] = exc

    threads = [
        threading.Thread(target=race, args=(name, s)) for name, s in (("a", store), ("b", other))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    other.close()
    assert store.count_events() == 510
    if same_records:
        assert outcome == {"a": 510, "b": 510}
        return
    winners = [name for name, result in outcome.items() if result == 510]
    losers = [r for r in outcome.values() if isinstance(r, StoreConflictError)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert losers[0].next_seq == 510
    assert store.events(since_nanos=batches["a"][0].unix_nanos, limit=500) == batches[winners[0]]


def test_leaf_hashes_commit_to_seq_and_chain_hash(store: Store) -> None:
    store.add_agent(agent_row())
    store.add_agent(agent_row("other"))
    batch = records("clinic-01", 0, 6)
    append(store, batch)
    append(store, records("other", 0, 3))
    expected = [leaf_hash(r.seq.to_bytes(8, "big") + r.chain_hash) for r in batch]
    assert store.leaf_hashes("clinic-01") == expected
    assert store.leaf_hashes("clinic-01", 4) == expected[4:]
    assert store.leaf_hashes("nobody") == []


# -- checkpoints and integrity -----------------------------------------------------------------


def test_server_checkpoints_are_kept_by_size(store: Store) -> None:
    store.add_agent(agent_row())
    assert store.latest_server_checkpoint("clinic-01") is None
    store.save_server_checkpoint("clinic-01", 10, b"ten")
    store.save_server_checkpoint("clinic-01", 3, b"three")
    store.save_server_checkpoint("clinic-01", 10, b"ten again")
    assert store.latest_server_checkpoint("clinic-01") == b"ten again"
    assert store.server_checkpoint("clinic-01", 3) == b"three"
    assert store.server_checkpoint("clinic-01", 4) is None


def test_integrity_events_keep_their_order(store: Store) -> None:
    store.record_integrity_event("a", "gap", "expected seq 5, got 9", 10)
    store.record_integrity_event("b", "bad_signature", "key 3a", 11)
    store.record_integrity_event("a", "silent", "no heartbeat for 600 s", 12)
    assert [(r.agent_id, r.kind, r.at_unix) for r in store.integrity_events()] == [
        ("a", "gap", 10),
        ("b", "bad_signature", 11),
        ("a", "silent", 12),
    ]
    assert [r.detail for r in store.integrity_events("a")] == [
        "expected seq 5, got 9",
        "no heartbeat for 600 s",
    ]


# -- opening -----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["{}", "sqlite:///{}"])
def test_sqlite_store_opens_from_a_path_or_url(tmp_path: Path, form: str) -> None:
    path = tmp_path / "sub" / "store.db"
    store = open_store(form.format(path))
    store.add_agent(agent_row())
    store.close()
    reopened = open_store(path)
    assert reopened.get_agent("clinic-01") == agent_row()
    reopened.close()


def test_sqlite_store_runs_in_wal_mode(tmp_path: Path) -> None:
    open_store(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unreachable_postgres_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot connect") as caught:
        open_store("postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2")
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("rows_per_insert", [1, 5, 100, 4096])
def test_sqlite_batches_of_any_size_store_every_row_once(
    tmp_path: Path, rows_per_insert: int
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    store._rows_per_insert = rows_per_insert
    store.add_agent(agent_row())
    sent: list[StoredRecord] = []
    # Full chunks of rows_per_insert, then the rest in power-of-two INSERTs, in every combination.
    for size in (1, 2, 7, 23, 4, 16, 64, 130, 200, 263):
        batch = records("clinic-01", len(sent), size)
        append(store, batch)
        sent += batch
    try:
        assert store.records("clinic-01", 0, len(sent)) == sent
        assert store.count_events() == len(sent)
    finally:
        store.close()


def test_background_checkpoint_copies_the_wal_and_stops_at_close(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    store.migrate()
    store.add_agent(agent_row())
    before = path.stat().st_size
    store.checkpoint_in_background(every_s=0.01)
    try:
        append(store, records("clinic-01", 0, 200))  # far below the writer's own checkpoint
        deadline = time.monotonic() + 10
        while path.stat().st_size == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.stat().st_size > before
    finally:
        store.close()
    assert not [t for t in threading.enumerate() if t.name == "custodes-wal-checkpoint"]


@pytest.mark.parametrize(
    ("agents", "seqs", "expected"),
    [
        (["a"] * 3, [5, 6, 7], -1),
        ([], [], -1),
        (["a", "b", "a"], [5, 6, 7], 1),
        (["a"] * 3, [5, 7, 8], 1),
        (["a"] * 3, [4, 5, 6], 0),
        (["a"] * 3, [5, 6, 6], 2),
    ],
)
def test_first_out_of_place_names_the_first_foreign_or_misplaced_record(
    agents: list[str], seqs: list[int], expected: int
) -> None:
    batch = [
        r._replace(agent_id=a, seq=s)
        for r, a, s in zip(records("a", 0, len(seqs)), agents, seqs, strict=True)
    ]
    assert first_out_of_place(batch, "a", 5) == expected
