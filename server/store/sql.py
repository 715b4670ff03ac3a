"""The store's SQL, shared by SQLite and PostgreSQL: each dialect supplies its transactions.

Queries are written once with `?` placeholders; PostgreSQL's subclass turns them into
`%s`. A dialect provides `_transaction` (one transaction, mapped errors), `_insert_events`
(multi-row INSERTs or COPY), `_has_table` and `_lock_schema`.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import structlog

from protos.evidence.merkle import record_leaves
from server.store import migrations
from server.store.base import (
    AgentKeyRow,
    AgentRow,
    EventCursor,
    IntegrityRow,
    SchemaTooNewError,
    Store,
    StoreConflictError,
    StoredRecord,
    StoreError,
    TokenRow,
    first_out_of_place,
)

log = structlog.get_logger("custodes.server.store")

MAX_PAGE = 10_000

_AGENT_COLS = (
    "agent_id, client, public_key, cert_fingerprint, enrolled_unix, revoked_unix, next_seq,"
    " head_hash, last_checkpoint, last_seen_unix, hostname, last_heartbeat"
)
_RECORD_COLS = (
    "agent_id, seq, event, chain_hash, client, unix_nanos, kind,"
    " technician, account, area, action, verdict, rule, path"
)
EVENT_COLUMNS = (
    "agent_id",
    "seq",
    "event",
    "chain_hash",
    "leaf_hash",
    "client",
    "unix_nanos",
    "kind",
    "technician",
    "account",
    "area",
    "action",
    "verdict",
    "rule",
    "path",
)
_TOKEN_COLS = "token_hash, client, kind, name, expires_unix, used_unix"  # noqa: S105 - columns
# Column lists are fixed names, never input: the f-strings below are not an injection vector.
_SELECT_AGENTS = f"SELECT {_AGENT_COLS} FROM agents"  # noqa: S608
_INSERT_AGENT = f"INSERT INTO agents ({_AGENT_COLS}) VALUES ({', '.join('?' * 12)})"  # noqa: S608
_SELECT_TOKEN = f"SELECT {_TOKEN_COLS} FROM enrolment_tokens WHERE token_hash = ?"  # noqa: S608
_INSERT_TOKEN = f"INSERT INTO enrolment_tokens ({_TOKEN_COLS}) VALUES (?, ?, ?, ?, ?, NULL)"  # noqa: S608
_CONSUME_TOKEN = (
    "UPDATE enrolment_tokens SET used_unix = ?"  # noqa: S608
    " WHERE token_hash = ? AND used_unix IS NULL AND expires_unix > ?"
    f" RETURNING {_TOKEN_COLS}"
)
_SELECT_RECORDS = f"SELECT {_RECORD_COLS} FROM events"  # noqa: S608


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses (sqlite3 and psycopg both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def event_rows(
    records: Sequence[StoredRecord], leaves: Sequence[bytes] | None = None
) -> list[tuple[object, ...]]:
    """The rows stored for `records`, in EVENT_COLUMNS order (with their RFC 6962 leaf hashes).

    `records` are contiguous; `leaves` are their leaf hashes when already computed.
    """
    if not records:
        return []
    if leaves is None or len(leaves) != len(records):
        leaves = record_leaves(records[0].seq, [r.chain_hash for r in records])
    # StoredRecord is a tuple in _RECORD_COLS order: splice the leaf in after chain_hash.
    return [(*r[:4], leaf, *r[4:]) for r, leaf in zip(records, leaves, strict=True)]


def _agent(row: Sequence[Any]) -> AgentRow:
    return AgentRow(
        agent_id=row[0],
        client=row[1],
        public_key=bytes(row[2]),
        cert_fingerprint=row[3],
        enrolled_unix=row[4],
        revoked_unix=row[5],
        next_seq=row[6],
        head_hash=bytes(row[7]),
        last_checkpoint=None if row[8] is None else bytes(row[8]),
        last_seen_unix=row[9],
        hostname=row[10],
        last_heartbeat=None if row[11] is None else bytes(row[11]),
    )


def _record(row: Sequence[Any]) -> StoredRecord:
    return StoredRecord(
        agent_id=row[0],
        seq=row[1],
        event=bytes(row[2]),
        chain_hash=bytes(row[3]),
        client=row[4],
        unix_nanos=row[5],
        kind=row[6],
        technician=row[7],
        account=row[8],
        area=row[9],
        action=row[10],
        verdict=row[11],
        rule=row[12],
        path=row[13],
    )


def _token(row: Sequence[Any]) -> TokenRow:
    return TokenRow(bytes(row[0]), row[1], row[2], row[3], row[4], row[5])


class SqlStore(abc.ABC):
    """Everything but the dialect: see the `Store` protocol for what each method promises."""

    dialect: migrations.Dialect

    # -- what a dialect provides -----------------------------------------------------------

    @abc.abstractmethod
    def _transaction(self, *, write: bool) -> contextlib.AbstractContextManager[Cursor]:
        """One transaction; commits on success, rolls back on any exception.

        Maps a uniqueness violation to StoreConflictError and any other driver error to
        StoreError.
        """

    @abc.abstractmethod
    def _insert_events(
        self, cur: Cursor, records: Sequence[StoredRecord], leaves: Sequence[bytes]
    ) -> None:
        """Insert the records with their leaf hashes (one each) as fast as the dialect allows."""

    @abc.abstractmethod
    def _has_table(self, cur: Cursor, name: str) -> bool:
        """Whether the table exists."""

    @abc.abstractmethod
    def _lock_schema(self, cur: Cursor) -> None:
        """Serialise migrations between processes for the rest of the transaction."""

    @abc.abstractmethod
    def _run_script(self, cur: Cursor, sql: str) -> None:
        """Run a migration script inside the current transaction."""

    def _q(self, sql: str) -> str:
        """The query in the driver's placeholder style."""
        return sql

    def _exec(self, cur: Cursor, sql: str, params: Sequence[object] = ()) -> None:
        cur.execute(self._q(sql), tuple(params))

    # -- schema ------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._transaction(write=False) as cur:
            return self._version(cur)

    def _version(self, cur: Cursor) -> int:
        if not self._has_table(cur, "schema_version"):
            return 0
        self._exec(cur, "SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(cur.fetchone()[0])

    def migrate(self) -> None:
        known = migrations.migrations(self.dialect)
        with self._transaction(write=True) as cur:
            self._lock_schema(cur)
            self._exec(cur, migrations.SCHEMA_VERSION_TABLE)
            current = self._version(cur)
            if current > len(known):
                raise SchemaTooNewError(
                    f"database schema is at version {current}, newer than the {len(known)} "
                    "this Custodes knows",
                    hint="upgrade Custodes on this server, or point it at another database",
                )
            for step in known[current:]:
                self._run_script(cur, step.sql)
                self._exec(
                    cur,
                    "INSERT INTO schema_version (version, name, applied_unix) VALUES (?, ?, ?)",
                    (step.version, step.name, int(time.time())),
                )
                log.info(
                    "schema_migrated", dialect=self.dialect, version=step.version, name=step.name
                )

    # -- agents and enrolment ----------------------------------------------------------------

    def add_agent(self, row: AgentRow) -> None:
        try:
            with self._transaction(write=True) as cur:
                self._exec(
                    cur,
                    _INSERT_AGENT,
                    (
                        row.agent_id,
                        row.client,
                        row.public_key,
                        row.cert_fingerprint,
                        row.enrolled_unix,
                        row.revoked_unix,
                        row.next_seq,
                        row.head_hash,
                        row.last_checkpoint,
                        row.last_seen_unix,
                        row.hostname,
                        row.last_heartbeat,
                    ),
                )
        except StoreConflictError as exc:
            raise StoreConflictError(
                f"agent {row.agent_id!r} is already enrolled; expected a new agent id"
            ) from exc

    def get_agent(self, agent_id: str) -> AgentRow | None:
        with self._transaction(write=False) as cur:
            return self._get_agent(cur, agent_id)

    def _get_agent(self, cur: Cursor, agent_id: str) -> AgentRow | None:
        self._exec(cur, _SELECT_AGENTS + " WHERE agent_id = ?", (agent_id,))
        row = cur.fetchone()
        return None if row is None else _agent(row)

    def list_agents(self, client: str | None = None) -> list[AgentRow]:
        with self._transaction(write=False) as cur:
            if client is None:
                self._exec(cur, _SELECT_AGENTS + " ORDER BY agent_id")
            else:
                self._exec(
                    cur,
                    _SELECT_AGENTS + " WHERE client = ? ORDER BY agent_id",
                    (client,),
                )
            return [_agent(r) for r in cur.fetchall()]

    def revoke_agent(self, agent_id: str, at_unix: int) -> bool:
        with self._transaction(write=True) as cur:
            self._exec(
                cur,
                "UPDATE agents SET revoked_unix = ? WHERE agent_id = ? AND revoked_unix IS NULL",
                (at_unix, agent_id),
            )
            return cur.rowcount == 1

    def add_token(
        self, token_hash: bytes, client: str, kind: str, name: str, expires_unix: int
    ) -> None:
        try:
            with self._transaction(write=True) as cur:
                self._exec(
                    cur,
                    _INSERT_TOKEN,
                    (token_hash, client, kind, name, expires_unix),
                )
        except StoreConflictError as exc:
            raise StoreConflictError(
                f"an enrolment token with this hash already exists (name {name!r});"
                " expected a fresh random token"
            ) from exc

    def consume_token(self, token_hash: bytes, now_unix: int) -> TokenRow:
        with self._transaction(write=True) as cur:
            self._exec(
                cur,
                _CONSUME_TOKEN,
                (now_unix, token_hash, now_unix),
            )
            row = cur.fetchone()
            if row is not None:
                return _token(row)
            self._exec(
                cur,
                _SELECT_TOKEN,
                (token_hash,),
            )
            found = cur.fetchone()
        hint = "ask the MSP for a new enrolment token"
        if found is None:
            raise StoreError(
                "enrolment token is unknown; expected one issued by this server", hint=hint
            )
        token = _token(found)
        if token.used_unix is not None:
            raise StoreError(
                f"enrolment token {token.name!r} was already used at {token.used_unix};"
                " expected an unused token (tokens are single use)",
                hint=hint,
            )
        raise StoreError(
            f"enrolment token {token.name!r} expired at {token.expires_unix} (now {now_unix});"
            " expected an unexpired token",
            hint=hint,
        )

    # -- evidence ---------------------------------------------------------------------------

    def append_batch(
        self,
        agent_id: str,
        expected_next_seq: int,
        records: Sequence[StoredRecord],
        *,
        agent_checkpoint: bytes,
        new_head: bytes,
        heartbeat_unix: int,
        new_keys: Sequence[AgentKeyRow] = (),
        leaves: Sequence[bytes] | None = None,
    ) -> int:
        i = first_out_of_place(records, agent_id, expected_next_seq)
        if i >= 0:
            rec = records[i]
            raise StoreError(
                f"batch record {i} is agent {rec.agent_id!r} seq {rec.seq}; expected agent"
                f" {agent_id!r} seq {expected_next_seq + i} (contiguous from the expected"
                " next seq)"
            )
        size = expected_next_seq + len(records)
        with self._transaction(write=True) as cur:
            # The conditional update is the optimistic lock: of two servers racing with the
            # same expected_next_seq, the second one's update matches no row.
            self._exec(
                cur,
                "UPDATE agents SET next_seq = ?, head_hash = ?, last_checkpoint = ?,"
                " last_seen_unix = ? WHERE agent_id = ? AND next_seq = ? AND revoked_unix IS NULL",
                (size, new_head, agent_checkpoint, heartbeat_unix, agent_id, expected_next_seq),
            )
            won = cur.rowcount == 1
            if won:
                if records:
                    if leaves is None or len(leaves) != len(records):
                        leaves = record_leaves(records[0].seq, [r.chain_hash for r in records])
                    self._insert_events(cur, records, leaves)
                self._exec(
                    cur,
                    "INSERT INTO agent_checkpoints (agent_id, size, note) VALUES (?, ?, ?)"
                    " ON CONFLICT (agent_id, size) DO NOTHING",
                    (agent_id, size, agent_checkpoint),
                )
                for key in new_keys:
                    if key.agent_id != agent_id:
                        raise StoreError(
                            f"a key of agent {key.agent_id!r} came with agent {agent_id!r}'s "
                            "batch; expected the batch's own agent"
                        )
                    self._exec(
                        cur,
                        "INSERT INTO agent_keys"
                        " (agent_id, epoch, public_key, valid_from, announced_seq)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (agent_id, key.epoch, key.public_key, key.valid_from, key.announced_seq),
                    )
        if won:
            return size
        return self._replayed(agent_id, expected_next_seq, records)

    def _replayed(
        self, agent_id: str, expected_next_seq: int, records: Sequence[StoredRecord]
    ) -> int:
        """Why an append did not apply: an identical replay (returns next_seq) or a conflict."""
        with self._transaction(write=False) as cur:
            agent = self._get_agent(cur, agent_id)
            if agent is None:
                raise StoreError(f"agent {agent_id!r} is not enrolled; expected an enrolled agent")
            if agent.revoked_unix is not None:
                raise StoreError(
                    f"agent {agent_id!r} was revoked at {agent.revoked_unix}; expected a live agent"
                )
            stored: dict[int, tuple[bytes, bytes]] = {}
            if records:
                self._exec(
                    cur,
                    "SELECT seq, event, chain_hash FROM events"
                    " WHERE agent_id = ? AND seq >= ? AND seq <= ?",
                    (agent_id, records[0].seq, records[-1].seq),
                )
                stored = {r[0]: (bytes(r[1]), bytes(r[2])) for r in cur.fetchall()}
        for rec in records:
            have = stored.get(rec.seq)
            if have is not None and have != (rec.event, rec.chain_hash):
                raise StoreConflictError(
                    f"agent {agent_id!r} seq {rec.seq} is already stored with other bytes;"
                    " expected an identical replay or a new seq",
                    next_seq=agent.next_seq,
                )
        if expected_next_seq + len(records) <= agent.next_seq and len(stored) == len(records):
            return agent.next_seq
        raise StoreConflictError(
            f"agent {agent_id!r} next seq is {agent.next_seq}; the batch expected"
            f" {expected_next_seq} (another server stored it first, or a gap)",
            next_seq=agent.next_seq,
        )

    def leaf_hashes(self, agent_id: str, from_seq: int = 0) -> list[bytes]:
        with self._transaction(write=False) as cur:
            self._exec(
                cur,
                "SELECT leaf_hash FROM events WHERE agent_id = ? AND seq >= ? ORDER BY seq",
                (agent_id, from_seq),
            )
            return [bytes(r[0]) for r in cur.fetchall()]

    def agent_keys(self, agent_id: str) -> list[AgentKeyRow]:
        with self._transaction(write=False) as cur:
            self._exec(
                cur,
                "SELECT agent_id, epoch, public_key, valid_from, announced_seq FROM agent_keys"
                " WHERE agent_id = ? ORDER BY epoch",
                (agent_id,),
            )
            return [AgentKeyRow(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in cur.fetchall()]

    def records(self, agent_id: str, first_seq: int, end_seq: int) -> list[StoredRecord]:
        with self._transaction(write=False) as cur:
            self._exec(
                cur,
                _SELECT_RECORDS + " WHERE agent_id = ? AND seq >= ? AND seq < ? ORDER BY seq",
                (agent_id, first_seq, end_seq),
            )
            return [_record(r) for r in cur.fetchall()]

    def events(
        self,
        *,
        client: str | None = None,
        technician: str | None = None,
        area: str | None = None,
        verdict: str | None = None,
        agent_id: str | None = None,
        since_nanos: int | None = None,
        until_nanos: int | None = None,
        limit: int = 1000,
        after: EventCursor | None = None,
    ) -> list[StoredRecord]:
        if not 0 < limit <= MAX_PAGE:
            raise StoreError(f"page limit {limit} is out of range; expected 1..{MAX_PAGE}")
        where: list[str] = []
        params: list[object] = []
        for column, value in (
            ("client", client),
            ("technician", technician),
            ("area", area),
            ("verdict", verdict),
            ("agent_id", agent_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since_nanos is not None:
            where.append("unix_nanos >= ?")
            params.append(since_nanos)
        if until_nanos is not None:
            where.append("unix_nanos < ?")
            params.append(until_nanos)
        if after is not None:
            where.append("(unix_nanos, agent_id, seq) > (?, ?, ?)")
            params.extend(after)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"{_SELECT_RECORDS}{clause} ORDER BY unix_nanos, agent_id, seq LIMIT ?"
        params.append(limit)
        with self._transaction(write=False) as cur:
            self._exec(cur, sql, params)
            return [_record(r) for r in cur.fetchall()]

    def count_events(self, agent_id: str | None = None) -> int:
        with self._transaction(write=False) as cur:
            if agent_id is None:
                self._exec(cur, "SELECT COUNT(*) FROM events")
            else:
                self._exec(cur, "SELECT COUNT(*) FROM events WHERE agent_id = ?", (agent_id,))
            return int(cur.fetchone()[0])

    def agent_checkpoints(self, agent_id: str, from_size: int = 0) -> list[bytes]:
        with self._transaction(write=False) as cur:
            self._exec(
                cur,
                "SELECT note FROM agent_checkpoints WHERE agent_id = ? AND size >= ? ORDER BY size",
                (agent_id, from_size),
            )
            return [bytes(r[0]) for r in cur.fetchall()]

    def save_server_checkpoint(self, agent_id: str, size: int, note: bytes) -> None:
        with self._transaction(write=True) as cur:
            self._exec(
                cur,
                "INSERT INTO server_checkpoints (agent_id, size, note) VALUES (?, ?, ?)"
                " ON CONFLICT (agent_id, size) DO UPDATE SET note = excluded.note",
                (agent_id, size, note),
            )

    def latest_server_checkpoint(self, agent_id: str) -> bytes | None:
        with self._transaction(write=False) as cur:
            self._exec(
                cur,
                "SELECT note FROM server_checkpoints WHERE agent_id = ? ORDER BY size DESC LIMIT 1",
                (agent_id,),
            )
            row = cur.fetchone()
            return None if row is None else bytes(row[0])

    def server_checkpoint(self, agent_id: str, size: int) -> bytes | None:
        with self._transaction(write=False) as cur:
            self._exec(
                cur,
                "SELECT note FROM server_checkpoints WHERE agent_id = ? AND size = ?",
                (agent_id, size),
            )
            row = cur.fetchone()
            return None if row is None else bytes(row[0])

    # -- integrity and liveness --------------------------------------------------------------

    def record_integrity_event(self, agent_id: str, kind: str, detail: str, at_unix: int) -> None:
        with self._transaction(write=True) as cur:
            self._exec(
                cur,
                "INSERT INTO integrity_events (agent_id, kind, detail, at_unix)"
                " VALUES (?, ?, ?, ?)",
                (agent_id, kind, detail, at_unix),
            )

    def integrity_events(self, agent_id: str | None = None) -> list[IntegrityRow]:
        cols = "SELECT id, agent_id, kind, detail, at_unix FROM integrity_events"
        with self._transaction(write=False) as cur:
            if agent_id is None:
                self._exec(cur, f"{cols} ORDER BY id")
            else:
                self._exec(cur, f"{cols} WHERE agent_id = ? ORDER BY id", (agent_id,))
            return [IntegrityRow(*r) for r in cur.fetchall()]

    def touch_agent(self, agent_id: str, at_unix: int, heartbeat: bytes | None) -> None:
        with self._transaction(write=True) as cur:
            self._exec(
                cur,
                "UPDATE agents SET last_seen_unix = ?, last_heartbeat = COALESCE(?, last_heartbeat)"
                " WHERE agent_id = ?",
                (at_unix, heartbeat, agent_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"agent {agent_id!r} is not enrolled; expected an enrolled agent")


class StorePart:
    """A part of the store kept in a module of its own (console, rollup, access, incidents):
    its queries run on the SQL store's connection, in the SQL store's transactions.

    `needs` names the part for the error when it is given a store that is not SQL.
    """

    needs = "this part of the store needs"

    def __init__(self, store: Store) -> None:
        if not isinstance(store, SqlStore):
            raise StoreError(
                f"{self.needs} the SQL store, got {type(store).__name__}; expected "
                "SqliteStore or PostgresStore"
            )
        self._db = store

    def _tx(self, *, write: bool) -> contextlib.AbstractContextManager[Cursor]:
        """One transaction of the SQL store (see `SqlStore._transaction`)."""
        return self._db._transaction(write=write)

    def _exec(self, cur: Cursor, sql: str, params: Sequence[object] = ()) -> None:
        """Run `sql` (`?` placeholders) in the store's dialect."""
        self._db._exec(cur, sql, params)


@contextlib.contextmanager
def mapped_errors(
    conflict: tuple[type[BaseException], ...], failure: tuple[type[BaseException], ...], what: str
) -> Iterator[None]:
    """Turn driver exceptions into StoreConflictError / StoreError naming the database."""
    try:
        yield
    except conflict as exc:
        raise StoreConflictError(f"{what}: {exc}; expected no clash with stored rows") from exc
    except failure as exc:
        raise StoreError(f"{what}: {exc}") from exc
