"""The decision: who the subject is, which area the path is in, what the agreement says.

Pure: no clock, no I/O. `at` is passed in and must be timezone-aware.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from policies.model import Action, Decision, Grant, Subject, SubjectKind, Verdict

if TYPE_CHECKING:
    from policies.compile import CompiledAgreement


def normalise_path(path: str) -> str:
    """Collapse "//", resolve "." and ".." lexically, strip a trailing "/"; always absolute."""
    if (
        path.startswith("/")
        and "//" not in path
        and "/." not in path
        and (len(path) == 1 or not path.endswith("/"))
    ):
        return path
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    return "/" + "/".join(parts)


def decide(  # noqa: PLR0917 - the signature the gate and server code against
    compiled: CompiledAgreement,
    subject: Subject,
    path: str,
    action: Action,
    at: datetime,
    grants: Sequence[Grant] = (),
) -> Decision:
    """Allow or deny `subject` doing `action` on `path` at `at`, with the reason why.

    Technicians: outside every area → allow; in scope (and in hours where the rule says
    so) → allow; covered by a grant the agreement honours → allow; else deny. Principals
    are allowed; other subjects get the agreement's `others` verdict.
    """
    path = normalise_path(path)
    kind, name = compiled.classify(subject)
    match = compiled.area_for(path)
    area = match.area if match is not None else None
    kinds = match.kinds if match is not None else ()
    people = match.individuals_estimate if match is not None else 0

    if kind is SubjectKind.PRINCIPAL:
        return Decision(
            Verdict.ALLOW,
            f"{name} is a service principal of the agreement and always allowed",
            "principal",
            kind,
            principal=name,
            area=area,
            kinds=kinds,
            individuals_estimate=people,
        )
    if kind is SubjectKind.OTHER:
        verdict = Verdict(compiled.agreement.others)
        who = subject.account
        pin_note = ""
        principal = compiled.principal_accounts.get(subject.account)
        if principal is not None:
            pin_note = (
                f" ({subject.account} belongs to principal {principal}, but only when running"
                f" {compiled.pinned_exe(principal)}, not {subject.exe or 'an unknown program'})"
            )
        return Decision(
            verdict,
            f"{who} is not a technician; the agreement {verdict}s its other users{pin_note}",
            "other_subject",
            kind,
            area=area,
            kinds=kinds,
            individuals_estimate=people,
        )

    tech = name
    if match is None:
        return Decision(
            Verdict.ALLOW,
            f"{tech} is outside every sensitive area",
            "outside_areas",
            kind,
            technician=tech,
        )

    outside_hours = False
    for rule in compiled.scope[match.area]:
        if action in rule.actions and (rule.technicians is None or tech in rule.technicians):
            if rule.any_hours or compiled.in_business_hours(at):
                return Decision(
                    Verdict.ALLOW,
                    f"{tech} may {action} {area} without a grant (in scope)",
                    "in_scope",
                    kind,
                    technician=tech,
                    area=area,
                    kinds=kinds,
                    individuals_estimate=people,
                )
            outside_hours = True

    refused = ""
    for grant in grants:
        if grant.covers(tech or "", match.area, action, at):
            why_not = compiled.grant_refusal(grant, action)
            if why_not is not None:
                refused = f"grant {grant.id} is not honoured: {why_not}"
                continue
            until = grant.end.astimezone(compiled.timezone).isoformat(timespec="minutes")
            rule_name = "break_glass" if grant.break_glass else "grant"
            label = "break-glass grant" if grant.break_glass else "grant"
            return Decision(
                Verdict.ALLOW,
                f"{tech} may {action} {area} under {label} {grant.id} until {until}",
                rule_name,
                kind,
                technician=tech,
                area=area,
                kinds=kinds,
                individuals_estimate=people,
                grant_id=grant.id,
            )

    if outside_hours:
        local = at.astimezone(compiled.timezone)
        reason = (
            f"{tech} may {action} {area} only in business hours; it is "
            f"{local:%a %H:%M} {compiled.timezone.key}, and {refused or 'no grant is active'}"
        )
        rule_name = "outside_hours"
    else:
        reason = f"{tech} may {action} {area} only with a grant; {refused or 'none is active'}"
        if not refused and not _grantable(compiled, tech or "", match.area, action):
            reason = (
                f"{tech} may not {action} {area}: the agreement allows it neither in scope "
                "nor by just-in-time grant"
            )
        rule_name = "out_of_scope"
    return Decision(
        Verdict.DENY,
        reason,
        rule_name,
        kind,
        technician=tech,
        area=area,
        kinds=kinds,
        individuals_estimate=people,
    )


def _grantable(compiled: CompiledAgreement, tech: str, area: str, action: Action) -> bool:
    if compiled.jit_rules_for(tech, area, action):
        return True
    glass = compiled.agreement.break_glass
    return glass.allowed and ("*" in glass.areas or area in glass.areas) and action in glass.actions
