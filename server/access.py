"""The just-in-time access workflow: people, requests, their states and the agreement's rules.

Pure: no clock (`now` is passed in as unix seconds), no I/O, no gRPC. The servicer
(server/access_service.py) loads a request and the client's compiled agreement, calls one
function here, and stores what it returns. Every function returns a new `Request` with the
change appended to its history, or raises:

* `RequestRefusedError` — the agreement refuses it; `.rule` names the rule that refused;
* `ForbiddenError` — this person may not do this (role, client, self-approval);
* `TransitionError` — the request is not in a state that allows it.

States: pending → approved (enough approvals) | denied | cancelled | expired (nobody
decided in time); approved → revoked | cancelled (by the requester) | expired (it ended).
A break-glass request is approved at once. "active" is how an approved request whose window
has started reads (`Request.state_at`); it is not stored.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from policies.compile import CompiledAgreement
from policies.durations import format_duration
from policies.model import Action
from policies.schema import JitRule
from protos.errors import CustodesError

PENDING_TTL = timedelta(hours=12)  # a request nobody decides on lapses after this
MAX_LEAD = timedelta(days=30)  # how far ahead a request may start
START_SKEW = timedelta(seconds=60)  # a start this far in the past still counts as "now"
MAX_TEXT = 500
SYSTEM = "custodes"  # who expires requests

CLIENT_APPROVER_KINDS = frozenset({"client_manager", "practice_manager"})
MSP_APPROVER_KINDS = frozenset({"msp_lead", "msp_owner"})
_TICKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/#:-]{0,63}")


class AccessError(CustodesError):
    """Root of the access workflow's errors."""


class RequestRefusedError(AccessError):
    """The client's agreement refuses the request; `rule` names the rule that refused it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"refused by rule {rule}: {message}")
        self.rule = rule


class ForbiddenError(AccessError):
    """This person may not do this (wrong role, another client's request, self-approval)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"not allowed ({rule}): {message}")
        self.rule = rule


class TransitionError(AccessError):
    """The request's state does not allow the change (e.g. approving a denied request)."""


class Role(enum.StrEnum):
    """What a person may do."""

    TECHNICIAN = "technician"
    APPROVER = "approver"
    AUDITOR = "auditor"
    ADMIN = "admin"


class State(enum.StrEnum):
    """A request's stored state."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    REVOKED = "revoked"
    EXPIRED = "expired"


class Step(enum.StrEnum):
    """What can happen to a request."""

    APPROVE = "approve"  # the last approval needed
    DENY = "deny"
    CANCEL = "cancel"
    REVOKE = "revoke"
    EXPIRE = "expire"


TRANSITIONS: dict[tuple[State, Step], State] = {
    (State.PENDING, Step.APPROVE): State.APPROVED,
    (State.PENDING, Step.DENY): State.DENIED,
    (State.PENDING, Step.CANCEL): State.CANCELLED,
    (State.PENDING, Step.EXPIRE): State.EXPIRED,
    (State.APPROVED, Step.REVOKE): State.REVOKED,
    (State.APPROVED, Step.CANCEL): State.CANCELLED,
    (State.APPROVED, Step.EXPIRE): State.EXPIRED,
}
"""Every allowed (state, step) → next state; anything else is a TransitionError."""

ENDED = frozenset({State.DENIED, State.CANCELLED, State.REVOKED, State.EXPIRED})


def next_state(state: State, step: Step) -> State:
    """The state after `step`; TransitionError when the table does not allow it."""
    after = TRANSITIONS.get((state, step))
    if after is None:
        raise TransitionError(
            f"a {state} request cannot be {_past(step)}; expected one that is "
            + " or ".join(sorted({s for (s, t) in TRANSITIONS if t is step}))
        )
    return after


def _past(step: Step) -> str:
    return {"approve": "approved", "deny": "denied", "cancel": "cancelled"}.get(
        step.value, step.value + "d"
    )


@dataclass(frozen=True, slots=True)
class Person:
    """An enrolled person. `client` None: MSP-wide. `technician`: the agreement's id."""

    name: str
    role: Role
    client: str | None = None
    technician: str | None = None

    @property
    def approver_kinds(self) -> frozenset[str]:
        """The agreement's approver kinds this person counts as (empty unless an approver)."""
        if self.role is not Role.APPROVER:
            return frozenset()
        return CLIENT_APPROVER_KINDS if self.client else MSP_APPROVER_KINDS

    def serves(self, client: str) -> bool:
        """True when this person works for `client` (MSP-wide people serve every client)."""
        return self.client is None or self.client == client


@dataclass(frozen=True, slots=True)
class Approval:
    """One approver's approval."""

    approver: str
    kind: str  # the approver kind it counted as (client_manager, msp_lead, ...)
    at_unix: int


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a request's audit trail."""

    state: str  # requested, approval, approved, denied, cancelled, revoked, expired
    by: str
    at_unix: int
    why: str = ""


@dataclass(frozen=True, slots=True)
class Draft:
    """What a technician asks for. `start_unix` 0: from the moment it is approved."""

    client: str
    area: str
    actions: tuple[Action, ...]
    duration_seconds: int
    ticket: str
    reason: str
    start_unix: int = 0
    break_glass: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """A request and, once approved, the grant it is (same id, same window)."""

    id: str
    client: str
    technician: str
    requester: str
    area: str
    actions: tuple[Action, ...]
    start_unix: int  # 0 until approved when it starts on approval
    end_unix: int  # 0 until approved when it starts on approval
    duration_seconds: int
    ticket: str
    reason: str
    break_glass: bool
    state: State
    created_unix: int
    pending_until_unix: int
    approvals_needed: int
    approver_kinds: tuple[str, ...]
    agreement_version: str
    approvals: tuple[Approval, ...] = ()
    history: tuple[Change, ...] = ()

    def state_at(self, now: int) -> str:
        """The state as people read it: an approved grant in its window is "active"."""
        if self.state is State.APPROVED and self.start_unix <= now < self.end_unix:
            return "active"
        return self.state.value

    def is_live(self, now: int) -> bool:
        """True when the grant should be on the agents now or later (approved, not ended)."""
        return self.state is State.APPROVED and now < self.end_unix


def _refuse(rule: str, message: str) -> RequestRefusedError:
    return RequestRefusedError(rule, message)


def _clean_text(value: str, what: str, rule: str) -> str:
    text = value.strip()
    if len(text) > MAX_TEXT:
        raise _refuse(rule, f"the {what} is {len(text)} characters; expected at most {MAX_TEXT}")
    if any(ord(c) < 32 for c in text):
        raise _refuse(rule, f"the {what} holds control characters; expected plain text")
    return text


def _fmt(seconds: int) -> str:
    return format_duration(timedelta(seconds=seconds))


def pick_jit_rule(
    compiled: CompiledAgreement, technician: str, area: str, actions: tuple[Action, ...]
) -> tuple[JitRule, ...]:
    """The just-in-time rules that cover every one of `actions` for `technician` in `area`."""
    per_action = [compiled.jit_rules_for(technician, area, a) for a in actions]
    if not per_action:
        return ()
    first = per_action[0]
    return tuple(r for r in first if all(r in rules for rules in per_action[1:]))


def check_draft(
    draft: Draft, person: Person, compiled: CompiledAgreement, now: int
) -> tuple[int, int, int, tuple[str, ...]]:
    """Check a draft against who asks and the agreement.

    Returns (start_unix, end_unix, approvals_needed, approver_kinds); start and end are 0
    when the grant starts on approval. Raises ForbiddenError or RequestRefusedError.
    """
    if person.role is not Role.TECHNICIAN and not (
        person.role is Role.APPROVER and person.technician
    ):
        raise ForbiddenError(
            "role",
            f"{person.name}'s role is {person.role}; only technicians (and leads who are "
            "technicians too) may request access",
        )
    if not person.serves(draft.client):
        raise ForbiddenError(
            "client", f"{person.name} works for client {person.client}, not {draft.client}"
        )
    if compiled.client != draft.client:
        raise _refuse("agreement", f"the agreement is for {compiled.client}, not {draft.client}")
    tech = person.technician or person.name
    agreement = compiled.agreement
    if tech not in {t.id for t in agreement.technicians}:
        raise _refuse(
            "technicians",
            f"{tech} is not a technician of {draft.client}'s agreement (version "
            f"{compiled.version}); expected one of {sorted(t.id for t in agreement.technicians)}",
        )
    areas = {a.id for a in agreement.areas}
    if draft.area not in areas:
        raise _refuse(
            "areas", f"{draft.area!r} is not an area of the agreement; expected {sorted(areas)}"
        )
    if not draft.actions:
        raise _refuse("actions", "no actions requested; expected e.g. read or read,list")
    if draft.duration_seconds <= 0:
        raise _refuse("duration", "the duration is not positive; expected e.g. 2h")
    reason = _clean_text(draft.reason, "reason", "reason")
    _clean_text(draft.ticket, "ticket", "ticket")
    start = draft.start_unix
    if start:
        if start < now - START_SKEW.total_seconds():
            raise _refuse("start", f"the start {_iso(start)} is in the past; expected now or later")
        if start > now + MAX_LEAD.total_seconds():
            raise _refuse(
                "start", f"the start {_iso(start)} is more than {MAX_LEAD.days} days ahead"
            )
    if draft.break_glass:
        return _check_break_glass(draft, compiled, reason, now)
    rules = pick_jit_rule(compiled, tech, draft.area, draft.actions)
    if not rules:
        wanted = ",".join(draft.actions)
        raise _refuse(
            "just_in_time",
            f"the agreement lets {tech} request no {wanted} on {draft.area} just in time",
        )
    fitting = [r for r in rules if draft.duration_seconds <= r.max_duration.total_seconds()]
    if not fitting:
        longest = max(int(r.max_duration.total_seconds()) for r in rules)
        raise _refuse(
            "just_in_time.max_duration",
            f"{_fmt(draft.duration_seconds)} is longer than the {_fmt(longest)} the agreement "
            f"allows for {draft.area}",
        )
    patterned = [r for r in fitting if r.ticket_pattern is None]
    patterned += [
        r
        for r in fitting
        if r.ticket_pattern is not None and re.fullmatch(r.ticket_pattern, draft.ticket.strip())
    ]
    if not patterned:
        patterns = sorted({r.ticket_pattern or "" for r in fitting})
        raise _refuse(
            "just_in_time.ticket_pattern",
            f"ticket {draft.ticket!r} does not match {' or '.join(patterns)}",
        )
    if not draft.ticket.strip() or not _TICKET.fullmatch(draft.ticket.strip()):
        raise _refuse("ticket", f"ticket {draft.ticket!r} is missing or not a ticket reference")
    if not reason:
        raise _refuse("reason", "no reason given; expected why the access is needed")
    rule = patterned[0]
    end = start + draft.duration_seconds if start else 0
    return start, end, rule.approvers.count, tuple(rule.approvers.from_)


def _check_break_glass(
    draft: Draft, compiled: CompiledAgreement, reason: str, now: int
) -> tuple[int, int, int, tuple[str, ...]]:
    glass = compiled.agreement.break_glass
    if not glass.allowed:
        raise _refuse("break_glass.allowed", "the agreement allows no break-glass access")
    if "*" not in glass.areas and draft.area not in glass.areas:
        raise _refuse("break_glass.areas", f"break-glass does not extend to {draft.area}")
    extra = [a for a in draft.actions if a not in glass.actions]
    if extra:
        raise _refuse(
            "break_glass.actions",
            f"break-glass does not allow {','.join(extra)}; expected only "
            f"{','.join(glass.actions)}",
        )
    if draft.duration_seconds > glass.max_duration.total_seconds():
        raise _refuse(
            "break_glass.max_duration",
            f"{_fmt(draft.duration_seconds)} is longer than break-glass's "
            f"{format_duration(glass.max_duration)}",
        )
    if glass.requires_reason and not reason:
        raise _refuse("break_glass.requires_reason", "break-glass needs a reason; none given")
    return now, now + draft.duration_seconds, 0, ()


def create(
    request_id: str, draft: Draft, person: Person, compiled: CompiledAgreement, now: int
) -> Request:
    """A new request (pending, or approved at once for break-glass). Raises as check_draft."""
    start, end, needed, kinds = check_draft(draft, person, compiled, now)
    pending_until = now + int(PENDING_TTL.total_seconds())
    if end:
        pending_until = min(pending_until, end)
    history: tuple[Change, ...] = (Change("requested", person.name, now, draft.reason.strip()),)
    state = State.PENDING
    if draft.break_glass:
        state = State.APPROVED
        history += (Change("approved", person.name, now, "break-glass: " + draft.reason),)
    return Request(
        id=request_id,
        client=draft.client,
        technician=person.technician or person.name,
        requester=person.name,
        area=draft.area,
        actions=tuple(draft.actions),
        start_unix=start,
        end_unix=end,
        duration_seconds=draft.duration_seconds,
        ticket=draft.ticket.strip(),
        reason=draft.reason.strip(),
        break_glass=draft.break_glass,
        state=state,
        created_unix=now,
        pending_until_unix=pending_until,
        approvals_needed=needed,
        approver_kinds=kinds,
        agreement_version=compiled.version,
        history=history,
    )


def approve(req: Request, person: Person, compiled: CompiledAgreement, now: int) -> Request:
    """Add `person`'s approval; the last one needed approves the request (and fixes its window).

    Raises ForbiddenError (role, client, self-approval, approver kind, twice),
    RequestRefusedError (approval hours, the agreement no longer allows it), TransitionError.
    """
    if req.state is not State.PENDING:
        next_state(req.state, Step.APPROVE)
    if now >= req.pending_until_unix:
        raise TransitionError(f"request {req.id} lapsed at {_iso(req.pending_until_unix)}")
    if person.role is not Role.APPROVER:
        raise ForbiddenError(
            "role", f"{person.name}'s role is {person.role}; only approvers approve"
        )
    if not person.serves(req.client):
        raise ForbiddenError(
            "client", f"{person.name} approves for client {person.client}, not {req.client}"
        )
    if person.name == req.requester or (person.technician or "") == req.technician:
        raise ForbiddenError("self_approval", f"{person.name} may not approve their own request")
    if any(a.approver == person.name for a in req.approvals):
        raise ForbiddenError("approvers", f"{person.name} has already approved request {req.id}")
    kinds = [k for k in req.approver_kinds if k in person.approver_kinds]
    if not kinds:
        raise ForbiddenError(
            "approvers.from",
            f"request {req.id} needs approval from {' or '.join(req.approver_kinds)}; "
            f"{person.name} counts as {' or '.join(sorted(person.approver_kinds)) or 'neither'}",
        )
    rules = pick_jit_rule(compiled, req.technician, req.area, req.actions)
    rules = tuple(r for r in rules if req.duration_seconds <= r.max_duration.total_seconds())
    if not rules:
        raise _refuse(
            "just_in_time",
            f"the agreement (version {compiled.version}) no longer allows this request",
        )
    at = datetime.fromtimestamp(now, UTC)
    if all(r.approval_hours == "business" for r in rules) and not compiled.in_business_hours(at):
        local = at.astimezone(compiled.timezone)
        raise _refuse(
            "just_in_time.approval_hours",
            f"approvals are only given in business hours; it is {local:%a %H:%M} "
            f"{compiled.timezone.key}",
        )
    approvals = (*req.approvals, Approval(person.name, kinds[0], now))
    history = (*req.history, Change("approval", person.name, now, kinds[0]))
    if len(approvals) < req.approvals_needed:
        return replace(req, approvals=approvals, history=history)
    start, end = req.start_unix, req.end_unix
    if not start:
        start, end = now, now + req.duration_seconds
    if end <= now:
        raise TransitionError(f"request {req.id} would have ended at {_iso(end)}")
    return replace(
        req,
        approvals=approvals,
        history=(*history, Change("approved", person.name, now)),
        state=State.APPROVED,
        start_unix=start,
        end_unix=end,
    )


def _why(why: str, step: Step) -> str:
    text = why.strip()
    if not text:
        raise _refuse("reason", f"a reason is needed to {step}; expected --why")
    if len(text) > MAX_TEXT:
        raise _refuse("reason", f"the reason is over {MAX_TEXT} characters")
    return text


def deny(req: Request, person: Person, why: str, now: int) -> Request:
    """Deny a pending request (approvers of its client only, with a reason)."""
    after = next_state(req.state, Step.DENY)
    if person.role is not Role.APPROVER or not person.serves(req.client):
        raise ForbiddenError("role", f"{person.name} may not deny requests of {req.client}")
    if person.name == req.requester:
        raise ForbiddenError("self_approval", f"{person.name} may not decide their own request")
    text = _why(why, Step.DENY)
    change = Change("denied", person.name, now, text)
    return replace(req, state=after, history=(*req.history, change))


def cancel(req: Request, person: Person, why: str, now: int) -> Request:
    """The requester withdraws a pending request or gives up an approved grant early."""
    after = next_state(req.state, Step.CANCEL)
    if person.name != req.requester:
        raise ForbiddenError("requester", f"only {req.requester} may cancel request {req.id}")
    change = Change("cancelled", person.name, now, why.strip()[:MAX_TEXT])
    return replace(req, state=after, history=(*req.history, change))


def revoke(req: Request, person: Person, why: str, now: int) -> Request:
    """End an approved grant at once (approvers of its client and admins, with a reason)."""
    after = next_state(req.state, Step.REVOKE)
    allowed = person.role in (Role.APPROVER, Role.ADMIN) and person.serves(req.client)
    if not allowed:
        raise ForbiddenError("role", f"{person.name} may not revoke grants of {req.client}")
    text = _why(why, Step.REVOKE)
    change = Change("revoked", person.name, now, text)
    return replace(req, state=after, history=(*req.history, change))


def expire(req: Request, now: int) -> Request | None:
    """The request after the clock passed its deadline, or None when nothing is due."""
    if req.state is State.PENDING and now >= req.pending_until_unix:
        why = "nobody decided before " + _iso(req.pending_until_unix)
    elif req.state is State.APPROVED and now >= req.end_unix:
        why = "the grant ended at " + _iso(req.end_unix)
    else:
        return None
    after = next_state(req.state, Step.EXPIRE)
    return replace(req, state=after, history=(*req.history, Change("expired", SYSTEM, now, why)))


def may_read(person: Person, req: Request) -> bool:
    """Whether `person` may see `req`: their own, or their client's for non-technicians."""
    if person.role is Role.TECHNICIAN:
        return req.requester == person.name
    return person.serves(req.client)


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")
