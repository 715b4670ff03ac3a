"""agent.toml: strict parsing, path resolution, plain errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import (
    AgentConfig,
    ConfigError,
    Limits,
    load_config,
    parse_config,
    render_config,
)

GOOD = """
agent_id = "clinic-01"
client = "harbourside-gp"
agreement = "agreement.yaml"
state_dir = "/var/lib/custodes"
"""


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    cfg = parse_config(GOOD, source=tmp_path / "agent.toml")
    assert cfg.agreement == tmp_path.resolve() / "agreement.yaml"
    assert cfg.state_dir == Path("/var/lib/custodes")
    assert cfg.journal_path == Path("/var/lib/custodes/journal")
    assert cfg.grants_path == Path("/var/lib/custodes/grants.json")
    assert cfg.origin == "custodes.agent/harbourside-gp/clinic-01"
    assert cfg.limits.commit_interval_ms == 50


def test_limits_and_optional_fields_are_read(tmp_path: Path) -> None:
    text = GOOD + 'server = "127.0.0.1:7443"\nmode = "monitor"\n[limits]\nqueue_events = 1024\n'
    cfg = parse_config(text, source=tmp_path / "agent.toml")
    assert cfg.server == "127.0.0.1:7443"
    assert cfg.mode == "monitor"
    assert cfg.limits.queue_events == 1024


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("agent_id = ", "not valid TOML"),
        (GOOD + "colour = 'blue'\n", "colour"),
        (GOOD.replace('"clinic-01"', '"bad id"'), "agent_id"),
        (GOOD.replace('"clinic-01"', "7"), "agent_id"),
        (GOOD + 'mode = "loud"\n', "mode"),
        (GOOD + "[limits]\nqueue_events = 1\n", "limits.queue_events"),
        (GOOD + "[limits]\nwatchdog_seconds = -1.0\n", "limits.watchdog_seconds"),
        (GOOD + "[limits]\nsegment_bytes = '64M'\n", "limits.segment_bytes"),
        ('client = "x"\nagreement = "a"\nstate_dir = "s"\n', "agent_id"),
    ],
)
def test_bad_configuration_is_refused_naming_the_field(
    tmp_path: Path, text: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source=tmp_path / "agent.toml")
    assert needle in str(err.value)
    assert "agent.toml" in str(err.value)


def test_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the agent configuration"):
        load_config(tmp_path / "nope.toml")


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(GOOD + "#" * 300_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_config(p)


def test_render_round_trips(tmp_path: Path) -> None:
    cfg = parse_config(GOOD, source=tmp_path / "agent.toml")
    again = parse_config(render_config(cfg), source=tmp_path / "agent.toml")
    assert again == cfg
    assert isinstance(again, AgentConfig)


def test_marks_defaults_to_auto_and_takes_the_four_kinds(tmp_path: Path) -> None:
    assert parse_config(GOOD, source=tmp_path / "agent.toml").marks == "auto"
    for kind in ("auto", "filesystem", "mount", "inode"):
        cfg = parse_config(GOOD + f'marks = "{kind}"\n', source=tmp_path / "agent.toml")
        assert cfg.marks == kind
        assert parse_config(render_config(cfg), source=tmp_path / "agent.toml").marks == kind


def test_an_unknown_mark_kind_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="marks"):
        parse_config(GOOD + 'marks = "inodes"\n', source=tmp_path / "agent.toml")


def test_origin_is_the_evidence_agent_origin(tmp_path: Path) -> None:
    from protos.evidence.origins import agent_origin  # noqa: PLC0415

    cfg = parse_config(
        'agent_id = "srv-01"\nclient = "clinic"\nagreement = "a.yaml"\nstate_dir = "s"\n',
        source=tmp_path / "agent.toml",
    )
    assert cfg.origin == agent_origin("clinic", "srv-01") == "custodes.agent/clinic/srv-01"


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    text = (
        'agent_id = "bad id"\nclient = "c"\nagreement = 3\nstate_dir = "s"\ncolour = "red"\n'
        "[limits]\nqueue_events = true\nheartbeat_seconds = 0\nsnooze = 1\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, source=tmp_path / "agent.toml")
    for needle in (
        "agent_id:",
        "agreement: expected a path",
        "colour: unknown key",
        "limits.queue_events: expected an integer, got bool",
        "limits.heartbeat_seconds: 0 is out of range",
        "limits.snooze: unknown key",
    ):
        assert needle in str(err.value)


def test_limits_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"limits\.group_events"):
        Limits(group_events=0)
    assert Limits(watchdog_seconds=5).watchdog_seconds == 5.0
    assert isinstance(Limits(watchdog_seconds=5).watchdog_seconds, float)
