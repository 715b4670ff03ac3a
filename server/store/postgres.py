"""The shared store: PostgreSQL, for several stateless servers behind one address.

Every method is one transaction on one connection (serialised by a lock; run one store per
worker for parallelism). Events are written with binary COPY. Servers coordinate only
through the database: `append_batch` advances an agent's next_seq with a conditional update,
so of two servers storing the same seq one wins and the other gets StoreConflictError, and
migrations take a transaction-scoped advisory lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import psycopg
from psycopg import conninfo

from server.store import migrations
from server.store.base import StoredRecord, StoreError
from server.store.sql import EVENT_COLUMNS, Cursor, SqlStore, event_rows, mapped_errors

CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK = 0x637573746F646573  # "custodes"
_COPY_EVENTS = f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_EVENT_TYPES = [
    "text",
    "int8",
    "bytea",
    "bytea",
    "bytea",
    "text",
    "int8",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
]


class PostgresStore(SqlStore):
    """A `Store` over a PostgreSQL database named by a libpq URL."""

    dialect: migrations.Dialect = "postgres"

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        try:
            params = conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(
                f"PostgreSQL URL does not parse ({exc}); expected postgresql://..."
            ) from exc
        # Never the URL itself in messages: it may carry a password.
        self._name = f"PostgreSQL store {params.get('dbname', '?')} at {params.get('host', '?')}"
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        with mapped_errors((), (psycopg.Error,), f"cannot connect to {self._name}"):
            return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        with (
            self._lock,
            mapped_errors((psycopg.errors.UniqueViolation,), (psycopg.Error,), self._name),
        ):
            if self._conn.closed:  # the server restarted or the network dropped: start over
                self._conn = self._connect()
            with self._conn.transaction(), self._conn.cursor() as cur:
                yield cur

    def _insert_events(
        self, cur: Cursor, records: Sequence[StoredRecord], leaves: Sequence[bytes]
    ) -> None:
        if not isinstance(cur, psycopg.Cursor):  # pragma: no cover - the protocol's one use
            raise StoreError(f"expected a psycopg cursor, got {type(cur).__name__}")
        with cur.copy(_COPY_EVENTS) as copy:
            copy.set_types(_EVENT_TYPES)
            for row in event_rows(records, leaves):
                copy.write_row(row)

    def _has_table(self, cur: Cursor, name: str) -> bool:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
        return bool(cur.fetchone()[0])

    def _lock_schema(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))

    def _run_script(self, cur: Cursor, sql: str) -> None:
        cur.execute(sql)
