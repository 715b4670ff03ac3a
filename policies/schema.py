"""The service agreement as pydantic models: strict types, unknown keys refused, frozen.

Field-level rules live here (types, formats, ranges, globs, durations, time zones); rules
that compare one part of the agreement with another (references, duplicates, accounts
claimed twice) live in `policies.checks`, so that every problem is reported at once.
"""

from __future__ import annotations

import re
from datetime import date, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    Strict,
    ValidationInfo,
    model_validator,
)

from policies.durations import format_duration, parse_duration
from policies.globs import parse_glob
from policies.model import Action, Day

# Ceilings: a grant that long is no longer "just in time"; break-glass is for an emergency.
JIT_MAX_DURATION_CEILING = timedelta(days=14)
BREAK_GLASS_MAX_DURATION_CEILING = timedelta(hours=24)
MAX_TEXT = 500

Kind = Literal[
    "health",
    "medicare",
    "dva",
    "ndis",
    "aged_care",
    "tfn",
    "hr",
    "payroll",
    "superannuation",
    "identity",
    "financial",
    "banking",
    "contact",
    "criminal_record",
    "biometric",
    "genetic",
]
Hours = Literal["business", "any"]
ApproverRole = Literal[
    "msp_lead", "msp_owner", "client_manager", "practice_manager", "privacy_officer"
]

_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")
_EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
_PHONE = re.compile(r"\+?[0-9 ()-]{8,20}")
_TZ_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,3}")
_TIME = re.compile(r"([0-9]{2}):([0-9]{2})")
_ABN_WEIGHTS = (10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19)


def _slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an id; expected lowercase letters, digits and '-' (at most 64)"
        )
    return value


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("empty text; expected a value")
    if len(value) > MAX_TEXT:
        raise ValueError(f"text is {len(value)} characters; expected at most {MAX_TEXT}")
    return value


def _account(value: str) -> str:
    if not _ACCOUNT.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an OS account name; expected e.g. 'jsmith' or 'svc_backup'"
        )
    return value


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError(f"{value!r} is not an email address; expected name@domain")
    return value


def _phone(value: str) -> str:
    if not _PHONE.fullmatch(value) or sum(c.isdigit() for c in value) < 8:
        raise ValueError(f"{value!r} is not a phone number; expected e.g. '+61 2 9000 0000'")
    return value


def _abn(value: str) -> str:
    digits = value.replace(" ", "")
    if len(digits) != 11 or not digits.isdigit():
        raise ValueError(f"{value!r} is not an ABN; expected 11 digits")
    numbers = [int(c) for c in digits]
    numbers[0] -= 1
    if sum(w * n for w, n in zip(_ABN_WEIGHTS, numbers, strict=True)) % 89:
        raise ValueError(f"{value!r} fails the ABN checksum; expected a registered ABN")
    return digits


def _glob(value: str) -> str:
    parse_glob(value)
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/") or "\x00" in value or "/../" in value or "//" in value:
        raise ValueError(f"{value!r} is not an absolute, normalised path")
    return value


def _regex(value: str) -> str:
    if len(value) > 200:
        raise ValueError(f"pattern is {len(value)} characters; expected at most 200")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression ({exc})") from None
    return value


def _duration(value: Any) -> timedelta:
    return parse_duration(value)


def _local_time(value: Any) -> time:
    if not isinstance(value, str):  # pydantic reports ValueError, not TypeError
        raise ValueError(  # noqa: TRY004
            f"expected a local time as a string 'HH:MM', got {type(value).__name__}"
        )
    m = _TIME.fullmatch(value)
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"{value!r} is not a time of day; expected 'HH:MM' from 00:00 to 23:59")
    return time(int(m[1]), int(m[2]))


def _timezone(value: Any) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    if not isinstance(value, str) or not _TZ_KEY.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a time zone; expected an IANA name such as 'Australia/Sydney'"
        )
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {value!r}; expected an IANA name such as 'Australia/Sydney'"
        ) from None


def _star_or_list(value: Any) -> Any:
    return [value] if value == "*" else value


Slug = Annotated[str, AfterValidator(_slug)]
Text = Annotated[str, AfterValidator(_text)]
Account = Annotated[str, AfterValidator(_account)]
Email = Annotated[str, AfterValidator(_email)]
Phone = Annotated[str, AfterValidator(_phone)]
Abn = Annotated[str, AfterValidator(_abn)]
Glob = Annotated[str, AfterValidator(_glob)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
Regex = Annotated[str, AfterValidator(_regex)]
Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration)]
LocalTime = Annotated[time, BeforeValidator(_local_time)]
TimeZone = Annotated[ZoneInfo, PlainValidator(_timezone), PlainSerializer(str)]
LaxAction = Annotated[Action, Strict(False)]
Actions = Annotated[tuple[LaxAction, ...], Strict(False), Field(min_length=1)]
_LAX = Strict(False)  # lists in YAML become tuples, so the agreement is deeply frozen
_SOME = Field(min_length=1)
Days = Annotated[tuple[Day, ...], _LAX, _SOME]
Accounts = Annotated[tuple[Account, ...], _LAX, _SOME]
Globs = Annotated[tuple[Glob, ...], _LAX, _SOME]
Excludes = Annotated[tuple[Glob, ...], _LAX]
Kinds = Annotated[tuple[Kind, ...], _LAX, _SOME]
Roles = Annotated[tuple[ApproverRole, ...], _LAX, _SOME]
Dates = Annotated[tuple[date, ...], _LAX]
Refs = Annotated[
    tuple[str, ...], BeforeValidator(_star_or_list), Strict(False), Field(min_length=1)
]


class _Model(BaseModel):
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, arbitrary_types_allowed=True
    )


class Client(_Model):
    """Whose agreement this is."""

    id: Slug
    name: Text
    abn: Abn | None = None


class PrivacyContact(_Model):
    """The client's privacy officer, told about possible breaches."""

    name: Text
    email: Email
    phone: Phone


class HoursBlock(_Model):
    """One range of business hours on some days, in the agreement's time zone."""

    days: Days
    start: LocalTime
    end: LocalTime

    @model_validator(mode="after")
    def _end_after_start(self) -> HoursBlock:
        if self.end <= self.start:
            raise ValueError(
                f"end {self.end:%H:%M} is not after start {self.start:%H:%M}; "
                "expected a range within one day (split ranges that cross midnight)"
            )
        if len(set(self.days)) != len(self.days):
            raise ValueError(f"days {list(self.days)} repeat a day; expected each day once")
        return self


class Technician(_Model):
    """An MSP technician and the OS accounts they use on this client's machines."""

    id: Slug
    name: Text
    email: Email
    accounts: Accounts
    role: Slug | None = None


class Principal(_Model):
    """A service account that is always allowed (backup job, clinical software)."""

    name: Slug
    account: Account
    exe: AbsPath | None = None
    description: Text | None = None


class Area(_Model):
    """A sensitive area: where it is, what it holds, and about how many people per file."""

    id: Slug
    description: Text
    paths: Globs
    kinds: Kinds
    individuals_per_file: int = Field(ge=0, le=1_000_000_000)
    exclude: Excludes = ()


class InScopeRule(_Model):
    """What technicians may do in areas without a grant, and when."""

    areas: Refs
    actions: Actions
    technicians: Refs = ("*",)
    hours: Hours = "business"
    description: Text | None = None


class Approvers(_Model):
    """How many approvals a request needs and from which roles."""

    count: int = Field(ge=1, le=5)
    from_: Roles = Field(alias="from")


def _at_most(ceiling: timedelta) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value > ceiling:
            raise ValueError(
                f"{format_duration(value)} is over the ceiling; "
                f"expected at most {format_duration(ceiling)}"
            )
        return value

    return AfterValidator(check)


JitDuration = Annotated[Duration, _at_most(JIT_MAX_DURATION_CEILING)]
BreakGlassDuration = Annotated[Duration, _at_most(BREAK_GLASS_MAX_DURATION_CEILING)]


class JitRule(_Model):
    """What technicians may request just in time, for how long, approved by whom."""

    areas: Refs
    actions: Actions
    max_duration: JitDuration
    approvers: Approvers
    technicians: Refs = ("*",)
    ticket_pattern: Regex | None = None
    approval_hours: Hours = "any"


class BreakGlass(_Model):
    """Emergency access without approval, recorded and raised as an incident."""

    allowed: bool
    max_duration: BreakGlassDuration = timedelta(hours=4)
    areas: Refs = ("*",)
    actions: Actions = (Action.READ, Action.LIST)
    requires_reason: bool = True


class BulkRead(_Model):
    """A technician reading this many area files within this many minutes is a bulk read."""

    files: int = Field(ge=1, le=1_000_000)
    minutes: int = Field(ge=1, le=24 * 60)


class Detection(_Model):
    """Thresholds for the server's possible-breach rules."""

    bulk_read: BulkRead
    heartbeat_silence: Duration
    clock_skew: Duration


class Agreement(_Model):
    """One client's service agreement. `sha256` is the hex digest of the source bytes."""

    client: Client
    privacy_contact: PrivacyContact
    version: Text
    timezone: TimeZone
    business_hours: Annotated[tuple[HoursBlock, ...], _LAX, _SOME]
    holidays: Dates = ()
    technicians: Annotated[tuple[Technician, ...], _LAX, _SOME]
    principals: Annotated[tuple[Principal, ...], _LAX] = ()
    areas: Annotated[tuple[Area, ...], _LAX, _SOME]
    in_scope: Annotated[tuple[InScopeRule, ...], _LAX] = ()
    just_in_time: Annotated[tuple[JitRule, ...], _LAX] = ()
    break_glass: BreakGlass = BreakGlass(allowed=False)
    others: Literal["allow", "deny"] = "allow"
    outside_areas: Literal["allow"] = "allow"
    detection: Detection
    retention: Duration

    _sha256: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _take_digest(self, info: ValidationInfo) -> Agreement:
        context = info.context if isinstance(info.context, dict) else {}
        self._sha256 = str(context.get("sha256", ""))
        return self

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the file this agreement was loaded from ("" if built in code)."""
        return self._sha256
