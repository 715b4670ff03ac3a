"""Decisions over the test agreement: a table of subjects, paths, actions, times and grants."""

# ruff: noqa: E501 - the case tables read best one case a line

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from policies.compile import CompiledAgreement, compile_agreement
from policies.decide import aware, decide, normalise_path
from policies.globs import literal_root, parse_glob
from policies.load import parse_agreement
from policies.model import Action, Grant, Subject, SubjectKind, Verdict
from tests.policies.conftest import VALID

SYD = ZoneInfo("Australia/Sydney")
EPOCH = datetime.fromtimestamp(0, tz=UTC)
MON = datetime(2025, 6, 2, 10, 0, tzinfo=SYD)  # Monday, in hours
SUN = datetime(2025, 6, 1, 10, 0, tzinfo=SYD)
XMAS = datetime(2025, 12, 25, 10, 0, tzinfo=SYD)  # a Thursday, listed as a holiday
R, L, W = Action.READ, Action.LIST, Action.WRITE
HOUR = timedelta(hours=1)


def grant(
    gid: str = "g1",
    tech: str = "akaur",
    area: str = "patient-docs",
    actions: frozenset[Action] = frozenset({R}),
    start: datetime = MON - HOUR,
    end: datetime = MON + HOUR,
    *,
    glass: bool = False,
) -> Grant:
    return Grant(gid, tech, area, actions, start, end, break_glass=glass)


DOC = "/srv/bp/docs/2025/smith-referral.pdf"
BAK = "/srv/backups/bp-2025-06-01.bak"
AK = Subject("akaur")
JS = Subject("jsmith")

# (id, subject, path, action, at, grants, verdict, rule, area, grant_id)
CASES = [
    ("no_grant_denied", JS, DOC, R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("in_scope_any_hours", JS, DOC, L, SUN, (), "allow", "in_scope", "patient-docs", None),
    ("scope_rule_is_per_technician", AK, DOC, L, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("in_scope_in_hours", AK, BAK, R, MON, (), "allow", "in_scope", "backups", None),
    ("in_scope_on_sunday", AK, BAK, R, SUN, (), "deny", "outside_hours", "backups", None),
    ("in_scope_on_holiday", AK, BAK, R, XMAS, (), "deny", "outside_hours", "backups", None),
    ("action_not_in_scope", AK, BAK, W, MON, (), "deny", "out_of_scope", "backups", None),
    ("outside_areas", AK, "/srv/other/x", R, SUN, (), "allow", "outside_areas", None, None),
    ("grant_covers", AK, DOC, R, MON, (grant(),), "allow", "grant", "patient-docs", "g1"),
    (
        "grant_expired",
        AK, DOC, R, MON, (grant(start=MON - 3 * HOUR, end=MON - HOUR),),
        "deny", "out_of_scope", "patient-docs", None,
    ),
    (
        "grant_not_yet_started",
        AK, DOC, R, MON, (grant(start=MON + HOUR, end=MON + 2 * HOUR),),
        "deny", "out_of_scope", "patient-docs", None,
    ),
    ("grant_other_area", AK, DOC, R, MON, (grant(area="scans"),), "deny", "out_of_scope", "patient-docs", None),
    (
        "grant_other_action",
        AK, DOC, R, MON, (grant(actions=frozenset({L})),),
        "deny", "out_of_scope", "patient-docs", None,
    ),
    ("grant_other_technician", AK, DOC, R, MON, (grant(tech="jsmith"),), "deny", "out_of_scope", "patient-docs", None),
    (
        "second_grant_covers",
        AK, DOC, R, MON, (grant(area="scans"), grant(gid="g2")),
        "allow", "grant", "patient-docs", "g2",
    ),
    (
        "grant_longer_than_agreement_allows",
        AK, DOC, R, MON, (grant(start=MON - HOUR, end=MON + 5 * HOUR),),
        "deny", "out_of_scope", "patient-docs", None,
    ),
    (
        "grant_for_action_not_requestable",
        AK, BAK, W, MON, (grant(area="backups", actions=frozenset({W})),),
        "deny", "out_of_scope", "backups", None,
    ),
    (
        "break_glass",
        AK, DOC, R, SUN, (grant(start=SUN, end=SUN + HOUR, glass=True),),
        "allow", "break_glass", "patient-docs", "g1",
    ),
    (
        "break_glass_outside_its_areas",
        AK, BAK, R, SUN, (grant(area="backups", start=SUN, end=SUN + HOUR, glass=True),),
        "deny", "outside_hours", "backups", None,
    ),
    (
        "break_glass_too_long",
        AK, DOC, R, SUN, (grant(start=SUN, end=SUN + 5 * HOUR, glass=True),),
        "deny", "out_of_scope", "patient-docs", None,
    ),
    ("principal", Subject("svc_backup", exe="/usr/bin/restic"), DOC, R, SUN, (), "allow", "principal", "patient-docs", None),
    ("principal_unpinned", Subject("bpsvc", exe="/bin/cat"), DOC, W, SUN, (), "allow", "principal", "patient-docs", None),
    (
        "principal_exe_pin_mismatch",
        Subject("svc_backup", exe="/usr/bin/cat"), DOC, R, SUN, (),
        "allow", "other_subject", "patient-docs", None,
    ),
    ("principal_exe_unknown", Subject("svc_backup"), DOC, R, SUN, (), "allow", "other_subject", "patient-docs", None),
    ("other_subject", Subject("reception"), DOC, R, SUN, (), "allow", "other_subject", "patient-docs", None),
    ("sudo_to_root", Subject("root", login_account="akaur"), DOC, R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    (
        "su_to_principal_stays_technician",
        Subject("svc_backup", login_account="jsmith", exe="/usr/bin/restic"), DOC, R, MON, (),
        "deny", "out_of_scope", "patient-docs", None,
    ),
    ("second_account", Subject("akaur-adm"), DOC, R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("login_account_unknown_account_technician", Subject("akaur", login_account="nobody2"), BAK, R, MON, (), "allow", "in_scope", "backups", None),
    ("dotdot_and_double_slash", JS, "/srv/bp/docs/../docs//a.pdf/", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("dotdot_into_area", JS, "/srv/bp/other/../docs/x", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("dotdot_out_of_area", JS, "/srv/bp/docs/../../other", R, MON, (), "allow", "outside_areas", None, None),
    ("dotdot_above_root", JS, "/../../srv/bp/docs/a", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("leading_double_slash_area_root", AK, "//srv//backups/", W, MON, (), "deny", "out_of_scope", "backups", None),
    ("dot_segments", JS, "/srv/./bp/./docs/./a", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("dstar_zero_segments", JS, "/srv/bp/docs", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("dstar_deep", JS, "/srv/bp/docs/a/b/c/d/e/f.pdf", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("hidden_file_inside_area", JS, "/srv/bp/docs/.secret", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("prefix_is_not_the_area", JS, "/srv/bp/docsx/a.pdf", R, MON, (), "allow", "outside_areas", None, None),
    ("exclude", JS, "/srv/bp/docs/templates/letter.dotx", R, MON, (), "allow", "outside_areas", None, None),
    ("exclude_dir_itself", JS, "/srv/bp/docs/templates", R, MON, (), "allow", "outside_areas", None, None),
    ("star_matches", JS, "/srv/bp/letters/a.pdf", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    ("star_other_suffix", JS, "/srv/bp/letters/a.txt", R, MON, (), "allow", "outside_areas", None, None),
    ("star_stays_in_segment", JS, "/srv/bp/letters/sub/a.pdf", R, MON, (), "allow", "outside_areas", None, None),
    ("more_specific_area_wins", JS, "/srv/bp/docs/scans/2025/x.tif", R, MON, (), "deny", "out_of_scope", "scans", None),
    ("less_specific_below", JS, "/srv/bp/docs/scans/2025/deep/x.tif", R, MON, (), "deny", "out_of_scope", "patient-docs", None),
    # DST starts in Sydney on Sun 5 Oct 2025: Monday 08:30 AEDT is 21:30 UTC on Sunday.
    ("dst_start_morning_in_hours", AK, BAK, R, datetime(2025, 10, 5, 21, 30, tzinfo=UTC), (), "allow", "in_scope", "backups", None),
    ("dst_start_evening_after_hours", AK, BAK, R, datetime(2025, 10, 6, 7, 30, tzinfo=UTC), (), "deny", "outside_hours", "backups", None),
    # DST ends on Sun 6 Apr 2025: Monday 17:30 AEST is 07:30 UTC.
    ("dst_end_evening_in_hours", AK, BAK, R, datetime(2025, 4, 7, 7, 30, tzinfo=UTC), (), "allow", "in_scope", "backups", None),
    ("hours_start_inclusive", AK, BAK, R, datetime(2025, 6, 2, 8, 0, tzinfo=SYD), (), "allow", "in_scope", "backups", None),
    ("hours_end_exclusive", AK, BAK, R, datetime(2025, 6, 2, 18, 0, tzinfo=SYD), (), "deny", "outside_hours", "backups", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("subject", "path", "action", "at", "grants", "verdict", "rule", "area", "grant_id"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_decision_table(
    compiled: CompiledAgreement,
    subject: Subject,
    path: str,
    action: Action,
    at: datetime,
    grants: tuple[Grant, ...],
    verdict: str,
    rule: str,
    area: str | None,
    grant_id: str | None,
) -> None:
    decision = compiled.decide(subject, path, action, at, grants)
    assert (decision.verdict.value, decision.rule, decision.area, decision.grant_id) == (
        verdict,
        rule,
        area,
        grant_id,
    ), decision.reason
    assert decision == decide(compiled, subject, path, action, at, grants)
    assert decision.reason
    # the gate's form: nanoseconds since the epoch, the same instant to the µs
    now_ns = (at - EPOCH) // timedelta(microseconds=1) * 1000
    assert compiled.decide_at_ns(subject, path, action, now_ns, grants) == decision


def test_aware_is_the_instant_to_the_microsecond() -> None:
    at = datetime(2025, 6, 2, 10, 0, 0, 123456, tzinfo=SYD)
    now_ns = (at - EPOCH) // timedelta(microseconds=1) * 1000 + 999
    assert aware(now_ns) == at
    assert aware(now_ns).tzinfo is UTC


def test_area_by_directory_keeps_names_that_matter_apart() -> None:
    # /srv/bp/letters/*.pdf: the name decides; docs/** below: it does not
    for order in (("a.txt", "a.pdf"), ("a.pdf", "a.txt")):
        fresh = compile_agreement(parse_agreement(VALID, filename="agreement.yaml"))
        got = {n: fresh.area_for(f"/srv/bp/letters/{n}") for n in order}
        assert got["a.txt"] is None
        assert got["a.pdf"] is not None
        assert got["a.pdf"].area == "patient-docs"
    fresh = compile_agreement(parse_agreement(VALID, filename="agreement.yaml"))
    first = fresh.area_for("/srv/bp/docs/a/one.pdf")
    assert first is not None
    assert fresh.area_for("/srv/bp/docs/a/two.pdf") == first
    assert fresh.area_for("/srv/bp/docs/templates") is None  # excluded, same directory


def test_reason_says_who_what_and_why(compiled: CompiledAgreement) -> None:
    decision = compiled.decide(JS, DOC, R, MON)
    assert decision.reason == "jsmith may read patient-docs only with a grant; none is active"
    assert decision.kinds == ("health", "medicare")
    assert decision.individuals_estimate == 1
    assert decision.subject_kind is SubjectKind.TECHNICIAN
    assert decision.technician == "jsmith"


def test_outside_hours_reason_names_local_time(compiled: CompiledAgreement) -> None:
    decision = compiled.decide(AK, BAK, R, SUN)
    assert "only in business hours" in decision.reason
    assert "Sun 10:00 Australia/Sydney" in decision.reason


def test_refused_grant_is_named_in_reason(compiled: CompiledAgreement) -> None:
    long = grant(gid="g-long", start=MON - HOUR, end=MON + 5 * HOUR)
    decision = compiled.decide(AK, DOC, R, MON, (long,))
    assert decision.verdict is Verdict.DENY
    assert "grant g-long is not honoured" in decision.reason
    assert "6h" in decision.reason


def test_ungrantable_action_says_so(compiled: CompiledAgreement) -> None:
    decision = compiled.decide(AK, BAK, W, MON)
    assert "neither in scope nor by just-in-time grant" in decision.reason


def test_pin_mismatch_is_explained(compiled: CompiledAgreement) -> None:
    decision = compiled.decide(Subject("svc_backup", exe="/usr/bin/cat"), DOC, R, SUN)
    assert decision.subject_kind is SubjectKind.OTHER
    assert "/usr/bin/restic" in decision.reason
    assert "/usr/bin/cat" in decision.reason


def test_others_deny_denies_other_subjects() -> None:
    strict = compile_agreement(parse_agreement(VALID + "others: deny\n", filename="s.yaml"))
    decision = strict.decide(Subject("reception"), DOC, R, MON)
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "other_subject")
    assert strict.decide(Subject("svc_backup", exe="/usr/bin/restic"), DOC, R, MON).allowed


def test_classify(compiled: CompiledAgreement) -> None:
    assert compiled.classify(Subject("root", login_account="jsmith")) == (
        SubjectKind.TECHNICIAN,
        "jsmith",
    )
    assert compiled.classify(Subject("bpsvc")) == (SubjectKind.PRINCIPAL, "clinical-app")
    assert compiled.classify(Subject("root")) == (SubjectKind.OTHER, None)


def test_classify_asked_again_about_the_same_subjects_answers_alike() -> None:
    fresh = compile_agreement(parse_agreement(VALID, filename="agreement.yaml"))
    subjects = [
        Subject("root", login_account="jsmith"),
        Subject("bpsvc"),
        Subject("svc_backup", exe="/usr/bin/other"),
        Subject("svc_backup", exe="/usr/bin/restic"),
        Subject("root"),
    ]
    first = [fresh.classify(s) for s in subjects]
    assert [fresh.classify(s) for s in subjects] == first
    assert [fresh.classify(Subject(s.account, s.login_account, s.exe)) for s in subjects] == first
    assert first[2] == (SubjectKind.OTHER, None)  # pinned to another exe
    assert first[3] == (SubjectKind.PRINCIPAL, "backup-job")


def test_account_maps(compiled: CompiledAgreement) -> None:
    assert dict(compiled.technician_accounts) == {
        "jsmith": "jsmith",
        "akaur": "akaur",
        "akaur-adm": "akaur",
    }
    assert dict(compiled.principal_accounts) == {
        "svc_backup": "backup-job",
        "bpsvc": "clinical-app",
    }
    assert compiled.client == "test-clinic"
    assert compiled.version == "1"
    assert len(compiled.sha256) == 64


def test_area_roots_are_literal_prefixes(compiled: CompiledAgreement) -> None:
    assert compiled.area_roots() == [
        ("patient-docs", "/srv/bp/docs"),
        ("patient-docs", "/srv/bp/letters"),
        ("backups", "/srv/backups"),
        ("scans", "/srv/bp/docs/scans"),
    ]


def test_area_for_unnormalised_path(compiled: CompiledAgreement) -> None:
    match = compiled.area_for("/srv/backups//x/../y")
    assert match is not None
    assert (match.area, match.kinds, match.individuals_estimate) == ("backups", ("health",), 5000)
    assert compiled.area_for("/") is None
    assert compiled.area_for("") is None


def test_naive_time_is_refused(compiled: CompiledAgreement) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        compiled.in_business_hours(datetime(2025, 6, 2, 10, 0))


def test_business_hours_in_agreement_zone(compiled: CompiledAgreement) -> None:
    # 23:00 UTC Sunday is 09:00 Monday in Sydney (AEST, +10).
    assert compiled.in_business_hours(datetime(2025, 6, 1, 23, 0, tzinfo=UTC))
    assert not compiled.in_business_hours(datetime(2025, 6, 2, 9, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/b", "/a/b"),
        ("/a//b", "/a/b"),
        ("//a/b/", "/a/b"),
        ("/a/./b/.", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/../a", "/a"),
        ("/", "/"),
        ("", "/"),
        ("a/b", "/a/b"),
        ("/a/.hidden/b", "/a/.hidden/b"),
        ("/a/..b/c", "/a/..b/c"),
        ("/a/b/..", "/a"),
    ],
)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("glob", "root"),
    [
        ("/srv/bp/docs/**", "/srv/bp/docs"),
        ("/srv/bp/*/notes/**", "/srv/bp"),
        ("/srv/bp/letters/*.pdf", "/srv/bp/letters"),
        ("/srv/bp/db/main.bak", "/srv/bp/db"),  # fully literal: the directory holding it
        ("/srv/a?", "/srv"),
    ],
)
def test_literal_root(glob: str, root: str) -> None:
    assert literal_root(parse_glob(glob)) == root
