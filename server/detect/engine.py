"""The Detector: the seam between ingest and the rules, incidents and notifications.

Ingest calls `on_committed` after each batch commit and `on_heartbeat` per heartbeat; the
app calls `tick` periodically (silence, integrity findings, due-date reminders, catch-up).
All on the database thread. The rules' state and the per-agent cursors are written in the
same transaction as the incidents they produce, so a restart resumes exactly: events below
an agent's cursor are never evaluated twice, events above it are read back from the store.

Each agent's events are evaluated in seq order, so a backlog (a server started on events no
Detector has seen) is read in bounded steps (`catch_up_step`, the app yields the database
thread between them). Meanwhile the agent is *behind*: its live batches are left in the store
for the catch-up to reach in order, rather than evaluated ahead of their predecessors or by
reading the whole backlog back at once; only their clock is checked live, since a skewed
clock shows against the arrival time alone, which the store does not keep.

One Detector per database: two server processes sharing PostgreSQL must elect one to run
it (the others skip `on_committed` and `tick`; the catch-up covers their batches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from google.protobuf.message import DecodeError

from policies.compile import CompiledAgreement
from protos.wire import pb
from server.detect.events import observation
from server.detect.model import OLD_AGREEMENT, AgentStatus, Finding, Observation
from server.detect.rules import NANOS, ClientView, Rules
from server.detect.state import RuleState
from server.incidents.model import UNDECIDED, Entity, Incident
from server.notify import NotifyConfig, reminder_event
from server.store.base import Store, StoredRecord
from server.store.incidents import Change, IncidentStore

log = structlog.get_logger("custodes.server.detect")

DEDUP_WINDOW_S = 3600.0
CATCH_UP_PAGE = 5000  # events read from the store (and committed with their state) at a time
CATCH_UP_CHUNK = 10_000  # events one catch-up step evaluates: one turn of the database thread


def entity_of(compiled: CompiledAgreement) -> Entity:
    """The statement's entity from the client's agreement."""
    a = compiled.agreement
    return Entity(
        name=a.client.name,
        abn=a.client.abn,
        contact_name=a.privacy_contact.name,
        contact_email=a.privacy_contact.email,
        contact_phone=a.privacy_contact.phone,
    )


@dataclass(frozen=True, slots=True)
class CatchUpStep:
    """What one `catch_up_step` did: events evaluated, whether the backlog is done, incidents."""

    evaluated: int
    finished: bool
    changed: list[Incident]


class Detector:
    """Evaluate stored events and periodic checks into incidents, exactly once."""

    def __init__(
        self,
        store: Store,
        agreements: Mapping[str, CompiledAgreement],
        clock: Callable[[], float] = time.time,
        *,
        notify: NotifyConfig | None = None,
        dedup_window_s: float = DEDUP_WINDOW_S,
        catch_up_chunk: int = CATCH_UP_CHUNK,
    ) -> None:
        self.store = store
        self.incidents = IncidentStore(store)
        self.clock = clock
        self.notify = notify or NotifyConfig()
        self.window_s = dedup_window_s
        self.chunk = catch_up_chunk
        rows, self._cursors = self.incidents.detector_state()
        # Agents whose live batches wait for the catch-up (their backlog was a chunk or more).
        self._behind: set[str] = set()
        self.state = RuleState.load(rows)
        self.rules = Rules({c: ClientView.of(a) for c, a in agreements.items()}, self.state)
        self.entities = {c: entity_of(a) for c, a in agreements.items()}
        # When each client's agreement version came into use here: heartbeats sampled before
        # an agent got a new version are not an "old agreement" for one heartbeat bound.
        started = clock()
        self._version_since = dict.fromkeys(agreements, started)

    def use_agreement(self, compiled: CompiledAgreement) -> bool:
        """Evaluate the client's events under `compiled` from now on; False if already in use.

        Rule state (bulk windows, grants) is kept; only thresholds, areas and the entity
        change. Call it on the database thread, like everything else here.
        """
        view = self.rules.views.get(compiled.client)
        if view is not None and view.agreement is compiled:
            return False
        self.rules.views = {**self.rules.views, compiled.client: ClientView.of(compiled)}
        self.entities[compiled.client] = entity_of(compiled)
        self._version_since[compiled.client] = self.clock()
        return True

    def _settled(self, client: str, at: float) -> bool:
        """True once agents of `client` have had a heartbeat bound to pick up its version."""
        since = self._version_since.get(client)
        return since is None or at - since > self.rules.thresholds(client).heartbeat_silence_s

    # -- the seam -------------------------------------------------------------------------

    def on_committed(
        self,
        records: Sequence[StoredRecord],
        received_unix: float,
        observations: Sequence[Observation] | None = None,
    ) -> list[Incident]:
        """Evaluate a committed batch (records of one or more agents, each in seq order).

        `observations`, when given, are the records' observations in the same order (ingest
        builds them from the parse it already made); otherwise the records are parsed here.
        Records below an agent's cursor were evaluated before and are skipped; a gap below
        the batch (a crash between commit and this call) shorter than a catch-up chunk is read
        back from the store first. A longer gap, or an agent already behind, leaves the
        records to the catch-up (`catch_up_step`), which evaluates them in order; their clock
        is checked here. Raises ValueError when `observations` do not match `records` one for
        one.
        """
        if observations is not None and len(observations) != len(records):
            raise ValueError(
                f"{len(observations)} observations for {len(records)} records; expected one each"
            )
        return self._evaluate(records, received_unix, observations)

    def _evaluate(
        self,
        records: Sequence[StoredRecord],
        received_unix: float | None,
        observations: Sequence[Observation] | None = None,
    ) -> list[Incident]:
        """`on_committed`; `received_unix` None for events read back (arrival unknown)."""
        findings: list[Finding] = []
        cursors: dict[str, int] = {}
        evaluate = self.rules.evaluate
        live = received_unix is not None
        # Per agent, not per event: a batch is one agent's contiguous run of records.
        agent: str | None = None
        cursor = start = 0
        deferred = False  # this agent's records wait for the catch-up
        skew_after = 0.0  # events dated after this (ns) may be ahead of their arrival
        for i, rec in enumerate(records):
            if rec.agent_id != agent:
                if agent is not None and cursor != start:
                    cursors[agent] = cursor
                agent = rec.agent_id
                cursor = start = cursors.get(agent, self._cursors.get(agent, 0))
                if received_unix is not None:
                    # A second's slack: skew_finding makes the exact comparison.
                    bound = self.rules.thresholds(rec.client).clock_skew_s
                    skew_after = (received_unix + bound - 1.0) * NANOS
                deferred = live and (agent in self._behind or rec.seq - cursor >= self.chunk)
                if deferred and agent not in self._behind:
                    self._behind.add(agent)
                    log.info("detector_agent_behind", agent=agent, cursor=cursor, seq=rec.seq)
            seq = rec.seq
            if seq < cursor:
                continue
            if deferred:
                # Evaluated later, in order, by the catch-up; only the clock needs the arrival.
                if received_unix is not None and rec.unix_nanos > skew_after:
                    obs = observation(rec) if observations is None else observations[i]
                    skew = self.rules.skew_finding(obs, received_unix)
                    if skew is not None:
                        findings.append(skew)
                continue
            if seq > cursor:
                cursor = self._read_back(agent, cursor, seq, findings)
            obs = observation(rec) if observations is None else observations[i]
            findings.extend(evaluate(obs))
            if received_unix is not None and obs.unix_nanos > skew_after:
                skew = self.rules.skew_finding(obs, received_unix)
                if skew is not None:
                    findings.append(skew)
            cursor = seq + 1
        if agent is not None and cursor != start:
            cursors[agent] = cursor
        if not cursors and not findings:
            return []
        return self._commit(findings, cursors)

    def on_heartbeat(
        self, agent_id: str, client: str, heartbeat: bytes, received_unix: float
    ) -> list[Incident]:
        """Check a live heartbeat's clock and agreement version."""
        try:
            hb = pb.Heartbeat.FromString(heartbeat)
        except DecodeError:  # a malformed heartbeat is ignored, not fatal
            return []
        findings = [
            f
            for f in self.rules.heartbeat_findings(
                agent_id, client, hb.unix_nanos / 1e9, hb.agreement_version, received_unix
            )
            if f.rule != OLD_AGREEMENT or self._settled(client, received_unix)
        ]
        return self._commit(findings, {}) if findings else []

    def tick(self, now: float | None = None, *, catch_up: bool = True) -> list[Incident]:
        """Periodic work: catch up on stored events, silent agents, integrity, reminders.

        `catch_up` False leaves the stored backlog to the caller's `catch_up_step`s.
        """
        at = self.clock() if now is None else now
        changed = self.catch_up() if catch_up else []
        agents = self.store.list_agents()
        findings = self.rules.silent_agents(
            [
                AgentStatus(
                    a.agent_id,
                    a.client,
                    None if a.last_seen_unix is None else float(a.last_seen_unix),
                    float(a.enrolled_unix),
                    revoked=a.revoked_unix is not None,
                )
                for a in agents
            ],
            at,
        )
        for a in agents:
            if a.last_heartbeat and a.revoked_unix is None and self._settled(a.client, at):
                version = _heartbeat_version(a.last_heartbeat)
                if version:
                    findings += [
                        f
                        for f in self.rules.heartbeat_findings(
                            a.agent_id, a.client, 0.0, version, at
                        )
                        if f.rule == OLD_AGREEMENT
                    ]
        notes = self.incidents.integrity_after(self.state.integrity_cursor)
        findings += self.rules.integrity_findings(notes)
        if findings or self.state_dirty():
            changed += self._commit(findings, {}, now=at)
        self._remind(at)
        return changed

    def catch_up(self) -> list[Incident]:
        """Evaluate every stored event no Detector has evaluated yet, in one call.

        For a short backlog (tests, the tick after the stepped catch-up); the server steps
        through a long one with `catch_up_step` instead.
        """
        changed: list[Incident] = []
        for _ in range(1 + self.backlog() // max(1, self.chunk) + 1):
            step = self.catch_up_step()
            changed += step.changed
            if step.finished:
                break
        return changed

    def backlog(self) -> int:
        """How many stored events no Detector has evaluated yet."""
        return sum(
            max(0, a.next_seq - self._cursors.get(a.agent_id, 0)) for a in self.store.list_agents()
        )

    def catch_up_step(self, limit: int | None = None) -> CatchUpStep:
        """Evaluate at most `limit` (default: one chunk) stored events not yet evaluated.

        Agent by agent, each in seq order, the state and cursors committed with every page, so
        a crash between steps resumes where the last page ended. An agent whose backlog is
        done is no longer behind: its next live batch is evaluated as it commits. Call it on
        the database thread, which must not commit ingest batches during the call.
        """
        budget = self.chunk if limit is None else limit
        changed: list[Incident] = []
        evaluated = 0
        finished = True
        for agent in self.store.list_agents():
            agent_id = agent.agent_id
            cursor = self._cursors.get(agent_id, 0)
            exhausted = False  # nothing stored from the cursor on (below the agent's next seq)
            while cursor < agent.next_seq and evaluated < budget:
                want = min(CATCH_UP_PAGE, budget - evaluated, agent.next_seq - cursor)
                page = self.incidents.events_from(agent_id, cursor, want)
                if not page:
                    exhausted = True
                    break
                changed += self._evaluate(page, None)
                evaluated += len(page)
                cursor = self._cursors.get(agent_id, cursor)
            if cursor < agent.next_seq and not exhausted:
                finished = False
            else:
                self._behind.discard(agent_id)
        if finished:
            self._behind.clear()  # agents since removed from the store
        return CatchUpStep(evaluated, finished, changed)

    def state_dirty(self) -> bool:
        """True when rule state changed since it was last saved."""
        return self.state.dirty

    # -- inside ---------------------------------------------------------------------------

    def _read_back(self, agent_id: str, cursor: int, upto: int, findings: list[Finding]) -> int:
        while cursor < upto:
            page = self.incidents.events_from(agent_id, cursor, min(CATCH_UP_PAGE, upto - cursor))
            if not page:
                break
            for rec in page:
                if rec.seq >= upto:
                    break
                findings.extend(self.rules.evaluate(observation(rec)))
                cursor = rec.seq + 1
        return upto

    def _commit(
        self, findings: Sequence[Finding], cursors: Mapping[str, int], now: float | None = None
    ) -> list[Incident]:
        at = self.clock() if now is None else now
        changes: list[Change] = self.incidents.commit(
            findings,
            now=at,
            window_s=self.window_s,
            state_rows=self.state.take_dirty(),
            cursors=cursors,
            entities=self.entities,
            notify_targets=self.notify.targets(),
        )
        self._cursors.update(cursors)
        for change in changes:
            inc = change.incident
            if change.opened:
                log.warning(
                    "incident_opened",
                    incident=inc.label,
                    rule=inc.rule,
                    client=inc.client,
                    subject=inc.subject,
                    due=inc.due_unix,
                )
        return [c.incident for c in changes]

    def _remind(self, now: float) -> None:
        targets = self.notify.targets()
        if not targets:
            return
        for inc in self.incidents.incidents(states=sorted(UNDECIDED)):
            event = reminder_event(inc, self.notify.reminder_days, now)
            if event is not None:
                self.incidents.enqueue(inc.id, event, targets, now)


def _heartbeat_version(data: bytes) -> str:
    try:
        return pb.Heartbeat.FromString(data).agreement_version
    except DecodeError:  # stored heartbeats are the agent's; ignore garbage
        return ""
