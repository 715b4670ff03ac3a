"""Loading and compiling an agreement in a child process (policies.isolated)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from policies.compile import CompiledAgreement, compile_agreement
from policies.errors import AgreementInvalid, PolicyError
from policies.isolated import compile_isolated
from policies.load import load_agreement
from policies.model import Action, Grant, Subject
from tests.policies.conftest import AGREEMENTS, VALID

EXAMPLES = sorted(AGREEMENTS.glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_child_compiles_what_this_process_compiles(path: Path) -> None:
    here = compile_agreement(load_agreement(path))
    there = compile_isolated(path)
    for attr in ("client", "version", "sha256", "timezone", "area_ids", "technician_ids"):
        assert getattr(there, attr) == getattr(here, attr), attr
    assert there.area_roots() == here.area_roots()
    assert dict(there.technician_accounts) == dict(here.technician_accounts)
    at = datetime(2026, 11, 18, 10, 0, tzinfo=here.timezone)
    subjects = [Subject(a) for a in [*here.technician_accounts, *here.principal_accounts]]
    subjects.append(Subject("staff"))
    paths = [f"{root}/x/letter.pdf" for _, root in here.area_roots()] + ["/etc/passwd"]
    for technician in here.technician_ids:
        for area in here.area_ids:
            grants = [
                Grant(
                    "g",
                    technician,
                    area,
                    frozenset(Action),
                    at - timedelta(hours=1),
                    at + timedelta(hours=1),
                )
            ]
            for subject in subjects:
                for p in paths:
                    for action in (Action.READ, Action.LIST, Action.WRITE):
                        for when in (at, at + timedelta(hours=12)):
                            assert there.decide(subject, p, action, when, grants) == here.decide(
                                subject, p, action, when, grants
                            )


def test_every_problem_comes_back_as_the_loader_reports_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        VALID.replace("timezone:", "time_zone:").replace(
            "accounts: [jsmith]", "accounts: [Bad Name]"
        )
    )
    with pytest.raises(AgreementInvalid) as here:
        load_agreement(bad)
    with pytest.raises(AgreementInvalid) as there:
        compile_isolated(bad)
    assert there.value.problems == here.value.problems
    assert len(there.value.problems) >= 2
    assert str(there.value) == str(here.value)
    assert there.value.hint == here.value.hint


def test_a_missing_file_is_refused_as_the_loader_refuses_it(tmp_path: Path) -> None:
    with pytest.raises(AgreementInvalid, match="cannot read the file"):
        compile_isolated(tmp_path / "nope.yaml")


def test_the_compiled_form_carries_no_model() -> None:
    compiled = compile_isolated(EXAMPLES[0])
    with pytest.raises(PolicyError, match="compiled in another process"):
        _ = compiled.agreement
    assert b"pydantic" not in pickle.dumps(compile_agreement(load_agreement(EXAMPLES[0])))


def _child_says(
    monkeypatch: pytest.MonkeyPatch, stdout: bytes, code: int = 0, stderr: bytes = b""
) -> None:
    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(args, code, stdout, stderr)

    monkeypatch.setattr("policies.isolated.subprocess.run", run)


def test_an_answer_naming_anything_else_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _child_says(monkeypatch, pickle.dumps(("ok", sys.exit)))
    with pytest.raises(PolicyError, match=r"unreadable.*not part of a compiled agreement"):
        compile_isolated(tmp_path / "a.yaml")


def test_an_answer_of_the_wrong_shape_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _child_says(monkeypatch, pickle.dumps(("ok", frozenset())))
    with pytest.raises(PolicyError, match="unreadable"):
        compile_isolated(tmp_path / "a.yaml")


def test_a_child_that_fails_is_reported_with_its_last_words(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _child_says(monkeypatch, b"", code=1, stderr=b"Traceback ...\nMemoryError\n")
    with pytest.raises(PolicyError, match=r"exited with status 1.*MemoryError"):
        compile_isolated(tmp_path / "a.yaml")


def test_a_child_that_hangs_is_abandoned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        raise subprocess.TimeoutExpired(args, kw["timeout"])

    monkeypatch.setattr("policies.isolated.subprocess.run", run)
    with pytest.raises(PolicyError, match="took longer than 3 s"):
        compile_isolated(tmp_path / "a.yaml", timeout=3)


def test_compiling_here_and_pickling_keeps_decisions(compiled: CompiledAgreement) -> None:
    again = pickle.loads(pickle.dumps(compiled))
    at = datetime(2025, 6, 2, 10, 0, tzinfo=compiled.timezone)
    doc = "/srv/bp/docs/2025/letter.pdf"
    for account in ("akaur", "jsmith", "svc_backup", "staff"):
        assert again.decide(Subject(account), doc, Action.READ, at) == compiled.decide(
            Subject(account), doc, Action.READ, at
        )
