"""The embedded default store: one SQLite file in WAL mode.

Durability: the database runs with `journal_mode=WAL` and `synchronous=NORMAL`. A committed
transaction survives a crash of the server process, and the file is never corrupted, but
the last transactions before a power loss or kernel crash may be rolled back (WAL is synced
at checkpoints, not at every commit). The ingest acknowledges a batch only after its commit,
so such a loss shows up as a server log *shorter* than a checkpoint the agent already holds:
the agent's consistency check reports it and the events are still in the agent's journal
unless it pruned them. Pass `synchronous="FULL"` to sync the WAL at every commit instead
(slower ingest, no such window).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import structlog

from protos.evidence._native import flat_rows
from server.store import migrations
from server.store.base import StoredRecord
from server.store.sql import EVENT_COLUMNS, Cursor, SqlStore, mapped_errors

log = structlog.get_logger("custodes.server.store")

Synchronous = Literal["NORMAL", "FULL"]
BUSY_TIMEOUT_S = 30.0
WAL_CHECKPOINT_PAGES = 16384  # pages of the default 4 KiB
CHECKPOINT_EVERY_S = 0.25  # see SqliteStore.checkpoint_in_background
CHECKPOINT_STOP_S = 10.0

ROWS_PER_INSERT = 4096  # at most; fewer where SQLite allows fewer bound parameters


@functools.lru_cache(maxsize=16)
def _insert_rows(n: int) -> str:
    """INSERT of `n` event rows in one statement (fixed column names, only placeholders)."""
    row = f"({', '.join('?' * len(EVENT_COLUMNS))})"
    return f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join([row] * n)}"  # noqa: S608


class SqliteStore(SqlStore):
    """A `Store` over one SQLite file; safe to share between threads (one lock).

    Several processes may open the same file: writers serialise on `BEGIN IMMEDIATE` and
    wait up to BUSY_TIMEOUT_S for each other.
    """

    dialect: migrations.Dialect = "sqlite"

    def __init__(self, path: Path, *, synchronous: Synchronous = "NORMAL") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checkpointer: tuple[threading.Thread, threading.Event] | None = None
        with mapped_errors((), (sqlite3.Error, OSError), f"cannot open SQLite store {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(path)
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            # Checkpoint the WAL every ~64 MiB instead of every ~4 MiB: ingest rewrites the
            # same index pages batch after batch, and fewer checkpoints copy each page fewer
            # times (about +10% append_batch events/s over 300k events). The file is cut
            # back to that size after each checkpoint.
            self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            self._conn.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_PAGES * 4096}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            limit = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._rows_per_insert = max(1, min(ROWS_PER_INSERT, limit // len(EVENT_COLUMNS)))

    def checkpoint_in_background(self, every_s: float = CHECKPOINT_EVERY_S) -> None:
        """Copy committed WAL pages into the database file from a thread of its own.

        Otherwise the writer does it: the commit that takes the WAL past
        WAL_CHECKPOINT_PAGES copies all of it, and the writer (the server's database thread,
        which ingest waits on) stalls for that long. A PASSIVE checkpoint every `every_s`
        seconds on a second connection copies the pages while the writer goes on (it never
        blocks a reader or a writer); the writer's own checkpoint, still due at the same
        size, then finds nearly everything copied and only restarts the WAL. For a
        long-running server; a short-lived command needs none. Stopped by `close`.
        """
        if self._checkpointer is not None:
            return
        with mapped_errors((), (sqlite3.Error,), f"cannot open SQLite store {self.path}"):
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=every_s
            )
        stop = threading.Event()
        thread = threading.Thread(
            target=_checkpoint_until,
            args=(conn, stop, every_s, self.path),
            name="custodes-wal-checkpoint",
            daemon=True,
        )
        thread.start()
        self._checkpointer = (thread, stop)

    def close(self) -> None:
        if self._checkpointer is not None:
            thread, stop = self._checkpointer
            stop.set()
            thread.join(CHECKPOINT_STOP_S)
            self._checkpointer = None
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        with (
            self._lock,
            mapped_errors((sqlite3.IntegrityError,), (sqlite3.Error,), f"SQLite store {self.path}"),
        ):
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.rollback()
                raise

    def _insert_events(
        self, cur: Cursor, records: Sequence[StoredRecord], leaves: Sequence[bytes]
    ) -> None:
        """Multi-row INSERTs of up to ROWS_PER_INSERT rows, not executemany.

        executemany steps once per row and lets go of the GIL at every step; with another
        thread busy in Python (ingest verifies the next batch meanwhile) each row then waits
        for the GIL to come back, and inserts fell to a few thousand a second. One statement
        per chunk binds in C and steps once: 135k rows/s alone (executemany 75k), 37-60k
        with a busy thread beside it (executemany 1.7k).
        """
        per, at, end = self._rows_per_insert, 0, len(records)
        while at < end:
            # Full chunks, then powers of two: a handful of distinct statements in all, so
            # the connection's statement cache never holds one per batch size.
            n = per if end - at >= per else 1 << ((end - at).bit_length() - 1)
            cur.execute(_insert_rows(n), _parameters(records[at : at + n], leaves[at : at + n]))
            at += n

    def _has_table(self, cur: Cursor, name: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cur.fetchone() is not None

    def _lock_schema(self, cur: Cursor) -> None:
        """BEGIN IMMEDIATE already holds the database's single write lock."""

    def _run_script(self, cur: Cursor, sql: str) -> None:
        for statement in migrations.sqlite_statements(sql):
            cur.execute(statement)


def _parameters(records: Sequence[StoredRecord], leaves: Sequence[bytes]) -> list[object]:
    """The bound values of one multi-row INSERT, row after row in EVENT_COLUMNS order.

    The three hashes and the event go in as bytearrays: sqlite3 binds a bytearray (like str
    and int) directly, but looks up an adapter for every bytes value first (a tuple, a dict
    lookup and two attribute lookups, under the GIL); the stored BLOBs are the same. Built in
    C (protos.evidence._native.flat_rows), the Python equivalent being, per record r:
    r[0], r[1], bytearray(r[2]), bytearray(r[3]), bytearray(leaf), *r[4:].
    """
    rows = records if isinstance(records, list) else list(records)
    return flat_rows(rows, leaves if isinstance(leaves, list) else list(leaves))


def _checkpoint_until(
    conn: sqlite3.Connection, stop: threading.Event, every_s: float, path: Path
) -> None:
    """Checkpoint the WAL (PASSIVE) every `every_s` seconds until `stop` is set."""
    try:
        while not stop.wait(every_s):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # busy or I/O: the writer's checkpoint remains
                log.warning("wal_checkpoint_failed", path=str(path), error=str(exc))
    finally:
        conn.close()


def _create_private(path: Path) -> None:
    """Create the database file with mode 0600 if it does not exist yet.

    The evidence holds personal information (file names carry patient names), so the file
    is never world-readable, not even for a moment: it is created 0600 here, before SQLite
    opens it, and SQLite gives its -wal and -shm files the database file's mode.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)
