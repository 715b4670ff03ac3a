"""Ingest hands its parse of each event to detection: the same observations as a reparse.

Ingest parses every event once (identity checks, indexed columns) and builds the
observation from that parse; the detector parses stored bytes only for events it reads
back. Both paths must give the rules exactly the same observations and so the same
incidents.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protos.evidence.chain import Link
from protos.evidence.keychain import EpochKey, KeyChain
from protos.evidence.origins import agent_origin
from server.batch_checks import StreamState, parse_records
from server.detect.events import observation
from server.detect.model import Observation
from server.store import Store, StoredRecord
from tests.server.scenarios.harness import Run, expected, scenario_files, summarise

SCENARIOS = scenario_files()


def _ids(path: Path) -> str:
    return path.stem


def _ingested(
    agent_id: str, client: str, records: list[StoredRecord]
) -> tuple[list[StoredRecord], list[Observation]]:
    """What ingest's parse makes of the records' event bytes."""
    state = StreamState(
        agent_id, client, KeyChain(agent_origin(client, agent_id), EpochKey(0, bytes(32))), 0
    )
    links = [Link(r.seq, r.event, r.chain_hash) for r in records]
    parsed, observations, _ = parse_records(state, links, records[0].seq, observe=True)
    assert observations is not None
    return parsed, observations


@pytest.mark.parametrize("path", SCENARIOS, ids=_ids)
def test_ingest_observations_equal_a_reparse_of_the_stored_bytes(path: Path, store: Store) -> None:
    run = Run.prepare(path, store)
    for batch in run.batches():
        parsed, observations = _ingested(batch.agent_id, run.compiled.client, batch.records)
        assert parsed == batch.records
        assert observations == [observation(r) for r in batch.records]
        assert all(len(o) == len(Observation._fields) for o in observations)


@pytest.mark.parametrize("path", SCENARIOS, ids=_ids)
def test_scenario_with_ingest_observations_produces_exactly_its_incidents(
    path: Path, store: Store
) -> None:
    run = Run.prepare(path, store)
    detector = run.detector()
    for batch in run.batches():
        run.clock.now = batch.received
        run.commit(batch)
        _, observations = _ingested(batch.agent_id, run.compiled.client, batch.records)
        detector.on_committed(batch.records, batch.received, observations)
    for note in run.data.get("integrity", []):
        store.record_integrity_event(
            note.get("agent", "host-01"), note["kind"], note["detail"], int(run.start + note["at"])
        )
    for at in run.data.get("ticks", []):
        run.clock.now = run.start + at
        detector.tick(run.clock.now)
    assert summarise(detector) == expected(run.data)


def test_observations_that_do_not_match_the_records_are_refused(store: Store) -> None:
    run = Run.prepare(SCENARIOS[0], store)
    batch = run.batches()[0]
    run.commit(batch)
    _, observations = _ingested(batch.agent_id, run.compiled.client, batch.records)
    with pytest.raises(ValueError, match="expected one each"):
        run.detector().on_committed(batch.records, batch.received, observations[1:])
