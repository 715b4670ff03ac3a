"""The possible-breach rules: pure functions over observations, the clock passed in.

`Rules.evaluate` looks at one stored event and returns the findings it makes (and updates
the explicit `RuleState`); the periodic checks (`silent_agents`, `heartbeat_findings`,
`integrity_findings`) take what the store knows and the time now. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policies.compile import CompiledAgreement
from server.detect import model as m
from server.detect.model import (
    AgentStatus,
    FileTouched,
    Finding,
    IntegrityNote,
    Observation,
    Thresholds,
)
from server.detect.state import RuleState, WindowFile

NANOS = 1_000_000_000
HAPPENED = frozenset({"allow", "observed"})
# Accesses the agreement allowed by an approval (a grant) or records separately (break-glass):
# they are neither out-of-hours findings nor counted towards a bulk read.
_APPROVED = frozenset({"grant", "break_glass"})
_REFUSED_RULES = frozenset({"out_of_scope", "outside_hours"})
_ROOT_UID = 0


@dataclass(frozen=True, slots=True)
class ClientView:
    """What the rules need from one client's compiled agreement."""

    client: str
    version: str
    thresholds: Thresholds
    area_kinds: Mapping[str, tuple[str, ...]]
    area_individuals: Mapping[str, int]
    agreement: CompiledAgreement | None = None

    @classmethod
    def of(cls, compiled: CompiledAgreement) -> ClientView:
        """Build the view of a compiled agreement."""
        detection = compiled.agreement.detection
        return cls(
            client=compiled.client,
            version=compiled.version,
            thresholds=Thresholds(
                bulk_files=detection.bulk_read.files,
                bulk_minutes=detection.bulk_read.minutes,
                heartbeat_silence_s=detection.heartbeat_silence.total_seconds(),
                clock_skew_s=detection.clock_skew.total_seconds(),
            ),
            area_kinds={a.id: tuple(a.kinds) for a in compiled.agreement.areas},
            area_individuals={a.id: a.individuals_per_file for a in compiled.agreement.areas},
            agreement=compiled,
        )

    def in_business_hours(self, unix_nanos: int) -> bool:
        """True when the instant falls in the agreement's business hours (its time zone)."""
        if self.agreement is None:
            return True
        at = dt.datetime.fromtimestamp(unix_nanos / NANOS, dt.UTC)
        return self.agreement.in_business_hours(at)

    def kinds(self, area: str | None, seen: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Kinds of information in `area`: what the event said, else the agreement's."""
        if seen:
            return seen
        return self.area_kinds.get(area or "", ())

    def individuals(self, area: str, seen: int) -> int:
        """Individuals per file in `area`: what the event said, else the agreement's."""
        return seen or self.area_individuals.get(area, 0)


DEFAULT_THRESHOLDS = Thresholds()


class Rules:
    """Evaluate events against every client's rules; the state is explicit and passed in."""

    def __init__(self, views: Mapping[str, ClientView], state: RuleState) -> None:
        self.views = views
        self.state = state

    def thresholds(self, client: str) -> Thresholds:
        """The client's thresholds, or the defaults for a client with no agreement loaded."""
        view = self.views.get(client)
        return DEFAULT_THRESHOLDS if view is None else view.thresholds

    def evaluate(self, obs: Observation) -> list[Finding]:
        """The findings one stored event makes (possibly none)."""
        kind = obs.kind
        if kind == "access":
            return self._access(obs)
        if kind == "grant":
            self._grant(obs)
            return []
        if kind in ("agreement", "started"):
            return self._agreement(obs)
        if kind in ("loss", "gate"):
            what = "lost journal events" if kind == "loss" else "the gate reported a fault"
            return [
                Finding(
                    m.INTEGRITY,
                    obs.client,
                    obs.agent_id,
                    obs.unix_nanos / NANOS,
                    f"agent {obs.agent_id} {what}: {obs.detail or kind}",
                    agent_id=obs.agent_id,
                    evidence=(obs.ref,),
                )
            ]
        return []

    # -- access events ------------------------------------------------------------------

    def _access(self, obs: Observation) -> list[Finding]:
        view = self.views.get(obs.client)
        tech, area, verdict, rule = obs.technician, obs.area, obs.verdict, obs.rule
        out: list[Finding] = []
        if tech is None:
            if area is not None and obs.principal is None and _unknown_admin(obs, view):
                who = obs.login_account or f"loginuid {obs.loginuid}"
                out.append(
                    self._finding(
                        m.UNKNOWN_ADMIN,
                        obs,
                        view,
                        who,
                        f"{who} (as {obs.account or 'root'}) is no technician or principal of "
                        f"the agreement and touched {area}",
                    )
                )
            return out
        if area is None:
            return out
        if rule == "outside_hours" or (
            verdict in HAPPENED
            and rule not in _APPROVED
            and rule not in _REFUSED_RULES
            and view is not None
            and not view.in_business_hours(obs.unix_nanos)
        ):
            did = "tried to" if verdict == "deny" else "did"
            out.append(
                self._finding(
                    m.OUT_OF_HOURS,
                    obs,
                    view,
                    tech,
                    f"{tech} {did} {obs.action or 'access'} {area} outside business hours",
                    area_key=False,
                )
            )
        elif verdict == "deny":
            out.append(
                self._finding(
                    m.DENIED,
                    obs,
                    view,
                    tech,
                    f"{tech} was denied {obs.action or 'access'} on {area} ({rule or 'no rule'})",
                )
            )
        elif verdict == "observed" and rule == "out_of_scope":
            out.append(
                self._finding(
                    m.OBSERVED,
                    obs,
                    view,
                    tech,
                    f"{tech} did {obs.action or 'access'} {area} without a grant (monitor mode)",
                )
            )
        if rule == "break_glass" and verdict in HAPPENED:
            out.append(
                self._finding(
                    m.BREAK_GLASS,
                    obs,
                    view,
                    tech,
                    f"{tech} used break-glass access on {area}",
                )
            )
        if obs.action == "read" and verdict in HAPPENED:
            out.extend(self._bulk(obs, view, tech, area))
        return out

    def _bulk(
        self, obs: Observation, view: ClientView | None, tech: str, area: str
    ) -> list[Finding]:
        if obs.rule == "grant" or self.state.has_grant(obs.client, tech, area):
            return []
        if obs.path is None:
            return []
        limits = view.thresholds if view is not None else DEFAULT_THRESHOLDS
        window = self.state.window(obs.client, tech)
        individuals = view.individuals(area, obs.individuals_estimate) if view else 0
        window.add(obs.agent_id, obs.path, WindowFile(obs.unix_nanos, area, obs.seq, individuals))
        window.evict(obs.unix_nanos - limits.bulk_minutes * 60 * NANOS)
        count = len(window.files)
        if count <= limits.bulk_files:
            window.fired = False
            return []
        files: tuple[FileTouched, ...]
        if window.fired:  # already open: this read adds to it
            files = (FileTouched(obs.agent_id, obs.path, area, individuals),)
        else:
            window.fired = True
            files = tuple(
                FileTouched(agent, path, f.area, f.individuals)
                for (agent, path), f in window.files.items()
            )
        evidence = tuple(
            (f.agent_id, window.files[(f.agent_id, f.path)].seq)
            for f in files
            if (f.agent_id, f.path) in window.files
        )
        areas = sorted({f.area for f in files})
        kinds = tuple(sorted({k for a in areas for k in (view.kinds(a) if view else ())}))
        return [
            Finding(
                m.BULK_READ,
                obs.client,
                tech,
                obs.unix_nanos / NANOS,
                f"{tech} read {count} distinct sensitive files within "
                f"{limits.bulk_minutes} minutes (threshold {limits.bulk_files})",
                technician=tech,
                agent_id=obs.agent_id,
                evidence=evidence,
                files=files,
                kinds=kinds or obs.kinds,
            )
        ]

    def _finding(
        self,
        rule: str,
        obs: Observation,
        view: ClientView | None,
        subject: str,
        summary: str,
        *,
        area_key: bool = True,
    ) -> Finding:
        area = obs.area
        files: tuple[FileTouched, ...] = ()
        if area is not None and obs.path is not None:
            each = view.individuals(area, obs.individuals_estimate) if view else 0
            files = (FileTouched(obs.agent_id, obs.path, area, each),)
        kinds = view.kinds(area, obs.kinds) if view else obs.kinds
        return Finding(
            rule,
            obs.client,
            subject,
            obs.unix_nanos / NANOS,
            summary,
            area=area if area_key else None,
            technician=obs.technician,
            agent_id=obs.agent_id,
            evidence=(obs.ref,),
            files=files,
            kinds=kinds,
        )

    # -- grants and agreements ------------------------------------------------------------

    def _grant(self, obs: Observation) -> None:
        if obs.technician is None or obs.area is None or obs.grant_id is None:
            return
        if obs.grant_kind == "applied":
            self.state.grant_applied(obs.client, obs.technician, obs.area, obs.grant_id)
        elif obs.grant_kind in ("expired", "revoked", "refused"):
            self.state.grant_ended(obs.client, obs.technician, obs.area, obs.grant_id)

    def _agreement(self, obs: Observation) -> list[Finding]:
        view = self.views.get(obs.client)
        version = obs.agreement_version
        if obs.agreement_accepted is False:
            summary = (
                f"agent {obs.agent_id} refused agreement {version or '?'} and keeps enforcing "
                "its previous one"
            )
        elif view is not None and version and version != view.version:
            summary = (
                f"agent {obs.agent_id} enforces agreement {version}; the client's current "
                f"agreement is {view.version}"
            )
        else:
            return []
        return [
            Finding(
                m.OLD_AGREEMENT,
                obs.client,
                obs.agent_id,
                obs.unix_nanos / NANOS,
                summary,
                agent_id=obs.agent_id,
                evidence=(obs.ref,),
            )
        ]

    # -- clock, liveness, integrity ---------------------------------------------------------

    def skew_finding(self, obs: Observation, received_unix: float) -> Finding | None:
        """An event dated ahead of its arrival by more than the bound (older is backlog)."""
        bound = self.thresholds(obs.client).clock_skew_s
        ahead = obs.unix_nanos / NANOS - received_unix
        if ahead <= bound:
            return None
        return Finding(
            m.CLOCK_SKEW,
            obs.client,
            obs.agent_id,
            received_unix,
            f"agent {obs.agent_id} dates events {ahead:.0f} s after the server received them "
            f"(bound {bound:.0f} s)",
            agent_id=obs.agent_id,
            evidence=(obs.ref,),
        )

    def heartbeat_findings(
        self,
        agent_id: str,
        client: str,
        heartbeat_unix: float,
        agreement_version: str,
        received_unix: float,
    ) -> list[Finding]:
        """A live heartbeat's clock against the server's, and the agreement it enforces."""
        out: list[Finding] = []
        bound = self.thresholds(client).clock_skew_s
        off = heartbeat_unix - received_unix
        if heartbeat_unix and abs(off) > bound:
            out.append(
                Finding(
                    m.CLOCK_SKEW,
                    client,
                    agent_id,
                    received_unix,
                    f"agent {agent_id}'s clock is {off:+.0f} s off the server's "
                    f"(bound {bound:.0f} s)",
                    agent_id=agent_id,
                )
            )
        view = self.views.get(client)
        if view is not None and agreement_version and agreement_version != view.version:
            out.append(
                Finding(
                    m.OLD_AGREEMENT,
                    client,
                    agent_id,
                    received_unix,
                    f"agent {agent_id} enforces agreement {agreement_version}; the client's "
                    f"current agreement is {view.version}",
                    agent_id=agent_id,
                )
            )
        return out

    def silent_agents(self, agents: Iterable[AgentStatus], now: float) -> list[Finding]:
        """Agents not heard from for longer than their client's heartbeat bound."""
        out: list[Finding] = []
        for agent in agents:
            if agent.revoked:
                continue
            last = agent.last_seen_unix if agent.last_seen_unix is not None else None
            since = last if last is not None else agent.enrolled_unix
            bound = self.thresholds(agent.client).heartbeat_silence_s
            if now - since <= bound:
                continue
            heard = "never heard from" if last is None else f"silent for {now - since:.0f} s"
            out.append(
                Finding(
                    m.AGENT_SILENT,
                    agent.client,
                    agent.agent_id,
                    now,
                    f"agent {agent.agent_id} is {heard} (bound {bound:.0f} s): the gate may "
                    "be down or the host cut off",
                    agent_id=agent.agent_id,
                )
            )
        return out

    def integrity_findings(self, notes: Iterable[IntegrityNote]) -> list[Finding]:
        """One finding per integrity note not yet looked at; advances the state's cursor."""
        out: list[Finding] = []
        for note in notes:
            if note.id <= self.state.integrity_cursor:
                continue
            self.state.advance_integrity(note.id)
            out.append(
                Finding(
                    m.INTEGRITY,
                    note.client,
                    note.agent_id,
                    note.at_unix,
                    f"evidence of agent {note.agent_id} failed verification ({note.kind}): "
                    f"{note.detail[:300]}",
                    agent_id=note.agent_id,
                )
            )
        return out


def _unknown_admin(obs: Observation, view: ClientView | None) -> bool:
    """Root (or uid 0) behind a login that the agreement names as no technician or principal."""
    if obs.loginuid is None or not (obs.uid == _ROOT_UID or obs.account == "root"):
        return False
    known = view.agreement if view is not None else None
    login = obs.login_account
    return (
        known is None
        or login is None
        or (login not in known.technician_accounts and login not in known.principal_accounts)
    )
