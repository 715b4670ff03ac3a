"""The local grants file: the offline, break-glass path to just-in-time grants.

A JSON list of grants, each `{"id", "technician", "area", "actions", "start", "end",
"break_glass", "ticket"}` with ISO 8601 times that carry a time zone. Only root may write
it (the agent refuses a file that group or others can write, or that another user owns).
Later the server pushes signed grants; they end up in the same `GrantSet`.

`GrantBook` is the pure part: given the grants read now and the time, it says which are
active and which were applied, expired, revoked (removed from the file) or refused.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.config import AgentError
from agent.events import GrantRecord
from policies.model import Action, Grant

MAX_GRANTS_BYTES = 1024 * 1024
MAX_GRANTS = 10_000


class BadGrantError(ValueError):
    """One entry of the grants file is not a valid grant (the others still count)."""


class GrantsFileError(AgentError):
    """The grants file cannot be used as a whole (unreadable, unsafe, not a JSON list)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """One entry of the grants file that is not a valid grant."""

    index: int
    grant_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class GrantFile:
    """What the grants file holds: the valid grants and the refused entries."""

    grants: tuple[Grant, ...]
    refused: tuple[Refused, ...]


def _time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise BadGrantError(f"{field} is {type(value).__name__}; expected an ISO 8601 string")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field} {value[:40]!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise ValueError(f"{field} {value[:40]!r} has no time zone; expected e.g. +10:00 or Z")
    return at


def parse_grant(entry: Any) -> Grant:
    """One grant from a JSON object. Raises ValueError naming what is wrong."""
    if not isinstance(entry, dict):
        raise BadGrantError(f"entry is {type(entry).__name__}; expected an object")
    allowed = {"id", "technician", "area", "actions", "start", "end", "break_glass", "ticket"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; expected only {sorted(allowed)}")
    for key in ("id", "technician", "area"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ValueError(f"{key} is missing or not a non-empty string")
    actions = entry.get("actions")
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        raise ValueError("actions is missing or not a list of strings")
    try:
        acts = frozenset(Action(a) for a in actions)
    except ValueError:
        raise ValueError(
            f"actions {actions!r} holds an unknown action; expected {[a.value for a in Action]}"
        ) from None
    break_glass = entry.get("break_glass", False)
    ticket = entry.get("ticket", "")
    if not isinstance(break_glass, bool) or not isinstance(ticket, str):
        raise BadGrantError("break_glass must be true/false and ticket a string")
    return Grant(
        id=entry["id"],
        technician=entry["technician"],
        area=entry["area"],
        actions=acts,
        start=_time(entry.get("start"), "start"),
        end=_time(entry.get("end"), "end"),
        break_glass=break_glass,
        ticket=ticket,
    )


def parse_grants(data: bytes, *, source: str = "grants file") -> GrantFile:
    """Parse the grants file's bytes. Raises GrantsFileError when it is not a JSON list."""
    try:
        raw = json.loads(data.decode("utf-8")) if data.strip() else []
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GrantsFileError(f"{source} is not valid JSON ({exc}); expected a list") from exc
    if not isinstance(raw, list):
        raise GrantsFileError(f"{source} holds a {type(raw).__name__}; expected a JSON list")
    if len(raw) > MAX_GRANTS:
        raise GrantsFileError(f"{source} holds {len(raw)} grants; at most {MAX_GRANTS}")
    grants: list[Grant] = []
    refused: list[Refused] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        gid = str(entry.get("id", "")) if isinstance(entry, dict) else ""
        try:
            grant = parse_grant(entry)
        except ValueError as exc:
            refused.append(Refused(index, gid, str(exc)))
            continue
        if grant.id in seen:
            refused.append(Refused(index, gid, f"id {grant.id!r} appears more than once"))
            continue
        seen.add(grant.id)
        grants.append(grant)
    return GrantFile(tuple(grants), tuple(refused))


def read_grants_file(path: Path) -> GrantFile:
    """Read the grants file; a missing file holds no grants.

    Raises GrantsFileError when it is not a regular file owned by root (or by the agent's
    user) with no write access for group or others, or when it does not parse.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return GrantFile((), ())
    except OSError as exc:
        raise GrantsFileError(f"cannot open the grants file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise GrantsFileError(f"the grants file {path} is not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise GrantsFileError(
                f"the grants file {path} is owned by uid {info.st_uid}; expected root",
                hint=f"chown root {path}",
            )
        if stat.S_IMODE(info.st_mode) & 0o022:
            raise GrantsFileError(
                f"the grants file {path} has mode {stat.S_IMODE(info.st_mode):04o}; expected "
                "no write access for group or others",
                hint=f"chmod 644 {path}",
            )
        data = os.read(fd, MAX_GRANTS_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_GRANTS_BYTES:
        raise GrantsFileError(f"the grants file {path} is over {MAX_GRANTS_BYTES} bytes")
    return parse_grants(data, source=str(path))


class GrantBook:
    """Tracks grants over time and says what changed, as journal records.

    `known_areas` and `known_technicians` come from the agreement: a grant for an area or a
    technician the agreement does not name is refused.
    """

    def __init__(self, known_areas: Sequence[str], known_technicians: Sequence[str]) -> None:
        self._areas = set(known_areas)
        self._techs = set(known_technicians)
        self._applied: dict[str, Grant] = {}
        self._expired: set[str] = set()
        self._refused: set[tuple[str, str]] = set()

    def retarget(self, known_areas: Sequence[str], known_technicians: Sequence[str]) -> None:
        """A new agreement: grants are checked against its areas and technicians."""
        self._areas = set(known_areas)
        self._techs = set(known_technicians)

    def update(
        self, current: GrantFile, now: datetime, revoked: Mapping[str, str] | None = None
    ) -> tuple[tuple[Grant, ...], list[GrantRecord]]:
        """The grants active at `now`, and the records of what changed since the last call.

        `revoked` gives the reason (e.g. the server's revocation) for grants that are gone;
        a grant that vanished without one was "removed from file".
        """
        records: list[GrantRecord] = []
        valid: dict[str, Grant] = {}
        for r in current.refused:
            key = (r.grant_id or f"#{r.index}", r.reason)
            if key not in self._refused:
                self._refused.add(key)
                records.append(GrantRecord("refused", key[0], reason=r.reason))
        for g in current.grants:
            problem = ""
            if g.area not in self._areas:
                problem = f"area {g.area!r} is not in the agreement"
            elif g.technician not in self._techs:
                problem = f"technician {g.technician!r} is not in the agreement"
            if problem:
                key = (g.id, problem)
                if key not in self._refused:
                    self._refused.add(key)
                    records.append(GrantRecord("refused", g.id, g.technician, g.area, problem))
                continue
            valid[g.id] = g
        for gid, old in list(self._applied.items()):
            if gid not in valid:
                del self._applied[gid]
                if gid not in self._expired:
                    why = (revoked or {}).get(gid, "removed from file")
                    records.append(GrantRecord("revoked", gid, old.technician, old.area, why))
        active: list[Grant] = []
        for g in valid.values():
            if g.end <= now:
                if g.id in self._applied and g.id not in self._expired:
                    records.append(GrantRecord("expired", g.id, g.technician, g.area, "ended"))
                self._expired.add(g.id)
                self._applied.pop(g.id, None)
                continue
            if g.id not in self._applied:
                why = "break-glass" if g.break_glass else f"ticket {g.ticket}".strip()
                until = f"until {g.end.isoformat()}"
                records.append(
                    GrantRecord("applied", g.id, g.technician, g.area, f"{why} {until}".strip())
                )
            self._applied[g.id] = g
            active.append(g)
        return tuple(active), records
