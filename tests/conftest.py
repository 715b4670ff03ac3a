"""Suite-wide rules: in strict CI a skipped root/postgres test is a failure, not a pass."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

STRICT = os.environ.get("CUSTODES_STRICT") == "1"
_MUST_RUN = ("root", "postgres", "browser")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if STRICT and report.skipped and any(m in item.keywords for m in _MUST_RUN):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} was skipped ({report.longrepr!r}) but CUSTODES_STRICT=1: "
            "in CI (root, PostgreSQL installed) this test must run"
        )
