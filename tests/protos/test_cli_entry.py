"""The `custodes` entry module: groups load independently; errors print plainly."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from protos import cli


def test_a_group_that_fails_to_import_does_not_break_the_others(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = EntryPoint("policies", "policies.cli:register", "custodes.commands")
    bad = EntryPoint("ghost", "no_such_package_custodes.cli:register", "custodes.commands")
    monkeypatch.setattr(cli, "entry_points", lambda group: [bad, good])

    assert cli.main(["policy", "check", "/nonexistent.yaml"]) == 1  # policy still runs
    assert "no_such_package_custodes" not in capsys.readouterr().err

    assert cli.main(["ghost", "run"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "could not be loaded: no_such_package_custodes.cli:register" in err
    assert "make venv" in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "policy" in capsys.readouterr().out


def test_agent_commands_load_neither_the_server_nor_grpc() -> None:
    probe = (
        "import sys\n"
        "from protos import cli\n"
        "cli.main(['agent', 'checkpoint', '--config', '/nonexistent/agent.toml'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'server', 'grpc', 'aiohttp'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
    assert "cannot read the agent configuration" in out.stderr
