"""Logging set-up: lines go to the stderr of the moment, in JSON or console form."""

from __future__ import annotations

import io
import json
import sys

import pytest
import structlog

from protos import logs


def test_lines_follow_a_replaced_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure("info", "json")
    first.close()  # e.g. a captured stream that has gone away
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    structlog.get_logger().info("grant_applied", grant="g-1")
    line = json.loads(second.getvalue())
    assert line["event"] == "grant_applied"
    assert line["grant"] == "g-1"
    assert line["level"] == "info"


def test_level_filters_lower_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    logs.configure("warning", "json")
    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["loud"]
