"""Reading the evidence: the Query servicer, `custodes events` lines, and the export file.

The export is one JSON document (format `custodes-evidence-export/v1`): per agent, its
events (base64 of the verbatim bytes) with chain hashes, the chain hash before the first
exported event, the agent's signed checkpoints in range, the agent's verifier key, the
server's signed checkpoint over the agent's log at the end of the export, and the aligned
Merkle subtree hashes of the log before the export (so the root can be rebuilt from the
exported events); plus the server's verifier key. server/verify_export.py checks it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import grpc
from google.protobuf.message import DecodeError

from protos.evidence.keys import load_private_key
from protos.evidence.merkle import MerkleTree
from protos.evidence.note import Checkpoint, NoteSigner, parse_checkpoint, verifiers_for
from protos.evidence.origins import agent_origin, server_log_origin
from protos.wire import pb, rpc
from server.datadir import DataDir
from server.store import AgentRow, Store, StoredRecord
from server.tls import PeerError, peer_from_auth_context
from server.verify_export import FORMAT, prefix_blocks

if TYPE_CHECKING:
    from server.app import Runtime

SERVER_KEY_NAME = "custodes-server"
PAGE = 5000
_VERDICT_NAMES = {
    pb.VERDICT_ALLOW: "allow",
    pb.VERDICT_DENY: "deny",
    pb.VERDICT_OBSERVED: "observed",
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def event_json(row: StoredRecord) -> dict[str, Any]:
    """A stored event as a JSON object (indexed columns plus the base64 bytes)."""
    return {
        "agent_id": row.agent_id,
        "seq": row.seq,
        "client": row.client,
        "time": dt.datetime.fromtimestamp(row.unix_nanos / 1e9, dt.UTC).isoformat(),
        "kind": row.kind,
        "technician": row.technician,
        "account": row.account,
        "area": row.area,
        "action": row.action,
        "decision": row.verdict,
        "rule": row.rule,
        "path": row.path,
        "event": _b64(row.event),
        "chain_hash": row.chain_hash.hex(),
    }


def describe(row: StoredRecord) -> str:
    """One readable line for `custodes events`."""
    when = dt.datetime.fromtimestamp(row.unix_nanos / 1e9, dt.UTC).isoformat(timespec="seconds")
    who = row.technician or row.account or "-"
    what = " ".join(x for x in (row.verdict, row.action, row.path) if x) or row.kind
    return (
        f"{when}  {row.client}/{row.agent_id}#{row.seq}  {who}  {what}  {row.area or ''}".rstrip()
    )


_MODES = {pb.GATE_MODE_ENFORCING: "enforcing", pb.GATE_MODE_MONITOR: "monitor"}


def agent_line(agent: AgentRow, now_unix: float) -> str:
    """One line for `custodes server agent list`: state, stream position, last heartbeat."""
    state = "revoked" if agent.revoked_unix is not None else "active"
    parts = [agent.agent_id, agent.client, state, f"next_seq={agent.next_seq}"]
    beat = pb.Heartbeat()
    if agent.last_heartbeat:
        try:
            beat.ParseFromString(agent.last_heartbeat)
        except DecodeError:  # a stored heartbeat is informative only
            beat = pb.Heartbeat()
    mode = _MODES.get(beat.mode, "unknown")
    parts += [
        f"mode={mode}",
        f"marks={beat.marks}",
        f"agreement={beat.agreement_version or '-'}",
        f"memory={agent_memory(beat)}",
        f"last_seen={_ago(agent.last_seen_unix, now_unix)}",
        agent.hostname,
    ]
    if beat.mode_note:
        parts.append(f"({beat.mode_note[:120]})")
    return "\t".join(parts)


def agent_memory(beat: pb.Heartbeat) -> str:
    """The agent's resident memory as its heartbeat reports it, `DAEMON+CHILD` in MiB: the
    gating daemon, plus the shipping child when there is one (an older agent reports the
    daemon only); "-" when the heartbeat has none."""
    if not beat.rss_bytes:
        return "-"
    daemon = f"{beat.rss_bytes / 2**20:.1f}MiB"
    if not beat.shipper_rss_bytes:
        return daemon
    return f"{daemon}+{beat.shipper_rss_bytes / 2**20:.1f}MiB"


def _ago(unix: int | None, now: float) -> str:
    if unix is None:
        return "never"
    when = dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")
    return f"{when}({max(0, int(now - unix))}s_ago)"


def _enrolled_vkey(store: Store, agent: AgentRow, origin: str) -> str:
    """The agent's epoch-0 verifier key, under the name it signs with (its first note's)."""
    notes = store.agent_checkpoints(agent.agent_id)[:1]
    note = notes[0] if notes else b""
    return verifiers_for(note, agent.public_key, origin)[0].vkey()


def _key_rotations(store: Store, agent: AgentRow, first: int) -> tuple[int, list[dict[str, Any]]]:
    """The KeyRotated runs an auditor needs to follow the key chain up to seq `first`.

    Each run is the KeyRotated event through the end of the checkpoint (signed by the
    previous key) that covers it, with the chain hash before it. A rotation whose
    covering checkpoint lies after `first` moves `first` back to the announcement, so that
    the window holds it. Returns the (maybe earlier) first seq and the runs before it.
    """
    keys = store.agent_keys(agent.agent_id)
    for k in keys:
        if k.announced_seq < first < k.valid_from:
            first = k.announced_seq
    runs: list[dict[str, Any]] = []
    for k in keys:
        if k.valid_from > first:
            break
        notes = [
            n
            for n in store.agent_checkpoints(agent.agent_id, k.valid_from)[:1]
            if parse_checkpoint(n)[0].size == k.valid_from
        ]
        recs = store.records(
            agent.agent_id, k.announced_seq - 1 if k.announced_seq else 0, k.valid_from
        )
        prev = recs.pop(0).chain_hash if k.announced_seq else bytes(32)
        runs.append(
            {
                "epoch": k.epoch,
                "first_seq": k.announced_seq,
                "prev_hash": _b64(prev),
                "events": [_link_json(r) for r in recs],
                "checkpoint": notes[0].decode() if notes else "",
            }
        )
    return first, runs


def _link_json(r: StoredRecord) -> dict[str, Any]:
    return {"seq": r.seq, "event": _b64(r.event), "chain_hash": _b64(r.chain_hash)}


def _window(
    store: Store, agent_id: str, since: int | None, until: int | None
) -> tuple[int, int] | None:
    """The smallest and largest seq of the agent's events in [since, until), or None.

    Pages through the store and keeps only the two numbers, whatever the number of events.
    """
    low: int | None = None
    high = -1
    after = None
    while True:
        page = store.events(
            agent_id=agent_id, since_nanos=since, until_nanos=until, limit=PAGE, after=after
        )
        for r in page:
            low = r.seq if low is None or r.seq < low else low
            high = max(high, r.seq)
        if len(page) < PAGE:
            return None if low is None else (low, high)
        after = page[-1].cursor


def _records(store: Store, agent_id: str, first: int, end: int) -> Iterator[StoredRecord]:
    """The agent's records with seq in [first, end), a page at a time."""
    for at in range(first, end, PAGE):
        yield from store.records(agent_id, at, min(at + PAGE, end))


@dataclass(frozen=True, slots=True)
class _AgentPart:
    """One agent's part of the export, its events still to be read: [first, size)."""

    agent_id: str
    first: int
    size: int
    fields: dict[str, Any]  # everything but "events"


def _agent_parts(
    store: Store,
    signer: NoteSigner,
    client: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> list[_AgentPart]:
    since = int(start.timestamp() * 1e9) if start else None
    until = int(end.timestamp() * 1e9) if end else None
    parts: list[_AgentPart] = []
    for agent in store.list_agents(client):
        window = _window(store, agent.agent_id, since, until)
        if window is None and (since or until):
            continue
        # A contiguous seq span: events inside it but outside the window (clock steps) stay.
        first = window[0] if window else 0
        size = window[1] + 1 if window else 0
        first, rotations = _key_rotations(store, agent, first)
        tree = MerkleTree(store.leaf_hashes(agent.agent_id, 0)[:size])
        prev = store.records(agent.agent_id, first - 1, first)[0].chain_hash if first else bytes(32)
        prefix = [[a, b, _b64(tree.subtree(a, b))] for a, b in prefix_blocks(first)]
        server_origin = server_log_origin(agent.agent_id)
        note = store.server_checkpoint(agent.agent_id, size)
        if note is None:
            note = signer.sign(Checkpoint(server_origin, size, tree.root()))
        origin = agent_origin(client, agent.agent_id)
        # A checkpoint at exactly `first` says nothing about the window; with key rotations
        # it may be the one a run above already used, signed by a key retired since.
        cps = [
            n.decode()
            for n in store.agent_checkpoints(agent.agent_id, first + 1 if first else 0)
            if parse_checkpoint(n)[0].size <= size
        ]
        fields = {
            "agent_id": agent.agent_id,
            "hostname": agent.hostname,
            "origin": origin,
            "vkey": _enrolled_vkey(store, agent, origin),
            "key_rotations": rotations,
            "first_seq": first,
            "prev_hash": _b64(prev),
            "events": None,
            "agent_checkpoints": cps,
            "server_origin": server_origin,
            "server_checkpoint": note.decode(),
            "prefix": prefix,
            "revoked_unix": agent.revoked_unix,
        }
        parts.append(_AgentPart(agent.agent_id, first, size, fields))
    return parts


def _skeleton(
    signer: NoteSigner,
    client: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    agents: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "client": client,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "from": start.isoformat() if start else None,
        "to": end.isoformat() if end else None,
        "server_vkey": signer.vkey(),
        "agents": agents,
    }


def export_document(
    store: Store,
    signer: NoteSigner,
    client: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> dict[str, Any]:
    """Build the export for `client` over events in [start, end) (all when None), in memory.

    `write_export` writes the same document to a file without holding the events.
    """
    agents = []
    for part in _agent_parts(store, signer, client, start, end):
        events = [_link_json(r) for r in _records(store, part.agent_id, part.first, part.size)]
        agents.append({**part.fields, "events": events})
    return _skeleton(signer, client, start, end, agents)


def write_export(
    store: Store,
    signer: NoteSigner,
    client: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    *,
    out: BinaryIO,
) -> tuple[int, int]:
    """Write `export_document`'s JSON to `out` a page of events at a time.

    Memory stays bounded by a page of events plus each agent's leaf hashes, whatever the
    number of events. Returns (events written, agents).
    """
    parts = _agent_parts(store, signer, client, start, end)
    # Each agent's events are a placeholder string in the skeleton, replaced while writing.
    # A random token: no stored field (a hostname, say) can spell it.
    token = secrets.token_hex(16)
    marks = [f"events {i} {token}" for i in range(len(parts))]
    agents = [{**p.fields, "events": mark} for p, mark in zip(parts, marks, strict=True)]
    text = json.dumps(_skeleton(signer, client, start, end, agents), indent=1)
    count = 0
    for part, mark in zip(parts, marks, strict=True):
        head, _, text = text.partition(json.dumps(mark))
        out.write(head.encode())
        out.write(b"[")
        for i, r in enumerate(_records(store, part.agent_id, part.first, part.size)):
            out.write(((",\n" if i else "\n") + json.dumps(_link_json(r))).encode())
            count += 1
        out.write(b"\n]")
    out.write(text.encode() + b"\n")
    return count, len(parts)


def export_client(
    store: Store,
    data: DataDir,
    *,
    client: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    out: Path,
) -> str:
    """Write the export file for `client` (atomically, 0600); return a one-line summary."""
    signer = NoteSigner(SERVER_KEY_NAME, load_private_key(data.signing_key))
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp makes it 0600: the evidence is personal
            count, agents = write_export(store, signer, client, start, end, out=fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    return f"exported {count} events of {agents} agents for client {client!r} to {out}"


class QueryService(rpc.QueryServicer):
    """Events and Export for a person of a client (or an MSP auditor) over mutual TLS."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _client(self, context: grpc.aio.ServicerContext, wanted: str) -> str:
        try:
            peer = peer_from_auth_context(context.auth_context())
        except PeerError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise
        if peer.identity.kind != "person":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only people may query evidence")
        if wanted and wanted != peer.identity.client:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{peer.identity.name!r} may read client {peer.identity.client!r} only",
            )
        return peer.identity.client

    async def Events(  # noqa: N802 - the generated servicer's method name
        self, request: pb.EventQuery, context: grpc.aio.ServicerContext
    ) -> pb.EventList:
        client = await self._client(context, request.client)
        rows = await self.rt.db(
            lambda: self.rt.store.events(
                client=client,
                technician=request.technician or None,
                area=request.area or None,
                verdict=_VERDICT_NAMES.get(request.verdict),
                agent_id=request.agent_id or None,
                since_nanos=request.since_unix * 10**9 if request.since_unix else None,
                until_nanos=request.until_unix * 10**9 if request.until_unix else None,
                limit=min(request.limit or 1000, 10_000),
            )
        )
        return pb.EventList(
            events=[
                pb.StoredEvent(
                    agent_id=r.agent_id, seq=r.seq, event=r.event, chain_hash=r.chain_hash
                )
                for r in rows
            ]
        )

    async def Export(  # noqa: N802 - the generated servicer's method name
        self, request: pb.ExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportChunk]:
        client = await self._client(context, request.client)
        start = dt.datetime.fromtimestamp(request.from_unix, dt.UTC) if request.from_unix else None
        end = dt.datetime.fromtimestamp(request.to_unix, dt.UTC) if request.to_unix else None
        doc = await self.rt.db(
            lambda: export_document(self.rt.store, self.rt.signer, client, start, end)
        )
        data = json.dumps(doc).encode()
        for i in range(0, len(data), 1 << 20):
            yield pb.ExportChunk(data=data[i : i + (1 << 20)])
