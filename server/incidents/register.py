"""The breach register: every incident with the fields the clients' policies promise.

Date, description, information affected, number of individuals affected, response steps
and outcome, plus the s 26WH dates and the decisions. CSV or JSON.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence

from server.incidents.model import NOTIFY_OPTIONS, Incident

COLUMNS = (
    "id",
    "client",
    "date",
    "description",
    "information_affected",
    "individuals_affected",
    "response_steps",
    "outcome",
    "rule",
    "technician",
    "areas",
    "files",
    "evidence_events",
    "aware",
    "due",
    "overdue",
    "state",
    "decision",
    "decided_by",
    "decided",
    "decision_reasons",
    "my_health_records",
    "statement_prepared",
    "notification",
    "individuals_notified",
    "closed",
)


def iso(unix: float | None) -> str:
    """An instant as ISO 8601 UTC to the second ("" for none)."""
    if unix is None:
        return ""
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")


def outcome(inc: Incident) -> str:
    """The incident's outcome in words."""
    if inc.decision is None:
        return "under assessment" if inc.state == "assessing" else "not yet assessed"
    words = {
        "not_eligible": "not an eligible data breach",
        "remediated": "remedial action taken; not an eligible data breach (s 26WF)",
        "eligible": "eligible data breach",
    }[inc.decision.outcome]
    if inc.close_note:
        words += f"; closed: {inc.close_note}"
    return words


def row(inc: Incident, now: float) -> dict[str, str | int | bool]:
    """One register row."""
    d = inc.decision
    return {
        "id": inc.label,
        "client": inc.client,
        "date": iso(inc.first_unix),
        "description": inc.summary,
        "information_affected": "; ".join(inc.kinds),
        "individuals_affected": inc.individuals,
        "response_steps": " | ".join(f"{iso(c.at_unix)} {c.step}" for c in inc.containment),
        "outcome": outcome(inc),
        "rule": inc.rule,
        "technician": inc.technician or "",
        "areas": "; ".join(inc.areas),
        "files": inc.files,
        "evidence_events": inc.evidence_count,
        "aware": iso(inc.aware_unix),
        "due": iso(inc.due_unix),
        "overdue": inc.overdue(now),
        "state": inc.state.value,
        "decision": "" if d is None else d.outcome.value,
        "decided_by": "" if d is None else d.maker,
        "decided": "" if d is None else iso(d.at_unix),
        "decision_reasons": "" if d is None else " | ".join(d.reasons),
        "my_health_records": inc.my_health_records,
        "statement_prepared": iso(inc.statement_unix),
        "notification": NOTIFY_OPTIONS.get(inc.notification_option or "", ""),
        "individuals_notified": iso(inc.notified_unix),
        "closed": iso(inc.closed_unix),
    }


def to_csv(incidents: Sequence[Incident], now: float) -> str:
    """The register as CSV with a header row (COLUMNS)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for inc in incidents:
        writer.writerow(row(inc, now))
    return out.getvalue()


def to_json(incidents: Sequence[Incident], now: float) -> str:
    """The register as a JSON array of objects (COLUMNS as keys)."""
    return json.dumps([row(inc, now) for inc in incidents], indent=2) + "\n"
