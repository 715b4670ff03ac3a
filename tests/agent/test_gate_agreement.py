"""The gate deciding with a real compiled agreement (policies.compile), not a fake."""

from __future__ import annotations

import pwd
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.gate import Gate
from agent.records import AccessRecord
from policies.compile import compile_agreement
from policies.load import parse_agreement
from policies.model import Action, Grant, Verdict
from tests.agent.conftest import STAFF, TECH, FakeSink, run_opener

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
HOUR = timedelta(hours=1)

AGREEMENT = """\
client: {{id: ctest-clinic, name: Test Clinic}}
privacy_contact: {{name: Privacy Officer, email: privacy@clinic.example, phone: "+61 2 9000 0000"}}
version: "t1"
timezone: Australia/Sydney
business_hours:
  - {{days: [mon, tue, wed, thu, fri, sat, sun], start: "00:00", end: "23:59"}}
technicians:
  - {{id: tess, name: Tess Tech, email: tess@msp.example, accounts: [{tech}]}}
areas:
  - id: records
    description: Patient records
    paths: ["{area}/**"]
    kinds: [health]
    individuals_per_file: 1
in_scope:
  - {{description: listing only, areas: [records], actions: [list], technicians: "*", hours: any}}
others: allow
outside_areas: allow
detection:
  bulk_read: {{files: 50, minutes: 10}}
  heartbeat_silence: 5m
  clock_skew: 30s
retention: 7y
"""


@pytest.fixture
def gate(workdir: Path, accounts: dict[str, pwd.struct_passwd]) -> Iterator[tuple[Gate, FakeSink]]:
    area = workdir / "records"
    area.mkdir(mode=0o777)
    area.chmod(0o777)
    (area / "chart.txt").write_text("x")
    (area / "chart.txt").chmod(0o666)
    text = AGREEMENT.format(tech=accounts[TECH].pw_name, area=area)
    compiled = compile_agreement(parse_agreement(text, filename="ctest.yaml"))
    sink = FakeSink()
    g = Gate(policy=compiled, sink=sink, roots=[d for _, d in compiled.area_roots()])
    g.start()
    try:
        yield g, sink
    finally:
        g.stop()


def test_compiled_agreement_denies_a_read_out_of_scope_and_allows_a_listing(
    gate: tuple[Gate, FakeSink], workdir: Path, accounts: dict[str, pwd.struct_passwd]
) -> None:
    g, sink = gate
    area = workdir / "records"
    assert g.marks == 1
    tech = accounts[TECH]
    assert run_opener("r", str(area / "chart.txt"), user=tech) == ["EPERM"]
    assert run_opener("d", str(area), user=tech) == ["ok"]
    assert run_opener("r", str(area / "chart.txt"), user=accounts[STAFF]) == ["ok"]
    denied = sink.wait_for(lambda r: r.decision.verdict is Verdict.DENY)
    assert denied.decision.technician == "tess"
    assert denied.decision.area == "records"
    assert denied.decision.kinds == ("health",)
    listed = sink.wait_for(lambda r: r.action is Action.LIST)
    assert listed.decision.allowed


LISTING = (
    '  - {description: listing only, areas: [records], actions: [list], technicians: "*", '
    "hours: any}\n"
)
READING = LISTING.replace("listing only", "reads").replace("[list]", "[read]")
JIT_READ = (
    "just_in_time:\n  - {areas: [records], actions: [read], max_duration: 4h, "
    'ticket_pattern: "^T-[0-9]+$", approvers: {count: 1, from: [client_manager]}}\n'
)


def _start(area: Path, tech: str, rules: str, jit: str = "") -> tuple[Gate, FakeSink]:
    """A gate over `area` deciding with AGREEMENT, its in-scope rules replaced by `rules`
    and `jit` added."""
    text = AGREEMENT.format(tech=tech, area=area)
    assert LISTING in text
    text = text.replace(LISTING, rules).replace("others: allow\n", jit + "others: allow\n")
    compiled = compile_agreement(parse_agreement(text, filename="ctest.yaml"))
    sink = FakeSink()
    g = Gate(policy=compiled, sink=sink, roots=[d for _, d in compiled.area_roots()])
    g.start()
    return g, sink


def _records(sink: FakeSink, path: str, n: int) -> list[AccessRecord]:
    sink.wait_for(lambda _: sum(r.path == path for r in sink.records) >= n)
    return [r for r in sink.records if r.path == path]


def test_an_allow_seen_twice_is_then_answered_in_c_and_every_open_is_recorded(
    workdir: Path, accounts: dict[str, pwd.struct_passwd]
) -> None:
    area = workdir / "records"
    area.mkdir(mode=0o777)
    chart = area / "chart.txt"
    chart.write_text("x")
    chart.chmod(0o666)
    g, sink = _start(area, accounts[TECH].pw_name, READING)
    try:
        assert run_opener("r", *[str(chart)] * 4, user=accounts[TECH]) == ["ok"] * 4
        records = _records(sink, str(chart), 4)
        assert g.stats.remembered == 2  # the first allow is noted, the second remembered
    finally:
        g.stop()
    assert [(r.decision.rule, r.action, r.attribution.uid) for r in records] == [
        ("in_scope", Action.READ, accounts[TECH].pw_uid)
    ] * 4
    assert len({r.unix_nanos for r in records}) == 4


def test_new_grants_end_a_remembered_allow_and_a_deny_is_never_remembered(
    workdir: Path, accounts: dict[str, pwd.struct_passwd]
) -> None:
    area = workdir / "records"
    area.mkdir(mode=0o777)
    chart = area / "chart.txt"
    chart.write_text("x")
    chart.chmod(0o666)
    g, sink = _start(area, accounts[TECH].pw_name, LISTING, JIT_READ)
    tech = accounts[TECH]
    try:
        assert run_opener("r", *[str(chart)] * 3, user=tech) == ["EPERM"] * 3
        assert g.stats.remembered == 0
        now = datetime.now(tz=UTC)
        g.set_grants([Grant("g-1", "tess", "records", frozenset({Action.READ}), now, now + HOUR)])
        assert run_opener("r", *[str(chart)] * 3, user=tech) == ["ok"] * 3
        assert g.stats.remembered == 1
        g.set_grants([])
        assert run_opener("r", str(chart), user=tech) == ["EPERM"]
        assert g.stats.remembered == 1
        _records(sink, str(chart), 7)
    finally:
        g.stop()
