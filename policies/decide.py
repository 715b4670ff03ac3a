"""The decision: who the subject is, which area the path is in, what the agreement says.

Pure: no clock, no I/O. `at` is passed in: timezone-aware, or nanoseconds since the epoch.
Decisions that depend only on the rule, the subject's name, the area and the action are
built once and reused (they are frozen); those naming a time or a grant are built each time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from policies.model import Action, Decision, Grant, Subject, SubjectKind, Verdict

if TYPE_CHECKING:
    from policies.compile import AreaMatch, CompiledAgreement

CACHE_LIMIT = 100_000
_EPOCH = datetime.fromtimestamp(0, tz=UTC)


def aware(now_ns: int) -> datetime:
    """The aware (UTC) datetime of `now_ns`, nanoseconds since the epoch, to the µs."""
    return _EPOCH + timedelta(0, 0, now_ns // 1000)


def as_datetime(at: datetime | int) -> datetime:
    """`at` itself when it is a datetime, else `aware(at)`."""
    return aware(at) if isinstance(at, int) else at


def normalise_path(path: str) -> str:
    """Collapse "//", resolve "." and ".." lexically, strip a trailing "/"; always absolute."""
    # "/" itself takes the long way, which gives "/" back too
    if path[:1] == "/" and path[-1:] != "/" and "//" not in path and "/." not in path:
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
    at: datetime | int,
    grants: Sequence[Grant] = (),
) -> Decision:
    """Allow or deny `subject` doing `action` on `path` at `at`, with the reason why.

    `at` is an aware datetime, or nanoseconds since the epoch: then the datetime (`aware`)
    is built only where the decision depends on the time (business hours, grants).

    Technicians: outside every area → allow; in scope (and in hours where the rule says
    so) → allow; covered by a grant the agreement honours → allow; else deny. Principals
    are allowed; other subjects get the agreement's `others` verdict.
    """
    kind, name = compiled.classify(subject)
    match = compiled.area_for_normalised(normalise_path(path))
    area = match.area if match is not None else ""
    cache = compiled.decision_cache

    if kind is SubjectKind.TECHNICIAN:
        tech = name or ""
        if match is None:
            key: tuple[str, ...] = ("outside_areas", tech)
            found = cache.get(key)
            if found is None:
                found = _remember(
                    cache,
                    key,
                    Decision(
                        Verdict.ALLOW,
                        f"{tech} is outside every sensitive area",
                        "outside_areas",
                        kind,
                        technician=tech,
                    ),
                )
            return found
        return _technician(compiled, tech, match, action, at, grants)

    if kind is SubjectKind.PRINCIPAL:
        key = ("principal", name or "", area)
        found = cache.get(key)
        if found is None:
            found = _remember(
                cache,
                key,
                _in_area(
                    match,
                    Verdict.ALLOW,
                    f"{name} is a service principal of the agreement and always allowed",
                    "principal",
                    kind,
                    principal=name,
                ),
            )
        return found

    verdict = compiled.others
    principal = compiled.principal_accounts.get(subject.account)
    if principal is not None:  # a principal's account running an unpinned program
        return _in_area(
            match,
            verdict,
            f"{subject.account} belongs to principal {principal} only when running "
            f"{compiled.pinned_exe(principal)}, not {subject.exe or 'an unknown program'}; "
            f"as another user, the agreement {verdict}s it",
            "other_subject",
            kind,
        )
    key = ("other_subject", area)
    found = cache.get(key)
    if found is None:
        found = _remember(
            cache,
            key,
            _in_area(
                match,
                verdict,
                f"not a technician or principal of the agreement; it {verdict}s other users",
                "other_subject",
                kind,
            ),
        )
    return found


def stable_until(  # noqa: PLR0917 - decide's signature
    compiled: CompiledAgreement,
    subject: Subject,
    path: str,
    action: Action,
    at: datetime,
    grants: Sequence[Grant] = (),
) -> datetime | None:
    """How long `decide(compiled, subject, path, action, at, grants)` keeps its answer.

    Every `at2` with `at <= at2 < stable_until(...)` gets the same Decision (the same
    grants and agreement); None means any later `at2` does. Time matters only to a
    technician in an area with no in-scope rule for any hours: then the decision holds to
    the next business-hours boundary (`CompiledAgreement.hours_stable_until`) and to the
    next start or end of a grant that could cover it.
    """
    kind, name = compiled.classify(subject)
    if kind is not SubjectKind.TECHNICIAN:
        return None  # principals and others: no clock, no grants
    match = compiled.area_for_normalised(normalise_path(path))
    if match is None:
        return None
    tech = name or ""
    area = match.area
    in_scope = _scope_hours(compiled, tech, area, action)
    if in_scope:
        return None  # in scope at every hour: grants are never asked
    until = None if in_scope is None else compiled.hours_stable_until(at)
    for grant in grants:
        if grant.technician == tech and grant.area == area and action in grant.actions:
            for edge in (grant.start, grant.end):
                if edge > at and (until is None or edge < until):
                    until = edge
    return until


def _scope_hours(compiled: CompiledAgreement, tech: str, area: str, action: Action) -> bool | None:
    """Whether an in-scope rule lets `tech` do `action` in `area`: True at any hour, False
    only in business hours, None when no rule does (the one test `decide` and
    `stable_until` both make)."""
    covered: bool | None = None
    for rule in compiled.scope[area]:
        if action in rule.actions and (rule.technicians is None or tech in rule.technicians):
            if rule.any_hours:
                return True
            covered = False
    return covered


def _remember(
    cache: dict[tuple[str, ...], Decision], key: tuple[str, ...], d: Decision
) -> Decision:
    if len(cache) < CACHE_LIMIT:
        cache[key] = d
    return d


def _in_area(
    match: AreaMatch | None,
    verdict: Verdict,
    reason: str,
    rule: str,
    kind: SubjectKind,
    *,
    technician: str | None = None,
    principal: str | None = None,
    grant_id: str | None = None,
) -> Decision:
    return Decision(
        verdict,
        reason,
        rule,
        kind,
        technician=technician,
        principal=principal,
        area=match.area if match is not None else None,
        kinds=match.kinds if match is not None else (),
        individuals_estimate=match.individuals_estimate if match is not None else 0,
        grant_id=grant_id,
    )


def _technician(  # noqa: PLR0917 - internal step of decide, same arguments
    compiled: CompiledAgreement,
    tech: str,
    match: AreaMatch,
    action: Action,
    at: datetime | int,
    grants: Sequence[Grant],
) -> Decision:
    area = match.area
    cache = compiled.decision_cache
    kind = SubjectKind.TECHNICIAN
    in_scope = _scope_hours(compiled, tech, area, action)
    if in_scope is not None and (in_scope or compiled.in_business_hours(at := as_datetime(at))):
        key = ("in_scope", tech, area, action)
        found = cache.get(key)
        if found is None:
            found = _remember(
                cache,
                key,
                _in_area(
                    match,
                    Verdict.ALLOW,
                    f"{tech} may {action} {area} without a grant (in scope)",
                    "in_scope",
                    kind,
                    technician=tech,
                ),
            )
        return found
    outside_hours = in_scope is not None  # in scope, but only in business hours

    refused = ""
    for grant in grants:
        if grant.covers(tech, area, action, at := as_datetime(at)):
            why_not = compiled.grant_refusal(grant, action)
            if why_not is not None:
                refused = f"grant {grant.id} is not honoured: {why_not}"
                continue
            until = grant.end.astimezone(compiled.timezone).isoformat(timespec="minutes")
            label = "break-glass grant" if grant.break_glass else "grant"
            return _in_area(
                match,
                Verdict.ALLOW,
                f"{tech} may {action} {area} under {label} {grant.id} until {until}",
                "break_glass" if grant.break_glass else "grant",
                kind,
                technician=tech,
                grant_id=grant.id,
            )

    if outside_hours:
        local = as_datetime(at).astimezone(compiled.timezone)
        return _in_area(
            match,
            Verdict.DENY,
            f"{tech} may {action} {area} only in business hours; it is "
            f"{local:%a %H:%M} {compiled.timezone.key}, and {refused or 'no grant is active'}",
            "outside_hours",
            kind,
            technician=tech,
        )
    if refused:
        return _in_area(
            match,
            Verdict.DENY,
            f"{tech} may {action} {area} only with a grant; {refused}",
            "out_of_scope",
            kind,
            technician=tech,
        )
    key = ("out_of_scope", tech, area, action)
    found = cache.get(key)
    if found is None:
        if _grantable(compiled, tech, area, action):
            reason = f"{tech} may {action} {area} only with a grant; none is active"
        else:
            reason = (
                f"{tech} may not {action} {area}: the agreement allows it neither in scope "
                "nor by just-in-time grant"
            )
        found = _remember(
            cache,
            key,
            _in_area(match, Verdict.DENY, reason, "out_of_scope", kind, technician=tech),
        )
    return found


def _grantable(compiled: CompiledAgreement, tech: str, area: str, action: Action) -> bool:
    if compiled.jit_limits_for(tech, area, action):
        return True
    glass = compiled.break_glass
    return glass is not None and glass.allows(tech, area, action)
