"""The console's aiohttp application: options, the guard middleware, start and stop.

It runs in the server's asyncio loop beside grpc.aio and reads and writes the same store
through `Runtime.db` (the one database thread). HTTPS with the server's certificate unless
`--console-cert/--console-key` name another; plain HTTP only on loopback and only when
asked for with `--console-insecure-http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import structlog
from aiohttp import web

from protos.errors import CustodesError, UsageError
from server.access import Person
from server.console import auth, pages
from server.console.views import Sources
from server.store.access import AccessStore
from server.store.console import ConsoleStore, SessionRow
from server.store.incidents import IncidentStore

if TYPE_CHECKING:
    from server.access_service import AccessRuntime
    from server.app import Runtime

log = structlog.get_logger("custodes.server.console")

MAX_BODY = 64 * 1024
TOUCH_SECONDS = 60  # a session's last-seen time is written at most this often
ROLL_UP_SECONDS = 10.0  # how often the hourly rollup catches up with the stored events
ROLL_UP_CHUNK = 10_000  # events per turn of the database thread (~30 ms)
ROLL_UP_TURNS = 2_000  # turns per round at most
_HERE = Path(__file__).parent
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConsoleError(CustodesError):
    """The console cannot start as configured."""


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    """Where and how the console listens."""

    listen: str
    cert: Path | None = None
    key: Path | None = None
    insecure_http: bool = False

    def host_port(self) -> tuple[str, int]:
        """The address split and checked; UsageError when it is not HOST:PORT."""
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise UsageError(
                f"--console {self.listen!r} is not HOST:PORT",
                hint="for example --console 127.0.0.1:8443",
            )
        return host.strip("[]"), int(port)

    def check(self) -> None:
        """Refuse plain HTTP anywhere but loopback, and a certificate without its key."""
        host, _ = self.host_port()
        if self.insecure_http and not _is_loopback(host):
            raise UsageError(
                f"--console-insecure-http serves plain HTTP on {host}; expected a loopback "
                "address (127.0.0.1 or ::1)",
                hint="drop --console-insecure-http to serve HTTPS",
            )
        if (self.cert is None) != (self.key is None):
            raise UsageError(
                "--console-cert and --console-key go together; expected both or neither"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Console:
    """What every handler shares (one per application)."""

    def __init__(self, rt: Runtime, jit: AccessRuntime | None, *, secure: bool) -> None:
        self.rt = rt
        self.jit = jit
        self.secure = secure
        self.key = secrets.token_bytes(32)  # sign-in CSRF and path tags; per process
        self.policy = auth.ThrottlePolicy()
        self.store = ConsoleStore(rt.store)
        self.access = AccessStore(rt.store)
        self.sources = Sources(rt.store, self.access, IncidentStore(rt.store), self.store, self.key)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.flashes: dict[bytes, list[tuple[str, str]]] = {}

    @property
    def session_cookie(self) -> str:
        """The session cookie's name (`__Host-` needs HTTPS)."""
        return auth.SESSION_COOKIE if self.secure else auth.INSECURE_SESSION_COOKIE

    @property
    def pre_cookie(self) -> str:
        """The pre-session cookie's name (binds the sign-in form's CSRF token)."""
        return auth.PRE_COOKIE if self.secure else auth.INSECURE_PRE_COOKIE

    def set_cookie(self, response: web.StreamResponse, name: str, value: str) -> None:
        """A session-scoped cookie: HttpOnly, SameSite=Strict, Path=/, Secure over HTTPS."""
        response.set_cookie(
            name, value, path="/", secure=self.secure, httponly=True, samesite="Strict"
        )

    def flash(self, session: SessionRow, kind: str, text: str) -> None:
        """A message shown once on the next page of this session."""
        queue = self.flashes.setdefault(session.id_hash, [])
        queue.append((kind, text[:600]))
        del queue[:-5]

    def take_flashes(self, session: SessionRow) -> list[tuple[str, str]]:
        """The session's pending messages (removed)."""
        return self.flashes.pop(session.id_hash, [])


CONSOLE = web.AppKey("console", Console)

_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PUBLIC = frozenset({"/signin", "/static/console.css", "/favicon.ico"})


def _headers(response: web.StreamResponse, secure: bool) -> None:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    # not "no-referrer": with it Chrome sends `Origin: null` on the console's own form posts
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    if secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"


async def _session(console: Console, request: web.Request) -> tuple[SessionRow, Person] | None:
    sid = request.cookies.get(console.session_cookie)
    if not sid or len(sid) > 128:
        return None
    h = auth.id_hash(sid)
    row = await console.rt.db(console.store.session, h)
    now = int(time.time())
    if row is None:
        return None
    if not auth.session_alive(row, now):
        await console.rt.db(console.store.end_session, h)
        return None
    person = await console.rt.db(console.access.get_person, row.name)
    if person is None:  # removed since signing in
        await console.rt.db(console.store.end_session, h)
        return None
    if now - row.seen_unix >= TOUCH_SECONDS:
        await console.rt.db(console.store.touch_session, h, now)
    return row, person


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None  # a form post from an opaque origin is refused
    return origin == f"{request.scheme}://{request.host}"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers; a live session for every page but sign-in; CSRF on every POST."""
    console = request.app[CONSOLE]
    try:
        response = await _guarded(console, request, handler)
    except web.HTTPException as exc:
        _headers(exc, console.secure)
        raise
    _headers(response, console.secure)
    return response


async def _guarded(console: Console, request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC:
        return await handler(request)
    found = await _session(console, request)
    if found is None:
        if request.method == "GET":
            raise web.HTTPSeeOther("/signin")
        raise web.HTTPForbidden(text="not signed in; sign in again")
    session, person = found
    request["session"] = session
    request["viewer"] = person
    if request.method == "POST":
        form = await request.post()
        token = form.get("csrf")
        if not _same_origin(request) or not auth.same_token(
            session.csrf, token if isinstance(token, str) else None
        ):
            log.warning("console_csrf_refused", person=person.name, path=request.path)
            raise web.HTTPForbidden(
                text="this form is out of date or did not come from the console; "
                "reload the page and try again"
            )
    return await handler(request)


async def roll_up_round(console: Console) -> int:
    """Count the stored events the hourly rollup has not counted yet, a chunk per turn of the
    database thread (pages and ingest queued meanwhile run between chunks); how many."""
    counted = 0
    for _ in range(ROLL_UP_TURNS):
        done = await console.rt.db(console.store.rollup.roll_up, ROLL_UP_CHUNK, ROLL_UP_CHUNK)
        counted += done
        if done < ROLL_UP_CHUNK:
            break
    return counted


async def _roll_up_forever(console: Console) -> None:
    while True:
        try:
            counted = await roll_up_round(console)
            if counted:
                log.debug("console_rollup_counted", events=counted)
        except CustodesError as exc:  # a store hiccup: try again next round
            log.warning("console_rollup_failed", error=str(exc)[:300])
        await asyncio.sleep(ROLL_UP_SECONDS)


async def _rolling_up(app: web.Application) -> AsyncIterator[None]:
    """Keep the statement's hourly rollup close to the stored events in the background, so
    that a statement seldom has events of its own to count (1M of them take seconds)."""
    task = asyncio.get_running_loop().create_task(_roll_up_forever(app[CONSOLE]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_app(rt: Runtime, jit: AccessRuntime | None, *, secure: bool) -> web.Application:
    """The console application (routes in pages.py)."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[CONSOLE] = Console(rt, jit, secure=secure)
    app.cleanup_ctx.append(_rolling_up)
    pages.add_routes(app)
    app.router.add_static("/static", _HERE / "static", show_index=False)
    return app


def _ssl_context(rt: Runtime, options: ConsoleOptions) -> ssl.SSLContext:
    cert = options.cert or rt.data.server_cert
    key = options.key or rt.data.server_key
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConsoleError(
            f"cannot load the console certificate {cert} with key {key}: {exc}",
            hint="pass a PEM certificate and its key with --console-cert/--console-key",
        ) from exc
    return context


@dataclass
class RunningConsole:
    """The console's listener, started."""

    runner: web.AppRunner
    port: int
    url: str

    async def stop(self) -> None:
        """Close the listener and finish open requests."""
        await self.runner.cleanup()


async def start(rt: Runtime, jit: AccessRuntime | None, options: ConsoleOptions) -> RunningConsole:
    """Serve the console on `options.listen` in the running loop."""
    options.check()
    host, port = options.host_port()
    secure = not options.insecure_http
    app = build_app(rt, jit, secure=secure)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    context = _ssl_context(rt, options) if secure else None
    site = web.TCPSite(runner, host, port, ssl_context=context, backlog=128)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConsoleError(
            f"cannot listen on {options.listen} (--console): {exc.strerror or exc}",
            hint="stop what holds the port, or give --console another HOST:PORT",
        ) from exc
    server: Any = site._server
    bound = int(server.sockets[0].getsockname()[1]) if server and server.sockets else port
    shown = f"[{host}]" if ":" in host else host
    url = f"{'https' if secure else 'http'}://{shown}:{bound}/"
    log.info("console_started", url=url, tls=secure)
    return RunningConsole(runner, bound, url)
