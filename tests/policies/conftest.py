"""A small valid agreement the policy tests mutate and decide against."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.compile import CompiledAgreement, compile_agreement
from policies.isolated import compile_isolated
from policies.load import parse_agreement

AGREEMENTS = Path(__file__).resolve().parents[2] / "policies" / "agreements"

VALID = """\
client:
  id: test-clinic
  name: Test Clinic
privacy_contact:
  name: Pat Privacy
  email: privacy@test-clinic.example
  phone: "+61 2 9000 0000"
version: "1"
timezone: Australia/Sydney
business_hours:
  - days: [mon, tue, wed, thu, fri]
    start: "08:00"
    end: "18:00"
holidays: [2025-12-25]
technicians:
  - id: jsmith
    name: Jo Smith
    email: jo@msp.example
    accounts: [jsmith]
    role: lead
  - id: akaur
    name: Amrit Kaur
    email: amrit@msp.example
    accounts: [akaur, akaur-adm]
principals:
  - name: backup-job
    account: svc_backup
    exe: /usr/bin/restic
  - name: clinical-app
    account: bpsvc
areas:
  - id: patient-docs
    description: Patient documents
    paths: [/srv/bp/docs/**, /srv/bp/letters/*.pdf]
    kinds: [health, medicare]
    individuals_per_file: 1
    exclude: [/srv/bp/docs/templates/**]
  - id: backups
    description: Database backups
    paths: [/srv/backups/**]
    kinds: [health]
    individuals_per_file: 5000
  - id: scans
    description: Scanned letters, one level deep
    paths: [/srv/bp/docs/scans/*/*.tif]
    kinds: [health, dva]
    individuals_per_file: 1
in_scope:
  - areas: [backups]
    actions: [list, read]
    hours: business
  - areas: [patient-docs]
    actions: [list]
    technicians: [jsmith]
    hours: any
just_in_time:
  - areas: [patient-docs, scans]
    actions: [read, list]
    max_duration: 4h
    ticket_pattern: "^T-[0-9]+$"
    approvers:
      count: 1
      from: [client_manager]
break_glass:
  allowed: true
  max_duration: 2h
  areas: [patient-docs]
  actions: [read]
detection:
  bulk_read: {files: 50, minutes: 10}
  heartbeat_silence: 5m
  clock_skew: 30s
retention: 7y
"""


@pytest.fixture(scope="session", params=["here", "isolated"])
def compiled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> CompiledAgreement:
    """The VALID agreement, compiled in this process, and in a child (`policies.isolated`,
    as the agent daemon does): every decision test runs against both."""
    if request.param == "here":
        return compile_agreement(parse_agreement(VALID, filename="valid.yaml"))
    path = tmp_path_factory.mktemp("isolated") / "valid.yaml"
    path.write_text(VALID, encoding="utf-8")
    return compile_isolated(path)
