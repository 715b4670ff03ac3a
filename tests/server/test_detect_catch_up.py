"""A Detector started on a store with a backlog catches up in bounded steps while ingest goes on.

The scenarios (tests/server/scenarios) run with part of their events already stored before
the Detector starts, the rest committed and handed over live between catch-up steps, on
SQLite and PostgreSQL: the incidents must be exactly those of a fresh, in-order run (the
scenario's `expect`, which test_detect_scenarios holds a fresh run to), with restarts in the
middle of the catch-up too. Chunks are a few events so that each scenario spans many steps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from structlog.testing import capture_logs

from server.detect.engine import Detector
from server.detect.service import DetectionRuntime
from server.store import Store, open_store
from tests.server.scenarios.harness import Batch, Run, expected, scenario_files, summarise

T = TypeVar("T")

SCENARIOS = scenario_files()


def _ids(path: Path) -> str:
    return path.stem


def _detector(run: Run, chunk: int) -> Detector:
    return Detector(run.store, {run.compiled.client: run.compiled}, run.clock, catch_up_chunk=chunk)


def _backlog(run: Run, batch_size: int) -> tuple[list[Batch], list[Batch]]:
    """Store the first half of the scenario's batches with no Detector; the rest are live."""
    batches = run.batches(batch_size)
    half = len(batches) // 2
    for batch in batches[:half]:
        run.clock.now = batch.received
        run.commit(batch)
    return batches[:half], batches[half:]


def _finish(run: Run, detector: Detector) -> Detector:
    """The rest of the catch-up, then the scenario's integrity notes and ticks."""
    for _ in range(10_000):
        if detector.catch_up_step().finished:
            break
    for note in run.data.get("integrity", []):
        run.store.record_integrity_event(
            note.get("agent", "host-01"), note["kind"], note["detail"], int(run.start + note["at"])
        )
    for at in run.data.get("ticks", []):
        run.clock.now = run.start + at
        detector.tick(run.clock.now)
    return detector


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("path", SCENARIOS, ids=_ids)
def test_ingest_during_catch_up_gives_the_incidents_of_an_in_order_run(
    path: Path, chunk: int, store: Store
) -> None:
    run = Run.prepare(path, store)
    _, live = _backlog(run, batch_size=3)
    detector = _detector(run, chunk)
    for batch in live:
        run.clock.now = batch.received
        run.commit(batch)
        detector.on_committed(batch.records, batch.received)
        detector.catch_up_step()
    assert summarise(_finish(run, detector)) == expected(run.data)


@pytest.mark.parametrize("path", SCENARIOS, ids=_ids)
def test_restart_after_every_catch_up_step_neither_loses_nor_duplicates(
    path: Path, store_url: str
) -> None:
    run = Run.prepare(path, open_store(store_url))
    try:
        _, live = _backlog(run, batch_size=2)
        detector = _detector(run, 2)
        for batch in live:
            run.clock.now = batch.received
            run.commit(batch)
            detector.on_committed(batch.records, batch.received)
            detector.catch_up_step()
            run.store.close()  # a crash after the step: only what was committed survives
            run.store = open_store(store_url)
            detector = _detector(run, 2)
        assert summarise(_finish(run, detector)) == expected(run.data)
    finally:
        run.store.close()


def test_a_live_batch_of_an_agent_behind_waits_for_the_catch_up(store: Store) -> None:
    path = next(p for p in SCENARIOS if p.stem == "denied_storm")
    run = Run.prepare(path, store)
    backlog, live = _backlog(run, batch_size=5)
    stored = sum(len(b.records) for b in backlog)
    detector = _detector(run, 4)
    assert detector.backlog() == stored
    run.commit(live[0])
    # Neither the backlog nor the batch is read on the live path; the batch waits its turn.
    assert detector.on_committed(live[0].records, live[0].received) == []
    assert detector.incidents.detector_state()[1].get("host-01", 0) == 0
    step = detector.catch_up_step()
    assert (step.evaluated, step.finished) == (4, False)
    assert detector.incidents.detector_state()[1]["host-01"] == 4
    while not step.finished:
        step = detector.catch_up_step()
    assert detector.backlog() == 0
    # Caught up: the next batch is evaluated as it is handed over.
    run.commit(live[1])
    detector.on_committed(live[1].records, live[1].received)
    assert detector.incidents.detector_state()[1]["host-01"] == live[1].records[-1].seq + 1


def _run(coro: Any) -> Any:
    """asyncio.run in a thread of its own: the browser tests' Playwright (sync API) keeps an
    event loop running in this thread for the rest of the session."""
    out: list[Any] = []
    failed: list[BaseException] = []

    def main() -> None:
        try:
            out.append(asyncio.run(coro))
        except BaseException as e:  # handed to the test's thread
            failed.append(e)

    t = threading.Thread(target=main, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the coroutine did not finish within 60 s"
    if failed:
        raise failed[0]
    return out[0]


class _Runtime:
    """The parts of the server's Runtime the detection runtime uses: the database thread."""

    def __init__(self) -> None:
        self.turns = 0

    async def db(self, fn: Any, *args: Any) -> Any:
        self.turns += 1
        await asyncio.sleep(0)
        return fn(*args)


@pytest.fixture
def info_logs() -> Iterator[None]:
    """Info events reach the processors whatever level an earlier test configured (the
    CLI's --log-level filters in the wrapper class, before capture_logs sees anything)."""
    old = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        yield
    finally:
        structlog.configure(wrapper_class=old)


@pytest.mark.usefixtures("info_logs")
def test_the_server_catches_up_a_chunk_per_turn_and_logs_its_progress(store: Store) -> None:
    path = next(p for p in SCENARIOS if p.stem == "denied_storm")
    run = Run.prepare(path, store)
    for batch in run.batches(5):
        run.commit(batch)
    detector = _detector(run, 4)
    total = detector.backlog()
    rt = _Runtime()
    runtime = DetectionRuntime(rt, detector, lambda c: run.compiled, database_url="")  # type: ignore[arg-type]
    with capture_logs() as logs:
        assert _run(runtime.catch_up()) is True
    assert detector.backlog() == 0
    assert rt.turns >= 1 + total // 4  # the backlog, then one turn per chunk
    progress = [e for e in logs if e["event"] in ("detector_catching_up", "detector_caught_up")]
    assert [e["done"] for e in progress] == [min(4 * (i + 1), total) for i in range(len(progress))]
    assert progress[-1] == {
        "event": "detector_caught_up",
        "log_level": "info",
        "done": total,
        "total": total,
    }
    assert summarise(detector) == expected(run.data)


def test_a_round_of_catch_up_ends_with_the_periodic_checks_and_resumes_at_once(
    store: Store,
) -> None:
    """With a period of 0 s each round is one step, then the tick; the next round goes on."""
    path = next(p for p in SCENARIOS if p.stem == "denied_storm")
    run = Run.prepare(path, store)
    for batch in run.batches(5):
        run.commit(batch)
    detector = _detector(run, 100)
    rt = _Runtime()
    runtime = DetectionRuntime(
        rt,  # type: ignore[arg-type]
        detector,
        lambda c: run.compiled,
        database_url="",
        period_s=0.0,
    )

    async def rounds() -> list[bool]:
        out = [await runtime.tick()]
        while not out[-1] and len(out) < 20:
            out.append(await runtime.tick())
        return out

    assert _run(rounds()) == [False, False, False, False, True]  # 500 events
    assert detector.backlog() == 0
    # The ticks ran at today's time, when the scenario's agent (from 2025) has gone silent.
    found = [i for i in summarise(detector) if i["rule"] != "agent_silent"]
    assert found == expected(run.data)
    assert {i["rule"] for i in summarise(detector)} == {"access_denied", "agent_silent"}
