"""The incidents page a page at a time (keyset, not OFFSET) and the breach register streamed
in chunks, over both dialects."""

from __future__ import annotations

import asyncio
import csv
import io
import threading
from typing import Any

import pytest

from server.access import Person, Role
from server.console import incident_pages, rights, views
from server.console.views import Sources
from server.detect.model import Finding
from server.incidents import register
from server.incidents.model import Incident, State
from server.store import Store
from server.store.access import AccessStore
from server.store.console import ConsoleStore, QueueCursor, count_query
from server.store.incidents import IncidentStore
from tests.console.conftest import Http, World
from tests.console.world import CLINIC, OTHER
from tests.server.conftest import pg_cluster, store, store_url  # noqa: F401 - fixtures

T0 = 1_760_000_000.0
AUDITOR = Person("auditor", Role.AUDITOR)
CLINIC_MANAGER = Person("pm", Role.APPROVER, client="clinic")

# (client, aware offset in seconds, state), raised in this order (so ids 1..9)
SPECS = [
    ("clinic", 50, State.OPEN),
    ("other", 10, State.CLOSED),
    ("clinic", 30, State.ASSESSING),
    ("clinic", 30, State.OPEN),  # the same instant as the one before: the id breaks the tie
    ("other", 5, State.OPEN),
    ("clinic", 60, State.NOT_ELIGIBLE),
    ("clinic", 70, State.CLOSED),
    ("other", 80, State.ELIGIBLE),
    ("clinic", 90, State.REMEDIATED),
]


def raise_incidents(store: Store) -> list[int]:  # noqa: F811
    """One incident per SPECS entry, in its state; their ids."""
    incidents = IncidentStore(store)
    ids = []
    for i, (client, offset, state) in enumerate(SPECS):
        finding = Finding("denied_out_of_scope", client, f"tech{i}", T0 + offset, f"case {i}")
        [change] = incidents.commit(
            [finding], now=T0 + offset, window_s=60, state_rows={}, cursors={}, entities={}
        )
        ids.append(change.incident.id)
        with incidents._tx(write=True) as cur:
            incidents._exec(
                cur,
                "UPDATE ndb_incidents SET state = ? WHERE id = ?",
                (state.value, change.incident.id),
            )
    return ids


def expected(ids: list[int], client: str | None = None) -> list[int]:
    """The queue's order: undecided by (aware, id), then decided by id, newest first."""
    rows = [(ids[i], c, t, s) for i, (c, t, s) in enumerate(SPECS) if client in (None, c)]
    undecided = sorted((t, i) for i, _, t, s in rows if s in (State.OPEN, State.ASSESSING))
    decided = sorted((i for i, _, _, s in rows if s not in (State.OPEN, State.ASSESSING)))
    return [i for _, i in undecided] + decided[::-1]


def page_through(
    console: ConsoleStore, client: str | None, states: tuple[str, ...], size: int
) -> list[int]:
    seen: list[int] = []
    after = None
    for _ in range(20):
        found = console.incident_queue(client, states, after, size)
        seen += [b.id for b in found]
        if len(found) < size:
            return seen
        last = found[-1]
        cursor = QueueCursor(last.state in ("open", "assessing"), last.aware_unix, last.id)
        after = QueueCursor.parse(cursor.text())  # through the query string and back
    raise AssertionError("the queue did not end")


@pytest.mark.parametrize("size", [1, 2, 4, 50])
def test_the_queue_pages_undecided_by_due_date_then_decided_newest_first(
    store: Store,  # noqa: F811
    size: int,
) -> None:
    ids = raise_incidents(store)
    console = ConsoleStore(store)
    assert page_through(console, None, (), size) == expected(ids)
    assert page_through(console, "clinic", (), size) == expected(ids, "clinic")


def test_the_queue_filters_by_state(store: Store) -> None:  # noqa: F811
    ids = raise_incidents(store)
    console = ConsoleStore(store)
    assert page_through(console, None, ("closed",), 1) == [ids[6], ids[1]]
    assert page_through(console, "clinic", ("open",), 1) == [ids[3], ids[0]]
    assert console.count_incidents(None, ("open", "assessing")) == 4
    assert console.count_incidents("other", ("closed", "eligible")) == 2


def test_the_page_says_how_many_and_where_the_next_page_starts(
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = raise_incidents(store)
    src = Sources(store, AccessStore(store), IncidentStore(store), ConsoleStore(store), b"k" * 32)
    monkeypatch.setattr(views, "PAGE", 3)
    now = T0 + 100
    first = views.incident_page(src, AUDITOR, now)
    assert [line.id for line in first.undecided] == expected(ids)[:3]
    assert first.decided == []
    assert (first.undecided_total, first.decided_total) == (4, 5)
    second = views.incident_page(src, AUDITOR, now, after=QueueCursor.parse(first.next))
    assert [line.id for line in second.undecided + second.decided] == expected(ids)[3:6]
    only_decided = views.incident_page(src, AUDITOR, now, state="decided")
    assert only_decided.undecided_total == 0
    assert [line.state for line in only_decided.decided] == ["remediated", "eligible", "closed"]
    assert not any(line.overdue for line in only_decided.decided)  # decided: no clock
    mine = views.incident_page(src, CLINIC_MANAGER, now)
    assert {line.client for line in mine.undecided + mine.decided} == {"clinic"}
    with pytest.raises(rights.ConsoleForbiddenError, match="clinic only, not other"):
        views.incident_page(src, CLINIC_MANAGER, now, client="other")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "X:1.0:3",
        "U:1.0:",
        "U:nan:3",
        "U:abc:3",
        "D:1.0:3",
        "U:1.0:-3",
        "D:",
        "U:1e999:2",
        "D:" + "9" * 19,
    ],
)
def test_a_malformed_cursor_starts_from_the_first_page(text: str) -> None:
    assert QueueCursor.parse(text) is None


def test_a_cursor_round_trips_through_its_text() -> None:
    for cursor in (QueueCursor(True, 1_760_000_000.123456, 42), QueueCursor(False, 0.0, 7)):
        assert QueueCursor.parse(cursor.text()) == cursor


def _run(coro: Any) -> Any:
    """asyncio.run in a thread of its own: the browser tests' Playwright (sync API) keeps an
    event loop running in the main thread for the rest of the session."""
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


def test_the_register_is_streamed_a_chunk_at_a_time_and_holds_every_incident(
    store: Store,  # noqa: F811
) -> None:
    ids = raise_incidents(store)
    incidents = IncidentStore(store)
    reads: list[int] = []

    async def read(after: int, limit: int) -> list[Incident]:
        reads.append(after)
        return incidents.incidents(after_id=after, limit=limit)

    async def collect(viewer: Person) -> list[str]:
        return [text async for text in incident_pages.register_text(read, viewer, T0, chunk=2)]

    parts = _run(collect(AUDITOR))
    assert len(parts) == len(reads) == 5  # 9 incidents, 2 a read: the last read is short
    assert "".join(parts) == register.to_csv(incidents.incidents(), T0)  # as the CLI writes it
    assert reads == [0, *ids[1:8:2]]
    text = "".join(_run(collect(CLINIC_MANAGER)))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["client"] for r in rows} == {"clinic"}
    assert len(rows) == 6


def test_the_incidents_page_filters_and_scopes_through_the_server(http: Http, world: World) -> None:
    label = f"INC-{int(world.ids['incident']):06d}"
    http.sign_in("auditor")
    assert label in http.get("/incidents").text
    assert label in http.get(f"/incidents?client={CLINIC}&after=U:not-a-number:1").text
    assert label not in http.get(f"/incidents?client={OTHER}").text
    assert "No incident matches" in http.get(f"/incidents?client={OTHER}").text
    http.sign_in("other-pm")
    assert label not in http.get("/incidents").text
    assert http.get(f"/incidents?client={CLINIC}").status == 403


def test_the_register_download_holds_the_viewers_clients_only(http: Http, world: World) -> None:
    label = f"INC-{int(world.ids['incident']):06d}"
    http.sign_in("po")
    reply = http.get("/incidents/register.csv")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert label in [r["id"] for r in rows]  # with any the server's detector raised since
    assert {r["client"] for r in rows} == {CLINIC}
    assert list(rows[0]) == list(register.COLUMNS)
    http.sign_in("other-pm")
    rows = list(csv.DictReader(io.StringIO(http.get("/incidents/register.csv").text)))
    assert rows == []


def test_an_incident_page_lists_its_evidence_events(http: Http, world: World) -> None:
    http.sign_in("auditor")
    text = http.get(f"/incidents/{world.ids['incident']}").text
    assert "clinic-srv #2" in text
    assert "Brown_Alice_history.pdf" in text
    assert "verified · checkpoint 3" in text


def _plan(console: ConsoleStore, store: Store, sql: str, params: list[object]) -> str:  # noqa: F811
    """The query plan of `sql` as text (PostgreSQL told not to prefer a scan of a tiny table)."""
    with console._tx(write=False) as cur:
        if store.dialect == "postgres":  # type: ignore[attr-defined]
            console._exec(cur, "SET LOCAL enable_seqscan = off")
            console._exec(cur, "EXPLAIN " + sql, params)
        else:
            console._exec(cur, "EXPLAIN QUERY PLAN " + sql, params)
        return "\n".join(str(r[-1]) for r in cur.fetchall())


@pytest.mark.parametrize("client", [None, "clinic"])
def test_the_decided_total_is_counted_from_the_decided_index_alone(
    store: Store,  # noqa: F811
    client: str | None,
) -> None:
    raise_incidents(store)
    if store.dialect == "postgres":  # type: ignore[attr-defined]
        # as autovacuum leaves a table: statistics, and its pages marked all-visible (the
        # condition of an index-only scan)
        with store._lock:  # type: ignore[attr-defined]
            store._conn.execute("VACUUM ANALYZE ndb_incidents")  # type: ignore[attr-defined]
    console = ConsoleStore(store)
    decided = views.QUEUE_STATES["decided"]
    assert console.count_incidents(client, decided) == (5 if client is None else 3)
    plan = _plan(console, store, *count_query(client, decided))
    assert "ndb_incidents_decided" in plan, plan
    if store.dialect == "postgres":  # type: ignore[attr-defined]
        assert "Index Only Scan" in plan, plan
    else:
        assert "COVERING INDEX" in plan, plan
    # one decided state is still counted by its own index entries
    assert console.count_incidents(client, ("closed",)) == (2 if client is None else 1)
    # bounded as the page counts: no further than up_to + 1, through the same index
    assert console.count_incidents(client, decided, up_to=1) == 2
    plan = _plan(console, store, *count_query(client, decided, up_to=1))
    assert "ndb_incidents_decided" in plan, plan


def test_the_decided_total_is_shown_bounded(
    store: Store,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raise_incidents(store)
    src = Sources(store, AccessStore(store), IncidentStore(store), ConsoleStore(store), b"k" * 32)
    monkeypatch.setattr(views, "DECIDED_COUNTED", 4)
    page = views.incident_page(src, AUDITOR, T0 + 100)
    assert (page.decided_total, page.decided_more) == (4, True)  # 5 decided
    page = views.incident_page(src, CLINIC_MANAGER, T0 + 100)
    assert (page.decided_total, page.decided_more) == (3, False)


def test_an_out_of_range_cursor_is_not_a_server_error(http: Http, world: World) -> None:
    http.sign_in("auditor")
    for after in ("D:" + "9" * 30, "U:1.0:" + "9" * 30, "D:%C2%B2", "U:1.0:%C2%B2"):  # "²"
        assert http.get(f"/incidents?after={after}").status == 200
