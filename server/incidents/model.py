"""The incident: a possible breach, its evidence summary, the s 26WH clock and its assessment."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

DAY_S = 86_400
ASSESSMENT_DAYS = 30  # s 26WH(2): take all reasonable steps to finish within 30 days


class State(enum.StrEnum):
    """Where the assessment stands."""

    OPEN = "open"
    ASSESSING = "assessing"
    NOT_ELIGIBLE = "not_eligible"
    REMEDIATED = "remediated"  # s 26WF: remedial action means it is not an eligible breach
    ELIGIBLE = "eligible"
    STATEMENT_PREPARED = "statement_prepared"
    INDIVIDUALS_NOTIFIED = "individuals_notified"
    CLOSED = "closed"


UNDECIDED = frozenset({State.OPEN, State.ASSESSING})

# s 26WG: the matters to which regard must be had in deciding whether serious harm is likely.
FACTORS: dict[str, str] = {
    "kinds": "s 26WG(a) the kind or kinds of information",
    "sensitivity": "s 26WG(b) the sensitivity of the information",
    "security_measures": "s 26WG(c) whether the information is protected by security measures",
    "measures_overcome": "s 26WG(d) the likelihood that any of those measures could be overcome",
    "persons": "s 26WG(e) the persons who have obtained, or could obtain, the information",
    "circumvention": "s 26WG(f) the likelihood that those persons could circumvent a "
    "technology making the information unintelligible",
    "harm": "s 26WG(g) the nature of the harm",
    "other": "s 26WG(h) any other relevant matters",
}

# s 26WL(2): the three ways of notifying individuals.
NOTIFY_OPTIONS: dict[str, str] = {
    "all": "s 26WL(2)(a) notify each individual to whom the information relates",
    "at_risk": "s 26WL(2)(b) notify each individual who is at risk from the breach",
    "publish": "s 26WL(2)(c) publish the statement on the entity's website and publicise it",
}


@dataclass(frozen=True, slots=True)
class Entity:
    """The entity the breach concerns (the client), as its agreement named it when raised."""

    name: str
    abn: str | None = None
    contact_name: str = ""
    contact_email: str = ""
    contact_phone: str = ""


@dataclass(frozen=True, slots=True)
class Factor:
    """One s 26WG factor, with the assessor's reason."""

    key: str
    reason: str
    by: str
    at_unix: float


@dataclass(frozen=True, slots=True)
class Containment:
    """A containment or remedial step and when it was taken."""

    step: str
    at_unix: float
    by: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The assessment's decision: its outcome, who made it, and why."""

    outcome: State
    maker: str
    reasons: tuple[str, ...]
    at_unix: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what to an incident, and when."""

    at_unix: float
    actor: str
    action: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Incident:
    """A possible breach: one situation, its evidence summary and its assessment."""

    id: int
    rule: str
    client: str
    subject: str
    dedup_key: str
    summary: str
    aware_unix: float  # when the entity became aware (the server raised it)
    first_unix: float  # the first evidence's time
    last_unix: float  # the latest evidence's time (the dedup window runs from here)
    state: State = State.OPEN
    technician: str | None = None
    agent_id: str | None = None
    areas: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    files: int = 0
    individuals: int = 0
    evidence_count: int = 0
    entity: Entity | None = None
    my_health_records: bool = False
    factors: tuple[Factor, ...] = ()
    containment: tuple[Containment, ...] = ()
    decision: Decision | None = None
    statement_unix: float | None = None
    notification_option: str | None = None
    notified_unix: float | None = None
    closed_unix: float | None = None
    close_note: str = ""
    audit: tuple[AuditEntry, ...] = field(default=())

    @property
    def due_unix(self) -> float:
        """s 26WH due date: 30 days after the entity became aware."""
        return self.aware_unix + ASSESSMENT_DAYS * DAY_S

    @property
    def label(self) -> str:
        """The id as people write it."""
        return f"INC-{self.id:06d}"

    def overdue(self, now: float) -> bool:
        """True when the assessment is undecided past its s 26WH due date."""
        return self.state in UNDECIDED and now > self.due_unix

    def days_left(self, now: float) -> float:
        """Days until the due date (negative once overdue)."""
        return (self.due_unix - now) / DAY_S

    def assessment_json(self) -> dict[str, Any]:
        """The assessment's parts as JSON-ready data (stored in one column)."""
        return {
            "entity": None if self.entity is None else _entity_json(self.entity),
            "my_health_records": self.my_health_records,
            "factors": [[f.key, f.reason, f.by, f.at_unix] for f in self.factors],
            "containment": [[c.step, c.at_unix, c.by] for c in self.containment],
            "decision": None
            if self.decision is None
            else {
                "outcome": self.decision.outcome.value,
                "maker": self.decision.maker,
                "reasons": list(self.decision.reasons),
                "at_unix": self.decision.at_unix,
            },
            "statement_unix": self.statement_unix,
            "notification_option": self.notification_option,
            "notified_unix": self.notified_unix,
            "closed_unix": self.closed_unix,
            "close_note": self.close_note,
        }


def _entity_json(e: Entity) -> dict[str, Any]:
    return {
        "name": e.name,
        "abn": e.abn,
        "contact_name": e.contact_name,
        "contact_email": e.contact_email,
        "contact_phone": e.contact_phone,
    }


def assessment_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Incident constructor arguments from `Incident.assessment_json` output."""
    entity = data.get("entity")
    decision = data.get("decision")
    return {
        "entity": None if entity is None else Entity(**entity),
        "my_health_records": bool(data.get("my_health_records", False)),
        "factors": tuple(Factor(k, r, b, float(t)) for k, r, b, t in data.get("factors", [])),
        "containment": tuple(
            Containment(s, float(t), b) for s, t, b in data.get("containment", [])
        ),
        "decision": None
        if decision is None
        else Decision(
            State(decision["outcome"]),
            decision["maker"],
            tuple(decision["reasons"]),
            float(decision["at_unix"]),
        ),
        "statement_unix": data.get("statement_unix"),
        "notification_option": data.get("notification_option"),
        "notified_unix": data.get("notified_unix"),
        "closed_unix": data.get("closed_unix"),
        "close_note": data.get("close_note", ""),
    }
