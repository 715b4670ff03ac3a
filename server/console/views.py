"""What each console page shows, gathered on the database thread as plain data.

Every function takes the viewer and applies `rights` itself: nothing leaves here that the
viewer may not see (other clients are filtered out, paths are masked by the one rule).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from policies.errors import PolicyError
from policies.load import parse_agreement
from policies.schema import Agreement
from protos.wire import pb
from server.access import Person, Request, Role, State
from server.console import rights
from server.incidents.model import ASSESSMENT_DAYS, DAY_S, Incident
from server.incidents.model import State as IncidentState
from server.query import agent_memory
from server.store.access import AccessStore
from server.store.base import EventCursor, Store, StoredRecord
from server.store.console import (
    UNDECIDED_STATES,
    ConsoleStore,
    IncidentBrief,
    QueueCursor,
    is_bigint_text,
)
from server.store.incidents import IncidentStore

NANOS = 1_000_000_000
PAGE = 50
SILENT_SECONDS = 300  # a heartbeat older than this reads as "silent"
_MODES = {
    pb.GATE_MODE_ENFORCING: "enforcing",
    pb.GATE_MODE_MONITOR: "monitor only",
}


@dataclass
class Sources:
    """The stores a page reads, and what it needs to present them."""

    store: Store
    access: AccessStore
    incidents: IncidentStore
    console: ConsoleStore
    mask_key: bytes
    parsed: dict[str, tuple[str, Agreement | None]] = field(default_factory=dict)
    current: dict[str, Agreement | None] | None = None  # per page: see for_page

    def for_page(self) -> Sources:
        """The same stores, looking each client's current agreement up once: a page asks for
        the client's zone for every row it shows (one query each, before)."""
        return dataclasses.replace(self, current={})

    def agreement(self, client: str) -> Agreement | None:
        """The client's current agreement, parsed once per stored version (None: none)."""
        if self.current is not None and client in self.current:
            return self.current[client]
        row = self.access.current_agreement(client)
        parsed: Agreement | None = None
        if row is not None:
            cached = self.parsed.get(client)
            if cached is not None and cached[0] == row.sha256:
                parsed = cached[1]
            else:
                try:
                    parsed = parse_agreement(row.yaml, filename=client)
                except PolicyError:  # a stored agreement that no longer loads: shown without
                    parsed = None
                self.parsed[client] = (row.sha256, parsed)
        if self.current is not None:
            self.current[client] = parsed
        return parsed

    def zone(self, client: str) -> ZoneInfo:
        """The client's time zone, from its current agreement (UTC without one)."""
        agreement = self.agreement(client)
        return agreement.timezone if agreement is not None else ZoneInfo("UTC")


def local(unix: float | None, zone: ZoneInfo, fmt: str = "%a %d %b %Y %H:%M") -> str:
    """An instant in the client's zone, as people read it ("" for none)."""
    if unix is None or unix <= 0:
        return ""
    return dt.datetime.fromtimestamp(unix, zone).strftime(fmt)


def known_clients(src: Sources) -> list[str]:
    """Every client the server knows (agents, agreements, requests)."""
    clients = {a.client for a in src.store.list_agents()}
    clients |= {a.client for a in src.access.list_agreements()}
    return sorted(clients)


# -- overview ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentHealth:
    """One agent's health line."""

    agent_id: str
    hostname: str
    state: str  # healthy, silent, revoked, never seen
    last_seen: str
    mode: str
    agreement_version: str
    stored: int
    verified_to: int
    memory: str  # the gating daemon's RSS + the shipping child's, from the last heartbeat


def agent_health(src: Sources, client: str, now: int) -> list[AgentHealth]:
    """The client's agents with last heartbeat, gate mode, agreement and checkpoint."""
    zone = src.zone(client)
    sizes = src.console.latest_checkpoint_sizes()
    out = []
    for a in src.store.list_agents(client):
        mode, version, memory = "", "", "-"
        if a.last_heartbeat:
            try:
                hb = pb.Heartbeat.FromString(a.last_heartbeat)
                mode = _MODES.get(hb.mode, "unknown")
                if hb.mode_note:
                    mode += f" ({hb.mode_note})"
                version = hb.agreement_version
                memory = agent_memory(hb)
            except Exception:
                mode = "unreadable heartbeat"
        if a.revoked_unix is not None:
            state = "revoked"
        elif a.last_seen_unix is None:
            state = "never seen"
        elif now - a.last_seen_unix > SILENT_SECONDS:
            state = "silent"
        else:
            state = "healthy"
        out.append(
            AgentHealth(
                a.agent_id,
                a.hostname,
                state,
                local(a.last_seen_unix, zone),
                mode or "not reported",
                version or "not reported",
                a.next_seq,
                sizes.get(a.agent_id, 0),
                memory,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class IncidentLine:
    """An incident in a queue."""

    id: int
    label: str
    client: str
    state: str
    summary: str
    technician: str
    aware: str
    due: str
    days_left: float
    overdue: bool
    individuals: int


def incident_line(inc: Incident, zone: ZoneInfo, now: float) -> IncidentLine:
    """An incident as a queue line (times in the client's zone)."""
    return IncidentLine(
        inc.id,
        inc.label,
        inc.client,
        inc.state.value.replace("_", " "),
        inc.summary,
        inc.technician or "",
        local(inc.aware_unix, zone),
        local(inc.due_unix, zone, "%a %d %b %Y"),
        round(inc.days_left(now), 1),
        inc.overdue(now),
        inc.individuals,
    )


def brief_line(src: Sources, b: IncidentBrief, now: float) -> IncidentLine:
    """An incident read as a brief (no assessment parsed) as a queue line."""
    zone = src.zone(b.client)
    due = b.aware_unix + ASSESSMENT_DAYS * DAY_S
    return IncidentLine(
        b.id,
        f"INC-{b.id:06d}",
        b.client,
        b.state.replace("_", " "),
        b.summary,
        b.technician,
        local(b.aware_unix, zone),
        local(due, zone, "%a %d %b %Y"),
        round((due - now) / DAY_S, 1),
        b.state in UNDECIDED_STATES and now > due,
        b.individuals,
    )


QUEUE_STATES = {  # the incidents page's state filter: its values and the states they mean
    "undecided": UNDECIDED_STATES,
    "decided": tuple(s.value for s in IncidentState if s.value not in UNDECIDED_STATES),
    **{s.value: (s.value,) for s in IncidentState},
}


# The decided are counted this far and then shown as "10,000+": they only grow (years of
# closed incidents), and an exact count reads every one of them for each page.
DECIDED_COUNTED = 10_000


@dataclass(frozen=True, slots=True)
class IncidentPage:
    """One page of the incident queue, with the totals it is a page of."""

    undecided: list[IncidentLine]
    decided: list[IncidentLine]
    undecided_total: int
    decided_total: int  # at most DECIDED_COUNTED
    next: str  # the next page's cursor ("" on the last page)
    decided_more: bool = False  # more than DECIDED_COUNTED are decided

    @property
    def shown(self) -> int:
        """Incidents on this page."""
        return len(self.undecided) + len(self.decided)


def incident_page(
    src: Sources,
    viewer: Person,
    now: float,
    *,
    client: str | None = None,
    state: str = "",
    after: QueueCursor | None = None,
) -> IncidentPage:
    """The incidents the viewer may read (of `client`, in the `state` filter), PAGE at a time:
    the undecided first by due date, then the decided newest first.

    ConsoleForbiddenError for a client outside the viewer's scope.
    """
    if not rights.may_read_incidents(viewer):
        raise rights.ConsoleForbiddenError(f"{viewer.name} may not read incidents")
    if client is not None and not viewer.serves(client):
        raise rights.ConsoleForbiddenError(
            f"{viewer.name} may see client {viewer.client} only, not {client}"
        )
    client = client or viewer.client
    states = QUEUE_STATES.get(state, ())
    briefs = src.console.incident_queue(client, states, after, PAGE + 1)
    page = briefs[:PAGE]
    last = page[-1] if len(briefs) > PAGE else None
    chosen = set(states)
    undecided = [s for s in UNDECIDED_STATES if not chosen or s in chosen]
    decided = [s for s in QUEUE_STATES["decided"] if not chosen or s in chosen]
    decided_total = (
        src.console.count_incidents(client, decided, up_to=DECIDED_COUNTED) if decided else 0
    )
    return IncidentPage(
        [brief_line(src, b, now) for b in page if b.state in UNDECIDED_STATES],
        [brief_line(src, b, now) for b in page if b.state not in UNDECIDED_STATES],
        src.console.count_incidents(client, undecided) if undecided else 0,
        min(decided_total, DECIDED_COUNTED),
        ""
        if last is None
        else QueueCursor(last.state in UNDECIDED_STATES, last.aware_unix, last.id).text(),
        decided_total > DECIDED_COUNTED,
    )


def first_open_incidents(
    src: Sources, viewer: Person, now: float, limit: int
) -> tuple[int, list[IncidentLine]]:
    """How many incidents the viewer may read are undecided, and the `limit` due first."""
    if not rights.may_read_incidents(viewer):
        return 0, []
    total, briefs = src.console.incidents_in_states(viewer.client, UNDECIDED_STATES, limit)
    return total, [brief_line(src, b, now) for b in briefs]


@dataclass(frozen=True, slots=True)
class RequestLine:
    """A request or grant as an approver reads it."""

    id: str
    client: str
    technician: str
    requester: str
    area: str
    kinds: str
    actions: str
    reason: str
    ticket: str
    duration: str
    window: str
    state: str
    created: str
    approvals: str
    break_glass: bool
    decidable: bool
    last_change: str


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min"


def request_line(src: Sources, viewer: Person, req: Request, now: int) -> RequestLine:
    """A request with everything an approver needs, in the client's zone."""
    zone = src.zone(req.client)
    window = (
        f"{local(req.start_unix, zone)} \u2013 {local(req.end_unix, zone, '%H:%M %d %b')}"
        if req.start_unix
        else f"from approval, for {_duration(req.duration_seconds)}"
    )
    last = req.history[-1] if req.history else None
    return RequestLine(
        req.id,
        req.client,
        req.technician,
        req.requester,
        req.area,
        ", ".join(area_kinds(src, req.client, req.area)) or "not listed",
        ", ".join(req.actions),
        req.reason,
        req.ticket,
        _duration(req.duration_seconds),
        window,
        req.state_at(now),
        local(req.created_unix, zone),
        f"{len(req.approvals)} of {req.approvals_needed}",
        req.break_glass,
        rights.may_decide_requests(viewer, req.client) and viewer.name != req.requester,
        ""
        if last is None
        else f"{last.state} by {last.by} {local(last.at_unix, zone)}"
        + (f": {last.why}" if last.why and last.state != "requested" else ""),
    )


def area_kinds(src: Sources, client: str, area: str) -> list[str]:
    """The kinds of information the client's agreement says the area holds."""
    agreement = src.agreement(client)
    for a in agreement.areas if agreement is not None else ():
        if a.id == area:
            return [str(k) for k in a.kinds]
    return []


@dataclass(frozen=True, slots=True)
class RequestCursor:
    """Where a page of ended requests stopped: the last one shown."""

    created_unix: int
    id: str

    def text(self) -> str:
        """The cursor as a query value (`CREATED:ID`)."""
        return f"{self.created_unix}:{self.id}"

    @classmethod
    def parse(cls, text: str | None) -> RequestCursor | None:
        """A cursor back from `text` (None when absent or malformed)."""
        created, _, ident = (text or "")[:200].partition(":")
        if not is_bigint_text(created) or not ident:
            return None
        return cls(int(created), ident)


@dataclass(frozen=True, slots=True)
class RequestPage:
    """The access requests page: what waits and what is live (on the first page), and one
    page of the ended requests, newest first."""

    pending: list[RequestLine]
    active: list[RequestLine]
    history: list[RequestLine]
    next: str = ""  # the next page's cursor ("" on the last page)
    live_cut: bool = False  # more pending or live than LIVE_SHOWN: the oldest are left out


LIVE_SHOWN = 200  # pending requests and live grants read for a page (they lapse within days)


def _scope(viewer: Person, client: str | None) -> tuple[str | None, str | None]:
    """(client, requester) the viewer's requests are read with; ConsoleForbiddenError for a
    client outside their scope. Technicians see their own requests only."""
    if client is not None and not viewer.serves(client):
        raise rights.ConsoleForbiddenError(
            f"{viewer.name} may see client {viewer.client} only, not {client}"
        )
    requester = viewer.name if viewer.role is Role.TECHNICIAN else None
    return client or viewer.client, requester


def live_requests(src: Sources, viewer: Person, now: int, client: str | None = None) -> RequestPage:
    """Pending requests (oldest first) and live grants the viewer may read (no history)."""
    scoped, requester = _scope(viewer, client)
    rows = src.access.live_requests(
        client=scoped, requester=requester, now_unix=now, limit=LIVE_SHOWN + 1
    )
    reqs = [r.request for r in rows[:LIVE_SHOWN] if viewer.serves(r.request.client)]
    pending = sorted(
        (r for r in reqs if r.state is State.PENDING and now < r.pending_until_unix),
        key=lambda r: r.created_unix,
    )
    active = [r for r in reqs if r.is_live(now)]
    return RequestPage(
        [request_line(src, viewer, r, now) for r in pending],
        [request_line(src, viewer, r, now) for r in active],
        [],
        live_cut=len(rows) > LIVE_SHOWN,
    )


def requests_page(
    src: Sources,
    viewer: Person,
    now: int,
    *,
    client: str | None = None,
    after: RequestCursor | None = None,
) -> RequestPage:
    """The requests the viewer may read (of `client`): on the first page the pending and
    the live grants, then PAGE ended requests at a time, newest first (keyset).

    ConsoleForbiddenError for a client outside the viewer's scope.
    """
    live = live_requests(src, viewer, now, client) if after is None else RequestPage([], [], [])
    scoped, requester = _scope(viewer, client)
    rows = src.access.ended_requests(
        client=scoped,
        requester=requester,
        now_unix=now,
        after=None if after is None else (after.created_unix, after.id),
        limit=PAGE + 1,
    )
    shown = [r.request for r in rows[:PAGE]]
    last = shown[-1] if len(rows) > PAGE else None
    return dataclasses.replace(
        live,
        history=[request_line(src, viewer, r, now) for r in shown if viewer.serves(r.client)],
        next="" if last is None else RequestCursor(last.created_unix, last.id).text(),
    )


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The events page's filters (already checked against the viewer)."""

    client: str | None = None
    technician: str | None = None
    area: str | None = None
    decision: str | None = None
    since_unix: int | None = None
    until_unix: int | None = None
    after: EventCursor | None = None


@dataclass(frozen=True, slots=True)
class EventLine:
    """One event as the viewer may read it."""

    when: str
    iso: str
    client: str
    agent_id: str
    seq: int
    who: str
    action: str
    decision: str
    area: str
    path: str
    rule: str
    evidence: str
    cursor: str


def scoped_filter(viewer: Person, f: EventFilter) -> EventFilter:
    """The filter narrowed to what the viewer may see; ConsoleForbiddenError for another client."""
    client = f.client
    if viewer.client is not None:
        if client not in (None, viewer.client):
            raise rights.ConsoleForbiddenError(
                f"{viewer.name} may see client {viewer.client} only, not {client}"
            )
        client = viewer.client
    technician = f.technician
    if not rights.sees_all_events(viewer):
        technician = viewer.technician or viewer.name
    return EventFilter(client, technician, f.area, f.decision, f.since_unix, f.until_unix, f.after)


def evidence_status(sizes: Sequence[int], seq: int) -> str:
    """Which verified checkpoint covers `seq` (the smallest size above it)."""
    i = bisect.bisect_right(sizes, seq)
    if i == len(sizes):
        return "stored, awaiting the next checkpoint"
    return f"verified · checkpoint {sizes[i]}"


def event_lines(src: Sources, viewer: Person, rows: Sequence[StoredRecord]) -> list[EventLine]:
    """Rows as the viewer may read them, with their evidence status."""
    sizes: dict[str, list[int]] = {}
    out = []
    for r in rows:
        if r.agent_id not in sizes:
            sizes[r.agent_id] = src.console.checkpoint_sizes(r.agent_id)
        zone = src.zone(r.client)
        unix = r.unix_nanos / NANOS
        out.append(
            EventLine(
                local(unix, zone, "%d %b %Y %H:%M:%S"),
                dt.datetime.fromtimestamp(unix, zone).isoformat(timespec="seconds"),
                r.client,
                r.agent_id,
                r.seq,
                r.technician or r.account or "",
                r.action or r.kind,
                r.verdict or "",
                r.area or "",
                rights.shown_path(viewer, r.client, r.technician, r.path or "", src.mask_key),
                r.rule or "",
                evidence_status(sizes[r.agent_id], r.seq),
                f"{r.unix_nanos}:{r.agent_id}:{r.seq}",
            )
        )
    return out


def find_events(
    src: Sources, viewer: Person, f: EventFilter, limit: int = PAGE
) -> list[StoredRecord]:
    """One page of events under the viewer's scope."""
    g = scoped_filter(viewer, f)
    return src.store.events(
        client=g.client,
        technician=g.technician,
        area=g.area,
        verdict=g.decision,
        since_nanos=None if g.since_unix is None else g.since_unix * NANOS,
        until_nanos=None if g.until_unix is None else g.until_unix * NANOS,
        after=g.after,
        limit=limit,
    )


def parse_cursor(text: str | None) -> EventCursor | None:
    """`after=NANOS:AGENT:SEQ` back into a cursor (None when absent or malformed)."""
    if not text:
        return None
    nanos, _, rest = text.partition(":")
    agent, _, seq = rest.rpartition(":")
    if not (nanos.isdigit() and seq.isdigit() and agent):
        return None
    return (int(nanos), agent, int(seq))
