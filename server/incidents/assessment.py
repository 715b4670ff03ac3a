"""The assessment state machine (pure): each step checks the state, returns the new incident.

open → assessing → not_eligible | remediated (s 26WF) | eligible → statement_prepared →
individuals_notified → closed; not_eligible and remediated close directly. Every step
appends an audit entry naming who did it and when.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from server.incidents.errors import AssessmentInputError, TransitionError
from server.incidents.model import (
    FACTORS,
    NOTIFY_OPTIONS,
    UNDECIDED,
    AuditEntry,
    Containment,
    Decision,
    Factor,
    Incident,
    State,
)

TRANSITIONS: dict[State, frozenset[State]] = {
    State.OPEN: frozenset({State.ASSESSING}),
    State.ASSESSING: frozenset({State.NOT_ELIGIBLE, State.REMEDIATED, State.ELIGIBLE}),
    State.NOT_ELIGIBLE: frozenset({State.CLOSED}),
    State.REMEDIATED: frozenset({State.CLOSED}),
    State.ELIGIBLE: frozenset({State.STATEMENT_PREPARED}),
    State.STATEMENT_PREPARED: frozenset({State.INDIVIDUALS_NOTIFIED}),
    State.INDIVIDUALS_NOTIFIED: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}
OUTCOMES = frozenset({State.NOT_ELIGIBLE, State.REMEDIATED, State.ELIGIBLE})
MAX_TEXT = 2000


def can_move(current: State, target: State) -> bool:
    """True when the state machine allows `current` → `target`."""
    return target in TRANSITIONS[current]


def _move(inc: Incident, target: State) -> None:
    if not can_move(inc.state, target):
        allowed = ", ".join(sorted(TRANSITIONS[inc.state])) or "nothing (it is closed)"
        raise TransitionError(
            f"{inc.label} is {inc.state}; it cannot become {target} (from {inc.state} it may "
            f"become {allowed})",
            hint="`custodes incidents show ID` shows where the assessment stands",
        )


def _actor(actor: str) -> str:
    actor = actor.strip()
    if not actor:
        raise AssessmentInputError(
            "no one is named as doing this step; expected the person's name",
            hint="pass --by NAME",
        )
    return actor[:200]


def _text(what: str, text: str) -> str:
    text = text.strip()
    if not text:
        raise AssessmentInputError(f"{what} is empty; expected a sentence")
    if len(text) > MAX_TEXT:
        raise AssessmentInputError(f"{what} is {len(text)} characters; expected at most {MAX_TEXT}")
    return text


def _audit(inc: Incident, entry: AuditEntry) -> tuple[AuditEntry, ...]:
    return (*inc.audit, entry)


def assess(
    inc: Incident,
    actor: str,
    at: float,
    *,
    factors: Mapping[str, str] | None = None,
    containment: Sequence[tuple[str, float]] = (),
    my_health_records: bool | None = None,
) -> tuple[Incident, AuditEntry]:
    """Start or continue the assessment: record s 26WG factors, containment steps, the MHR flag.

    Factors may be recorded while undecided; containment steps until the incident is closed.
    Raises TransitionError or AssessmentInputError.
    """
    who = _actor(actor)
    factors = dict(factors or {})
    if inc.state is State.CLOSED:
        _move(inc, State.ASSESSING)
    if factors and inc.state not in UNDECIDED:
        raise TransitionError(
            f"{inc.label} was decided ({inc.state}); s 26WG factors belong to the assessment "
            "before its decision",
            hint="record later facts as containment steps",
        )
    unknown = sorted(set(factors) - set(FACTORS))
    if unknown:
        raise AssessmentInputError(
            f"unknown s 26WG factor(s) {unknown}; expected some of {sorted(FACTORS)}"
        )
    new_factors = [
        Factor(k, _text(f"the reason for factor {k}", r), who, at) for k, r in factors.items()
    ]
    steps = [Containment(_text("a containment step", s), float(t), who) for s, t in containment]
    state = State.ASSESSING if inc.state is State.OPEN else inc.state
    kept = tuple(f for f in inc.factors if f.key not in factors)
    parts = [f"factor {f.key}" for f in new_factors] + [f"containment: {c.step}" for c in steps]
    if my_health_records is not None and my_health_records != inc.my_health_records:
        parts.append(f"my_health_records={'yes' if my_health_records else 'no'}")
    if inc.state is State.OPEN:
        parts.insert(0, "assessment started")
    if not parts:
        raise AssessmentInputError(
            f"nothing to record for {inc.label}; expected a factor, a containment step or the "
            "My Health Records flag"
        )
    entry = AuditEntry(at, who, "assess", "; ".join(parts))
    return (
        dataclasses.replace(
            inc,
            state=state,
            factors=(*kept, *new_factors),
            containment=(*inc.containment, *steps),
            my_health_records=inc.my_health_records
            if my_health_records is None
            else my_health_records,
            audit=_audit(inc, entry),
        ),
        entry,
    )


def decide(
    inc: Incident, actor: str, at: float, outcome: State, reasons: Sequence[str]
) -> tuple[Incident, AuditEntry]:
    """Decide the assessment: not eligible, remediated (s 26WF) or eligible, with reasons.

    A decision needs at least one reason and one recorded s 26WG factor; `remediated`
    also needs a recorded containment step. Raises TransitionError or AssessmentInputError.
    """
    who = _actor(actor)
    if outcome not in OUTCOMES:
        raise AssessmentInputError(
            f"{outcome} is not a decision; expected one of {sorted(OUTCOMES)}"
        )
    _move(inc, outcome)
    why = tuple(_text("a reason", r) for r in reasons)
    if not why:
        raise AssessmentInputError(f"deciding {inc.label} needs a reason; none was given")
    if not inc.factors:
        raise AssessmentInputError(
            f"{inc.label} has no s 26WG factor recorded; expected the assessment to consider "
            "them before deciding",
            hint="record them with `custodes incidents assess ID --factor KEY=REASON`",
        )
    if outcome is State.REMEDIATED and not inc.containment:
        raise AssessmentInputError(
            f"{inc.label} has no remedial step recorded; s 26WF needs the action that "
            "prevented serious harm",
            hint="record it with `custodes incidents assess ID --containment STEP`",
        )
    entry = AuditEntry(at, who, "decide", f"{outcome}: " + " | ".join(why))
    return (
        dataclasses.replace(
            inc,
            state=outcome,
            decision=Decision(outcome, who, why, at),
            audit=_audit(inc, entry),
        ),
        entry,
    )


def prepare_statement(inc: Incident, actor: str, at: float) -> tuple[Incident, AuditEntry]:
    """Record that the s 26WK statement was prepared (and given to the Commissioner)."""
    who = _actor(actor)
    _move(inc, State.STATEMENT_PREPARED)
    to = (
        "Commissioner and the My Health Record System Operator"
        if inc.my_health_records
        else ("Commissioner")
    )
    entry = AuditEntry(at, who, "statement", f"s 26WK statement prepared for the {to}")
    return (
        dataclasses.replace(
            inc, state=State.STATEMENT_PREPARED, statement_unix=at, audit=_audit(inc, entry)
        ),
        entry,
    )


def notify_individuals(
    inc: Incident, actor: str, at: float, option: str
) -> tuple[Incident, AuditEntry]:
    """Record that individuals were notified, and under which s 26WL(2) option."""
    who = _actor(actor)
    if option not in NOTIFY_OPTIONS:
        raise AssessmentInputError(
            f"notification option {option!r} is unknown; expected one of {sorted(NOTIFY_OPTIONS)}"
        )
    _move(inc, State.INDIVIDUALS_NOTIFIED)
    entry = AuditEntry(at, who, "notify", NOTIFY_OPTIONS[option])
    return (
        dataclasses.replace(
            inc,
            state=State.INDIVIDUALS_NOTIFIED,
            notification_option=option,
            notified_unix=at,
            audit=_audit(inc, entry),
        ),
        entry,
    )


def close(inc: Incident, actor: str, at: float, note: str) -> tuple[Incident, AuditEntry]:
    """Close a decided (and, if eligible, notified) incident with an outcome note."""
    who = _actor(actor)
    _move(inc, State.CLOSED)
    text = _text("the closing note", note)
    entry = AuditEntry(at, who, "close", text)
    return (
        dataclasses.replace(
            inc, state=State.CLOSED, closed_unix=at, close_note=text, audit=_audit(inc, entry)
        ),
        entry,
    )
