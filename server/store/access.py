"""Persistence of people, agreement versions and access requests (with approvals and history).

Shares the evidence store's connection and transactions (`SqlStore._transaction`), so it
works on SQLite and PostgreSQL alike. A request is saved with an optimistic check on the
state it was loaded in: of two servers deciding the same request at once, one wins and the
other gets StoreConflictError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policies.model import Action
from policies.schema import BREAK_GLASS_MAX_DURATION_CEILING, JIT_MAX_DURATION_CEILING
from server.access import (
    MAX_LEAD,
    PENDING_TTL,
    START_SKEW,
    Approval,
    Change,
    Person,
    Request,
    Role,
    State,
)
from server.store.base import StoreConflictError, StoreError
from server.store.sql import Cursor, StorePart

# A request's window begins at most MAX_LEAD (a chosen start) or PENDING_TTL (on approval)
# after the request was made, never more than START_SKEW before, and lasts at most a grant's
# ceiling (revoking only shortens it). So every request touching [lo, hi) was made in
# [lo - REQUEST_REACH, hi + START_SKEW): the bound that lets the (client, created_unix)
# index serve the statement's window instead of every request the client ever made.
REQUEST_REACH = int(
    (
        max(MAX_LEAD, PENDING_TTL) + max(JIT_MAX_DURATION_CEILING, BREAK_GLASS_MAX_DURATION_CEILING)
    ).total_seconds()
)
_START_SKEW = int(START_SKEW.total_seconds())
_REQUEST_COLS = (
    "id, client, technician, requester, area, actions, start_unix, end_unix, duration_seconds,"
    " ticket, reason,"
    " break_glass, state, created_unix, pending_until_unix, approvals_needed, approver_roles,"
    " agreement_version"
)
# Column lists are fixed names, never input: the f-strings are not an injection vector.
_SELECT_REQUESTS = f"SELECT {_REQUEST_COLS}, signed_grant, revocation FROM access_requests"  # noqa: S608
_INSERT_REQUEST = (
    f"INSERT INTO access_requests ({_REQUEST_COLS}, signed_grant, revocation)"  # noqa: S608
    f" VALUES ({', '.join('?' * 20)})"
)


@dataclass(frozen=True, slots=True)
class AgreementRow:
    """One applied agreement version of a client."""

    id: int
    client: str
    version: str
    sha256: str
    yaml: bytes
    applied_unix: int
    applied_by: str


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """A request with the signed grant and revocation the server sent for it (wire bytes)."""

    request: Request
    signed_grant: bytes | None
    revocation: bytes | None


def _person(row: Sequence[Any]) -> Person:
    return Person(name=row[0], role=Role(row[1]), client=row[2], technician=row[3])


def _agreement(row: Sequence[Any]) -> AgreementRow:
    return AgreementRow(int(row[0]), row[1], row[2], row[3], bytes(row[4]), int(row[5]), row[6])


def _request_filter(
    client: str | None,
    requester: str | None,
    states: Sequence[State],
    touching: tuple[int, int] | None,
    more: Sequence[tuple[str, Sequence[object]]] = (),
) -> tuple[str, list[object]]:
    """The WHERE clause (or "") and its parameters for `list_requests`' filters, and for
    `more` conditions (each with its parameters) after them."""
    where: list[str] = []
    params: list[object] = []
    if client is not None:
        where.append("client = ?")
        params.append(client)
    if requester is not None:
        where.append("requester = ?")
        params.append(requester)
    if states:
        where.append(f"state IN ({', '.join('?' * len(states))})")
        params.extend(s.value for s in states)
    if touching is not None:
        lo, hi = touching
        # start_unix 0: never started (pending, denied, cancelled before its start).
        where.append(
            "created_unix >= ? AND created_unix < ?"
            " AND ((start_unix <> 0 AND start_unix < ? AND end_unix > ?)"
            " OR (created_unix >= ? AND created_unix < ?))"
        )
        params.extend((lo - REQUEST_REACH, hi + _START_SKEW, hi, lo, lo, hi))
    for condition, values in more:
        where.append(condition)
        params.extend(values)
    return (f" WHERE {' AND '.join(where)}" if where else ""), params


def ended_filter(
    client: str | None, requester: str | None, now_unix: int, after: tuple[int, str] | None
) -> tuple[str, list[object]]:
    """The WHERE clause and parameters of `ended_requests`: walked down
    access_requests_newest, or access_requests_by_created for one client,
    access_requests_by_requester for one requester, from `after` on."""
    # Every state but pending is ended (access.ENDED) or approved: "not pending, not a live
    # grant", spelt with terms no index serves, so the walk stays on the creation order (an
    # IN over the ended states led SQLite to read every ended request through the state
    # index and sort them all for one page).
    more: list[tuple[str, Sequence[object]]] = [
        (
            "state <> ? AND NOT (state = ? AND end_unix > ?)",
            (State.PENDING.value, State.APPROVED.value, now_unix),
        )
    ]
    if after is not None:
        more.append(("(created_unix, id) < (?, ?)", after))
    return _request_filter(client, requester, (), None, more)


class AccessStore(StorePart):
    """People, agreements and access requests in the evidence store's database."""

    needs = "access needs"

    # -- people -----------------------------------------------------------------------------

    def add_person(self, person: Person, at_unix: int) -> None:
        """Store a new person; StoreConflictError if the name is taken."""
        try:
            with self._tx(write=True) as cur:
                self._exec(
                    cur,
                    "INSERT INTO people (name, role, client, technician, created_unix)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (person.name, person.role.value, person.client, person.technician, at_unix),
                )
        except StoreConflictError as exc:
            raise StoreConflictError(
                f"person {person.name!r} already exists; expected a new name"
            ) from exc

    def get_person(self, name: str) -> Person | None:
        """The person (not removed) called `name`, or None."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT name, role, client, technician FROM people"
                " WHERE name = ? AND removed_unix IS NULL",
                (name,),
            )
            row = cur.fetchone()
        return None if row is None else _person(row)

    def list_people(self, client: str | None = None) -> list[Person]:
        """People by name, optionally those serving one client (MSP-wide people included)."""
        sql = "SELECT name, role, client, technician FROM people WHERE removed_unix IS NULL"
        params: tuple[object, ...] = ()
        if client is not None:
            sql += " AND (client = ? OR client IS NULL)"
            params = (client,)
        with self._tx(write=False) as cur:
            self._exec(cur, sql + " ORDER BY name", params)
            return [_person(r) for r in cur.fetchall()]

    # -- agreements -------------------------------------------------------------------------

    def add_agreement(
        self, client: str, version: str, sha256: str, yaml: bytes, *, at_unix: int, by: str
    ) -> tuple[AgreementRow, bool]:
        """Store a new version; (row, True). The same version with the same bytes: (row, False).

        StoreConflictError when the version exists with other content.
        """
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "SELECT id, client, version, sha256, yaml, applied_unix, applied_by"
                " FROM agreements WHERE client = ? AND version = ?",
                (client, version),
            )
            row = cur.fetchone()
            if row is not None:
                existing = _agreement(row)
                if existing.sha256 != sha256:
                    raise StoreConflictError(
                        f"agreement version {version!r} of {client} is already stored with "
                        f"other content (sha256 {existing.sha256[:12]}…); expected a new "
                        "version string for a changed agreement"
                    )
                return existing, False
            self._exec(
                cur,
                "INSERT INTO agreements (client, version, sha256, yaml, applied_unix, applied_by)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (client, version, sha256, yaml, at_unix, by),
            )
        current = self.current_agreement(client)
        if current is None:  # pragma: no cover - just inserted
            raise StoreError(f"agreement {version!r} of {client} vanished after insert")
        return current, True

    def current_agreement(self, client: str) -> AgreementRow | None:
        """The latest applied version for `client`, or None."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT id, client, version, sha256, yaml, applied_unix, applied_by"
                " FROM agreements WHERE client = ? ORDER BY id DESC LIMIT 1",
                (client,),
            )
            row = cur.fetchone()
        return None if row is None else _agreement(row)

    def agreement_heads(self) -> dict[str, int]:
        """client → id of its current agreement (to notice new versions cheaply)."""
        with self._tx(write=False) as cur:
            self._exec(cur, "SELECT client, MAX(id) FROM agreements GROUP BY client")
            return {str(c): int(i) for c, i in cur.fetchall()}

    def list_agreements(self, client: str | None = None) -> list[AgreementRow]:
        """Every stored version, by client then age."""
        sql = "SELECT id, client, version, sha256, yaml, applied_unix, applied_by FROM agreements"
        params: tuple[object, ...] = ()
        if client is not None:
            sql += " WHERE client = ?"
            params = (client,)
        with self._tx(write=False) as cur:
            self._exec(cur, sql + " ORDER BY client, id", params)
            return [_agreement(r) for r in cur.fetchall()]

    # -- requests ---------------------------------------------------------------------------

    def _row(self, req: Request, grant: bytes | None, revocation: bytes | None) -> tuple[Any, ...]:
        return (
            req.id,
            req.client,
            req.technician,
            req.requester,
            req.area,
            ",".join(req.actions),
            req.start_unix,
            req.end_unix,
            req.duration_seconds,
            req.ticket,
            req.reason,
            1 if req.break_glass else 0,
            req.state.value,
            req.created_unix,
            req.pending_until_unix,
            req.approvals_needed,
            ",".join(req.approver_kinds),
            req.agreement_version,
            grant,
            revocation,
        )

    def _children(self, cur: Cursor, req: Request, approvals: int, history: int) -> None:
        for a in req.approvals[approvals:]:
            self._exec(
                cur,
                "INSERT INTO access_approvals (request_id, approver, role, at_unix)"
                " VALUES (?, ?, ?, ?)",
                (req.id, a.approver, a.kind, a.at_unix),
            )
        for c in req.history[history:]:
            self._exec(
                cur,
                "INSERT INTO access_history (request_id, state, by_person, at_unix, why)"
                " VALUES (?, ?, ?, ?, ?)",
                (req.id, c.state, c.by, c.at_unix, c.why),
            )

    def add_request(self, req: Request, signed_grant: bytes | None = None) -> None:
        """Store a new request with its history; StoreConflictError if the id exists."""
        with self._tx(write=True) as cur:
            self._exec(cur, _INSERT_REQUEST, self._row(req, signed_grant, None))
            self._children(cur, req, 0, 0)

    def save_request(
        self,
        before: Request,
        after: Request,
        *,
        signed_grant: bytes | None = None,
        revocation: bytes | None = None,
    ) -> None:
        """Store `after` if the request is still as `before` left it; else StoreConflictError.

        New approvals and history entries (those beyond `before`'s) are appended; the signed
        grant and revocation are kept when given.
        """
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "UPDATE access_requests SET state = ?, start_unix = ?, end_unix = ?,"
                " signed_grant = COALESCE(?, signed_grant), revocation = COALESCE(?, revocation)"
                " WHERE id = ? AND state = ?"
                " AND (SELECT COUNT(*) FROM access_history WHERE request_id = ?) = ?",
                (
                    after.state.value,
                    after.start_unix,
                    after.end_unix,
                    signed_grant,
                    revocation,
                    after.id,
                    before.state.value,
                    after.id,
                    len(before.history),
                ),
            )
            if cur.rowcount != 1:
                raise StoreConflictError(
                    f"request {after.id} changed while it was being decided; expected it "
                    f"{before.state} with {len(before.history)} history entries",
                    hint="look at it again with `custodes access show`",
                )
            self._children(cur, after, len(before.approvals), len(before.history))

    def get_request(self, request_id: str) -> StoredRequest | None:
        """The request with its approvals and history, or None."""
        found = self._requests(" WHERE id = ?", (request_id,), 1)
        return found[0] if found else None

    def list_requests(
        self,
        *,
        client: str | None = None,
        requester: str | None = None,
        states: Sequence[State] = (),
        touching: tuple[int, int] | None = None,
        limit: int = 1000,
    ) -> list[StoredRequest]:
        """Requests newest first, filtered by client, requester, states and `touching`.

        `touching` = (from, to), unix seconds: only requests created in [from, to) or whose
        active window (start to end; never started: none) overlaps it, searched among those
        created within REQUEST_REACH of it (index access_requests_by_created).
        """
        clause, params = _request_filter(client, requester, states, touching)
        return self._requests(clause + " ORDER BY created_unix DESC, id", params, limit)

    def count_requests(
        self,
        *,
        client: str | None = None,
        requester: str | None = None,
        states: Sequence[State] = (),
        touching: tuple[int, int] | None = None,
    ) -> int:
        """How many requests `list_requests` with the same filters finds, without a limit."""
        clause, params = _request_filter(client, requester, states, touching)
        with self._tx(write=False) as cur:
            self._exec(cur, f"SELECT COUNT(*) FROM access_requests{clause}", params)  # noqa: S608
            return int(cur.fetchone()[0])

    def live_requests(
        self,
        *,
        client: str | None = None,
        requester: str | None = None,
        now_unix: int,
        limit: int = 200,
    ) -> list[StoredRequest]:
        """Requests still pending before their deadline and approved grants not yet ended at
        `now_unix`, newest first, at most `limit` (both lapse within days: the sweep ends
        them; access_requests_by_state or access_requests_by_client finds them)."""
        live = "((state = ? AND pending_until_unix > ?) OR (state = ? AND end_unix > ?))"
        values = (State.PENDING.value, now_unix, State.APPROVED.value, now_unix)
        clause, params = _request_filter(client, requester, (), None, [(live, values)])
        return self._requests(clause + " ORDER BY created_unix DESC, id", params, limit)

    def ended_requests(
        self,
        *,
        client: str | None = None,
        requester: str | None = None,
        now_unix: int,
        after: tuple[int, str] | None = None,
        limit: int = 50,
    ) -> list[StoredRequest]:
        """Requests that have ended by `now_unix` (denied, cancelled, revoked, expired, or
        approved with their window over), newest first by (created_unix, id), at most
        `limit`, from after `after` = (created_unix, id) of the last one shown: a keyset
        walk (see `ended_filter`), never OFFSET."""
        clause, params = ended_filter(client, requester, now_unix, after)
        return self._requests(clause + " ORDER BY created_unix DESC, id DESC", params, limit)

    def due(self, now_unix: int, limit: int = 500) -> list[StoredRequest]:
        """Pending requests past their deadline and approved grants past their end."""
        return self._requests(
            " WHERE (state = ? AND pending_until_unix <= ?) OR (state = ? AND end_unix <= ?)"
            " ORDER BY id",
            (State.PENDING.value, now_unix, State.APPROVED.value, now_unix),
            limit,
        )

    def live_grants(self, client: str, now_unix: int) -> list[StoredRequest]:
        """Approved grants of `client` that have not ended (what its agents must hold)."""
        return self._requests(
            " WHERE client = ? AND state = ? AND end_unix > ? ORDER BY id",
            (client, State.APPROVED.value, now_unix),
            10_000,
        )

    def recent_revocations(self, client: str, now_unix: int) -> list[StoredRequest]:
        """Revoked or cancelled grants of `client` whose window has not ended yet."""
        return self._requests(
            " WHERE client = ? AND state IN (?, ?) AND revocation IS NOT NULL AND end_unix > ?"
            " ORDER BY id",
            (client, State.REVOKED.value, State.CANCELLED.value, now_unix),
            10_000,
        )

    def _requests(self, clause: str, params: Sequence[object], limit: int) -> list[StoredRequest]:
        with self._tx(write=False) as cur:
            # The limit in the text, not bound: SQLite plans a bound LIMIT as unknown, and
            # with statistics (ANALYZE) walked every request down access_requests_newest
            # for the few live ones rather than take them from the state index.
            self._exec(cur, f"{_SELECT_REQUESTS}{clause} LIMIT {int(limit)}", params)
            rows = cur.fetchall()
            ids = [r[0] for r in rows]
            approvals: dict[str, list[Approval]] = {i: [] for i in ids}
            history: dict[str, list[Change]] = {i: [] for i in ids}
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                marks = ", ".join("?" * len(part))
                self._exec(
                    cur,
                    "SELECT request_id, approver, role, at_unix FROM access_approvals"  # noqa: S608
                    f" WHERE request_id IN ({marks}) ORDER BY at_unix, approver",
                    part,
                )
                for rid, who, kind, at in cur.fetchall():
                    approvals[rid].append(Approval(who, kind, int(at)))
                self._exec(
                    cur,
                    "SELECT request_id, state, by_person, at_unix, why FROM access_history"  # noqa: S608
                    f" WHERE request_id IN ({marks}) ORDER BY id",
                    part,
                )
                for rid, state, who, at, why in cur.fetchall():
                    history[rid].append(Change(state, who, int(at), why))
        return [
            StoredRequest(
                Request(
                    id=r[0],
                    client=r[1],
                    technician=r[2],
                    requester=r[3],
                    area=r[4],
                    actions=tuple(Action(a) for a in r[5].split(",") if a),
                    start_unix=int(r[6]),
                    end_unix=int(r[7]),
                    duration_seconds=int(r[8]),
                    ticket=r[9],
                    reason=r[10],
                    break_glass=bool(r[11]),
                    state=State(r[12]),
                    created_unix=int(r[13]),
                    pending_until_unix=int(r[14]),
                    approvals_needed=int(r[15]),
                    approver_kinds=tuple(k for k in r[16].split(",") if k),
                    agreement_version=r[17],
                    approvals=tuple(approvals[r[0]]),
                    history=tuple(history[r[0]]),
                ),
                None if r[18] is None else bytes(r[18]),
                None if r[19] is None else bytes(r[19]),
            )
            for r in rows
        ]
