"""`custodes policy check` and `custodes policy explain` through the real entry module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protos.cli import main
from tests.policies.conftest import AGREEMENTS, VALID

EXAMPLES = sorted(AGREEMENTS.glob("*.yaml"))
GP = str(AGREEMENTS / "harbourside-gp.yaml")


def test_the_three_examples_check_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert [p.name for p in EXAMPLES] == [
        "banksia-care.yaml",
        "harbourside-gp.yaml",
        "kestrel-joinery.yaml",
    ]
    assert main(["policy", "check", *map(str, EXAMPLES)]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.splitlines() == [
        f"ok: {AGREEMENTS / 'banksia-care.yaml'} (client banksia-care, version 3, 3 areas)",
        f"ok: {GP} (client harbourside-gp, version 2025.1, 3 areas)",
        f"ok: {AGREEMENTS / 'kestrel-joinery.yaml'} "
        "(client kestrel-joinery, version 2025-03, 2 areas)",
    ]


def test_check_lists_every_problem_of_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(VALID)
    bad1 = tmp_path / "bad1.yaml"
    bad1.write_text(VALID.replace("retention: 7y", "retention: 7 years").replace("fri]", "fry]"))
    bad2 = tmp_path / "bad2.yaml"
    bad2.write_text("- not a mapping\n")
    assert main(["policy", "check", str(bad1), str(good), str(bad2)]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"ok: {good} (client test-clinic, version 1, 3 areas)"]
    errors = out.err.splitlines()
    assert f"{bad1}:11:32: business_hours[0].days[4]: 'fry' is not allowed here" in errors[0]
    assert errors[1].startswith(f"{bad1}:")
    assert "retention: '7 years' is not a duration" in errors[1]
    assert errors[2].startswith(f"{bad2}:1:1: <document>: top level is a list")
    assert errors[-1].startswith("hint:")


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read the file" in capsys.readouterr().err


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["policy", "explain", GP, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_explain_prints_decision_reason_rule_area_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys,
        "--technician", "akaur",
        "--path", "/srv/bestpractice/documents/2025/letter.pdf",
        "--action", "read",
        "--at", "2025-06-02T10:00+10:00",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines() == [
        "decision: deny",
        "reason:   akaur may read patient-documents only with a grant; none is active",
        "rule:     out_of_scope",
        "area:     patient-documents",
        "kinds:    health, medicare, dva, contact, identity",
    ]


def test_explain_json_shape_with_duration_grant(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys,
        "--technician", "akaur",
        "--path", "/srv/bestpractice/documents//2025/../letter.pdf",
        "--action", "read",
        "--at", "2025-06-01T10:00",
        "--grant", "patient-documents:read,list:2h",
        "--json",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert {"decision", "reason", "area", "rule", "grant_id", "kinds"} <= doc.keys()
    assert (doc["decision"], doc["rule"], doc["grant_id"]) == ("allow", "grant", "cli-1")
    assert doc["area"] == "patient-documents"
    assert doc["at"] == "2025-06-01T10:00:00+10:00"
    assert len(doc["agreement"]["sha256"]) == 64


def test_explain_grant_until_iso_already_expired(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys,
        "--technician", "akaur",
        "--path", "/srv/bestpractice/documents/a.pdf",
        "--action", "read",
        "--at", "2025-06-01T10:00",
        "--grant", "patient-documents:read:2025-06-01T09:00",
        "--json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["decision"] == "deny"


def test_explain_break_glass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys,
        "--technician", "tnguyen",
        "--path", "/srv/backups/bestpractice/db.bak",
        "--action", "read",
        "--at", "2025-06-01T03:00",
        "--grant", "database-backups:read:1h",
        "--break-glass",
        "--json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["rule"] == "break_glass"


def test_explain_naive_at_is_in_agreement_zone(capsys: pytest.CaptureFixture[str]) -> None:
    # Monday 08:30 in Sydney is in business hours; read as UTC it would be 18:30, after hours.
    args = ("--technician", "akaur", "--path", "/srv/backups/bestpractice/db.bak")
    code, out, _ = explain(capsys, *args, "--action", "read", "--at", "2025-06-02T08:30", "--json")
    assert code == 0
    assert json.loads(out)["rule"] == "in_scope"
    code, out, _ = explain(
        capsys, *args, "--action", "read", "--at", "2025-06-02T08:30+00:00", "--json"
    )
    assert json.loads(out)["rule"] == "outside_hours"


def test_explain_for_a_principal_account(capsys: pytest.CaptureFixture[str]) -> None:
    base = (
        "--account",
        "svc_backup",
        "--path",
        "/srv/bestpractice/documents/a",
        "--action",
        "read",
    )
    code, out, _ = explain(capsys, *base, "--exe", "/usr/bin/restic", "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["decision"], doc["rule"], doc["principal"]) == ("allow", "principal", "backup-job")
    _, out, _ = explain(capsys, *base, "--exe", "/bin/cp", "--json")
    assert json.loads(out)["rule"] == "other_subject"


def test_explain_sudo_account_with_login_account(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(
        capsys,
        "--account", "root", "--login-account", "jsmith",
        "--path", "/srv/scans/inbox/x.pdf", "--action", "read", "--json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["technician"] == "jsmith"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--technician", "nobody", "--path", "/x", "--action", "read"), "no technician 'nobody'"),
        (("--technician", "akaur", "--path", "/x", "--action", "read", "--at", "soon"), "--at"),
        (
            ("--technician", "akaur", "--path", "/x", "--action", "read", "--grant", "a:b"),
            "not AREA:ACTIONS:UNTIL",
        ),
        (
            ("--technician", "akaur", "--path", "/x", "--action", "read", "--grant", "a:peek:2h"),
            "not a list of actions",
        ),
        (
            (
                "--technician",
                "akaur",
                "--path",
                "/x",
                "--action",
                "read",
                "--grant",
                "a:read:later",
            ),
            "neither a duration nor a time",
        ),
    ],
)
def test_explain_usage_errors_exit_1_with_hint(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, _, err = explain(capsys, *args)
    assert code == 1
    assert message in err
    assert "hint:" in err


def test_explain_invalid_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("timezone: Australia/Sydney", "timezone: Nowhere/Land"))
    code = main(
        ["policy", "explain", str(bad), "--technician", "akaur", "--path", "/x", "--action", "read"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"{bad}:9:11: timezone: unknown time zone 'Nowhere/Land'" in err
    assert "hint:" in err
