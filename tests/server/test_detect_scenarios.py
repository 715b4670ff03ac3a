"""Scenario files through a real Detector on SQLite and PostgreSQL: the exact incidents.

Each file under tests/server/scenarios names the incidents it must produce, including the
streams that must produce none (a granted bulk read, a principal's backup at 2 a.m.).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.detect.engine import Detector
from server.store import Store, open_store
from tests.server.scenarios.harness import Run, expected, load, scenario_files, summarise

SCENARIOS = scenario_files()
# A skewed clock shows in an event only against its arrival time, which a batch read back
# from the store after a crash no longer has (heartbeats check the clock as well).
READ_BACK = [p for p in SCENARIOS if p.stem != "clock_skew"]


def _ids(path: Path) -> str:
    return path.stem


def test_there_are_scenarios_that_must_not_fire() -> None:
    quiet = {p.stem for p in SCENARIOS if not load(p).get("expect")}
    assert {"granted_bulk_read", "backup_2am"} <= quiet


@pytest.mark.parametrize("path", SCENARIOS, ids=_ids)
def test_scenario_produces_exactly_its_incidents(path: Path, store: Store) -> None:
    run = Run.prepare(path, store)
    detector = run.play(run.detector())
    assert summarise(detector) == expected(run.data)


@pytest.mark.parametrize("path", SCENARIOS, ids=_ids)
def test_restart_after_every_batch_neither_loses_nor_duplicates(path: Path, store_url: str) -> None:
    run = Run.prepare(path, open_store(store_url))

    def restart(_: int) -> Detector:
        run.store.close()
        run.store = open_store(store_url)
        return run.detector()

    try:
        detector = run.play(run.detector(), after_batch=restart, batch_size=7)
        assert summarise(detector) == expected(run.data)
    finally:
        run.store.close()


@pytest.mark.parametrize("path", READ_BACK, ids=_ids)
def test_batches_missed_by_a_crash_are_read_back_from_the_store(path: Path, store: Store) -> None:
    """Every other batch is committed but never handed over (the server died in between)."""
    run = Run.prepare(path, store)
    detector = run.detector()
    for i, batch in enumerate(run.batches(9)):
        run.clock.now = batch.received
        run.commit(batch)
        if i % 2 == 0:
            detector.on_committed(batch.records, batch.received)
    detector = run.detector()  # the restarted server
    for note in run.data.get("integrity", []):
        store.record_integrity_event(
            note.get("agent", "host-01"), note["kind"], note["detail"], int(run.start + note["at"])
        )
    for at in run.data.get("ticks", []) or [0]:
        run.clock.now = run.start + at
        detector.tick(run.clock.now)
    assert summarise(detector) == expected(run.data)


def test_a_batch_handed_over_twice_adds_nothing(store: Store) -> None:
    path = next(p for p in SCENARIOS if p.stem == "denied_storm")
    run = Run.prepare(path, store)
    detector = run.detector()
    batches = run.batches(50)
    for batch in batches:
        run.commit(batch)
        detector.on_committed(batch.records, batch.received)
    for batch in batches[:3]:
        assert detector.on_committed(batch.records, batch.received) == []
    assert summarise(detector) == expected(run.data)
