"""Persistence of incidents, their evidence, audit trail, the detector's state and deliveries.

Shares the evidence store's connection and transactions (`SqlStore._transaction`), so it
works on SQLite and PostgreSQL alike, and so the detector can write its findings, rule
state and cursors in ONE transaction: a restart neither loses nor repeats an incident.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from server.detect.model import Finding, IntegrityNote
from server.incidents.model import AuditEntry, Entity, Incident, State, assessment_fields
from server.store.base import StoredRecord, StoreError
from server.store.sql import Cursor, StorePart

UNDECIDED = (State.OPEN.value, State.ASSESSING.value)
_INCIDENT_COLS = (
    "id, dedup_key, rule, client, subject, summary, technician, agent_id, state, aware_unix,"
    " first_unix, last_unix, areas, kinds, files, individuals, evidence_count, assessment"
)
_SELECT = f"SELECT {_INCIDENT_COLS} FROM ndb_incidents"  # noqa: S608 - fixed column names
_DELIVERY_COLS = (
    "id, incident_id, event, channel, target, state, attempts, next_attempt_unix, last_error,"
    " created_unix, sent_unix"
)
_RECORD_COLS = (
    "agent_id, seq, event, chain_hash, client, unix_nanos, kind,"
    " technician, account, area, action, verdict, rule, path"
)


_EVIDENCE_COLS = ", ".join(f"e.{c.strip()}" for c in _RECORD_COLS.split(","))


def _record(r: Sequence[Any]) -> StoredRecord:
    return StoredRecord(r[0], int(r[1]), bytes(r[2]), bytes(r[3]), r[4], int(r[5]), r[6], *r[7:])


class _ManyCursor(Cursor, Protocol):
    def executemany(self, query: Any, params: Iterable[Any], /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification to one target about one incident event, and how it went."""

    id: int
    incident_id: int
    event: str  # "opened", "due_day_20", ...
    channel: str  # "webhook" or "email"
    target: str  # URL or address
    state: str  # "pending", "sent", "failed"
    attempts: int
    next_attempt_unix: float
    last_error: str
    created_unix: float
    sent_unix: float | None


@dataclass(frozen=True, slots=True)
class Change:
    """What committing one finding did: the incident after it, and whether it opened it."""

    incident: Incident
    opened: bool


def merge(findings: Sequence[Finding]) -> list[Finding]:
    """Findings with the same dedup key folded into one (evidence, files, kinds joined).

    A batch's 500 denials become one row update instead of 500; the latest summary wins.
    """
    by_key: dict[str, list[Finding]] = {}
    for f in findings:
        by_key.setdefault(f.dedup_key, []).append(f)
    out: list[Finding] = []
    for group in by_key.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        first, last = group[0], group[-1]
        out.append(
            dataclasses.replace(
                last,
                at_unix=min(f.at_unix for f in group),
                summary=last.summary if last.rule == "bulk_read" else first.summary,
                evidence=tuple(dict.fromkeys(e for f in group for e in f.evidence)),
                files=tuple(dict.fromkeys(x for f in group for x in f.files)),
                kinds=tuple(dict.fromkeys(k for f in group for k in f.kinds)),
            )
        )
        if max(f.at_unix for f in group) > out[-1].at_unix:
            out.append(dataclasses.replace(group[-1], evidence=(), files=()))
    return out


def _incident(row: Sequence[Any], audit: tuple[AuditEntry, ...] = ()) -> Incident:
    return Incident(
        id=int(row[0]),
        dedup_key=row[1],
        rule=row[2],
        client=row[3],
        subject=row[4],
        summary=row[5],
        technician=row[6],
        agent_id=row[7],
        state=State(row[8]),
        aware_unix=float(row[9]),
        first_unix=float(row[10]),
        last_unix=float(row[11]),
        areas=tuple(json.loads(row[12])),
        kinds=tuple(json.loads(row[13])),
        files=int(row[14]),
        individuals=int(row[15]),
        evidence_count=int(row[16]),
        audit=audit,
        **assessment_fields(json.loads(row[17])),
    )


class IncidentStore(StorePart):
    """Incidents and detector state in the evidence store's database."""

    needs = "incidents need"

    def _many(self, cur: Cursor, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if rows:
            cast(_ManyCursor, cur).executemany(self._db._q(sql), rows)

    # -- detector state -------------------------------------------------------------------

    def detector_state(self) -> tuple[dict[str, str], dict[str, int]]:
        """The stored rule state (key → JSON) and per-agent cursors (next seq to read)."""
        with self._tx(write=False) as cur:
            self._exec(cur, "SELECT state_key, value FROM detect_state")
            state = {str(k): str(v) for k, v in cur.fetchall()}
            self._exec(cur, "SELECT agent_id, next_seq FROM detect_cursors")
            cursors = {str(a): int(s) for a, s in cur.fetchall()}
        return state, cursors

    def events_from(self, agent_id: str, from_seq: int, limit: int) -> list[StoredRecord]:
        """The agent's stored events from `from_seq`, in seq order (detector catch-up)."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                f"SELECT {_RECORD_COLS} FROM events WHERE agent_id = ? AND seq >= ?"  # noqa: S608
                " ORDER BY seq LIMIT ?",
                (agent_id, from_seq, limit),
            )
            rows = cur.fetchall()
        return [_record(r) for r in rows]

    def integrity_after(self, after_id: int, limit: int = 1000) -> list[IntegrityNote]:
        """Integrity findings recorded after `after_id`, with the agent's client."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT i.id, i.agent_id, COALESCE(a.client, ''), i.kind, i.detail, i.at_unix"
                " FROM integrity_events i LEFT JOIN agents a ON a.agent_id = i.agent_id"
                " WHERE i.id > ? ORDER BY i.id LIMIT ?",
                (after_id, limit),
            )
            return [
                IntegrityNote(int(r[0]), r[1], r[2], r[3], r[4], float(r[5]))
                for r in cur.fetchall()
            ]

    def commit(
        self,
        findings: Sequence[Finding],
        *,
        now: float,
        window_s: float,
        state_rows: Mapping[str, str | None],
        cursors: Mapping[str, int],
        entities: Mapping[str, Entity],
        notify_targets: Sequence[tuple[str, str]] = (),
    ) -> list[Change]:
        """In one transaction: open or grow an incident per finding, save state and cursors.

        A finding joins the undecided incident with its dedup key whose latest evidence is
        within `window_s`; otherwise it opens a new one (aware now). An opened incident
        queues an "opened" delivery per (channel, target) in `notify_targets`.
        """
        changes: dict[int, Change] = {}
        with self._tx(write=True) as cur:
            for finding in merge(findings):
                change = self._apply(cur, finding, now, window_s, entities)
                prior = changes.get(change.incident.id)
                opened = change.opened or (prior is not None and prior.opened)
                changes[change.incident.id] = Change(change.incident, opened)
            for incident_id in changes:
                self._recount(cur, incident_id)
            for key, value in state_rows.items():
                self._exec(cur, "DELETE FROM detect_state WHERE state_key = ?", (key,))
                if value is not None:
                    self._exec(
                        cur,
                        "INSERT INTO detect_state (state_key, value) VALUES (?, ?)",
                        (key, value),
                    )
            for agent_id, next_seq in cursors.items():
                self._exec(
                    cur,
                    "INSERT INTO detect_cursors (agent_id, next_seq) VALUES (?, ?)"
                    " ON CONFLICT (agent_id) DO UPDATE SET next_seq = excluded.next_seq",
                    (agent_id, next_seq),
                )
            result = []
            for incident_id, change in changes.items():
                if change.opened:
                    for channel, target in notify_targets:
                        self._enqueue(cur, incident_id, "opened", channel, target, now)
                result.append(Change(self._get(cur, incident_id), change.opened))
        return result

    def _apply(
        self,
        cur: Cursor,
        f: Finding,
        now: float,
        window_s: float,
        entities: Mapping[str, Entity],
    ) -> Change:
        self._exec(
            cur,
            "SELECT id, areas, kinds, first_unix, last_unix FROM ndb_incidents"
            " WHERE dedup_key = ? AND state IN (?, ?) AND last_unix >= ?"
            " ORDER BY id DESC LIMIT 1",
            (f.dedup_key, *UNDECIDED, f.at_unix - window_s),
        )
        found = cur.fetchone()
        areas = {x.area for x in f.files} | ({f.area} if f.area else set())
        opened = found is None
        if found is None:
            entity = entities.get(f.client)
            assessment = Incident(
                0, f.rule, f.client, f.subject, f.dedup_key, f.summary, now, 0, 0, entity=entity
            ).assessment_json()
            self._exec(
                cur,
                "INSERT INTO ndb_incidents (dedup_key, rule, client, subject, summary, technician,"
                " agent_id, state, aware_unix, first_unix, last_unix, areas, kinds, files,"
                " individuals, evidence_count, assessment)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0, ?) RETURNING id",
                (
                    f.dedup_key,
                    f.rule,
                    f.client,
                    f.subject,
                    f.summary,
                    f.technician,
                    f.agent_id,
                    State.OPEN.value,
                    now,
                    f.at_unix,
                    f.at_unix,
                    json.dumps(sorted(areas)),
                    json.dumps(sorted(f.kinds)),
                    json.dumps(assessment),
                ),
            )
            incident_id = int(cur.fetchone()[0])
            self._exec(
                cur,
                "INSERT INTO ndb_audit (incident_id, at_unix, actor, action, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (incident_id, now, "custodes-detector", "opened", f.summary),
            )
        else:
            incident_id = int(found[0])
            merged_areas = sorted(set(json.loads(found[1])) | areas)
            merged_kinds = sorted(set(json.loads(found[2])) | set(f.kinds))
            self._exec(
                cur,
                "UPDATE ndb_incidents SET areas = ?, kinds = ?, first_unix = ?, last_unix = ?,"
                " summary = CASE WHEN rule = 'bulk_read' THEN ? ELSE summary END WHERE id = ?",
                (
                    json.dumps(merged_areas),
                    json.dumps(merged_kinds),
                    min(float(found[3]), f.at_unix),
                    max(float(found[4]), f.at_unix),
                    f.summary,
                    incident_id,
                ),
            )
        self._many(
            cur,
            "INSERT INTO ndb_evidence (incident_id, agent_id, seq) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            [(incident_id, a, s) for a, s in f.evidence],
        )
        self._many(
            cur,
            "INSERT INTO ndb_files (incident_id, agent_id, path, area, individuals)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(incident_id, x.agent_id, x.path, x.area, x.individuals) for x in f.files],
        )
        return Change(self._get(cur, incident_id, audit=False), opened)

    def _recount(self, cur: Cursor, incident_id: int) -> None:
        self._exec(
            cur,
            "UPDATE ndb_incidents SET"
            " evidence_count = (SELECT COUNT(*) FROM ndb_evidence WHERE incident_id = ?),"
            " files = (SELECT COUNT(*) FROM ndb_files WHERE incident_id = ?),"
            " individuals = (SELECT COALESCE(SUM(individuals), 0) FROM ndb_files"
            " WHERE incident_id = ?) WHERE id = ?",
            (incident_id, incident_id, incident_id, incident_id),
        )

    # -- incidents --------------------------------------------------------------------------

    def _get(self, cur: Cursor, incident_id: int, *, audit: bool = True) -> Incident:
        self._exec(cur, _SELECT + " WHERE id = ?", (incident_id,))
        row = cur.fetchone()
        if row is None:
            from server.incidents.errors import IncidentNotFoundError  # noqa: PLC0415

            raise IncidentNotFoundError(
                f"no incident has id {incident_id}; expected one `custodes incidents list` shows"
            )
        trail: tuple[AuditEntry, ...] = ()
        if audit:
            self._exec(
                cur,
                "SELECT at_unix, actor, action, detail FROM ndb_audit WHERE incident_id = ?"
                " ORDER BY id",
                (incident_id,),
            )
            trail = tuple(AuditEntry(float(a), b, c, d) for a, b, c, d in cur.fetchall())
        return _incident(row, trail)

    def get(self, incident_id: int) -> Incident:
        """The incident with its audit trail; IncidentNotFoundError if there is none."""
        with self._tx(write=False) as cur:
            return self._get(cur, incident_id)

    def incidents(
        self,
        *,
        client: str | None = None,
        states: Sequence[State] | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[Incident]:
        """Incidents by id (without audit trails), optionally of one client or some states;
        with `after_id` and `limit`, one chunk of them (a full export reads chunk by chunk)."""
        where: list[str] = ["id > ?"]
        params: list[object] = [after_id]
        if client is not None:
            where.append("client = ?")
            params.append(client)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(s.value for s in states)
        bound = "" if limit is None else f" LIMIT {int(limit)}"
        with self._tx(write=False) as cur:
            self._exec(cur, f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY id{bound}", params)
            return [_incident(r) for r in cur.fetchall()]

    def save_step(self, before: Incident, after: Incident, entry: AuditEntry) -> Incident:
        """Store an assessment step, only if the incident is still as `before` (no lost update).

        Raises StoreError if someone else changed it meanwhile.
        """
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "UPDATE ndb_incidents SET state = ?, assessment = ? WHERE id = ? AND state = ?"
                " AND assessment = ?",
                (
                    after.state.value,
                    json.dumps(after.assessment_json()),
                    after.id,
                    before.state.value,
                    json.dumps(before.assessment_json()),
                ),
            )
            if cur.rowcount != 1:
                raise StoreError(
                    f"{after.label} changed while this step was prepared; expected it unchanged",
                    hint="show it again and repeat the step",
                )
            self._exec(
                cur,
                "INSERT INTO ndb_audit (incident_id, at_unix, actor, action, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (after.id, entry.at_unix, entry.actor, entry.action, entry.detail),
            )
            return self._get(cur, after.id)

    def evidence(self, incident_id: int, limit: int = 10_000) -> list[tuple[str, int]]:
        """(agent_id, seq) of the incident's evidence events, in order."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                "SELECT agent_id, seq FROM ndb_evidence WHERE incident_id = ?"
                " ORDER BY agent_id, seq LIMIT ?",
                (incident_id, limit),
            )
            return [(str(a), int(s)) for a, s in cur.fetchall()]

    def evidence_records(self, incident_id: int, limit: int = 10_000) -> list[StoredRecord]:
        """The stored events of the incident's first `limit` evidence links (as `evidence`
        orders them), in that order, read in one query; a link whose event is no longer
        stored is left out."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                f"SELECT {_EVIDENCE_COLS} FROM (SELECT agent_id, seq FROM ndb_evidence"  # noqa: S608
                " WHERE incident_id = ? ORDER BY agent_id, seq LIMIT ?) n"
                " JOIN events e ON e.agent_id = n.agent_id AND e.seq = n.seq"
                " ORDER BY n.agent_id, n.seq",
                (incident_id, limit),
            )
            return [_record(r) for r in cur.fetchall()]

    # -- notification deliveries --------------------------------------------------------------

    def _enqueue(  # noqa: PLR0917 - one row's columns
        self, cur: Cursor, incident_id: int, event: str, channel: str, target: str, now: float
    ) -> None:
        self._exec(
            cur,
            "INSERT INTO notify_deliveries (incident_id, event, channel, target, state, attempts,"
            " next_attempt_unix, last_error, created_unix, sent_unix)"
            " VALUES (?, ?, ?, ?, 'pending', 0, ?, '', ?, NULL) ON CONFLICT DO NOTHING",
            (incident_id, event, channel, target, now, now),
        )

    def enqueue(
        self, incident_id: int, event: str, targets: Sequence[tuple[str, str]], now: float
    ) -> None:
        """Queue `event` for each (channel, target) once (a repeat is ignored)."""
        with self._tx(write=True) as cur:
            for channel, target in targets:
                self._enqueue(cur, incident_id, event, channel, target, now)

    def due_deliveries(self, now: float, limit: int = 100) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first."""
        with self._tx(write=False) as cur:
            self._exec(
                cur,
                f"SELECT {_DELIVERY_COLS} FROM notify_deliveries"  # noqa: S608
                " WHERE state = 'pending' AND next_attempt_unix <= ? ORDER BY id LIMIT ?",
                (now, limit),
            )
            return [_delivery(r) for r in cur.fetchall()]

    def deliveries(self, incident_id: int | None = None) -> list[Delivery]:
        """Every delivery (of one incident), by id."""
        with self._tx(write=False) as cur:
            if incident_id is None:
                self._exec(cur, f"SELECT {_DELIVERY_COLS} FROM notify_deliveries ORDER BY id")  # noqa: S608
            else:
                self._exec(
                    cur,
                    f"SELECT {_DELIVERY_COLS} FROM notify_deliveries"  # noqa: S608
                    " WHERE incident_id = ? ORDER BY id",
                    (incident_id,),
                )
            return [_delivery(r) for r in cur.fetchall()]

    def delivery_done(
        self, delivery_id: int, *, now: float, error: str = "", retry_at: float | None = None
    ) -> None:
        """Record an attempt: sent (no error), retry at `retry_at`, or failed for good."""
        state = "sent" if not error else ("pending" if retry_at is not None else "failed")
        with self._tx(write=True) as cur:
            self._exec(
                cur,
                "UPDATE notify_deliveries SET state = ?, attempts = attempts + 1,"
                " next_attempt_unix = ?, last_error = ?, sent_unix = ? WHERE id = ?",
                (
                    state,
                    retry_at if retry_at is not None else now,
                    error[:1000],
                    now if not error else None,
                    delivery_id,
                ),
            )


def _delivery(r: Sequence[Any]) -> Delivery:
    return Delivery(
        int(r[0]),
        int(r[1]),
        r[2],
        r[3],
        r[4],
        r[5],
        int(r[6]),
        float(r[7]),
        r[8],
        float(r[9]),
        None if r[10] is None else float(r[10]),
    )
