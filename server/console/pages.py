"""The console's pages and actions: thin handlers over views.py and the workflows.

Approve, deny and revoke call the same `AccessCore` the Access gRPC servicer calls and push
the signed grant or revocation the same way; assessment steps call
server/incidents/assessment.py and `IncidentStore.save_step`, as `custodes incidents` does.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import web

from protos.errors import CustodesError
from protos.wire import pb
from server.access import AccessError, Person, Role
from server.console import auth, charts, rights, statement, views
from server.console.pdf import render as render_pdf
from server.incidents import assessment
from server.incidents import register as book_register
from server.incidents import statement as ndb_statement
from server.incidents.errors import IncidentNotFoundError
from server.incidents.model import FACTORS, UNDECIDED, AuditEntry, Incident, State
from server.store.base import StoreConflictError, StoreError
from server.store.console import QueueCursor, SessionRow

if TYPE_CHECKING:
    from server.console.app import Console

log = structlog.get_logger("custodes.server.console")
T = TypeVar("T")
MAX_CSV_ROWS = 100_000
REGISTER_CHUNK = 500  # incidents read per turn of the database thread for the register
MAX_REGISTER_CHUNKS = 20_000  # 10M incidents: a bound on the loop, never reached in practice
OVERVIEW_INCIDENTS = 20  # open incidents the overview lists (first due); Incidents has all


def _console(request: web.Request) -> Console:
    from server.console.app import CONSOLE  # noqa: PLC0415 - app imports this module

    return request.app[CONSOLE]


def _sources(request: web.Request) -> views.Sources:
    """The stores for one request (each client's agreement looked up once)."""
    return _console(request).sources.for_page()


def _viewer(request: web.Request) -> Person:
    person: Person = request["viewer"]
    return person


def _session(request: web.Request) -> SessionRow:
    row: SessionRow = request["session"]
    return row


async def _db(request: web.Request, fn: Callable[..., T], *args: object) -> T:
    return await _console(request).rt.db(fn, *args)


def _render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    console = _console(request)
    session: SessionRow | None = request.get("session")
    viewer: Person | None = request.get("viewer")
    context.setdefault("title", "Custodes")
    page = console.templates.get_template(template).render(
        viewer=viewer,
        csrf=session.csrf if session else "",
        flashes=console.take_flashes(session) if session else [],
        path=request.path,
        **context,
    )
    return web.Response(text=page, content_type="text/html", charset="utf-8", status=status)


def _back(request: web.Request, kind: str, text: str, to: str) -> web.HTTPSeeOther:
    _console(request).flash(_session(request), kind, text)
    return web.HTTPSeeOther(to)


def _forbidden(request: web.Request, message: str) -> web.Response:
    return _render(request, "error.html", status=403, title="Not available to you", message=message)


# -- sign-in -------------------------------------------------------------------------------


async def signin_form(request: web.Request) -> web.StreamResponse:
    """The sign-in page; sets the pre-session cookie its CSRF token is bound to."""
    console = _console(request)
    pre = request.cookies.get(console.pre_cookie) or ""
    fresh = len(pre) < 32 or len(pre) > 64
    if fresh:
        pre = auth.new_secret()
    response = _render(
        request,
        "signin.html",
        token=auth.signin_token(console.key, pre),
        error=request.get("signin_error", ""),
        name=request.get("signin_name", ""),
    )
    if fresh:
        console.set_cookie(response, console.pre_cookie, pre)
    return response


async def signin(request: web.Request) -> web.StreamResponse:
    """Check the token, the throttle and the password; rotate the session."""
    console = _console(request)
    form = await request.post()
    pre = request.cookies.get(console.pre_cookie, "")
    token = form.get("csrf")
    if (
        not pre
        or not isinstance(token, str)
        or not auth.same_token(auth.signin_token(console.key, pre), token)
    ):
        raise web.HTTPForbidden(text="the sign-in form is out of date; reload it and try again")
    name = str(form.get("name", "")).strip()[:200]
    password = str(form.get("password", ""))
    address = request.remote or "unknown"
    now = int(time.time())
    keys = auth.throttle_keys(name, address)
    rows = await console.rt.db(console.store.throttle, keys)
    until = auth.locked_until(rows, now)
    if until:
        log.warning("console_signin_locked", person=name, address=address)
        return _signin_again(request, name, _locked_text(until, now), 429)
    stored = await console.rt.db(console.store.password, name)
    ok = await asyncio.to_thread(auth.verify_password, stored, password)
    person = await console.rt.db(console.access.get_person, name) if ok else None
    if person is None:
        after = auth.after_failure(rows, keys, now, console.policy)
        await console.rt.db(console.store.save_throttle, after)
        log.warning("console_signin_failed", person=name, address=address)
        until = auth.locked_until(after, now)
        if until:
            return _signin_again(request, name, _locked_text(until, now), 429)
        return _signin_again(request, name, "That name and password do not match.", 401)
    await console.rt.db(console.store.clear_throttle, keys[0])
    old = request.cookies.get(console.session_cookie)
    sid, row = auth.new_session(person.name, address, now)
    await console.rt.db(console.store.add_session, row, auth.id_hash(old) if old else None)
    log.info("console_signed_in", person=person.name, role=person.role.value)
    response = web.HTTPSeeOther("/")
    console.set_cookie(response, console.session_cookie, sid)
    response.del_cookie(console.pre_cookie, path="/")
    return response


def _locked_text(until: int, now: int) -> str:
    minutes = max(1, (until - now + 59) // 60)
    return (
        f"Too many failed sign-ins. Signing in is locked for {minutes} more minute(s); "
        "ask your administrator if you have forgotten your password."
    )


def _signin_again(request: web.Request, name: str, error: str, status: int) -> web.Response:
    console = _console(request)
    pre = request.cookies.get(console.pre_cookie, "")
    return _render(
        request,
        "signin.html",
        status=status,
        token=auth.signin_token(console.key, pre),
        error=error,
        name=name,
    )


async def signout(request: web.Request) -> web.StreamResponse:
    """End the session everywhere it is stored."""
    console = _console(request)
    await console.rt.db(console.store.end_session, _session(request).id_hash)
    console.flashes.pop(_session(request).id_hash, None)
    response = web.HTTPSeeOther("/signin")
    response.del_cookie(console.session_cookie, path="/")
    return response


# -- overview ------------------------------------------------------------------------------


def _overview(src: views.Sources, viewer: Person, now: int) -> dict[str, Any]:
    clients = rights.clients_in_scope(viewer, views.known_clients(src))
    if viewer.role is Role.TECHNICIAN:
        clients = []
    agents = {c: views.agent_health(src, c, now) for c in clients}
    open_total, first_open = views.first_open_incidents(src, viewer, now, OVERVIEW_INCIDENTS)
    return {
        "clients": clients,
        "agents": agents,
        "incidents": first_open,
        "incidents_total": open_total,
        "requests": views.requests_page(src, viewer, now),
    }


async def overview(request: web.Request) -> web.StreamResponse:
    """Agents per client with health, open incidents, pending requests."""
    src = _sources(request)
    data = await _db(request, _overview, src, _viewer(request), int(time.time()))
    return _render(request, "overview.html", title="Overview", **data)


def _agent(src: views.Sources, viewer: Person, agent_id: str, now: int) -> dict[str, Any] | None:
    agent = src.store.get_agent(agent_id)
    if agent is None or viewer.role is Role.TECHNICIAN or not viewer.serves(agent.client):
        return None
    zone = src.zone(agent.client)
    today = dt.datetime.fromtimestamp(now, zone).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [today - dt.timedelta(days=13 - i) for i in range(14)]
    bounds = [int(s.timestamp()) for s in starts] + [now + 1]
    seqs = src.console.first_seqs_at(agent_id, [b * views.NANOS for b in bounds], agent.next_seq)
    life = src.console.lifecycle(agent_id, bounds[0] * views.NANOS)
    findings = [f for f in src.store.integrity_events(agent_id) if f.at_unix >= bounds[0]]
    days = []
    for i, s in enumerate(starts):
        lo, hi = bounds[i] * views.NANOS, bounds[i + 1] * views.NANOS
        kinds = [k for t, k in life if lo <= t < hi]
        problems = sum(1 for k in kinds if k in ("stopped", "loss", "gate"))
        problems += sum(1 for f in findings if bounds[i] <= f.at_unix < bounds[i + 1])
        days.append(
            charts.HealthDay(
                s.strftime("%d %b"), seqs[i + 1] - seqs[i], problems, kinds.count("started")
            )
        )
    chart = charts.health_bars(days, f"Agent {agent_id}: events per day over 14 days")
    health = [h for h in views.agent_health(src, agent.client, now) if h.agent_id == agent_id]
    return {
        "agent": health[0],
        "client": agent.client,
        "days": days,
        "chart": charts.safe(chart),
        "findings": [(views.local(f.at_unix, zone), f.kind, f.detail) for f in findings],
    }


async def agent_page(request: web.Request) -> web.StreamResponse:
    """One agent's health over the last two weeks."""
    src = _sources(request)
    data = await _db(
        request, _agent, src, _viewer(request), request.match_info["agent"], int(time.time())
    )
    if data is None:
        return _forbidden(request, "There is no such agent among the clients you can see.")
    return _render(request, "agent.html", title=f"Agent {data['agent'].agent_id}", **data)


# -- access requests -----------------------------------------------------------------------


async def requests_page(request: web.Request) -> web.StreamResponse:
    """Pending requests, active grants, history."""
    src = _sources(request)
    page = await _db(request, views.requests_page, src, _viewer(request), int(time.time()))
    return _render(request, "requests.html", title="Access requests", page=page)


async def decide_request(request: web.Request) -> web.StreamResponse:
    """Approve, deny or revoke through the access workflow, then push to the agents."""
    console = _console(request)
    viewer = _viewer(request)
    request_id = request.match_info["id"][:64]
    step = request.match_info["step"]
    form = await request.post()
    why = str(form.get("why", ""))[:500]
    jit = console.jit
    if jit is None:
        raise _back(
            request, "error", "Just-in-time access is not running on this server.", "/requests"
        )
    now = int(time.time())
    try:
        if step == "approve":
            req, signed = await console.rt.db(jit.core.approve, viewer, request_id, now)
            if signed is not None:
                sent = jit.pusher.publish(req.client, pb.ServerMessage(grant=signed))
                log.info("grant_pushed", id=req.id, client=req.client, agents=sent)
            text = (
                f"Approved {req.id}: {req.technician} may use {req.area} until "
                f"{views.local(req.end_unix, console.sources.zone(req.client))}."
                if req.state.value == "approved"
                else f"Your approval of {req.id} is recorded; it needs more approvals."
            )
        else:
            req, revocation = await console.rt.db(jit.core.end, viewer, request_id, why, step, now)
            if revocation is not None:
                sent = jit.pusher.publish(req.client, pb.ServerMessage(revocation=revocation))
                log.info("revocation_pushed", id=req.id, client=req.client, agents=sent)
            text = f"{req.id} is {req.state.value}."
        log.info("console_access_" + step, id=request_id, by=viewer.name)
        raise _back(request, "ok", text, "/requests")
    except (AccessError, StoreConflictError) as exc:
        raise _back(request, "error", str(exc), "/requests") from exc
    except LookupError as exc:
        raise _back(request, "error", f"Request {request_id} does not exist.", "/requests") from exc


# -- events --------------------------------------------------------------------------------


def _int_time(text: str | None, zone: Any) -> int | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    return int(when.timestamp())


def _event_filter(src: views.Sources, viewer: Person, q: Any) -> views.EventFilter:
    client = q.get("client") or None
    zone = src.zone(client or viewer.client or "")
    return views.EventFilter(
        client=client,
        technician=q.get("technician") or None,
        area=q.get("area") or None,
        decision=q.get("decision") if q.get("decision") in ("allow", "deny", "observed") else None,
        since_unix=_int_time(q.get("from"), zone),
        until_unix=_int_time(q.get("to"), zone),
        after=views.parse_cursor(q.get("after")),
    )


def _events(src: views.Sources, viewer: Person, q: Any) -> dict[str, Any]:
    f = _event_filter(src, viewer, q)
    rows = views.find_events(src, viewer, f, views.PAGE + 1)
    more = len(rows) > views.PAGE
    lines = views.event_lines(src, viewer, rows[: views.PAGE])
    clients = rights.clients_in_scope(viewer, views.known_clients(src))
    return {
        "lines": lines,
        "more": more,
        "clients": clients,
        "q": dict(q),
        "sees_all": rights.sees_all_events(viewer),
    }


async def events_page(request: web.Request) -> web.StreamResponse:
    """Search and filter events; keyset pagination."""
    src = _sources(request)
    try:
        data = await _db(request, _events, src, _viewer(request), request.query)
    except rights.ConsoleForbiddenError as exc:
        return _forbidden(request, str(exc))
    q = {k: v for k, v in request.query.items() if k != "after" and v}
    return _render(request, "events.html", title="Events", query=q, **data)


_CSV_COLUMNS = (
    "time",
    "client",
    "agent",
    "seq",
    "who",
    "action",
    "decision",
    "area",
    "path",
    "rule",
    "evidence",
)


async def events_csv(request: web.Request) -> web.StreamResponse:
    """The filtered events as CSV (at most MAX_CSV_ROWS), paths masked as on the page."""
    src = _sources(request)
    viewer = _viewer(request)
    try:
        f = await _db(request, _event_filter, src, viewer, request.query)
        f = views.scoped_filter(viewer, f)
    except rights.ConsoleForbiddenError as exc:
        return _forbidden(request, str(exc))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="custodes-events.csv"',
        }
    )
    await response.prepare(request)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    sent = 0
    after = f.after
    while sent < MAX_CSV_ROWS:
        page_filter = views.EventFilter(
            f.client, f.technician, f.area, f.decision, f.since_unix, f.until_unix, after
        )
        rows = await _db(request, views.find_events, src, viewer, page_filter, 5000)
        lines = await _db(request, views.event_lines, src, viewer, rows)
        for line in lines:
            writer.writerow(
                (
                    line.iso,
                    line.client,
                    line.agent_id,
                    line.seq,
                    line.who,
                    line.action,
                    line.decision,
                    line.area,
                    line.path,
                    line.rule,
                    line.evidence,
                )
            )
        await response.write(out.getvalue().encode())
        out.seek(0)
        out.truncate()
        sent += len(rows)
        if len(rows) < 5000:
            break
        after = rows[-1].cursor
    await response.write_eof()
    return response


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
    viewer = _viewer(request)
    if not rights.may_read_incidents(viewer):
        return _forbidden(request, "Incidents are shown to approvers, auditors and admins.")
    src = _sources(request)
    try:
        data = await _db(request, _incidents, src, viewer, request.query)
    except rights.ConsoleForbiddenError as exc:
        return _forbidden(request, str(exc))
    q = {k: v for k, v in request.query.items() if k in ("client", "state") and v}
    return _render(
        request,
        "incidents.html",
        title="Incidents",
        q=q,
        states=list(views.QUEUE_STATES),
        first_page=not request.query.get("after"),
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
    refs = src.incidents.evidence(inc.id, limit=300)
    rows = []
    for agent_id, seq in refs:
        rows += src.store.records(agent_id, seq, seq + 1)
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
    src = _sources(request)
    data = await _db(request, _incident, src, _viewer(request), _incident_id(request))
    if data is None:
        return _forbidden(request, "There is no such incident among the clients you can see.")
    return _render(request, "incident.html", title=data["inc"].label, **data)


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
    viewer = _viewer(request)
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
            raise _back(request, "error", "Choose a decision.", to) from None
        reason = str(form.get("reason", ""))

        def step(inc: Incident, now: float) -> tuple[Incident, AuditEntry]:
            return assessment.decide(inc, who, now, outcome, [reason] if reason.strip() else [])
    elif action == "statement":

        def step(inc: Incident, now: float) -> tuple[Incident, AuditEntry]:
            return assessment.prepare_statement(inc, who, now)
    else:
        raise web.HTTPNotFound(text="no such step")
    src = _sources(request)
    try:
        after = await _db(request, _apply_step, src, viewer, incident_id, step)
    except rights.ConsoleForbiddenError as exc:
        return _forbidden(request, str(exc))
    except IncidentNotFoundError:
        return _forbidden(request, "There is no such incident among the clients you can see.")
    except (CustodesError, StoreError) as exc:
        raise _back(request, "error", str(exc), to) from exc
    log.info("console_incident_" + action, incident=after.label, by=who, state=after.state.value)
    raise _back(request, "ok", f"{after.label} is now {after.state.value.replace('_', ' ')}.", to)


async def register_csv(request: web.Request) -> web.StreamResponse:
    """The breach register of the viewer's clients as CSV: every incident, streamed."""
    viewer = _viewer(request)
    if not rights.may_read_incidents(viewer):
        return _forbidden(
            request, "The breach register is shown to approvers, auditors and admins."
        )
    src = _sources(request)

    async def read(after: int, limit: int) -> list[Incident]:
        return await _db(request, _register_chunk, src, viewer.client, after, limit)

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


# -- client access statement ---------------------------------------------------------------


def _statement_args(src: views.Sources, viewer: Person, q: Any) -> tuple[str, str]:
    clients = rights.clients_in_scope(viewer, views.known_clients(src))
    client = q.get("client") or viewer.client or (clients[0] if clients else "")
    zone = src.zone(client)
    month = q.get("month") or dt.datetime.now(zone).strftime("%Y-%m")
    return client, month


async def statement_page(request: web.Request) -> web.StreamResponse:
    """The printable statement for a client and a month."""
    viewer = _viewer(request)
    src = _sources(request)
    if not rights.may_read_incidents(viewer):
        return _forbidden(request, "Access statements are shown to approvers, auditors and admins.")
    client, month = await _db(request, _statement_args, src, viewer, request.query)
    clients = await _db(request, lambda: rights.clients_in_scope(viewer, views.known_clients(src)))
    if not client:
        return _render(
            request,
            "statement.html",
            title="Client access statement",
            s=None,
            clients=clients,
            client="",
            month=month,
            chart="",
        )
    try:
        s = await _db(request, statement.build, src, viewer, client, month, int(time.time()))
    except rights.ConsoleForbiddenError as exc:
        return _forbidden(request, str(exc))
    except CustodesError as exc:
        return _render(
            request, "error.html", status=400, title="Cannot build the statement", message=str(exc)
        )
    chart = charts.heat_map(
        s.heat_technicians, s.heat_days, s.heat, f"Accesses per technician per day, {s.month_label}"
    )
    return _render(
        request,
        "statement.html",
        title=f"Access statement {s.client_name}",
        s=s,
        clients=clients,
        client=client,
        month=month,
        chart=charts.safe(chart),
    )


async def statement_pdf(request: web.Request) -> web.StreamResponse:
    """The statement as a PDF download."""
    viewer = _viewer(request)
    src = _sources(request)
    if not rights.may_read_incidents(viewer):
        return _forbidden(request, "Access statements are shown to approvers, auditors and admins.")
    client, month = await _db(request, _statement_args, src, viewer, request.query)
    try:
        s = await _db(request, statement.build, src, viewer, client, month, int(time.time()))
    except rights.ConsoleForbiddenError as exc:
        return _forbidden(request, str(exc))
    except CustodesError as exc:
        return _render(
            request, "error.html", status=400, title="Cannot build the statement", message=str(exc)
        )
    body = await asyncio.to_thread(render_pdf, s)
    return web.Response(
        body=body,
        content_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="access-statement-{client}-{month}.pdf"'
        },
    )


def add_routes(app: web.Application) -> None:
    """Every page and action."""
    r = app.router
    r.add_get("/signin", signin_form)
    r.add_post("/signin", signin)
    r.add_post("/signout", signout)
    r.add_get("/", overview)
    r.add_get("/agents/{agent}", agent_page)
    r.add_get("/requests", requests_page)
    r.add_post(r"/requests/{id}/{step:approve|deny|revoke}", decide_request)
    r.add_get("/events", events_page)
    r.add_get("/events.csv", events_csv)
    r.add_get("/incidents", incidents_page)
    r.add_get("/incidents/register.csv", register_csv)
    r.add_get("/incidents/{id}", incident_page)
    r.add_post(r"/incidents/{id}/{step:assess|decide|statement}", incident_step)
    r.add_get("/statement", statement_page)
    r.add_get("/statement.pdf", statement_pdf)
