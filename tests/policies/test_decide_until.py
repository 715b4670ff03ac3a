"""How long a decision holds (`stable_until`): never past a business-hours or grant boundary.

The agent's gate remembers an allow until this instant, so a bound too late would let a
technician in after hours or after a grant ended. Each test checks the bound itself; the
property test checks that every instant before it decides exactly alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.compile import CompiledAgreement, compile_agreement
from policies.load import parse_agreement
from policies.model import Action, Grant, Subject
from tests.policies.conftest import VALID
from tests.policies.test_decide import AK, BAK, DOC, JS, MON, SUN, SYD, grant

R, L, W = Action.READ, Action.LIST, Action.WRITE
MINUTE = timedelta(minutes=1)
US = timedelta(microseconds=1)


def test_a_decision_that_needs_no_clock_holds_for_good(compiled: CompiledAgreement) -> None:
    assert compiled.stable_until(AK, "/srv/other/x", R, MON) is None  # outside every area
    assert compiled.stable_until(JS, DOC, L, MON) is None  # in scope at any hours
    assert compiled.stable_until(Subject("svc_backup"), BAK, R, MON) is None  # not a technician
    assert compiled.stable_until(AK, BAK, W, MON) is None  # never allowed, no grant to ask


def test_an_any_hours_rule_after_a_business_hours_one_wins_at_every_hour() -> None:
    # backups: read in business hours for everyone (VALID), then at any hour for jsmith.
    text = VALID.replace(
        "just_in_time:\n",
        "  - areas: [backups]\n    actions: [read]\n    technicians: [jsmith]\n"
        "    hours: any\njust_in_time:\n",
    )
    both = compile_agreement(parse_agreement(text, filename="both.yaml"))
    assert both.decide(JS, BAK, R, SUN).rule == "in_scope"
    assert both.stable_until(JS, BAK, R, SUN) is None
    assert both.decide(AK, BAK, R, SUN).rule == "outside_hours"
    assert both.stable_until(AK, BAK, R, SUN) == datetime(2025, 6, 1, 10, 1, tzinfo=SYD)


def test_an_in_hours_decision_holds_to_the_end_of_its_minute(
    compiled: CompiledAgreement,
) -> None:
    at = datetime(2025, 6, 2, 17, 59, 30, 250, tzinfo=SYD)  # Monday, 30 s before closing
    until = compiled.stable_until(AK, BAK, R, at)
    assert until == datetime(2025, 6, 2, 18, 0, tzinfo=SYD)
    assert compiled.decide(AK, BAK, R, until - US).allowed
    assert not compiled.decide(AK, BAK, R, until).allowed


def test_a_grant_boundary_ends_the_decision_first(compiled: CompiledAgreement) -> None:
    start = MON + timedelta(seconds=20)
    later = grant(start=start, end=start + timedelta(hours=1))
    assert compiled.stable_until(AK, DOC, R, MON, (later,)) == start
    assert not compiled.decide(AK, DOC, R, start - US, (later,)).allowed
    assert compiled.decide(AK, DOC, R, start, (later,)).allowed
    end = MON + timedelta(seconds=5)
    ending = grant(start=MON - MINUTE, end=end)
    assert compiled.stable_until(AK, DOC, R, MON, (ending,)) == end
    assert not compiled.decide(AK, DOC, R, end, (ending,)).allowed


def test_a_grant_that_cannot_cover_the_open_does_not_shorten_it(
    compiled: CompiledAgreement,
) -> None:
    soon = MON + timedelta(seconds=5)
    other = grant(area="scans", start=soon, end=soon + MINUTE)
    assert compiled.stable_until(AK, DOC, R, MON, (other,)) is None


def test_the_minute_a_dst_change_begins_ends_at_the_change(
    compiled: CompiledAgreement,
) -> None:
    # Sydney leaves daylight saving at 2025-04-06 03:00 AEDT = 2025-04-05 16:00 UTC.
    change = datetime(2025, 4, 5, 16, 0, tzinfo=UTC)
    before = compiled.stable_until(AK, BAK, R, change - timedelta(seconds=10))
    assert before == change
    after = compiled.stable_until(AK, BAK, R, change + timedelta(seconds=10))
    assert after == change + MINUTE


def test_a_zone_offset_of_odd_seconds_is_never_assumed_stable(
    compiled: CompiledAgreement,
) -> None:
    amsterdam = CompiledAgreement.__new__(CompiledAgreement)
    amsterdam.__setstate__({**compiled.__getstate__(), "timezone": "Europe/Amsterdam"})
    at = datetime(1930, 6, 2, 10, 0, 5, tzinfo=UTC)  # local mean time, +00:19:32
    assert ZoneInfo("Europe/Amsterdam").utcoffset(at.replace(tzinfo=None)) != timedelta(minutes=20)
    assert amsterdam.hours_stable_until(at) == at
    assert amsterdam.stable_until(AK, BAK, R, at) == at


SUBJECTS = st.sampled_from([AK, JS, Subject("akaur-adm", "jsmith"), Subject("svc_backup")])
PATHS = st.sampled_from(
    [DOC, BAK, "/srv/bp/letters/a.pdf", "/srv/bp/docs/scans/x/y.tif", "/srv/bp/docs/templates/t"]
)
ACTIONS = st.sampled_from([R, L, W, Action.CREATE, Action.EXEC])
# Around the 2025 DST changes, holidays and week boundaries, to the µs.
INSTANTS = st.datetimes(
    min_value=datetime(2025, 4, 4), max_value=datetime(2025, 12, 31), timezones=st.just(UTC)
)


@st.composite
def grants_near(draw: st.DrawFn, at: datetime) -> tuple[Grant, ...]:
    """Up to three grants starting or ending within two minutes of `at`."""
    out = []
    for i in range(draw(st.integers(0, 3))):
        start = at + timedelta(microseconds=draw(st.integers(-120_000_000, 120_000_000)))
        length = timedelta(microseconds=draw(st.integers(1, 240_000_000)))
        area = draw(st.sampled_from(["patient-docs", "scans", "backups"]))
        actions = frozenset(draw(st.sets(st.sampled_from([R, L, W]), min_size=1)))
        glass = draw(st.booleans())
        out.append(Grant(f"g{i}", "akaur", area, actions, start, start + length, break_glass=glass))
    return tuple(out)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), subject=SUBJECTS, path=PATHS, action=ACTIONS, at=INSTANTS)
def test_every_instant_before_the_bound_decides_alike(
    compiled: CompiledAgreement,
    data: st.DataObject,
    subject: Subject,
    path: str,
    action: Action,
    at: datetime,
) -> None:
    grants = data.draw(grants_near(at))
    first = compiled.decide(subject, path, action, at, grants)
    until = compiled.stable_until(subject, path, action, at, grants)
    last = (at + timedelta(days=2) if until is None else until) - US
    assert until is None or until >= at
    for later in (last, at + (last - at) / 2, at + (last - at) / 3):
        if later >= at:
            assert compiled.decide(subject, path, action, later, grants) == first
