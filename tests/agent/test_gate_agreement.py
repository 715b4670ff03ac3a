"""The gate deciding with a real compiled agreement (policies.compile), not a fake."""

from __future__ import annotations

import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.gate import Gate
from policies.compile import compile_agreement
from policies.load import parse_agreement
from policies.model import Action, Verdict
from tests.agent.conftest import STAFF, TECH, FakeSink, run_opener

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

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
