"""Persistence for the audit console: password hashes, sessions, sign-in throttling, and the
read-only lists its pages need over the evidence and incident tables (denials, incidents,
checkpoint sizes). The hourly counts the statement sums are kept by `rollup.HourlyRollup`,
reached as `ConsoleStore.rollup`.

Shares the evidence store's connection and transactions (`SqlStore._transaction`), so it
works on SQLite and PostgreSQL alike. Only a hash of a session id is ever stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from server.incidents.model import UNDECIDED, State
from server.store.base import Store
from server.store.rollup import HourlyRollup
from server.store.sql import StorePart

UNDECIDED_STATES = tuple(sorted(s.value for s in UNDECIDED))
# Every decided state, as the partial index ndb_incidents_decided (migration 0008) states it:
# literals, since a planner matches a partial index only by the same terms (fixed enum
# values, never input).
DECIDED = f"state NOT IN ({', '.join(repr(s) for s in UNDECIDED_STATES)})"
DECIDED_STATES = tuple(sorted(s.value for s in State if s not in UNDECIDED))


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
class DenialRow:
    """A technician's denied access as stored (the statement shows it as StatementDenial)."""

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


def is_bigint_text(text: str) -> bool:
    """Whether `text` is a page cursor's id: ASCII digits only (str.isdigit also takes '²',
    which int() refuses), at most 18 of them (a BIGINT; more was a server error)."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


@dataclass(frozen=True, slots=True)
class QueueCursor:
    """Where a page of the incident queue ended: the last incident shown, in its group."""

    undecided: bool
    aware_unix: float
    id: int

    def text(self) -> str:
        """The cursor as a query value (`U:AWARE:ID` or `D:ID`; floats round-trip by repr)."""
        return f"U:{self.aware_unix!r}:{self.id}" if self.undecided else f"D:{self.id}"

    @classmethod
    def parse(cls, text: str | None) -> QueueCursor | None:
        """A cursor back from `text` (None when absent or malformed)."""
        group, _, rest = (text or "")[:80].partition(":")
        aware, _, ident = rest.rpartition(":")
        if not is_bigint_text(ident):
            return None
        if group == "D" and not aware:
            return cls(False, 0.0, int(ident))
        try:
            at = float(aware)
        except ValueError:
            return None
        return cls(True, at, int(ident)) if group == "U" and math.isfinite(at) else None


def count_query(
    client: str | None, states: Sequence[str], up_to: int | None = None
) -> tuple[str, list[object]]:
    """The query counting incidents (of `client`, or all) in `states` (no further than
    `up_to` + 1 when given), and its parameters.

    Every decided state at once is counted through ndb_incidents_decided: an index-only
    scan of the decided alone, where the state index or the table was read for nearly
    every incident.
    """
    params: list[object] = []
    if sorted(set(states)) == list(DECIDED_STATES):
        where = DECIDED
    else:
        where = f"state IN ({', '.join('?' * len(states))})"
        params += states
    if client is not None:
        where += " AND client = ?"
        params.append(client)
    if up_to is None:
        return f"SELECT COUNT(*) FROM ndb_incidents WHERE {where}", params  # noqa: S608
    inner = f"SELECT 1 FROM ndb_incidents WHERE {where} LIMIT {int(up_to) + 1}"  # noqa: S608
    return f"SELECT COUNT(*) FROM ({inner}) AS found", params  # noqa: S608


class ConsoleStore(StorePart):
    """The console's tables and page reads in the evidence store's database."""

    needs = "the console needs"

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.rollup = HourlyRollup(store)

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

    # -- reads over the evidence ----------------------------------------------------------

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
        first = self._briefs(client, where, list(states), "aware_unix, id", limit)
        return self.count_incidents(client, states), first

    def incident_queue(
        self,
        client: str | None,
        states: Sequence[str],
        after: QueueCursor | None,
        limit: int,
    ) -> list[IncidentBrief]:
        """One page of the incident queue: incidents (of `client`, or all) in `states` (every
        state when empty), the undecided first by due date, then the decided newest first;
        at most `limit`, from after `after` (keyset: no row is skipped or read twice)."""
        chosen = set(states)
        undecided = [s for s in UNDECIDED_STATES if not chosen or s in chosen]
        decided = sorted(chosen - set(UNDECIDED_STATES))
        out: list[IncidentBrief] = []
        if undecided and (after is None or after.undecided):
            where = f"state IN ({', '.join('?' * len(undecided))})"
            params: list[object] = list(undecided)
            if after is not None:
                where += " AND (aware_unix > ? OR (aware_unix = ? AND id > ?))"
                params += [after.aware_unix, after.aware_unix, after.id]
            out += self._briefs(client, where, params, "aware_unix, id", limit)
        if (decided or not chosen) and len(out) < limit:
            # Every decided state as NOT IN: the primary key (or ndb_incidents_by_client)
            # is read newest first and the walk stops at the limit, where an IN over six
            # states would sort every decided incident first.
            if chosen:
                where = f"state IN ({', '.join('?' * len(decided))})"
                params = list(decided)
            else:
                where = f"state NOT IN ({', '.join('?' * len(UNDECIDED_STATES))})"
                params = list(UNDECIDED_STATES)
            if after is not None and not after.undecided:
                where += " AND id < ?"
                params.append(after.id)
            out += self._briefs(client, where, params, "id DESC", limit - len(out))
        return out

    def count_incidents(
        self, client: str | None, states: Sequence[str], up_to: int | None = None
    ) -> int:
        """How many incidents (of `client`, or all) are in `states`; with `up_to`, counted
        no further than `up_to` + 1 (more than `up_to`: the count is bounded, as lists are)."""
        sql, params = count_query(client, states, up_to)
        with self._tx(write=False) as cur:
            self._exec(cur, sql, params)
            return int(cur.fetchone()[0])

    def _briefs(
        self, client: str | None, where: str, params: list[object], order: str, limit: int
    ) -> list[IncidentBrief]:
        if client is not None:
            where += " AND client = ?"
            params = [*params, client]
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT id, summary, state, aware_unix, client, technician, individuals"  # noqa: S608
                f" FROM ndb_incidents WHERE {where} ORDER BY {order} LIMIT ?",
                (*params, limit),
            )
            return [
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
