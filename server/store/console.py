"""Persistence for the audit console: password hashes, sessions, sign-in throttling, and the
read-only summaries its pages need (hourly counts, checkpoint sizes) over the evidence tables.

Shares the evidence store's connection and transactions (`SqlStore._transaction`), so it
works on SQLite and PostgreSQL alike. Only a hash of a session id is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.store.base import Store, StoreError
from server.store.sql import Cursor, SqlStore

HOUR_NANOS = 3_600 * 1_000_000_000
ROLL_CHUNK = 20_000  # events counted per transaction: ~60 ms of the database thread


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A signed-in session (the id itself is never stored, only its hash)."""

    id_hash: bytes
    name: str
    csrf: str
    created_unix: int
    seen_unix: int
    address: str


@dataclass(frozen=True, slots=True)
class ThrottleRow:
    """Sign-in failures counted for one key ("name:…" or "addr:…")."""

    key: str
    failures: int
    window_start_unix: int
    locked_until_unix: int


@dataclass(frozen=True, slots=True)
class HourCount:
    """Events of one (technician, area, verdict) in one UTC hour."""

    hour_unix: int
    technician: str | None
    area: str | None
    verdict: str | None
    action: str | None
    rule: str | None
    count: int


@dataclass(frozen=True, slots=True)
class AccessSummary:
    """A month's accesses of one (technician, area, action, verdict, rule), from the rollup."""

    technician: str
    area: str
    action: str
    verdict: str
    rule: str
    count: int
    first_hour_unix: int
    last_hour_unix: int


@dataclass(frozen=True, slots=True)
class DenialRow:
    """A technician's denied access, with what the statement shows of it."""

    unix_nanos: int
    technician: str
    area: str
    action: str
    path: str
    rule: str


@dataclass(frozen=True, slots=True)
class IncidentBrief:
    """What the statement and the overview list of an incident."""

    id: int
    summary: str
    state: str
    aware_unix: float
    client: str = ""
    technician: str = ""
    individuals: int = 0


class ConsoleStore:
    """The console's tables and summaries in the evidence store's database."""

    def __init__(self, store: Store) -> None:
        if not isinstance(store, SqlStore):
            raise StoreError(
                f"the console needs the SQL store, got {type(store).__name__}; expected "
                "SqliteStore or PostgresStore"
            )
        self._db = store

    def _tx(self, *, write: bool) -> Any:
        return self._db._transaction(write=write)

    def _exec(self, cur: Cursor, sql: str, params: Sequence[object] = ()) -> None:
        self._db._exec(cur, sql, params)

    # -- passwords --------------------------------------------------------------------------

    def set_password(self, name: str, hashed: str, at_unix: int) -> None:
        """Store (or replace) a person's password hash."""
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "INSERT INTO console_passwords (name, hash, changed_unix) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET hash = excluded.hash,"
                " changed_unix = excluded.changed_unix",
                (name, hashed, at_unix),
            )

    def password(self, name: str) -> str | None:
        """The stored hash for `name`, or None."""
        with self._tx(write=False) as cur:
            self._exec(cur, "SELECT hash FROM console_passwords WHERE name = ?", (name,))
            row = cur.fetchone()
        return None if row is None else str(row[0])

    # -- sessions ---------------------------------------------------------------------------

    def add_session(self, row: SessionRow, replaces: bytes | None = None) -> None:
        """Store a new session, deleting the one it replaces (rotation at sign-in)."""
        with self._tx(write=True) as cur:
            if replaces is not None:
                self._exec(cur, "DELETE FROM console_sessions WHERE id_hash = ?", (replaces,))
            self._exec(
                cur,
                "INSERT INTO console_sessions"
                " (id_hash, name, csrf, created_unix, seen_unix, address)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (row.id_hash, row.name, row.csrf, row.created_unix, row.seen_unix, row.address),
            )

    def session(self, id_hash: bytes) -> SessionRow | None:
        """The session with this id hash, or None."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT id_hash, name, csrf, created_unix, seen_unix, address"
                " FROM console_sessions WHERE id_hash = ?",
                (id_hash,),
            )
            r = cur.fetchone()
        if r is None:
            return None
        return SessionRow(bytes(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5])

    def touch_session(self, id_hash: bytes, seen_unix: int) -> None:
        """Record activity on a session (its idle timeout restarts)."""
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "UPDATE console_sessions SET seen_unix = ? WHERE id_hash = ?",
                (seen_unix, id_hash),
            )

    def end_session(self, id_hash: bytes) -> None:
        """Delete a session (sign-out, timeout)."""
        with self._tx(write=True) as cur:
            self._exec(cur, "DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))

    def end_sessions_of(self, name: str) -> int:
        """Delete every session of a person (password change); how many."""
        with self._tx(write=True) as cur:
            self._exec(cur, "DELETE FROM console_sessions WHERE name = ?", (name,))
            return int(cur.rowcount)

    def purge_sessions(self, idle_before: int, created_before: int) -> int:
        """Delete sessions idle since `idle_before` or created before `created_before`."""
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "DELETE FROM console_sessions WHERE seen_unix < ? OR created_unix < ?",
                (idle_before, created_before),
            )
            return int(cur.rowcount)

    # -- sign-in throttling -----------------------------------------------------------------

    def throttle(self, keys: Sequence[str]) -> list[ThrottleRow]:
        """The throttle rows of `keys` that exist."""
        if not keys:
            return []
        marks = ", ".join("?" * len(keys))
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT throttle_key, failures, window_start_unix, locked_until_unix"  # noqa: S608
                f" FROM console_signin_failures WHERE throttle_key IN ({marks})",
                list(keys),
            )
            return [ThrottleRow(r[0], int(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]

    def save_throttle(self, rows: Sequence[ThrottleRow]) -> None:
        """Store throttle rows (replacing those with the same key)."""
        with self._tx(write=True) as cur:
            for r in rows:
                self._exec(
                    cur,
                    "INSERT INTO console_signin_failures"
                    " (throttle_key, failures, window_start_unix, locked_until_unix)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (throttle_key) DO UPDATE SET"
                    " failures = excluded.failures,"
                    " window_start_unix = excluded.window_start_unix,"
                    " locked_until_unix = excluded.locked_until_unix",
                    (r.key, r.failures, r.window_start_unix, r.locked_until_unix),
                )

    def clear_throttle(self, key: str) -> None:
        """Forget the failures of one key (after a successful sign-in)."""
        with self._tx(write=True) as cur:
            self._exec(cur, "DELETE FROM console_signin_failures WHERE throttle_key = ?", (key,))

    # -- summaries over the evidence --------------------------------------------------------

    def roll_up(self, max_rows: int = 2_000_000, chunk: int = ROLL_CHUNK) -> int:
        """Count new access events into the hourly rollup; how many events were counted.

        Each agent's events are read by primary key from its cursor on, grouped per hour,
        added to `console_hourly`, and the cursor advanced in the same transaction, only if
        no other server advanced it meanwhile (otherwise nothing is written). At most
        `max_rows` events, `chunk` per transaction.
        """
        counted = 0
        for agent_id, _, next_seq, cursor in self._behind():
            first = cursor
            while first < next_seq and counted < max_rows:
                end = min(next_seq, first + chunk, first + max_rows - counted)
                self._roll_agent(agent_id, first, end)
                counted += end - first
                first = end
        return counted

    def backlog(self, client: str | None = None) -> int:
        """Stored events (of `client`'s agents, or all) not yet counted into the rollup."""
        return sum(
            next_seq - cursor
            for _, agent_client, next_seq, cursor in self._behind()
            if client in (None, agent_client)
        )

    def _behind(self) -> list[tuple[str, str, int, int]]:
        """(agent_id, client, next_seq, rollup cursor) of each agent with uncounted events."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT a.agent_id, a.client, a.next_seq, COALESCE(c.next_seq, 0) FROM agents a"
                " LEFT JOIN console_hourly_cursors c ON c.agent_id = a.agent_id"
                " WHERE a.next_seq > COALESCE(c.next_seq, 0)",
            )
            return [(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]

    def _roll_agent(self, agent_id: str, first: int, end: int) -> None:
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "INSERT INTO console_hourly_cursors (agent_id, next_seq) VALUES (?, 0)"
                " ON CONFLICT (agent_id) DO NOTHING",
                (agent_id,),
            )
            self._exec(
                cur,
                "UPDATE console_hourly_cursors SET next_seq = ?"
                " WHERE agent_id = ? AND next_seq = ?",
                (end, agent_id, first),
            )
            if cur.rowcount != 1:
                return  # another server counted this range
            self._exec(
                cur,
                f"SELECT client, unix_nanos / {HOUR_NANOS} AS h, COALESCE(technician, ''),"  # noqa: S608
                " COALESCE(area, ''), COALESCE(verdict, ''), COALESCE(action, ''),"
                " COALESCE(rule, ''), COUNT(*) FROM events"
                " WHERE agent_id = ? AND seq >= ? AND seq < ? AND kind = 'access'"
                " AND technician IS NOT NULL AND technician <> ''"
                " GROUP BY client, h, technician, area, verdict, action, rule",
                (agent_id, first, end),
            )
            rows = cur.fetchall()
            for r in rows:
                self._exec(
                    cur,
                    "INSERT INTO console_hourly"
                    " (client, hour_unix, technician, area, verdict, action, rule, events)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                    " (client, hour_unix, technician, area, verdict, action, rule)"
                    " DO UPDATE SET events = console_hourly.events + excluded.events",
                    (r[0], int(r[1]) * 3600, r[2], r[3], r[4], r[5], r[6], int(r[7])),
                )

    def hourly_counts(
        self, client: str, since_nanos: int, until_nanos: int, *, technician: str | None = None
    ) -> list[HourCount]:
        """Technicians' access events of `client` per UTC hour and (technician, area, verdict,
        action, rule), from the rollup (call `roll_up` first to include the newest events).
        """
        where = "client = ? AND hour_unix >= ? AND hour_unix < ?"
        params: list[object] = [
            client,
            since_nanos // HOUR_NANOS * 3600,
            -(-until_nanos // HOUR_NANOS) * 3600,
        ]
        if technician is not None:
            where += " AND technician = ?"
            params.append(technician)
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT hour_unix, technician, area, verdict, action, rule, events"  # noqa: S608
                f" FROM console_hourly WHERE {where}",
                params,
            )
            return [
                HourCount(
                    int(r[0]),
                    r[1] or None,
                    r[2] or None,
                    r[3] or None,
                    r[4] or None,
                    r[5] or None,
                    int(r[6]),
                )
                for r in cur.fetchall()
            ]

    def _hours(self, since_nanos: int, until_nanos: int) -> tuple[int, int]:
        return since_nanos // HOUR_NANOS * 3600, -(-until_nanos // HOUR_NANOS) * 3600

    def access_summary(
        self, client: str, since_nanos: int, until_nanos: int
    ) -> list[AccessSummary]:
        """Technicians' accesses to areas per (technician, area, action, verdict, rule), with
        the first and last hour, from the rollup (call `roll_up` first for the newest)."""
        lo, hi = self._hours(since_nanos, until_nanos)
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT technician, area, action, verdict, rule, SUM(events), MIN(hour_unix),"
                " MAX(hour_unix) FROM console_hourly"
                " WHERE client = ? AND hour_unix >= ? AND hour_unix < ? AND area <> ''"
                " GROUP BY technician, area, action, verdict, rule"
                " ORDER BY technician, area, action, verdict, rule",
                (client, lo, hi),
            )
            return [
                AccessSummary(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]))
                for r in cur.fetchall()
            ]

    def daily_counts(self, client: str, starts: Sequence[int]) -> dict[tuple[str, int], int]:
        """(technician, day index) → accesses to areas, for the days that begin at the unix
        times `starts` (ascending; the last one ends the last day): local days, whatever
        the zone's offsets, counted in the database from the rollup."""
        if len(starts) < 2:
            return {}
        # Fixed integers, never input: the CASE is built from ints only.
        day = " ".join(f"WHEN hour_unix < {int(b)} THEN {i}" for i, b in enumerate(starts[1:]))
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                f"SELECT technician, CASE {day} END AS d, SUM(events)"  # noqa: S608
                " FROM console_hourly WHERE client = ? AND hour_unix >= ? AND hour_unix < ?"
                " AND area <> '' GROUP BY technician, d",
                (client, int(starts[0]) // 3600 * 3600, int(starts[-1])),
            )
            return {(str(r[0]), int(r[1])): int(r[2]) for r in cur.fetchall()}

    def denials(
        self, client: str, since_nanos: int, until_nanos: int, limit: int
    ) -> list[DenialRow]:
        """Technicians' denied accesses of `client` in the window, oldest first, at most
        `limit` (served by the partial index console_events_denied)."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT unix_nanos, technician, area, action, path, rule FROM events"
                " WHERE client = ? AND verdict = 'deny' AND unix_nanos >= ? AND unix_nanos < ?"
                " AND technician IS NOT NULL AND technician <> ''"
                " ORDER BY unix_nanos, agent_id, seq LIMIT ?",
                (client, since_nanos, until_nanos, limit),
            )
            return [
                DenialRow(int(r[0]), str(r[1]), r[2] or "", r[3] or "", r[4] or "", r[5] or "")
                for r in cur.fetchall()
            ]

    def incidents_in(
        self, client: str, since_unix: int, until_unix: int, limit: int
    ) -> tuple[int, list[IncidentBrief]]:
        """How many incidents of `client` were raised (or began) in the window, and the first
        `limit` of them by the time the entity became aware."""
        where = (
            "client = ? AND ((aware_unix >= ? AND aware_unix < ?)"
            " OR (first_unix >= ? AND first_unix < ?))"
        )
        params = (client, since_unix, until_unix, since_unix, until_unix)
        with self._tx(write=False) as cur:
            self._exec(cur, f"SELECT COUNT(*) FROM ndb_incidents WHERE {where}", params)  # noqa: S608
            total = int(cur.fetchone()[0])
            self._exec(
                cur,
                "SELECT id, summary, state, aware_unix FROM ndb_incidents"  # noqa: S608
                f" WHERE {where} ORDER BY aware_unix, id LIMIT ?",
                (*params, limit),
            )
            return total, [
                IncidentBrief(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in cur.fetchall()
            ]

    def incidents_in_states(
        self, client: str | None, states: Sequence[str], limit: int
    ) -> tuple[int, list[IncidentBrief]]:
        """How many incidents (of `client`, or all) are in `states`, and the `limit` the
        entity became aware of first (so the first due)."""
        where = f"state IN ({', '.join('?' * len(states))})"
        params: list[object] = list(states)
        if client is not None:
            where += " AND client = ?"
            params.append(client)
        with self._tx(write=False) as cur:
            self._exec(cur, f"SELECT COUNT(*) FROM ndb_incidents WHERE {where}", params)  # noqa: S608
            total = int(cur.fetchone()[0])
            self._exec(
                cur,
                "SELECT id, summary, state, aware_unix, client, technician, individuals"  # noqa: S608
                f" FROM ndb_incidents WHERE {where} ORDER BY aware_unix, id LIMIT ?",
                (*params, limit),
            )
            return total, [
                IncidentBrief(
                    int(r[0]), str(r[1]), str(r[2]), float(r[3]), str(r[4]), r[5] or "", int(r[6])
                )
                for r in cur.fetchall()
            ]

    def checkpoint_sizes(self, agent_id: str) -> list[int]:
        """Sizes of the agent's signed checkpoints the server verified and kept, ascending."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT size FROM agent_checkpoints WHERE agent_id = ? ORDER BY size",
                (agent_id,),
            )
            return [int(r[0]) for r in cur.fetchall()]

    def latest_checkpoint_sizes(self) -> dict[str, int]:
        """agent_id → the size of its latest verified checkpoint."""
        with self._tx(write=False) as cur:
            self._exec(cur, "SELECT agent_id, MAX(size) FROM agent_checkpoints GROUP BY agent_id")
            return {str(a): int(s) for a, s in cur.fetchall()}

    def lifecycle(self, agent_id: str, since_nanos: int) -> list[tuple[int, str]]:
        """(unix_nanos, kind) of the agent's non-access records since `since_nanos`."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT unix_nanos, kind FROM events WHERE agent_id = ? AND kind <> 'access'"
                " AND unix_nanos >= ? ORDER BY unix_nanos LIMIT 10000",
                (agent_id, since_nanos),
            )
            return [(int(r[0]), str(r[1])) for r in cur.fetchall()]

    def first_seqs_at(self, agent_id: str, nanos: Sequence[int], next_seq: int) -> list[int]:
        """For each time in `nanos`, the first seq whose time is at or after it (binary
        searches over the primary key, run side by side: one query per step for all).

        An agent's seq grows with its clock, so counting events per day needs no time index:
        the events of a day are the seqs between two boundaries.
        """
        bounds = [[0, next_seq] for _ in nanos]
        with self._tx(write=False) as cur:
            for _ in range(64):  # a binary search over 2**63 seqs ends sooner
                mids = {(lo + hi) // 2 for lo, hi in bounds if lo < hi}
                if not mids:
                    break
                marks = ", ".join("?" * len(mids))
                self._exec(
                    cur,
                    "SELECT seq, unix_nanos FROM events"  # noqa: S608 - placeholders only
                    f" WHERE agent_id = ? AND seq IN ({marks})",
                    (agent_id, *sorted(mids)),
                )
                times = {int(r[0]): int(r[1]) for r in cur.fetchall()}
                for b, at in zip(bounds, nanos, strict=True):
                    lo, hi = b
                    if lo < hi:
                        mid = (lo + hi) // 2
                        found = times.get(mid)
                        if found is None or found >= at:  # a pruned seq counts as later
                            b[1] = mid
                        else:
                            b[0] = mid + 1
        return [lo for lo, _ in bounds]
