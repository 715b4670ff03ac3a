"""The client access statement: one client, one month, everything a practice needs to see.

Every technician access to sensitive areas (summarised per technician, area, action and
decision, with the rule or grant behind it, and per technician per local day), the grants
and tickets, the denials, the incidents, and the evidence verification result per agent.
A month of a busy client holds tens of thousands of denials, so the lists are bounded
(MAX_DENIALS, MAX_GRANTS, MAX_INCIDENTS), each with its total and where to find the rest;
the counts are never bounded. Built on the database thread; rendered as printable HTML
(templates/statement.html) and as PDF (pdf.py).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import urlencode

from protos.errors import UsageError
from server.access import Person
from server.console import rights
from server.console.views import NANOS, Sources, local
from server.incidents.model import ASSESSMENT_DAYS, DAY_S
from server.store.access import StoredRequest

MAX_DENIALS = 200  # listed one by one; the rest are counted, and in the events export
MAX_GRANTS = 200  # requests listed (newest first); the rest are counted
MAX_INCIDENTS = 200  # listed; the rest are counted, and in the breach register
MAX_ROLL_UP = 200_000  # events a statement counts into the rollup itself (~0.6 s at most)
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def month_bounds(month: str, zone: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The first instant of `month` (YYYY-MM) in `zone` and of the month after."""
    m = _MONTH.match(month)
    if m is None or not 1 <= int(m[2]) <= 12:
        raise UsageError(f"month {month!r} is not YYYY-MM", hint="for example 2026-03")
    year, mon = int(m[1]), int(m[2])
    start = dt.datetime(year, mon, 1, tzinfo=zone)
    end = dt.datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=zone)
    return start, end


@dataclass(frozen=True, slots=True)
class AccessRow:
    """Accesses of one technician to one area with one action, decision and rule."""

    technician: str
    area: str
    action: str
    decision: str
    rule: str
    count: int
    first: str
    last: str


@dataclass(frozen=True, slots=True)
class GrantRow:
    """A request or grant that touched the month."""

    id: str
    technician: str
    area: str
    actions: str
    ticket: str
    reason: str
    window: str
    state: str
    approved_by: str


@dataclass(frozen=True, slots=True)
class StatementDenial:
    """One denied access as the statement shows it: the time in the client's zone, the path
    as the viewer may read it (the stored row is `server.store.console.DenialRow`)."""

    when: str
    technician: str
    area: str
    action: str
    path: str
    rule: str


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """An incident raised in the month."""

    label: str
    summary: str
    state: str
    aware: str
    due: str


@dataclass(frozen=True, slots=True)
class VerificationRow:
    """How far an agent's evidence is verified."""

    agent_id: str
    hostname: str
    stored: int
    verified_to: int
    findings: int
    result: str


@dataclass(frozen=True, slots=True)
class Statement:
    """Everything the statement shows."""

    client: str
    client_name: str
    month: str
    month_label: str
    zone: str
    generated: str
    accesses: list[AccessRow]
    heat_technicians: list[str]
    heat_days: list[str]
    heat: dict[tuple[str, str], int]
    grants: list[GrantRow]
    denials: list[StatementDenial]
    denials_total: int
    incidents: list[IncidentRow]
    verification: list[VerificationRow]
    uncounted: int = 0  # stored events the rollup had not counted yet (the newest)
    incidents_total: int = 0  # incidents of the month; the first MAX_INCIDENTS are listed
    grants_total: int = 0  # requests of the month; the newest MAX_GRANTS are listed

    @property
    def total_accesses(self) -> int:
        """Technician accesses to sensitive areas in the month."""
        return sum(a.count for a in self.accesses)

    @property
    def denials_export(self) -> str:
        """The console path of the events export (CSV) holding every denial of the month."""
        first = dt.date.fromisoformat(f"{self.month}-01")
        after = (first + dt.timedelta(days=32)).replace(day=1)
        query = {"client": self.client, "decision": "deny", "from": f"{first}T00:00"}
        return "/events.csv?" + urlencode({**query, "to": f"{after}T00:00"})

    @property
    def verified(self) -> bool:
        """True when every agent's stored evidence is covered by a verified checkpoint."""
        return all(v.findings == 0 and v.verified_to >= v.stored for v in self.verification)


def _approved_by(stored: StoredRequest) -> str:
    names = [a.approver for a in stored.request.approvals]
    if stored.request.break_glass:
        return "break-glass (no approval)"
    return ", ".join(names)


def day_starts(start: dt.datetime, end: dt.datetime) -> list[int]:
    """Unix times at which each local day from `start` to `end` begins, and `end` itself
    (days are 23 or 25 hours long where the zone changes its offset)."""
    zone = start.tzinfo
    days = (end.date() - start.date()).days
    return [
        int(dt.datetime.combine(start.date() + dt.timedelta(days=i), dt.time(), zone).timestamp())
        for i in range(days + 1)
    ]


def build(src: Sources, viewer: Person, client: str, month: str, now: int) -> Statement:
    """The statement of `client` for `month`; ConsoleForbiddenError outside the viewer's scope.

    Counts come from the hourly rollup, summed in the database; events the rollup has not
    counted yet are counted first, at most MAX_ROLL_UP of them (the console counts in the
    background too), and any still uncounted are stated on the statement.
    """
    if not rights.may_read_incidents(viewer) or not viewer.serves(client):
        raise rights.ConsoleForbiddenError(
            f"{viewer.name} may not read the access statement of {client}"
        )
    zone = src.zone(client)
    start, end = month_bounds(month, zone)
    lo, hi = int(start.timestamp()), int(end.timestamp())
    rollup = src.console.rollup
    rollup.roll_up(max_rows=MAX_ROLL_UP)
    uncounted = rollup.backlog(client)
    summary = rollup.access_summary(client, lo * NANOS, hi * NANOS)
    accesses = [
        AccessRow(
            a.technician,
            a.area,
            a.action,
            a.verdict,
            a.rule,
            a.count,
            local(a.first_hour_unix, zone, "%d %b %H:00"),
            local(a.last_hour_unix + 3599, zone, "%d %b %H:59"),
        )
        for a in summary
    ]
    starts = day_starts(start, end)
    days = [f"{d:02d}" for d in range(1, len(starts))]
    heat = {(tech, days[i]): n for (tech, i), n in rollup.daily_counts(client, starts).items()}
    technicians = sorted({t for t, _ in heat})
    grants: list[GrantRow] = []
    grants_total = src.access.count_requests(client=client, touching=(lo, hi))
    for stored in src.access.list_requests(client=client, touching=(lo, hi), limit=MAX_GRANTS):
        r = stored.request
        window = (
            f"{local(r.start_unix, zone, '%d %b %H:%M')} \u2013 "
            f"{local(r.end_unix, zone, '%d %b %H:%M')}"
            if r.start_unix
            else "never started"
        )
        grants.append(
            GrantRow(
                r.id,
                r.technician,
                r.area,
                ", ".join(r.actions),
                r.ticket,
                r.reason,
                window,
                r.state_at(now),
                _approved_by(stored),
            )
        )
    denials = [
        StatementDenial(
            local(d.unix_nanos / NANOS, zone, "%d %b %H:%M:%S"),
            d.technician,
            d.area,
            d.action,
            rights.shown_path(viewer, client, d.technician, d.path, src.mask_key),
            d.rule,
        )
        for d in src.console.denials(client, lo * NANOS, hi * NANOS, MAX_DENIALS)
    ]
    denials_total = sum(a.count for a in summary if a.verdict == "deny")
    incidents_total, briefs = src.console.incidents_in(client, lo, hi, MAX_INCIDENTS)
    incidents = [
        IncidentRow(
            f"INC-{i.id:06d}",
            i.summary,
            i.state.replace("_", " "),
            local(i.aware_unix, zone),
            local(i.aware_unix + ASSESSMENT_DAYS * DAY_S, zone, "%d %b %Y"),
        )
        for i in briefs
    ]
    verification = []
    sizes = src.console.latest_checkpoint_sizes()
    for agent in src.store.list_agents(client):
        findings = [f for f in src.store.integrity_events(agent.agent_id) if lo <= f.at_unix < hi]
        verified = sizes.get(agent.agent_id, 0)
        if findings:
            result = f"{len(findings)} integrity finding(s): " + "; ".join(
                f.kind for f in findings[:5]
            )
        elif verified >= agent.next_seq:
            result = "every stored event verified (signature and hash chain)"
        else:
            result = f"events {verified}\u2013{agent.next_seq - 1} await the next signed checkpoint"
        verification.append(
            VerificationRow(
                agent.agent_id, agent.hostname, agent.next_seq, verified, len(findings), result
            )
        )
    agreement = src.agreement(client)
    name = agreement.client.name if agreement is not None else client
    return Statement(
        client,
        name,
        month,
        start.strftime("%B %Y"),
        str(zone),
        local(now, zone),
        accesses,
        technicians,
        days,
        dict(heat),
        grants,
        denials,
        denials_total,
        incidents,
        verification,
        uncounted,
        incidents_total,
        grants_total,
    )
