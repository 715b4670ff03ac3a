"""Event queries: each filter, time bounds, and keyset pagination, on both dialects."""

from __future__ import annotations

import pytest

from server.store import Store, StoredRecord, StoreError
from tests.server.conftest import agent_row, append, records

T0 = 1_700_000_000_000_000_000


def _seed(store: Store) -> list[StoredRecord]:
    """Two clients, three agents, events varied over every filtered column."""
    stored: list[StoredRecord] = []
    agents = (("clinic-01", "clinic"), ("clinic-02", "clinic"), ("ndis-01", "ndis"))
    for offset, (agent_id, client) in enumerate(agents):
        store.add_agent(agent_row(agent_id, client))
        batch = [
            rec._replace(
                unix_nanos=T0 + (rec.seq * 3 + offset) * 1_000,  # interleaved, unique
                technician=("tess", "tom", None)[rec.seq % 3],
                area=("patients", "payroll", None, "patients")[rec.seq % 4],
                verdict=("allow", "deny")[rec.seq % 2],
            )
            for rec in records(agent_id, 0, 12, client=client)
        ]
        append(store, batch)
        stored += batch
    return sorted(stored, key=lambda r: r.cursor)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("client", "clinic"),
        ("client", "ndis"),
        ("technician", "tess"),
        ("area", "payroll"),
        ("verdict", "deny"),
        ("agent_id", "clinic-02"),
        ("client", "nobody"),
    ],
)
def test_each_filter_selects_exactly_its_events(store: Store, column: str, value: str) -> None:
    everything = _seed(store)
    expected = [r for r in everything if getattr(r, column) == value]
    assert store.events(**{column: value}) == expected  # type: ignore[arg-type]


def test_filters_combine(store: Store) -> None:
    everything = _seed(store)
    expected = [
        r
        for r in everything
        if r.client == "clinic" and r.technician == "tess" and r.verdict == "allow"
    ]
    assert expected
    assert store.events(client="clinic", technician="tess", verdict="allow") == expected


def test_time_window_is_half_open(store: Store) -> None:
    everything = _seed(store)
    assert len({r.unix_nanos for r in everything}) == len(everything)
    since, until = everything[5].unix_nanos, everything[20].unix_nanos
    expected = [r for r in everything if since <= r.unix_nanos < until]
    assert store.events(since_nanos=since, until_nanos=until) == expected
    assert expected[0] == everything[5]
    assert everything[20] not in expected


@pytest.mark.parametrize("page", [1, 5, 36, 1000])
def test_pages_cover_every_event_once_in_order(store: Store, page: int) -> None:
    everything = _seed(store)
    seen: list[StoredRecord] = []
    after = None
    for _ in range(len(everything) + 2):
        chunk = store.events(limit=page, after=after)
        if not chunk:
            break
        assert len(chunk) <= page
        seen += chunk
        after = chunk[-1].cursor
    assert seen == everything


def test_pages_with_a_filter(store: Store) -> None:
    everything = _seed(store)
    expected = [r for r in everything if r.area == "patients"]
    first = store.events(area="patients", limit=4)
    rest = store.events(area="patients", after=first[-1].cursor)
    assert first + rest == expected


@pytest.mark.parametrize("limit", [0, -1, 10_001])
def test_page_limit_is_bounded(store: Store, limit: int) -> None:
    with pytest.raises(StoreError, match="page limit"):
        store.events(limit=limit)


def test_counts_per_agent(store: Store) -> None:
    _seed(store)
    assert store.count_events() == 36
    assert store.count_events("ndis-01") == 12
    assert store.count_events("nobody") == 0


def test_pages_break_ties_in_time_by_agent_and_seq(store: Store) -> None:
    for agent_id in ("b", "a"):
        store.add_agent(agent_row(agent_id))
        append(store, [r._replace(unix_nanos=T0) for r in records(agent_id, 0, 5)])
    seen: list[tuple[str, int]] = []
    after = None
    for _ in range(12):
        chunk = store.events(limit=3, after=after)
        if not chunk:
            break
        seen += [(r.agent_id, r.seq) for r in chunk]
        after = chunk[-1].cursor
    assert seen == [(a, s) for a in ("a", "b") for s in range(5)]
