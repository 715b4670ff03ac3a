"""What every console handler needs from its request: the console, the viewer and session,
the database thread, and rendering (pages.py and incident_pages.py share these)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from server.access import Person
from server.console import views
from server.store.console import SessionRow

if TYPE_CHECKING:
    from server.console.app import Console


T = TypeVar("T")


def console(request: web.Request) -> Console:
    from server.console.app import CONSOLE  # noqa: PLC0415 - app imports the page modules

    return request.app[CONSOLE]


def sources(request: web.Request) -> views.Sources:
    """The stores for one request (each client's agreement looked up once)."""
    return console(request).sources.for_page()


def viewer(request: web.Request) -> Person:
    person: Person = request["viewer"]
    return person


def session(request: web.Request) -> SessionRow:
    row: SessionRow = request["session"]
    return row


async def db(request: web.Request, fn: Callable[..., T], *args: object) -> T:
    return await console(request).rt.db(fn, *args)


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    app_console = console(request)
    session: SessionRow | None = request.get("session")
    viewer: Person | None = request.get("viewer")
    context.setdefault("title", "Custodes")
    page = app_console.templates.get_template(template).render(
        viewer=viewer,
        csrf=session.csrf if session else "",
        flashes=app_console.take_flashes(session) if session else [],
        path=request.path,
        **context,
    )
    return web.Response(text=page, content_type="text/html", charset="utf-8", status=status)


def back(request: web.Request, kind: str, text: str, to: str) -> web.HTTPSeeOther:
    console(request).flash(session(request), kind, text)
    return web.HTTPSeeOther(to)


def forbidden(request: web.Request, message: str) -> web.Response:
    return render(request, "error.html", status=403, title="Not available to you", message=message)
