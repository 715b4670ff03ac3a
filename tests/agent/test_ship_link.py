"""The shipper child is started logging as the daemon was configured to (protos.logs)."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

import pytest
import structlog

from agent.ship_link import log_options
from protos import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    config, settings = structlog.get_config(), logs._settings
    yield
    structlog.configure(**config)
    logs._settings = settings


@pytest.mark.parametrize(
    ("level", "fmt", "tty", "expected"),
    [
        ("debug", "json", False, ["--log-level", "debug", "--log-format", "json"]),
        ("WARNING", "console", False, ["--log-level", "warning", "--log-format", "console"]),
        ("warn", "auto", False, ["--log-level", "warning", "--log-format", "json"]),
        ("error", "auto", True, ["--log-level", "error", "--log-format", "console"]),
        ("no-such-level", "json", False, ["--log-level", "info", "--log-format", "json"]),
    ],
)
def test_the_child_logs_as_the_daemon_was_configured(
    restore_logging: None,
    monkeypatch: pytest.MonkeyPatch,
    level: str,
    fmt: logs.LogFormat,
    tty: bool,
    expected: list[str],
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(stderr, "isatty", lambda: tty)
    monkeypatch.setattr(sys, "stderr", stderr)
    logs.configure(level, fmt)
    assert log_options() == expected


def test_a_daemon_that_never_configured_logging_leaves_the_child_its_defaults(
    restore_logging: None,
) -> None:
    logs._settings = None
    assert log_options() == []
