"""Offline verification of an evidence export: needs the file, not the server.

For each agent in the export: the agent's key chain from its enrolled epoch-0 key through
the exported KeyRotated runs before the window (each covered by a checkpoint of the previous
key), every chain link from the exported previous hash, every agent checkpoint's signature
(by the key the chain says is current, with the agent's origin) and root;
the server's signed checkpoint (by the exported server key) whose Merkle root must be
rebuilt from the exported prefix subtrees and events. With an agent's own latest checkpoint
(`--agent-checkpoint`), the export must hold every event that checkpoint covers. The first
problem is named in plain words.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protos.evidence import errors as ev
from protos.evidence.bundle import StreamSummary, verify_stream
from protos.evidence.chain import GENESIS, Link, verify_links
from protos.evidence.keychain import KeyChain, Rotation, rotation_of
from protos.evidence.merkle import EMPTY_ROOT, node_hash, record_leaves
from protos.evidence.note import NoteVerifier, parse_checkpoint, verify_checkpoint
from protos.evidence.origins import server_log_origin

FORMAT = "custodes-evidence-export/v1"
MAX_EXPORT_BYTES = 4 * 1024**3


class ExportError(ev.EvidenceError):
    """The export does not verify; the message names the first problem."""


def prefix_blocks(size: int) -> list[tuple[int, int]]:
    """The aligned power-of-two blocks [a, b) that cover [0, size), largest first."""
    blocks: list[tuple[int, int]] = []
    start = 0
    for bit in reversed(range(size.bit_length())):
        if size & (1 << bit):
            blocks.append((start, start + (1 << bit)))
            start += 1 << bit
    return blocks


def subtree_root(
    leaf: Callable[[int], bytes], known: dict[tuple[int, int], bytes], a: int, b: int
) -> bytes:
    """RFC 6962 hash of leaves [a, b), using `known` subtree hashes where given."""
    if (a, b) in known:
        return known[(a, b)]
    if b - a == 1:
        return leaf(a)
    k = 1 << ((b - a - 1).bit_length() - 1)
    return node_hash(subtree_root(leaf, known, a, a + k), subtree_root(leaf, known, a + k, b))


def tree_root(prefix: dict[tuple[int, int], bytes], leaves: Sequence[bytes], first: int) -> bytes:
    """The root over [0, first + len(leaves)) from the prefix blocks and the later leaf hashes."""
    size = first + len(leaves)
    if size == 0:
        return EMPTY_ROOT
    return subtree_root(lambda i: leaves[i - first], prefix, 0, size)


@dataclass(frozen=True, slots=True)
class AgentResult:
    """What one agent's part of the export proves."""

    agent_id: str
    stream: StreamSummary
    server_size: int


@dataclass(frozen=True, slots=True)
class ExportReport:
    """The whole export verified."""

    client: str
    agents: tuple[AgentResult, ...]

    def __str__(self) -> str:
        lines = [f"export for client {self.client!r} verifies:"]
        for a in self.agents:
            s = a.stream
            lines.append(
                f"  agent {a.agent_id}: events {s.first_seq}..{s.next_seq - 1} "
                f"({s.events}), {s.checkpoints_verified} agent checkpoints, "
                f"server log size {a.server_size}"
                + (
                    f", {s.unsigned_tail} events after the last agent checkpoint"
                    if s.unsigned_tail
                    else ""
                )
            )
        return "\n".join(lines)


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ExportError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ExportError(f"{what} is not valid base64") from exc


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ExportError(f"{where} has no {key!r} of type {kind.__name__}")
    return value


def verify_document(doc: object, agent_checkpoints: Sequence[bytes] = ()) -> ExportReport:
    """Verify a parsed export; raise an EvidenceError subclass naming the first problem."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ExportError(f"the file is not a Custodes evidence export (expected format {FORMAT})")
    client = _field(doc, "client", str, "the export")
    server_vkey = _field(doc, "server_vkey", str, "the export")
    server = NoteVerifier.from_vkey(server_vkey)
    agents = _field(doc, "agents", list, "the export")
    results: list[AgentResult] = []
    heads: dict[str, tuple[str, KeyChain, dict[int, bytes], int]] = {}
    for entry in agents:
        if not isinstance(entry, dict):
            raise ExportError("an agent entry is not an object")
        agent_id = _field(entry, "agent_id", str, "an agent entry")
        where = f"agent {agent_id!r}"
        origin = _field(entry, "origin", str, where)
        vkey = _field(entry, "vkey", str, where)
        first = _field(entry, "first_seq", int, where)
        prev = _b64(entry.get("prev_hash"), f"{where} prev_hash")
        links = _links(entry.get("events"), where)
        notes = [n.encode() for n in _field(entry, "agent_checkpoints", list, where)]
        try:
            keys = KeyChain.enrolled(origin, NoteVerifier.from_vkey(vkey).public)
            _follow_rotations(keys, entry.get("key_rotations", []), first, where)
            stream = verify_stream(
                agent_id,
                keys,
                notes,
                links,
                start_seq=first,
                prev=prev if first else GENESIS,
                origin=origin,
                rotations=_rotations(links),
            )
        except ev.GapError as exc:
            raise ExportError(
                f"{where}: an event is missing from the export: {exc}", seq=exc.seq
            ) from exc
        except ev.EvidenceError as exc:
            raise type(exc)(f"{where}: {exc}", seq=exc.seq) from exc
        # The server's checkpoint over this agent's log must match the exported events.
        note = _field(entry, "server_checkpoint", str, where).encode()
        if _field(entry, "server_origin", str, where) != server_log_origin(agent_id):
            raise ExportError(
                f"{where}: the server log origin is {entry['server_origin'][:80]!r}; expected "
                f"{server_log_origin(agent_id)!r}"
            )
        cp = verify_checkpoint(note, [server], origin=server_log_origin(agent_id))
        prefix = {}
        for block in _field(entry, "prefix", list, where):
            if not isinstance(block, list) or len(block) != 3:
                raise ExportError(f"{where} prefix entry is not [start, end, hash]")
            prefix[(int(block[0]), int(block[1]))] = _b64(block[2], f"{where} prefix hash")
        if sorted(prefix) != prefix_blocks(first):
            raise ExportError(f"{where} prefix does not cover seq 0..{first - 1} in aligned blocks")
        if cp.size != stream.next_seq:
            raise ExportError(
                f"{where}: the server checkpoint covers {cp.size} events; the export ends at "
                f"{stream.next_seq}"
            )
        leaves = record_leaves(first, [link.hash for link in links])
        root = tree_root(prefix, leaves, first)
        if root != cp.root:
            raise ev.InconsistentTreeError(
                f"{where}: the exported events rebuild server root {ev.short(root)}; the "
                f"server signed {ev.short(cp.root)}"
            )
        hashes = {first: prev}
        hashes.update((link.seq + 1, link.hash) for link in links)
        heads[origin] = (agent_id, keys, hashes, stream.next_seq)
        results.append(AgentResult(agent_id, stream, cp.size))
    for note in agent_checkpoints:
        _check_against_agent(note, heads)
    if not results and not agent_checkpoints:
        raise ExportError("the export holds no agents; there is nothing to verify")
    return ExportReport(client, tuple(results))


def _links(raw: object, where: str) -> list[Link]:
    if not isinstance(raw, list):
        raise ExportError(f"{where} has no 'events' of type list")
    links = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict):
            raise ExportError(f"{where} event #{i} is not an object")
        links.append(
            Link(
                _field(e, "seq", int, f"{where} event #{i}"),
                _b64(e.get("event"), f"{where} event #{i}"),
                _b64(e.get("chain_hash"), f"{where} event #{i} chain_hash"),
            )
        )
    return links


def _rotations(links: Sequence[Link]) -> list[Rotation]:
    """The KeyRotated announcements among `links`; bytes that are no Event announce nothing
    (whether they are the signed bytes is for the chain check to say)."""
    out: list[Rotation] = []
    for link in links:
        try:
            rotation = rotation_of(link.seq, link.event)
        except ev.MalformedError:
            continue
        if rotation is not None:
            out.append(rotation)
    return out


def _follow_rotations(keys: KeyChain, runs: object, first: int, where: str) -> None:
    """Learn the keys rotated in before the window from the exported KeyRotated runs."""
    if not isinstance(runs, list):
        raise ExportError(f"{where} key_rotations is not a list")
    for n, run in enumerate(runs):
        what = f"{where} key rotation #{n}"
        if not isinstance(run, dict):
            raise ExportError(f"{what} is not an object")
        start = _field(run, "first_seq", int, what)
        links = _links(run.get("events"), what)
        note = _field(run, "checkpoint", str, what).encode()
        if not links:
            raise ExportError(f"{what} holds no events; expected its KeyRotated event")
        head = verify_links(
            _b64(run.get("prev_hash"), f"{what} prev_hash"), start, links, who=where
        )
        rotation = rotation_of(links[0].seq, links[0].event)
        if rotation is None:
            raise ExportError(f"{what} does not start with a KeyRotated event")
        keys.announce(rotation)
        cp = keys.verify(note)
        if cp.size != start + len(links) or cp.root != head:
            raise ev.ModifiedEventError(
                f"{what}: the checkpoint at size {cp.size} does not sign the exported run "
                f"seq {start}..{start + len(links) - 1} (head {ev.short(head)})",
                seq=start,
            )
        if keys.current.epoch != rotation.epoch or cp.size > first:
            raise ExportError(
                f"{what}: epoch {rotation.epoch} was not learnt before the window at seq {first}"
            )


def _check_against_agent(
    note: bytes, heads: dict[str, tuple[str, KeyChain, dict[int, bytes], int]]
) -> None:
    cp, _ = parse_checkpoint(note)
    if cp.origin not in heads:
        raise ExportError(
            f"the agent checkpoint is for {cp.origin!r}, which the export does not hold at all "
            f"(its whole history of {cp.size} events is missing)"
        )
    agent_id, keys, hashes, next_seq = heads[cp.origin]
    try:
        keys.verify_past(note)
    except ev.UnknownKeyError as exc:
        if cp.size > next_seq:
            raise ev.TruncationError(
                f"history is missing: agent {agent_id!r}'s own checkpoint covers {cp.size} "
                f"events with a key the export never announces (the export ends after "
                f"{next_seq} events, at epoch {keys.current.epoch}): {exc}",
                seq=next_seq,
            ) from exc
        raise
    if cp.size > next_seq:
        raise ev.TruncationError(
            f"history is missing: agent {agent_id!r}'s own checkpoint covers {cp.size} events, "
            f"but the export ends after {next_seq} (seq {next_seq}..{cp.size - 1} are missing)",
            seq=next_seq,
        )
    if cp.size in hashes and hashes[cp.size] != cp.root:
        raise ev.ModifiedEventError(
            f"agent {agent_id!r}'s own checkpoint at {cp.size} events has chain head "
            f"{ev.short(cp.root)}; the export's chain has {ev.short(hashes[cp.size])}",
            seq=cp.size - 1,
        )


def verify_file(path: Path, agent_checkpoint_files: Sequence[Path] = ()) -> ExportReport:
    """Read and verify an export file (and the agents' own checkpoint notes)."""
    try:
        if path.stat().st_size > MAX_EXPORT_BYTES:
            raise ExportError(f"{path} is larger than {MAX_EXPORT_BYTES} bytes")
        doc = json.loads(path.read_bytes())
        notes = [p.read_bytes()[: 64 * 1024] for p in agent_checkpoint_files]
    except OSError as exc:
        raise ExportError(f"cannot read {exc.filename} ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not JSON ({exc}); expected a Custodes export") from exc
    return verify_document(doc, notes)
