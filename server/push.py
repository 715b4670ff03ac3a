"""Pushing grants, revocations and agreements to the connected agents of a client.

Each agent stream (server/ingest.py) registers its outgoing queue here when the agent
connects and is sent, at once, everything its gate must hold: the client's current
agreement, every live grant and every revocation of a grant whose window has not ended.
After that, the access servicer publishes each new grant or revocation to every stream of
the client the moment it is stored, and the watcher publishes a new agreement version as
soon as `custodes server agreement apply` has stored it (from any process).

Everything here runs on the server's event loop (asyncio queues are not thread-safe);
store calls go through `Runtime.db`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos.signed import sign_agreement
from protos.wire import pb, rpc
from server.store.access import AccessStore
from server.tls import PeerError, peer_from_auth_context

if TYPE_CHECKING:
    from server.app import Runtime

log = structlog.get_logger("custodes.server.push")

WATCH_SECONDS = 0.25  # how often new agreement versions and due requests are looked for


class Outbox(Protocol):
    """An agent stream's outgoing queue (the ingest stream's `asyncio.Queue`)."""

    def put_nowait(self, item: pb.ServerMessage, /) -> None: ...


@dataclass(frozen=True, slots=True)
class _Stream:
    agent_id: str
    queue: Outbox


class Broadcaster:
    """Which agent streams are open, per client; publishes messages to them."""

    def __init__(self) -> None:
        self._streams: dict[str, dict[int, _Stream]] = {}
        self._ids = itertools.count(1)

    def attach(self, client: str, agent_id: str, queue: Outbox) -> int:
        """Register a stream's outgoing queue; returns the token `detach` takes."""
        token = next(self._ids)
        self._streams.setdefault(client, {})[token] = _Stream(agent_id, queue)
        return token

    def detach(self, client: str, token: int) -> None:
        """Forget a stream (it ended)."""
        streams = self._streams.get(client, {})
        streams.pop(token, None)
        if not streams:
            self._streams.pop(client, None)

    def publish(self, client: str, message: pb.ServerMessage) -> int:
        """Queue `message` on every open stream of `client`; how many streams got it."""
        streams = list(self._streams.get(client, {}).values())
        for stream in streams:
            stream.queue.put_nowait(message)
        return len(streams)

    def agents(self, client: str) -> list[str]:
        """The agent ids with an open stream for `client`."""
        return sorted(s.agent_id for s in self._streams.get(client, {}).values())


def sync_messages(
    access: AccessStore, key: Ed25519PrivateKey, client: str, now_unix: int
) -> list[pb.ServerMessage]:
    """What a (re)connecting agent of `client` is sent: agreement, revocations, live grants.

    Runs on the database thread.
    """
    out: list[pb.ServerMessage] = []
    current = access.current_agreement(client)
    if current is not None:
        bundle = sign_agreement(key, client, current.version, current.yaml)
        out.append(pb.ServerMessage(agreement=bundle))
    for stored in access.recent_revocations(client, now_unix):
        if stored.revocation is not None:
            out.append(pb.ServerMessage(revocation=pb.Revocation.FromString(stored.revocation)))
    for stored in access.live_grants(client, now_unix):
        if stored.signed_grant is not None:
            out.append(pb.ServerMessage(grant=pb.SignedGrant.FromString(stored.signed_grant)))
    return out


class Pusher:
    """The broadcaster plus what it needs to sync a stream and notice new agreements."""

    def __init__(self, rt: Runtime, access: AccessStore, key: Ed25519PrivateKey) -> None:
        self.rt = rt
        self.access = access
        self.key = key
        self.streams = Broadcaster()
        self._heads: dict[str, int] | None = None
        # Called with the client whenever its stored agreement version is first seen or
        # changes (the detector follows the current agreement through this).
        self.agreement_listeners: list[Callable[[str], Awaitable[None]]] = []

    async def connected(self, client: str, agent_id: str, queue: Outbox) -> Callable[[], None]:
        """Attach an agent's stream and queue its sync; returns the function that detaches it.

        Attached before the sync is read, so a grant stored in between is not missed (the
        agent may get it twice; it ignores a grant it already holds).
        """
        token = self.streams.attach(client, agent_id, queue)
        try:
            messages = await self.rt.db(
                sync_messages, self.access, self.key, client, int(time.time())
            )
        except BaseException:
            self.streams.detach(client, token)
            raise
        for message in messages:
            queue.put_nowait(message)
        log.info("agent_synced", agent=agent_id, client=client, messages=len(messages))
        return lambda: self.streams.detach(client, token)

    def publish(self, client: str, message: pb.ServerMessage) -> int:
        """Send `message` to every connected agent of `client`."""
        return self.streams.publish(client, message)

    async def check_agreements(self) -> int:
        """Publish the current agreement of every client whose version changed; how many."""
        heads = await self.rt.db(self.access.agreement_heads)
        previous, self._heads = self._heads, heads
        changed = [c for c, i in heads.items() if previous is None or previous.get(c) != i]
        for client in changed:
            for listener in self.agreement_listeners:
                await listener(client)
        if previous is None:
            return 0  # the first look: connected agents got the current one at sync
        for client in changed:
            current = await self.rt.db(self.access.current_agreement, client)
            if current is None:
                continue
            bundle = sign_agreement(self.key, client, current.version, current.yaml)
            sent = self.publish(client, pb.ServerMessage(agreement=bundle))
            log.info("agreement_pushed", client=client, version=current.version, agents=sent)
        return len(changed)


_DONE = object()


class ChannelServicer(Protocol):
    """What PushingChannel wraps: server/ingest.py's AgentChannelService."""

    def Connect(  # noqa: N802 - the generated servicer's method name
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerMessage]: ...


class PushingChannel(rpc.AgentChannelServicer):
    """The AgentChannel servicer with pushes merged into its outgoing stream.

    Wraps the ingest servicer without touching it: the inner stream's messages pass through
    unchanged; once it has sent its first message (Resume: the agent passed every check),
    the stream is attached to the pusher and synced.
    """

    def __init__(self, inner: ChannelServicer, pusher: Pusher) -> None:
        self.inner = inner
        self.pusher = pusher

    async def Connect(  # noqa: N802 - the generated servicer's method name
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ServerMessage]:
        try:
            peer = peer_from_auth_context(context.auth_context())
        except PeerError:
            peer = None  # the inner servicer refuses it
        merged: asyncio.Queue[object] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in self.inner.Connect(request_iterator, context):
                    await merged.put(item)
            except BaseException as exc:  # handed to the outer generator, which raises it
                await merged.put(exc)
                return
            await merged.put(_DONE)

        task = asyncio.create_task(pump())
        detach: Callable[[], None] | None = None
        try:
            while True:
                item = await merged.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
                if detach is None and peer is not None and peer.identity.kind == "agent":
                    detach = await self.pusher.connected(
                        peer.identity.client, peer.identity.name, merged
                    )
        finally:
            if detach is not None:
                detach()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
