"""The console's pages and actions: thin handlers over views.py and the workflows, and the
routes of every page (the incident pages are in incident_pages.py).

Approve, deny and revoke call the same `AccessCore` the Access gRPC servicer calls and push
the signed grant or revocation the same way.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import time
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from protos.errors import CustodesError
from protos.wire import pb
from server.access import AccessError, Person, Role
from server.console import auth, charts, rights, statement, views
from server.console import handling as h
from server.console.incident_pages import incident_page, incident_step, incidents_page, register_csv
from server.console.pdf import render as render_pdf
from server.store.base import StoreConflictError

if TYPE_CHECKING:
    pass

log = structlog.get_logger("custodes.server.console")
_STATEMENT_READERS = "Access statements are shown to approvers, auditors and admins."
MAX_CSV_ROWS = 100_000
OVERVIEW_INCIDENTS = 20  # open incidents the overview lists (first due); Incidents has all


# -- sign-in -------------------------------------------------------------------------------


async def signin_form(request: web.Request) -> web.StreamResponse:
    """The sign-in page; sets the pre-session cookie its CSRF token is bound to."""
    console = h.console(request)
    pre = request.cookies.get(console.pre_cookie) or ""
    fresh = len(pre) < 32 or len(pre) > 64
    if fresh:
        pre = auth.new_secret()
    response = h.render(
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
    console = h.console(request)
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
    console = h.console(request)
    pre = request.cookies.get(console.pre_cookie, "")
    return h.render(
        request,
        "signin.html",
        status=status,
        token=auth.signin_token(console.key, pre),
        error=error,
        name=name,
    )


async def signout(request: web.Request) -> web.StreamResponse:
    """End the session everywhere it is stored."""
    console = h.console(request)
    await console.rt.db(console.store.end_session, h.session(request).id_hash)
    console.flashes.pop(h.session(request).id_hash, None)
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
        "requests": views.live_requests(src, viewer, now),
    }


async def overview(request: web.Request) -> web.StreamResponse:
    """Agents per client with health, open incidents, pending requests."""
    src = h.sources(request)
    data = await h.db(request, _overview, src, h.viewer(request), int(time.time()))
    return h.render(request, "overview.html", title="Overview", **data)


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
    src = h.sources(request)
    data = await h.db(
        request, _agent, src, h.viewer(request), request.match_info["agent"], int(time.time())
    )
    if data is None:
        return h.forbidden(request, "There is no such agent among the clients you can see.")
    return h.render(request, "agent.html", title=f"Agent {data['agent'].agent_id}", **data)


# -- access requests -----------------------------------------------------------------------


def _requests(src: views.Sources, viewer: Person, q: Any) -> dict[str, Any]:
    page = views.requests_page(
        src,
        viewer,
        int(time.time()),
        client=q.get("client") or None,
        after=views.RequestCursor.parse(q.get("after")),
    )
    return {"page": page, "clients": rights.clients_in_scope(viewer, views.known_clients(src))}


async def requests_page(request: web.Request) -> web.StreamResponse:
    """Pending requests and active grants, then the ended ones a page at a time."""
    viewer = h.viewer(request)
    src = h.sources(request)
    try:
        data = await h.db(request, _requests, src, viewer, request.query)
    except rights.ConsoleForbiddenError as exc:
        return h.forbidden(request, str(exc))
    q = {k: v for k, v in request.query.items() if k == "client" and v}
    return h.render(
        request,
        "requests.html",
        title="Access requests",
        q=q,
        first_page=views.RequestCursor.parse(request.query.get("after")) is None,
        **data,
    )


async def decide_request(request: web.Request) -> web.StreamResponse:
    """Approve, deny or revoke through the access workflow, then push to the agents."""
    console = h.console(request)
    viewer = h.viewer(request)
    request_id = request.match_info["id"][:64]
    step = request.match_info["step"]
    form = await request.post()
    why = str(form.get("why", ""))[:500]
    jit = console.jit
    if jit is None:
        raise h.back(
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
        raise h.back(request, "ok", text, "/requests")
    except (AccessError, StoreConflictError) as exc:
        raise h.back(request, "error", str(exc), "/requests") from exc
    except LookupError as exc:
        raise h.back(
            request, "error", f"Request {request_id} does not exist.", "/requests"
        ) from exc


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
    src = h.sources(request)
    try:
        data = await h.db(request, _events, src, h.viewer(request), request.query)
    except rights.ConsoleForbiddenError as exc:
        return h.forbidden(request, str(exc))
    q = {k: v for k, v in request.query.items() if k != "after" and v}
    return h.render(request, "events.html", title="Events", query=q, **data)


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
    src = h.sources(request)
    viewer = h.viewer(request)
    try:
        f = await h.db(request, _event_filter, src, viewer, request.query)
        f = views.scoped_filter(viewer, f)
    except rights.ConsoleForbiddenError as exc:
        return h.forbidden(request, str(exc))
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
        rows = await h.db(request, views.find_events, src, viewer, page_filter, 5000)
        lines = await h.db(request, views.event_lines, src, viewer, rows)
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


# -- client access statement ---------------------------------------------------------------


def _statement_args(src: views.Sources, viewer: Person, q: Any) -> tuple[str, str]:
    clients = rights.clients_in_scope(viewer, views.known_clients(src))
    client = q.get("client") or viewer.client or (clients[0] if clients else "")
    zone = src.zone(client)
    month = q.get("month") or dt.datetime.now(zone).strftime("%Y-%m")
    return client, month


async def statement_page(request: web.Request) -> web.StreamResponse:
    """The printable statement for a client and a month."""
    viewer = h.viewer(request)
    src = h.sources(request)
    if not rights.may_read_incidents(viewer):
        return h.forbidden(
            request, "Access statements are shown to approvers, auditors and admins."
        )
    client, month = await h.db(request, _statement_args, src, viewer, request.query)
    clients = await h.db(request, lambda: rights.clients_in_scope(viewer, views.known_clients(src)))
    if not client:
        return h.render(
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
        s = await h.db(request, statement.build, src, viewer, client, month, int(time.time()))
    except rights.ConsoleForbiddenError as exc:
        return h.forbidden(request, str(exc))
    except CustodesError as exc:
        return h.render(
            request, "error.html", status=400, title="Cannot build the statement", message=str(exc)
        )
    chart = charts.heat_map(
        s.heat_technicians, s.heat_days, s.heat, f"Accesses per technician per day, {s.month_label}"
    )
    return h.render(
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
    viewer = h.viewer(request)
    src = h.sources(request)
    if not rights.may_read_incidents(viewer):
        return h.forbidden(
            request, "Access statements are shown to approvers, auditors and admins."
        )
    client, month = await h.db(request, _statement_args, src, viewer, request.query)
    try:
        s = await h.db(request, statement.build, src, viewer, client, month, int(time.time()))
    except rights.ConsoleForbiddenError as exc:
        return h.forbidden(request, str(exc))
    except CustodesError as exc:
        return h.render(
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
