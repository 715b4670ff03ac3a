"""Malformed agreements: every problem named by file, line and field; nothing but AgreementInvalid."""

# ruff: noqa: E501 - the case tables read best one case a line

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.errors import AgreementInvalid, Problem
from policies.load import MAX_BYTES, load_agreement, parse_agreement
from tests.policies.conftest import VALID

FILE = "agreement.yaml"


def problems_of(text: str | bytes) -> list[Problem]:
    with pytest.raises(AgreementInvalid) as info:
        parse_agreement(text, filename=FILE)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


def line_of(text: str, marker: str) -> int:
    index = text.index(marker)
    return text[:index].count("\n") + 1


# (id, old text, new text, marker whose line the problem is on, field path, message fragment)
MUTATIONS = [
    ("unknown_top_key", "retention: 7y\n", "retention: 7y\ncolour: blue\n", "colour:", "colour", "unknown key 'colour'"),
    ("unknown_nested_key", "    individuals_per_file: 5000\n", "    individuals_per_file: 5000\n    pathz: [/x]\n", "pathz", "areas[1].pathz", "expected one of: id, description, paths"),
    ("unknown_key_in_approvers", "      count: 1\n", "      count: 1\n      quorum: 2\n", "quorum", "just_in_time[0].approvers.quorum", "unknown key"),
    ("client_id_wrong_type", "  id: test-clinic", "  id: 42", "id: 42", "client.id", "valid string"),
    ("client_id_not_a_slug", "  id: test-clinic", "  id: Test Clinic!", "id: Test", "client.id", "is not an id"),
    ("client_name_missing", "  name: Test Clinic\n", "", "client:", "client.name", "missing required key 'name'"),
    ("client_abn_bad_checksum", "  name: Test Clinic\n", "  name: Test Clinic\n  abn: '12 345 678 901'\n", "abn:", "client.abn", "ABN checksum"),
    ("privacy_email_bad", "privacy@test-clinic.example", "privacy-at-clinic", "privacy-at", "privacy_contact.email", "not an email"),
    ("privacy_phone_bad", '"+61 2 9000 0000"', '"call me"', "call me", "privacy_contact.phone", "not a phone"),
    ("version_a_number", 'version: "1"', "version: 1.5", "version:", "version", "valid string"),
    ("timezone_unknown", "timezone: Australia/Sydney", "timezone: Australia/Sydnee", "timezone:", "timezone", "unknown time zone"),
    ("timezone_path_traversal", "timezone: Australia/Sydney", "timezone: ../../etc/passwd", "timezone:", "timezone", "not a time zone"),
    ("timezone_wrong_type", "timezone: Australia/Sydney", "timezone: 10", "timezone:", "timezone", "not a time zone"),
    ("hour_25", 'start: "08:00"', 'start: "25:00"', "25:00", "business_hours[0].start", "not a time of day"),
    ("minute_61", 'end: "18:00"', 'end: "17:61"', "17:61", "business_hours[0].end", "not a time of day"),
    ("time_unquoted_number", 'start: "08:00"', "start: 800", "start: 800", "business_hours[0].start", "expected a local time"),
    ("end_before_start", 'end: "18:00"', 'end: "07:00"', "  - days: [mon", "business_hours[0]", "is not after start"),
    ("unknown_day", "days: [mon, tue,", "days: [mnd, tue,", "days:", "business_hours[0].days[0]", "'mnd' is not allowed"),
    ("empty_days", "days: [mon, tue, wed, thu, fri]", "days: []", "days:", "business_hours[0].days", "at least 1"),
    ("repeated_day", "days: [mon, tue, wed, thu, fri]", "days: [mon, mon]", "  - days:", "business_hours[0]", "repeat a day"),
    ("bad_holiday", "holidays: [2025-12-25]", "holidays: [christmas]", "holidays:", "holidays[0]", "date"),
    ("empty_accounts", "accounts: [jsmith]", "accounts: []", "accounts: []", "technicians[0].accounts", "at least 1"),
    ("account_claimed_twice", "accounts: [akaur, akaur-adm]", "accounts: [akaur, jsmith]", "accounts: [akaur,", "technicians[1].accounts[1]", "already claimed by technician 'jsmith'"),
    ("account_of_principal", "account: svc_backup", "account: akaur-adm", "account: akaur-adm", "principals[0].account", "already claimed by technician 'akaur'"),
    ("root_as_technician_account", "accounts: [jsmith]", "accounts: [jsmith, root]", "accounts: [jsmith, root]", "technicians[0].accounts[1]", "shared system account"),
    ("root_principal_without_pin", "account: bpsvc", "account: root", "account: root", "principals[1].account", "expected an exe pin"),
    ("bad_account_name", "accounts: [jsmith]", "accounts: [J Smith]", "accounts: [J", "technicians[0].accounts[0]", "not an OS account"),
    ("duplicate_technician_id", "  - id: akaur", "  - id: jsmith", "  - id: jsmith\n    name: Amrit", "technicians[1].id", "duplicate technician id 'jsmith'"),
    ("duplicate_area_id", "  - id: scans", "  - id: backups", "  - id: backups\n    description: Scanned", "areas[2].id", "duplicate area id"),
    ("duplicate_principal", "  - name: clinical-app", "  - name: backup-job", "  - name: backup-job\n    account: bpsvc", "principals[1].name", "duplicate principal"),
    ("principal_exe_relative", "exe: /usr/bin/restic", "exe: bin/restic", "exe:", "principals[0].exe", "not an absolute"),
    ("glob_relative", "paths: [/srv/backups/**]", "paths: [srv/backups/**]", "paths: [srv", "areas[1].paths[0]", "is relative"),
    ("glob_empty", "paths: [/srv/backups/**]", "paths: ['']", "paths: ['']", "areas[1].paths[0]", "empty path glob"),
    ("dstar_not_whole_segment", "paths: [/srv/backups/**]", "paths: [/srv/backups/**.bak]", "paths: [/srv/backups/**.bak", "areas[1].paths[0]", "'**' must be a whole segment"),
    ("unbalanced_bracket", "/srv/bp/letters/*.pdf]", "'/srv/bp/letters/[ab.pdf']", "/srv/bp/letters/[", "areas[0].paths[1]", "unbalanced '['"),
    ("bad_class_range", "/srv/bp/letters/*.pdf]", "'/srv/bp/letters/[z-a].pdf']", "/srv/bp/letters/[", "areas[0].paths[1]", "not a valid glob"),
    ("glob_double_slash", "paths: [/srv/backups/**]", "paths: [/srv//backups/**]", "paths: [/srv//", "areas[1].paths[0]", "empty segment"),
    ("glob_dotdot", "paths: [/srv/backups/**]", "paths: [/srv/../backups/**]", "paths: [/srv/..", "areas[1].paths[0]", "'..' segment"),
    ("glob_root", "paths: [/srv/backups/**]", "paths: [/]", "paths: [/]", "areas[1].paths[0]", "whole machine"),
    ("glob_top_level_literal", "paths: [/srv/backups/**]", "paths: [/srv]", "paths: [/srv]", "areas[1].paths[0]", "would be '/'"),
    ("glob_wild_top", "paths: [/srv/backups/**]", "paths: ['/**']", "paths: ['/**']", "areas[1].paths[0]", "literal top directory"),
    ("same_glob_two_areas", "paths: [/srv/backups/**]", "paths: [/srv/bp/docs/**]", "paths: [/srv/bp/docs/**]\n    kinds: [health]\n", "areas[1].paths[0]", "already in area 'patient-docs'"),
    ("exclude_equals_path", "exclude: [/srv/bp/docs/templates/**]", "exclude: [/srv/bp/docs/**]", "exclude:", "areas[0].exclude[0]", "would empty it"),
    ("unknown_kind", "kinds: [health, medicare]", "kinds: [health, medicare, gossip]", "kinds: [health, medicare, gossip]", "areas[0].kinds[2]", "'gossip' is not allowed"),
    ("empty_kinds", "kinds: [health, medicare]", "kinds: []", "kinds: []", "areas[0].kinds", "at least 1"),
    ("negative_individuals", "individuals_per_file: 5000", "individuals_per_file: -1", "individuals_per_file: -1", "areas[1].individuals_per_file", "greater than or equal to 0"),
    ("individuals_as_string", "individuals_per_file: 5000", 'individuals_per_file: "5000"', 'individuals_per_file: "5000"', "areas[1].individuals_per_file", "valid integer"),
    ("areas_missing", "areas:\n  - id: patient-docs", "zones:\n  - id: patient-docs", "zones:", "zones", "unknown key 'zones'"),
    ("in_scope_unknown_area", "  - areas: [backups]\n    actions: [list, read]", "  - areas: [backup]\n    actions: [list, read]", "  - areas: [backup]", "in_scope[0].areas[0]", "unknown area 'backup'"),
    ("in_scope_unknown_technician", "technicians: [jsmith]\n    hours: any", "technicians: [jsmiht]\n    hours: any", "technicians: [jsmiht]", "in_scope[1].technicians[0]", "unknown technician 'jsmiht'"),
    ("in_scope_unknown_action", "actions: [list, read]", "actions: [list, peek]", "actions: [list, peek]", "in_scope[0].actions[1]", "'peek' is not allowed"),
    ("in_scope_hours_bad", "hours: business", "hours: sometimes", "hours: sometimes", "in_scope[0].hours", "'sometimes' is not allowed"),
    ("in_scope_no_actions", "actions: [list, read]", "actions: []", "actions: []", "in_scope[0].actions", "at least 1"),
    ("jit_bad_duration", "max_duration: 4h", "max_duration: 4 hours", "max_duration: 4", "just_in_time[0].max_duration", "not a duration"),
    ("jit_duration_misordered", "max_duration: 4h", "max_duration: 30m1h", "max_duration: 30m1h", "just_in_time[0].max_duration", "misorders"),
    ("jit_zero_duration", "max_duration: 4h", "max_duration: 0h", "max_duration: 0h", "just_in_time[0].max_duration", "is zero"),
    ("jit_over_ceiling", "max_duration: 4h", "max_duration: 30d", "max_duration: 30d", "just_in_time[0].max_duration", "over the ceiling"),
    ("jit_bad_regex", '"^T-[0-9]+$"', '"^T-[0-9+$"', "ticket_pattern", "just_in_time[0].ticket_pattern", "not a valid regular expression"),
    ("jit_unknown_area", "  - areas: [patient-docs, scans]", "  - areas: [patient-docs, scanz]", "  - areas: [patient-docs, scanz]", "just_in_time[0].areas[1]", "unknown area 'scanz'"),
    ("approvers_zero", "      count: 1", "      count: 0", "count: 0", "just_in_time[0].approvers.count", "greater than or equal to 1"),
    ("approvers_unknown_role", "from: [client_manager]", "from: [the_cat]", "from: [the_cat]", "just_in_time[0].approvers.from[0]", "'the_cat' is not allowed"),
    ("break_glass_over_ceiling", "max_duration: 2h", "max_duration: 2d", "max_duration: 2d", "break_glass.max_duration", "over the ceiling"),
    ("break_glass_allowed_yes", "allowed: true", "allowed: yes", "allowed: yes", "break_glass.allowed", "valid boolean"),
    ("break_glass_unknown_area", "  areas: [patient-docs]\n  actions: [read]", "  areas: [patient-doc]\n  actions: [read]", "  areas: [patient-doc]", "break_glass.areas[0]", "unknown area 'patient-doc'"),
    ("bulk_read_zero", "files: 50", "files: 0", "files: 0", "detection.bulk_read.files", "greater than or equal to 1"),
    ("heartbeat_words", "heartbeat_silence: 5m", "heartbeat_silence: 5 minutes", "heartbeat_silence", "detection.heartbeat_silence", "not a duration"),
    ("clock_skew_number", "clock_skew: 30s", "clock_skew: 30", "clock_skew", "detection.clock_skew", "expected a duration string"),
    ("retention_bad", "retention: 7y", "retention: forever", "retention:", "retention", "not a duration"),
    ("others_bad", "retention: 7y\n", "retention: 7y\nothers: maybe\n", "others:", "others", "'maybe' is not allowed"),
    ("outside_areas_deny", "retention: 7y\n", "retention: 7y\noutside_areas: deny\n", "outside_areas:", "outside_areas", "'deny' is not allowed"),
    ("technicians_not_a_list", "technicians:\n  - id: jsmith", "technicians: jsmith\nx_old:\n  - id: jsmith", "technicians: jsmith", "technicians", "valid tuple"),
    ("duplicate_key", "retention: 7y\n", "retention: 7y\nversion: '2'\n", "version: '2'", "version", "duplicate key 'version'"),
    ("duplicate_nested_key", "  name: Test Clinic\n", "  name: Test Clinic\n  name: Other\n", "name: Other", "client.name", "duplicate key 'name'"),
    ("anchor", "retention: 7y", "retention: &r 7y", "retention:", "retention", "anchors and aliases are refused"),
    ("tag", "retention: 7y", "retention: !!str 7y", "retention:", "retention", "explicit YAML tag"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "marker", "field", "fragment"),
    [pytest.param(*m[1:], id=m[0]) for m in MUTATIONS],
)
def test_malformed_agreement_names_line_and_field(
    old: str, new: str, marker: str, field: str, fragment: str
) -> None:
    assert old in VALID
    text = VALID.replace(old, new, 1)
    found = problems_of(text)
    expected_line = line_of(text, marker)
    hits = [p for p in found if p.field == field and fragment in p.message]
    assert hits, f"no problem at {field} with {fragment!r}: {[str(p) for p in found]}"
    assert hits[0].line == expected_line, str(hits[0])
    assert hits[0].file == FILE
    assert str(hits[0]).startswith(f"{FILE}:{expected_line}:{hits[0].col}: {field}: ")


def test_there_are_at_least_forty_malformed_cases() -> None:
    assert len(MUTATIONS) >= 40


def test_every_problem_is_reported_at_once() -> None:
    text = VALID
    for old, new in [
        ("timezone: Australia/Sydney", "timezone: Mars/Olympus"),
        ('start: "08:00"', 'start: "25:00"'),
        ("accounts: [akaur, akaur-adm]", "accounts: [akaur, jsmith]"),
        ("kinds: [health, dva]", "kinds: [health, dvaa]"),
        ("max_duration: 4h", "max_duration: 4x"),
        ("  - areas: [backups]", "  - areas: [backupz]"),
    ]:
        text = text.replace(old, new, 1)
    found = problems_of(text)
    assert [p.field for p in found] == [
        "timezone",
        "business_hours[0].start",
        "technicians[1].accounts[1]",
        "areas[2].kinds[1]",
        "in_scope[0].areas[0]",
        "just_in_time[0].max_duration",
    ]
    assert [p.line for p in found] == sorted(p.line for p in found)


def test_valid_agreement_loads_with_digest() -> None:
    agreement = parse_agreement(VALID, filename=FILE)
    assert agreement.sha256 == hashlib.sha256(VALID.encode()).hexdigest()
    assert agreement.client.id == "test-clinic"
    assert agreement.timezone.key == "Australia/Sydney"
    with pytest.raises(Exception, match="frozen"):
        agreement.version = "2"  # type: ignore[misc]


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(VALID.encode() + b"#" * (MAX_BYTES + 10))
    with pytest.raises(AgreementInvalid, match="over 1048576 bytes") as info:
        load_agreement(big)
    assert info.value.problems[0].file == str(big)


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    found = problems_of("\n".join(lines) + "\n")
    assert "anchors and aliases are refused" in found[0].message
    assert found[0].line == 1


def test_too_many_nodes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("policies.load.MAX_EVENTS", 1000)
    found = problems_of("".join(f"k{i}: 1\n" for i in range(600)))
    assert len(found) == 1
    assert "more than 1000 YAML nodes" in found[0].message
    assert found[0].line == 499  # the node past the cap: stream, document, mapping, 2 a line


def test_problems_are_capped_with_a_count() -> None:
    found = problems_of("".join(f"k{i}: 1\n" for i in range(700)))
    assert len(found) == 501
    assert found[-1].message.endswith("more problems not shown")


def test_deep_nesting_is_refused() -> None:
    found = problems_of("client: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nesting is deeper" in found[0].message


def test_binary_garbage_is_refused() -> None:
    found = problems_of(bytes(range(256)) * 4)
    assert found[0].field == "<document>"


def test_nul_byte_is_refused() -> None:
    found = problems_of(VALID.replace("retention: 7y", "retention: 7y\x00"))
    assert "NUL" in found[0].message


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_empty_file_is_refused(text: str) -> None:
    assert "empty" in problems_of(text)[0].message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping_is_refused(text: str) -> None:
    assert "expected a mapping" in problems_of(text)[0].message


def test_two_documents_are_refused() -> None:
    found = problems_of(VALID + "---\nclient: {}\n")
    assert "more than one YAML document" in found[0].message


def test_yaml_syntax_error_has_position() -> None:
    found = problems_of("client:\n  id: [unclosed\n")
    assert found[0].message.startswith("not valid YAML")
    assert found[0].line >= 2


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(AgreementInvalid, match="cannot read"):
        load_agreement(tmp_path / "missing.yaml")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_agreement_invalid(data: bytes) -> None:
    with pytest.raises(AgreementInvalid):
        parse_agreement(data, filename=FILE)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_damaged_agreements_raise_only_agreement_invalid(data: st.DataObject) -> None:
    lines = VALID.splitlines(keepends=True)
    start = data.draw(st.integers(0, len(lines) - 1))
    end = data.draw(st.integers(start, min(len(lines), start + 3)))
    junk = data.draw(st.text(max_size=20))
    text = "".join(lines[:start]) + junk + "".join(lines[end:])
    problems: list[Problem] = []
    try:
        parse_agreement(text, filename=FILE)
    except AgreementInvalid as exc:
        problems = exc.problems
    assert all(p.line >= 1 and p.col >= 1 for p in problems)
