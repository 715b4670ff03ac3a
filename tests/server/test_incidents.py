"""The assessment state machine, the register, the draft statement and the s 26WH clock."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable

import pytest

from server.detect.model import Finding
from server.incidents import assessment as a
from server.incidents import register, statement
from server.incidents.errors import AssessmentInputError, TransitionError
from server.incidents.model import DAY_S, FACTORS, Entity, Incident, State
from server.store import Store
from server.store.incidents import IncidentStore
from tests.server.conftest import agent_row, append, records
from tests.server.scenarios.harness import Run, scenario_files

T0 = 1_750_000_000.0
ENTITY = Entity(
    "Harbourside General Practice",
    "51824753556",
    "Dr Mei Lin Tran",
    "privacy@harbourside-gp.example",
    "+61 2 9000 0101",
)


def incident(state: State = State.OPEN, **changes: object) -> Incident:
    inc = Incident(
        id=7,
        rule="bulk_read",
        client="harbourside-gp",
        subject="akaur",
        dedup_key="bulk_read|harbourside-gp|akaur|",
        summary="akaur read 60 distinct sensitive files within 10 minutes (threshold 50)",
        aware_unix=T0,
        first_unix=T0 - 600,
        last_unix=T0 - 5,
        state=state,
        technician="akaur",
        areas=("database-backups",),
        kinds=("health", "medicare", "contact"),
        files=60,
        individuals=720_000,
        evidence_count=60,
        entity=ENTITY,
    )
    return dataclasses.replace(inc, **changes)  # type: ignore[arg-type]


def assessed() -> Incident:
    inc, _ = a.assess(
        incident(),
        "privacy officer",
        T0 + 60,
        factors={"kinds": "health and Medicare numbers", "persons": "an MSP technician"},
        containment=[("account akaur-admin disabled", T0 + 30)],
    )
    return inc


# Every step, by the state it needs: (name, step).
STEPS: dict[str, Callable[[Incident], tuple[Incident, object]]] = {
    "assess": lambda i: a.assess(i, "po", T0 + 90, containment=[("key rotated", T0 + 90)]),
    "decide_not_eligible": lambda i: a.decide(i, "po", T0 + 100, State.NOT_ELIGIBLE, ["no harm"]),
    "decide_remediated": lambda i: a.decide(i, "po", T0 + 100, State.REMEDIATED, ["recovered"]),
    "decide_eligible": lambda i: a.decide(i, "po", T0 + 100, State.ELIGIBLE, ["serious harm"]),
    "statement": lambda i: a.prepare_statement(i, "po", T0 + 200),
    "notify": lambda i: a.notify_individuals(i, "po", T0 + 300, "all"),
    "close": lambda i: a.close(i, "po", T0 + 400, "done"),
}
LEGAL = {
    State.OPEN: {"assess"},
    State.ASSESSING: {"assess", "decide_not_eligible", "decide_remediated", "decide_eligible"},
    State.NOT_ELIGIBLE: {"assess", "close"},
    State.REMEDIATED: {"assess", "close"},
    State.ELIGIBLE: {"assess", "statement"},
    State.STATEMENT_PREPARED: {"assess", "notify"},
    State.INDIVIDUALS_NOTIFIED: {"assess", "close"},
    State.CLOSED: set(),
}


def in_state(state: State) -> Incident:
    base = assessed()
    return incident(
        state,
        factors=base.factors,
        containment=base.containment,
        decision=None,
    )


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("step", sorted(STEPS))
def test_transition_table(state: State, step: str) -> None:
    inc = in_state(state)
    if step in LEGAL[state]:
        after, entry = STEPS[step](inc)
        assert isinstance(after, Incident)
        assert after.audit[-1] == entry
        assert len(after.audit) == len(inc.audit) + 1
    else:
        with pytest.raises(TransitionError, match=str(state)):
            STEPS[step](inc)


def test_whole_eligible_path_keeps_an_audit_trail() -> None:
    inc = assessed()
    inc, _ = a.decide(inc, "Dr Tran", T0 + 100, State.ELIGIBLE, ["health records of many"])
    inc, _ = a.prepare_statement(inc, "Dr Tran", T0 + 200)
    inc, _ = a.notify_individuals(inc, "Dr Tran", T0 + 300, "at_risk")
    inc, _ = a.close(inc, "Dr Tran", T0 + 400, "notified; access model changed")
    assert [e.action for e in inc.audit] == ["assess", "decide", "statement", "notify", "close"]
    assert [e.actor for e in inc.audit] == ["privacy officer"] + ["Dr Tran"] * 4
    assert inc.decision is not None
    assert inc.decision.maker == "Dr Tran"
    assert inc.notification_option == "at_risk"
    assert inc.state is State.CLOSED
    assert inc.closed_unix == T0 + 400


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (lambda i: a.decide(i, "po", T0, State.ELIGIBLE, []), "needs a reason"),
        (lambda i: a.decide(i, "po", T0, State.ELIGIBLE, ["  "]), "empty"),
        (lambda i: a.decide(i, "", T0, State.ELIGIBLE, ["x"]), "no one is named"),
        (lambda i: a.decide(i, "po", T0, State.CLOSED, ["x"]), "not a decision"),
        (lambda i: a.assess(i, "po", T0, factors={"mood": "bad"}), "unknown s 26WG"),
        (lambda i: a.assess(i, "po", T0), "nothing to record"),
        (lambda i: a.assess(i, "po", T0, factors={"harm": "x" * 3000}), "at most"),
    ],
)
def test_bad_assessment_input_is_refused(step: Callable[[Incident], object], message: str) -> None:
    with pytest.raises(AssessmentInputError, match=message):
        step(assessed())


def test_decision_needs_factors_and_remediation_needs_a_step() -> None:
    bare, _ = a.assess(incident(), "po", T0, my_health_records=True)
    with pytest.raises(AssessmentInputError, match="no s 26WG factor"):
        a.decide(bare, "po", T0, State.NOT_ELIGIBLE, ["fine"])
    factored, _ = a.assess(bare, "po", T0, factors={"harm": "none likely"})
    with pytest.raises(AssessmentInputError, match="remedial step"):
        a.decide(factored, "po", T0, State.REMEDIATED, ["fixed"])
    with pytest.raises(AssessmentInputError, match="unknown"):
        a.notify_individuals(in_state(State.STATEMENT_PREPARED), "po", T0, "carrier pigeon")


def test_due_date_is_thirty_days_after_awareness_and_overdue_is_flagged() -> None:
    inc = incident()
    assert inc.due_unix == T0 + 30 * DAY_S
    assert not inc.overdue(T0 + 30 * DAY_S)
    assert inc.overdue(T0 + 30 * DAY_S + 1)
    assert assessed().overdue(T0 + 31 * DAY_S)
    decided, _ = a.decide(assessed(), "po", T0, State.NOT_ELIGIBLE, ["no harm"])
    assert not decided.overdue(T0 + 31 * DAY_S)
    assert register.row(inc, T0 + 31 * DAY_S)["overdue"] is True


def test_register_csv_has_the_promised_columns() -> None:
    decided, _ = a.decide(assessed(), "Dr Tran", T0 + 100, State.REMEDIATED, ["recovered"])
    text = register.to_csv([incident(), decided], T0 + DAY_S)
    rows = list(csv.DictReader(io.StringIO(text)))
    promised = {
        "date",
        "description",
        "information_affected",
        "individuals_affected",
        "response_steps",
        "outcome",
        "aware",
        "due",
        "decision",
        "decided_by",
        "decided",
    }
    assert promised <= set(rows[0])
    assert tuple(rows[0]) == register.COLUMNS
    assert rows[0]["individuals_affected"] == "720000"
    assert rows[0]["information_affected"] == "health; medicare; contact"
    assert rows[0]["outcome"] == "not yet assessed"
    assert "account akaur-admin disabled" in rows[1]["response_steps"]
    assert rows[1]["outcome"].startswith("remedial action taken")
    assert rows[1]["decided_by"] == "Dr Tran"
    data = json.loads(register.to_json([decided], T0))
    assert data[0]["decision"] == "remediated"


def test_statement_has_the_parts_s26wk_requires() -> None:
    text = statement.draft(incident(my_health_records=True))
    for part in (
        "Identity and contact details",
        "Harbourside General Practice",
        "ABN 51824753556",
        "privacy@harbourside-gp.example",
        "Description of the suspected eligible data breach",
        "akaur read 60 distinct",
        "Kinds of information concerned",
        "health, medicare, contact",
        "Recommended steps for individuals",
        "Medicare claims history",
        "System Operator",
    ):
        assert part in text, part
    assert "System Operator" not in statement.draft(incident())


@pytest.mark.parametrize(
    ("outcome", "title", "section"),
    [
        (None, "DRAFT statement about a suspected eligible data breach", "suspected eligible"),
        (State.ELIGIBLE, "DRAFT statement about an eligible data breach", "eligible data breach"),
        (State.NOT_ELIGIBLE, "NOT an eligible data breach", "data breach (assessed not"),
        (State.REMEDIATED, "NOT an eligible data breach", "data breach (assessed not"),
    ],
)
def test_statement_heading_follows_the_decision(
    outcome: State | None, title: str, section: str
) -> None:
    inc = assessed()
    if outcome is not None:
        inc, _ = a.decide(inc, "Dr Tran", T0 + 100, outcome, ["the reason"])
    first, *rest = statement.draft(inc).splitlines()
    assert first.startswith(title)
    assert f"2. Description of the {section}" in "\n".join(rest)
    if outcome in (State.NOT_ELIGIBLE, State.REMEDIATED):
        assert "no statement to the Commissioner is required" in first
        assert "eligible data breach" not in first.replace("NOT an eligible data breach", "")
    if outcome is State.REMEDIATED:
        assert "s 26WF" in first


def test_statement_of_a_closed_not_eligible_incident_still_says_not_eligible() -> None:
    inc, _ = a.decide(assessed(), "Dr Tran", T0 + 100, State.NOT_ELIGIBLE, ["no harm"])
    inc, _ = a.close(inc, "Dr Tran", T0 + 400, "done")
    assert statement.draft(inc).startswith("NOT an eligible data breach")


def test_factor_catalogue_is_s26wg() -> None:
    assert len(FACTORS) == 8
    assert all(v.startswith("s 26WG(") for v in FACTORS.values())


def test_steps_are_stored_with_their_audit_trail_and_stale_steps_refused(store: Store) -> None:
    run = Run.prepare(next(p for p in scenario_files() if p.stem == "break_glass"), store)
    detector = run.play(run.detector())
    book = IncidentStore(store)
    (inc,) = book.incidents()
    assert [e.action for e in inc.audit] == []  # listing leaves the trail out
    inc = book.get(inc.id)
    assert [e.action for e in inc.audit] == ["opened"]
    after, entry = a.assess(inc, "po", T0, factors={"harm": "low"}, my_health_records=True)
    stored = book.save_step(inc, after, entry)
    assert stored.state is State.ASSESSING
    assert stored.my_health_records
    assert [e.action for e in stored.audit] == ["opened", "assess"]
    with pytest.raises(Exception, match="changed while"):
        book.save_step(inc, after, entry)
    assert len(book.evidence(inc.id)) == 3
    assert detector.incidents.get(inc.id).factors[0].reason == "low"


@pytest.mark.parametrize("limit", [1, 7, 8, 300])
def test_evidence_records_are_the_linked_events_in_order_read_at_once(
    store: Store, limit: int
) -> None:
    for agent_id in ("clinic-02", "clinic-01"):
        store.add_agent(agent_row(agent_id))
        append(store, records(agent_id, 0, 8))
    links = [("clinic-02", 3), ("clinic-01", 7), ("clinic-01", 99), ("clinic-02", 0)]
    links += [("clinic-01", s) for s in range(0, 6)]  # 99: no such event stored (pruned)
    book = IncidentStore(store)
    finding = Finding("denied_out_of_scope", "clinic", "tess", T0, "case", evidence=tuple(links))
    [change] = book.commit([finding], now=T0, window_s=60, state_rows={}, cursors={}, entities={})
    incident_id = change.incident.id
    # what the incident page read before, one query per link
    one_by_one = [
        r
        for a_id, seq in book.evidence(incident_id, limit)
        for r in store.records(a_id, seq, seq + 1)
    ]
    assert book.evidence_records(incident_id, limit) == one_by_one
    assert len(one_by_one) == min(limit, len(links)) - (limit > 7)  # seq 99 left out
