"""The Access servicer: people drive just-in-time requests over mutual TLS.

Every call is authenticated by the caller's person certificate (the identity in its SAN
URI) and authorised by that person's role and client as the store has them. The workflow
itself is server/access.py (pure); this module loads, calls, signs, stores and publishes.
A grant is signed (protos/signed.py) and pushed to the client's connected agents the moment
it is approved; a revocation the moment it is revoked. A watcher task expires requests and
grants on time and pushes new agreement versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.compile import CompiledAgreement, compile_agreement
from policies.errors import PolicyError
from policies.load import parse_agreement
from policies.model import Action
from protos.evidence.keys import load_private_key
from protos.signed import sign_grant, sign_revocation
from protos.wire import pb, rpc
from server import access
from server.access import (
    AccessError,
    Draft,
    ForbiddenError,
    Person,
    Request,
    RequestRefusedError,
    Role,
    State,
    TransitionError,
)
from server.push import WATCH_SECONDS, Pusher
from server.store.access import AccessStore, StoredRequest
from server.store.base import StoreConflictError, StoreError
from server.tls import PeerError, peer_from_auth_context

if TYPE_CHECKING:
    from server.app import Runtime

log = structlog.get_logger("custodes.server.access")
T = TypeVar("T")

MSP_CLIENT = "msp"  # the client name in the certificate of an MSP-wide person
MAX_COVERED = 5000
_TO_WIRE = {
    Action.READ: pb.ACTION_READ,
    Action.WRITE: pb.ACTION_WRITE,
    Action.CREATE: pb.ACTION_CREATE,
    Action.DELETE: pb.ACTION_DELETE,
    Action.RENAME: pb.ACTION_RENAME,
    Action.EXEC: pb.ACTION_EXEC,
    Action.LIST: pb.ACTION_LIST,
}
_FROM_WIRE = {v: k for k, v in _TO_WIRE.items()}


def grant_message(req: Request, issued_unix: int) -> pb.Grant:
    """The Grant the server signs for an approved request."""
    return pb.Grant(
        grant_id=req.id,
        client=req.client,
        technician=req.technician,
        area=req.area,
        actions=[_TO_WIRE[a] for a in req.actions],
        start_unix=req.start_unix,
        end_unix=req.end_unix,
        break_glass=req.break_glass,
        ticket=req.ticket,
        issued_unix=issued_unix,
    )


def request_message(req: Request, now: int) -> pb.AccessRequest:
    """A request as the Access service returns it (state as people read it)."""
    return pb.AccessRequest(
        id=req.id,
        client=req.client,
        technician=req.technician,
        area=req.area,
        actions=[_TO_WIRE[a] for a in req.actions],
        start_unix=req.start_unix,
        duration_seconds=req.duration_seconds,
        ticket=req.ticket,
        reason=req.reason,
        break_glass=req.break_glass,
        state=req.state_at(now),
        history=[
            pb.AccessStateChange(state=c.state, by=c.by, unix=c.at_unix, why=c.why)
            for c in req.history
        ],
        approvals=[
            pb.Approval(approver=a.approver, role=a.kind, unix=a.at_unix) for a in req.approvals
        ],
        end_unix=req.end_unix,
    )


class Agreements:
    """Compiled current agreements per client, recompiled only when the stored version changes."""

    def __init__(self, store: AccessStore) -> None:
        self._store = store
        self._cache: dict[str, tuple[str, CompiledAgreement]] = {}

    def current(self, client: str) -> CompiledAgreement:
        """The client's compiled agreement; RequestRefusedError when none is applied."""
        row = self._store.current_agreement(client)
        if row is None:
            raise RequestRefusedError(
                "agreement",
                f"client {client!r} has no agreement on this server; expected one applied "
                "with `custodes server agreement apply`",
            )
        cached = self._cache.get(client)
        if cached is not None and cached[0] == row.sha256:
            return cached[1]
        try:
            compiled = compile_agreement(
                parse_agreement(row.yaml, filename=f"{client}@{row.version}")
            )
        except PolicyError as exc:  # stored agreements were validated; a bug or a new schema
            raise StoreError(
                f"stored agreement {row.version} of {client} no longer loads: {exc}"
            ) from exc
        self._cache[client] = (row.sha256, compiled)
        return compiled


class AccessCore:
    """The synchronous part of each call (runs on the database thread)."""

    def __init__(self, store: AccessStore, key: Ed25519PrivateKey) -> None:
        self.store = store
        self.key = key
        self.agreements = Agreements(store)

    def person(self, name: str, cert_client: str) -> Person:
        """The enrolled person behind a certificate; ForbiddenError when unknown or removed."""
        person = self.store.get_person(name)
        if person is None:
            raise ForbiddenError("people", f"{name!r} is not a person of this server")
        if cert_client != (person.client or MSP_CLIENT):
            raise ForbiddenError(
                "client",
                f"the certificate of {name!r} names client {cert_client!r}; expected "
                f"{person.client or MSP_CLIENT!r}",
            )
        return person

    def load(self, request_id: str) -> StoredRequest:
        stored = self.store.get_request(request_id)
        if stored is None:
            raise LookupError(f"request {request_id!r} does not exist")
        return stored

    def create(
        self, person: Person, draft: Draft, now: int
    ) -> tuple[Request, pb.SignedGrant | None]:
        compiled = self.agreements.current(draft.client)
        request_id = f"jit-{secrets.token_hex(5)}"
        req = access.create(request_id, draft, person, compiled, now)
        signed = (
            sign_grant(self.key, grant_message(req, now)) if req.state is State.APPROVED else None
        )
        self.store.add_request(req, signed.SerializeToString() if signed else None)
        return req, signed

    def approve(
        self, person: Person, request_id: str, now: int
    ) -> tuple[Request, pb.SignedGrant | None]:
        before = self.load(request_id).request
        if not access.may_read(person, before):
            raise LookupError(f"request {request_id!r} does not exist")
        compiled = self.agreements.current(before.client)
        after = access.approve(before, person, compiled, now)
        signed = None
        if after.state is State.APPROVED:
            signed = sign_grant(self.key, grant_message(after, now))
        self.store.save_request(
            before, after, signed_grant=signed.SerializeToString() if signed else None
        )
        return after, signed

    def end(
        self, person: Person, request_id: str, why: str, step: str, now: int
    ) -> tuple[Request, pb.Revocation | None]:
        before = self.load(request_id).request
        if not access.may_read(person, before):
            raise LookupError(f"request {request_id!r} does not exist")
        if step == "deny":
            after = access.deny(before, person, why, now)
        elif step == "cancel":
            after = access.cancel(before, person, why, now)
        else:
            after = access.revoke(before, person, why, now)
        revocation = None
        if before.state is State.APPROVED:
            reason = f"{after.history[-1].state} by {person.name}: {why.strip()}".strip(": ")
            revocation = sign_revocation(self.key, after.id, after.client, now, reason[:500])
        self.store.save_request(
            before, after, revocation=revocation.SerializeToString() if revocation else None
        )
        return after, revocation

    def listing(self, person: Person, mine: bool, pending: bool, client: str) -> list[Request]:
        requester = person.name if mine or person.role is Role.TECHNICIAN else None
        if person.client is not None:
            if client and client != person.client:
                raise ForbiddenError("client", f"{person.name} may list {person.client} only")
            client = person.client
        rows = self.store.list_requests(
            client=client or None,
            requester=requester,
            states=(State.PENDING,) if pending else (),
        )
        return [r.request for r in rows if access.may_read(person, r.request)]

    def expire_due(self, now: int) -> list[Request]:
        """Expire what is due; the requests that changed."""
        changed: list[Request] = []
        for stored in self.store.due(now):
            after = access.expire(stored.request, now)
            if after is None:
                continue
            with contextlib.suppress(StoreConflictError):  # another server did it first
                self.store.save_request(stored.request, after)
                changed.append(after)
        return changed


def covered_events(rt: Runtime, req: Request, now: int) -> list[pb.StoredEvent]:
    """Stored events whose grant_id is this grant: accesses it covered and its lifecycle."""
    if not req.start_unix:
        return []
    out: list[pb.StoredEvent] = []
    rows = rt.store.events(
        client=req.client,
        technician=req.technician,
        since_nanos=(req.start_unix - 60) * 10**9,
        until_nanos=(max(req.end_unix, now) + 120) * 10**9,
        limit=10_000,
    )
    for row in rows:
        if row.kind not in ("access", "grant"):
            continue
        try:
            event = pb.Event.FromString(row.event)
        except Exception:  # noqa: S112 - stored bytes were verified; skip what does not parse
            continue
        body = event.access if row.kind == "access" else event.grant
        if body.grant_id == req.id:
            out.append(
                pb.StoredEvent(
                    agent_id=row.agent_id, seq=row.seq, event=row.event, chain_hash=row.chain_hash
                )
            )
            if len(out) >= MAX_COVERED:
                break
    return out


class AccessService(rpc.AccessServicer):
    """The gRPC face of the workflow."""

    def __init__(self, rt: Runtime, core: AccessCore, pusher: Pusher) -> None:
        self.rt = rt
        self.core = core
        self.pusher = pusher

    async def _person(self, context: grpc.aio.ServicerContext) -> Person:
        try:
            peer = peer_from_auth_context(context.auth_context())
        except PeerError as exc:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if peer.identity.kind != "person":
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, "only people may use Access")
        return await self._call(context, self.core.person, peer.identity.name, peer.identity.client)

    async def _call(
        self, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: object
    ) -> T:
        try:
            return await self.rt.db(fn, *args)
        except RequestRefusedError as exc:
            log.info("access_refused", rule=exc.rule, reason=str(exc))
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ForbiddenError as exc:
            log.warning("access_forbidden", rule=exc.rule, reason=str(exc))
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except TransitionError as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except LookupError as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        except StoreConflictError as exc:
            await _abort(context, grpc.StatusCode.ABORTED, str(exc))
        except AccessError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def Request(  # noqa: N802 - the generated servicer's method name
        self, request: pb.CreateAccessRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        person = await self._person(context)
        try:
            actions = tuple(_FROM_WIRE[a] for a in request.actions)
        except KeyError:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "an action is unspecified")
        draft = Draft(
            client=request.client,
            area=request.area,
            actions=actions,
            duration_seconds=int(request.duration_seconds),
            ticket=request.ticket,
            reason=request.reason,
            start_unix=int(request.start_unix),
            break_glass=request.break_glass,
        )
        now = int(time.time())
        req, signed = await self._call(context, self.core.create, person, draft, now)
        log.info(
            "access_requested",
            id=req.id,
            client=req.client,
            technician=req.technician,
            area=req.area,
            break_glass=req.break_glass,
            state=req.state.value,
        )
        if signed is not None:
            self._push_grant(req, signed)
        return request_message(req, now)

    def _push_grant(self, req: access.Request, signed: pb.SignedGrant) -> None:
        agents = self.pusher.publish(req.client, pb.ServerMessage(grant=signed))
        log.info("grant_pushed", id=req.id, client=req.client, agents=agents, until=req.end_unix)

    async def Approve(  # noqa: N802 - the generated servicer's method name
        self, request: pb.AccessDecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        person = await self._person(context)
        now = int(time.time())
        req, signed = await self._call(context, self.core.approve, person, request.id, now)
        log.info("access_approved", id=req.id, by=person.name, state=req.state.value)
        if signed is not None:
            self._push_grant(req, signed)
        return request_message(req, now)

    async def _end(
        self, request: pb.AccessDecisionRequest, context: grpc.aio.ServicerContext, step: str
    ) -> pb.AccessRequest:
        person = await self._person(context)
        now = int(time.time())
        req, revocation = await self._call(
            context, self.core.end, person, request.id, request.why, step, now
        )
        log.info("access_" + req.state.value, id=req.id, by=person.name)
        if revocation is not None:
            agents = self.pusher.publish(req.client, pb.ServerMessage(revocation=revocation))
            log.info("revocation_pushed", id=req.id, client=req.client, agents=agents)
        return request_message(req, now)

    async def Deny(  # noqa: N802 - the generated servicer's method name
        self, request: pb.AccessDecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        return await self._end(request, context, "deny")

    async def Revoke(  # noqa: N802 - the generated servicer's method name
        self, request: pb.AccessDecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        return await self._end(request, context, "revoke")

    async def Cancel(  # noqa: N802 - the generated servicer's method name
        self, request: pb.AccessDecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequest:
        return await self._end(request, context, "cancel")

    async def Show(  # noqa: N802 - the generated servicer's method name
        self, request: pb.AccessRequestId, context: grpc.aio.ServicerContext
    ) -> pb.AccessDetail:
        person = await self._person(context)
        stored = await self._call(context, self.core.load, request.id)
        if not access.may_read(person, stored.request):
            await _abort(
                context, grpc.StatusCode.NOT_FOUND, f"request {request.id!r} does not exist"
            )
        now = int(time.time())
        covered = await self._call(context, covered_events, self.rt, stored.request, now)
        return pb.AccessDetail(request=request_message(stored.request, now), covered=covered)

    async def List(  # noqa: N802 - the generated servicer's method name
        self, request: pb.ListAccessRequests, context: grpc.aio.ServicerContext
    ) -> pb.AccessRequestList:
        person = await self._person(context)
        rows = await self._call(
            context, self.core.listing, person, request.mine, request.pending, request.client
        )
        now = int(time.time())
        return pb.AccessRequestList(requests=[request_message(r, now) for r in rows])


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises


class AccessRuntime:
    """What `server/app.py` starts: the servicer, the pusher and the watcher task."""

    def __init__(self, rt: Runtime) -> None:
        store = AccessStore(rt.store)
        key = load_private_key(rt.data.signing_key)
        self.core = AccessCore(store, key)
        self.pusher = Pusher(rt, store, key)
        self.service = AccessService(rt, self.core, self.pusher)
        self._rt = rt
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the watcher (expiry and agreement pushes) on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Stop the watcher."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            try:
                for req in await self._rt.db(self.core.expire_due, int(time.time())):
                    log.info("access_expired", id=req.id, client=req.client)
                await self.pusher.check_agreements()
            except StoreError as exc:
                log.warning("access_watch_failed", error=str(exc)[:300])
            await asyncio.sleep(WATCH_SECONDS)


def install(rt: Runtime, server: grpc.aio.Server) -> AccessRuntime:
    """Register the Access servicer on the main (mutual-TLS) listener; returns its runtime."""
    runtime = AccessRuntime(rt)
    rpc.add_AccessServicer_to_server(runtime.service, server)
    return runtime
