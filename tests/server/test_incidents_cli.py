"""`custodes incidents ...` through protos.cli.main on a real data directory."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from protos.cli import main
from server import incidents_cli
from server.detect.model import Finding
from server.incidents import register
from server.store import open_store
from server.store.incidents import IncidentStore
from tests.server.scenarios.harness import Run, scenario_files

NOW = 1_760_000_000.0


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert main(["server", "init", "--data", str(data)]) == 0
    store = open_store(data / "custodes.db")
    try:
        run = Run.prepare(next(p for p in scenario_files() if p.stem == "bulk_read"), store)
        run.play(run.detector())
    finally:
        store.close()
    return data


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_whole_assessment_from_the_command_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ("--data", str(data_dir))
    code, out, _ = cli(capsys, "incidents", "list", *d)
    assert code == 0
    assert "INC-000001" in out
    assert "bulk_read" in out
    steps = [
        (
            "assess",
            "INC-000001",
            "--by",
            "Dr Tran",
            "--factor",
            "kinds=health, Medicare",
            "--factor",
            "persons=one MSP technician",
            "--containment",
            "akaur's access suspended",
            "--my-health-records",
            "yes",
        ),
        (
            "decide",
            "1",
            "--by",
            "Dr Tran",
            "--outcome",
            "eligible",
            "--reason",
            "backups hold every patient's record",
        ),
        ("statement", "1", "--prepared", "--by", "Dr Tran"),
        ("notified", "1", "--by", "Dr Tran", "--option", "publish"),
        ("close", "1", "--by", "Dr Tran", "--note", "notified; backups re-keyed"),
    ]
    for step in steps:
        code, out, err = cli(capsys, "incidents", *step, *d)
        assert code == 0, err
    code, out, _ = cli(capsys, "incidents", "show", "1", "--json", *d)
    shown = json.loads(out)
    assert shown["state"] == "closed"
    assert [a[2] for a in shown["audit"]] == [
        "opened",
        "assess",
        "decide",
        "statement",
        "notify",
        "close",
    ]
    assert shown["my_health_records"] is True
    code, out, _ = cli(capsys, "incidents", "statement", "1", *d)
    assert "Harbourside General Practice" in out
    assert "System Operator" in out
    code, out, _ = cli(capsys, "incidents", "register", "--format", "csv", *d)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["individuals_affected"] == "720000"
    assert rows[0]["decided_by"] == "Dr Tran"
    code, out, _ = cli(capsys, "incidents", "register", "--format", "json", *d)
    assert json.loads(out)[0]["state"] == "closed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("incidents", "show", "INC-999"), "no incident has id 999"),
        (("incidents", "show", "seven"), "not an incident id"),
        (("incidents", "close", "1", "--by", "x", "--note", "done"), "cannot become closed"),
        (
            ("incidents", "decide", "1", "--by", "x", "--outcome", "eligible", "--reason", "r"),
            "cannot become eligible",
        ),
        (("incidents", "assess", "1", "--by", "x", "--factor", "nonsense"), "not KEY=REASON"),
        (("incidents", "assess", "1", "--by", "x", "--factor", "mood=bad"), "unknown s 26WG"),
    ],
)
def test_user_errors_print_a_message_not_a_traceback(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, _, err = cli(capsys, *argv, "--data", str(data_dir))
    assert code != 0
    assert message in err
    assert "Traceback" not in err


def test_the_register_and_list_read_in_chunks_and_write_what_the_register_module_writes(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(data_dir / "custodes.db")
    try:
        incidents = IncidentStore(store)
        for i in range(4):  # five incidents in all, read two at a time
            finding = Finding("denied_out_of_scope", "harbourside-gp", f"tech{i}", NOW, f"case {i}")
            incidents.commit(
                [finding], now=NOW + i, window_s=60, state_rows={}, cursors={}, entities={}
            )
        every = incidents.incidents()
    finally:
        store.close()
    monkeypatch.setattr(incidents_cli, "CHUNK", 2)
    monkeypatch.setattr(incidents_cli, "_now", lambda: NOW)
    d = ("--data", str(data_dir))
    assert cli(capsys, "incidents", "register", *d)[1] == register.to_csv(every, NOW)
    json_out = cli(capsys, "incidents", "register", "--format", "json", *d)[1]
    assert json_out == register.to_json(every, NOW)
    out = data_dir.parent / "register.json"
    code, _, err = cli(capsys, "incidents", "register", "--format", "json", "--out", str(out), *d)
    assert code == 0
    assert "wrote 5 incident(s)" in err
    assert out.read_text(encoding="utf-8") == json_out
    listed = cli(capsys, "incidents", "list", *d)[1].splitlines()
    assert [line.split("\t")[0] for line in listed] == [i.label for i in every]


def test_an_empty_register_is_an_empty_json_array(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["server", "init", "--data", str(data)]) == 0
    capsys.readouterr()
    out = cli(capsys, "incidents", "register", "--format", "json", "--data", str(data))[1]
    assert out == register.to_json([], NOW) == "[]\n"
