"""The draft s 26WK statement to the Commissioner, from an incident.

s 26WK(3): the identity and contact details of the entity; a description of the eligible
data breach; the kinds of information concerned; and recommendations about the steps
individuals should take in response. With the My Health Records flag, s 75 of the My
Health Records Act 2012 routes the notification to the System Operator as well.
"""

from __future__ import annotations

from server.incidents.model import Incident, State
from server.incidents.register import iso

# Recommended steps by kind of information, in plain words for the people affected.
_STEPS: dict[str, str] = {
    "health": "Be alert to contact that refers to your health details and that you did not "
    "expect; tell the practice if you receive any.",
    "medicare": "Check your Medicare claims history in your myGov account and report claims you "
    "do not recognise to Services Australia.",
    "dva": "Check your DVA services history and report anything you do not recognise to DVA.",
    "ndis": "Check your NDIS plan and payments in the myplace portal and report anything "
    "unusual to the NDIA.",
    "aged_care": "Check your aged-care services statements with your provider.",
    "tfn": "Contact the ATO about possible misuse of your tax file number and watch for "
    "unexpected ATO correspondence.",
    "hr": "Be alert to contact that uses details from your employment records.",
    "payroll": "Check your pay slips and bank deposits for changes you did not make.",
    "superannuation": "Check your superannuation account for changes you did not make.",
    "identity": "Consider a free credit report and a credit ban through a credit reporting "
    "body; IDCARE (1800 595 160) offers free identity-theft support.",
    "financial": "Watch your accounts for transactions you did not make.",
    "banking": "Tell your bank, and watch your accounts for transactions you did not make.",
    "contact": "Be wary of phone calls, emails and texts that use your name and ask for more "
    "details (phishing); do not click unexpected links.",
    "criminal_record": "Be alert to contact that refers to your records.",
    "biometric": "Contact the organisation that holds your biometric enrolment.",
    "genetic": "Be alert to contact that refers to your health or family history.",
}
_GENERAL = (
    "Be wary of unexpected contact about this matter; the practice will never ask for your "
    "password or bank details by phone or email."
)


def heading(inc: Incident) -> tuple[str, str]:
    """The statement's title and what it calls the breach, as the assessment decided it.

    Undecided: a draft about a suspected eligible breach; eligible: the s 26WK draft; not
    eligible or remediated (s 26WF): a record that says no statement is required.
    """
    outcome = None if inc.decision is None else inc.decision.outcome
    act = "(Privacy Act 1988 s 26WK)"
    if outcome is State.ELIGIBLE:
        return f"DRAFT statement about an eligible data breach {act} — {inc.label}", (
            "eligible data breach"
        )
    if outcome in (State.NOT_ELIGIBLE, State.REMEDIATED):
        why = (
            "remedial action was taken in time (s 26WF)"
            if outcome is State.REMEDIATED
            else "serious harm is not likely (s 26WG)"
        )
        return (
            f"NOT an eligible data breach — {inc.label}: assessed not eligible because {why}; "
            f"no statement to the Commissioner is required {act}. Kept as the record.",
            "data breach (assessed not eligible)",
        )
    return (
        f"DRAFT statement about a suspected eligible data breach {act} — {inc.label} "
        "(not yet assessed: the assessment decides whether a statement is required)",
        "suspected eligible data breach",
    )


def draft(inc: Incident) -> str:
    """The draft statement as plain text (to review before it is given)."""
    e = inc.entity
    title, noun = heading(inc)
    lines = [title, "", "1. Identity and contact details of the entity"]
    if e is None:
        lines.append(f"   Entity: client {inc.client} (no agreement was loaded when raised)")
    else:
        lines.append(f"   Entity: {e.name}" + (f" (ABN {e.abn})" if e.abn else ""))
        lines.append(
            f"   Contact: {e.contact_name}, {e.contact_email}, {e.contact_phone}".rstrip(", ")
        )
    lines += [
        "",
        f"2. Description of the {noun}",
        f"   {inc.summary}.",
        f"   First evidence: {iso(inc.first_unix)}; latest evidence: {iso(inc.last_unix)}.",
        f"   The entity became aware on {iso(inc.aware_unix)} (assessment due "
        f"{iso(inc.due_unix)}).",
        f"   Areas of the system: {', '.join(inc.areas) or 'not specific to an area'}; "
        f"{inc.files} distinct file(s); about {inc.individuals} individual(s) affected "
        "(the agreement's per-file estimate).",
    ]
    if inc.containment:
        lines.append("   Steps taken to contain it:")
        lines += [f"   - {iso(c.at_unix)} {c.step}" for c in inc.containment]
    if inc.decision is not None:
        lines.append(f"   Assessment: {' '.join(inc.decision.reasons)}")
    lines += [
        "",
        "3. Kinds of information concerned",
        f"   {', '.join(inc.kinds) if inc.kinds else 'to be confirmed by the assessment'}",
        "",
        "4. Recommended steps for individuals",
    ]
    lines += [f"   - {_STEPS[k]}" for k in inc.kinds if k in _STEPS]
    lines.append(f"   - {_GENERAL}")
    if inc.my_health_records:
        lines += [
            "",
            "My Health Records: this breach may involve information in a My Health Record. "
            "Under s 75 of the My Health Records Act 2012 it is notified to the System "
            "Operator (the Australian Digital Health Agency) as well as the Commissioner.",
        ]
    return "\n".join(lines) + "\n"
