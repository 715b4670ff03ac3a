"""Plain, frozen data the policy core decides over: actions, subjects, grants, decisions.

These are the types the agent's gate and the server's access workflow share with the
decision core. They carry no I/O and check their invariants when built.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Action(enum.StrEnum):
    """What a subject does to a path. The values are the agreement's vocabulary."""

    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    RENAME = "rename"
    EXEC = "exec"
    LIST = "list"


class Verdict(enum.StrEnum):
    """The answer the gate gives the kernel."""

    ALLOW = "allow"
    DENY = "deny"


class SubjectKind(enum.StrEnum):
    """Who the actor is, as far as the agreement is concerned."""

    TECHNICIAN = "technician"  # an MSP technician named in the agreement
    PRINCIPAL = "principal"  # a service principal that is always allowed (backup, clinical app)
    OTHER = "other"  # anyone else: the client's own staff and software


@dataclass(frozen=True, slots=True)
class Subject:
    """The actor behind an access, as the agent attributes it.

    `login_account` is the account behind the audit loginuid (the person who logged in; it
    survives sudo and su); `account` is the effective OS account. `exe` is the executable
    path, used only to match service principals that are pinned to an executable.
    """

    account: str
    login_account: str | None = None
    exe: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """A just-in-time grant: a technician may do `actions` in `area` from `start` to `end`."""

    id: str
    technician: str
    area: str
    actions: frozenset[Action]
    start: datetime
    end: datetime
    break_glass: bool = False
    ticket: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a grant needs an id")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError(f"grant {self.id}: start and end must be timezone-aware")
        if self.end <= self.start:
            raise ValueError(f"grant {self.id}: end {self.end} is not after start {self.start}")
        if not self.actions:
            raise ValueError(f"grant {self.id}: no actions")

    def covers(self, technician: str, area: str, action: Action, at: datetime) -> bool:
        """True when this grant allows `technician` to do `action` in `area` at `at`."""
        return (
            self.technician == technician
            and self.area == area
            and action in self.actions
            and self.start <= at < self.end
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer and everything needed to explain it.

    `rule` names what decided: e.g. "outside_areas", "principal", "other_subject",
    "in_scope", "grant", "break_glass", "out_of_scope", "outside_hours".
    """

    verdict: Verdict
    reason: str
    rule: str
    subject_kind: SubjectKind
    technician: str | None = None
    principal: str | None = None
    area: str | None = None
    kinds: tuple[str, ...] = field(default=())
    individuals_estimate: int = 0
    grant_id: str | None = None

    @property
    def allowed(self) -> bool:
        """True when the access may proceed."""
        return self.verdict is Verdict.ALLOW
