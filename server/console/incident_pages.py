"""The console's incident pages: the paged list, one incident and its assessment steps, and
the breach register streamed as CSV. Assessment steps call server/incidents/assessment.py and
`IncidentStore.save_step`, as `custodes incidents` does."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from protos.errors import CustodesError
from server.access import Person
from server.console import charts, rights, views
from server.incidents import assessment
from server.incidents import register as book_register
from server.incidents import statement as ndb_statement
from server.incidents.errors import IncidentNotFoundError
from server.incidents.model import FACTORS, UNDECIDED, AuditEntry, Incident, State
from server.store.base import StoreError
from server.store.console import QueueCursor

if TYPE_CHECKING:
    pass

from server.console import handling as h

log = structlog.get_logger("custodes.server.console")
REGISTER_CHUNK = 500  # incidents read per turn of the database thread for the register
EVIDENCE_SHOWN = 300  # evidence events an incident's page lists (and marks on its timeline)
MAX_REGISTER_CHUNKS = 20_000  # 10M incidents: a bound on the loop, never reached in practice


# -- incidents -----------------------------------------------------------------------------


def _incidents(src: views.Sources, viewer: Person, q: Any) -> dict[str, Any]:
    page = views.incident_page(
        src,
        viewer,
        time.time(),
        client=q.get("client") or None,
        state=q.get("state") or "",
        after=QueueCursor.parse(q.get("after")),
    )
    return {"page": page, "clients": rights.clients_in_scope(viewer, views.known_clients(src))}


async def incidents_page(request: web.Request) -> web.StreamResponse:
    """The queue, a page at a time: undecided by due date, then decided newest first."""
    viewer = h.viewer(request)
    if not rights.may_read_incidents(viewer):
        return h.forbidden(request, "Incidents are shown to approvers, auditors and admins.")
    src = h.sources(request)
    try:
        data = await h.db(request, _incidents, src, viewer, request.query)
    except rights.ConsoleForbiddenError as exc:
        return h.forbidden(request, str(exc))
    q = {k: v for k, v in request.query.items() if k in ("client", "state") and v}
    return h.render(
        request,
        "incidents.html",
        title="Incidents",
        q=q,
        states=list(views.QUEUE_STATES),
        first_page=QueueCursor.parse(request.query.get("after")) is None,
        **data,
    )


def _incident(src: views.Sources, viewer: Person, incident_id: int) -> dict[str, Any] | None:
    try:
        inc = src.incidents.get(incident_id)
    except IncidentNotFoundError:
        return None
    if not rights.may_read_incidents(viewer) or not viewer.serves(inc.client):
        return None
    zone = src.zone(inc.client)
    now = time.time()
    rows = src.incidents.evidence_records(inc.id, limit=EVIDENCE_SHOWN)
    lines = views.event_lines(src, viewer, rows)
    marks = [
        charts.Mark(
            r.unix_nanos / views.NANOS,
            r.verdict or r.kind,
            f"{line.when} {line.who} {line.action} {line.path}",
        )
        for r, line in zip(rows, lines, strict=True)
    ]
    marks += [
        charts.Mark(e.at_unix, "step", f"{views.local(e.at_unix, zone)} {e.actor}: {e.action}")
        for e in inc.audit
    ]
    times = [m.at_unix for m in marks] or [inc.aware_unix]
    start, end = min(times), max(times)
    if end - start < 60:
        start, end = start - 30, end + 30
    ticks = [
        (
            start + (end - start) * i / 4,
            views.local(start + (end - start) * i / 4, zone, "%d %b %H:%M"),
        )
        for i in range(5)
    ]
    chart = charts.timeline(marks, start, end, ticks, f"Timeline of {inc.label}")
    return {
        "inc": inc,
        "line": views.incident_line(inc, zone, now),
        "evidence": lines,
        "chart": charts.safe(chart),
        "audit": [(views.local(e.at_unix, zone), e.actor, e.action, e.detail) for e in inc.audit],
        "factors": FACTORS,
        "recorded": {f.key: f for f in inc.factors},
        "containment": [(views.local(c.at_unix, zone), c.step, c.by) for c in inc.containment],
        "draft": ndb_statement.draft(inc),
        "may_assess": rights.may_assess(viewer, inc.client),
        "undecided": inc.state in UNDECIDED,
        "outcomes": sorted(s.value for s in assessment.OUTCOMES),
        "register": book_register.row(inc, now),
    }


def _incident_id(request: web.Request) -> int:
    text = request.match_info["id"].upper().removeprefix("INC-")
    if not text.isdigit() or len(text) > 12:
        raise web.HTTPNotFound(text="no such incident")
    return int(text)


async def incident_page(request: web.Request) -> web.StreamResponse:
    """One incident: timeline, evidence, s 26WG form, containment, decision, draft statement."""
    src = h.sources(request)
    data = await h.db(request, _incident, src, h.viewer(request), _incident_id(request))
    if data is None:
        return h.forbidden(request, "There is no such incident among the clients you can see.")
    return h.render(request, "incident.html", title=data["inc"].label, **data)


Step = Callable[[Incident, float], tuple[Incident, AuditEntry]]


def _apply_step(src: views.Sources, viewer: Person, incident_id: int, step: Step) -> Incident:
    before = src.incidents.get(incident_id)
    if not rights.may_assess(viewer, before.client):
        raise rights.ConsoleForbiddenError(
            f"{viewer.name} may not record the assessment of {before.label}"
        )
    after, entry = step(before, time.time())
    return src.incidents.save_step(before, after, entry)


async def incident_step(request: web.Request) -> web.StreamResponse:
    """Record factors/containment, a decision, or a prepared statement (the CLI's steps)."""
    viewer = h.viewer(request)
    incident_id = _incident_id(request)
    form = await request.post()
    action = request.match_info["step"]
    to = f"/incidents/{incident_id}"
    who = viewer.name
    step: Step
    if action == "assess":
        factors = {k: str(form.get(f"factor_{k}", "")) for k in FACTORS}
        factors = {k: v for k, v in factors.items() if v.strip()}
        containment = str(form.get("containment", "")).strip()
        mhr_text = str(form.get("my_health_records", ""))
        mhr = None if mhr_text not in ("yes", "no") else mhr_text == "yes"

        def step(inc: Incident, now: float) -> tuple[Incident, AuditEntry]:
            return assessment.assess(
                inc,
                who,
                now,
                factors=factors,
                containment=[(containment, now)] if containment else [],
                my_health_records=mhr,
            )
    elif action == "decide":
        try:
            outcome = State(str(form.get("outcome", "")))
        except ValueError:
            raise h.back(request, "error", "Choose a decision.", to) from None
        reason = str(form.get("reason", ""))

        def step(inc: Incident, now: float) -> tuple[Incident, AuditEntry]:
            return assessment.decide(inc, who, now, outcome, [reason] if reason.strip() else [])
    elif action == "statement":

        def step(inc: Incident, now: float) -> tuple[Incident, AuditEntry]:
            return assessment.prepare_statement(inc, who, now)
    else:
        raise web.HTTPNotFound(text="no such step")
    src = h.sources(request)
    try:
        after = await h.db(request, _apply_step, src, viewer, incident_id, step)
    except rights.ConsoleForbiddenError as exc:
        return h.forbidden(request, str(exc))
    except IncidentNotFoundError:
        return h.forbidden(request, "There is no such incident among the clients you can see.")
    except (CustodesError, StoreError) as exc:
        raise h.back(request, "error", str(exc), to) from exc
    log.info("console_incident_" + action, incident=after.label, by=who, state=after.state.value)
    raise h.back(request, "ok", f"{after.label} is now {after.state.value.replace('_', ' ')}.", to)


async def register_csv(request: web.Request) -> web.StreamResponse:
    """The breach register of the viewer's clients as CSV: every incident, streamed."""
    viewer = h.viewer(request)
    if not rights.may_read_incidents(viewer):
        return h.forbidden(
            request, "The breach register is shown to approvers, auditors and admins."
        )
    src = h.sources(request)

    async def read(after: int, limit: int) -> list[Incident]:
        return await h.db(request, _register_chunk, src, viewer.client, after, limit)

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="breach-register.csv"',
        }
    )
    await response.prepare(request)
    async for text in register_text(read, viewer, time.time()):
        await response.write(text.encode())
    await response.write_eof()
    return response


def _register_chunk(
    src: views.Sources, client: str | None, after: int, limit: int
) -> list[Incident]:
    return src.incidents.incidents(client=client, after_id=after, limit=limit)


async def register_text(
    read: Callable[[int, int], Awaitable[list[Incident]]],
    viewer: Person,
    now: float,
    chunk: int = REGISTER_CHUNK,
) -> AsyncIterator[str]:
    """The register's CSV (header first), `chunk` incidents read at a time by id with
    `read(after_id, limit)`: one database turn each, never every incident in memory."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=book_register.COLUMNS, lineterminator="\n")
    writer.writeheader()
    after = 0
    for _ in range(MAX_REGISTER_CHUNKS):
        found = await read(after, chunk)
        for inc in found:
            if viewer.serves(inc.client):
                writer.writerow(book_register.row(inc, now))
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if len(found) < chunk:
            return
        after = found[-1].id
    log.warning("console_register_cut", person=viewer.name, incidents_after=after)
