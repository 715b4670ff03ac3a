"""Monitor mode: records what inotify sees, blocks nothing, and says so."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.marks import MarkRefused
from agent.observe import REASON, Monitor
from agent.records import AccessRecord
from policies.model import Action, Verdict
from tests.agent.conftest import FakePolicy, FakeSink

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def monitor(workdir: Path) -> Iterator[tuple[Monitor, FakeSink, Path]]:
    area = workdir / "area"
    (area / "secret").mkdir(parents=True)
    policy = FakePolicy(roots=[("records", str(area))], technician_accounts={})
    sink = FakeSink()
    m = Monitor(policy=policy, sink=sink, roots=[str(area)])
    m.start()
    try:
        yield m, sink, area
    finally:
        m.stop()


def _is(action: Action, rec: AccessRecord) -> bool:
    return rec.action is action


def test_create_write_read_rename_delete_are_recorded_not_enforced(
    monitor: tuple[Monitor, FakeSink, Path],
) -> None:
    m, sink, area = monitor
    f = area / "secret" / "chart.txt"
    f.write_text("x")
    assert f.read_text() == "x"  # never blocked
    f.rename(area / "secret" / "moved.txt")
    (area / "secret" / "moved.txt").unlink()
    for action in (Action.CREATE, Action.WRITE, Action.READ, Action.RENAME, Action.DELETE):
        rec = sink.wait_for(functools.partial(_is, action))
        assert not rec.enforcing
        assert rec.decision.rule == "monitor"
        assert rec.decision.reason == REASON
        assert rec.decision.verdict is Verdict.ALLOW
        assert rec.attribution.account == "unknown"
    assert sink.wait_for(lambda r: r.action is Action.RENAME).path.endswith("moved.txt")
    assert m.marks == 0
    assert m.stats.recorded >= 5


def test_a_new_subdirectory_is_watched(monitor: tuple[Monitor, FakeSink, Path]) -> None:
    _, sink, area = monitor
    new = area / "secret" / "later"
    new.mkdir()
    time.sleep(0.2)  # watchdog adds the new directory's watch asynchronously
    (new / "f.txt").write_text("x")
    sink.wait_for(lambda r: r.path == str(new / "f.txt"))


def test_monitor_refuses_root_too() -> None:
    m = Monitor(
        policy=FakePolicy(roots=[("all", "/")], technician_accounts={}),
        sink=FakeSink(),
        roots=["/"],
    )
    with pytest.raises(MarkRefused):
        m.start()
