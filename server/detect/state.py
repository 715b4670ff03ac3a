"""The rules' explicit state: bulk-read windows and active grants, serialisable per key.

Each entry is stored under its own key (`bulk|client|technician`, `grant|client|technician|
area`, `integrity`) so a commit persists only what changed (`take_dirty`), and a restart
rebuilds the same state from the stored rows (`RuleState.load`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

INTEGRITY_KEY = "integrity"


@dataclass(slots=True)
class WindowFile:
    """One distinct file in a bulk-read window: when it was last read and by which event."""

    unix_nanos: int
    area: str
    seq: int
    individuals: int


@dataclass(slots=True)
class BulkWindow:
    """Distinct sensitive files one technician read recently, oldest first.

    Keys are (agent_id, path): the same path on two hosts is two files. `fired` is True
    while the window is over the threshold (its incident is already open).
    """

    files: dict[tuple[str, str], WindowFile] = field(default_factory=dict)
    fired: bool = False

    def add(self, agent_id: str, path: str, entry: WindowFile) -> None:
        """Record a read; a re-read moves the file to the young end."""
        key = (agent_id, path)
        self.files.pop(key, None)
        self.files[key] = entry

    def evict(self, older_than_nanos: int) -> None:
        """Forget files last read before `older_than_nanos` (dicts keep insertion order)."""
        files = self.files
        while files:
            key = next(iter(files))
            if files[key].unix_nanos >= older_than_nanos:
                break
            del files[key]

    def to_json(self) -> str:
        """The window as JSON text."""
        rows = [
            [agent, path, f.unix_nanos, f.area, f.seq, f.individuals]
            for (agent, path), f in self.files.items()
        ]
        return json.dumps({"fired": self.fired, "files": rows}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BulkWindow:
        """Rebuild a window from `to_json` text."""
        data = json.loads(text)
        window = cls(fired=bool(data["fired"]))
        for agent, path, nanos, area, seq, individuals in data["files"]:
            window.files[(str(agent), str(path))] = WindowFile(
                int(nanos), str(area), int(seq), int(individuals)
            )
        return window


@dataclass(slots=True)
class RuleState:
    """Everything the rules remember between events, with the keys changed since last saved."""

    bulk: dict[str, BulkWindow] = field(default_factory=dict)
    grants: dict[str, set[str]] = field(default_factory=dict)
    integrity_cursor: int = 0
    _dirty: set[str] = field(default_factory=set)

    @staticmethod
    def bulk_key(client: str, technician: str) -> str:
        """State key of a technician's bulk-read window."""
        return f"bulk|{client}|{technician}"

    @staticmethod
    def grant_key(client: str, technician: str, area: str) -> str:
        """State key of a technician's active grants on an area."""
        return f"grant|{client}|{technician}|{area}"

    def window(self, client: str, technician: str) -> BulkWindow:
        """The technician's window (created empty), marked as changed."""
        key = self.bulk_key(client, technician)
        self._dirty.add(key)
        found = self.bulk.get(key)
        if found is None:
            found = self.bulk[key] = BulkWindow()
        return found

    def grant_applied(self, client: str, technician: str, area: str, grant_id: str) -> None:
        """A grant became active on the host."""
        key = self.grant_key(client, technician, area)
        self.grants.setdefault(key, set()).add(grant_id)
        self._dirty.add(key)

    def grant_ended(self, client: str, technician: str, area: str, grant_id: str) -> None:
        """A grant expired, was revoked or refused."""
        key = self.grant_key(client, technician, area)
        active = self.grants.get(key)
        if active is not None:
            active.discard(grant_id)
            if not active:
                del self.grants[key]
        self._dirty.add(key)

    def has_grant(self, client: str, technician: str, area: str) -> bool:
        """True when some grant of the technician on the area is active."""
        return bool(self.grants.get(self.grant_key(client, technician, area)))

    def advance_integrity(self, last_id: int) -> None:
        """Integrity findings up to `last_id` have been looked at."""
        if last_id > self.integrity_cursor:
            self.integrity_cursor = last_id
            self._dirty.add(INTEGRITY_KEY)

    @property
    def dirty(self) -> bool:
        """True when some entry changed since `take_dirty`."""
        return bool(self._dirty)

    def take_dirty(self) -> dict[str, str | None]:
        """Changed entries as key → JSON text (None: delete), and forget they changed."""
        out: dict[str, str | None] = {}
        for key in self._dirty:
            if key.startswith("bulk|"):
                window = self.bulk.get(key)
                if window is not None and not window.files:
                    del self.bulk[key]
                    window = None
                out[key] = None if window is None else window.to_json()
            elif key.startswith("grant|"):
                active = self.grants.get(key)
                out[key] = None if not active else json.dumps(sorted(active))
            elif key == INTEGRITY_KEY:
                out[key] = json.dumps(self.integrity_cursor)
        self._dirty.clear()
        return out

    @classmethod
    def load(cls, rows: Mapping[str, str]) -> RuleState:
        """Rebuild the state from stored rows (key → JSON text)."""
        state = cls()
        for key, text in rows.items():
            if key.startswith("bulk|"):
                state.bulk[key] = BulkWindow.from_json(text)
            elif key.startswith("grant|"):
                state.grants[key] = {str(g) for g in json.loads(text)}
            elif key == INTEGRITY_KEY:
                state.integrity_cursor = int(json.loads(text))
        return state

    def snapshot(self) -> dict[str, str]:
        """Every entry as key → JSON text (for tests and debugging)."""
        rows = {k: w.to_json() for k, w in self.bulk.items() if w.files}
        rows.update({k: json.dumps(sorted(v)) for k, v in self.grants.items() if v})
        if self.integrity_cursor:
            rows[INTEGRITY_KEY] = json.dumps(self.integrity_cursor)
        return rows
