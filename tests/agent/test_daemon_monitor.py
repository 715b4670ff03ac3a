"""The daemon in monitor mode (`mode = "monitor"`, no root needed): it records what it sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.segments import JournalError
from protos.wire import pb
from tests.agent.test_daemon import AGREEMENT
from tests.agent.test_journal import events

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs inotify"),
]

CUSTODES = str(Path(sys.prefix) / "bin" / "custodes")
WAIT = 20.0


def _accesses(journal: Path) -> list[pb.Event]:
    try:
        return [e for e in events(journal) if e.WhichOneof("body") == "access"]
    except (JournalError, OSError):
        return []  # a record still being written: look again


def test_monitor_mode_records_what_it_sees_and_says_it_cannot_block(workdir: Path) -> None:
    area, state = workdir / "area", workdir / "state"
    (area / "docs").mkdir(parents=True)
    agreement = workdir / "agreement.yaml"
    agreement.write_text(AGREEMENT.format(version="v1", tech="ctest-no-such-account", area=area))
    config = workdir / "agent.toml"
    config.write_text(
        f'agent_id = "agent-1"\nclient = "test-clinic"\nagreement = "{agreement}"\n'
        f'state_dir = "{state}"\nmode = "monitor"\n'
    )
    proc = subprocess.Popen(
        [CUSTODES, "--log-format", "json", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        started: dict[str, object] = {}
        deadline = time.monotonic() + WAIT
        while not started and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("event") == "agent_started":
                started = record
        assert started.get("mode") == "monitor"
        assert "configured" in str(started.get("mode_note"))
        chart = area / "docs" / "chart.txt"
        chart.write_text("patient record\n")
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not any(
            e.access.object.path == str(chart) for e in _accesses(state / "journal")
        ):
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(WAIT)
    assert rc == 0
    seen = [e.access for e in _accesses(state / "journal") if e.access.object.path == str(chart)]
    assert seen, "monitor mode recorded nothing"
    assert {a.mode for a in seen} == {pb.GATE_MODE_MONITOR}
    assert {a.verdict for a in seen} == {pb.VERDICT_OBSERVED}
    assert all(a.rule == "monitor" for a in seen)
    assert seen[0].object.area == "records"
    assert seen[0].subject.os_user == "unknown"
    assert seen[0].subject.uid == 4294967295  # nobody could be named
    (begun,) = [e for e in events(state / "journal") if e.WhichOneof("body") == "started"]
    assert begun.started.mode == pb.GATE_MODE_MONITOR
