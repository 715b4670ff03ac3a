"""Compile a validated agreement once into lookup tables that answer in microseconds.

The compiled form holds only plain data (frozen dataclasses, tuples, dicts, the path
trie), never the pydantic models, and this module does not import pydantic: a process
can receive a `CompiledAgreement` another process validated and compiled
(`policies.isolated`) and decide with it without loading pydantic or ruamel.yaml. There,
`agreement` (the validated model) is not available; everything decisions need is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from policies.decide import decide as _decide
from policies.decide import normalise_path
from policies.decide import stable_until as _stable_until
from policies.durations import format_duration
from policies.errors import PolicyError
from policies.globs import literal_root, parse_glob, specificity
from policies.matcher import PathTrie
from policies.model import DAYS, Action, Decision, Grant, Subject, SubjectKind, Verdict

if TYPE_CHECKING:
    from policies.schema import Agreement, JitRule


@dataclass(frozen=True, slots=True)
class AreaMatch:
    """The sensitive area a path falls in, what it holds and about how many people per file."""

    area: str
    kinds: tuple[str, ...]
    individuals_estimate: int


@dataclass(frozen=True, slots=True)
class ScopeRule:
    """An in-scope rule, flattened: `technicians` None means every technician."""

    technicians: frozenset[str] | None
    actions: frozenset[Action]
    any_hours: bool


@dataclass(frozen=True, slots=True)
class _Hit:
    area: int
    rank: tuple[int, int, int]
    exclude: bool


@dataclass(frozen=True, slots=True)
class GrantLimit:
    """How far a just-in-time rule (or break-glass) lets a grant go; `areas` and
    `technicians` None mean every one."""

    areas: frozenset[str] | None
    technicians: frozenset[str] | None
    actions: frozenset[Action]
    max_duration: timedelta

    def allows(self, technician: str, area: str, action: Action) -> bool:
        """True when this rule covers `technician` doing `action` in `area`."""
        return (
            (self.areas is None or area in self.areas)
            and (self.technicians is None or technician in self.technicians)
            and action in self.actions
        )


_MINUTE = timedelta(minutes=1)
_MICROSECOND = timedelta(microseconds=1)
_ZERO = timedelta(0)


# Directories whose files' area is kept (a walk over a large tree starts afresh when
# full: a few hundred kB at most, within the agent's memory goal).
DIR_CACHE_LIMIT = 4096
_UNKNOWN = AreaMatch("", (), -1)  # not in that cache (None there means no area)
CLASSIFIED_LIMIT = 1024  # Subject objects whose kind is kept
_NOT_PICKLED = ("_agreement", "decision_cache", "_last_hours", "_area_by_dir", "_classified")


def _refs(refs: Sequence[str]) -> frozenset[str] | None:
    return None if "*" in refs else frozenset(refs)


_MAPPINGS = ("technician_accounts", "principal_accounts", "scope")


class CompiledAgreement:
    """An agreement ready to decide: account maps, the area trie, rules indexed by area."""

    def __init__(self, agreement: Agreement) -> None:
        self._agreement: Agreement | None = agreement
        self.client: str = agreement.client.id
        self.version: str = agreement.version
        self.sha256: str = agreement.sha256
        self.timezone: ZoneInfo = agreement.timezone
        self.area_ids: tuple[str, ...] = tuple(a.id for a in agreement.areas)
        self.technician_ids: tuple[str, ...] = tuple(t.id for t in agreement.technicians)
        self.others = Verdict(agreement.others)
        self.technician_accounts: Mapping[str, str] = MappingProxyType(
            {acct: t.id for t in agreement.technicians for acct in t.accounts}
        )
        self.principal_accounts: Mapping[str, str] = MappingProxyType(
            {p.account: p.name for p in agreement.principals}
        )
        self._principal_exe = {p.name: p.exe for p in agreement.principals}
        self._areas = tuple(
            AreaMatch(a.id, tuple(a.kinds), a.individuals_per_file) for a in agreement.areas
        )
        self._trie: PathTrie[_Hit] = PathTrie()
        self._roots: list[tuple[str, str]] = []
        for index, area in enumerate(agreement.areas):
            for glob in area.paths:
                segments = parse_glob(glob)
                self._trie.add(segments, _Hit(index, specificity(segments), exclude=False))
                root = (area.id, literal_root(segments))
                if root not in self._roots:
                    self._roots.append(root)
            for glob in area.exclude:
                segments = parse_glob(glob)
                self._trie.add(segments, _Hit(index, specificity(segments), exclude=True))
        self.scope: Mapping[str, tuple[ScopeRule, ...]] = self._index_scope(agreement)
        self._jit = tuple(
            GrantLimit(_refs(r.areas), _refs(r.technicians), frozenset(r.actions), r.max_duration)
            for r in agreement.just_in_time
        )
        glass = agreement.break_glass
        self.break_glass: GrantLimit | None = (
            GrantLimit(_refs(glass.areas), None, frozenset(glass.actions), glass.max_duration)
            if glass.allowed
            else None
        )
        self._hours: list[list[tuple[time, time]]] = [[] for _ in DAYS]
        for block in agreement.business_hours:
            for day in block.days:
                self._hours[DAYS.index(day)].append((block.start, block.end))
        self._holidays: frozenset[date] = frozenset(agreement.holidays)
        self._whole_minutes = all(
            t.second == 0 and t.microsecond == 0
            for day in self._hours
            for block in day
            for t in block
        )
        self._last_hours: tuple[datetime, bool] | None = None
        # Decisions that depend only on (rule, who, area, action) are immutable and reused;
        # their number is bounded by the agreement's size, and capped here besides.
        self.decision_cache: dict[tuple[str, ...], Decision] = {}
        # directory → the area of every file in it, where the names do not matter
        self._area_by_dir: dict[str, AreaMatch | None] = {}
        self._classified: dict[int, tuple[Subject, tuple[SubjectKind, str | None]]] = {}

    @property
    def agreement(self) -> Agreement:
        """The validated agreement this was compiled from.

        Raises PolicyError in a process that received the compiled form from another one
        (`policies.isolated`): the models stayed there; use the compiled attributes.
        """
        if self._agreement is None:
            raise PolicyError(
                f"agreement {self.version!r} was compiled in another process; its validated "
                "model is not kept here (expected the compiled attributes to be used)"
            )
        return self._agreement

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the pydantic model (and the caches): plain data only."""
        state = {k: getattr(self, k) for k in vars(self) if k not in _NOT_PICKLED}
        for k in _MAPPINGS:
            state[k] = dict(state[k])
        state["timezone"] = self.timezone.key  # by name: no pickled callable
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild from `__getstate__`'s plain data, without the model."""
        for k, v in state.items():
            setattr(self, k, MappingProxyType(v) if k in _MAPPINGS else v)
        self.timezone = ZoneInfo(state["timezone"])
        self._agreement = None
        self._last_hours = None
        self.decision_cache = {}
        self._area_by_dir = {}
        self._classified = {}

    @staticmethod
    def _index_scope(agreement: Agreement) -> Mapping[str, tuple[ScopeRule, ...]]:
        by_area: dict[str, list[ScopeRule]] = {a.id: [] for a in agreement.areas}
        for rule in agreement.in_scope:
            flat = ScopeRule(_refs(rule.technicians), frozenset(rule.actions), rule.hours == "any")
            targets = _refs(rule.areas)
            for area_id, rules in by_area.items():
                if targets is None or area_id in targets:
                    rules.append(flat)
        return MappingProxyType({k: tuple(v) for k, v in by_area.items()})

    def area_roots(self) -> list[tuple[str, str]]:
        """(area id, directory) pairs to mark: each path glob's literal prefix, in order."""
        return list(self._roots)

    def area_for(self, path: str) -> AreaMatch | None:
        """The area `path` (normalised here) falls in, or None outside every area.

        Where areas overlap, the most specific matching glob wins (more literal segments,
        then more segments, then fewer `**`), then the area listed first. An area's
        `exclude` globs take a path out of that area only.
        """
        return self.area_for_normalised(normalise_path(path))

    def area_for_normalised(self, path: str) -> AreaMatch | None:
        """`area_for` for a path already passed through `normalise_path`."""
        # Most directories' files all fall in one area whatever their names (the globs
        # below them end in `**`, or nothing matches there): their answer is kept by
        # directory, so a walk over new files matches each directory once.
        cut = path.rfind("/")
        by_dir = self._area_by_dir
        found = by_dir.get(path[:cut], _UNKNOWN) if cut > 0 else _UNKNOWN
        if found is not _UNKNOWN:
            return found
        hits, same_in_dir = self._trie.match_in_dir(path[1:].split("/") if len(path) > 1 else [])
        match = self._resolve(hits)
        if same_in_dir and cut > 0:
            if len(by_dir) >= DIR_CACHE_LIMIT:
                by_dir.clear()
            by_dir[path[:cut]] = match
        return match

    def _resolve(self, hits: list[_Hit]) -> AreaMatch | None:
        if not hits:
            return None
        if len(hits) == 1:
            only = hits[0]
            return None if only.exclude else self._areas[only.area]
        excluded = {h.area for h in hits if h.exclude}
        best: _Hit | None = None
        for hit in hits:
            if hit.exclude or hit.area in excluded:
                continue
            if (
                best is None
                or hit.rank > best.rank
                or (hit.rank == best.rank and hit.area < best.area)
            ):
                best = hit
        return None if best is None else self._areas[best.area]

    def classify(self, subject: Subject) -> tuple[SubjectKind, str | None]:
        """Technician (by login account first, then account), principal, or other."""
        # The gate asks about the same few Subject objects again and again: by identity
        # (the entry holds the subject, so its id is not reused while it is kept).
        known = self._classified.get(id(subject))
        if known is not None and known[0] is subject:
            return known[1]
        found = self._classify(subject)
        if len(self._classified) >= CLASSIFIED_LIMIT:
            self._classified.clear()
        self._classified[id(subject)] = (subject, found)
        return found

    def _classify(self, subject: Subject) -> tuple[SubjectKind, str | None]:
        tech = None
        if subject.login_account is not None:
            tech = self.technician_accounts.get(subject.login_account)
        if tech is None:
            tech = self.technician_accounts.get(subject.account)
        if tech is not None:
            return SubjectKind.TECHNICIAN, tech
        principal = self.principal_accounts.get(subject.account)
        if principal is not None:
            pin = self._principal_exe[principal]
            if pin is None or subject.exe == pin:
                return SubjectKind.PRINCIPAL, principal
        return SubjectKind.OTHER, None

    def pinned_exe(self, principal: str) -> str | None:
        """The executable a principal is pinned to, if any."""
        return self._principal_exe.get(principal)

    def in_business_hours(self, at: datetime) -> bool:
        """True when `at` (timezone-aware) falls in business hours in the agreement's zone."""
        last = self._last_hours
        if last is not None and last[0] == at and at.tzinfo is not None:
            return last[1]
        if at.tzinfo is None:
            raise ValueError(f"{at.isoformat()} has no time zone; expected an aware datetime")
        local = at.astimezone(self.timezone)
        if local.date() in self._holidays:
            result = False
        else:
            now = local.time().replace(tzinfo=None)
            result = any(start <= now < end for start, end in self._hours[local.weekday()])
        self._last_hours = (at, result)
        return result

    def hours_stable_until(self, at: datetime) -> datetime:
        """The instant until which `in_business_hours` answers as it does at `at`.

        Business hours are whole minutes of local time and holidays whole local days, so
        the answer can change only where a local minute starts: the end of `at`'s UTC
        minute, when the zone's offset is whole minutes and the same over that minute
        (true of every zone today). Otherwise `at` itself: nothing can be assumed.
        """
        if at.tzinfo is None:
            raise ValueError(f"{at.isoformat()} has no time zone; expected an aware datetime")
        utc = at.astimezone(UTC)
        end = utc.replace(second=0, microsecond=0) + _MINUTE
        offset = utc.astimezone(self.timezone).utcoffset()
        last = (end - _MICROSECOND).astimezone(self.timezone).utcoffset()
        if not self._whole_minutes or offset is None or offset != last or offset % _MINUTE != _ZERO:
            return at
        return end

    def jit_rules_for(self, technician: str, area: str, action: Action) -> list[JitRule]:
        """The just-in-time rules under which `technician` may request `action` in `area`.

        Raises PolicyError where the agreement was compiled in another process
        (`jit_limits_for` answers there).
        """
        rules = self.agreement.just_in_time
        return [
            rules[i] for i, limit in enumerate(self._jit) if limit.allows(technician, area, action)
        ]

    def jit_limits_for(self, technician: str, area: str, action: Action) -> list[GrantLimit]:
        """The limits of the just-in-time rules that cover `technician`, `area`, `action`."""
        return [limit for limit in self._jit if limit.allows(technician, area, action)]

    def grant_refusal(self, grant: Grant, action: Action) -> str | None:
        """Why the agreement does not honour `grant` for `action`, or None if it does.

        A grant can only give what the agreement lets be granted: a bad or stale grant
        never widens the agreement.
        """
        length = grant.end - grant.start
        if grant.break_glass:
            glass = self.break_glass
            if glass is None:
                return "the agreement allows no break-glass access"
            if glass.areas is not None and grant.area not in glass.areas:
                return f"break-glass does not extend to {grant.area}"
            if action not in glass.actions:
                return f"break-glass does not allow {action}"
            if length > glass.max_duration + timedelta(seconds=60):
                return (
                    f"it lasts {format_duration(length)}, longer than break-glass's "
                    f"{format_duration(glass.max_duration)}"
                )
            return None
        rules = self.jit_limits_for(grant.technician, grant.area, action)
        if not rules:
            return (
                f"the agreement lets no one request {action} on {grant.area} for {grant.technician}"
            )
        if all(length > r.max_duration + timedelta(seconds=60) for r in rules):
            longest = max(r.max_duration for r in rules)
            return (
                f"it lasts {format_duration(length)}, longer than the "
                f"{format_duration(longest)} the agreement allows"
            )
        return None

    def decide(
        self,
        subject: Subject,
        path: str,
        action: Action,
        at: datetime,
        grants: Sequence[Grant] = (),
    ) -> Decision:
        """Allow or deny `subject` doing `action` on `path` at `at`; see `policies.decide`."""
        return _decide(self, subject, path, action, at, grants)

    def decide_at_ns(
        self,
        subject: Subject,
        path: str,
        action: Action,
        now_ns: int,
        grants: Sequence[Grant] = (),
    ) -> Decision:
        """`decide` at `now_ns` (nanoseconds since the epoch), whose datetime is built only
        where the decision depends on the time: the gate asks before it answers."""
        return _decide(self, subject, path, action, now_ns, grants)

    def stable_until(
        self,
        subject: Subject,
        path: str,
        action: Action,
        at: datetime,
        grants: Sequence[Grant] = (),
    ) -> datetime | None:
        """Until when `decide` with these arguments keeps its answer (None: for good);
        see `policies.decide.stable_until`."""
        return _stable_until(self, subject, path, action, at, grants)


def compile_agreement(agreement: Agreement) -> CompiledAgreement:
    """Compile a validated agreement for fast, repeated decisions."""
    return CompiledAgreement(agreement)
