"""The console store's searches over the evidence tables (both dialects)."""

from __future__ import annotations

from server.console.views import NANOS
from server.store import Store
from server.store.console import ConsoleStore
from tests.console.world import access_record, add_agent, append
from tests.server.conftest import pg_cluster, store, store_url  # noqa: F401 - fixtures


def test_first_seqs_at_finds_each_day_boundary_in_one_search(store: Store) -> None:  # noqa: F811
    add_agent(store, "clinic-01", "clinic")
    times = [10, 20, 20, 30, 45, 45, 45, 60, 90, 91]  # seconds; an agent's clock never goes back
    rows = [
        access_record("clinic-01", "clinic", seq, t * NANOS, technician="tech1", path="/r/a")
        for seq, t in enumerate(times)
    ]
    append(store, "clinic-01", rows, 0)
    asked = [0, 10, 11, 20, 44, 45, 46, 90, 91, 92, 1000, 45]
    expected = [next((i for i, t in enumerate(times) if t >= a), len(times)) for a in asked]
    found = ConsoleStore(store).first_seqs_at("clinic-01", [a * NANOS for a in asked], len(times))
    assert found == expected
    assert ConsoleStore(store).first_seqs_at("clinic-01", [], len(times)) == []
    assert ConsoleStore(store).first_seqs_at("nobody", [5 * NANOS], 0) == [0]
